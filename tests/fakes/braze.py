"""A local fake of the Braze REST API, built from Braze's own documentation (not from a client).

It serves on ``127.0.0.1`` (a free port the OS picks) and keeps everything in memory, so a test can
sync real segments through it and then assert what Braze would hold: users and their attributes,
events, purchases, subscription states and cohorts.

Contract (and where each part comes from):

* **Auth** -- ``Authorization: Bearer <REST API key>`` on every call. A missing or unknown key gets
  ``401`` ``{"message": "Invalid API key"}`` ("401 Unauthorized: Invalid API key"); a key without the
  endpoint's permission (``users.track``, ``users.delete``, ``subscription.status.set``) gets ``403``
  ``{"message": "Access Denied"}`` ("403 Access Denied: the REST API key ... does not have sufficient
  permissions"). https://www.braze.com/docs/api/errors/ , https://www.braze.com/docs/api/api_key/
* **``POST /users/track``** -- ``attributes``, ``events``, ``purchases`` arrays of at most **75**
  objects each, and (Braze's current batching rule) at most **75 objects in all** per request:
  "Batching: up to 75 objects total combined across attributes, events, and purchases per API
  request. Customers with legacy rate limits can include up to 75 objects per array independently"
  (``max_objects_per_request=None`` stands for a legacy account; Monthly Active Users CY 24-25
  contracts batch "up to 50 updates combined", ``max_objects_per_request=50``). A larger request is a
  fatal ``400`` whose message is Braze's ``"Max Input Length Exceeded"`` and nothing is processed.
  https://www.braze.com/docs/api/api_limits/ (and its 2025 translations, e.g.
  https://www.braze.com/docs/de/api/api_limits/, which carry the combined rule). Each object names
  its user by one of ``external_id``, ``user_alias``, ``braze_id``, ``email`` or ``phone`` (email
  wins over phone); ``_update_existing_only`` (default ``false``, but ``true`` for ``user_alias``)
  stops the creation of new profiles; an alias-only profile is created only with ``_update_existing_only: false``; an
  email-only or phone-only object updates the most recently updated profile with that email/phone
  (one with an ``external_id`` first) or creates an email-only/phone-only profile. Attributes:
  ``null`` removes an attribute, ``{"inc": n}`` increments, an array is set as a set of unique values,
  ``{"add": [...]}`` / ``{"remove": [...]}`` edit an array (an added value moves to the end; arrays
  keep at most ``array_max`` elements, 25 by default, the oldest are dropped), ``subscription_groups``
  sets subscription states. Events need ``name`` and ``time``; event property names must be
  non-empty, at most 255 characters, and not start with ``$``; purchases need ``product_id``,
  ``currency``, ``price`` and ``time``. Braze does **not** de-duplicate events: "each event ingested
  into Braze has its own event ID, so duplicate events are treated as separate, unique events"; the
  fake gives each stored event its own ``event_id``. Success is ``201`` ``{"message": "success",
  "attributes_processed": n, "events_processed": n, "purchases_processed": n}``; objects that fail
  validation do not stop the others: the answer is still ``"message": "success"`` with an ``errors``
  array ("successful message with non-fatal errors"). Braze documents a minor error only as
  ``{<minor error message>}``; the fake's are ``{"type": <reason>, "input_array": "attributes" |
  "events" | "purchases", "index": <position in that array>}`` so an adapter can map each error to
  its record (an adapter should still treat an error without ``index`` as a failure of its whole
  array). https://www.braze.com/docs/api/endpoints/user_data/post_user_track/ ,
  https://www.braze.com/docs/api/objects_filters/user_attributes_object/ ,
  https://www.braze.com/docs/api/objects_filters/event_object/ ,
  https://www.braze.com/docs/api/objects_filters/purchase_object/
* **Rate limits** -- ``/users/track``: 3,000 requests per 3 seconds per workspace (Braze's documented
  base limit since 2024-10-28; older pages said 50,000 per minute); ``/subscription/status/set`` and
  ``/v2/subscription/status/set``: 5,000 per minute (shared); ``/users/delete``: 20,000 per minute.
  All are settable (``track_limit``, ``track_window``, ...), e.g. a small budget with a one-hour
  window stands for an hourly quota. Every
  authenticated answer of these endpoints carries ``X-RateLimit-Limit``, ``X-RateLimit-Remaining`` and
  ``X-RateLimit-Reset`` (UTC epoch seconds of the end of the window); over the limit the answer is ``429`` ``{"message": "Rate
  Limited"}`` ("429 Rate Limited: Over rate limit"; Braze documents no body) and nothing is processed.
  https://www.braze.com/docs/api/api_limits/
* **``POST /subscription/status/set``** -- ``subscription_group_id``, ``subscription_state``
  (``subscribed`` | ``unsubscribed``) and ``external_id``, ``email`` or ``phone`` (a string or an
  array of at most 50); ``email`` and ``phone`` together are refused with Braze's message
  ``"Either an email address or a phone number should be provided, but not both."``. **``POST
  /v2/subscription/status/set``** -- ``{"subscription_groups": [{subscription_group_id,
  subscription_state, external_ids, emails, phones}]}`` with the same limits. Success is ``201``
  ``{"message": "success"}``. An email or phone updates every profile that has it; ids of unknown
  users are ignored (Braze documents no error for them).
  https://www.braze.com/docs/api/endpoints/subscription_groups/post_update_user_subscription_group_status/ ,
  https://www.braze.com/docs/api/endpoints/subscription_groups/post_update_user_subscription_group_status_v2/
* **``POST /users/delete``** -- ``external_ids``, ``user_aliases`` or ``braze_ids`` (only one of
  them per request, at most 50), permission ``users.delete``, 20,000 requests per minute (settable:
  ``delete_limit``, ``delete_window``). Deleted profiles disappear with their attributes and
  subscription states (their events stay, as Braze keeps event data); the answer is ``201``
  ``{"message": "success", "deleted": n}`` (Braze documents ``deleted`` as "number of user ids
  queued for deletion"; it counts the ids sent). Unknown ids are ignored.
  https://www.braze.com/docs/api/endpoints/user_data/post_user_delete/
* **Audiences** -- Braze documents two ways: a custom attribute array edited with ``add`` /
  ``remove`` through ``/users/track`` (any REST key), and the **partner cohort import**
  (``POST /partners/<partner>/cohorts`` to name a cohort, ``POST /partners/<partner>/cohorts/users``
  with ``cohort_changes: [{"user_ids": [...], "should_remove": bool}]``, at most 1,000 ids per
  request, ids that match no ``external_id`` ignored), authenticated by ``partner_api_key`` and the
  customer's ``client_secret`` (Data Import Key) in the body, ``401``/``400`` with the messages of
  Braze's troubleshooting table. Cohort import is for Braze technology partners only (Braze issues
  the partner key). https://www.braze.com/docs/partners/isv_partners/cohort_import
* Any other path is ``404`` ``{"message": "Not Found"}`` ("404 Not Found: Invalid URL").

Use it as a context manager (``with BrazeFake() as braze: ... braze.url``) or through
:func:`braze_fake`. :meth:`BrazeFake.fail_next` injects platform failures (5xx, 429 storms) for retry
tests. The fake never logs the API key or request bodies.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import SplitResult

from fakes.server import ServedFake

__all__ = [
    "BRAZE_MAX_OBJECTS_PER_ARRAY",
    "BrazeCohort",
    "BrazeEvent",
    "BrazeFake",
    "BrazePurchase",
    "BrazeUser",
    "RecordedRequest",
    "braze_fake",
]

BRAZE_MAX_OBJECTS_PER_ARRAY = 75
SUBSCRIPTION_MAX_IDS = 50
COHORT_MAX_IDS = 1000
TRACK_ARRAYS = ("attributes", "events", "purchases")
IDENTIFIER_KEYS = ("external_id", "user_alias", "braze_id", "email", "phone")
ALL_PERMISSIONS = frozenset({"users.track", "users.delete", "subscription.status.set"})
DELETE_MAX_IDS = 50
DELETE_KEYS = ("external_ids", "user_aliases", "braze_ids")
SUBSCRIBE_VALUES = {"opted_in", "unsubscribed", "subscribed"}
SUBSCRIPTION_STATES = {"subscribed", "unsubscribed"}
# Braze's extra date format besides ISO 8601: yyyy-MM-dd'T'HH:mm:ss:SSSZ.
_BRAZE_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}:\d{3}[+-]\d{4}$")
_E164 = re.compile(r"^\+[1-9]\d{6,14}$")
_CURRENCY = re.compile(r"^[A-Z]{3}$")
# Keys of an attributes object that are identifiers or flags, not profile data.
_NON_ATTRIBUTE_KEYS = {"external_id", "user_alias", "braze_id", "_update_existing_only", "push_token_import"}


@dataclass
class BrazeUser:
    """One Braze user profile as the fake holds it."""

    braze_id: str
    external_id: str | None = None
    email: str | None = None
    phone: str | None = None
    aliases: list[tuple[str, str]] = field(default_factory=list)
    attributes: dict[str, Any] = field(default_factory=dict)
    subscription_groups: dict[str, str] = field(default_factory=dict)
    updated_seq: int = 0


@dataclass(frozen=True)
class BrazeEvent:
    """One custom event Braze stored (each has its own ``event_id``: Braze keeps duplicates)."""

    event_id: str
    braze_id: str
    external_id: str | None
    name: str
    time: str
    properties: dict[str, Any]
    app_id: str | None


@dataclass(frozen=True)
class BrazePurchase:
    """One purchase Braze stored."""

    purchase_id: str
    braze_id: str
    external_id: str | None
    product_id: str
    currency: str
    price: float
    quantity: int
    time: str
    properties: dict[str, Any]


@dataclass
class BrazeCohort:
    """A partner cohort: its name and the external ids in it."""

    cohort_id: str
    name: str | None = None
    created_at: str | None = None
    external_ids: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class RecordedRequest:
    """A request the fake answered. ``headers`` holds every header but Authorization, which is never
    recorded; ``authorized`` says whether it carried the workspace's REST API key."""

    method: str
    path: str
    status: int
    body: Any
    at: float  # time.monotonic() when the request arrived
    headers: dict[str, str] = field(default_factory=dict)
    authorized: bool = False


@dataclass
class _Failure:
    path: str
    status: int
    body: Any
    headers: dict[str, str]
    times: int


@dataclass
class _Window:
    limit: int
    seconds: float
    start: float = 0.0
    used: int = 0



class _FatalError(Exception):
    def __init__(self, status: int, message: str, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.body: dict[str, Any] = {"message": message}
        if errors:
            self.body["errors"] = errors


class BrazeFake(ServedFake):
    """An in-memory Braze workspace behind a local HTTP server (see the module docstring).

    ``api_key`` is the workspace's REST API key and ``permissions`` what it may call. ``track_limit``
    requests per ``track_window`` seconds are allowed on ``/users/track`` and ``subscription_limit``
    per ``subscription_window`` on the subscription endpoints, ``delete_limit`` per ``delete_window``
    on ``/users/delete``. ``max_objects_per_request`` caps the objects of one ``/users/track`` request
    across its three arrays (``None``: the legacy rule, 75 per array only). ``partner_name``,
    ``partner_api_key`` and ``client_secret`` configure the partner cohort import. ``latency`` seconds
    are spent on each request outside the lock, so concurrent requests overlap and ``max_in_flight``
    shows how many a client ran at once; ``requests[i].at`` is each arrival time. ``clock`` (epoch
    seconds) lets a test move time. ``deleted`` holds the profiles ``/users/delete`` removed.
    """

    thread_name = "braze-fake"

    def __init__(
        self,
        api_key: str = "braze-rest-key",
        *,
        permissions: frozenset[str] | set[str] = ALL_PERMISSIONS,
        track_limit: int = 3000,
        track_window: float = 3.0,
        subscription_limit: int = 5000,
        subscription_window: float = 60.0,
        delete_limit: int = 20000,
        delete_window: float = 60.0,
        max_objects_per_request: int | None = BRAZE_MAX_OBJECTS_PER_ARRAY,
        array_max: int = 25,
        partner_name: str = "dinmo",
        partner_api_key: str = "braze-partner-key",
        client_secret: str = "braze-data-import-key",
        latency: float = 0.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.api_key = api_key
        self.latency = latency
        self.permissions = frozenset(permissions)
        self.array_max = array_max
        self.partner_name = partner_name
        self.partner_api_key = partner_api_key
        self.client_secret = client_secret
        self.clock = clock
        self._lock = threading.RLock()
        self._windows = {
            "track": _Window(track_limit, track_window),
            "subscription": _Window(subscription_limit, subscription_window),
            "delete": _Window(delete_limit, delete_window),
        }
        self.max_objects_per_request = max_objects_per_request
        self.reset()


    # ---------------------------------------------------------------------------------- test hooks
    def reset(self) -> None:
        """Forget every user (and deleted user), event, purchase, cohort, recorded request and injected
        failure."""
        with self._lock:
            self._users: list[BrazeUser] = []
            self.events: list[BrazeEvent] = []
            self.purchases: list[BrazePurchase] = []
            self.cohorts: dict[str, BrazeCohort] = {}
            self.deleted: list[BrazeUser] = []
            self.requests: list[RecordedRequest] = []
            self._failures: list[_Failure] = []
            self._in_flight = 0
            self.max_in_flight = 0
            self._seq = 0
            for window in self._windows.values():
                window.start, window.used = 0.0, 0

    def set_rate_limit(self, endpoint: str, limit: int, window_seconds: float) -> None:
        """Change the limit of ``"track"``, ``"subscription"`` or ``"delete"`` (and restart its window)."""
        with self._lock:
            self._windows[endpoint] = _Window(limit, window_seconds)

    def fail_next(
        self,
        path: str,
        status: int,
        body: Any = None,
        *,
        headers: dict[str, str] | None = None,
        times: int = 1,
    ) -> None:
        """Answer the next ``times`` authenticated requests to ``path`` with ``status`` and ``body``.

        Nothing is processed for those requests (a 5xx or a 429 storm for retry tests).
        """
        with self._lock:
            self._failures.append(
                _Failure(path, status, body if body is not None else {"message": "Internal Server Error"},
                         dict(headers or {}), times)
            )

    # ---------------------------------------------------------------------------------- inspection
    @property
    def users(self) -> list[BrazeUser]:
        """Every profile, oldest first."""
        with self._lock:
            return list(self._users)

    def user(
        self,
        *,
        external_id: str | None = None,
        email: str | None = None,
        phone: str | None = None,
        braze_id: str | None = None,
        alias: tuple[str, str] | None = None,
    ) -> BrazeUser | None:
        """The profile with that identifier (for email/phone: the one Braze would update), or None."""
        with self._lock:
            if external_id is not None:
                return self._by_external_id(external_id)
            if braze_id is not None:
                return next((u for u in self._users if u.braze_id == braze_id), None)
            if alias is not None:
                return self._by_alias(alias)
            if email is not None:
                return self._by_contact("email", email)
            if phone is not None:
                return self._by_contact("phone", phone)
            raise TypeError("name one identifier: external_id, email, phone, braze_id or alias")

    def subscription_state(
        self,
        group_id: str,
        *,
        external_id: str | None = None,
        email: str | None = None,
        phone: str | None = None,
    ) -> str | None:
        """The state of ``group_id`` for that user (``subscribed``, ``unsubscribed``) or None."""
        found = self.user(external_id=external_id, email=email, phone=phone)
        return None if found is None else found.subscription_groups.get(group_id)

    def events_named(self, name: str) -> list[BrazeEvent]:
        """The stored events called ``name``, in arrival order (duplicates included, as Braze keeps them)."""
        with self._lock:
            return [e for e in self.events if e.name == name]

    # ------------------------------------------------------------------------------------ plumbing
    def _answer(self, method: str, url: SplitResult, headers: Any, raw: bytes,
                arrived: float) -> tuple[int, Any, dict[str, str]]:
        return self._handle(method, url.path.rstrip("/") or "/", headers, raw, arrived)

    def _handle(self, method: str, path: str, headers: Any, raw: bytes,
                arrived: float) -> tuple[int, Any, dict[str, str]]:
        parsed: Any = None
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = raw.decode("utf-8", "replace")
        status, body, extra = self._route(method, path, headers, parsed, raw)
        kept = {k: v for k, v in headers.items() if k.lower() != "authorization"}
        self.requests.append(RecordedRequest(method, path, status, parsed, arrived, kept,
                                             _bearer(headers) == self.api_key))
        return status, body, extra

    def _route(
        self, method: str, path: str, headers: Any, parsed: Any, raw: bytes
    ) -> tuple[int, Any, dict[str, str]]:
        routes: dict[str, tuple[str | None, str | None, Callable[[Any], tuple[int, Any]]]] = {
            "/users/track": ("users.track", "track", self._track),
            "/subscription/status/set": ("subscription.status.set", "subscription", self._subscription_v1),
            "/v2/subscription/status/set": ("subscription.status.set", "subscription", self._subscription_v2),
            "/users/delete": ("users.delete", "delete", self._delete),
            f"/partners/{self.partner_name}/cohorts": (None, None, self._cohort_name),
            f"/partners/{self.partner_name}/cohorts/users": (None, None, self._cohort_users),
        }
        if path not in routes:
            return 404, {"message": "Not Found"}, {}
        if method != "POST":
            return 405, {"message": "Method Not Allowed"}, {}
        permission, window_name, action = routes[path]
        extra: dict[str, str] = {}
        if permission is not None:
            if _bearer(headers) != self.api_key:
                return 401, {"message": "Invalid API key"}, {}
            if permission not in self.permissions:
                return 403, {"message": "Access Denied"}, {}
        if window_name is not None:
            allowed, extra = self._take(window_name)
            if not allowed:
                return 429, {"message": "Rate Limited"}, extra
        failure = next((f for f in self._failures if f.path == path and f.times > 0), None)
        if failure is not None:
            failure.times -= 1
            return failure.status, failure.body, {**extra, **failure.headers}
        if raw and not isinstance(parsed, dict):
            return 400, {"message": "Bad Request", "errors": [{"type": "the body is not a JSON object"}]}, extra
        try:
            status, body = action(parsed or {})
        except _FatalError as fatal:
            return fatal.status, fatal.body, extra
        return status, body, extra

    def _take(self, name: str) -> tuple[bool, dict[str, str]]:
        window = self._windows[name]
        now = self.clock()
        if now >= window.start + window.seconds:
            window.start = math.floor(now / window.seconds) * window.seconds
            window.used = 0
        allowed = window.used < window.limit
        if allowed:
            window.used += 1
        headers = {
            "X-RateLimit-Limit": str(window.limit),
            "X-RateLimit-Remaining": str(max(window.limit - window.used, 0)),
            "X-RateLimit-Reset": str(math.ceil(window.start + window.seconds)),
        }
        return allowed, headers

    # -------------------------------------------------------------------------------- /users/track
    def _track(self, body: dict[str, Any]) -> tuple[int, Any]:
        arrays: dict[str, list[Any]] = {}
        for name in TRACK_ARRAYS:
            value = body.get(name)
            if value is None:
                continue
            if not isinstance(value, list):
                raise _FatalError(400, "Bad Request", [{"type": f"'{name}' must be an array of objects"}])
            if len(value) > BRAZE_MAX_OBJECTS_PER_ARRAY:
                raise _FatalError(
                    400,
                    "Max Input Length Exceeded",
                    [{"type": f"'{name}' has {len(value)} objects; at most {BRAZE_MAX_OBJECTS_PER_ARRAY} "
                              "are allowed per request", "input_array": name}],
                )
            arrays[name] = value
        total = sum(len(v) for v in arrays.values())
        if self.max_objects_per_request is not None and total > self.max_objects_per_request:
            raise _FatalError(
                400,
                "Max Input Length Exceeded",
                [{"type": f"the request has {total} objects; at most {self.max_objects_per_request} "
                          "are allowed across attributes, events and purchases"}],
            )
        errors: list[dict[str, Any]] = []
        processed = {name: 0 for name in arrays}
        handlers = {"attributes": self._apply_attributes, "events": self._apply_event,
                    "purchases": self._apply_purchase}
        # Braze processes attributes, then events, then purchases.
        for name in TRACK_ARRAYS:
            for index, obj in enumerate(arrays.get(name, [])):
                problem = handlers[name](obj) if isinstance(obj, dict) else "each element must be an object"
                if problem is None:
                    processed[name] += 1
                else:
                    errors.append({"type": problem, "input_array": name, "index": index})
        response: dict[str, Any] = {"message": "success"}
        for name, count in processed.items():
            response[f"{name}_processed"] = count
        if errors:
            response["errors"] = errors
        return 201, response

    def _resolve(self, obj: dict[str, Any], *, alias_creates: bool = True) -> tuple[BrazeUser | None, str | None]:
        """Find or create the profile an object names; returns (user or None if skipped, problem)."""
        update_only = obj.get("_update_existing_only")
        if update_only is not None and not isinstance(update_only, bool):
            return None, "'_update_existing_only' must be a boolean"
        external_id = obj.get("external_id")
        if external_id is not None:
            if not isinstance(external_id, str) or not external_id:
                return None, "'external_id' must be a non-empty string"
            found = self._by_external_id(external_id)
            if found is None and not update_only:
                found = self._new_user(external_id=external_id)
            return found, None
        alias = obj.get("user_alias")
        if alias is not None:
            if not (isinstance(alias, dict) and isinstance(alias.get("alias_name"), str)
                    and isinstance(alias.get("alias_label"), str)):
                return None, "'user_alias' must be an object with string 'alias_name' and 'alias_label'"
            key = (alias["alias_name"], alias["alias_label"])
            found = self._by_alias(key)
            # With a user_alias, "Update Only" defaults to true: only an explicit false creates.
            if found is None and update_only is False and alias_creates:
                found = self._new_user()
                found.aliases.append(key)
            return found, None
        braze_id = obj.get("braze_id")
        if braze_id is not None:
            found = next((u for u in self._users if u.braze_id == braze_id), None)
            return (found, None) if found is not None else (None, f"braze_id '{braze_id}' does not exist")
        for contact in ("email", "phone"):
            value = obj.get(contact)
            if value is None:
                continue
            if not isinstance(value, str) or not value:
                return None, f"'{contact}' must be a non-empty string"
            if contact == "phone" and not _E164.match(value):
                return None, "'phone' must be a valid phone number (E.164, e.g. +15043277269)"
            found = self._by_contact(contact, value)
            if found is None and not update_only:
                found = self._new_user(**{contact: value})
            return found, None
        return None, "'external_id', 'user_alias', 'braze_id', 'email' or 'phone' is required"

    def _apply_attributes(self, obj: dict[str, Any]) -> str | None:
        changes: dict[str, Any] = {k: v for k, v in obj.items() if k not in _NON_ATTRIBUTE_KEYS}
        if obj.get("external_id") is None and obj.get("user_alias") is None and obj.get("braze_id") is None:
            # The identifying contact field is the lookup key, not a change.
            changes.pop("email" if obj.get("email") is not None else "phone", None)
        problem = self._check_attribute_changes(changes)
        if problem is not None:
            return problem
        user, problem = self._resolve(obj)
        if problem is not None or user is None:
            return problem
        for key, value in changes.items():
            if key == "subscription_groups":
                for item in value:
                    user.subscription_groups[item["subscription_group_id"]] = item["subscription_state"]
            elif key in ("email", "phone"):
                setattr(user, key, value)
            elif value is None:
                user.attributes.pop(key, None)
            elif isinstance(value, dict) and "inc" in value:
                user.attributes[key] = (user.attributes.get(key) or 0) + value["inc"]
            elif isinstance(value, dict) and ("add" in value or "remove" in value):
                current = [v for v in user.attributes.get(key) or [] if v not in value.get("remove", [])]
                for item in value.get("add", []):
                    if item in current:
                        current.remove(item)
                    current.append(item)
                user.attributes[key] = current[-self.array_max:]
            elif isinstance(value, list) and all(not isinstance(v, dict) for v in value):
                user.attributes[key] = list(dict.fromkeys(value))[-self.array_max:]
            else:
                user.attributes[key] = value
        self._touch(user)
        return None

    def _check_attribute_changes(self, changes: dict[str, Any]) -> str | None:
        for key, value in changes.items():
            if key in ("email_subscribe", "push_subscribe") and value not in SUBSCRIBE_VALUES:
                return f"'{key}' must be one of {sorted(SUBSCRIBE_VALUES)}, got {value!r}"
            if key == "phone" and value is not None and not (isinstance(value, str) and _E164.match(value)):
                return "'phone' must be a valid phone number (E.164, e.g. +15043277269)"
            if key == "subscription_groups":
                if not isinstance(value, list):
                    return "'subscription_groups' must be an array of objects"
                for item in value:
                    if not (isinstance(item, dict) and isinstance(item.get("subscription_group_id"), str)
                            and item.get("subscription_state") in SUBSCRIPTION_STATES):
                        return ("each 'subscription_groups' entry needs a string 'subscription_group_id' and "
                                "'subscription_state' 'subscribed' or 'unsubscribed'")
            if isinstance(value, dict) and "inc" in value:
                if not isinstance(value["inc"], int) or isinstance(value["inc"], bool):
                    return f"'{key}': 'inc' must be an integer"
            elif (isinstance(value, dict) and ("add" in value or "remove" in value)
                  and not all(isinstance(value.get(op, []), list) for op in ("add", "remove"))):
                return f"'{key}': 'add' and 'remove' must be arrays"
        return None

    def _apply_event(self, obj: dict[str, Any]) -> str | None:
        name = obj.get("name")
        if not isinstance(name, str) or not name:
            return "'name' is required and must be a non-empty string"
        problem = _check_time(obj.get("time"))
        if problem is not None:
            return problem
        properties = obj.get("properties", {})
        if not isinstance(properties, dict):
            return "'properties' must be an object"
        reserved = sorted({"time", "event_name"} & set(properties))
        if reserved:
            return f"'properties' uses reserved keys {reserved}"
        if any(not isinstance(k, str) or not k or len(k) > 255 or k.startswith("$") for k in properties):
            return "property names must be non-empty strings of at most 255 characters with no leading '$'"
        user, problem = self._resolve(obj)
        if problem is not None or user is None:
            return problem
        self.events.append(BrazeEvent(uuid.uuid4().hex, user.braze_id, user.external_id, name, obj["time"],
                                      properties, obj.get("app_id")))
        self._touch(user)
        return None

    def _apply_purchase(self, obj: dict[str, Any]) -> str | None:
        product_id = obj.get("product_id")
        if not isinstance(product_id, str) or not product_id:
            return "'product_id' is required and must be a non-empty string"
        currency = obj.get("currency")
        if not isinstance(currency, str) or not _CURRENCY.match(currency):
            return "'currency' is required and must be an ISO 4217 alphabetic code such as 'USD'"
        price = obj.get("price")
        if not isinstance(price, (int, float)) or isinstance(price, bool):
            return "'price' is required and must be a number"
        quantity = obj.get("quantity", 1)
        if not isinstance(quantity, int) or isinstance(quantity, bool) or not 1 <= quantity <= 100:
            return "'quantity' must be an integer from 1 to 100"
        problem = _check_time(obj.get("time"))
        if problem is not None:
            return problem
        properties = obj.get("properties", {})
        if not isinstance(properties, dict):
            return "'properties' must be an object"
        user, problem = self._resolve(obj)
        if problem is not None or user is None:
            return problem
        self.purchases.append(BrazePurchase(uuid.uuid4().hex, user.braze_id, user.external_id, product_id,
                                            currency, float(price), quantity, obj["time"], properties))
        self._touch(user)
        return None

    # ------------------------------------------------------------------------------- /users/delete
    def _delete(self, body: dict[str, Any]) -> tuple[int, Any]:
        given = [key for key in DELETE_KEYS if body.get(key) is not None]
        if len(given) != 1:
            raise _FatalError(400, "Exactly one of external_ids, user_aliases or braze_ids is required")
        key = given[0]
        ids = body[key]
        if not isinstance(ids, list):
            raise _FatalError(400, f"'{key}' must be an array")
        if len(ids) > DELETE_MAX_IDS:
            raise _FatalError(400, "The max number of ids per request was exceeded")
        for value in ids:
            if key == "user_aliases":
                if not (isinstance(value, dict) and isinstance(value.get("alias_name"), str)
                        and isinstance(value.get("alias_label"), str)):
                    raise _FatalError(400, "each user alias needs string 'alias_name' and 'alias_label'")
                user = self._by_alias((value["alias_name"], value["alias_label"]))
            elif not isinstance(value, str):
                raise _FatalError(400, f"'{key}' must be an array of strings")
            elif key == "external_ids":
                user = self._by_external_id(value)
            else:
                user = next((u for u in self._users if u.braze_id == value), None)
            if user is not None:
                self._users.remove(user)
                self.deleted.append(user)
        return 201, {"message": "success", "deleted": len(ids)}

    # ----------------------------------------------------------------------- subscription endpoints
    def _subscription_v1(self, body: dict[str, Any]) -> tuple[int, Any]:
        self._set_subscription(body, ids_key="external_id", emails_key="email", phones_key="phone")
        return 201, {"message": "success"}

    def _subscription_v2(self, body: dict[str, Any]) -> tuple[int, Any]:
        groups = body.get("subscription_groups")
        if not isinstance(groups, list) or not groups or not all(isinstance(g, dict) for g in groups):
            raise _FatalError(400, "'subscription_groups' must be a non-empty array of objects")
        for group in groups:
            self._check_subscription(group, "external_ids", "emails", "phones")
        for group in groups:
            self._set_subscription(group, ids_key="external_ids", emails_key="emails", phones_key="phones")
        return 201, {"message": "success"}

    def _check_subscription(self, body: dict[str, Any], ids_key: str, emails_key: str,
                            phones_key: str) -> tuple[list[str], list[str], list[str]]:
        group_id = body.get("subscription_group_id")
        if not isinstance(group_id, str) or not group_id:
            raise _FatalError(400, "'subscription_group_id' is required")
        if body.get("subscription_state") not in SUBSCRIPTION_STATES:
            raise _FatalError(400, "'subscription_state' must be 'subscribed' or 'unsubscribed'")
        if body.get(emails_key) is not None and body.get(phones_key) is not None:
            raise _FatalError(400, "Either an email address or a phone number should be provided, but not both.")
        lists = []
        for key in (ids_key, emails_key, phones_key):
            value = body.get(key)
            values = [] if value is None else [value] if isinstance(value, str) else value
            if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
                raise _FatalError(400, f"'{key}' must be a string or an array of strings")
            if len(values) > SUBSCRIPTION_MAX_IDS:
                raise _FatalError(400, "The max number of external_ids and aliases per request was exceeded"
                                  if key == ids_key else "The max number of ids per request was exceeded")
            lists.append(values)
        if not any(lists):
            raise _FatalError(400, f"one of '{ids_key}', '{emails_key}' or '{phones_key}' is required")
        return lists[0], lists[1], lists[2]

    def _set_subscription(self, body: dict[str, Any], *, ids_key: str, emails_key: str, phones_key: str) -> None:
        ids, emails, phones = self._check_subscription(body, ids_key, emails_key, phones_key)
        targets = [u for u in self._users
                   if u.external_id in ids or (u.email is not None and u.email in emails)
                   or (u.phone is not None and u.phone in phones)]
        for user in targets:
            user.subscription_groups[body["subscription_group_id"]] = body["subscription_state"]
            self._touch(user)

    # ------------------------------------------------------------------------ partner cohort import
    def _check_partner(self, body: dict[str, Any]) -> str:
        if body.get("partner_api_key") != self.partner_api_key:
            raise _FatalError(401, "Invalid Partner API key")
        if body.get("client_secret") != self.client_secret:
            raise _FatalError(401, "Invalid client secret")
        cohort_id = body.get("cohort_id")
        if not isinstance(cohort_id, str) or not cohort_id:
            raise _FatalError(400, "cohort_id must be a valid string")
        return cohort_id

    def _cohort_name(self, body: dict[str, Any]) -> tuple[int, Any]:
        cohort_id = self._check_partner(body)
        name = body.get("name")
        if not isinstance(name, str) or not name:
            raise _FatalError(400, "name must be a non-empty string")
        if _check_time(body.get("created_at")) is not None:
            raise _FatalError(400, "created_at must be a valid time as an ISO-8601 string")
        cohort = self.cohorts.setdefault(cohort_id, BrazeCohort(cohort_id))
        cohort.name, cohort.created_at = name, body["created_at"]
        return 201, {"message": "success"}

    def _cohort_users(self, body: dict[str, Any]) -> tuple[int, Any]:
        cohort_id = self._check_partner(body)
        changes = body.get("cohort_changes")
        shape = ("cohort_changes must be an array of objects each with key user_ids and/or device_ids "
                 "mapping to an array of strings, or an aliases object")
        if not isinstance(changes, list) or not all(
            isinstance(c, dict) and isinstance(c.get("user_ids", []), list)
            and all(isinstance(i, str) for i in c.get("user_ids", [])) for c in changes
        ):
            raise _FatalError(400, shape)
        total = sum(len(c.get("user_ids", [])) + len(c.get("device_ids", [])) + len(c.get("aliases", []))
                    for c in changes)
        if total > COHORT_MAX_IDS:
            raise _FatalError(400, "Only 1,000 user_ids, device_ids, and aliases are allowed per request")
        cohort = self.cohorts.setdefault(cohort_id, BrazeCohort(cohort_id))
        for change in changes:
            # Braze ignores ids that match no external_id (anonymous users cannot join a cohort).
            known = [i for i in change.get("user_ids", []) if self._by_external_id(i) is not None]
            if change.get("should_remove", False):
                cohort.external_ids.difference_update(known)
            else:
                cohort.external_ids.update(known)
        return 201, {"message": "success"}

    # ------------------------------------------------------------------------------------- lookups
    def _new_user(self, **fields: Any) -> BrazeUser:
        user = BrazeUser(braze_id=uuid.uuid4().hex[:24], **fields)
        self._users.append(user)
        return user

    def _touch(self, user: BrazeUser) -> None:
        self._seq += 1
        user.updated_seq = self._seq

    def _by_external_id(self, external_id: str) -> BrazeUser | None:
        return next((u for u in self._users if u.external_id == external_id), None)

    def _by_alias(self, alias: tuple[str, str]) -> BrazeUser | None:
        return next((u for u in self._users if tuple(alias) in u.aliases), None)

    def _by_contact(self, contact: str, value: str) -> BrazeUser | None:
        # Braze: the most recently updated profile with an external_id first, else the most recent one.
        matches = [u for u in self._users if getattr(u, contact) == value]
        if not matches:
            return None
        return max(matches, key=lambda u: (u.external_id is not None, u.updated_seq))


def _bearer(headers: Any) -> str | None:
    value = headers.get("Authorization") or ""
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _check_time(value: Any) -> str | None:
    if not isinstance(value, str) or not value:
        return "'time' is required and must be a datetime string in ISO 8601 format"
    if _BRAZE_TIME.match(value):
        return None
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return f"'time' {value!r} is not in ISO 8601 or yyyy-MM-dd'T'HH:mm:ss:SSSZ format"
    return None


@contextmanager
def braze_fake(**options: Any) -> Iterator[BrazeFake]:
    """Run a :class:`BrazeFake` for the block (``options`` go to its constructor)."""
    fake = BrazeFake(**options)
    with fake:
        yield fake
