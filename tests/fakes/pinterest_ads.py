"""A local fake of Pinterest's API v5 (customer lists and the API for Conversions), built from its docs.

It serves on ``127.0.0.1`` (a free port the OS picks), keeps everything in memory, and lets a test
assert what Pinterest would hold: each customer list's records (their SHA-256 digests) and the
conversion events counted after de-duplication.

Contract (and where each part comes from; Pinterest's v5 reference at
https://developers.pinterest.com/docs/api/v5/ and its OpenAPI description):

* **Auth** -- ``Authorization: Bearer <token>``; another or no token is HTTP 401
  ``{"code": 2, "message": "Authentication failed."}``. Errors are ``{"code": <int>, "message":
  <text>}`` (the reference's ``Error`` schema); the codes are the fake's own choice.
* **Ad account** -- ``GET /v5/ad_accounts/{id}`` answers ``{"id", "name", "owner"...}``; another
  account is 404.
* **Customer lists** -- ``GET /v5/ad_accounts/{id}/customer_lists`` (``page_size``, ``bookmark``)
  answers ``{"items": [...], "bookmark": <next or null>}``; ``POST`` on it creates one from
  ``name``, ``list_type`` (``EMAIL``, ``IDFA``, ``MAID``...) and ``records``; ``GET`` /
  ``PATCH /v5/ad_accounts/{id}/customer_lists/{list_id}`` read one / add or remove records
  (``operation_type`` ``ADD`` or ``REMOVE``). ``records`` is one text of comma-separated values
  (empty items ignored). E-mails may be lower-cased plain text or hashes; MAIDs and IDFAs must be
  hashed (the reference: SHA1, SHA256 or MD5). The fake is stricter than Pinterest on one point:
  any value that is not a SHA-256 hex digest is refused (400, nothing applied), so a test sees
  a raw identifier at once. More than ``max_records`` (10,000: assumed, Pinterest gives no
  maximum) records is 400 and nothing is applied. A list answer is the ``CustomerList`` object
  (``id``, ``name``, ``num_uploaded_user_records``, ``num_removed_user_records``, ``status``,
  ``type: "customerlist"``).
* **Conversions** -- ``POST /v5/ad_accounts/{id}/events`` (``?test=true``: checked, not recorded)
  with ``data``: at most 1,000 events (more is 400, nothing recorded). Each event needs
  ``event_name``, ``action_source`` (``app_android``, ``app_ios``, ``web``, ``offline``),
  ``event_time`` (Unix seconds), ``event_id`` and ``user_data`` whose ``em``, ``ph`` and
  ``hashed_maids`` are lists of SHA-256 digests. The answer is ``{"num_events_received",
  "num_events_processed", "events": [{"status": "processed" | "failed", "error_message",
  "warning_message"}]}`` in the order sent: an invalid event fails alone. Events with the same
  ``event_name`` and ``event_id`` count once.
* **OAuth** -- ``POST /v5/oauth/token`` with a form body ``grant_type=refresh_token`` and
  ``refresh_token``, the app's ``client_id:client_secret`` in an HTTP Basic header (as Pinterest's
  authentication guide documents); answers ``{"access_token", "token_type": "bearer",
  "expires_in", "scope"}``. A wrong client is 401, a wrong refresh token 400 ``invalid_grant``
  (error bodies in OAuth's ``{"error", "error_description"}`` form: the fake's choice). Issued
  tokens are valid until ``expires_in`` (``token_lifetime`` seconds) or :meth:`expire_tokens`.
  https://developers.pinterest.com/docs/getting-started/authentication-and-scopes/
* **Rate limits** -- ``rate_limit`` calls per ``window`` seconds (all endpoints), then 429
  ``{"code": 8, "message": "You have exceeded your rate limit. Try again later."}`` with
  ``X-RateLimit-Remaining: 0`` and ``X-RateLimit-Reset`` (seconds); :meth:`PinterestAdsFake.fail_next`
  injects any status and error.

The fake never records the access token, only whether the request carried the right one.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import SplitResult, parse_qsl

from fakes.server import ServedFake

__all__ = ["PinterestAdsFake", "RecordedRequest"]

MAX_EVENTS = 1000
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_ACTION_SOURCES = {"app_android", "app_ios", "web", "offline"}
_LIST_TYPES = {"EMAIL", "IDFA", "MAID", "LR_ID", "DLX_ID", "HASHED_PINNER_ID"}


@dataclass
class RecordedRequest:
    """One request as received (the token itself is never kept)."""

    method: str
    path: str
    query: dict[str, str]
    body: Any
    authorized: bool
    raw: bytes


@dataclass
class FakeList:
    """A customer list and its records (SHA-256 digests)."""

    id: str
    name: str
    list_type: str
    records: set[str] = field(default_factory=set)
    uploaded: int = 0
    removed: int = 0

    def answer(self, ad_account_id: str) -> dict[str, Any]:
        return {"id": self.id, "ad_account_id": ad_account_id, "name": self.name, "type": "customerlist",
                "status": "PROCESSING", "num_uploaded_user_records": self.uploaded,
                "num_removed_user_records": self.removed, "num_batches": 1}


@dataclass
class FakeEvent:
    """A conversion event as received; ``counted`` is False for a repeat of an event_id."""

    event: dict[str, Any]
    counted: bool


class _Error(Exception):
    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class PinterestAdsFake(ServedFake):
    """Pinterest API v5 for one ad account (see the module docstring)."""

    thread_name = "pinterest-ads-fake"

    def __init__(self, access_token: str | None, *, ad_account_id: str = "549755885175", max_records: int = 10_000,
                 rate_limit: int = 1_000_000, window: float = 60.0, latency: float = 0.0,
                 client: tuple[str, str, str] | None = None, token_lifetime: float = 30 * 24 * 3600) -> None:
        self.access_token = access_token
        self.client = client  # (client_id, client_secret, refresh_token) of the OAuth app
        self.token_lifetime = token_lifetime
        self.ad_account_id = ad_account_id
        self.max_records = max_records
        self.rate_limit = rate_limit
        self.window = window
        self.latency = latency
        self._lock = threading.RLock()
        self.reset()

    def reset(self) -> None:
        """Forget every list, event, request and injected failure."""
        with self._lock:
            self.lists: dict[str, FakeList] = {}
            self.events: list[FakeEvent] = []
            self.test_events: list[dict[str, Any]] = []
            self.requests: list[RecordedRequest] = []
            self._failures: list[list[Any]] = []
            self._calls: list[float] = []
            self._in_flight = 0
            self.max_in_flight = 0
            self._next_id = 2542620905473
            self._issued: dict[str, float] = {}  # OAuth access token -> expiry (time.monotonic)
            self.token_requests: list[RecordedRequest] = []
            self.refused_auth = 0

    # ------------------------------------------------------------------------------------ test hooks
    def fail_next(self, path_suffix: str, status: int, code: int, message: str, *, times: int = 1,
                  headers: dict[str, str] | None = None) -> None:
        """Answer the next ``times`` authorized requests whose path ends with ``path_suffix`` (``*``:
        any) with ``status`` and ``{"code", "message"}``."""
        with self._lock:
            self._failures.append([path_suffix, status, code, message, times, headers or {}])

    def expire_tokens(self) -> None:
        """Every OAuth access token issued so far expires now."""
        with self._lock:
            self._issued = {}

    def create_list(self, name: str, list_type: str = "EMAIL", records: set[str] | None = None) -> FakeList:
        """A list made directly (as in Ads Manager)."""
        with self._lock:
            made = FakeList(self._new_id(), name, list_type, set(records or ()))
            self.lists[made.id] = made
            return made

    def list_named(self, name: str) -> FakeList | None:
        """The customer list with that name, or None."""
        with self._lock:
            return next((x for x in self.lists.values() if x.name == name), None)

    def counted_events(self) -> list[dict[str, Any]]:
        """The events Pinterest counts (repeats of an event_id left out)."""
        with self._lock:
            return [e.event for e in self.events if e.counted]

    def _new_id(self) -> str:
        self._next_id += 1
        return str(self._next_id)

    # -------------------------------------------------------------------------------------- serving
    def _answer(self, method: str, url: SplitResult, headers: Any, raw: bytes,
                arrived: float) -> tuple[int, Any, dict[str, str]]:
        query = dict(parse_qsl(url.query))
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        if url.path == "/v5/oauth/token" and method == "POST":
            return self._token(headers, raw)
        bearer = (headers.get("Authorization") or "").removeprefix("Bearer ")
        now = time.monotonic()
        authorized = bool(bearer) and (bearer == self.access_token or self._issued.get(bearer, 0.0) > now)
        self.requests.append(RecordedRequest(method, url.path, query, body, authorized, raw))
        try:
            if not authorized:
                self.refused_auth += 1
                raise _Error(401, 2, "Authentication failed.")
            now = time.monotonic()
            self._calls = [t for t in self._calls if now - t < self.window]
            if len(self._calls) >= self.rate_limit:
                reset = max(0.0, self.window - (now - self._calls[0]))
                return 429, {"code": 8, "message": "You have exceeded your rate limit. Try again later."}, {
                    "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": f"{reset:.3f}"}
            self._calls.append(now)
            for failure in self._failures:
                if failure[4] > 0 and (failure[0] == "*" or url.path.endswith(failure[0])):
                    failure[4] -= 1
                    return failure[1], {"code": failure[2], "message": failure[3]}, dict(failure[5])
            return self._route(method, [s for s in url.path.split("/") if s], query, body)
        except _Error as exc:
            return exc.status, {"code": exc.code, "message": exc.message}, {}

    def _token(self, headers: Any, raw: bytes) -> tuple[int, Any, dict[str, str]]:
        form = dict(parse_qsl(raw.decode()))
        self.token_requests.append(RecordedRequest("POST", "/v5/oauth/token", {}, None, False, raw))
        if self.client is None:
            return 404, {"code": 404, "message": "Not found."}, {}
        client_id, secret, refresh = self.client
        expected = "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()
        if headers.get("Authorization") != expected:
            return 401, {"error": "invalid_client", "error_description": "Client authentication failed."}, {}
        if form.get("grant_type") != "refresh_token" or form.get("refresh_token") != refresh:
            return 400, {"error": "invalid_grant", "error_description": "Invalid refresh token."}, {}
        token = f"pina_{secrets.token_hex(16)}"
        self._issued[token] = time.monotonic() + self.token_lifetime
        return 200, {"access_token": token, "token_type": "bearer", "expires_in": self.token_lifetime,
                     "scope": "ads:read,ads:write"}, {}

    def _route(self, method: str, parts: list[str], query: dict[str, str],
               body: Any) -> tuple[int, Any, dict[str, str]]:
        if parts[:2] != ["v5", "ad_accounts"] or len(parts) < 3:
            raise _Error(404, 404, "Not found.")
        if parts[2] != self.ad_account_id:
            raise _Error(404, 2920, f"Ad account {parts[2]} not found.")
        rest = parts[3:]
        if not rest and method == "GET":
            return 200, {"id": self.ad_account_id, "name": "Fake ads", "currency": "EUR"}, {}
        if rest == ["customer_lists"] and method == "GET":
            items = sorted(self.lists.values(), key=lambda x: x.id)
            size = int(query.get("page_size") or 25)
            start = int(query.get("bookmark") or 0)
            page = items[start:start + size]
            more = start + size < len(items)
            return 200, {"items": [x.answer(self.ad_account_id) for x in page],
                         "bookmark": str(start + size) if more else None}, {}
        if rest == ["customer_lists"] and method == "POST":
            body = body if isinstance(body, dict) else {}
            if not body.get("name") or body.get("list_type") not in _LIST_TYPES:
                raise _Error(400, 1, "Invalid parameters: name and list_type are required.")
            values = self._records(body)
            made = self.create_list(str(body["name"]), str(body["list_type"]), values)
            made.uploaded = len(values)
            return 200, made.answer(self.ad_account_id), {}
        if len(rest) == 2 and rest[0] == "customer_lists":
            found = self.lists.get(rest[1])
            if found is None:
                raise _Error(404, 2901, f"Customer list {rest[1]} not found.")
            if method == "GET":
                return 200, found.answer(self.ad_account_id), {}
            if method == "PATCH":
                body = body if isinstance(body, dict) else {}
                operation = body.get("operation_type")
                if operation not in ("ADD", "REMOVE"):
                    raise _Error(400, 1, f"Invalid operation_type {operation!r}; allowed: ADD, REMOVE.")
                values = self._records(body)
                if operation == "ADD":
                    found.records |= values
                    found.uploaded += len(values)
                else:
                    found.records -= values
                    found.removed += len(values)
                return 200, found.answer(self.ad_account_id), {}
        if rest == ["events"] and method == "POST":
            return 200, self._events(body, query.get("test") == "true"), {}
        raise _Error(404, 404, "Not found.")

    def _records(self, body: dict[str, Any]) -> set[str]:
        text = body.get("records")
        if not isinstance(text, str):
            raise _Error(400, 1, "Invalid parameters: records must be a comma-separated string.")
        values = [v for v in text.split(",") if v]
        if len(values) > self.max_records:
            raise _Error(400, 1, f"Too many records: {len(values)}; at most {self.max_records} per request.")
        if not values or any(not _SHA256.match(v) for v in values):
            raise _Error(400, 1, "Invalid records: expected SHA-256 hashed values.")
        return set(values)

    def _events(self, body: Any, test: bool) -> dict[str, Any]:
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list) or not data:
            raise _Error(400, 1, "Invalid parameters: data is required.")
        if len(data) > MAX_EVENTS:
            raise _Error(400, 1, f"Too many events: {len(data)}; at most {MAX_EVENTS} per request.")
        answers = []
        for event in data:
            problem = _event_problem(event)
            if problem:
                answers.append({"status": "failed", "error_message": problem, "warning_message": None})
                continue
            answers.append({"status": "processed", "error_message": None, "warning_message": None})
            if test:
                self.test_events.append(event)
                continue
            seen = any(e.event["event_id"] == event["event_id"] and e.event["event_name"] == event["event_name"]
                       for e in self.events)
            self.events.append(FakeEvent(event, not seen))
        processed = sum(1 for a in answers if a["status"] == "processed")
        return {"num_events_received": len(data), "num_events_processed": processed, "events": answers}


def _event_problem(event: Any) -> str | None:
    if not isinstance(event, dict):
        return "Event must be an object."
    for name in ("event_name", "action_source", "event_time", "event_id", "user_data"):
        if event.get(name) in (None, ""):
            return f"Required field '{name}' is missing."
    if event["action_source"] not in _ACTION_SOURCES:
        return f"Invalid action_source '{event['action_source']}'."
    if not isinstance(event["event_time"], int):
        return "event_time must be Unix seconds."
    user = event["user_data"]
    for key in ("em", "ph", "hashed_maids"):
        if key in user and (not isinstance(user[key], list) or any(not _SHA256.match(str(v)) for v in user[key])):
            return f"user_data.{key} must be a list of SHA-256 hashes."
    return None
