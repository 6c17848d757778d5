"""Iterable: user profile fields and static list membership, over Iterable's REST API.

A ``type: iterable`` destination serves one ``service``. Every request carries the project's API key in
the ``Api-Key`` header (``api_key``, a server-side key, from ``{env: VAR}``). The API root is the
project's data center: ``https://api.iterable.com`` (``data_center: us``, the default) or
``https://api.eu.iterable.com`` (``data_center: eu``); a key works only in the data center it was created
in. ``base_url`` overrides both. Users are named by one identifier: ``email`` (trimmed, lower-cased, never
hashed: Iterable sends to it) or ``userId`` (``user_id`` also accepted; sent as is), as the project
identifies users (email-based, userID-based or hybrid projects). Iterable wants one of them per user,
not both.

- ``attributes`` -- user profile fields. ``upsert``: ``POST /api/users/bulkUpdate`` with ``{"users":
  [{"email"|"userId", "dataFields": {...}, "preferUserId", "mergeNestedObjects"}], "createNewFields"}``
  (Iterable creates the users it does not hold and overwrites the top-level fields sent; fields not
  sent are left alone). A NULL mapped value is sent as ``null`` (``null_values: skip`` leaves it out).
  The answer holds ``successCount``, ``failCount`` and ``failedUpdates`` (``invalidEmails``,
  ``invalidUserIds``, ``invalidDataEmails``, ``invalidDataUserIds``, ``forgottenEmails``,
  ``forgottenUserIds``, ``conflictEmails``, ``conflictUserIds``): each listed identifier is mapped back
  to its record, rejected with the category as reason (and sent again by the next syncs); the others
  count as done. ``filteredOutFields`` (fields the project drops because it does not create new
  fields) is logged. ``delete`` (the removals of ``sync_mode: mirror``): ``DELETE /api/users/{email}``
  or ``DELETE /api/users/byUserId/{userId}``, one request per user (Iterable deletes asynchronously;
  it does not prevent later data from re-creating the user). ``update`` and ``insert`` are not offered:
  ``bulkUpdate`` has no "existing users only" or "new users only" mode.
- ``audiences`` -- a static list (the activation's ``audience``: ``{name:}`` found through ``GET
  /api/lists`` among ``Standard`` lists or created with ``POST /api/lists``, or ``{id:}``). ``add``:
  ``POST /api/lists/subscribe`` ``{"listId", "subscribers": [{"email"|"userId"}],
  "updateExistingUsersOnly"}``; ``remove``: ``POST /api/lists/unsubscribe`` ``{"listId",
  "subscribers"}``. Both answer like ``bulkUpdate``: an add whose user is listed in ``failedUpdates`` is
  rejected (``notFoundEmails`` only happens with ``update_existing_users_only: true``, which userID-based
  and hybrid projects respect: then a list add creates no user); a remove of a user Iterable does not
  hold (``notFoundEmails``/``notFoundUserIds``) is done. Iterable has no "replace the list": a full sync
  is remove + add.

Consent. Iterable keeps subscriptions apart from profile fields: ``emailListIds``,
``unsubscribedChannelIds``, ``unsubscribedMessageTypeIds`` and ``subscribedMessageTypeIds``, which
``bulkUpdate`` would overwrite without subscribe/unsubscribe events. A mapping onto any of them is
refused: an attributes sync never changes anyone's subscriptions. A list remove never sends
``channelUnsubscribe`` (that would be a global unsubscribe from the list's channel) nor ``campaignId``;
a list add only places the user in the static list, it does not lift a channel or message-type
unsubscribe the user holds.

Values: ``dataFields`` are JSON; decimals become numbers, dates and timestamps Iterable's date format
``yyyy-MM-dd HH:mm:ss +00:00`` (UTC), which Iterable stores as dates. A field's type cannot change once
Iterable holds it (a mismatch is ``invalidDataEmails``). ``validate --connect`` reads ``GET
/api/users/getFields`` (which also checks the key): with ``create_new_fields: false`` a mapped field the
project does not have is refused (Iterable would drop it); otherwise it is reported only when the project
drops new fields at sync time (``filteredOutFields``, logged).

Limits. ``bulkUpdate``: request body at most 4 MB, 5 requests per second per project. ``GET
/api/lists``: 100 per second; user deletes: 100 per second; ``getFields``: 3 per second. The SDK keeps
to 5 requests per second for every service (the lowest limit of the endpoints it calls at volume, and the
documented one for ``bulkUpdate``) with 2 in flight. Batches carry at most 1,000 users and 4 MB. A
``429`` (``{"code": "RateLimitExceeded"}``, leaky bucket) is waited out (``Retry-After`` when sent, else
backoff).

Errors: ``{"msg", "code", "params"}``. ``401`` (``BadApiKey``, ``Invalid API key``) and ``403``
(``Forbidden``: a key without the permission) stop the sync at once; a ``400`` on a batch
(``BadParams``, ``BadJsonBody``, ``RequestFieldsTypesMismatched``) splits it until the bad user is alone,
then rejects it with Iterable's message.

Iterable's documentation this adapter follows:

- base URLs per data center, ``Api-Key`` header:
  https://support.iterable.com/hc/en-us/articles/41044692130196-Getting-Started-with-Iterable-s-API
- the API reference (endpoints, bodies, ``UserBulkUpdateListResponse`` with ``failedUpdates``,
  ``IterableApiResponse`` codes, per-endpoint rate limits, the 4 MB body of ``bulkUpdate``):
  https://api.iterable.com/api/docs, published as ``api-docs.json`` in Iterable's official client,
  https://github.com/Iterable/api-client
- identifying users by ``email`` or ``userId`` (email-based, userID-based, hybrid projects):
  https://support.iterable.com/hc/articles/29156459027348
- rate-limit signal (HTTP 429, leaky bucket): https://docs.datagrail.io/docs/integrations/api-documentation/iterable

Assumed where the documentation is silent: the number of users per ``bulkUpdate`` and per list
subscribe/unsubscribe call (1,000, Iterable's usual batch size; only the 4 MB body is documented, and it is
assumed for the list calls too); the rate limit of ``lists/subscribe`` and ``lists/unsubscribe`` (not
stated: 5 per second like ``bulkUpdate``); the answer to the delete of a user Iterable does not hold
(``404``, or ``400`` with ``NotFound``/``UnknownEmailError``/``UnknownUserIdError``: counted as done);
``Retry-After`` on a 429 (not documented: read when present).
"""

from __future__ import annotations

import datetime as dt
import decimal
import logging
import math
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import pydantic
from pydantic import Field, SecretStr, ValidationInfo

from dinmo_dagster.platforms import register_platform
from dinmo_dagster.platforms.audiences import AudiencePlatform, AudienceTarget
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
from dinmo_dagster.platforms.engine import mask_identifier
from dinmo_dagster.platforms.identifiers import IdentifierError, IdentifierSpec, normalize_email

if TYPE_CHECKING:
    from dinmo_dagster.platforms.http import Transport

__all__ = ["Iterable", "IterableList", "IterableSettings", "iterable_value"]

logger = logging.getLogger("dinmo_dagster.platforms")

DATA_CENTERS = {"us": "https://api.iterable.com", "eu": "https://api.eu.iterable.com"}
MAX_USERS = 1_000
MAX_BODY_BYTES = 4 * 1024 * 1024
# Profile fields that hold subscriptions: an attributes sync never writes them (consent).
SUBSCRIPTION_FIELDS = (
    "emailListIds",
    "unsubscribedChannelIds",
    "unsubscribedMessageTypeIds",
    "subscribedMessageTypeIds",
)
# failedUpdates categories -> what they mean (the reason kept with a rejected record).
FAILURES = {
    "invalidEmails": "malformed e-mail address",
    "invalidUserIds": "malformed userId",
    "invalidDataEmails": "invalid data in dataFields",
    "invalidDataUserIds": "invalid data in dataFields",
    "forgottenEmails": "the user was GDPR-forgotten",
    "forgottenUserIds": "the user was GDPR-forgotten",
    "conflictEmails": "an existing e-mail prevented the identity update",
    "conflictUserIds": "an existing userId prevented the identity update",
    "notFoundEmails": "no Iterable user has this e-mail (updateExistingUsersOnly)",
    "notFoundUserIds": "no Iterable user has this userId (updateExistingUsersOnly)",
}
_GONE = ("NotFound", "UnknownEmailError", "UnknownUserIdError")


def _user_id(value: str, _country: str | None) -> str:
    text = value.strip()
    if not text:
        raise IdentifierError("an empty userId")
    return text


EMAIL = IdentifierSpec("email", normalize=lambda v, _c: normalize_email(v))
USER_ID = IdentifierSpec("id", normalize=_user_id)
_IDENTIFIERS = {"email": "email", "userid": "userId", "user_id": "userId"}


class IterableList(AudienceTarget):
    """An Iterable static list: ``{name: ...}`` (created when missing) or ``{id: ...}``."""

    noun: ClassVar[str] = "list"


class IterableSettings(PlatformSettings):
    """Settings of a ``type: iterable`` destination."""

    service: Literal["attributes", "audiences"] = Field(
        description="attributes (user profile fields) or audiences (static list membership)."
    )
    api_key: SecretStr = Field(description="A server-side Iterable API key (from {env: VAR}); secret.")
    data_center: Literal["us", "eu"] = Field(
        default="us",
        description="The project's data center: us (api.iterable.com) or eu (api.eu.iterable.com).",
    )
    audience: IterableList | None = Field(
        default=None, description="audiences: the list, from the activation."
    )
    prefer_user_id: bool = Field(
        default=False,
        description="attributes by userId in an email-based project: create users whose userId is new.",
    )
    merge_nested_objects: bool = Field(
        default=False, description="attributes: merge top-level objects instead of overwriting them."
    )
    create_new_fields: bool | None = Field(
        default=None,
        description="attributes: add fields the project lacks (true) or drop them (false); default: the project's setting.",
    )
    update_existing_users_only: bool = Field(
        default=False,
        description="audiences: a list add creates no user (respected by userID-based and hybrid projects).",
    )

    @pydantic.field_validator("api_key")
    @classmethod
    def _check_key(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().strip():
            raise ValueError("is empty; allowed: an Iterable server-side API key")
        return value

    @pydantic.field_validator("audience")
    @classmethod
    def _check_audience(cls, value: IterableList | None, info: ValidationInfo) -> IterableList | None:
        service = info.data.get("service")
        if value is not None and service not in (None, "audiences"):
            raise ValueError(f"found a list; allowed only with service: audiences (service is {service})")
        return value

    @pydantic.field_validator("update_existing_users_only")
    @classmethod
    def _check_existing_only(cls, value: bool, info: ValidationInfo) -> bool:
        service = info.data.get("service")
        if value and service not in (None, "audiences"):
            raise ValueError(f"found {value!r}; allowed only with service: audiences")
        return value


class Iterable(AudiencePlatform):
    """Iterable users: profile fields through bulk updates, static list membership."""

    name = "iterable"
    settings_model = IterableSettings
    services: ClassVar[Mapping[str, tuple[str, ...]]] = {
        "attributes": ("upsert", "delete"),
        "audiences": ("add", "remove"),
    }
    default_base_url = DATA_CENTERS["us"]
    limits = Limits(
        max_records_per_batch=MAX_USERS,
        max_bytes_per_batch=MAX_BODY_BYTES,
        requests_per_window=5,
        window_seconds=1.0,
        max_concurrency=2,
    )
    audience_label = "Iterable list"
    audience_noun = "list"
    audiences_taking = "Iterable lists"

    settings: IterableSettings

    @property
    def base_url(self) -> str:
        """``base_url``, or the data center's API root."""
        return self.settings.base_url or DATA_CENTERS[self.settings.data_center]

    def auth_headers(self) -> dict[str, str]:
        """The API key in Iterable's ``Api-Key`` header."""
        return {"Api-Key": self.settings.api_key.get_secret_value()}

    def target_label(self) -> str:
        """``Iterable users`` or ``Iterable list 'VIP'``."""
        return super().target_label() if self.settings.service == "audiences" else "Iterable users"

    # -- identifiers and activation checks --------------------------------------------------------------

    def identifier_spec(self, name: str) -> IdentifierSpec | None:
        """``email`` (never hashed) or ``userId`` (as is)."""
        kind = _IDENTIFIERS.get(name.lower())
        if kind is None:
            return None
        return EMAIL if kind == "email" else USER_ID

    def validate_activation(self, match: Mapping[str, str], mapping: Mapping[str, str]) -> list[str]:
        """One identifier (email or userId); attributes need no subscription field, lists no mapping."""
        key = "identifiers" if self.settings.service == "audiences" else "match"
        problems = []
        if len(match) != 1 or any(n.lower() not in _IDENTIFIERS for n in match):
            problems.append(
                f"{key}: found {', '.join(match) or 'nothing'}; allowed: one of email, userId "
                "(Iterable names a user by one of them, as the project identifies users)"
            )
        if self.settings.service == "audiences":
            if mapping:
                problems.append(
                    f"mapping: found {', '.join(mapping)}; allowed: nothing (Iterable lists take identifiers only)"
                )
            if self.audience_target is None:
                problems.append("audience: found nothing; allowed: {name: ...} or {id: ...}")
            return problems
        for column, target in mapping.items():
            if target in SUBSCRIPTION_FIELDS:
                problems.append(
                    f"mapping.{column}: found {target!r}; allowed: a profile field (subscriptions are never "
                    "set by an attributes sync: Iterable changes them without subscribe events)"
                )
            elif str(target).lower() in _IDENTIFIERS:
                problems.append(
                    f"mapping.{column}: found {target!r}; allowed: a profile field (the identifier goes in match)"
                )
        return problems

    @staticmethod
    def _ident(record: Record) -> tuple[str, str]:
        name, value = next(iter(record.identifiers.items()))
        return _IDENTIFIERS[name.lower()], value

    # -- requests -------------------------------------------------------------------------------------------

    def record_input(self, operation: str, record: Record) -> Any:
        """The user of a bulkUpdate, a list subscriber, or the identifier of a delete."""
        kind, value = self._ident(record)
        if self.settings.service == "audiences" or operation == "delete":
            return {kind: value}
        user: dict[str, Any] = {
            kind: value,
            "dataFields": {k: iterable_value(v) for k, v in record.fields.items()},
        }
        if kind == "userId" and self.settings.prefer_user_id:
            user["preferUserId"] = True
        if self.settings.merge_nested_objects:
            user["mergeNestedObjects"] = True
        return user

    def build_request(
        self, operation: str, inputs: Sequence[Any], records: Sequence[Record]
    ) -> PreparedRequest:
        """The bulkUpdate, the list subscribe/unsubscribe, or (delete) the first user's delete."""
        if self.settings.service == "audiences":
            body: dict[str, Any] = {"listId": _list_id(self._audience_ref()), "subscribers": list(inputs)}
            if operation == "add":
                body["updateExistingUsersOnly"] = self.settings.update_existing_users_only
                return PreparedRequest("POST", "/api/lists/subscribe", json=body)
            return PreparedRequest("POST", "/api/lists/unsubscribe", json=body)
        if operation == "delete":
            return self._delete_request(inputs[0])
        body = {"users": list(inputs)}
        if self.settings.create_new_fields is not None:
            body["createNewFields"] = self.settings.create_new_fields
        return PreparedRequest("POST", "/api/users/bulkUpdate", json=body)

    @staticmethod
    def _delete_request(user: Mapping[str, str]) -> PreparedRequest:
        if "email" in user:
            return PreparedRequest("DELETE", f"/api/users/{urllib.parse.quote(user['email'], safe='@')}")
        return PreparedRequest("DELETE", f"/api/users/byUserId/{urllib.parse.quote(user['userId'], safe='')}")

    def preview_request(
        self, operation: str, inputs: Sequence[Any], records: Sequence[Record]
    ) -> PreparedRequest:
        """The first request; a delete's path shows the user masked (a path is not masked by the preview)."""
        if operation == "delete":
            kind, value = next(iter(inputs[0].items()))
            prefix = "/api/users/" if kind == "email" else "/api/users/byUserId/"
            return PreparedRequest("DELETE", prefix + mask_identifier(value))
        return self.build_request(operation, inputs, records)

    def deliver_batch(
        self, operation: str, records: Sequence[Record], inputs: Sequence[Any], transport: Transport
    ) -> BatchOutcome:
        """One bulk request; a delete is one request per user (up to 1,000 a batch), each verdict handed to
        the engine as it comes (``acknowledge_early``): a sync killed mid-batch does not delete them again."""
        if self.settings.service == "audiences":
            self._resolve_audience(transport)
        if operation != "delete":
            return super().deliver_batch(operation, records, inputs, transport)
        results = []
        for record, user in zip(records, inputs):
            response = transport.send(self._delete_request(user))
            body = response.json() if response.content else None
            code = body.get("code") if isinstance(body, dict) else None
            if response.status == 200 or response.status == 404 or (response.status == 400 and code in _GONE):
                results.append(RecordResult(record.key, "accepted"))  # deleted, or not in Iterable at all
            elif response.status == 400:
                results.append(
                    RecordResult(
                        record.key, "rejected", self.error_message(response), str(code or "BadParams")
                    )
                )
            else:
                raise self.request_error(response, "deleting a user")
            self.acknowledge_early(results[-1:])
        return BatchOutcome(results)

    def parse_response(
        self, operation: str, records: Sequence[Record], response: HttpResponse
    ) -> BatchOutcome:
        """``failedUpdates`` mapped back to the records; a 400 splits the batch down to the bad user."""
        body = response.json() if response.content else None
        if response.status in (400, 404):
            code = body.get("code") if isinstance(body, dict) else None
            if self.settings.service == "audiences" and (response.status == 404 or _names_list(body)):
                raise self.request_error(response, f"updating {self.target_label()} (check the audience)")
            if len(records) > 1:
                return BatchOutcome(split=True)
            return BatchOutcome.reject_all(records, self.error_message(response), str(code or "BadParams"))
        if response.status != 200 or not isinstance(body, dict):
            raise self.request_error(response, f"updating {self.target_label()}")
        failed: dict[str, tuple[str, str]] = {}
        categories = dict(body.get("failedUpdates") or {})
        if not categories:  # deprecated top-level lists, for answers without failedUpdates
            categories = {k: body[k] for k in ("invalidEmails", "invalidUserIds") if body.get(k)}
        for category, values in categories.items():
            for value in values or ():
                key = str(value).strip()
                key = key.lower() if "Email" in category else key
                failed.setdefault(key, (category, FAILURES.get(category, category)))
        if body.get("filteredOutFields"):
            logger.warning(
                "%s: Iterable dropped fields the project does not hold: %s (set create_new_fields: true, or "
                "create them in Iterable)",
                self.label,
                ", ".join(map(str, body["filteredOutFields"])),
            )
        results = []
        for record in records:
            kind, value = self._ident(record)
            hit = failed.get(value.lower() if kind == "email" else value)
            if hit is None:
                results.append(RecordResult(record.key, "accepted"))
            elif operation == "remove" and hit[0].startswith("notFound"):
                results.append(RecordResult(record.key, "accepted"))  # not in Iterable: not in the list
            else:
                results.append(
                    RecordResult(
                        record.key, "rejected", f"Iterable's failedUpdates.{hit[0]}: {hit[1]}", hit[0]
                    )
                )
        return BatchOutcome(results)

    # -- lists -----------------------------------------------------------------------------------------------

    def _lists(self, transport: Transport) -> list[dict[str, Any]]:
        response = transport.send(PreparedRequest("GET", "/api/lists"))
        if response.status != 200:
            raise self.request_error(response, "reading the lists (GET /api/lists)")
        return [item for item in (response.json() or {}).get("lists") or [] if isinstance(item, dict)]

    def _find_by_name(self, name: str, transport: Transport) -> str | None:
        found = [
            str(item["id"])
            for item in self._lists(transport)
            if item.get("name") == name and item.get("listType", "Standard") == "Standard"
        ]
        return self._the_one_named(name, found, "Iterable static lists")

    def _create_named(self, target: AudienceTarget, transport: Transport) -> str:
        response = transport.send(PreparedRequest("POST", "/api/lists", json={"name": target.name}))
        body = response.json() or {}
        if response.status != 200 or body.get("listId") is None:
            raise self.request_error(response, f"creating the list {target.name!r} (POST /api/lists)")
        logger.info("%s: created Iterable list %r (%s)", self.label, target.name, body["listId"])
        return str(body["listId"])

    # -- responses -------------------------------------------------------------------------------------------

    def error_message(self, response: HttpResponse) -> str:
        """Iterable's ``msg`` (with its ``code``), secrets masked."""
        body = response.json() if response.content else None
        if isinstance(body, dict) and isinstance(body.get("msg"), str) and body["msg"]:
            code = body.get("code")
            return self.redact(f"{body['msg']} ({code})" if code else body["msg"])
        return super().error_message(response)

    # -- validate --connect ----------------------------------------------------------------------------------

    def check_connection(self, transport: Transport) -> None:
        """The key (``GET /api/users/getFields`` or ``GET /api/lists``) and the list given by id."""
        if self.settings.service == "attributes":
            return  # discover_fields reads the project's fields with the key
        lists = self._lists(transport)
        target = self.audience_target
        if target is not None and target.id and not any(str(i.get("id")) == target.id for i in lists):
            raise self.config_error(f"audience.id: no list {target.id} in the Iterable project")

    def discover_fields(self, transport: Transport) -> Mapping[str, FieldInfo] | None:
        """The project's user fields (``GET /api/users/getFields``: ``{"fields": {name: type}}``)."""
        if self.settings.service != "attributes":
            return None
        response = transport.send(PreparedRequest("GET", "/api/users/getFields"))
        if response.status != 200:
            raise self.request_error(response, "reading the user fields (GET /api/users/getFields)")
        fields = (response.json() or {}).get("fields") or {}
        return {str(name): FieldInfo(str(name), type=str(kind)) for name, kind in fields.items()}

    def validate_fields(
        self, match: Mapping[str, str], mapping: Mapping[str, str], fields: Mapping[str, FieldInfo]
    ) -> list[str]:
        """A field the project lacks is a problem only with ``create_new_fields: false`` (Iterable drops it)."""
        if self.settings.create_new_fields is not False:
            return []
        return [
            f"{p}; create_new_fields is false, so Iterable would drop it"
            for p in super().validate_fields(match, mapping, fields)
        ]


def _names_list(body: Any) -> bool:
    """Whether an error answer is about the list (an unknown ``listId``) rather than a subscriber."""
    return isinstance(body, dict) and "list" in str(body.get("msg", "")).lower()


def _list_id(ref: str) -> Any:
    return int(ref) if ref.isdigit() else ref  # a placeholder in a preview before the list is resolved


def iterable_value(value: Any) -> Any:
    """A warehouse value as Iterable's ``dataFields`` take it: JSON, dates in Iterable's date format (UTC)."""
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, decimal.Decimal):
        if not value.is_finite():
            return None
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dt.datetime):
        when = value.astimezone(dt.timezone.utc) if value.tzinfo else value
        return when.strftime("%Y-%m-%d %H:%M:%S +00:00")
    if isinstance(value, dt.date):
        return f"{value.isoformat()} 00:00:00 +00:00"
    if isinstance(value, (list, tuple)):
        return [iterable_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): iterable_value(v) for k, v in value.items()}
    if isinstance(value, bytes):
        return value.hex()
    return value


register_platform("iterable", IterableSettings, Iterable)
