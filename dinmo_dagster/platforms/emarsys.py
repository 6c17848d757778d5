"""SAP Emarsys: contact fields, contact lists and relational-data tables, over the Emarsys Core API.

A ``type: emarsys`` destination serves one ``service``:

- ``attributes`` -- contact fields (``sync_mode`` upsert, update, insert, mirror), or, with the
  ``relational_table`` setting, rows of a Relational Data (RDS) table (upsert, mirror).
- ``audiences`` -- membership of a contact list (the activation's ``audience``: ``{name:}``, found
  with ``GET /contactlist`` or created with ``POST /contactlist``, or ``{id:}``).

**Authentication.** Emarsys offers two kinds of API credentials: the legacy WSSE "API user" (an
``X-WSSE`` UsernameToken header with a nonce, a timestamp and a SHA-1 password digest, on
``/api/v2``) and the newer OpenID Connect credentials (OAuth 2.0 client credentials, on ``/api/v3``),
which Emarsys now has account owners create (Management > Security Settings > API Credentials >
OpenID Connect). This adapter supports the OpenID Connect credentials only: ``client_id`` and
``client_secret`` (``{env: VAR}``) are exchanged at ``https://auth.emarsys.net/oauth2/token``
(``grant_type=client_credentials``, the client in an HTTP Basic header) for a bearer access token,
kept in memory, renewed before it expires and once on a 401. The API root is
``https://api.emarsys.net/api/v3`` (``base_url`` and ``token_url`` override them); the v3 endpoints
keep the v2 paths and payloads cited below. Rate limits, like permissions, belong to the credential.

**Contacts** are named by one identifier: ``email`` (field 3; trimmed and lower-cased, never hashed:
Emarsys sends to it) or a custom unique field given by its id as ``field_<id>`` (``field_123456``:
an external id, sent as text). It is the request's ``key_id``. Mapped field names are Emarsys field
ids (``"1"``, ``"2"``), or their ``string_id`` / name (``first_name``, ``First Name``), turned into ids
through ``GET /field`` once per delivery; ``validate --connect`` refuses a name the account does not
have. Values go as JSON text, numbers and ISO dates; a NULL is sent as ``null``, which empties the
field in Emarsys (a field left out stays as it is: ``null_values: skip``). Single- and multi-choice
fields take Emarsys choice ids: map a column holding those ids. The opt-in field (31) is a field like
any other: the adapter never sets it itself, so a contact is only opted in when the segment maps a
column that says so.

- upsert: ``PUT /contact/?create_if_not_exists=1`` with ``{"key_id", "contacts": [...]}`` (at most
  1,000 contacts, 8 MB);
- update: the same request without ``create_if_not_exists``: a contact Emarsys does not hold is
  rejected (Emarsys error 2008) and tried again by the next sync;
- insert: ``POST /contact`` (creates only): a contact that already exists (error 2009) is left as it
  is and counts as done;
- mirror: removal of a record that left the segment deletes the contact with ``POST
  /contact/delete`` (``{"key_id", "<key_id>": value}``, one contact per request); a contact that is
  already gone (2008) counts as done.

Answers are ``{"replyCode", "replyText", "data"}``; a batch answer's ``data.errors`` maps each refused
key value to ``{"<code>": "<message>"}``: those records are rejected with Emarsys's code and message
(their keys map back to records), the others count as done. A whole request refused with HTTP 400 and
no per-contact errors is split until the faulty record is alone, which is then rejected with
``replyText``.

**Contact lists.** ``POST /contactlist/{id}/add`` and ``POST /contactlist/{id}/delete`` with ``{"key_id",
"external_ids": [...]}``, at most 10,000 ids per request (more is Emarsys error 3002). An add whose
contact does not exist (error 2008, in ``data.errors``) is rejected -- adding to a list creates no
contact: an ``attributes`` activation creates it -- and sent again by the next sync; a removal of a
contact that is not in the list counts as done. A list given by name is created with ``POST
/contactlist`` (``{"key_id", "name", "external_ids": []}``). Emarsys has no "replace a list": a full
sync is remove + add.

**Relational Data (RDS).** Emarsys Relational Data lets the account read its own tables (hosted by
Emarsys or by the client) for segmentation and personalization. Emarsys documents how to set those
tables up (connections, phpMyAdmin on the Emarsys-hosted database, SFTP imports) but publishes no
HTTP API for writing rows that could be read here. The adapter therefore **assumes** this contract,
modelled on the contact endpoints, and says so: ``PUT
/rds/connections/{connection}/tables/{table}/records`` with ``{"keys": [<key columns>], "records":
[{column: value}]}`` upserts rows by their key columns (at most 1,000 rows a request, assumed), and
``POST /rds/connections/{connection}/tables/{table}/records/delete`` with ``{"keys", "records":
[{key column: value}]}`` deletes them (mirror); answers have the contact endpoints' shape, with
``data.errors`` keyed by the row's key values joined with ``|``. The activation's ``match`` names the
key columns (``{order_id: order_id}``: column of the segment -> column of the table); mapped names
are the table's columns.

**Limits.** 1,000 requests per minute per API credential, answered past it with HTTP 429; every
answer carries ``X-RateLimit-Limit`` and ``X-Ratelimit-Remaining`` (and ``X-Ratelimit-Reset``), which
the transport follows. The SDK keeps to 1,000 requests a minute, 4 at a time.

Emarsys's documentation this adapter follows:

- contacts, fields, lists (concepts; field 3 is the e-mail): http://documentation.emarsys.com/resource/developers/endpoints/contacts/
- updating contacts (``PUT /contact``, ``key_id``, ``create_if_not_exists``, error 2010):
  https://help.emarsys.com/hc/es/articles/115004494794-Updating-a-Contact
- creating contacts (``contacts`` array, 8 MB, 1,000 a call as the benchmark, ``data.errors`` keyed by
  the key value, error 2009): https://help.emarsys.com/hc/es/articles/115004493054-Creating-Multiple-Contacts
- adding contacts to a list (``external_ids``, ``data.errors``, 10,000 at most: 3002; 2008):
  https://help.emarsys.com/hc/de/articles/115004466413-Adding-Contacts-to-a-Contact-List
- creating a list (``POST /contactlist``, ``data.id``):
  https://help.emarsys.com/hc/en-us/articles/115004495754-Creating-a-Contact-List
- deleting contacts and listing fields (``POST /contact/delete``, ``GET /field``) as used by integrators:
  https://docs.datagrail.io/docs/integrations/api-documentation/emarsys
- empty values and field behaviour on update: https://help.emarsys.com/hc/de/articles/213705529-Data-exchange-resources
- OpenID Connect credentials: https://docs.nango.dev/integrations/all/emarsys-oauth/connect and the v3
  collection https://github.com/emartech/Emarsys-postman-collection
- rate limits (1,000 / minute per API user, 429, headers): https://dev.emarsys.com/docs/emarsys-core-api-guides/cd1025a4f6b0d-miscellaneous
- Relational Data (no write API published): https://help.emarsys.com/hc/ru/articles/360024778974-Relational-Data-onboarding-for-clients-using-Emarsys-hosted-databases

Assumed where the pages could not be read in full: the v3 paths equal to the v2 ones; one contact per
``POST /contact/delete``; ``GET /contactlist`` answering every list at once (``data: [{id, name}]``);
``GET /settings`` as the cheap credential check; the whole RDS write contract above.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import pydantic
from pydantic import ConfigDict, Field, ValidationInfo

from dinmo_dagster.platforms import register_platform
from dinmo_dagster.platforms.audiences import AudiencePlatform, AudienceTarget, OAuthBearer
from dinmo_dagster.platforms.base import (
    BatchOutcome,
    FieldInfo,
    HttpResponse,
    Limits,
    PlatformSettings,
    PreparedRequest,
    Record,
    RecordResult,
)
from dinmo_dagster.platforms.identifiers import IdentifierSpec, normalize_email
from dinmo_dagster.platforms.oauth import OAuthSettings, OAuthToken

if TYPE_CHECKING:
    from dinmo_dagster.platforms.http import Transport

__all__ = ["Emarsys", "EmarsysList", "EmarsysSettings", "RelationalTable"]

logger = logging.getLogger("dinmo_dagster.platforms")

TOKEN_URL = "https://auth.emarsys.net/oauth2/token"
MAX_CONTACTS = 1_000
MAX_LIST_IDS = 10_000
MAX_ROWS = 1_000
MAX_BYTES = 8 * 1024 * 1024
EMAIL_FIELD = "3"
EMAIL = IdentifierSpec("email", normalize=lambda v, _c: normalize_email(v))
CUSTOM_KEY = IdentifierSpec("text", normalize=lambda v, _c: v.strip())
RDS_KEY = IdentifierSpec("text", normalize=lambda v, _c: v.strip())
_FIELD_KEY = re.compile(r"field_(\d+)")
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
# Emarsys reply codes read here: no contact with that key; the contact already exists.
NOT_FOUND, EXISTS = "2008", "2009"
# Refusals of the whole request that no record can fix: an invalid key field, an invalid list id.
FATAL = frozenset({"2004", "3004"})


class EmarsysList(AudienceTarget):
    """An Emarsys contact list: ``{name: ...}`` (created when missing) or ``{id: ...}``."""

    noun: ClassVar[str] = "contact list"


class RelationalTable(pydantic.BaseModel):
    """A Relational Data table: the RDS ``connection`` and the ``table`` rows are written to."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    connection: str = Field(description="The Relational Data connection's name.")
    table: str = Field(description="The table's name in that connection.")

    @pydantic.field_validator("connection", "table")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not _NAME.fullmatch(value):
            raise ValueError(f"found {value!r}; allowed: letters, digits, '_', '.' and '-'")
        return value


class EmarsysSettings(OAuthSettings):
    """Settings of a ``type: emarsys`` destination (OpenID Connect credentials)."""

    service: Literal["attributes", "audiences"] = Field(
        description="attributes (contact fields, or rows of relational_table) or audiences (contact lists)."
    )
    grant_type: Literal["client_credentials"] = Field(  # type: ignore[assignment]
        default="client_credentials", description="Emarsys OpenID Connect credentials use client credentials."
    )
    audience: EmarsysList | None = Field(
        default=None, description="audiences: the list, from the activation."
    )
    relational_table: RelationalTable | None = Field(
        default=None, description="attributes: write rows of this Relational Data table instead of contacts."
    )

    @pydantic.field_validator("audience")
    @classmethod
    def _check_audience(cls, value: EmarsysList | None, info: ValidationInfo) -> EmarsysList | None:
        service = info.data.get("service")
        if value is not None and service not in (None, "audiences"):
            raise ValueError(
                f"found a contact list; allowed only with service: audiences (service is {service})"
            )
        return value

    @pydantic.field_validator("relational_table")
    @classmethod
    def _check_table(cls, value: RelationalTable | None, info: ValidationInfo) -> RelationalTable | None:
        service = info.data.get("service")
        if value is not None and service not in (None, "attributes"):
            raise ValueError(f"found a table; allowed only with service: attributes (service is {service})")
        return value


class Emarsys(OAuthBearer, AudiencePlatform):
    """Emarsys contacts, contact lists and relational-data rows (module docstring)."""

    name = "emarsys"
    settings_model: ClassVar[type[PlatformSettings]] = EmarsysSettings
    services: ClassVar[Mapping[str, tuple[str, ...]]] = {
        "attributes": ("upsert", "update", "insert", "delete"),
        "audiences": ("add", "remove"),
    }
    default_base_url = "https://api.emarsys.net/api/v3"
    limits = Limits(
        max_records_per_batch=MAX_CONTACTS,
        max_bytes_per_batch=MAX_BYTES,
        requests_per_window=1_000,
        window_seconds=60.0,
        max_concurrency=4,
    )
    audience_label = "Emarsys contact list"
    audience_noun = "contact list"
    audiences_taking = "Emarsys contact lists"

    settings: EmarsysSettings

    def __init__(self, settings: PlatformSettings, *, destination: str = "") -> None:
        super().__init__(settings, destination=destination)
        self.oauth = OAuthToken(self, default_token_url=TOKEN_URL, client_auth="basic")
        if self.settings.service == "audiences":
            self.limits = Limits(
                max_records_per_batch=MAX_LIST_IDS,
                max_bytes_per_batch=MAX_BYTES,
                requests_per_window=1_000,
                window_seconds=60.0,
                max_concurrency=4,
            )
        elif self.rds is not None:
            self.services = {"attributes": ("upsert", "delete")}
            self.limits = Limits(
                max_records_per_batch=MAX_ROWS,
                max_bytes_per_batch=MAX_BYTES,
                requests_per_window=1_000,
                window_seconds=60.0,
                max_concurrency=4,
            )
        self._fields_lock = threading.Lock()
        self._alias_lock = threading.Lock()
        self._field_ids: dict[str, str] | None = None  # mapped name -> field id, once resolved
        self._fields: dict[str, FieldInfo] | None = None  # GET /field, read once (when a name is no id)
        self._aliases: dict[str, set[str]] = {}  # field id -> its name and string_id (GET /field)
        self._key_id = EMAIL_FIELD  # the key field of the activation's identifier (record_input)
        self._rds_key_names: list[str] = []  # the key columns of a relational table (record_input)

    @property
    def rds(self) -> RelationalTable | None:
        """The Relational Data table of an ``attributes`` destination, or None (contacts)."""
        return self.settings.relational_table

    def target_label(self) -> str:
        """``Emarsys contacts``, ``Emarsys table 'shop.orders'`` or ``Emarsys contact list 'VIP'``."""
        if self.settings.service == "audiences":
            return super().target_label()
        if self.rds is not None:
            return f"Emarsys table '{self.rds.connection}.{self.rds.table}'"
        return "Emarsys contacts"

    # -- identifiers and activation checks ----------------------------------------------------------------

    def identifier_spec(self, name: str) -> IdentifierSpec | None:
        """``email`` or ``field_<id>`` for contacts; any key column for a relational table."""
        if self.rds is not None:
            return RDS_KEY if _NAME.fullmatch(name) else None
        if name == "email":
            return EMAIL
        return CUSTOM_KEY if _FIELD_KEY.fullmatch(name) else None

    def validate_activation(self, match: Mapping[str, str], mapping: Mapping[str, str]) -> list[str]:
        """Contacts: one identifier; lists: no mapping and an audience; tables: key columns."""
        problems = super(AudiencePlatform, self).validate_activation(match, mapping)
        if self.rds is None and len(match) > 1:
            problems.append(
                f"match: found {', '.join(match)}; allowed: one of email or field_<id> (Emarsys names a "
                "contact by one key field)"
            )
        if self.settings.service == "audiences":
            if mapping:
                problems.append(f"mapping: found {', '.join(mapping)}; allowed: nothing (Emarsys contact lists "
                                "take identifiers only)")  # fmt: skip
            if self.audience_target is None:
                problems.append("audience: found nothing; allowed: {name: ...} or {id: ...}")
        elif self.rds is None:
            key = self._key_for(match)
            for column, target in mapping.items():
                if str(target) == key or (key == EMAIL_FIELD and str(target) == "email"):
                    problems.append(
                        f"mapping.{column}: found {target!r}; allowed: another field (the key goes in match)"
                    )
        return problems

    @staticmethod
    def _key_for(match: Mapping[str, str]) -> str:
        name = next(iter(match), "email")
        found = _FIELD_KEY.fullmatch(name)
        return found.group(1) if found else EMAIL_FIELD

    # -- fields -------------------------------------------------------------------------------------------

    def discover_fields(self, transport: Transport) -> Mapping[str, FieldInfo] | None:
        """The account's contact fields (``GET /field``) by id; None for lists and tables."""
        if self.settings.service != "attributes" or self.rds is not None:
            return None
        return {info.name: info for info in self._read_fields(transport)}

    def _read_fields(self, transport: Transport) -> list[FieldInfo]:
        response = transport.send(PreparedRequest("GET", "/field"))
        if response.status != 200:
            raise self.request_error(response, "reading the contact fields (GET /field)")
        fields = []
        for item in _data(response) or []:
            if isinstance(item, dict) and item.get("id") is not None:
                field_id = str(item["id"])
                fields.append(FieldInfo(field_id, label=str(item.get("name") or ""),
                                        type=str(item.get("application_type") or "")))  # fmt: skip
                names = {str(item.get("name") or ""), str(item.get("string_id") or "")} - {""}
                with self._alias_lock:
                    self._aliases[field_id] = names
        return fields

    def _field_id(self, target: str, fields: Mapping[str, FieldInfo]) -> str | None:
        if target in fields:
            return target
        for field_id, names in self._aliases.items():
            if target in names:
                return field_id
        return None

    def validate_fields(
        self, match: Mapping[str, str], mapping: Mapping[str, str], fields: Mapping[str, FieldInfo]
    ) -> list[str]:
        """Each mapped name is a field id, ``string_id`` or name of the account."""
        problems = []
        for column, target in mapping.items():
            if self._field_id(str(target), fields) is None:
                problems.append(f"mapping.{column}: no field {target!r} in Emarsys contacts (GET /field has no "
                                "such id, string_id or name)")  # fmt: skip
        return problems

    def _resolve_fields(self, names: Sequence[str], transport: Transport) -> dict[str, str]:
        """Mapped names -> field ids: ids as they are, other names through ``GET /field`` (read once)."""
        with self._fields_lock:
            ids = self._field_ids if self._field_ids is not None else {}
            missing = [n for n in names if n not in ids and not n.isdigit()]
            ids.update({n: n for n in names if n.isdigit()})
            if missing:
                if self._fields is None:
                    self._fields = {info.name: info for info in self._read_fields(transport)}
                for name in missing:
                    field_id = self._field_id(name, self._fields)
                    if field_id is None:
                        raise self.config_error(
                            f"mapping: no field {name!r} in Emarsys contacts (GET /field)"
                        )
                    ids[name] = field_id
            self._field_ids = ids
            return dict(ids)

    # -- requests -------------------------------------------------------------------------------------------

    def record_input(self, operation: str, record: Record) -> Any:
        """The key value (lists), the row (tables), or ``{key: value, field: value}`` (contacts)."""
        if self.rds is not None:
            self._rds_key_names = list(record.identifiers)
            return {**record.identifiers, **({} if operation == "delete" else record.fields)}
        name, value = next(iter(record.identifiers.items()))
        self._key_id = self._key_for({name: name})
        if self.settings.service == "audiences":
            return value
        return {"key": value, "fields": dict(record.fields)}

    def _contact(self, item: Mapping[str, Any], ids: Mapping[str, str] | None) -> dict[str, Any]:
        body: dict[str, Any] = {self._key_id: item["key"]}
        for name, value in item["fields"].items():
            body[(ids or {}).get(name, name)] = value
        return body

    def _request(
        self, operation: str, inputs: Sequence[Any], ids: Mapping[str, str] | None
    ) -> PreparedRequest:
        if self.settings.service == "audiences":
            action = "add" if operation == "add" else "delete"
            return PreparedRequest("POST", f"/contactlist/{self._audience_ref()}/{action}",
                                   json={"key_id": self._key_id, "external_ids": list(inputs)})  # fmt: skip
        if self.rds is not None:
            keys = list(self._rds_key_names)
            path = f"/rds/connections/{self.rds.connection}/tables/{self.rds.table}/records"
            if operation == "delete":
                return PreparedRequest("POST", f"{path}/delete", json={"keys": keys, "records": list(inputs)})
            return PreparedRequest("PUT", path, json={"keys": keys, "records": list(inputs)})
        if operation == "delete":
            item = inputs[0]
            return PreparedRequest(
                "POST", "/contact/delete", json={"key_id": self._key_id, self._key_id: item["key"]}
            )
        body = {"key_id": self._key_id, "contacts": [self._contact(i, ids) for i in inputs]}
        if operation == "insert":
            return PreparedRequest("POST", "/contact", json=body)
        params = {"create_if_not_exists": "1"} if operation == "upsert" else None
        return PreparedRequest("PUT", "/contact/", json=body, params=params)

    def build_request(
        self, operation: str, inputs: Sequence[Any], records: Sequence[Record]
    ) -> PreparedRequest:
        """The batch's request (field names not yet resolved to ids stay names, as in a preview)."""
        return self._request(operation, inputs, self._field_ids)

    def deliver_batch(
        self, operation: str, records: Sequence[Record], inputs: Sequence[Any], transport: Transport
    ) -> BatchOutcome:
        """One request per batch (a contact deletion: one per contact, up to 1,000 a batch, each verdict
        handed to the engine as it comes, ``acknowledge_early``: a sync killed mid-batch does not send
        them again)."""
        if self.settings.service == "audiences":
            self._resolve_audience(transport)
        if self.settings.service == "attributes" and self.rds is None and operation == "delete":
            results: list[RecordResult] = []
            for record, item in zip(records, inputs, strict=True):
                results.append(self._delete_one(record, item, transport))
                self.acknowledge_early(results[-1:])
            return BatchOutcome(results)
        ids = None
        if self.settings.service == "attributes" and self.rds is None:
            names = sorted({n for i in inputs for n in i["fields"]})
            ids = self._resolve_fields(names, transport) if names else {}
        response = transport.send(self._request(operation, inputs, ids))
        return self.parse_response(operation, records, response)

    def _delete_one(self, record: Record, item: Mapping[str, Any], transport: Transport) -> RecordResult:
        response = transport.send(self._request("delete", [item], None))
        code = _reply_code(response)
        if response.status == 200 and code in (None, "0"):
            return RecordResult(record.key, "accepted")
        if code == NOT_FOUND:
            return RecordResult(record.key, "accepted")  # already gone
        if response.status == 400:
            return RecordResult(record.key, "rejected", f"Emarsys {code}: {self.error_message(response)}",
                                f"Emarsys {code}")  # fmt: skip
        raise self.request_error(response, "POST /contact/delete")

    def parse_response(
        self, operation: str, records: Sequence[Record], response: HttpResponse
    ) -> BatchOutcome:
        """``data.errors`` mapped back to records by their key value."""
        if response.status == 404 and self.settings.service == "audiences":
            raise self.request_error(response, f"{self.target_label()} (check the audience's id)")
        if response.status not in (200, 400):
            raise self.request_error(response, f"updating {self.target_label()}")
        errors = _errors(response)
        if response.status == 400 and _reply_code(response) in FATAL:
            raise self.request_error(response, f"updating {self.target_label()}")
        if response.status == 400 and not errors:
            if len(records) > 1:
                return BatchOutcome(split=True)
            code = _reply_code(response) or "400"
            return BatchOutcome.reject_all(
                records, f"Emarsys {code}: {self.error_message(response)}", f"Emarsys {code}"
            )
        results = []
        for record in records:
            found = errors.get(self._error_key(record))
            verdict = self._verdict(operation, record, found)
            results.append(verdict)
        return BatchOutcome(results)

    def _error_key(self, record: Record) -> str:
        if self.rds is not None:
            return "|".join(str(v) for v in record.identifiers.values())
        return str(next(iter(record.identifiers.values())))

    def _verdict(self, operation: str, record: Record, found: Mapping[str, Any] | None) -> RecordResult:
        if not found:
            return RecordResult(record.key, "accepted")
        code, message = next(iter(found.items()))
        code = str(code)
        if operation == "insert" and code == EXISTS:
            return RecordResult(record.key, "accepted")  # insert leaves an existing contact as it is
        if operation == "remove":
            return RecordResult(record.key, "accepted")  # not in the list (or no contact): nothing to remove
        if operation == "add" and code == NOT_FOUND:
            return RecordResult(record.key, "rejected", "no Emarsys contact has this key (a list add creates "
                                "none: an attributes activation creates it)", "no Emarsys contact")  # fmt: skip
        return RecordResult(
            record.key, "rejected", self.redact(f"Emarsys {code}: {message}"), f"Emarsys {code}"
        )

    def preview_request(
        self, operation: str, inputs: Sequence[Any], records: Sequence[Record]
    ) -> PreparedRequest:
        """The first request (mapped names not yet turned into field ids)."""
        return self.build_request(operation, inputs, records)

    def error_message(self, response: HttpResponse) -> str:
        """Emarsys's ``replyText`` (secrets masked)."""
        body = response.json()
        if isinstance(body, dict) and isinstance(body.get("replyText"), str) and body["replyText"]:
            return self.redact(body["replyText"])
        return super().error_message(response)

    # -- lists ----------------------------------------------------------------------------------------------

    def _find_by_name(self, name: str, transport: Transport) -> str | None:
        response = transport.send(PreparedRequest("GET", "/contactlist"))
        if response.status != 200:
            raise self.request_error(response, "reading the contact lists (GET /contactlist)")
        found = [str(item["id"]) for item in _data(response) or []
                 if isinstance(item, dict) and item.get("name") == name]  # fmt: skip
        return self._the_one_named(name, found, "Emarsys contact lists")

    def _create_named(self, target: AudienceTarget, transport: Transport) -> str:
        body = {"key_id": self._key_id, "name": target.name, "external_ids": []}
        response = transport.send(PreparedRequest("POST", "/contactlist", json=body))
        data = _data(response)
        if response.status != 200 or not isinstance(data, dict) or data.get("id") is None:
            raise self.request_error(
                response, f"creating the contact list {target.name!r} (POST /contactlist)"
            )
        logger.info("%s: created Emarsys contact list %r (%s)", self.label, target.name, data["id"])
        return str(data["id"])

    # -- validate --connect -------------------------------------------------------------------------------------

    def check_connection(self, transport: Transport) -> None:
        """The credentials (``GET /settings``) and a list given by id."""
        self._read(transport, "/settings", "the Emarsys account settings")
        target = self.audience_target
        if self.settings.service == "audiences" and target is not None and target.id:
            response = transport.send(PreparedRequest("GET", "/contactlist"))
            if response.status != 200:
                raise self.request_error(response, "reading the contact lists (GET /contactlist)")
            ids = {str(item.get("id")) for item in _data(response) or [] if isinstance(item, dict)}
            if target.id not in ids:
                raise self.config_error(f"audience.id: found {target.id!r}; allowed: the id of a contact list of "
                                        "the account (GET /contactlist)")  # fmt: skip


def _data(response: HttpResponse) -> Any:
    body = response.json()
    return body.get("data") if isinstance(body, dict) else None


def _reply_code(response: HttpResponse) -> str | None:
    body = response.json()
    if isinstance(body, dict) and body.get("replyCode") is not None:
        return str(body["replyCode"])
    return None


def _errors(response: HttpResponse) -> dict[str, Mapping[str, Any]]:
    """``data.errors`` as ``{key value: {code: message}}`` (Emarsys sends ``[]`` when there is none)."""
    data = _data(response)
    errors = data.get("errors") if isinstance(data, dict) else None
    if not isinstance(errors, dict):
        return {}
    return {str(k): v for k, v in errors.items() if isinstance(v, dict) and v}


register_platform("emarsys", EmarsysSettings, Emarsys)
