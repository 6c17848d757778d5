"""A local fake of the X Ads API v12 custom audiences, built from X's documentation (pages cited in
``dinmo_dagster/platforms/x_ads.py``).

Serves on ``127.0.0.1`` (a free port), keeps everything in memory, and lets a test assert what X
would hold: each custom audience's members (digests per identifier key) and every request it got.

* **Auth** -- OAuth 1.0a, HMAC-SHA1, checked here with the standard library, independently of the
  adapter's library, as X's "Creating a signature" page describes: the base string is the method, the
  URL (scheme, host, path) and the sorted, percent-encoded query and ``oauth_*`` parameters (not a
  JSON body); the key is ``consumer_secret&token_secret``. A missing header, an unknown consumer key
  or token, another method than HMAC-SHA1, a timestamp more than 5 minutes off, a nonce already used
  or a wrong signature: HTTP 401 ``UNAUTHORIZED_ACCESS``.
* **Errors** -- ``{"errors": [{"code", "message"}], "request": {"params": {...}}}``.
* **Custom audiences** -- ``GET /12/accounts/{account}/custom_audiences`` (``q`` case-insensitive
  prefix, ``count`` at most 1000, ``cursor`` / ``next_cursor``), ``POST`` (``name`` in the query,
  unique: a used one is refused), ``GET .../custom_audiences/{id}`` (404 ``NOT_FOUND``),
  ``GET /12/accounts/{account}`` (another account: 403 ``ACCOUNT_NOT_FOUND``).
* **Users** -- ``POST .../custom_audiences/{id}/users``, ``Content-Type: application/json``, a
  JSON array of ``{"operation_type": "Update" | "Delete", "params": {"users": [...]}}``. More than
  2,500 operations, or more than 2,500 users in all (the earlier page's reading), or a body over
  5,000,000 bytes: HTTP 400 ``INVALID_PARAMETER`` and nothing applied. A user with an unknown key, a
  value that is not a lower-case SHA-256 digest (``partner_user_id`` excepted), or a digest the test
  made X refuse (:meth:`XAdsFake.refuse`): the operation's entry in ``operation_errors`` (HTTP 400,
  nothing applied: batches "fail or succeed together"). Success: ``data: {success_count,
  total_count}`` (users).
* **Rate limits** -- every answer carries ``x-rate-limit-limit`` / ``-remaining`` / ``-reset`` (a
  Unix time) for a window of ``limit`` requests per ``window`` seconds (default 1,500 per 60 s); past
  it, or while :meth:`XAdsFake.throttle` says so, HTTP 429 ``TOO_MANY_REQUESTS``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import math
import re
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from typing_extensions import Self

from dinmo_dagster.fakes.server import FakeRequest, FakeResponse, FakeServer

KEYS = ("email", "phone_number", "handle", "twitter_id", "device_id", "partner_user_id")
MAX_OPERATIONS = 2_500
MAX_BODY_BYTES = 5_000_000
_SHA256 = re.compile(r"[0-9a-f]{64}")
UNAUTHORIZED = {"code": "UNAUTHORIZED_ACCESS", "message": "This request is not properly authenticated"}


def enc(text: str) -> str:
    """RFC 3986 percent-encoding (unreserved characters kept), as X's signature page asks."""
    return urllib.parse.quote(text, safe="-._~")


def signature(
    method: str, url: str, params: list[tuple[str, str]], consumer_secret: str, token_secret: str
) -> str:
    """The HMAC-SHA1 signature of a request (base64)."""
    pairs = sorted((enc(k), enc(v)) for k, v in params)
    base = "&".join([method.upper(), enc(url), enc("&".join(f"{k}={v}" for k, v in pairs))])
    key = f"{enc(consumer_secret)}&{enc(token_secret)}"
    return base64.b64encode(hmac.new(key.encode(), base.encode(), hashlib.sha1).digest()).decode()


def errors(status: int, code: str, message: str, **extra: Any) -> FakeResponse:
    return FakeResponse(
        status, {"errors": [{"code": code, "message": message, **extra}], "request": {"params": {}}}
    )


@dataclass
class Audience:
    """One custom audience."""

    id: str
    name: str
    description: str | None = None
    members: dict[str, set[str]] = field(default_factory=lambda: {k: set() for k in KEYS})


class XAdsFake:
    """X's custom audience API, in memory (a context manager)."""

    def __init__(
        self,
        *,
        consumer_key: str,
        consumer_secret: str,
        access_token: str,
        access_token_secret: str,
        account_id: str,
        limit: int = 1_500,
        window: float = 60.0,
        latency: float = 0.0,
    ) -> None:
        self.consumer_key, self.consumer_secret = consumer_key, consumer_secret
        self.access_token, self.access_token_secret = access_token, access_token_secret
        self.account_id = account_id
        self.limit, self.window, self.latency = limit, window, latency
        self.page_size = 1000
        self.audiences: dict[str, Audience] = {}
        self.answers: list[tuple[str, str, int]] = []  # (method, path, status) of every request
        self.users_received = 0
        self._window_end = 0
        self._window_count = 0
        self._throttled = 0
        self._refused: dict[str, str] = {}
        self._failures: list[tuple[str, FakeResponse]] = []
        self._nonces: set[str] = set()
        self._ids = (f"{n:x}z" for n in itertools.count(0x1A2B3))
        self._lock = threading.Lock()
        self._server = FakeServer(self._app)
        self.url = self._server.url

    def __enter__(self) -> Self:
        self._server.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.__exit__(*exc)

    @property
    def requests(self) -> list[FakeRequest]:
        """Every request received."""
        return list(self._server.requests)

    # -- arranging -------------------------------------------------------------------------------------

    def create_audience(self, name: str, **members: set[str]) -> Audience:
        """A custom audience already in the ad account, with members per key."""
        audience = Audience(next(self._ids), name)
        for key, digests in members.items():
            audience.members[key] |= digests
        self.audiences[audience.id] = audience
        return audience

    def audience_named(self, name: str) -> Audience | None:
        return next((a for a in self.audiences.values() if a.name == name), None)

    def throttle(self, count: int) -> None:
        """Answer the next ``count`` requests with 429."""
        self._throttled += count

    def refuse(self, digest: str, message: str) -> None:
        """X refuses any user holding ``digest`` (an item-level error), until :meth:`accept` is called."""
        self._refused[digest] = message

    def accept(self, digest: str) -> None:
        self._refused.pop(digest, None)

    def fail_next(self, path_suffix: str, response: FakeResponse) -> None:
        """Answer the next request whose path ends with ``path_suffix`` with ``response``."""
        self._failures.append((path_suffix, response))

    # -- serving ---------------------------------------------------------------------------------------

    def _app(self, request: FakeRequest) -> FakeResponse:
        if self.latency:
            time.sleep(self.latency)
        with self._lock:
            response = self._limited(request)
            self.answers.append((request.method, request.path, response.status))
        return response

    def _limited(self, request: FakeRequest) -> FakeResponse:
        refusal = self._authenticate(request)
        if refusal is not None:
            return refusal
        now = time.time()
        if now >= self._window_end:  # windows end on a whole second: x-rate-limit-reset is a Unix time
            self._window_end, self._window_count = math.ceil(now + self.window), 0
        self._window_count += 1
        reset = str(self._window_end)
        if self._throttled or self._window_count > self.limit:
            response = errors(429, "TOO_MANY_REQUESTS", "Rate limit exceeded")
            if self._throttled:
                self._throttled -= 1
                reset = str(int(now))  # the storms tests arrange clear at once: tests do not wait a minute
            remaining = 0
        else:
            response = self._api(request)
            remaining = max(0, self.limit - self._window_count)
        response.headers.update(
            {
                "x-rate-limit-limit": str(self.limit),
                "x-rate-limit-remaining": str(remaining),
                "x-rate-limit-reset": reset,
            }
        )
        return response

    def _authenticate(self, request: FakeRequest) -> FakeResponse | None:
        header = request.headers.get("authorization", "")
        if not header.startswith("OAuth "):
            return errors(401, **UNAUTHORIZED)
        oauth = {k: urllib.parse.unquote(v.strip('"'))
                 for k, _, v in (part.strip().partition("=") for part in header[6:].split(","))}  # fmt: skip
        if (
            oauth.get("oauth_consumer_key") != self.consumer_key
            or oauth.get("oauth_token") != self.access_token
            or oauth.get("oauth_signature_method") != "HMAC-SHA1"
        ):
            return errors(401, **UNAUTHORIZED)
        stamp = oauth.get("oauth_timestamp", "")
        nonce = oauth.get("oauth_nonce", "")
        if not stamp.isdigit() or abs(time.time() - int(stamp)) > 300 or not nonce or nonce in self._nonces:
            return errors(401, **UNAUTHORIZED)
        params = list(request.query.items())
        params += [(k, v) for k, v in oauth.items() if k.startswith("oauth_") and k != "oauth_signature"]
        url = f"http://{request.headers.get('host', '')}{request.path}"
        expected = signature(request.method, url, params, self.consumer_secret, self.access_token_secret)
        if not hmac.compare_digest(expected, oauth.get("oauth_signature", "")):
            return errors(401, **UNAUTHORIZED)
        self._nonces.add(nonce)
        return None

    def _api(self, request: FakeRequest) -> FakeResponse:
        for i, (suffix, response) in enumerate(self._failures):
            if request.path.endswith(suffix):
                del self._failures[i]
                return FakeResponse(response.status, response.body, dict(response.headers))
        parts = request.path.strip("/").split("/")
        if parts[:2] != ["12", "accounts"] or len(parts) < 3:
            return errors(404, "ROUTE_NOT_FOUND", f"No route {request.method} {request.path}")
        if parts[2] != self.account_id:
            return errors(403, "ACCOUNT_NOT_FOUND", f"Account {parts[2]} was not found")
        rest, method = parts[3:], request.method
        if not rest and method == "GET":
            return FakeResponse(
                200, {"data": {"id": self.account_id, "name": "Fake ads account"}, "request": {}}
            )
        if rest == ["custom_audiences"] and method == "GET":
            return self._list(request)
        if rest == ["custom_audiences"] and method == "POST":
            return self._create(request)
        if len(rest) == 2 and rest[0] == "custom_audiences" and method == "GET":
            audience = self.audiences.get(rest[1])
            if audience is None:
                return errors(404, "NOT_FOUND", f"Custom audience {rest[1]} was not found")
            return FakeResponse(200, {"data": self._entity(audience), "request": {}})
        if len(rest) == 3 and rest[0] == "custom_audiences" and rest[2] == "users" and method == "POST":
            return self._users(rest[1], request)
        return errors(404, "ROUTE_NOT_FOUND", f"No route {request.method} {request.path}")

    @staticmethod
    def _entity(audience: Audience) -> dict[str, Any]:
        return {"id": audience.id, "name": audience.name, "description": audience.description,
                "audience_type": "CRM", "deleted": False, "targetable": False}  # fmt: skip

    def _list(self, request: FakeRequest) -> FakeResponse:
        count = int(request.query.get("count") or 200)
        if not 1 <= count <= 1000:
            return errors(400, "INVALID_PARAMETER", f"Expected count between 1 and 1000, got {count}")
        q = request.query.get("q", "").lower()
        matching = [a for a in self.audiences.values() if a.name.lower().startswith(q)]
        start = int(request.query.get("cursor") or 0)
        size = min(count, self.page_size)
        chunk = matching[start : start + size]
        more = start + size < len(matching)
        return FakeResponse(200, {"data": [self._entity(a) for a in chunk],
                                  "next_cursor": str(start + size) if more else None, "request": {}})  # fmt: skip

    def _create(self, request: FakeRequest) -> FakeResponse:
        name = request.query.get("name")
        if not name:
            return errors(400, "MISSING_PARAMETER", '"name" is missing', parameter="name")
        if self.audience_named(name) is not None:
            return errors(
                400, "INVALID_PARAMETER", f"A custom audience named {name} already exists", parameter="name"
            )
        audience = self.create_audience(name)
        audience.description = request.query.get("description")
        return FakeResponse(201, {"data": self._entity(audience), "request": {"params": {"name": name}}})

    def _users(self, audience_id: str, request: FakeRequest) -> FakeResponse:
        audience = self.audiences.get(audience_id)
        if audience is None:
            return errors(404, "NOT_FOUND", f"Custom audience {audience_id} was not found")
        if not request.headers.get("content-type", "").startswith("application/json"):
            return errors(400, "INVALID_PARAMETER", "A Content-Type of application/json is required")
        if len(request.raw_body) > MAX_BODY_BYTES:
            return errors(400, "INVALID_PARAMETER", f"The request body exceeds {MAX_BODY_BYTES} bytes")
        operations = request.json
        if not isinstance(operations, list) or not operations:
            return errors(400, "INVALID_PARAMETER", "Expected a JSON array of operations")
        users_in_all = sum(
            len((op.get("params") or {}).get("users") or []) for op in operations if isinstance(op, dict)
        )
        if len(operations) > MAX_OPERATIONS or users_in_all > MAX_OPERATIONS:
            return errors(400, "INVALID_PARAMETER", f"Maximum batch size is {MAX_OPERATIONS}")
        operation_errors = [self._check(op) for op in operations]
        if any(operation_errors):
            return FakeResponse(400, {"errors": [], "operation_errors": operation_errors, "request": {}})
        for op in operations:
            for user in op["params"]["users"]:
                for key, values in user.items():
                    if op["operation_type"] == "Update":
                        audience.members[key] |= set(values)
                    else:
                        audience.members[key] -= set(values)
        self.users_received += users_in_all
        return FakeResponse(200, {"data": {"success_count": users_in_all, "total_count": users_in_all},
                                  "request": {"params": {"account_id": self.account_id,
                                                         "custom_audience_id": audience_id}}})  # fmt: skip

    def _check(self, op: Any) -> list[dict[str, str]]:
        """The item-level errors of one operation (empty: good)."""
        if not isinstance(op, dict) or op.get("operation_type") not in ("Update", "Delete"):
            return [{"code": "INVALID_PARAMETER", "message": "operation_type must be one of Update, Delete"}]
        users = (op.get("params") or {}).get("users")
        if not isinstance(users, list) or not users:
            return [{"code": "MISSING_PARAMETER", "message": '"users" is missing', "parameter": "users"}]
        for user in users:
            if not isinstance(user, dict) or not user or set(user) - set(KEYS):
                return [
                    {
                        "code": "INVALID_PARAMETER",
                        "message": f"Unknown user keys {sorted(set(user) - set(KEYS))}",
                    }
                ]
            for key, values in user.items():
                if not isinstance(values, list) or not values:
                    return [{"code": "INVALID_PARAMETER", "message": f"{key} must be an array"}]
                for value in values:
                    if key != "partner_user_id" and not (isinstance(value, str) and _SHA256.fullmatch(value)):
                        return [
                            {"code": "INVALID_PARAMETER", "message": f"{key} values must be SHA256 hashed"}
                        ]
                    if value in self._refused:
                        return [{"code": "INVALID_USER", "message": self._refused[value]}]
        return []
