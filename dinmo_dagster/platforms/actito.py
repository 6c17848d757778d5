"""Actito: profile attributes (bulk imports) and segmentation membership, over Actito's Integration API.

A ``type: actito`` destination writes to one profile table (``table``) of one entity (``entity``) and
serves one ``service``:

- ``attributes`` -- profile attributes through bulk imports (``sync_mode`` upsert, update, insert,
  mirror);
- ``audiences`` -- membership of a simple segmentation of the table (the activation's ``audience``:
  ``{name:}``). Actito has no "contact list" object: a profile table's segmentations are how Actito
  groups profiles (a *simple* segmentation: a profile belongs to it or not; an *exclusive* one
  classifies profiles into one of several segments). DinMo's audiences are simple segmentations, which
  must exist (they are created in Actito's "Manage segmentations" app: the API publishes no creation).

**Authentication.** The API key (``api_key``, ``{env: VAR}``) is exchanged at ``GET /auth/token``
(the key alone in the ``Authorization`` header) for an access token valid 15 minutes (``expiresIn:
"900s"``), kept in memory, renewed a minute before it expires and once on a 401, and sent as
``Authorization: Bearer``. A key Actito refuses (401 on ``/auth/token``) stops the sync at once. The
API root is ``https://api.actito.com`` (``base_url`` overrides it; the token endpoint is on it).

**Profiles** are named by one unique attribute of the table: ``email`` (the ``emailAddress``
attribute; trimmed, lower-cased, never hashed: Actito sends to it) or the name of another unique
attribute (``customerId``, sent as text). Mapped names are the table's attribute names;
``validate --connect`` reads the table's structure (``GET /v4/entity/{entity}/table/{table}``) and
refuses a name that is not an attribute, a technical attribute (``profileId``, ``creationMoment``,
``updateMoment``), and a subscription name: subscriptions (opt-ins) are separate from attributes in
Actito, and this adapter never subscribes nor unsubscribes anyone.

- upsert / update / insert: a batch of up to 10,000 profiles is one "one shot ETL execution", ``POST
  /mass-imports/v5/entities/{entity}/etl-executions`` (``multipart/form-data``: the CSV file
  ``inputFile`` -- comma separated, UTF-8, a header row of attribute names -- and the JSON definition
  ``oneShotEtlExecution`` naming the table, the key attribute, the column mapping and the mode:
  ``CREATE_UPDATE``, ``UPDATE_ONLY`` or ``CREATE_ONLY``). The execution is polled (``GET
  .../etl-executions/{id}`` every ``poll_interval_seconds``) until it ends; its per-line error report
  (``GET .../etl-executions/{id}/errors``: ``lineNumber,errorType,errorMessage``, line 1 being the
  header) rejects the records of those lines with Actito's message; the others count as done. An
  execution that fails as a whole sends its records again. A NULL is an empty cell, which empties the
  attribute (``null_values: skip`` is not honoured: a CSV row has every column). ``insert`` leaves
  existing profiles as they are; ``update`` rejects the lines of profiles Actito does not hold.
- mirror: a record that left the segment deletes its profile, ``DELETE
  /v4/entity/{entity}/table/{table}/profile/{key}={value}``, one per request; a profile that is already
  gone (404) counts as done.

**Segmentations.** ``PUT`` (add) and ``DELETE`` (remove)
``/v4/entity/{entity}/table/{table}/profile/{key}={value}/segmentation/{name}``, one profile per
request. An add for a profile Actito does not hold (404) is rejected -- adding to a segmentation
creates no profile: an ``attributes`` activation creates it -- and sent again by the next sync; a
removal of a profile that is not there counts as done. A full sync is remove + add. These per-profile
requests carry the key value in their path: logs and errors name them by the segmentation only.

**Limits.** 10 requests a second, 4 at a time, for the per-profile calls, one import at a time per
table (assumed: Actito states no figure on the pages read); a 429 waits ``Retry-After``. ETL files may
hold 100 MB (documented); imports are cut at 10,000 profiles and 50 MB (this adapter's choice).

Actito's documentation this adapter follows:

- API key and access tokens (``GET /auth/token``, 15 minutes, 401): https://developers.actito.com/docs/integration-framework/apis/authentication/api-key
- profile tables, one-by-one calls and bulk imports (use case): https://developers.actito.com/docs/use-cases/datasync/api/profile-tables
- profile structure (attributes, subscriptions, segmentations; subscriptions are not the marketing
  consent): https://cdn.actito.be/fe/actito-documentation-client/campaign/en/Understanding_the_Components_of_a_Profile_Table.html
- single profile operations (``allowUpdate``, attributes, subscriptions, segmentations):
  https://cdn.actito.be/fe/actito-documentation-client/campaign/en/Creating_or_Updating_a_Single_Profile.html
- bulk import modes (CREATE_ONLY, UPDATE_ONLY, CREATE_UPDATE), key column, CSV formats:
  http://cdn.actito.be/fe/actito-documentation-client/campaign/en/Creating_or_Updating_Profiles_in_Bulk.html
- v4 imports removed end of June 2025, replaced by one shot ETL executions (multipart: data file +
  definition): https://developers.actito.com/docs/use-cases/datasync/api/migrating-v4-imports and
  http://cdn3.actito.com/fe/actito-documentation/docs/v4-mass-imports
- ETL files (100 MB): https://developersbuild.actito.com/develop/docs/integration-framework/etls/principle
- table structure (attribute names, types, unique): https://developers.actito.com/docs/use-cases/data-model-management/profile-tables
- segmentations (simple / exclusive, created in the app): https://cdn.actito.be/fe/actito-documentation-client/campaign/en/Creating_a_Segmentation_in_a_Profile_Table.html
- per-profile segmentation and deletion paths, as used by the open-source client
  https://github.com/produpress/laravel-actito (``src/Profile.php``)

Assumed where Actito's reference pages could not be read: the JSON of the one shot ETL definition and
the names of its parts, the execution statuses (``PENDING``/``RUNNING`` then ``FINISHED``, or ``ERROR``),
the error report's path and columns, that an empty cell empties an attribute, that ``{key}={value}``
addresses a profile by a unique attribute in every per-profile path, the table structure's JSON on
``GET /v4/entity/{entity}/table/{table}``, the error body (``{"message"}``) and the rate limits above.
"""

from __future__ import annotations

import csv
import datetime as dt
import decimal
import io
import json
import logging
import math
import re
import threading
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import pydantic
import requests
from pydantic import Field, SecretStr, ValidationInfo

from dinmo_dagster.platforms import register_platform
from dinmo_dagster.platforms.audiences import AudiencePlatform, AudienceTarget
from dinmo_dagster.platforms.base import (
    BatchOutcome,
    FieldInfo,
    HttpResponse,
    JobHandle,
    Limits,
    PlatformSettings,
    PreparedRequest,
    Record,
    RecordResult,
)
from dinmo_dagster.platforms.errors import PlatformAuthError, PlatformRequestError
from dinmo_dagster.platforms.identifiers import IdentifierSpec, normalize_email

if TYPE_CHECKING:
    from dinmo_dagster.platforms.http import Transport

__all__ = ["Actito", "ActitoSegmentation", "ActitoSettings"]

logger = logging.getLogger("dinmo_dagster.platforms")

MAX_IMPORT_PROFILES = 10_000
MAX_IMPORT_BYTES = 50 * 1024 * 1024
SEGMENT_BATCH = 25
TOKEN_MARGIN_SECONDS = 60.0
EMAIL = IdentifierSpec("email", normalize=lambda v, _c: normalize_email(v))
KEY = IdentifierSpec("text", normalize=lambda v, _c: v.strip())
TECHNICAL = frozenset({"profileId", "creationMoment", "updateMoment"})
MODES = {"upsert": "CREATE_UPDATE", "update": "UPDATE_ONLY", "insert": "CREATE_ONLY"}
RUNNING = frozenset({"PENDING", "RUNNING", "WAITING", "IN_PROGRESS"})
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


class ActitoSegmentation(AudienceTarget):
    """A simple segmentation of the profile table, by ``name`` (Actito names segmentations)."""

    noun: ClassVar[str] = "segmentation"
    numeric_id: ClassVar[bool] = False

    @pydantic.model_validator(mode="after")
    def _named(self) -> ActitoSegmentation:
        if self.id is not None:
            raise ValueError("found an id; allowed: {name: ...} (Actito segmentations are addressed by name)")
        return self


class ActitoSettings(PlatformSettings):
    """Settings of a ``type: actito`` destination."""

    service: Literal["attributes", "audiences"] = Field(
        description="attributes (profile attributes, through imports) or audiences (segmentation membership)."
    )
    api_key: SecretStr = Field(description="An Actito API key (from {env: VAR}); secret.")
    entity: str = Field(description="The entity the profile table belongs to.")
    table: str = Field(description="The profile table's name.")
    audience: ActitoSegmentation | None = Field(
        default=None, description="audiences: the segmentation, from the activation."
    )
    poll_interval_seconds: float = Field(
        default=5.0, gt=0, le=300, description="attributes: seconds between two polls of an import."
    )

    @pydantic.field_validator("api_key")
    @classmethod
    def _check_key(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().strip():
            raise ValueError("is empty; allowed: an Actito API key")
        return value

    @pydantic.field_validator("entity", "table")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_-]+", value):
            raise ValueError(f"found {value!r}; allowed: letters, digits, '_' and '-'")
        return value

    @pydantic.field_validator("audience")
    @classmethod
    def _check_audience(
        cls, value: ActitoSegmentation | None, info: ValidationInfo
    ) -> ActitoSegmentation | None:
        service = info.data.get("service")
        if value is not None and service not in (None, "audiences"):
            raise ValueError(
                f"found a segmentation; allowed only with service: audiences (service is {service})"
            )
        return value


class ActitoToken:
    """The access token ``GET /auth/token`` hands out for the API key: kept in memory, renewed a minute
    before it expires (15 minutes) or after a 401; one request at a time (thread-safe)."""

    def __init__(self, platform: Actito) -> None:
        self._platform = platform
        self._lock = threading.Lock()
        self._token: str | None = None
        self._renew_at = 0.0
        self._session = requests.Session()
        self.requests = 0

    @property
    def current(self) -> str | None:
        """The token held now (for masking), None before the first request."""
        return self._token

    def get(self) -> str:
        """The current token, renewed when it is about to expire."""
        with self._lock:
            if self._token is None or time.monotonic() >= self._renew_at:
                self._fetch()
            assert self._token is not None
            return self._token

    def renew(self, sent: Mapping[str, str]) -> bool:
        """After a 401 for the token in ``sent``: a new token unless another worker already got one."""
        stale = (sent.get("Authorization") or "").removeprefix("Bearer ")
        with self._lock:
            if self._token is not None and stale and self._token != stale:
                return True
            self._fetch()
            return True

    def _fetch(self) -> None:
        platform = self._platform
        settings = platform.settings
        url = f"{platform.base_url}/auth/token"
        started = time.monotonic()
        for attempt in range(3):
            self.requests += 1
            try:
                raw = self._session.get(
                    url,
                    headers={
                        "Authorization": settings.api_key.get_secret_value(),
                        "Accept": "application/json",
                    },
                    timeout=settings.timeout_seconds,
                )
            except (requests.Timeout, requests.ConnectionError):
                time.sleep(0.2 * (attempt + 1))
                continue
            if raw.status_code >= 500 or raw.status_code == 429:
                time.sleep(0.2 * (attempt + 1))
                continue
            body = _json_of(raw.content)
            if raw.status_code != 200 or not isinstance(body.get("accessToken"), str):
                message = platform.redact(str(body.get("message") or body.get("error") or raw.text[:200]))
                raise PlatformAuthError(
                    f"{platform.label}: Actito refused the API key (GET /auth/token answered HTTP "
                    f"{raw.status_code}: {message}); check api_key"
                )
            self._token = body["accessToken"]
            lifetime = _seconds(body.get("expiresIn"))
            self._renew_at = started + max(0.0, lifetime - min(TOKEN_MARGIN_SECONDS, lifetime / 5))
            return
        raise PlatformRequestError(f"{platform.label}: GET /auth/token failed after 3 attempts")


class Actito(AudiencePlatform):
    """Actito profile tables: attributes through imports, simple segmentations (module docstring)."""

    name = "actito"
    settings_model: ClassVar[type[PlatformSettings]] = ActitoSettings
    services: ClassVar[Mapping[str, tuple[str, ...]]] = {
        "attributes": ("upsert", "update", "insert", "delete"),
        "audiences": ("add", "remove"),
    }
    default_base_url = "https://api.actito.com"
    limits = Limits(
        max_records_per_batch=SEGMENT_BATCH, requests_per_window=10, window_seconds=1.0, max_concurrency=4
    )
    audience_label = "Actito segmentation"
    audience_noun = "segmentation"
    audiences_taking = "Actito segmentations"

    settings: ActitoSettings

    def __init__(self, settings: PlatformSettings, *, destination: str = "") -> None:
        super().__init__(settings, destination=destination)
        self.token = ActitoToken(self)
        if self.settings.service == "attributes":
            # Imports of one table run one after another (assumed); each carries up to 10,000 profiles.
            self.limits = Limits(
                max_records_per_batch=MAX_IMPORT_PROFILES,
                max_bytes_per_batch=MAX_IMPORT_BYTES,
                requests_per_window=10,
                window_seconds=1.0,
                max_concurrency=1,
            )
        self.poll_interval_seconds = self.settings.poll_interval_seconds  # type: ignore[misc]
        self._session = requests.Session()
        self._key_name = "emailAddress"  # the table's key attribute (from the activation's identifier)

    @property
    def _table_path(self) -> str:
        return f"/v4/entity/{self.settings.entity}/table/{self.settings.table}"

    @property
    def _executions(self) -> str:
        return f"/mass-imports/v5/entities/{self.settings.entity}/etl-executions"

    # -- auth ---------------------------------------------------------------------------------------------

    def auth_headers(self) -> dict[str, str]:
        """The access token as a bearer token."""
        return {"Authorization": f"Bearer {self.token.get()}", "Accept": "application/json"}

    def renew_auth(self, response: HttpResponse, sent: Mapping[str, str]) -> bool:
        """A 401: renew the access token once."""
        return response.status == 401 and self.token.renew(sent)

    def runtime_secrets(self) -> list[str]:
        """The access token, masked like the API key."""
        return [self.token.current] if self.token.current else []

    def target_label(self) -> str:
        """``Actito table 'Customers'`` or ``Actito segmentation 'VIP'``."""
        if self.settings.service == "audiences":
            return super().target_label()
        return f"Actito table '{self.settings.table}'"

    # -- identifiers and activation checks ------------------------------------------------------------------

    def identifier_spec(self, name: str) -> IdentifierSpec | None:
        """``email`` (``emailAddress``) or another unique attribute's name."""
        if name == "email":
            return EMAIL
        return KEY if _NAME.fullmatch(name) else None

    def validate_activation(self, match: Mapping[str, str], mapping: Mapping[str, str]) -> list[str]:
        """One identifier; segmentations take no mapping and need an audience."""
        problems = super(AudiencePlatform, self).validate_activation(match, mapping)
        if len(match) > 1:
            problems.append(f"match: found {', '.join(match)}; allowed: one of email or a unique attribute's name "
                            "(Actito names a profile by one key)")  # fmt: skip
        if self.settings.service == "audiences":
            if mapping:
                problems.append(f"mapping: found {', '.join(mapping)}; allowed: nothing (Actito segmentations take "
                                "identifiers only)")  # fmt: skip
            if self.audience_target is None:
                problems.append("audience: found nothing; allowed: {name: ...}")
        else:
            key = _key_attribute(next(iter(match), "email"))
            for column, target in mapping.items():
                if target == key:
                    problems.append(f"mapping.{column}: found {target!r}; allowed: another attribute (the key goes "
                                    "in match)")  # fmt: skip
        return problems

    def _structure(self, transport: Transport) -> Mapping[str, Any]:
        response = transport.send(PreparedRequest("GET", self._table_path))
        if response.status != 200:
            raise self.request_error(response, f"reading the structure of {self.target_label()}")
        body = response.json()
        return body if isinstance(body, dict) else {}

    def discover_fields(self, transport: Transport) -> Mapping[str, FieldInfo] | None:
        """The table's attributes (and its subscriptions, read-only), for ``validate --connect``."""
        if self.settings.service != "attributes":
            return None
        structure = self._structure(transport)
        fields = {}
        for item in structure.get("attributes") or []:
            name = str(item.get("name"))
            fields[name] = FieldInfo(name, type=str(item.get("valueType") or item.get("type") or ""),
                                     unique=bool(item.get("unique")), read_only=name in TECHNICAL)  # fmt: skip
        for item in structure.get("subscriptions") or []:
            name = str(item.get("name"))
            fields.setdefault(name, FieldInfo(name, type="subscription", read_only=True))
        return fields

    def validate_fields(
        self, match: Mapping[str, str], mapping: Mapping[str, str], fields: Mapping[str, FieldInfo]
    ) -> list[str]:
        """The key is a unique attribute; mapped names are attributes, not technical ones, not subscriptions
        (this adapter never changes consent)."""
        problems = []
        key = _key_attribute(next(iter(match), "email"))
        info = fields.get(key)
        if info is None or info.type == "subscription":
            problems.append(f"match: {key!r} is not an attribute of {self.target_label()}")
        elif not info.unique:
            problems.append(f"match: attribute {key!r} of {self.target_label()} is not unique; allowed: a unique "
                            "attribute")  # fmt: skip
        subscriptions = {
            t for t in mapping.values() if (f := fields.get(t)) is not None and f.type == "subscription"
        }
        for column, target in mapping.items():
            if target in subscriptions:
                problems.append(f"mapping.{column}: {target!r} is a subscription of {self.target_label()}; allowed: "
                                "an attribute (DinMo never subscribes nor unsubscribes profiles)")  # fmt: skip
        others = {c: t for c, t in mapping.items() if t not in subscriptions}
        return problems + super().validate_fields(match, others, fields)

    # -- requests -------------------------------------------------------------------------------------------------

    def record_input(self, operation: str, record: Record) -> Any:
        """The key value (segmentations, deletions) or the CSV row ``{attribute: value}``."""
        name, value = next(iter(record.identifiers.items()))
        self._key_name = _key_attribute(name)
        if self.settings.service == "audiences" or operation == "delete":
            return value
        return {self._key_name: value, **{k: actito_value(v) for k, v in record.fields.items()}}

    def _import_definition(self, operation: str, columns: Sequence[str]) -> dict[str, Any]:
        return {
            "file": {"fileNameToRead": "profiles.csv",
                     "format": {"separator": ",", "encoding": "UTF-8", "enclosing": '"', "escaping": '"'}},
            "mappings": [{
                "table": {"type": "PROFILE", "name": self.settings.table},
                "mode": MODES[operation],
                "keyAttribute": self._key_name,
                "attributes": [{"fileColumn": c, "tableAttribute": c} for c in columns],
            }],
        }  # fmt: skip

    def _columns(self, inputs: Sequence[Mapping[str, Any]]) -> list[str]:
        columns = [self._key_name]
        for row in inputs:
            columns += [c for c in row if c not in columns]
        return columns

    def _csv(self, inputs: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> bytes:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        for row in inputs:
            writer.writerow(["" if row.get(c) is None else row[c] for c in columns])
        return out.getvalue().encode("utf-8")

    def _segment_path(self, value: str) -> str:
        ref = urllib.parse.quote(f"{self._key_name}={value}", safe="=@")
        return f"{self._table_path}/profile/{ref}/segmentation/{urllib.parse.quote(self._segmentation)}"

    @property
    def _segmentation(self) -> str:
        target = self.audience_target
        return target.name if target is not None and target.name else "<segmentation>"

    def build_request(
        self, operation: str, inputs: Sequence[Any], records: Sequence[Record]
    ) -> PreparedRequest:
        """The import of the batch; or, for per-profile requests, the first profile's (a description
        whose path names no profile: the real request is made by its ``call``)."""
        if self.settings.service == "audiences" or operation == "delete":
            return self._profile_request(operation, str(inputs[0]))
        columns = self._columns(inputs)
        definition = self._import_definition(operation, columns)
        content = self._csv(inputs, columns)
        url = f"{self.base_url}{self._executions}"

        def call() -> HttpResponse:
            files = {
                "inputFile": ("profiles.csv", content, "text/csv"),
                "oneShotEtlExecution": (
                    "definition.json",
                    json.dumps(definition).encode(),
                    "application/json",
                ),
            }
            return self._direct("POST", url, files=files)

        return PreparedRequest("POST", self._executions, json={"oneShotEtlExecution": definition,
                                                               "inputFile": list(inputs)}, call=call)  # fmt: skip

    def _profile_request(self, operation: str, value: str) -> PreparedRequest:
        if operation == "delete":
            path = f"{self._table_path}/profile/{urllib.parse.quote(f'{self._key_name}={value}', safe='=@')}"
            shown = f"{self._table_path}/profile/{self._key_name}=<key>"
            method = "DELETE"
        else:
            path = self._segment_path(value)
            shown = f"{self._table_path}/profile/{self._key_name}=<key>/segmentation/{self._segmentation}"
            method = "PUT" if operation == "add" else "DELETE"
        url = f"{self.base_url}{path}"
        return PreparedRequest(method, shown, json={"profile": value},
                               call=lambda: self._direct(method, url))  # fmt: skip

    def _direct(self, method: str, url: str, files: Mapping[str, Any] | None = None) -> HttpResponse:
        """One request sent here rather than by the transport's HTTP client (multipart bodies, and paths
        that hold a profile's key, which the transport would log); the transport still rate-limits,
        retries and renews the token around it."""
        try:
            raw = self._session.request(method, url, files=files, headers=self.auth_headers(),
                                        timeout=self.settings.timeout_seconds)  # fmt: skip
        except (requests.Timeout, requests.ConnectionError):
            return HttpResponse(503, {}, b"")
        return HttpResponse(raw.status_code, {k.lower(): v for k, v in raw.headers.items()}, raw.content)

    def preview_request(
        self, operation: str, inputs: Sequence[Any], records: Sequence[Record]
    ) -> PreparedRequest:
        """The import (its definition and rows), or the per-profile request with every key of the batch."""
        request = self.build_request(operation, inputs, records)
        if self.settings.service == "audiences" or operation == "delete":
            return PreparedRequest(request.method, request.path, json={"profiles": [str(i) for i in inputs]})
        return PreparedRequest(request.method, request.path, json=request.json)

    def deliver_batch(
        self, operation: str, records: Sequence[Record], inputs: Sequence[Any], transport: Transport
    ) -> BatchOutcome:
        """Attributes: start the import (polled). Segmentations and deletions: one request per profile, each
        verdict handed to the engine as it comes (``acknowledge_early``): a sync killed mid-batch does not
        send again what Actito already answered."""
        if self.settings.service == "attributes" and operation != "delete":
            response = transport.send(self.build_request(operation, inputs, records))
            return self.parse_response(operation, records, response)
        results = []
        for record, value in zip(records, inputs, strict=True):
            response = transport.send(self._profile_request(operation, str(value)))
            results.append(self._profile_verdict(operation, record, response))
            self.acknowledge_early(results[-1:])
        return BatchOutcome(results)

    def _profile_verdict(self, operation: str, record: Record, response: HttpResponse) -> RecordResult:
        if 200 <= response.status < 300:
            return RecordResult(record.key, "accepted")
        message = self.error_message(response)
        if response.status == 404 and operation in ("remove", "delete"):
            return RecordResult(record.key, "accepted")  # not there: nothing to remove
        if response.status == 404 and "segmentation" in message.lower():
            raise self.request_error(response, f"updating {self.target_label()}")
        if response.status == 404:
            return RecordResult(record.key, "rejected", "no Actito profile has this key (a segmentation add "
                                "creates none: an attributes activation creates it)", "no Actito profile")  # fmt: skip
        if response.status == 400:
            return RecordResult(record.key, "rejected", f"Actito: {message}", "Actito 400")
        raise self.request_error(response, f"updating {self.target_label()}")

    def parse_response(
        self, operation: str, records: Sequence[Record], response: HttpResponse
    ) -> BatchOutcome:
        """The import's execution id (polled), or Actito's refusal of the whole import."""
        body = response.json() or {}
        if response.status in (200, 201, 202) and isinstance(body, dict) and body.get("id") is not None:
            return BatchOutcome(job=JobHandle(str(body["id"])))
        if response.status == 400 and len(records) > 1:
            return BatchOutcome(split=True)
        if response.status == 400:
            return BatchOutcome.reject_all(records, f"Actito: {self.error_message(response)}", "Actito 400")
        raise self.request_error(response, f"importing into {self.target_label()}")

    def poll_job(
        self, operation: str, records: Sequence[Record], job: JobHandle, transport: Transport
    ) -> BatchOutcome:
        """The execution's status; once finished, its per-line errors mapped back to records."""
        response = transport.send(PreparedRequest("GET", f"{self._executions}/{job.id}"))
        if response.status != 200:
            raise self.request_error(response, f"reading import {job.id}")
        body = response.json() or {}
        status = str(body.get("status") or "").upper()
        if status in RUNNING:
            return BatchOutcome(job=job)
        if status != "FINISHED":
            logger.warning("%s: import %s ended %r; its profiles are sent again", self.label, job.id, status)
            return BatchOutcome([RecordResult(r.key, "retry") for r in records])
        answer = transport.send(PreparedRequest("GET", f"{self._executions}/{job.id}/errors"))
        if answer.status == 404:
            return BatchOutcome.accept_all(records)  # no error report: no line in error
        if answer.status != 200:
            raise self.request_error(answer, f"reading the errors of import {job.id}")
        rejected: dict[int, RecordResult] = {}
        for row in csv.DictReader(io.StringIO(answer.text)):
            try:
                index = int(str(row.get("lineNumber") or "")) - 2  # line 1 is the header
            except ValueError:
                continue
            if 0 <= index < len(records) and index not in rejected:
                kind = str(row.get("errorType") or "error")
                reason = self.redact(f"Actito {kind}: {row.get('errorMessage') or ''}".rstrip(": "))
                rejected[index] = RecordResult(records[index].key, "rejected", reason, f"Actito {kind}")
        return BatchOutcome(
            [rejected.get(i) or RecordResult(r.key, "accepted") for i, r in enumerate(records)]
        )

    # -- segmentations -----------------------------------------------------------------------------------------------

    def _resolve_audience(self, transport: Transport) -> str:
        """Segmentations are named: the name is the reference (checked by ``validate --connect``)."""
        return self._segmentation

    def check_connection(self, transport: Transport) -> None:
        """The key (a token), the table's structure and, for audiences, the simple segmentation."""
        structure = self._structure(transport)
        if self.settings.service == "audiences" and self.audience_target is not None:
            found = [s for s in structure.get("segmentations") or [] if s.get("name") == self._segmentation]
            if not found:
                names = ", ".join(repr(str(s.get("name"))) for s in structure.get("segmentations") or [])
                raise self.config_error(f"audience.name: {self._segmentation!r} is no segmentation of "
                                        f"{self.settings.table!r}; allowed: {names or 'none defined'} (create it in "
                                        "Actito's Manage segmentations app)")  # fmt: skip
            if str(found[0].get("type") or "SIMPLE").upper() != "SIMPLE":
                raise self.config_error(f"audience.name: {self._segmentation!r} is an exclusive segmentation; "
                                        "allowed: a simple segmentation")  # fmt: skip


def _key_attribute(identifier: str) -> str:
    return "emailAddress" if identifier == "email" else identifier


def actito_value(value: Any) -> Any:
    """A warehouse value as a CSV cell of an Actito import; NULL (and NaN) is an empty cell."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, decimal.Decimal):
        return str(value) if value.is_finite() else None
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, dt.date):
        return value.isoformat()
    return value


def _seconds(text: Any) -> float:
    """``"900s"`` (Actito's ``expiresIn``) or a number of seconds; 900 when unreadable."""
    try:
        return float(str(text).strip().removesuffix("s"))
    except ValueError:
        return 900.0


def _json_of(content: bytes) -> dict[str, Any]:
    try:
        body = json.loads(content) if content else {}
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


register_platform("actito", ActitoSettings, Actito)
