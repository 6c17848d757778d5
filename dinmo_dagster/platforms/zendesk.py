"""Zendesk Support: the ``attributes`` service for users and custom object records, through bulk jobs.

A ``type: zendesk`` destination writes one ``object``: ``users`` (end users) or ``custom_object`` (the
records of the custom object named by ``custom_object_key``). The API root is
``https://{subdomain}.zendesk.com`` (``base_url`` overrides it). Authentication is an API token --
``Authorization: Basic base64("{email}/token:{api_token}")`` -- or an OAuth access token --
``Authorization: Bearer <oauth_token>``; both come from ``{env: VAR}`` and are never logged.

Operations (every batch holds at most 100 records, Zendesk's limit for its bulk endpoints, and each is
one background job polled to completion inside the run):

- users ``upsert``: ``POST /api/v2/users/create_or_update_many`` ``{"users": [...]}``. Zendesk finds
  the user by ``email`` or ``external_id`` (the activation's ``match``: one or both; e-mails are trimmed
  and lower-cased, nothing is hashed: Zendesk needs the real address) and creates the ones it does not
  hold. Mapped names that are Zendesk user properties (``name``, ``phone``, ``locale``, ``time_zone``,
  ``notes``, ``details``, ``tags``, ``organization_id``...) are set as such; any other name (or
  ``user_fields.<key>``) is a custom user field, sent under ``user_fields``. ``role`` and
  ``custom_role_id`` are refused: a segment never turns customers into agents or admins. A NULL
  clears the field (``null`` is sent) unless the activation says ``null_values: skip``.
- users ``delete`` (the removals of ``sync_mode: mirror``): ``DELETE
  /api/v2/users/destroy_many?external_ids=a,b,...``. Zendesk *soft-deletes* the users (they can be
  restored, and are only purged later by Zendesk); this needs ``external_id`` in ``match`` (the bulk
  delete takes ids or external ids, not e-mails), and a user Zendesk does not hold counts as done.
- custom objects ``upsert``: ``POST /api/v2/custom_objects/{key}/jobs`` with ``{"job": {"action":
  "create_or_update_by_external_id", "items": [{"external_id", "name", "custom_object_fields"}]}}``;
  ``match`` is ``{external_id: column}``; a mapped ``name`` is the record's name, every other mapped
  name a custom object field. ``delete``: the same endpoint with ``"action": "delete_by_external_id"``
  and the external ids as items.

Every job answers ``job_status`` (``queued`` -> ``working`` -> ``completed``, or ``failed`` /
``killed``), polled with ``GET /api/v2/job_statuses/{id}`` every ``poll_interval_seconds``. A
completed job's ``results[]`` hold one entry per item, in the order sent (Zendesk's developer advocacy
confirmed the order; an ``index`` is used when present): ``status`` ``Created`` / ``Updated`` /
``Deleted``, or ``Failed`` with ``error`` and ``details`` -- that record is rejected with Zendesk's
``details`` (its ``error`` as the reason code) and sent again by the next sync; the others count as
done. A ``failed`` or ``killed`` job sends its records again (the upsert is idempotent), up to the
retry policy. A failed delete whose error says the user or record was not found counts as done.

Limits: the account's rate limit is per minute and depends on the plan (Team 200, Growth and
Professional 400, Enterprise 700, High Volume add-on and Enterprise Plus 2,500; legacy Essential 10).
The SDK starts at 200 a minute (10 requests per 3 seconds) and follows the ``X-Rate-Limit`` header
(the account's own limit) up to 2,500; ``rate_limit`` lowers it. ``X-Rate-Limit-Remaining: 0`` holds
every worker until ``ratelimit-reset``; a ``429`` carries ``Retry-After`` (seconds), which every
worker waits out. At most 30 jobs may be queued or running per account: the SDK runs at most 4 at once.

Errors: ``401`` (``Couldn't authenticate you``) and ``403`` (``Forbidden``: the agent lacks the
permission, or bulk user imports are not enabled for the account) stop the sync with Zendesk's message;
a ``422``/``400`` of the whole request (``{"error": "RecordInvalid", "description", "details"}``) splits
the batch until the bad record is alone, then rejects it with Zendesk's description and details.

``validate --connect`` reads ``GET /api/v2/users/me`` (the credentials; an answer whose user has no id
is Zendesk's anonymous user: the credentials were not accepted) and the schema mapped names are checked
against: ``GET /api/v2/user_fields`` (users: the user fields' ``key``, ``type``, ``active``, plus the
user properties above) or ``GET /api/v2/custom_objects/{key}/fields`` (a missing custom object is
Zendesk's ``404``).

Zendesk's documentation this adapter follows:

- Create Or Update Many Users (100 users, by email or external_id, job_status), Bulk Delete Users
  (``destroy_many``, ids or external_ids, soft delete), user properties:
  https://developer.zendesk.com/api-reference/ticketing/users/users/
- Job Statuses (``queued``, ``working``, ``failed``, ``completed``, ``killed``; results of bulk create,
  update and delete jobs): https://developer.zendesk.com/api-reference/ticketing/ticket-management/job_statuses/
- order and statuses of ``create_or_update_many`` results (Created, Updated, Failed):
  https://support.zendesk.com/hc/en-us/community/posts/4408861015066-Create-or-Update-Many-Users-response-specifications
- User Fields (``key``, ``type``, ``active``): https://developer.zendesk.com/api-reference/ticketing/users/user_fields/
- Custom object records and their bulk jobs (100 records, ``create_or_update_by_external_id``,
  ``delete_by_external_id``), custom object fields:
  https://developer.zendesk.com/api-reference/custom-data/custom-objects/custom_object_records/ and
  https://developer.zendesk.com/api-reference/custom-data/custom-objects/custom_object_fields/
- rate limits (plan limits, ``X-Rate-Limit``, ``X-Rate-Limit-Remaining``, ``ratelimit-reset``, 429
  with ``Retry-After``, the job limit): https://developer.zendesk.com/api-reference/introduction/rate-limits
  and https://developer.zendesk.com/documentation/api-basics/best-practices/best-practices-for-avoiding-rate-limiting
- API token and OAuth authentication: https://developer.zendesk.com/api-reference/introduction/security-and-auth/

Assumed where the pages were not precise: the results of a custom object records job take the same
shape as the other bulk jobs' (``id``, ``status`` or ``success``, ``error``, ``details``, in the order
of the items); an item of ``destroy_many`` naming an external id Zendesk does not hold fails with an
error saying it was not found; ``create_or_update_many`` refuses to create a user without ``name``
(the user's only mandatory property), reporting it in that user's result.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import logging
import math
import re
from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import pydantic
from pydantic import Field, SecretStr, ValidationInfo

from dinmo_dagster.platforms import register_platform
from dinmo_dagster.platforms.base import (
    BatchOutcome,
    FieldInfo,
    HttpResponse,
    JobHandle,
    Limits,
    Platform,
    PlatformSettings,
    PreparedRequest,
    Record,
    RecordResult,
)
from dinmo_dagster.platforms.errors import PlatformAuthError
from dinmo_dagster.platforms.identifiers import IdentifierSpec, normalize_email

if TYPE_CHECKING:
    from dinmo_dagster.platforms.http import Transport
    from dinmo_dagster.platforms.ratelimit import RateLimiter

__all__ = ["Zendesk", "ZendeskSettings"]

logger = logging.getLogger("dinmo_dagster.platforms")

MAX_BULK = 100
MAX_RATE_PER_MINUTE = 2_500
_SUBDOMAIN = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_KEY = re.compile(r"[a-z0-9_]+")
# Writable user properties set at the top level of a user object; every other mapped name is a user field.
USER_PROPERTIES = frozenset(
    {
        "name",
        "alias",
        "details",
        "notes",
        "phone",
        "shared_phone_number",
        "locale",
        "time_zone",
        "iana_time_zone",
        "organization_id",
        "default_group_id",
        "tags",
        "verified",
        "suspended",
        "signature",
        "moderator",
        "ticket_restriction",
        "only_private_comments",
        "restricted_agent",
        "remote_photo_url",
    }
)
REFUSED_PROPERTIES = {
    "role": "a segment never makes agents or admins",
    "custom_role_id": "a segment never makes agents or admins",
    "id": "Zendesk assigns user ids",
}
USER_IDENTIFIERS = {
    "email": IdentifierSpec("email", optional=True, normalize=lambda v, _c: normalize_email(v)),
    "external_id": IdentifierSpec("id", optional=True),
}
_NOT_FOUND = re.compile(r"not ?found|does not exist|RecordNotFound", re.IGNORECASE)


class ZendeskSettings(PlatformSettings):
    """Settings of a ``type: zendesk`` destination."""

    service: Literal["attributes"] = Field(default="attributes", description="Zendesk offers attributes.")
    subdomain: str = Field(description="The account's subdomain: acme for https://acme.zendesk.com.")
    object: Literal["users", "custom_object"] = Field(
        default="users", description="users, or custom_object (the records of custom_object_key)."
    )
    custom_object_key: str | None = Field(
        default=None, validate_default=True, description="object custom_object: the custom object's key."
    )
    email: str | None = Field(default=None, description="API token auth: the agent's e-mail address.")
    api_token: SecretStr | None = Field(default=None, description="An API token (from {env: VAR}); secret.")
    oauth_token: SecretStr | None = Field(
        default=None, validate_default=True, description="Or an OAuth access token (from {env: VAR}); secret."
    )
    poll_interval_seconds: float = Field(
        default=2.0, gt=0, le=300, description="Seconds between two polls of a job's status."
    )

    @pydantic.field_validator("subdomain")
    @classmethod
    def _check_subdomain(cls, value: str) -> str:
        if not _SUBDOMAIN.fullmatch(value):
            raise ValueError(
                f"found {value!r}; allowed: the account's subdomain alone (acme for https://acme.zendesk.com)"
            )
        return value

    @pydantic.field_validator("custom_object_key")
    @classmethod
    def _check_key(cls, value: str | None, info: ValidationInfo) -> str | None:
        obj = info.data.get("object")
        if obj == "custom_object" and not value:
            raise ValueError("found nothing; allowed: the key of a custom object (object is custom_object)")
        if obj == "users" and value is not None:
            raise ValueError(f"found {value!r}; allowed only with object: custom_object")
        if value is not None and not _KEY.fullmatch(value):
            raise ValueError(f"found {value!r}; allowed: a custom object key (lower-case letters, digits, _)")
        return value

    @pydantic.field_validator("oauth_token")
    @classmethod
    def _check_auth(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        email, token = info.data.get("email"), info.data.get("api_token")
        if value is not None and (email is not None or token is not None):
            raise ValueError("found both oauth_token and email/api_token; allowed: one of the two")
        if value is not None:
            if not value.get_secret_value().strip():
                raise ValueError("is empty; allowed: an OAuth access token")
            return value
        if email is None or token is None or not token.get_secret_value().strip():
            raise ValueError(
                "found nothing; allowed: email and api_token (an API token), or oauth_token (an OAuth access token)"
            )
        return value


class Zendesk(Platform):
    """Zendesk users and custom object records: bulk upsert and delete jobs."""

    name = "zendesk"
    settings_model = ZendeskSettings
    services: ClassVar[Mapping[str, tuple[str, ...]]] = {"attributes": ("upsert", "delete")}
    limits = Limits(
        max_records_per_batch=MAX_BULK,
        requests_per_window=10,
        window_seconds=3.0,
        max_requests_per_window=125,  # 2,500 a minute: the highest plan limit the headers may announce
        max_concurrency=4,
    )

    settings: ZendeskSettings

    def __init__(self, settings: PlatformSettings, *, destination: str = "") -> None:
        super().__init__(settings, destination=destination)
        self.poll_interval_seconds = self.settings.poll_interval_seconds  # type: ignore[misc]

    @property
    def base_url(self) -> str:
        """``https://{subdomain}.zendesk.com``, or the ``base_url`` setting."""
        return self.settings.base_url or f"https://{self.settings.subdomain}.zendesk.com"

    @property
    def users(self) -> bool:
        """True when the destination writes users (else custom object records)."""
        return self.settings.object == "users"

    def auth_headers(self) -> dict[str, str]:
        """Basic ``{email}/token:{api_token}``, or Bearer with the OAuth token."""
        settings = self.settings
        if settings.oauth_token is not None:
            return {"Authorization": f"Bearer {settings.oauth_token.get_secret_value()}"}
        assert settings.api_token is not None and settings.email is not None
        pair = f"{settings.email}/token:{settings.api_token.get_secret_value()}".encode()
        return {"Authorization": "Basic " + base64.b64encode(pair).decode("ascii")}

    def runtime_secrets(self) -> list[str]:
        """The Basic credentials as sent (base64), masked like the token itself."""
        return [self.auth_headers()["Authorization"].split(" ", 1)[1]]

    def target_label(self) -> str:
        """``Zendesk users`` or ``Zendesk custom object 'car'``."""
        return "Zendesk users" if self.users else f"Zendesk custom object {self.settings.custom_object_key!r}"

    # -- identifiers and activation checks ------------------------------------------------------------

    def identifier_spec(self, name: str) -> IdentifierSpec | None:
        """users: email and/or external_id; custom objects: external_id."""
        if self.users:
            return USER_IDENTIFIERS.get(name)
        return IdentifierSpec("id") if name == "external_id" else None

    def validate_activation(self, match: Mapping[str, str], mapping: Mapping[str, str]) -> list[str]:
        """Known identifiers, and mapped names Zendesk lets a sync write."""
        allowed = "email, external_id" if self.users else "external_id"
        problems = []
        if not match:
            problems.append(f"match: found nothing; allowed: {allowed}")
        problems.extend(
            f"match.{name}: {self.target_label()} have no identifier {name!r}; allowed: {allowed}"
            for name in match
            if self.identifier_spec(name) is None
        )
        for column, target in mapping.items():
            target = str(target)
            if target in REFUSED_PROPERTIES and self.users:
                problems.append(
                    f"mapping.{column}: found {target!r}; not synced ({REFUSED_PROPERTIES[target]})"
                )
            elif target in ("email", "external_id"):
                problems.append(
                    f"mapping.{column}: found {target!r}; allowed: a field (identifiers go in match)"
                )
            elif not _KEY.fullmatch(target.removeprefix("user_fields.")):
                problems.append(
                    f"mapping.{column}: found {target!r}; allowed: a field key (lower-case letters, digits, _)"
                )
        return problems

    def operation_problems(self, operations: Collection[str], match: Mapping[str, str]) -> list[str]:
        """``delete`` (mirror) of users needs ``external_id`` in match: Zendesk's bulk delete takes ids or
        external ids, not e-mails (:meth:`record_input` refuses it when the sync sends)."""
        if "delete" in operations and self.users and "external_id" not in match:
            return [
                (
                    "mirror deletes the Zendesk users that left the segment by external id (Zendesk's bulk "
                    "delete takes ids or external ids, not e-mails) and match has "
                    f"{', '.join(match) or 'nothing'}; allowed: upsert, or mirror with external_id in match"
                )
            ]
        return []

    def validate_fields(
        self, match: Mapping[str, str], mapping: Mapping[str, str], fields: Mapping[str, FieldInfo]
    ) -> list[str]:
        """Mapped names against the schema (names refused by :meth:`validate_activation` not repeated)."""
        kept = {
            c: str(t).removeprefix("user_fields.")
            for c, t in mapping.items()
            if t not in REFUSED_PROPERTIES and t not in USER_IDENTIFIERS
        }
        return super().validate_fields(match, kept, fields)

    # -- requests -------------------------------------------------------------------------------------

    def record_input(self, operation: str, record: Record) -> Any:
        """The user object, the custom object record, or the external id of a delete."""
        if operation == "delete":
            external_id = record.identifiers.get("external_id")
            if external_id is None:
                raise self.config_error(
                    "sync_mode mirror deletes Zendesk users by external id (Zendesk's bulk delete takes ids or "
                    "external ids, not e-mails); allowed: match with external_id"
                )
            return external_id
        fields = {name: zendesk_value(value) for name, value in record.fields.items()}
        if not self.users:
            item: dict[str, Any] = {"external_id": record.identifiers["external_id"]}
            if "name" in fields:
                item["name"] = fields.pop("name")
            item["custom_object_fields"] = fields
            return item
        user: dict[str, Any] = dict(record.identifiers)
        user_fields: dict[str, Any] = {}
        for name, value in fields.items():
            if name in USER_PROPERTIES:
                user[name] = value
            else:
                user_fields[name.removeprefix("user_fields.")] = value
        if user_fields:
            user["user_fields"] = user_fields
        return user

    def build_request(
        self, operation: str, inputs: Sequence[Any], records: Sequence[Record]
    ) -> PreparedRequest:
        """The bulk job request of one batch."""
        if not self.users:
            action = "delete_by_external_id" if operation == "delete" else "create_or_update_by_external_id"
            return PreparedRequest(
                "POST",
                f"/api/v2/custom_objects/{self.settings.custom_object_key}/jobs",
                json={"job": {"action": action, "items": list(inputs)}},
            )
        if operation == "delete":
            return PreparedRequest(
                "DELETE", "/api/v2/users/destroy_many", params={"external_ids": ",".join(inputs)}
            )
        return PreparedRequest("POST", "/api/v2/users/create_or_update_many", json={"users": list(inputs)})

    def preview_request(
        self, operation: str, inputs: Sequence[Any], records: Sequence[Record]
    ) -> PreparedRequest:
        """The job request; a users delete lists its external ids in the query, shown masked."""
        request = self.build_request(operation, inputs, records)
        if self.users and operation == "delete":
            return PreparedRequest(request.method, request.path, params={"external_ids": "<external ids>"})
        return request

    def parse_response(
        self, operation: str, records: Sequence[Record], response: HttpResponse
    ) -> BatchOutcome:
        """The job started (polled), or the request refused whole."""
        body = response.json() if isinstance(response.json(), dict) else {}
        job = body.get("job_status") if isinstance(body, dict) else None
        if response.status in (200, 201, 202) and isinstance(job, dict) and job.get("id"):
            logger.info("%s: job %s started for %d record(s)", self.label, job["id"], len(records))
            return self._job_outcome(operation, records, job)
        if response.status in (400, 422):
            if len(records) > 1:
                return BatchOutcome(split=True)
            return BatchOutcome.reject_all(
                records, self.error_message(response), str(body.get("error") or "invalid")
            )
        raise self.request_error(response, f"starting a {operation} job")

    def poll_job(
        self, operation: str, records: Sequence[Record], job: JobHandle, transport: Transport
    ) -> BatchOutcome:
        """``GET /api/v2/job_statuses/{id}``: still running, or its results mapped to the records."""
        response = transport.send(PreparedRequest("GET", f"/api/v2/job_statuses/{job.id}"))
        if response.status != 200:
            raise self.request_error(response, f"reading job {job.id}")
        status = (response.json() or {}).get("job_status") or {}
        return self._job_outcome(operation, records, status)

    def _job_outcome(self, operation: str, records: Sequence[Record], job: Mapping[str, Any]) -> BatchOutcome:
        status = job.get("status")
        if status in ("queued", "working"):
            return BatchOutcome(job=JobHandle(str(job["id"])))
        if status in ("failed", "killed"):
            logger.warning(
                "%s: job %s ended %s (%s); its records are sent again",
                self.label,
                job.get("id"),
                status,
                self.redact(str(job.get("message") or "")),
            )
            return BatchOutcome([RecordResult(r.key, "retry") for r in records])
        if status != "completed":
            raise self.config_error(f"job {job.get('id')} has an unknown status {status!r}")
        results = job.get("results")
        if not isinstance(results, list):
            return BatchOutcome.accept_all(records)
        verdicts: dict[int, RecordResult] = {}
        for position, result in enumerate(results):
            if not isinstance(result, dict):
                continue
            index = result.get("index", position)
            if not isinstance(index, int) or not 0 <= index < len(records):
                continue
            verdicts[index] = self._verdict(operation, records[index], result)
        return BatchOutcome([verdicts.get(i) or RecordResult(r.key, "retry") for i, r in enumerate(records)])

    def _verdict(self, operation: str, record: Record, result: Mapping[str, Any]) -> RecordResult:
        failed = result.get("status") == "Failed" or result.get("success") is False or "error" in result
        if not failed:
            return RecordResult(record.key, "accepted")
        error = str(result.get("error") or "Failed")
        details = result.get("details") or result.get("errors") or error
        reason = self.redact(details if isinstance(details, str) else str(details))
        if operation == "delete" and (_NOT_FOUND.search(error) or _NOT_FOUND.search(reason)):
            return RecordResult(record.key, "accepted")  # not in Zendesk: nothing left to delete
        return RecordResult(record.key, "rejected", reason, error)

    # -- responses ------------------------------------------------------------------------------------

    def observe(self, response: HttpResponse, limiter: RateLimiter) -> str | None:
        """Follow the account's ``X-Rate-Limit`` (per minute); ``X-Rate-Limit-Remaining: 0`` holds every
        worker until ``ratelimit-reset``."""
        limit = _int(response.header("X-Rate-Limit"))
        if limit:
            # Spread over the minute as the starting limit is (a twentieth every 3 seconds); the limiter
            # keeps it under 2,500 a minute and under the ``rate_limit`` setting.
            wanted = (limit // 20, 3.0) if limit >= 20 else (limit, 60.0)
            if wanted != (limiter.max_requests, limiter.window_seconds):
                limiter.adopt(*wanted)
        remaining = _int(response.header("X-Rate-Limit-Remaining"))
        reset = _int(response.header("ratelimit-reset"))
        if remaining == 0 and response.status != 429 and reset:
            limiter.pause(float(reset))
        return None

    def error_message(self, response: HttpResponse) -> str:
        """Zendesk's ``description``/``error`` and the field ``details``, secrets masked."""
        body = response.json()
        if isinstance(body, dict):
            error = body.get("error")
            parts = []
            if isinstance(error, dict):  # {"error": {"title", "message"}}
                parts.append(str(error.get("message") or error.get("title") or ""))
            elif error:
                parts.append(str(body.get("description") or body.get("message") or error))
            elif body.get("description"):
                parts.append(str(body["description"]))
            for item in body.get("errors") or []:  # the newer APIs' {"errors": [{"code", "title", "detail"}]}
                if isinstance(item, dict):
                    parts.append(str(item.get("detail") or item.get("title") or item.get("code") or ""))
            details = body.get("details")
            if isinstance(details, dict):
                for field, problems in details.items():
                    for problem in problems if isinstance(problems, list) else [problems]:
                        text = problem.get("description") if isinstance(problem, dict) else problem
                        parts.append(f"{field}: {text}")
            text = "; ".join(p for p in parts if p)
            if text:
                return self.redact(text)
        return super().error_message(response)

    # -- validate --connect -------------------------------------------------------------------------------

    def check_connection(self, transport: Transport) -> None:
        """``GET /api/v2/users/me``: Zendesk answers its anonymous user (no id) to unaccepted credentials."""
        response = transport.send(PreparedRequest("GET", "/api/v2/users/me"))
        if response.status != 200:
            raise self.request_error(response, "reading the authenticated user")
        user = (response.json() or {}).get("user") or {}
        if not user.get("id"):
            raise PlatformAuthError(
                f"{self.label}: Zendesk did not accept the credentials (it answered as the anonymous user); "
                "check email and api_token, or oauth_token"
            )

    def discover_fields(self, transport: Transport) -> dict[str, FieldInfo]:
        """Users: their properties and active user fields; custom objects: the object's fields."""
        if not self.users:
            key = self.settings.custom_object_key
            found = self._list(transport, f"/api/v2/custom_objects/{key}/fields", "custom_object_fields")
            fields = {"name": FieldInfo("name", "Name", "text")}
            for f in found:
                if f.get("key") and f.get("active", True):
                    fields[str(f["key"])] = FieldInfo(str(f["key"]), f.get("title"), f.get("type"))
            return fields
        fields = {name: FieldInfo(name) for name in USER_PROPERTIES}
        for f in self._list(transport, "/api/v2/user_fields", "user_fields"):
            if f.get("key") and f.get("active", True):
                info = FieldInfo(str(f["key"]), f.get("title"), f.get("type"))
                fields[info.name] = info
        return fields

    def _list(self, transport: Transport, path: str, key: str) -> list[dict[str, Any]]:
        """Every item of a paginated list (``next_page`` or ``links.next``)."""
        items: list[dict[str, Any]] = []
        request: PreparedRequest | None = PreparedRequest("GET", path)
        while request is not None:
            response = transport.send(request)
            if response.status != 200:
                raise self.request_error(response, f"reading {path}")
            body = response.json() or {}
            items += [i for i in body.get(key) or [] if isinstance(i, dict)]
            following = body.get("next_page") or (body.get("links") or {}).get("next")
            request = PreparedRequest("GET", following) if following else None
        return items


def zendesk_value(value: Any) -> Any:
    """A warehouse value as Zendesk JSON: numbers, booleans, text, ISO dates (date fields take YYYY-MM-DD),
    lists (tags, multiselect)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, decimal.Decimal):
        if not value.is_finite():
            return None
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.timezone.utc).replace(tzinfo=None)
        return value.isoformat(timespec="seconds") + "Z"
    if isinstance(value, (dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, (list, tuple)):
        return [zendesk_value(v) for v in value if v is not None]
    return str(value)


def _int(text: str | None) -> int | None:
    try:
        return int(float(text)) if text else None
    except ValueError:
        return None


register_platform("zendesk", ZendeskSettings, Zendesk)
