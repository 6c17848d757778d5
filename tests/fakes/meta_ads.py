"""A local fake of Meta's Marketing API (custom audiences) and Conversions API, built from Meta's docs.

It serves the Graph API paths on ``127.0.0.1`` (a free port the OS picks), keeps everything in
memory, and lets a test assert what Meta would hold: each audience's members (their SHA-256 hashes)
and the Conversions API events counted after de-duplication.

Contract (and where each part comes from):

* **Paths and versions** -- ``/{version}/...`` with a Graph API version such as ``v25.0``
  (``supported_versions``); an older version gets ``(#2635) You are calling a deprecated version of the
  Ads API``. https://developers.facebook.com/docs/graph-api/guides/versioning
* **Parameters** -- as Graph takes them: in the query string, a form body (objects such as
  ``payload``, ``session`` and ``data`` as JSON strings) or a JSON body.
* **Auth** -- ``access_token`` (query or body) or ``Authorization: Bearer <token>``. A wrong token is
  ``{"error": {"message": "Invalid OAuth access token - Cannot parse access token", "type":
  "OAuthException", "code": 190, "fbtrace_id": ...}}``; a missing one is code 190 too. Errors use
  Graph's documented shape ``{"error": {"message", "type", "code", "error_subcode",
  "error_user_title", "error_user_msg", "fbtrace_id"}}`` with HTTP 400 (Graph returns most errors,
  throttling included, as 400): **classify by ``error.code``, not by the HTTP status**.
  https://developers.facebook.com/docs/graph-api/guides/error-handling
* **Custom audiences** -- ``POST /act_{ad_account_id}/customaudiences`` (``name``,
  ``subtype=CUSTOM``, ``customer_file_source``, ``description``) answers ``{"id": "<audience id>"}``;
  ``GET`` on the same edge lists ``{"data": [{"id", "name", ...}]}``; ``GET /{audience_id}`` reads
  one (``approximate_count_lower_bound`` / ``_upper_bound``, ``operation_status``); ``DELETE
  /{audience_id}`` answers ``{"success": true}``. An unknown object is ``(#100) Unsupported post
  request. Object with ID '...' does not exist...`` (code 100, subcode 33).
  https://developers.facebook.com/docs/marketing-api/audiences/guides/custom-audiences ,
  https://developers.facebook.com/docs/marketing-api/reference/custom-audience
* **Members** -- ``POST`` (add) and ``DELETE`` (remove) ``/{audience_id}/users`` with ``payload:
  {"schema": ..., "data": [...]}`` and an optional ``session``; at most **10,000** rows per request
  (more is a code 100 error and nothing is applied). ``schema`` is ``EMAIL_SHA256``,
  ``PHONE_SHA256``, ``MOBILE_ADVERTISER_ID`` or a multi-key list such as ``["EMAIL", "PHONE", "FN"]``
  (then each row is a list in that order, ``""`` for an unknown key). Identifiers must be SHA-256 hex
  digests of the normalized value, except ``EXTERN_ID`` (hashing recommended), ``MADID``,
  ``LOOKALIKE_VALUE`` and ``DATA_PROCESSING_OPTIONS``; a ``MADID`` is an advertising id (Apple's
  IDFA or Google's AAID, both UUIDs, "all lowercase, keep hyphens"). A raw e-mail or phone, or a
  malformed MADID, is an invalid entry, counted in ``num_invalid_entries`` and shown in ``invalid_entry_samples`` (value -> key, at most
  ``invalid_sample_limit``), and never stored. The answer is ``{"audience_id", "session_id",
  "num_received", "num_invalid_entries", "invalid_entry_samples"}``. A member is a person: a row
  that shares an identifier with a member merges into it, and a removal removes every member that
  shares an identifier with the row. https://developers.facebook.com/docs/marketing-api/reference/custom-audience/users ,
  https://developers.facebook.com/docs/marketing-api/audiences/guides/custom-audiences#hash
* **Replace** -- ``POST /{audience_id}/usersreplace`` with ``session: {"session_id", "batch_seq",
  "last_batch_flag", "estimated_num_total"}`` and the same ``payload``. A session starts with
  ``batch_seq`` 1; the batch with ``last_batch_flag: true`` ends it and the audience then holds
  exactly the rows of the session's batches (a re-sent batch is harmless). Meta's reference page
  gives the session fields but not these rules in full, so the fake is deliberately strict (an
  adapter that passes it is safe on Meta): a session that does not start at 1, a second session
  while one is open, a batch for a finished or expired session (no batch for
  ``replace_session_timeout`` seconds, 90 minutes by default; the audience then keeps its old
  members), and ``/users`` calls during an open session are code 100 errors.
  https://developers.facebook.com/docs/marketing-api/reference/custom-audience/usersreplace ,
  https://developers.facebook.com/docs/marketing-api/reference/custom-audience-session
* **Rate limits** -- custom-audience calls count against the ad account's Business Use Case budget
  (``audience_call_limit`` calls per ``audience_window`` seconds; Meta's is 5,000 + 40 x active
  audiences per hour in development tier, 190,000 + ... in standard tier). Every audience answer
  carries ``X-Business-Use-Case-Usage: {"<ad account id>": [{"type": "custom_audience",
  "call_count": <%>, "total_cputime": <%>, "total_time": <%>, "estimated_time_to_regain_access":
  <minutes>, "ads_api_access_tier": ...}]}``; over budget the call fails with code **80003**
  (subcode 2446079, ``"(#80003) There have been too many calls to this ad-account. Wait a bit and try
  again..."``). :meth:`MetaAdsFake.fail_next` injects the other throttling codes (4 application,
  17 user, 32 page, 613 custom/ad-account) or any other error.
  https://developers.facebook.com/docs/marketing-api/overview/rate-limiting ,
  https://developers.facebook.com/docs/graph-api/overview/rate-limiting#buc-rate-limits
* **Conversions API** -- ``POST /{pixel_id}/events`` with ``data`` (at most **1,000** events) and an
  optional ``test_event_code``. Each event needs ``event_name``, ``event_time`` (Unix seconds, at
  most 7 days old: "if any event_time in data is greater than 7 days in the past, we return an error
  for the entire request and process no events"), ``action_source`` (``website`` events also need
  ``event_source_url`` and ``user_data.client_user_agent``) and ``user_data`` whose ``em``, ``ph``,
  ``fn``, ``ln``, ``ge``, ``db``, ``ct``, ``st``, ``zp`` and ``country`` are SHA-256 hex digests. Any
  invalid event rejects the whole request (code 100, subcode 2804019, ``error_user_title: "Server-side
  API parameter error"``, ``error_user_msg`` naming ``$['data'][i]['field']``). Success is
  ``{"events_received": n, "messages": [], "fbtrace_id": ...}``. Events with the same ``event_name``
  and ``event_id`` within 48 hours count once; ``test_event_code`` events go to the test tool and are
  not counted. https://developers.facebook.com/docs/marketing-api/conversions-api/using-the-api ,
  https://developers.facebook.com/docs/marketing-api/conversions-api/parameters/server-event ,
  https://developers.facebook.com/docs/marketing-api/conversions-api/parameters/customer-information-parameters ,
  https://developers.facebook.com/docs/marketing-api/conversions-api/deduplicate-pixel-and-server-events
* **Pixel** -- ``GET /{pixel_id}`` reads the pixel (``{"id", "name"}``), as ``validate --connect``
  does. https://developers.facebook.com/docs/marketing-api/reference/ads-pixel

Messages Meta does not publish word for word (the 10,000 limit, session rules, old events, unhashed
values) are the fake's own, in Meta's error shape. The fake never records the access token, only
where it came (``RecordedRequest.token_via``: the ``Authorization`` header, the query or the body).
"""

from __future__ import annotations

import json
import math
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import SplitResult, parse_qsl

from fakes.server import ServedFake

__all__ = [
    "CAPI_MAX_EVENTS",
    "MAX_USERS_PER_REQUEST",
    "CapiEvent",
    "FakeAudience",
    "MetaAdsFake",
    "RecordedRequest",
    "meta_ads_fake",
]

MAX_USERS_PER_REQUEST = 10_000
CAPI_MAX_EVENTS = 1000
CAPI_MAX_AGE_SECONDS = 7 * 24 * 3600
DEDUP_SECONDS = 48 * 3600
LATEST_VERSION = "v25.0"
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
# Apple's IDFA and Google's AAID are UUIDs (8-4-4-4-12 hexadecimal digits).
_ADVERTISING_ID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_VERSION = re.compile(r"^v\d+\.\d+$")
# Single-key schema names and the multi-key name they stand for.
_SINGLE_SCHEMAS = {"EMAIL_SHA256": "EMAIL", "PHONE_SHA256": "PHONE", "MOBILE_ADVERTISER_ID": "MADID"}
_MULTI_KEYS = {"EXTERN_ID", "EMAIL", "PHONE", "GEN", "DOBY", "DOBM", "DOBD", "LN", "FN", "FI", "CT", "ST",
               "ZIP", "MADID", "COUNTRY", "LOOKALIKE_VALUE", "DATA_PROCESSING_OPTIONS"}
# Keys whose values are not SHA-256 digests, and keys that carry no identity.
_UNHASHED_KEYS = {"EXTERN_ID", "MADID", "LOOKALIKE_VALUE", "DATA_PROCESSING_OPTIONS"}
_NON_IDENTITY_KEYS = {"LOOKALIKE_VALUE", "DATA_PROCESSING_OPTIONS"}
_CUSTOMER_FILE_SOURCES = {"USER_PROVIDED_ONLY", "PARTNER_PROVIDED_ONLY", "BOTH_USER_AND_PARTNER_PROVIDED"}
_ACTION_SOURCES = {"email", "website", "app", "phone_call", "chat", "physical_store", "system_generated",
                   "business_messaging", "other"}
_CAPI_HASHED_FIELDS = ("em", "ph", "fn", "ln", "ge", "db", "ct", "st", "zp", "country")


@dataclass
class FakeAudience:
    """A customer-file custom audience and its members (each a dict key -> hash).

    A member is a person: adding a row that shares an identifier with members merges them, and
    removing a row removes every member that shares an identifier with it (an index keeps both
    linear in the rows sent).
    """

    id: str
    ad_account_id: str
    name: str
    description: str | None
    subtype: str
    customer_file_source: str
    _members: dict[int, dict[str, str]] = field(default_factory=dict, repr=False)
    _index: dict[tuple[str, str], int] = field(default_factory=dict, repr=False)
    _next: int = field(default=0, repr=False)

    @property
    def members(self) -> list[dict[str, str]]:
        """The members, oldest first."""
        return [dict(m) for m in self._members.values()]

    @property
    def size(self) -> int:
        """How many members the audience has."""
        return len(self._members)

    def add(self, row: dict[str, str]) -> None:
        """Add a person (merging the members that share one of its identifiers)."""
        merged = {k: v for k, v in row.items() if k not in _NON_IDENTITY_KEYS}
        for number in {self._index[p] for p in merged.items() if p in self._index}:
            merged = {**self._drop(number), **merged}
        self._next += 1
        self._members[self._next] = merged
        self._index.update({pair: self._next for pair in merged.items()})

    def remove(self, row: dict[str, str]) -> None:
        """Remove every member that shares an identifier with ``row``."""
        pairs = [(k, v) for k, v in row.items() if k not in _NON_IDENTITY_KEYS]
        for number in {self._index[p] for p in pairs if p in self._index}:
            self._drop(number)

    def clear(self) -> None:
        """Remove every member."""
        self._members.clear()
        self._index.clear()

    def _drop(self, number: int) -> dict[str, str]:
        member = self._members.pop(number)
        for pair in member.items():
            self._index.pop(pair, None)
        return member


@dataclass(frozen=True)
class CapiEvent:
    """A Conversions API event as received (``counted`` is False for a de-duplicated repeat)."""

    pixel_id: str
    event_name: str
    event_time: int
    event_id: str | None
    action_source: str
    user_data: dict[str, Any]
    custom_data: dict[str, Any]
    received_at: float
    counted: bool


@dataclass(frozen=True)
class RecordedRequest:
    """A request the fake answered (the access token is removed from ``params``; ``token_via`` says
    where it came: ``"header"`` (``Authorization``), ``"query"``, ``"body"`` or None)."""

    method: str
    path: str
    status: int
    params: dict[str, Any]
    at: float  # time.monotonic() when the request arrived
    token_via: str | None = None


@dataclass
class _ReplaceSession:
    session_id: str
    rows: list[dict[str, str]] = field(default_factory=list)
    last_seq: int = 0
    last_activity: float = 0.0
    finished: bool = False


@dataclass
class _Failure:
    path: str
    http_status: int
    error: dict[str, Any]
    times: int


@dataclass
class _Budget:
    start: float = 0.0
    used: int = 0


class GraphError(Exception):
    """A Graph API error answer (raised inside the fake, turned into ``{"error": {...}}``)."""

    def __init__(
        self,
        message: str,
        code: int,
        *,
        subcode: int | None = None,
        user_title: str | None = None,
        user_msg: str | None = None,
        error_type: str = "OAuthException",
        http_status: int = 400,
        is_transient: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.error: dict[str, Any] = {"message": message, "type": error_type, "code": code}
        if subcode is not None:
            self.error["error_subcode"] = subcode
        if is_transient is not None:
            self.error["is_transient"] = is_transient
        if user_title is not None:
            self.error["error_user_title"] = user_title
        if user_msg is not None:
            self.error["error_user_msg"] = user_msg


def _invalid(user_msg: str, *, title: str = "Invalid parameter", subcode: int | None = None) -> GraphError:
    return GraphError("Invalid parameter", 100, subcode=subcode, user_title=title, user_msg=user_msg)



class MetaAdsFake(ServedFake):
    """Meta's Graph API for one ad account and its pixels, in memory (see the module docstring).

    ``access_token`` is the only valid token; ``ad_account_id`` (``act_<digits>``) the ad account;
    ``pixel_ids`` the datasets that accept Conversions API events. ``audience_call_limit`` custom
    audience calls are allowed per ``audience_window`` seconds. ``latency`` seconds are spent on each
    request outside the lock, so concurrent requests overlap and ``max_in_flight`` shows how many a
    client ran at once; ``requests[i].at`` is each arrival time. ``clock`` (epoch seconds) lets a test
    move time (event age, de-duplication window, replace-session expiry, budget windows).
    """

    thread_name = "meta-ads-fake"
    content_type = "application/json; charset=UTF-8"

    def __init__(
        self,
        access_token: str = "meta-access-token",
        *,
        ad_account_id: str = "act_1234",
        pixel_ids: tuple[str, ...] = ("1234567890",),
        supported_versions: tuple[str, ...] = ("v22.0", "v23.0", "v24.0", LATEST_VERSION),
        audience_call_limit: int = 190_000,
        audience_window: float = 3600.0,
        access_tier: str = "standard_access",
        replace_session_timeout: float = 90 * 60,
        invalid_sample_limit: int = 10,
        latency: float = 0.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.latency = latency
        if not ad_account_id.startswith("act_"):
            raise ValueError(f"ad_account_id must look like 'act_<digits>', got {ad_account_id!r}")
        self.access_token = access_token
        self.ad_account_id = ad_account_id
        self.pixel_ids = tuple(pixel_ids)
        self.supported_versions = tuple(supported_versions)
        self.audience_call_limit = audience_call_limit
        self.audience_window = audience_window
        self.access_tier = access_tier
        self.replace_session_timeout = replace_session_timeout
        self.invalid_sample_limit = invalid_sample_limit
        self.clock = clock
        self._lock = threading.RLock()
        self.reset()


    def graph_url(self, version: str = LATEST_VERSION) -> str:
        """``url`` with a version prefix, e.g. ``http://127.0.0.1:PORT/v25.0``."""
        return f"{self.url}/{version}"

    # ---------------------------------------------------------------------------------- test hooks
    def reset(self) -> None:
        """Forget every audience, event, session, recorded request, failure and budget use."""
        with self._lock:
            self.audiences: dict[str, FakeAudience] = {}
            self.capi_events: list[CapiEvent] = []
            self.test_events: list[CapiEvent] = []
            self.requests: list[RecordedRequest] = []
            self._sessions: dict[str, _ReplaceSession] = {}
            self._failures: list[_Failure] = []
            self._in_flight = 0
            self.max_in_flight = 0
            self._budget = _Budget()
            self._next_id = 23850000000000001

    def fail_next(
        self,
        path: str,
        code: int,
        message: str,
        *,
        subcode: int | None = None,
        http_status: int = 400,
        error_type: str = "OAuthException",
        is_transient: bool | None = None,
        times: int = 1,
    ) -> None:
        """Answer the next ``times`` authenticated requests to ``path`` (no version, ``*`` = any) with a
        Graph error, e.g. ``fail_next("*", 17, "User request limit reached", subcode=2446079)``."""
        error = GraphError(message, code, subcode=subcode, error_type=error_type, http_status=http_status,
                           is_transient=is_transient)
        with self._lock:
            self._failures.append(_Failure(path, http_status, error.error, times))

    def create_audience(self, name: str, *, members: list[dict[str, str]] | None = None) -> FakeAudience:
        """Create an audience directly (as if made in Ads Manager) and return it."""
        with self._lock:
            audience = FakeAudience(self._new_id(), self.ad_account_id, name, None, "CUSTOM", "USER_PROVIDED_ONLY")
            for member in members or []:
                audience.add(dict(member))
            self.audiences[audience.id] = audience
            return audience

    # ---------------------------------------------------------------------------------- inspection
    def audience_named(self, name: str) -> FakeAudience | None:
        """The audience with that name, or None."""
        with self._lock:
            return next((a for a in self.audiences.values() if a.name == name), None)

    def members(self, audience_id: str) -> list[dict[str, str]]:
        """The members of an audience, each a dict such as ``{"EMAIL": <hash>, "PHONE": <hash>}``."""
        with self._lock:
            return self.audiences[audience_id].members

    def member_hashes(self, audience_id: str, key: str = "EMAIL") -> set[str]:
        """The ``key`` hashes (``EMAIL``, ``PHONE``, ``EXTERN_ID``, ...) of an audience's members."""
        return {m[key] for m in self.members(audience_id) if key in m}

    def counted_events(self, pixel_id: str | None = None) -> list[CapiEvent]:
        """The Conversions API events Meta counts (repeats within 48 hours left out)."""
        with self._lock:
            return [e for e in self.capi_events if e.counted and (pixel_id is None or e.pixel_id == pixel_id)]

    # ------------------------------------------------------------------------------------ plumbing
    def _answer(self, method: str, url: SplitResult, headers: Any, raw: bytes,
                arrived: float) -> tuple[int, Any, dict[str, str]]:
        return self._handle(method, url.path, url.query, headers, raw, arrived)

    def _handle(self, method: str, path: str, query: str, headers: Any, raw: bytes,
                arrived: float) -> tuple[int, Any, dict[str, str]]:
        extra: dict[str, str] = {}
        params: dict[str, Any] = {}
        token_via = None
        try:
            in_query = "access_token" in dict(parse_qsl(query, keep_blank_values=True))
            params = _params(query, headers, raw)
            token = params.pop("access_token", None)
            token_via = ("query" if in_query else "body") if token is not None else None
            if token is None and _bearer(headers) is not None:
                token, token_via = _bearer(headers), "header"
            segments = [s for s in path.split("/") if s]
            if segments and _VERSION.match(segments[0]):
                version = segments.pop(0)
                if version not in self.supported_versions:
                    raise GraphError(f"(#2635) You are calling a deprecated version of the Ads API. Please "
                                     f"update to the latest version: {LATEST_VERSION}.", 2635)
            if token != self.access_token:
                raise GraphError("Invalid OAuth access token - Cannot parse access token", 190)
            route_path = "/" + "/".join(segments)
            failure = next((f for f in self._failures if f.times > 0 and f.path in ("*", route_path)), None)
            if failure is not None:
                failure.times -= 1
                error = {**failure.error, "fbtrace_id": _trace_id()}
                status, body = failure.http_status, {"error": error}
            else:
                status, body, extra = self._route(method, segments, params)
        except GraphError as exc:
            status, body = exc.http_status, {"error": {**exc.error, "fbtrace_id": _trace_id()}}
            extra = getattr(exc, "headers", extra)
        self.requests.append(RecordedRequest(method, path, status, params, arrived, token_via))
        return status, body, extra

    def _route(self, method: str, segments: list[str], params: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
        if not segments:
            raise GraphError("Unsupported get request.", 100)
        node, edge = segments[0], "/".join(segments[1:])
        if node in self.pixel_ids:
            if (method, edge) == ("GET", ""):
                return 200, {"id": node, "name": f"Pixel {node}"}, {}
            if (method, edge) != ("POST", "events"):
                raise GraphError(f"Unknown path components: /{edge}", 2500)
            return (*self._capi(node, params), {})
        if node.startswith("act_"):
            if node != self.ad_account_id:
                raise _unsupported(method, node)
            if edge != "customaudiences" or method not in ("GET", "POST"):
                raise GraphError(f"Unknown path components: /{edge}", 2500)
            action = self._create_audience if method == "POST" else self._list_audiences
            return self._audience_call(lambda: action(params))
        audience = self.audiences.get(node)
        if audience is None:
            raise _unsupported(method, node)
        actions: dict[tuple[str, str], Callable[[], tuple[int, Any]]] = {
            ("GET", ""): lambda: self._read_audience(audience, params),
            ("DELETE", ""): lambda: self._delete_audience(audience),
            ("POST", "users"): lambda: self._edit_members(audience, params, remove=False),
            ("DELETE", "users"): lambda: self._edit_members(audience, params, remove=True),
            ("POST", "usersreplace"): lambda: self._replace(audience, params),
        }
        if (method, edge) not in actions:
            raise GraphError(f"Unknown path components: /{edge}", 2500)
        return self._audience_call(actions[(method, edge)])

    # ------------------------------------------------------------------------- business use case
    def _audience_call(self, action: Callable[[], tuple[int, Any]]) -> tuple[int, Any, dict[str, str]]:
        now = self.clock()
        budget = self._budget
        if now >= budget.start + self.audience_window:
            budget.start, budget.used = now, 0
        blocked = budget.used >= self.audience_call_limit
        if not blocked:
            budget.used += 1
        pct = min(100, math.ceil(budget.used * 100 / self.audience_call_limit))
        regain = math.ceil((budget.start + self.audience_window - now) / 60) if blocked else 0
        usage = {self.ad_account_id.removeprefix("act_"): [{
            "type": "custom_audience", "call_count": pct, "total_cputime": pct, "total_time": pct,
            "estimated_time_to_regain_access": regain, "ads_api_access_tier": self.access_tier,
        }]}
        headers = {"X-Business-Use-Case-Usage": json.dumps(usage)}
        if blocked:
            error = GraphError(
                "(#80003) There have been too many calls to this ad-account. Wait a bit and try again. For more "
                "info, please refer to https://developers.facebook.com/docs/graph-api/overview/rate-limiting.",
                80003, subcode=2446079, is_transient=True,
            )
            error.headers = headers  # type: ignore[attr-defined]
            raise error
        try:
            status, body = action()
        except GraphError as exc:
            exc.headers = headers  # type: ignore[attr-defined]
            raise
        return status, body, headers

    # ----------------------------------------------------------------------------- audience nodes
    def _create_audience(self, params: dict[str, Any]) -> tuple[int, Any]:
        name = params.get("name")
        if not isinstance(name, str) or not name.strip():
            raise _invalid("The parameter name is required")
        subtype = params.get("subtype", "CUSTOM")
        if subtype != "CUSTOM":
            raise _invalid(f"subtype {subtype!r} is not supported here: only CUSTOM (customer file) audiences")
        source = params.get("customer_file_source")
        if source not in _CUSTOMER_FILE_SOURCES:
            raise _invalid(f"customer_file_source must be one of {sorted(_CUSTOMER_FILE_SOURCES)}, got {source!r}")
        audience = FakeAudience(self._new_id(), self.ad_account_id, name, params.get("description"), subtype, source)
        self.audiences[audience.id] = audience
        return 200, {"id": audience.id}

    def _list_audiences(self, params: dict[str, Any]) -> tuple[int, Any]:
        return 200, {"data": [self._describe(a) for a in self.audiences.values()], "paging": {"cursors": {}}}

    def _read_audience(self, audience: FakeAudience, params: dict[str, Any]) -> tuple[int, Any]:
        return 200, self._describe(audience)

    def _delete_audience(self, audience: FakeAudience) -> tuple[int, Any]:
        del self.audiences[audience.id]
        return 200, {"success": True}

    def _describe(self, audience: FakeAudience) -> dict[str, Any]:
        size = audience.size
        return {
            "id": audience.id, "name": audience.name, "description": audience.description,
            "subtype": audience.subtype, "customer_file_source": audience.customer_file_source,
            "approximate_count_lower_bound": size, "approximate_count_upper_bound": size,
            "operation_status": {"code": 200, "description": "Normal"},
        }

    # ------------------------------------------------------------------------------- membership
    def _edit_members(self, audience: FakeAudience, params: dict[str, Any], *, remove: bool) -> tuple[int, Any]:
        session = self._sessions.get(audience.id)
        if session is not None and not session.finished and not self._expired(session):
            raise _invalid("A replace session is in progress on this audience: users cannot be added or removed "
                           "until it ends")
        rows, received, invalid, samples = self._parse_payload(params)
        for row in rows:
            if remove:
                audience.remove(row)
            else:
                audience.add(row)
        session_id = str((params.get("session") or {}).get("session_id", _numeric_id()))
        return 200, {"audience_id": audience.id, "session_id": session_id, "num_received": received,
                     "num_invalid_entries": invalid, "invalid_entry_samples": samples}

    def _replace(self, audience: FakeAudience, params: dict[str, Any]) -> tuple[int, Any]:
        info = params.get("session")
        if not isinstance(info, dict):
            raise _invalid("The parameter session is required")
        session_id, seq, last = info.get("session_id"), info.get("batch_seq"), info.get("last_batch_flag", False)
        if not isinstance(session_id, (int, str)) or not str(session_id).isdigit():
            raise _invalid("session.session_id must be a number")
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
            raise _invalid("session.batch_seq must be an integer starting at 1")
        if not isinstance(last, bool):
            raise _invalid("session.last_batch_flag must be a boolean")
        now = self.clock()
        session = self._sessions.get(audience.id)
        if session is not None and session.session_id == str(session_id):
            if session.finished:
                raise _invalid(f"Replace session {session_id} has already finished")
            if self._expired(session):
                raise _invalid(f"Replace session {session_id} expired: no batch for "
                               f"{int(self.replace_session_timeout)} seconds")
        else:
            if session is not None and not session.finished and not self._expired(session):
                raise _invalid(f"Replace session {session.session_id} is still in progress on this audience")
            if seq != 1:
                raise _invalid(f"A new replace session must start with batch_seq 1, got {seq}")
            session = self._sessions[audience.id] = _ReplaceSession(str(session_id))
        rows, received, invalid, samples = self._parse_payload(params)
        session.rows.extend(rows)
        session.last_seq = max(session.last_seq, seq)
        session.last_activity = now
        if last:
            session.finished = True
            audience.clear()
            for row in session.rows:
                audience.add(row)
        return 200, {"audience_id": audience.id, "session_id": session.session_id, "num_received": received,
                     "num_invalid_entries": invalid, "invalid_entry_samples": samples}

    def _expired(self, session: _ReplaceSession) -> bool:
        return self.clock() - session.last_activity > self.replace_session_timeout

    def _parse_payload(self, params: dict[str, Any]) -> tuple[list[dict[str, str]], int, int, dict[str, str]]:
        payload = params.get("payload")
        if not isinstance(payload, dict):
            raise _invalid("The parameter payload is required")
        schema, data = payload.get("schema"), payload.get("data")
        if isinstance(schema, str):
            if schema not in _SINGLE_SCHEMAS:
                raise _invalid(f"schema {schema!r} is not supported: use one of {sorted(_SINGLE_SCHEMAS)} or a "
                               "list of keys")
            keys = [_SINGLE_SCHEMAS[schema]]
        elif isinstance(schema, list) and schema and all(k in _MULTI_KEYS for k in schema):
            keys = list(schema)
        else:
            raise _invalid(f"schema {schema!r} is not supported: keys must be among {sorted(_MULTI_KEYS)}")
        if not isinstance(data, list) or not data:
            raise _invalid("payload.data must be a non-empty array")
        if len(data) > MAX_USERS_PER_REQUEST:
            raise _invalid(f"payload.data has {len(data)} users; at most {MAX_USERS_PER_REQUEST} are accepted per "
                           "request", title="Too Many Users")
        rows: list[dict[str, str]] = []
        samples: dict[str, str] = {}
        invalid = 0
        for entry in data:
            values = entry if isinstance(entry, list) else [entry]
            row, bad = _row(keys, values)
            if row is None:
                invalid += 1
                if bad is not None and len(samples) < self.invalid_sample_limit:
                    samples[bad[0]] = bad[1]
            else:
                rows.append(row)
        return rows, len(data), invalid, samples

    def _new_id(self) -> str:
        self._next_id += 1
        return str(self._next_id)

    # ---------------------------------------------------------------------------- Conversions API
    def _capi(self, pixel_id: str, params: dict[str, Any]) -> tuple[int, Any]:
        data = params.get("data")
        if not isinstance(data, list) or not data:
            raise _capi_error("The parameter $['data'] is required.")
        if len(data) > CAPI_MAX_EVENTS:
            raise _capi_error(f"The parameter $['data'] has {len(data)} events; at most {CAPI_MAX_EVENTS} are "
                              "accepted per request.")
        now = self.clock()
        for index, event in enumerate(data):
            _check_capi_event(index, event, now)
        test_code = params.get("test_event_code")
        seen = {(e.pixel_id, e.event_name, e.event_id) for e in self.capi_events
                if e.counted and e.event_id is not None and now - e.received_at < DEDUP_SECONDS}
        for event in data:
            event_id = None if event.get("event_id") is None else str(event["event_id"])
            key = (pixel_id, event["event_name"], event_id)
            counted = event_id is None or key not in seen
            stored = CapiEvent(pixel_id, event["event_name"], int(event["event_time"]), event_id,
                               event["action_source"], dict(event["user_data"]), dict(event.get("custom_data") or {}),
                               now, counted and test_code is None)
            if test_code is not None:
                self.test_events.append(stored)
                continue
            self.capi_events.append(stored)
            seen.add(key)
        return 200, {"events_received": len(data), "messages": [], "fbtrace_id": _trace_id()}


def _row(keys: list[str], values: list[Any]) -> tuple[dict[str, str] | None, tuple[str, str] | None]:
    """One payload row as key -> value, or (None, (sample, key)) when Meta would call it invalid."""
    if len(values) != len(keys):
        return None, (json.dumps(values)[:80], "SCHEMA_MISMATCH")
    row: dict[str, str] = {}
    for key, value in zip(keys, values):
        if key in _NON_IDENTITY_KEYS:
            row[key] = value
            continue
        if value in ("", None):
            continue
        if not isinstance(value, str):
            return None, (str(value)[:80], key)
        if key not in _UNHASHED_KEYS and not _SHA256.match(value):
            return None, (value, key)
        if key == "MADID" and not _ADVERTISING_ID.match(value):
            return None, (value, key)
        row[key] = value.lower() if key not in _UNHASHED_KEYS else value
    if not any(k not in _NON_IDENTITY_KEYS for k in row):
        return None, ("", "EMPTY_ROW")
    return row, None


def _capi_error(user_msg: str) -> GraphError:
    return GraphError("Invalid parameter", 100, subcode=2804019, user_title="Server-side API parameter error",
                      user_msg=user_msg, is_transient=False)


def _check_capi_event(index: int, event: Any, now: float) -> None:
    at = f"$['data'][{index}]"
    if not isinstance(event, dict):
        raise _capi_error(f"The parameter {at} must be an object.")
    for name in ("event_name", "event_time", "action_source", "user_data"):
        if event.get(name) in (None, ""):
            raise _capi_error(f"The parameter {at}['{name}'] is required.")
    event_time = event["event_time"]
    if not isinstance(event_time, int) or isinstance(event_time, bool):
        raise _capi_error(f"The parameter {at}['event_time'] must be a Unix timestamp in seconds.")
    if now - event_time > CAPI_MAX_AGE_SECONDS:
        raise _capi_error(f"The parameter {at}['event_time'] is more than 7 days in the past; no event of this "
                          "request was processed.")
    if event["action_source"] not in _ACTION_SOURCES:
        raise _capi_error(f"The parameter {at}['action_source'] must be one of {sorted(_ACTION_SOURCES)}.")
    user_data = event["user_data"]
    if not isinstance(user_data, dict):
        raise _capi_error(f"The parameter {at}['user_data'] must be an object.")
    if event["action_source"] == "website":
        if not event.get("event_source_url"):
            raise _capi_error(f"The parameter {at}['event_source_url'] is required for website events.")
        if not user_data.get("client_user_agent"):
            raise _capi_error(f"The parameter {at}['user_data']['client_user_agent'] is required for website "
                              "events.")
    for name in _CAPI_HASHED_FIELDS:
        value = user_data.get(name)
        values = [] if value is None else value if isinstance(value, list) else [value]
        for item in values:
            if not isinstance(item, str) or not _SHA256.match(item):
                raise _capi_error(f"The parameter {at}['user_data']['{name}'] must be hashed with SHA-256 "
                                  "(64 hexadecimal characters).")


def _unsupported(method: str, node: str) -> GraphError:
    return GraphError(
        f"Unsupported {method.lower()} request. Object with ID '{node}' does not exist, cannot be loaded due to "
        "missing permissions, or does not support this operation. Please read the Graph API documentation at "
        "https://developers.facebook.com/docs/graph-api", 100, subcode=33, error_type="GraphMethodException",
    )


def _params(query: str, headers: Any, raw: bytes) -> dict[str, Any]:
    params: dict[str, Any] = dict(parse_qsl(query, keep_blank_values=True))
    content_type = (headers.get("Content-Type") or "").split(";")[0].strip().lower()
    if raw:
        if content_type == "application/json":
            try:
                body = json.loads(raw)
            except ValueError as exc:
                raise GraphError(f"(#100) The request body is not valid JSON: {exc}", 100) from exc
            if not isinstance(body, dict):
                raise GraphError("(#100) The request body must be a JSON object", 100)
            params.update(body)
        else:
            params.update(parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True))
    # Form and query values of object parameters arrive as JSON strings.
    for name in ("payload", "session", "data"):
        value = params.get(name)
        if isinstance(value, str) and value[:1] in "[{":
            try:
                params[name] = json.loads(value)
            except ValueError as exc:
                raise GraphError(f"(#100) param {name} must be JSON: {exc}", 100) from exc
    return params


def _bearer(headers: Any) -> str | None:
    scheme, _, token = (headers.get("Authorization") or "").partition(" ")
    return token.strip() if scheme.lower() in ("bearer", "oauth") and token.strip() else None


def _trace_id() -> str:
    return secrets.token_urlsafe(8)


def _numeric_id() -> str:
    return str(secrets.randbelow(9 * 10**15) + 10**15)


@contextmanager
def meta_ads_fake(**options: Any) -> Iterator[MetaAdsFake]:
    """Run a :class:`MetaAdsFake` for the block (``options`` go to its constructor)."""
    fake = MetaAdsFake(**options)
    with fake:
        yield fake
