"""Klaviyo: profile attributes, list membership and e-mail/SMS consent, over Klaviyo's JSON:API REST API.

A ``type: klaviyo`` destination serves one ``service``. Every request carries ``Authorization:
Klaviyo-API-Key <private key>`` (``api_key``, from ``{env: VAR}``) and the ``revision`` header (the
``revision`` setting, default ``2024-10-15``: Klaviyo versions its API by date and keeps a revision for
two years, so the default is pinned rather than "latest", and a user moves it on purpose). Bodies are
``application/vnd.api+json``. Profiles are named by ``email`` (trimmed, lower-cased), ``phone_number``
(E.164; national numbers use the activation's ``default_country``) and/or ``external_id``: Klaviyo
matches a profile on any of them, needs the real address to message it, so nothing is hashed.

- ``attributes`` -- the Bulk Import Profiles job (``POST /api/profile-bulk-import-jobs``), at most
  10,000 profiles and 5 MB per job. Klaviyo answers ``202`` with the job (``queued``); the job is polled
  (``GET /api/profile-bulk-import-jobs/{id}``, every ``poll_interval_seconds``) until ``complete``
  (``cancelled`` sends the batch again, up to the retry policy). When ``failed_count`` is not 0 the
  job's errors (``GET .../{id}/import-errors``, paginated through ``links.next``) are mapped back to
  records by the identifiers of their ``original_payload``: those records are rejected with Klaviyo's
  ``detail``, the others count as done. The job upserts (Klaviyo creates what it does not hold) and
  cannot clear a property ("does not support setting fields to null"): only ``sync_mode: upsert`` is
  offered (no insert-only, update-only or mirror), and NULL fields are left out of the profile, so they
  never erase a value. Mapped fields named like Klaviyo's profile attributes (``first_name``,
  ``last_name``, ``organization``, ``title``, ``image``, ``locale``, ``location.<city, country, region,
  zip, address1, address2, timezone, latitude, longitude>``) are set as such; every other name is a
  custom property under ``properties``.
- ``audiences`` -- a static list (the activation's ``audience``: ``{name:}`` found through
  ``GET /api/lists?filter=equals(name,"...")`` or created with ``POST /api/lists``, or ``{id:}``).
  Membership is ``POST`` / ``DELETE /api/lists/{id}/relationships/profiles`` with profile ids, at most
  1,000 per request. The profiles must exist: a batch's identifiers are looked up with
  ``GET /api/profiles?filter=any(email,[...])`` (one request per identifier kind, 100 values per
  filter, so batches hold 100 records); an ``add`` creates the missing profiles with
  ``POST /api/profiles`` (a ``409 duplicate_profile`` gives the existing id in
  ``meta.duplicate_profile_id``); a ``remove`` of a profile Klaviyo does not hold is done (it is in no
  list). Adding to a list never changes consent. Klaviyo has no "replace the list": a full sync is
  remove + add.
- ``subscriptions`` -- consent, never given without the segment saying so: the column mapped to
  ``consent`` must be ``true``/``subscribed`` (subscribe, through the Bulk Subscribe Profiles job
  ``POST /api/profile-subscription-bulk-create-jobs``) or ``false``/``unsubscribed`` (unsubscribe,
  ``POST /api/profile-subscription-bulk-delete-jobs``); anything else, NULL included, rejects the
  record and nothing is sent for it. ``channels`` (``[email]`` by default, or ``[email, sms]``) says
  which marketing consents are given; a record without the channel's identifier gets only the other
  channels. ``list_id`` (optional) is the list the subscribed profiles join (its double opt-in applies).
  ``delete`` (``sync_mode: mirror``) unsubscribes the profiles that left the segment. At most 1,000
  profiles per subscribe job and 100 per unsubscribe job (a batch's unsubscriptions go in several jobs);
  Klaviyo creates a profile it does not hold before changing its consent. Klaviyo answers ``202`` with
  no body and reports nothing per profile.

Limits (per account, fixed windows, burst per second and steady per minute): the bulk import, list
and profile endpoints are tier M (10/s burst, 150/m steady; the profile read and create endpoints are
L, the list relationships M: the stricter M is kept for the whole service), the subscription jobs L
(75/s, 700/m). The SDK keeps to the steady limit spread evenly: 10 requests per 4 seconds (150 a
minute, never 11 in a second) for attributes and audiences, 35 per 3 seconds (700 a minute) for
subscriptions. A ``429`` carries ``Retry-After`` (seconds): every worker waits it out. Other answers
carry ``RateLimit-Limit`` / ``RateLimit-Remaining`` / ``RateLimit-Reset`` (seconds) about the steady
window: ``Remaining: 0`` holds every worker until the reset.

Errors are JSON:API: ``{"errors": [{"id", "status", "code", "title", "detail", "source": {"pointer"}}]}``.
``401 not_authenticated`` and ``403 permission_denied`` (the key lacks a scope: ``profiles:write`` and
``lists:write`` for imports and lists, ``subscriptions:write`` for consent) stop the sync at once; a
``400`` on a job whose ``source.pointer`` names one profile (``/data/attributes/profiles/data/3/...``)
rejects that record with Klaviyo's ``detail`` and sends the others again; a ``400`` without a pointer
splits the batch until the bad record is alone.

``validate --connect`` reads ``GET /api/lists`` (attributes, subscriptions: the key works and has
``lists:read``; the ``list_id`` exists) or the audience's list; Klaviyo has no profile schema to read,
so mapped names are checked locally (a custom property name cannot start with ``$``, Klaviyo's own).

Klaviyo's documentation this adapter follows:

- Bulk Import Profiles (10,000 profiles, 5 MB, upsert, optional list, null cannot clear):
  https://developers.klaviyo.com/en/docs/use_klaviyos_bulk_profile_import_api and
  https://developers.klaviyo.com/en/reference/bulk_import_profiles (scopes, rate limit M)
- the job's status (queued, processing, complete, cancelled; ``failed_count``):
  https://developers.klaviyo.com/en/reference/get_bulk_import_profiles_job
- the job's errors (``code``, ``title``, ``detail``, ``source.pointer``, ``original_payload``):
  https://developers.klaviyo.com/en/reference/get_errors_for_bulk_import_profiles_job
- Add / Remove Profiles to List (1,000 per call, 204):
  https://developers.klaviyo.com/en/reference/add_profiles_to_list and
  https://developers.klaviyo.com/en/reference/remove_profiles_from_list
- Get Profiles (``filter=any(email,[...])``), Create Profile (409 ``duplicate_profile``):
  https://developers.klaviyo.com/en/reference/get_profiles and
  https://developers.klaviyo.com/en/reference/create_profile
- Get Lists / Create List: https://developers.klaviyo.com/en/reference/get_lists
- Bulk Subscribe / Unsubscribe Profiles (1,000 / 100 profiles, consent per channel, list relationship):
  https://developers.klaviyo.com/en/reference/bulk_subscribe_profiles and
  https://developers.klaviyo.com/en/reference/bulk_unsubscribe_profiles, consent guide:
  https://developers.klaviyo.com/en/docs/collect_email_and_sms_consent_via_api
- rate limits (XS..XL tiers, burst and steady windows, 429, ``RateLimit-*`` headers, ``Retry-After``)
  and error format: https://developers.klaviyo.com/en/docs/rate_limits_and_error_handling
- API versioning (the ``revision`` header): https://developers.klaviyo.com/en/docs/api_versioning_and_deprecation_policy

Assumed where the pages say nothing precise: the page size of ``GET /api/profiles`` (100 at most) bounds
how many values one ``any()`` filter holds; ``original_payload`` of an import error holds the profile's
attributes as sent (it is how errors are tied to records: an error whose payload names no record of
the job rejects nothing, and is logged); a ``cancelled`` job applied nothing.
"""

from __future__ import annotations

import datetime as dt
import decimal
import logging
import math
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import pydantic
from pydantic import Field, SecretStr, ValidationInfo

from dinmo_dagster.platforms import register_platform
from dinmo_dagster.platforms.audiences import AudiencePlatform, AudienceTarget
from dinmo_dagster.platforms.base import (
    BatchOutcome,
    HttpResponse,
    JobHandle,
    Limits,
    PlatformSettings,
    PreparedRequest,
    Record,
    RecordResult,
)
from dinmo_dagster.platforms.engine import mask_identifier
from dinmo_dagster.platforms.identifiers import IdentifierSpec, normalize_email, normalize_phone

if TYPE_CHECKING:
    from dinmo_dagster.platforms.http import Transport
    from dinmo_dagster.platforms.ratelimit import RateLimiter

__all__ = ["Klaviyo", "KlaviyoList", "KlaviyoSettings"]

logger = logging.getLogger("dinmo_dagster.platforms")

DEFAULT_REVISION = "2024-10-15"
MAX_IMPORT_PROFILES = 10_000
MAX_IMPORT_BYTES = 5 * 1024 * 1024
MAX_LIST_PROFILES = 1_000
MAX_FILTER_VALUES = 100  # assumed: the largest page of GET /api/profiles
MAX_SUBSCRIPTION_PROFILES = 1_000
MAX_UNSUBSCRIPTION_PROFILES = 100
# Tier M (10/s burst, 150/m steady) spread evenly: 10 per 4 s; tier L (75/s, 700/m): 35 per 3 s.
LISTS_LIMITS = Limits(
    max_records_per_batch=MAX_FILTER_VALUES, requests_per_window=10, window_seconds=4.0, max_concurrency=2
)
IMPORT_LIMITS = Limits(
    max_records_per_batch=MAX_IMPORT_PROFILES,
    max_bytes_per_batch=MAX_IMPORT_BYTES,
    requests_per_window=10,
    window_seconds=4.0,
    max_concurrency=2,
    envelope_bytes=1024,
)
SUBSCRIPTION_LIMITS = Limits(
    max_records_per_batch=MAX_SUBSCRIPTION_PROFILES,
    requests_per_window=35,
    window_seconds=3.0,
    max_concurrency=4,
)
CONSENT_FIELD = "consent"
JSON_API = "application/vnd.api+json"
_REVISION = re.compile(r"\d{4}-\d{2}-\d{2}(\.[a-z0-9]+)?")
_POINTER = re.compile(r"/data/attributes/profiles/data/(\d+)(/|$)")
# Klaviyo's own profile attributes (everything else is a custom property).
PROFILE_ATTRIBUTES = frozenset({"first_name", "last_name", "organization", "title", "image", "locale"})
LOCATION_ATTRIBUTES = frozenset(
    {"address1", "address2", "city", "country", "region", "zip", "timezone", "latitude", "longitude", "ip"}
)
IDENTIFIERS = {
    "email": IdentifierSpec("email", optional=True, normalize=lambda v, _c: normalize_email(v)),
    "phone_number": IdentifierSpec("phone", optional=True, normalize=normalize_phone),
    "external_id": IdentifierSpec("id", optional=True),
}
CHANNEL_IDENTIFIER = {"email": "email", "sms": "phone_number"}


class KlaviyoList(AudienceTarget):
    """A Klaviyo list: ``{name: ...}`` (created when missing) or ``{id: ...}`` (Klaviyo's ``Y6nRLr``)."""

    noun: ClassVar[str] = "list"
    numeric_id: ClassVar[bool] = False


class KlaviyoSettings(PlatformSettings):
    """Settings of a ``type: klaviyo`` destination."""

    service: Literal["attributes", "audiences", "subscriptions"] = Field(
        description="attributes (profile properties), audiences (list membership) or subscriptions (consent)."
    )
    api_key: SecretStr = Field(description="A private API key (from {env: VAR}); secret.")
    revision: str = Field(
        default=DEFAULT_REVISION, description="The API revision sent in the revision header (YYYY-MM-DD)."
    )
    audience: KlaviyoList | None = Field(
        default=None, description="audiences: the list, from the activation's audience."
    )
    channels: tuple[Literal["email", "sms"], ...] | None = Field(
        default=None,
        validate_default=True,
        description="subscriptions: the marketing consents given, [email] (default), [sms] or [email, sms].",
    )
    list_id: str | None = Field(
        default=None, validate_default=True, description="subscriptions: the list subscribed profiles join."
    )
    poll_interval_seconds: float = Field(
        default=5.0, gt=0, le=300, description="attributes: seconds between two polls of an import job."
    )

    @pydantic.field_validator("api_key")
    @classmethod
    def _check_key(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().strip():
            raise ValueError("is empty; allowed: a Klaviyo private API key")
        return value

    @pydantic.field_validator("revision")
    @classmethod
    def _check_revision(cls, value: str) -> str:
        if not _REVISION.fullmatch(value):
            raise ValueError(
                f"found {value!r}; allowed: a Klaviyo API revision, YYYY-MM-DD (e.g. {DEFAULT_REVISION})"
            )
        return value

    @pydantic.field_validator("audience")
    @classmethod
    def _check_audience(cls, value: KlaviyoList | None, info: ValidationInfo) -> KlaviyoList | None:
        service = info.data.get("service")
        if value is not None and service not in (None, "audiences"):
            raise ValueError(f"found a list; allowed only with service: audiences (service is {service})")
        return value

    @pydantic.field_validator("channels")
    @classmethod
    def _check_channels(cls, value: tuple[str, ...] | None, info: ValidationInfo) -> tuple[str, ...] | None:
        service = info.data.get("service")
        if service != "subscriptions":
            if value is not None and service is not None:
                raise ValueError(f"found {list(value)}; allowed only with service: subscriptions")
            return value
        if value is None:
            return ("email",)
        if not value or len(set(value)) != len(value):
            raise ValueError(f"found {list(value)}; allowed: email and/or sms, each once")
        return value

    @pydantic.field_validator("list_id")
    @classmethod
    def _check_list_id(cls, value: str | None, info: ValidationInfo) -> str | None:
        service = info.data.get("service")
        if value is not None and service not in (None, "subscriptions"):
            raise ValueError(f"found {value!r}; allowed only with service: subscriptions")
        if value is not None and not value.strip():
            raise ValueError("is empty; allowed: the id of a Klaviyo list")
        return value


class Klaviyo(AudiencePlatform):
    """Klaviyo profiles: bulk import jobs, list relationships and subscription jobs."""

    name = "klaviyo"
    settings_model = KlaviyoSettings
    services: ClassVar[Mapping[str, tuple[str, ...]]] = {
        "attributes": ("upsert",),
        "audiences": ("add", "remove"),
        "subscriptions": ("upsert", "delete"),
    }
    default_base_url = "https://a.klaviyo.com"
    limits = LISTS_LIMITS
    audience_label = "Klaviyo list"
    audience_noun = "list"
    audiences_taking = "Klaviyo lists"

    settings: KlaviyoSettings

    def __init__(self, settings: PlatformSettings, *, destination: str = "") -> None:
        super().__init__(settings, destination=destination)
        service = self.settings.service
        # The service decides the endpoints, hence the documented batch size and rate limit.
        if service == "attributes":
            self.limits = IMPORT_LIMITS
        elif service == "subscriptions":
            self.limits = SUBSCRIPTION_LIMITS
        self.poll_interval_seconds = self.settings.poll_interval_seconds  # type: ignore[misc]

    # -- auth and headers -------------------------------------------------------------------------------

    def auth_headers(self) -> dict[str, str]:
        """The private key and the pinned revision (every request needs both)."""
        return {
            "Authorization": f"Klaviyo-API-Key {self.settings.api_key.get_secret_value()}",
            "revision": self.settings.revision,
            "Accept": JSON_API,
        }

    def _request(
        self, method: str, path: str, body: Any = None, params: Mapping[str, str] | None = None
    ) -> PreparedRequest:
        headers = {"Content-Type": JSON_API} if body is not None else None
        return PreparedRequest(method, path, json=body, params=params, headers=headers)

    def target_label(self) -> str:
        """``Klaviyo profiles``, ``Klaviyo list 'VIP'`` or ``Klaviyo consent``."""
        if self.settings.service == "audiences":
            return super().target_label()
        return "Klaviyo profiles" if self.settings.service == "attributes" else "Klaviyo consent"

    # -- identifiers and activation checks ------------------------------------------------------------

    def identifier_spec(self, name: str) -> IdentifierSpec | None:
        """email, phone_number or external_id (subscriptions: email and phone_number), never hashed."""
        if self.settings.service == "subscriptions" and name == "external_id":
            return None
        return IDENTIFIERS.get(name)

    def validate_activation(self, match: Mapping[str, str], mapping: Mapping[str, str]) -> list[str]:
        """Known identifiers; mapped names that fit the service."""
        allowed = "email, phone_number" + (
            "" if self.settings.service == "subscriptions" else ", external_id"
        )
        problems = []
        if not match:
            problems.append(f"match: found nothing; allowed: one or more of {allowed}")
        problems.extend(
            f"match.{name}: klaviyo has no identifier {name!r} for service {self.settings.service}; allowed: {allowed}"
            for name in match
            if self.identifier_spec(name) is None
        )
        service = self.settings.service
        if service == "audiences":
            if mapping:
                problems.append(
                    f"mapping: found {', '.join(mapping)}; allowed: nothing (Klaviyo lists take identifiers only)"
                )
            if self.audience_target is None:
                problems.append("audience: found nothing; allowed: {name: ...} or {id: ...}")
        elif service == "subscriptions":
            if list(mapping.values()) != [CONSENT_FIELD]:
                problems.append(
                    f"mapping: found {', '.join(map(str, mapping.values())) or 'nothing'}; allowed: exactly one "
                    f"column mapped to {CONSENT_FIELD} (true/false or subscribed/unsubscribed)"
                )
            channels = self.settings.channels or ("email",)
            if not any(CHANNEL_IDENTIFIER[c] in match for c in channels):
                problems.append(
                    f"match: found {', '.join(match) or 'nothing'}; channels {', '.join(channels)} need "
                    + " or ".join(CHANNEL_IDENTIFIER[c] for c in channels)
                )
        else:
            for column, target in mapping.items():
                if problem := _property_problem(str(target)):
                    problems.append(f"mapping.{column}: found {target!r}; allowed: {problem}")
        return problems

    # -- requests -------------------------------------------------------------------------------------------

    def record_input(self, operation: str, record: Record) -> Any:
        """The profile's attributes (identifiers, profile attributes, ``properties``) or its consent."""
        who = dict(record.identifiers)
        service = self.settings.service
        if service == "attributes":
            attributes: dict[str, Any] = dict(who)
            properties: dict[str, Any] = {}
            location: dict[str, Any] = {}
            for name, value in record.fields.items():
                value = klaviyo_value(value)
                if value is None:
                    continue  # the import cannot clear a field: NULL leaves it as it is
                if name in PROFILE_ATTRIBUTES:
                    attributes[name] = value
                elif name.startswith("location.") and name[9:] in LOCATION_ATTRIBUTES:
                    location[name[9:]] = value
                else:
                    properties[name] = value
            if location:
                attributes["location"] = location
            if properties:
                attributes["properties"] = properties
            return {"type": "profile", "attributes": attributes}
        if service == "subscriptions":
            state = (
                "unsubscribed" if operation == "delete" else consent_state(record.fields.get(CONSENT_FIELD))
            )
            return {"who": who, CONSENT_FIELD: state}
        return who

    def build_request(
        self, operation: str, inputs: Sequence[Any], records: Sequence[Record]
    ) -> PreparedRequest:
        """The first request of a batch (an audience batch looks profiles up first)."""
        service = self.settings.service
        if service == "attributes":
            body = {
                "data": {
                    "type": "profile-bulk-import-job",
                    "attributes": {"profiles": {"data": list(inputs)}},
                }
            }
            return self._request("POST", "/api/profile-bulk-import-jobs", body)
        if service == "subscriptions":
            subscribe = [i for i in inputs if i[CONSENT_FIELD] == "subscribed"]
            if subscribe:
                return self._subscription_request(True, subscribe)
            return self._subscription_request(
                False, [i for i in inputs if i[CONSENT_FIELD] == "unsubscribed"]
            )
        kind = next((k for k in IDENTIFIERS if any(k in i for i in inputs)), "email")
        return self._lookup_request(kind, [i[kind] for i in inputs if kind in i])

    def _subscription_request(self, subscribe: bool, inputs: Sequence[Mapping[str, Any]]) -> PreparedRequest:
        consent = "SUBSCRIBED" if subscribe else "UNSUBSCRIBED"
        profiles = []
        for item in inputs:
            who = item["who"]
            subscriptions = {
                channel: {"marketing": {"consent": consent}}
                for channel in self.settings.channels or ("email",)
                if CHANNEL_IDENTIFIER[channel] in who
            }
            attributes = {k: who[k] for k in ("email", "phone_number") if k in who}
            profiles.append({"type": "profile", "attributes": {**attributes, "subscriptions": subscriptions}})
        kind = "profile-subscription-bulk-create-job" if subscribe else "profile-subscription-bulk-delete-job"
        data: dict[str, Any] = {"type": kind, "attributes": {"profiles": {"data": profiles}}}
        if self.settings.list_id:
            data["relationships"] = {"list": {"data": {"type": "list", "id": self.settings.list_id}}}
        path = (
            "/api/profile-subscription-bulk-create-jobs"
            if subscribe
            else "/api/profile-subscription-bulk-delete-jobs"
        )
        return self._request("POST", path, {"data": data})

    def _lookup_request(self, kind: str, values: Sequence[str]) -> PreparedRequest:
        quoted = ",".join(_quote(v) for v in values)
        params = {"filter": f"any({kind},[{quoted}])", "page[size]": str(MAX_FILTER_VALUES)}
        return self._request("GET", "/api/profiles", params=params)

    def preview_request(
        self, operation: str, inputs: Sequence[Any], records: Sequence[Record]
    ) -> PreparedRequest:
        """The first request; an audience batch shows the list request that follows the lookup."""
        if self.settings.service != "audiences":
            return self.build_request(operation, inputs, records)
        # The lookup's filter holds the identifiers inside one text: masked here (a preview shows none).
        kind = next((k for k in IDENTIFIERS if any(k in i for i in inputs)), "email")
        request = self._lookup_request(kind, [mask_identifier(i[kind]) for i in inputs if kind in i])
        method = "POST" if operation == "add" else "DELETE"
        then = f"{method} /api/lists/{self._audience_ref()}/relationships/profiles (the profiles' ids)"
        return PreparedRequest(request.method, request.path, json={"then": then}, params=request.params)

    # -- delivery ---------------------------------------------------------------------------------------------

    def deliver_batch(
        self, operation: str, records: Sequence[Record], inputs: Sequence[Any], transport: Transport
    ) -> BatchOutcome:
        """attributes: start the import job (polled); audiences: look up, create, relate; subscriptions: jobs."""
        service = self.settings.service
        if service == "attributes":
            response = transport.send(self.build_request(operation, inputs, records))
            return self._job_started(records, response)
        if service == "subscriptions":
            return self._deliver_consent(records, inputs, transport)
        return self._deliver_membership(operation, records, inputs, transport)

    def parse_response(
        self, operation: str, records: Sequence[Record], response: HttpResponse
    ) -> BatchOutcome:
        """The answer to one job request: started (attributes), accepted (subscriptions), or refused."""
        if self.settings.service == "attributes":
            return self._job_started(records, response)
        if 200 <= response.status < 300:
            return BatchOutcome.accept_all(records)
        return self._refused(records, response, "POST subscription job")

    def _refused(self, records: Sequence[Record], response: HttpResponse, what: str) -> BatchOutcome:
        """A 400 about the whole request: the profile its pointer names is rejected, the others sent again;
        without a pointer the batch is split until the bad record is alone."""
        if response.status not in (400, 422):
            raise self.request_error(response, what)
        errors = _errors(response)
        bad: dict[int, str] = {}
        for error in errors:
            pointer = str((error.get("source") or {}).get("pointer") or "")
            match = _POINTER.match(pointer)
            if match and int(match.group(1)) < len(records):
                bad.setdefault(int(match.group(1)), self.redact(_error_text(error)))
        if not bad:
            if len(records) > 1:
                return BatchOutcome(split=True)
            reason = self.redact("; ".join(_error_text(e) for e in errors) or f"HTTP {response.status}")
            return BatchOutcome.reject_all(records, reason, _code(errors))
        return BatchOutcome(
            [
                RecordResult(r.key, "rejected", bad[i], _code(errors))
                if i in bad
                else RecordResult(r.key, "retry")
                for i, r in enumerate(records)
            ]
        )

    def _job_started(self, records: Sequence[Record], response: HttpResponse) -> BatchOutcome:
        if response.status in (200, 201, 202):
            data = (response.json() or {}).get("data") or {}
            job_id = data.get("id")
            if not job_id:
                raise self.request_error(response, "POST /api/profile-bulk-import-jobs (no job id)")
            logger.info("%s: import job %s started for %d profiles", self.label, job_id, len(records))
            return BatchOutcome(job=JobHandle(str(job_id)))
        return self._refused(records, response, "POST /api/profile-bulk-import-jobs")

    def poll_job(
        self, operation: str, records: Sequence[Record], job: JobHandle, transport: Transport
    ) -> BatchOutcome:
        """The job's status; once complete, its errors mapped back to the records."""
        response = transport.send(self._request("GET", f"/api/profile-bulk-import-jobs/{job.id}"))
        if response.status != 200:
            raise self.request_error(response, f"reading import job {job.id}")
        attributes = ((response.json() or {}).get("data") or {}).get("attributes") or {}
        status = attributes.get("status")
        if status in ("queued", "processing"):
            return BatchOutcome(job=job)
        if status == "cancelled":
            logger.warning("%s: import job %s was cancelled; its profiles are sent again", self.label, job.id)
            return BatchOutcome([RecordResult(r.key, "retry") for r in records])
        if status != "complete":
            raise self.request_error(response, f"import job {job.id} has status {status!r}")
        if not attributes.get("failed_count"):
            return BatchOutcome.accept_all(records)
        return self._import_errors(records, job, transport)

    def _import_errors(self, records: Sequence[Record], job: JobHandle, transport: Transport) -> BatchOutcome:
        by_identifier = {(k, v): r.key for r in records for k, v in r.identifiers.items()}
        rejected: dict[str, RecordResult] = {}
        path: str | None = f"/api/profile-bulk-import-jobs/{job.id}/import-errors"
        while path:
            response = transport.send(self._request("GET", path))
            if response.status != 200:
                raise self.request_error(response, f"reading the errors of import job {job.id}")
            body = response.json() or {}
            for error in body.get("data") or []:
                attributes = error.get("attributes") or {}
                payload = attributes.get("original_payload") or {}
                payload = payload.get("attributes", payload) if isinstance(payload, dict) else {}
                keys = {by_identifier.get((k, str(payload.get(k)))) for k in IDENTIFIERS if payload.get(k)}
                keys.discard(None)
                if not keys:
                    logger.warning(
                        "%s: import job %s reported an error naming no profile it was sent",
                        self.label,
                        job.id,
                    )
                for key in keys:
                    reason = self.redact(_error_text(attributes))
                    rejected.setdefault(
                        str(key),
                        RecordResult(str(key), "rejected", reason, str(attributes.get("code") or "invalid")),
                    )
            path = (body.get("links") or {}).get("next") or None
        return BatchOutcome([rejected.get(r.key) or RecordResult(r.key, "accepted") for r in records])

    def _deliver_consent(
        self, records: Sequence[Record], inputs: Sequence[Any], transport: Transport
    ) -> BatchOutcome:
        results: list[RecordResult] = []
        groups: dict[bool, list[int]] = {True: [], False: []}
        for index, (record, item) in enumerate(zip(records, inputs)):
            state = item[CONSENT_FIELD]
            channels = [
                c for c in self.settings.channels or ("email",) if CHANNEL_IDENTIFIER[c] in item["who"]
            ]
            if state is None:
                results.append(
                    RecordResult(
                        record.key,
                        "rejected",
                        f"field {CONSENT_FIELD} is NULL or not a consent; allowed: true/false or subscribed/"
                        "unsubscribed (nothing is changed in Klaviyo without one)",
                        "no consent",
                    )
                )
            elif not channels:
                wanted = " or ".join(CHANNEL_IDENTIFIER[c] for c in self.settings.channels or ("email",))
                results.append(
                    RecordResult(
                        record.key,
                        "rejected",
                        f"no {wanted} for the consent's channels",
                        "no channel identifier",
                    )
                )
            else:
                groups[state == "subscribed"].append(index)
        # A subscribe job takes 1,000 profiles, an unsubscribe job 100: a batch is up to 11 jobs.
        jobs = [
            (subscribe, indexes[start : start + size])
            for subscribe, indexes in groups.items()
            for size in [MAX_SUBSCRIPTION_PROFILES if subscribe else MAX_UNSUBSCRIPTION_PROFILES]
            for start in range(0, len(indexes), size)
        ]
        for subscribe, part in jobs:
            sent = [records[i] for i in part]
            response = transport.send(self._subscription_request(subscribe, [inputs[i] for i in part]))
            outcome = self.parse_response("upsert", sent, response)
            if outcome.split:
                return outcome  # idempotent: the engine halves the batch and sends the halves again
            results.extend(outcome.results)
            if len(jobs) > 1:  # each job's profiles journalled as Klaviyo accepts it, not at the batch's end
                self.acknowledge_early(outcome.results)
        return BatchOutcome(results)

    def _deliver_membership(
        self, operation: str, records: Sequence[Record], inputs: Sequence[Any], transport: Transport
    ) -> BatchOutcome:
        list_id = self._resolve_audience(transport)
        ids: dict[int, str] = {}
        for kind in IDENTIFIERS:
            wanted = {i: item[kind] for i, item in enumerate(inputs) if kind in item and i not in ids}
            if not wanted:
                continue
            found = self._lookup(kind, sorted(set(wanted.values())), transport)
            ids.update({i: found[v] for i, v in wanted.items() if v in found})
        results: dict[int, RecordResult] = {}
        if operation == "add":
            for i, item in enumerate(inputs):
                if i not in ids:
                    created = self._create_profile(records[i], item, transport)
                    if isinstance(created, RecordResult):
                        results[i] = created
                    else:
                        ids[i] = created
        profile_ids = sorted(set(ids.values()))
        method = "POST" if operation == "add" else "DELETE"
        for start in range(0, len(profile_ids), MAX_LIST_PROFILES):
            chunk = profile_ids[start : start + MAX_LIST_PROFILES]
            body = {"data": [{"type": "profile", "id": pid} for pid in chunk]}
            response = transport.send(
                self._request(method, f"/api/lists/{list_id}/relationships/profiles", body)
            )
            if not 200 <= response.status < 300:
                raise self.request_error(response, f"{method} /api/lists/{list_id}/relationships/profiles")
        # A profile Klaviyo does not hold is in no list: its removal is done.
        return BatchOutcome(
            [results.get(i) or RecordResult(r.key, "accepted") for i, r in enumerate(records)]
        )

    def _lookup(self, kind: str, values: Sequence[str], transport: Transport) -> dict[str, str]:
        """Profile ids by identifier value (the values Klaviyo holds profiles for)."""
        found: dict[str, str] = {}
        request: PreparedRequest | None = self._lookup_request(kind, values)
        while request is not None:
            response = transport.send(request)
            if response.status != 200:
                raise self.request_error(response, "looking profiles up (GET /api/profiles)")
            body = response.json() or {}
            for profile in body.get("data") or []:
                value = (profile.get("attributes") or {}).get(kind)
                if value is not None:
                    found[str(value)] = str(profile.get("id"))
            following = (body.get("links") or {}).get("next")
            request = self._request("GET", following) if following else None
        return found

    def _create_profile(
        self, record: Record, item: Mapping[str, str], transport: Transport
    ) -> str | RecordResult:
        body = {"data": {"type": "profile", "attributes": dict(item)}}
        response = transport.send(self._request("POST", "/api/profiles", body))
        data = (response.json() or {}).get("data") or {}
        if response.status in (200, 201) and data.get("id"):
            return str(data["id"])
        errors = _errors(response)
        if response.status == 409:
            duplicate = (errors[0].get("meta") or {}).get("duplicate_profile_id") if errors else None
            if duplicate:
                return str(duplicate)
        if response.status == 400:
            reason = self.redact("; ".join(_error_text(e) for e in errors) or "HTTP 400")
            return RecordResult(record.key, "rejected", reason, _code(errors))
        raise self.request_error(response, "creating a profile (POST /api/profiles)")

    # -- lists ----------------------------------------------------------------------------------------------------

    def _find_by_name(self, name: str, transport: Transport) -> str | None:
        request: PreparedRequest | None = self._request(
            "GET", "/api/lists", params={"filter": f"equals(name,{_quote(name)})"}
        )
        found: list[str] = []
        while request is not None:
            response = transport.send(request)
            if response.status != 200:
                raise self.request_error(response, "looking the list up (GET /api/lists)")
            body = response.json() or {}
            found += [
                str(d["id"])
                for d in body.get("data") or []
                if (d.get("attributes") or {}).get("name") == name
            ]
            following = (body.get("links") or {}).get("next")
            request = self._request("GET", following) if following else None
        return self._the_one_named(name, found, "Klaviyo lists")

    def _create_named(self, target: AudienceTarget, transport: Transport) -> str:
        body = {"data": {"type": "list", "attributes": {"name": target.name}}}
        response = transport.send(self._request("POST", "/api/lists", body))
        data = (response.json() or {}).get("data") or {}
        if response.status not in (200, 201) or not data.get("id"):
            raise self.request_error(response, f"creating the list {target.name!r} (POST /api/lists)")
        logger.info("%s: created Klaviyo list %r (%s)", self.label, target.name, data["id"])
        return str(data["id"])

    # -- responses --------------------------------------------------------------------------------------------------

    def observe(self, response: HttpResponse, limiter: RateLimiter) -> str | None:
        """``RateLimit-Remaining: 0`` (the steady window is used up): hold every worker until the reset."""
        try:
            remaining = int(response.header("RateLimit-Remaining") or "-1")
            reset = float(response.header("RateLimit-Reset") or "nan")
        except ValueError:
            return None
        if remaining == 0 and response.status != 429 and not math.isnan(reset):
            limiter.pause(reset)
        return None

    def error_message(self, response: HttpResponse) -> str:
        """The ``detail`` (or ``title``) of each JSON:API error, secrets masked."""
        errors = _errors(response)
        if errors:
            return self.redact("; ".join(_error_text(e) for e in errors))
        return super().error_message(response)

    # -- validate --connect -------------------------------------------------------------------------------------------

    def check_connection(self, transport: Transport) -> None:
        """The key, its revision and the list (the audience's, or ``list_id``)."""
        if self.settings.service == "audiences":
            target = self.audience_target
            if target is not None and target.id:
                self._read(transport, f"/api/lists/{target.id}", f"{self.target_label()}")
            elif target is not None and target.name:
                self._find_by_name(target.name, transport)  # a missing list is created by the first sync
            return
        if self.settings.list_id:
            self._read(
                transport, f"/api/lists/{self.settings.list_id}", f"Klaviyo list {self.settings.list_id}"
            )
        else:
            self._read(transport, "/api/lists", "Klaviyo lists")


def consent_state(value: Any) -> str | None:
    """``subscribed`` / ``unsubscribed`` from a boolean or those words; None for anything else."""
    if isinstance(value, bool):
        return "subscribed" if value else "unsubscribed"
    if isinstance(value, str) and value.strip().lower() in ("subscribed", "unsubscribed", "true", "false"):
        return {"true": "subscribed", "false": "unsubscribed"}.get(
            value.strip().lower(), value.strip().lower()
        )
    return None


def klaviyo_value(value: Any) -> Any:
    """A warehouse value as JSON Klaviyo keeps with its type (numbers, booleans, text, ISO dates, lists)."""
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
        return [klaviyo_value(v) for v in value if v is not None]
    if isinstance(value, dict):
        return {str(k): klaviyo_value(v) for k, v in value.items()}
    return str(value)


def _property_problem(name: str) -> str | None:
    if name in ("email", "phone_number", "external_id", "id"):
        return "a profile property (identifiers go in match)"
    if name.startswith("location.") and name[9:] not in LOCATION_ATTRIBUTES:
        return f"location.<{', '.join(sorted(LOCATION_ATTRIBUTES))}>"
    if not name or name.startswith("$"):
        return "a custom property name not starting with $ (Klaviyo's own)"
    return None


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _errors(response: HttpResponse) -> list[dict[str, Any]]:
    body = response.json()
    errors = body.get("errors") if isinstance(body, dict) else None
    return [e for e in errors if isinstance(e, dict)] if isinstance(errors, list) else []


def _error_text(error: Mapping[str, Any]) -> str:
    return str(error.get("detail") or error.get("title") or error.get("code") or "error")


def _code(errors: Sequence[Mapping[str, Any]]) -> str:
    return str(errors[0].get("code") or "invalid") if errors else "invalid"


register_platform("klaviyo", KlaviyoSettings, Klaviyo)
