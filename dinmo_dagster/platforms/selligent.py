"""Selligent Marketing Cloud (now Marigold Engage): list records (attributes) and static segments
(audiences), over the Engage REST API v1.

A ``type: selligent`` destination serves one ``service`` on one audience list of one organization
(``organization`` and ``list`` settings: their API names). The API root is ``https://{host}/Portal/Api``
(``host``: the tenant's host name, e.g. ``yourcompany.slgnt.eu``; ``base_url`` overrides it). Every
request carries the service account's key and secret as ``X-ApiKey: {key}:{secret}`` (``api_key`` and
``api_secret``, from ``{env: VAR}``). Engage's reference documents this header; the HMAC header some
older Selligent integrations describe is not used.

- ``attributes`` -- ``POST /organizations/{org}/lists/{list}/data/load`` with ``{"mode", "keys",
  "data": [{field: value}]}``: ``mode`` is ``InsertOrUpdate`` (``upsert``), ``Update`` (``update``:
  records the list does not hold are left alone) or ``Insert`` (``insert``: existing records are left
  alone); ``keys`` are the match fields (the activation's ``match`` names, list field names such as
  ``MAIL``). The load runs as a job: the answer is ``202 {"id"}``, polled with ``GET
  /organizations/{org}/lists/{list}/data/load/{id}`` through ``Queued`` and ``Processing`` to
  ``Completed`` (or ``Failed``: nothing applied, the batch is sent again). A completed job's
  ``errors`` (``[{"index", "code", "message"}]``, ``index`` into ``data``) are per-record failures:
  rejected with Engage's message and sent again by the next sync. A NULL mapped value is sent as
  ``null`` (clears the field); ``null_values: skip`` leaves it out. A match field named ``MAIL`` or ``EMAIL`` is trimmed and
  lower-cased; other keys go as the warehouse holds them.
- ``audiences`` -- a static segment of the list (``audience: {name:}``, looked up among ``GET
  /organizations/{org}/lists/{list}/segments``, or ``{id:}``: the segment's API name). Adds load the
  members' keys with ``POST .../segments/{segment}/data/load`` (the same job life cycle: a record the
  list does not hold fails with ``RecordNotFound`` and is rejected, to be sent again once an attributes
  activation created it); removals are ``DELETE .../segments/{segment}/data`` with ``{"keys",
  "data"}``, answered at once. Segments are not created: Engage creates static segments in its UI.

``validate --connect`` reads ``GET /organizations/{org}/lists/{list}`` (the key, the list, its
``fields``) and refuses a mapped or match field the list does not have.

Limits: Engage documents ``429 Too Many Requests`` but no figure; the SDK keeps to 10 requests per
second (assumed), follows ``Retry-After`` when sent, and loads at most 1,000 records / 5 MB per job
(assumed). ``401`` (a wrong key, or an endpoint the service account may not call) stops the sync;
``400``/``422`` on a load splits the batch until the bad record is alone, then rejects it.

Marigold's documentation this adapter follows:

- authentication (``X-ApiKey: {key}:{secret}``, service accounts, endpoint permissions) and status
  codes (400, 401, 404, 422, 429): https://developers.meetmarigold.com/engage/api/smc-v1
- list and segment endpoints a sync needs (``/organizations/{org}/lists/{list}/data/load``,
  ``.../segments/{segment}/data/load``, ``.../segments/{segment}/data``), host names ``*.slgnt.eu`` /
  ``*.slgnt.us``: https://composable-docs.zeotap.com/destinations/marketing/marigold-engage/
- lists, audience lists and static segments:
  https://getstarted.meetmarigold.com/engage/EN/Content/Engage/Lists/Lists.htm

Assumed, as the reference pages could not be read in full (the request and response bodies are
rendered by script): the ``/Portal/Api`` root, the load body (``mode``/``keys``/``data`` objects), the
job's answer and status names, the ``errors`` layout, the segment list (``[{"name", "api_name",
"type"}]``) and list (``{"fields": [{"name", "data_type"}]}``) answers, the removal request, the batch
and rate limits.
"""

from __future__ import annotations

import logging
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
    JobHandle,
    Limits,
    PlatformSettings,
    PreparedRequest,
    Record,
    RecordResult,
)
from dinmo_dagster.platforms.identifiers import IdentifierSpec, normalize_email

if TYPE_CHECKING:
    from dinmo_dagster.platforms.http import Transport

__all__ = ["Selligent", "SelligentSegment", "SelligentSettings"]

logger = logging.getLogger("dinmo_dagster.platforms")

MAX_LOAD_RECORDS = 1_000
MAX_LOAD_BYTES = 5 * 1024 * 1024
MODES = {"upsert": "InsertOrUpdate", "update": "Update", "insert": "Insert", "add": "InsertOrUpdate"}
EMAIL_FIELDS = frozenset({"MAIL", "EMAIL"})
RUNNING = frozenset({"Queued", "Processing"})


class SelligentSegment(AudienceTarget):
    """A static segment of the list: ``{name: ...}`` or ``{id: <its API name>}``."""

    noun: ClassVar[str] = "static segment"
    numeric_id: ClassVar[bool] = False


class SelligentSettings(PlatformSettings):
    """Settings of a ``type: selligent`` destination."""

    service: Literal["attributes", "audiences"] = Field(
        description="attributes (list records) or audiences (static segment membership)."
    )
    host: str | None = Field(default=None, description="The tenant's host, e.g. yourcompany.slgnt.eu.")
    organization: str = Field(min_length=1, description="The organization's API name.")
    list: str = Field(min_length=1, description="The audience list's API name.")
    api_key: SecretStr = Field(description="The service account's key (from {env: VAR}); secret.")
    api_secret: SecretStr = Field(description="The service account's secret (from {env: VAR}); secret.")
    audience: SelligentSegment | None = Field(default=None, description="audiences: the static segment.")
    poll_interval_seconds: float = Field(default=5.0, gt=0, le=300, description="Seconds between job polls.")

    @pydantic.field_validator("host")
    @classmethod
    def _check_host(cls, value: str | None) -> str | None:
        if value is not None and ("/" in value or not value.strip() or " " in value):
            raise ValueError(f"found {value!r}; allowed: a host name such as yourcompany.slgnt.eu")
        return value

    @pydantic.field_validator("audience")
    @classmethod
    def _check_audience(cls, value: SelligentSegment | None, info: ValidationInfo) -> SelligentSegment | None:
        service = info.data.get("service")
        if value is not None and service not in (None, "audiences"):
            raise ValueError(f"found a segment; allowed only with service: audiences (service is {service})")
        return value

    @pydantic.model_validator(mode="after")
    def _host_or_url(self) -> SelligentSettings:
        if self.host is None and self.base_url is None:
            raise ValueError(
                "host: found nothing; allowed: the tenant's host (yourcompany.slgnt.eu) or base_url"
            )
        return self


class Selligent(AudiencePlatform):
    """Marigold Engage (Selligent): list records through load jobs, static segment membership."""

    name = "selligent"
    settings_model = SelligentSettings
    services: ClassVar[Mapping[str, tuple[str, ...]]] = {
        "attributes": ("upsert", "update", "insert"),
        "audiences": ("add", "remove"),
    }
    limits = Limits(
        max_records_per_batch=MAX_LOAD_RECORDS,
        max_bytes_per_batch=MAX_LOAD_BYTES,
        requests_per_window=10,
        window_seconds=1.0,
        max_concurrency=2,
    )
    audience_label = "Selligent static segment"
    audience_noun = "segment"
    audiences_taking = "Selligent static segments"

    settings: SelligentSettings

    def __init__(self, settings: PlatformSettings, *, destination: str = "") -> None:
        super().__init__(settings, destination=destination)
        self.poll_interval_seconds = self.settings.poll_interval_seconds  # type: ignore[misc]

    @property
    def base_url(self) -> str:
        """``base_url``, or ``https://{host}/Portal/Api``."""
        return self.settings.base_url or f"https://{self.settings.host}/Portal/Api"

    @property
    def _list_path(self) -> str:
        return f"/organizations/{self.settings.organization}/lists/{self.settings.list}"

    def auth_headers(self) -> dict[str, str]:
        """``X-ApiKey: {key}:{secret}``."""
        key, secret = self.settings.api_key.get_secret_value(), self.settings.api_secret.get_secret_value()
        return {"X-ApiKey": f"{key}:{secret}", "Accept": "application/json"}

    def runtime_secrets(self) -> list[str]:
        """The header value (key and secret joined) is masked too."""
        key, secret = self.settings.api_key.get_secret_value(), self.settings.api_secret.get_secret_value()
        return [f"{key}:{secret}"]

    def target_label(self) -> str:
        """``Selligent list 'CONTACTS'`` or the segment."""
        if self.settings.service == "audiences":
            return super().target_label()
        return f"Selligent list {self.settings.list!r}"

    # -- identifiers and activation checks -----------------------------------------------------------

    def identifier_spec(self, name: str) -> IdentifierSpec | None:
        """Any list field; ``MAIL``/``EMAIL`` are e-mail addresses (trimmed, lower-cased)."""
        if name.upper() in EMAIL_FIELDS:
            return IdentifierSpec("email", normalize=lambda v, _c: normalize_email(v))
        return IdentifierSpec("id")

    def validate_activation(self, match: Mapping[str, str], mapping: Mapping[str, str]) -> list[str]:
        """At least one match field; segments take identifiers only and need an ``audience``."""
        problems = []
        if not match:
            problems.append("match: found nothing; allowed: at least one {list field: column} (e.g. MAIL)")
        if self.settings.service == "audiences":
            if mapping:
                problems.append(
                    f"mapping: found {', '.join(mapping)}; allowed: nothing (segments take keys only)"
                )
            if self.audience_target is None:
                problems.append("audience: found nothing; allowed: {name: ...} or {id: ...}")
        return problems

    def discover_fields(self, transport: Transport) -> Mapping[str, FieldInfo] | None:
        """The list's fields (``GET /organizations/{org}/lists/{list}``)."""
        response = transport.send(PreparedRequest("GET", self._list_path))
        if response.status != 200:
            raise self.request_error(response, f"reading {self.target_label()}")
        if self.settings.service == "audiences":
            return None
        fields = (response.json() or {}).get("fields") or []
        return {str(f["name"]): FieldInfo(str(f["name"]), type=f.get("data_type")) for f in fields}

    def validate_fields(
        self, match: Mapping[str, str], mapping: Mapping[str, str], fields: Mapping[str, FieldInfo]
    ) -> list[str]:
        """Mapped fields and match keys must be fields of the list."""
        problems = super().validate_fields(match, mapping, fields)
        problems += [
            f"match.{name}: no field {name!r} in {self.target_label()}"
            for name in match
            if name not in fields
        ]
        return problems

    def check_connection(self, transport: Transport) -> None:
        """The key and the list (read by :meth:`discover_fields`); the segment by id."""
        target = self.audience_target
        if self.settings.service == "audiences":
            self._read(transport, self._list_path, f"Selligent list {self.settings.list!r}")
            if target is not None and target.id:
                self._read(transport, f"{self._list_path}/segments/{target.id}", self.target_label())

    # -- requests --------------------------------------------------------------------------------------

    def record_input(self, operation: str, record: Record) -> Any:
        """The record's keys (and mapped fields) as one ``data`` object."""
        row = dict(record.identifiers)
        if operation != "remove":
            row.update(record.fields)
        return row

    def build_request(
        self, operation: str, inputs: Sequence[Any], records: Sequence[Record]
    ) -> PreparedRequest:
        """A load job of the batch (list or segment), or a segment removal."""
        keys = list(records[0].identifiers) if records else []
        if self.settings.service == "attributes":
            body = {"mode": MODES[operation], "keys": keys, "data": list(inputs)}
            return PreparedRequest("POST", f"{self._list_path}/data/load", json=body)
        segment = f"{self._list_path}/segments/{self._audience_ref()}"
        if operation == "remove":
            return PreparedRequest("DELETE", f"{segment}/data", json={"keys": keys, "data": list(inputs)})
        return PreparedRequest(
            "POST", f"{segment}/data/load", json={"mode": MODES["add"], "keys": keys, "data": list(inputs)}
        )

    def deliver_batch(
        self, operation: str, records: Sequence[Record], inputs: Sequence[Any], transport: Transport
    ) -> BatchOutcome:
        """Resolve the segment first (audiences), then send."""
        if self.settings.service == "audiences":
            self._resolve_audience(transport)
        return super().deliver_batch(operation, records, inputs, transport)

    def parse_response(
        self, operation: str, records: Sequence[Record], response: HttpResponse
    ) -> BatchOutcome:
        """A load's job id, a removal's verdict, or a refused batch split down to its bad record."""
        body = response.json() or {}
        if response.status == 404:
            raise self.request_error(
                response, f"{self.target_label()} (check organization, list and segment)"
            )
        if response.status in (400, 422):
            if len(records) > 1:
                return BatchOutcome(split=True)
            return BatchOutcome.reject_all(
                records, self.error_message(response), str(body.get("code") or "invalid")
            )
        if response.status not in (200, 201, 202):
            raise self.request_error(response, f"loading into {self.target_label()}")
        if operation == "remove":
            return BatchOutcome.accept_all(records)  # a key not in the segment is not in it: done
        if body.get("id") is None:
            raise self.request_error(response, f"loading into {self.target_label()} (no job id)")
        return BatchOutcome(job=JobHandle(str(body["id"])))

    def poll_job(
        self, operation: str, records: Sequence[Record], job: JobHandle, transport: Transport
    ) -> BatchOutcome:
        """The load job's status; once ``Completed``, its per-record ``errors``."""
        base = (
            self._list_path
            if self.settings.service == "attributes"
            else (f"{self._list_path}/segments/{self._audience_ref()}")
        )
        response = transport.send(PreparedRequest("GET", f"{base}/data/load/{job.id}"))
        if response.status != 200:
            raise self.request_error(response, f"reading load job {job.id}")
        body = response.json() or {}
        status = str(body.get("status") or "")
        if status in RUNNING:
            return BatchOutcome(job=job)
        if status != "Completed":
            logger.warning("%s: load job %s ended %r; its records are sent again", self.label, job.id, status)
            return BatchOutcome([RecordResult(r.key, "retry") for r in records])
        failed: dict[int, RecordResult] = {}
        for error in body.get("errors") or []:
            index = error.get("index")
            if isinstance(index, int) and 0 <= index < len(records):
                code = str(error.get("code") or "error")
                reason = self.redact(f"{code}: {error.get('message') or 'refused by Selligent'}")
                failed.setdefault(index, RecordResult(records[index].key, "rejected", reason, code))
        return BatchOutcome([failed.get(i) or RecordResult(r.key, "accepted") for i, r in enumerate(records)])

    # -- segments ----------------------------------------------------------------------------------------

    def _find_by_name(self, name: str, transport: Transport) -> str | None:
        response = transport.send(PreparedRequest("GET", f"{self._list_path}/segments"))
        if response.status != 200:
            raise self.request_error(
                response, f"reading the segments of Selligent list {self.settings.list!r}"
            )
        items = response.json() or []
        found = [
            str(s["api_name"]) for s in items if s.get("name") == name and s.get("type", "Static") == "Static"
        ]
        return self._the_one_named(name, found, "static segments")

    def _create_named(self, target: AudienceTarget, transport: Transport) -> str:
        raise self.config_error(
            f"audience.name: no static segment named {target.name!r} in Selligent list {self.settings.list!r}; "
            "allowed: an existing static segment (create it in Marigold Engage)"
        )


register_platform("selligent", SelligentSettings, Selligent)
