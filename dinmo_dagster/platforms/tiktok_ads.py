"""TikTok Ads: ``audiences`` (Customer File custom audiences of the TikTok Marketing API v1.3) and
``events`` (the Events API 2.0).

**Target.** The activation's ``audience``: ``{name: "VIP Europe"}`` (looked up among the
advertiser's custom audiences, created from the first file when missing) or ``{id: "1234567"}``.

**Operations** (``add``, ``remove``, ``replace``) on ``https://business-api.tiktok.com/open_api/v1.3``.
Each batch goes as one file per identifier type, each file sent in two steps:

1. ``POST /file/custom_audience/upload/`` (``multipart/form-data``: ``advertiser_id``,
   ``calculate_type`` ``EMAIL_SHA256`` / ``PHONE_SHA256`` / ``IDFA_SHA256`` / ``GAID_SHA256``,
   ``file_signature`` (the file's MD5, hex) and ``file``: one SHA-256 digest a line); TikTok answers
   the file's ``file_path``;
2. ``POST /dmp/custom_audience/update/`` with ``{advertiser_id, custom_audience_id, action,
   file_paths: [file_path]}``: ``action`` ``APPEND`` (add), ``DELETE`` (remove) or ``REPLACE``.
   An audience named but missing is created by ``POST /dmp/custom_audience/create/`` with
   ``{advertiser_id, custom_audience_name, calculate_type, file_paths}`` (a remove on a missing
   audience sends nothing: it holds nobody).

``replace`` (a full sync): the first file of the operation goes with ``REPLACE`` (the other workers
wait for it), the following ones with ``APPEND``. A full sync with no record uploads an empty
``EMAIL_SHA256`` file and sends ``REPLACE`` with it, leaving the audience empty (assumed: TikTok's
pages do not say whether an empty file is accepted). TikTok matches the files asynchronously; the
adapter does not poll the audience's status: a file accepted by ``update`` counts as delivered.

**Identifiers** (``identifiers:`` names; normalized, then SHA-256 in lower-case hex; a value that
already is a SHA-256 digest passes unchanged):

- ``email`` (EMAIL_SHA256): trimmed, lower-cased;
- ``phone`` (PHONE_SHA256): E.164 with its ``+`` (``+33612345678``), national numbers read with the
  activation's ``default_country``;
- ``idfa`` (IDFA_SHA256) and ``gaid`` (GAID_SHA256): the device id (a UUID), lower-cased, hyphens
  kept (assumed: TikTok's audience pages ask for the "original" id hashed, without a case rule).

A record with no identifier, or an invalid one, is rejected before anything is sent.

**Errors.** TikTok answers HTTP 200 with a JSON ``{"code", "message", "request_id", "data"}``;
``code`` 0 is success. Read here: ``40100`` (too many requests: backoff, every worker holding),
``40102`` / ``40104`` / ``40105`` (access token expired, empty, or wrong/revoked: the sync stops),
``40001``-``40099`` and other ``4xxxx`` (a refused parameter or file: the batch's records are
rejected with TikTok's message and code, and sent again by the next sync), ``5xxxx`` (TikTok's
server errors: retried with backoff). HTTP 429 / 5xx are read as usual.

**Limits as data.** At most 50,000 identifiers per file (assumed: TikTok's help center sets file size
limits, not a count this module could confirm); 10 requests per second (assumed: TikTok's QPS limits
depend on the app's tier and are not published per endpoint); two requests in flight.

**Authentication.** TikTok's Marketing API ``access_token`` (obtained once by the advertiser's
authorization of the app, ``/oauth2/access_token/``) is long-term: it does not expire until the
advertiser revokes it, and there is no refresh token in this flow; it is sent as the
``Access-Token`` header. A revoked token stops the sync with TikTok's message.

**events** (operation ``track``): ``POST /open_api/v1.3/event/track/`` (the Events API 2.0) with
``{"event_source": "web" | "offline", "event_source_id": <pixel code or offline event set id>,
"data": [...]}`` (and ``test_event_code`` when set: TikTok's Test Events tool shows them), at most 1,000
events per request (assumed: the limit integrators cite; the reference page could not be read). Each
event:

- ``event``: a mapped ``event`` column, else the ``event`` setting (``CompletePayment``...);
- ``event_time``: the mapped time column (the fact model's event cursor) in Unix seconds, naive
  timestamps read as UTC;
- ``event_id``: the record's key (the fact model's primary key; a mapped ``event_id`` column overrides
  it). TikTok de-duplicates Events API events with the same ``event`` and ``event_id`` received within
  48 hours (https://ads.tiktok.com/help/article/event-deduplication): an event re-sent after a killed
  sync counts once;
- ``user``: ``email`` (trimmed, lower-cased), ``phone`` (E.164 with its ``+``, as for audiences) and
  ``external_id`` (trimmed) as SHA-256 digests; ``ip``, ``user_agent``, ``ttclid`` and ``ttp`` in clear
  (TikTok asks for them unhashed);
- ``page.url``: a mapped ``url`` column (web events);
- ``properties``: every other mapped field (``value`` as a number, ``currency``, ``order_id``...).

TikTok answers one ``code`` for the whole request: an event it refuses (``40002`` and a message naming
the field) refuses the request, whose message does not reliably name the event; the batch is then split
until the refused event is alone, rejected with TikTok's message, and the others are sent again (each
counted once, by ``event_id``). Rate: 10 requests per second assumed, as for audiences (TikTok's QPS
limits depend on the app). Access token: the same ``Access-Token`` header (an Events API token
generated in Events Manager, or the Marketing API token). ``validate --connect`` of an events
destination checks the token and advertiser when ``advertiser_id`` is given (the Events API has no
read-only check of a pixel); without it, the first sync is the check.

TikTok's documentation this adapter follows (https://business-api.tiktok.com/portal/docs):
"Upload an audience file" (``/file/custom_audience/upload/``), "Create an audience by file"
(https://business-api.tiktok.com/portal/docs/create-an-audience-by-file/v1.3), "Update an audience"
(``/dmp/custom_audience/update/``), "Get all audiences" (``/dmp/custom_audience/list/``) and the
"Return codes" page; Events API 2.0 (https://business-api.tiktok.com/portal/docs?id=1771100865818625,
"Report web events" / "Report offline events") and https://ads.tiktok.com/help/article/events-api . Those pages were not readable in full from this project; where this docstring
says "assumed" (limits, the empty replace, device id case, the token error codes) it follows what the
TikTok API clients of Pipedream (tiktok_ads_manager) and TikTok's own tiktok-business-api-sdk show.
"""

from __future__ import annotations

import decimal
import hashlib
import json
import logging
import re
import weakref
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import pydantic
import requests
from pydantic import Field, SecretStr

from dinmo_dagster.platforms import register_platform
from dinmo_dagster.platforms.audiences import (
    AudiencePlatform,
    AudienceTarget,
    IdentifierTable,
    KindProgress,
    advertising_id,
    check_audience_activation,
)
from dinmo_dagster.platforms.base import (
    BatchOutcome,
    HttpResponse,
    Limits,
    PlatformSettings,
    PreparedRequest,
    Record,
    RecordResult,
    ResponseKind,
    Signal,
    unix_seconds,
)
from dinmo_dagster.platforms.identifiers import (
    IdentifierSpec,
    normalize_email,
    normalize_phone,
)

if TYPE_CHECKING:
    from dinmo_dagster.platforms.http import Transport

__all__ = ["TikTokAds", "TikTokAdsSettings", "TikTokAudienceTarget"]

logger = logging.getLogger("dinmo_dagster.platforms")

API = "/open_api/v1.3"
MAX_IDENTIFIERS_PER_FILE = 50_000
LIMITS = Limits(
    max_records_per_batch=MAX_IDENTIFIERS_PER_FILE, requests_per_window=10, window_seconds=1.0, max_concurrency=2
)
MAX_EVENTS_PER_REQUEST = 1_000  # assumed (module docstring)
EVENT_LIMITS = Limits(
    max_records_per_batch=MAX_EVENTS_PER_REQUEST, requests_per_window=10, window_seconds=1.0, max_concurrency=2
)
RATE_LIMITED_CODES = frozenset({40100})
AUTH_CODES = frozenset({40102, 40104, 40105})
_DIGITS = re.compile(r"\d+")
_ACTIONS = {"add": "APPEND", "remove": "DELETE", "replace": "REPLACE"}


def normalize_device_id(text: str, default_country: str | None = None) -> str:
    """An IDFA or GAID: lower-cased with its hyphens."""
    return advertising_id(text, "a mobile advertising id (IDFA or GAID, 8-4-4-4-12 hex digits)").lower()


# identifiers: name -> (TikTok calculate_type, how it is prepared)
_TYPES = IdentifierTable({
    "email": ("EMAIL_SHA256", IdentifierSpec(
        "email", hashed=True, optional=True, normalize=lambda text, _: normalize_email(text))),
    "phone": ("PHONE_SHA256", IdentifierSpec("phone", hashed=True, optional=True, normalize=normalize_phone)),
    "idfa": ("IDFA_SHA256", IdentifierSpec("id", hashed=True, optional=True, normalize=normalize_device_id)),
    "gaid": ("GAID_SHA256", IdentifierSpec("id", hashed=True, optional=True, normalize=normalize_device_id)),
})  # fmt: skip
_ORDER = ["EMAIL_SHA256", "PHONE_SHA256", "IDFA_SHA256", "GAID_SHA256"]


def _clear(text: str, default_country: str | None = None) -> str:
    return text.strip()


# events: identifier name -> how it is prepared (the name is the key of the event's ``user`` object)
_USER = {
    "email": IdentifierSpec("email", hashed=True, optional=True, normalize=lambda text, _: normalize_email(text)),
    "phone": IdentifierSpec("phone", hashed=True, optional=True, normalize=normalize_phone),
    "external_id": IdentifierSpec("id", hashed=True, optional=True, normalize=_clear),
    "ip": IdentifierSpec("id", optional=True, normalize=_clear),
    "user_agent": IdentifierSpec("id", optional=True, normalize=_clear),
    "ttclid": IdentifierSpec("id", optional=True, normalize=_clear),
    "ttp": IdentifierSpec("id", optional=True, normalize=_clear),
}
# Event parameters a mapping may name; any other mapped field goes in properties.
_EVENT_FIELDS = frozenset({"event", "event_time", "event_id", "url"})


class TikTokAudienceTarget(AudienceTarget):
    """The custom audience an activation fills: ``{name: ...}`` (created when missing) or ``{id: ...}``."""

    noun = "custom audience"
    max_name_length = 128

    name: str | None = Field(default=None, description="The custom audience's name (128 chars max).")
    id: str | None = Field(default=None, description="The custom audience's id (digits).")
    description: str | None = Field(default=None, description="Accepted, not sent (TikTok's create takes none).")


class TikTokAdsSettings(PlatformSettings):
    """Settings of a ``type: tiktok_ads`` destination (``audience`` comes from the activation)."""

    service: Literal["audiences", "events"] = Field(description="audiences (Customer File custom audiences) or events.")
    access_token: SecretStr = Field(description="The Marketing API's long-term access token ({env: VAR}); secret.")
    advertiser_id: str | None = Field(
        default=None, validate_default=True, description="The advertiser's id (digits); audiences."
    )
    audience: TikTokAudienceTarget | None = Field(default=None, description="The audience; from the activation.")
    event_source: Literal["web", "offline"] | None = Field(default=None, description="events: web or offline.")
    event_source_id: str | None = Field(default=None, description="events: the pixel code or offline event set id.")
    event: str | None = Field(default=None, description="events: the event name when no column is mapped to event.")
    test_event_code: str | None = Field(default=None, description="events: TikTok's Test Events code.")

    @pydantic.field_validator("advertiser_id", mode="before")
    @classmethod
    def _check_advertiser(cls, value: Any, info: pydantic.ValidationInfo) -> Any:
        if value is None:
            if info.data.get("service") == "audiences":
                raise ValueError("found nothing; allowed: the advertiser's numeric id, such as 7012345678901234567")
            return None
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not (isinstance(value, str) and _DIGITS.fullmatch(value.strip())):
            raise ValueError(f"found {value!r}; allowed: the advertiser's numeric id, such as 7012345678901234567")
        return value.strip()

    @pydantic.model_validator(mode="after")
    def _keys_of_the_service(self) -> TikTokAdsSettings:
        if self.service == "audiences":
            unused = [k for k in ("event_source", "event_source_id", "event", "test_event_code") if getattr(self, k)]
            if unused:
                raise ValueError(f"{', '.join(unused)}: not used by service audiences; allowed: service events")
            return self
        problems = []
        if self.audience is not None:
            problems.append("audience: not used by service events; allowed: service audiences")
        if self.event_source is None:
            problems.append("event_source: found nothing; allowed: web, offline")
        if not (self.event_source_id or "").strip():
            problems.append("event_source_id: found nothing; allowed: the pixel code (web) or offline event set id")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class TikTokAds(AudiencePlatform):
    """TikTok Customer File custom audiences: add, remove, replace members (module docstring)."""

    name = "tiktok_ads"
    settings_model: ClassVar[type[PlatformSettings]] = TikTokAdsSettings
    services: ClassVar[Mapping[str, tuple[str, ...]]] = {
        "audiences": ("add", "remove", "replace"), "events": ("track",)
    }
    default_base_url = "https://business-api.tiktok.com"
    limits = LIMITS
    audience_label = "TikTok audience"
    audience_noun = "audience"
    identifier_table = _TYPES

    settings: TikTokAdsSettings

    def __init__(self, settings: PlatformSettings, *, destination: str = "") -> None:
        super().__init__(settings, destination=destination)
        self.limits = EVENT_LIMITS if self.settings.service == "events" else LIMITS
        self._looked_up = self._audience_id is not None
        # transport (one per delivery) -> its replace already sent REPLACE
        self._replaced: weakref.WeakKeyDictionary[Transport, bool] = weakref.WeakKeyDictionary()

    def auth_headers(self) -> dict[str, str]:
        """TikTok's ``Access-Token`` header (a long-term token: nothing to renew)."""
        return {"Access-Token": self.settings.access_token.get_secret_value()}

    # -- identifiers --------------------------------------------------------------------------------

    def target_label(self) -> str:
        """``TikTok audience 'VIP'`` or ``TikTok web events of pixel C123``."""
        if self.settings.service == "events":
            what = "pixel" if self.settings.event_source == "web" else "offline event set"
            return f"TikTok {self.settings.event_source} events of {what} {self.settings.event_source_id}"
        return super().target_label()

    def identifier_spec(self, name: str) -> IdentifierSpec | None:
        """The audience identifiers, or the event ``user`` keys (module docstring)."""
        if self.settings.service == "events":
            return _USER.get(name.lower())
        return super().identifier_spec(name)

    def validate_activation(self, match: Mapping[str, str], mapping: Mapping[str, str]) -> list[str]:
        """Known identifiers; no mapping; an audience. Events: known user keys, an event time and name."""
        if self.settings.service == "events":
            return self._validate_events(match, mapping)
        return check_audience_activation(
            match, mapping, kind_of=lambda name: name if name.lower() in _TYPES else None,  # each its own kind
            allowed=", ".join(_TYPES), takes="TikTok audiences", has_audience=self.settings.audience is not None,
        )  # fmt: skip

    def _validate_events(self, match: Mapping[str, str], mapping: Mapping[str, str]) -> list[str]:
        problems = []
        if not match:
            problems.append(f"identifiers: found nothing; allowed: at least one of {', '.join(_USER)}")
        problems += [f"identifiers.{name}: found {name!r}; allowed for events: {', '.join(_USER)}"
                     for name in match if name.lower() not in _USER]  # fmt: skip
        targets = set(mapping.values())
        if "event_time" not in targets:
            problems.append("mapping: no column is mapped to event_time; allowed: the fact model's time column")
        if "event" not in targets and not self.settings.event:
            problems.append("event: found nothing; allowed: the event setting or a column mapped to event")
        return problems

    # -- requests -----------------------------------------------------------------------------------

    def record_input(self, operation: str, record: Record) -> Any:
        """Audiences: identifier digests by calculate type. Events: one Events API 2.0 event."""
        if self.settings.service == "events":
            return self._event(record)
        return super().record_input(operation, record)

    def _event(self, record: Record) -> dict[str, Any]:
        fields = record.fields
        event: dict[str, Any] = {
            "event": str(fields.get("event") or self.settings.event or ""),
            "event_time": unix_seconds(fields.get("event_time")),
            "event_id": str(fields.get("event_id") or record.key),
            "user": {name.lower(): value for name, value in record.identifiers.items()},
        }
        if fields.get("url"):
            event["page"] = {"url": str(fields["url"])}
        properties = {name.removeprefix("properties."): _property(name, value)
                      for name, value in fields.items() if name not in _EVENT_FIELDS and value is not None}  # fmt: skip
        if properties:
            event["properties"] = properties
        return event

    def _track_request(self, inputs: Sequence[Any]) -> PreparedRequest:
        body: dict[str, Any] = {"event_source": self.settings.event_source,
                                "event_source_id": self.settings.event_source_id, "data": list(inputs)}  # fmt: skip
        if self.settings.test_event_code:
            body["test_event_code"] = self.settings.test_event_code
        return PreparedRequest("POST", f"{API}/event/track/", json=body)

    def _track_outcome(self, records: Sequence[Record], response: HttpResponse) -> BatchOutcome:
        """Code 0 accepts the events; a refusal splits the batch down to the refused event."""
        code = _code(response)
        if response.status == 200 and code == 0:
            return BatchOutcome.accept_all(records)
        if response.status == 200 and code is not None and 40000 <= code < 50000:
            if len(records) > 1:
                return BatchOutcome(split=True)
            return BatchOutcome.reject_all(records, f"TikTok: {self.error_message(response)}", f"TikTok code {code}")
        raise self.request_error(response, f"sending events to {self.target_label()}")

    def _files(self, inputs: Sequence[Mapping[str, str]]) -> list[tuple[str, list[int]]]:
        """(calculate_type, indexes of the inputs that have it), in TikTok's order."""
        return [(t, [i for i, row in enumerate(inputs) if t in row]) for t in _ORDER if any(t in r for r in inputs)]

    def _upload_request(self, calculate_type: str, digests: Sequence[str]) -> PreparedRequest:
        content = "".join(f"{d}\n" for d in digests).encode()
        signature = hashlib.md5(content).hexdigest()  # TikTok asks for the file's MD5
        form = {"advertiser_id": self.settings.advertiser_id, "calculate_type": calculate_type,
                "file_signature": signature}  # fmt: skip
        url = f"{self.base_url}{API}/file/custom_audience/upload/"

        def call() -> HttpResponse:
            # requests builds the multipart body; the transport's JSON encoding cannot.
            try:
                raw = requests.post(url, data=form, files={"file": ("audience.txt", content, "text/plain")},
                                    headers=self.auth_headers(), timeout=self.settings.timeout_seconds)
            except (requests.Timeout, requests.ConnectionError):
                return HttpResponse(503, {}, b"")
            return HttpResponse(raw.status_code, {k.lower(): v for k, v in raw.headers.items()}, raw.content)

        return PreparedRequest("POST", f"{API}/file/custom_audience/upload/",
                               json={**form, "file": list(digests)}, call=call)  # fmt: skip

    def _update_request(self, action: str, file_path: str) -> PreparedRequest:
        body = {"advertiser_id": self.settings.advertiser_id, "custom_audience_id": self._audience_ref(),
                "action": action, "file_paths": [file_path]}  # fmt: skip
        return PreparedRequest("POST", f"{API}/dmp/custom_audience/update/", json=body)

    def build_request(self, operation: str, inputs: Sequence[Any], records: Sequence[Record]) -> PreparedRequest:
        """Events: the track request. Audiences: the first upload of the batch (see :meth:`deliver_batch`)."""
        if self.settings.service == "events":
            return self._track_request(inputs)
        calculate_type, indexes = self._files(inputs)[0]
        return self._upload_request(calculate_type, [inputs[i][calculate_type] for i in indexes])

    def preview_request(self, operation: str, inputs: Sequence[Any], records: Sequence[Record]) -> PreparedRequest:
        """The first upload, and the update that follows it (events: the track request)."""
        if self.settings.service == "events":
            return self._track_request(inputs)
        request = self.build_request(operation, inputs, records)
        then = self._update_request(_ACTIONS[operation], "<file_path of the upload>")
        return PreparedRequest(request.method, request.path,
                               json={**request.json, "then": f"POST {then.path} {json.dumps(then.json)}"})

    def parse_response(self, operation: str, records: Sequence[Record], response: HttpResponse) -> BatchOutcome:
        """Events: TikTok's answer to a track request (audiences use :meth:`deliver_batch`)."""
        if self.settings.service == "events":
            return self._track_outcome(records, response)
        raise NotImplementedError("tiktok_ads delivers audience batches with deliver_batch")

    def deliver_batch(
        self, operation: str, records: Sequence[Record], inputs: Sequence[Any], transport: Transport
    ) -> BatchOutcome:
        """Per identifier type: upload the file, then create, replace, append or delete with it.
        Events: one track request."""
        if self.settings.service == "events":
            return self._track_outcome(records, transport.send(self._track_request(inputs)))
        failed: dict[int, RecordResult] = {}
        files = self._files(inputs)
        # the records whose every file was applied are handed to the engine as they are
        progress = KindProgress(self, records, files)
        for calculate_type, indexes in files:
            refused = self._send_file(operation, calculate_type, [inputs[i][calculate_type] for i in indexes],
                                      transport)  # fmt: skip
            if refused is not None:
                for i in indexes:
                    failed.setdefault(i, RecordResult(records[i].key, "rejected", refused[0], refused[1]))
            progress.answered(indexes, failed)
        return BatchOutcome([failed.get(i) or RecordResult(r.key, "accepted") for i, r in enumerate(records)])

    def finish_operation(self, operation: str, pending: Sequence[str], transport: Transport) -> BatchOutcome:
        """A replace that sent no record empties the audience with an empty file."""
        if operation == "replace":
            with self._lock:
                done = self._replaced.pop(transport, False)
            if not done:
                refused = self._send_file(operation, "EMAIL_SHA256", [], transport)
                if refused is not None:
                    raise self.config_error(f"emptying {self.target_label()} (full sync) failed: {refused[0]}")
        return BatchOutcome()

    def _send_file(
        self, operation: str, calculate_type: str, digests: Sequence[str], transport: Transport
    ) -> tuple[str, str] | None:
        """Upload and apply one file; (reason, code) when TikTok refused it."""
        response = transport.send(self._upload_request(calculate_type, digests))
        refused = self._refusal(response, f"uploading a {calculate_type} file")
        if refused is not None:
            return refused
        file_path = str(((response.json() or {}).get("data") or {}).get("file_path") or "")
        with self._lock:
            if not self._looked_up:
                self._audience_id = self._find_audience(transport)
                self._looked_up = True
            if self._audience_id is None:
                if operation == "remove":
                    return None  # a missing audience holds nobody
                self._create_audience(calculate_type, file_path, transport)
                self._replaced[transport] = operation == "replace"
                return None
            if operation == "replace" and not self._replaced.get(transport):
                refused = self._update(transport, "REPLACE", file_path)
                if refused is None:
                    self._replaced[transport] = True
                    logger.info("%s: replaced the members of %s (full sync)", self.label, self.target_label())
                return refused
        return self._update(transport, "DELETE" if operation == "remove" else "APPEND", file_path)

    def _update(self, transport: Transport, action: str, file_path: str) -> tuple[str, str] | None:
        response = transport.send(self._update_request(action, file_path))
        return self._refusal(response, f"{action} of a file to {self.target_label()}")

    def _refusal(self, response: HttpResponse, what: str) -> tuple[str, str] | None:
        """None on ``code`` 0; (message, code) for a 4xxxx code; raise on anything else."""
        code = _code(response)
        if response.status == 200 and code == 0:
            return None
        if response.status == 200 and code is not None and 40000 <= code < 50000:
            return self.error_message(response), f"TikTok code {code}"
        raise self.request_error(response, what)

    # -- the audience -------------------------------------------------------------------------------

    def _find_audience(self, transport: Transport) -> str | None:
        target = self.settings.audience
        if target is None or target.name is None:
            raise self.config_error("audience: found nothing; allowed: {name: ...} or {id: ...}")
        advertiser = self.settings.advertiser_id
        found: list[str] = []
        page = 1
        while True:
            response = transport.send(PreparedRequest("GET", f"{API}/dmp/custom_audience/list/", params={
                "advertiser_id": advertiser, "page": str(page), "page_size": "100"}))  # fmt: skip
            if response.status != 200 or _code(response) != 0:
                raise self.request_error(response, f"listing the custom audiences of advertiser {advertiser}")
            data = (response.json() or {}).get("data") or {}
            for entry in data.get("list") or []:
                if isinstance(entry, dict) and entry.get("name") == target.name and entry.get("custom_audience_id"):
                    found.append(str(entry["custom_audience_id"]))
            if page >= int((data.get("page_info") or {}).get("total_page") or 1):
                break
            page += 1
        if len(found) > 1:
            raise self.config_error(
                f"audience.name: {len(found)} custom audiences of advertiser {advertiser} are named "
                f"{target.name!r} (ids {', '.join(found)}); allowed: a unique name, or audience: {{id: ...}}"
            )
        return found[0] if found else None

    def _create_audience(self, calculate_type: str, file_path: str, transport: Transport) -> None:
        target = self.settings.audience
        assert target is not None and target.name is not None
        body = {"advertiser_id": self.settings.advertiser_id, "custom_audience_name": target.name,
                "calculate_type": calculate_type, "file_paths": [file_path]}  # fmt: skip
        response = transport.send(PreparedRequest("POST", f"{API}/dmp/custom_audience/create/", json=body))
        created = ((response.json() or {}).get("data") or {}).get("custom_audience_id") if _code(response) == 0 else None
        if response.status != 200 or not created:
            raise self.request_error(response, f"creating the custom audience {target.name!r}")
        self._audience_id = str(created)
        logger.info("%s: created custom audience %r (id %s)", self.label, target.name, created)

    # -- reading responses --------------------------------------------------------------------------

    def classify(self, response: HttpResponse) -> Signal:
        """TikTok's ``code`` in an HTTP 200: 40100 rate limited, token codes refused, 5xxxx transient."""
        code = _code(response) if response.status == 200 else None
        if code in RATE_LIMITED_CODES:
            return Signal(ResponseKind.RATE_LIMITED, None, self.error_message(response))
        if code in AUTH_CODES:
            return Signal(ResponseKind.AUTH, message=self.error_message(response))
        if code is not None and 50000 <= code < 60000:
            return Signal(ResponseKind.TRANSIENT, None, self.error_message(response))
        return super().classify(response)

    def error_message(self, response: HttpResponse) -> str:
        """TikTok's ``message`` with its ``code``, secrets masked."""
        body = response.json()
        if isinstance(body, dict) and body.get("message") and body.get("code") not in (None, 0):
            return self.redact(f"{body['message']} (code {body['code']})")
        return super().error_message(response)

    # -- validate --connect -------------------------------------------------------------------------

    def check_connection(self, transport: Transport) -> None:
        """The token and the advertiser, and an audience given by id (events: when an advertiser is given)."""
        advertiser = self.settings.advertiser_id
        if advertiser is None:
            return  # an events destination without advertiser: the Events API has no read-only check
        response = transport.send(PreparedRequest("GET", f"{API}/advertiser/info/",
                                                  params={"advertiser_ids": json.dumps([advertiser])}))
        if response.status != 200 or _code(response) != 0:
            raise self.request_error(response, f"reading advertiser {advertiser}")
        target = self.settings.audience
        if target is None or target.id is None:
            return  # an audience given by name is created by the first sync when missing
        response = transport.send(PreparedRequest("GET", f"{API}/dmp/custom_audience/get/", params={
            "advertiser_id": advertiser, "custom_audience_ids": json.dumps([target.id])}))  # fmt: skip
        if response.status != 200 or _code(response) != 0:
            raise self.request_error(response, f"reading custom audience {target.id}")


def _property(name: str, value: Any) -> Any:
    """TikTok's ``value`` is a number; other properties keep their JSON form (decimals as text)."""
    if name.removeprefix("properties.") == "value" and isinstance(value, (int, float, decimal.Decimal, str)):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _code(response: HttpResponse) -> int | None:
    body = response.json()
    code = body.get("code") if isinstance(body, dict) else None
    return code if isinstance(code, int) and not isinstance(code, bool) else None


register_platform("tiktok_ads", TikTokAdsSettings, TikTokAds)
