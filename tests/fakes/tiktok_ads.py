"""A local fake of TikTok's Marketing API v1.3 custom audiences (Customer File audiences).

Serves on ``127.0.0.1`` (a free port), keeps everything in memory, and lets a test assert what
TikTok would hold: each audience's members (digests per calculate type) and every request it got.

Contract (TikTok's pages under https://business-api.tiktok.com/portal/docs, see the adapter):

* **Auth** -- the ``Access-Token`` header; a missing one answers ``code`` 40104, an unknown or
  revoked one ``code`` 40105, both in an HTTP 200 (TikTok answers errors in a 200 with a non-zero
  ``code``; the codes as TikTok's return-code page lists them, the messages the fake's own).
* **Answers** -- ``{"code": 0, "message": "OK", "request_id": ..., "data": {...}}``.
* **Upload** -- ``POST /open_api/v1.3/file/custom_audience/upload/``, multipart: ``advertiser_id``,
  ``calculate_type`` (EMAIL_SHA256, PHONE_SHA256, IDFA_SHA256, GAID_SHA256), ``file_signature``
  (the file's MD5), ``file`` (one lower-case SHA-256 hex digest a line; empty accepted). A wrong
  signature, a line that is not a digest or more than 50,000 lines: ``code`` 40002 and nothing kept.
  Answers ``data: {file_path}``.
* **Create** -- ``POST /open_api/v1.3/dmp/custom_audience/create/`` with ``advertiser_id``,
  ``custom_audience_name``, ``calculate_type``, ``file_paths``; answers ``data: {custom_audience_id}``.
* **Update** -- ``POST /open_api/v1.3/dmp/custom_audience/update/`` with ``advertiser_id``,
  ``custom_audience_id``, ``action`` (APPEND, DELETE, REPLACE), ``file_paths``. REPLACE leaves the
  audience holding only the files' identifiers.
* **Read** -- ``GET /open_api/v1.3/dmp/custom_audience/list/`` (``page``, ``page_size``; ``data:
  {list: [{custom_audience_id, name}], page_info: {page, page_size, total_number, total_page}}``),
  ``GET .../dmp/custom_audience/get/`` (``custom_audience_ids`` a JSON list; unknown: ``code`` 40001),
  ``GET .../advertiser/info/`` (``advertiser_ids`` a JSON list).
* **Events** (Events API 2.0) -- ``POST /open_api/v1.3/event/track/`` with ``event_source`` (web,
  app, offline, crm), ``event_source_id`` (one of the fake's pixels / event sets, else ``code`` 40001),
  ``data`` (1 to 1,000 events, else 40002) and optional ``test_event_code``. Each event needs ``event``
  and a numeric ``event_time``; ``user.email``, ``user.phone`` and ``user.external_id`` must be
  SHA-256 digests; an event the test made TikTok refuse (:meth:`TikTokAdsFake.refuse_event`) too. One
  refused event refuses the request (``code`` 40002, the message naming ``data[i]``; nothing kept).
  Every event received is kept (:attr:`TikTokAdsFake.events`); :meth:`TikTokAdsFake.counted_events`
  is what TikTok counts: the first of the events with the same source, ``event`` and ``event_id``
  within 48 hours.
* **Rate limits** -- :meth:`TikTokAdsFake.throttle` answers the next calls with ``code`` 40100 in an
  HTTP 200.
"""

from __future__ import annotations

import email.parser
import email.policy
import hashlib
import itertools
import json
import math
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from typing_extensions import Self

from dinmo_dagster.fakes.server import FakeRequest, FakeResponse, FakeServer

TYPES = ("EMAIL_SHA256", "PHONE_SHA256", "IDFA_SHA256", "GAID_SHA256")
MAX_LINES = 50_000
API = "/open_api/v1.3"
_SHA256 = re.compile(r"[0-9a-f]{64}")
MAX_EVENTS = 1_000
DEDUP_SECONDS = 48 * 3600


@dataclass
class Audience:
    """One custom audience."""

    id: str
    name: str
    calculate_type: str = "EMAIL_SHA256"
    members: dict[str, set[str]] = field(default_factory=lambda: {t: set() for t in TYPES})


@dataclass
class ReceivedEvent:
    """One event as TikTok received it."""

    event_source_id: str
    event: dict[str, Any]
    test_event_code: str | None
    received: float


def answer(code: int = 0, message: str = "OK", data: Any = None) -> FakeResponse:
    """TikTok's envelope, always in an HTTP 200."""
    return FakeResponse(200, {"code": code, "message": message, "request_id": "fake-request", "data": data or {}})


def parse_form(request: FakeRequest) -> dict[str, bytes]:
    """The fields of a multipart/form-data body (independently of the adapter's encoder)."""
    head = f"Content-Type: {request.headers.get('content-type', '')}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + request.raw_body)
    if not message.is_multipart():
        return {}
    return {part.get_param("name", header="content-disposition"): part.get_payload(decode=True) or b""
            for part in message.iter_parts()}  # fmt: skip


class TikTokAdsFake:
    """TikTok's custom audience API, in memory (a context manager)."""

    def __init__(self, *, access_token: str, advertiser_id: str, page_size: int = 100,
                 event_sources: tuple[str, ...] = (), latency: float = 0.0) -> None:
        self.access_token = access_token
        self.event_sources = set(event_sources)
        self.latency = latency
        self.events: list[ReceivedEvent] = []
        self._refused_events: dict[str, str] = {}
        self.advertiser_id = advertiser_id
        self.page_size = page_size
        self.audiences: dict[str, Audience] = {}
        self.files: dict[str, tuple[str, set[str]]] = {}
        self.answers: list[tuple[str, str, int]] = []  # (method, path, code) of every request
        self._throttled = 0
        self._failures: list[tuple[str, FakeResponse]] = []
        self._ids = itertools.count(1800000000000001)
        self._file_ids = itertools.count(1)
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

    def create_audience(self, name: str, **members: set[str]) -> Audience:
        """An audience already in the advertiser account, with members per calculate type."""
        audience = Audience(str(next(self._ids)), name)
        for calculate_type, digests in members.items():
            audience.members[calculate_type] |= digests
        self.audiences[audience.id] = audience
        return audience

    def audience_named(self, name: str) -> Audience | None:
        """The audience of that name, if any."""
        return next((a for a in self.audiences.values() if a.name == name), None)

    def throttle(self, count: int) -> None:
        """Answer the next ``count`` calls with code 40100."""
        self._throttled += count

    def fail_next(self, path_suffix: str, response: FakeResponse) -> None:
        """Answer the next call whose path ends with ``path_suffix`` with ``response``."""
        self._failures.append((path_suffix, response))

    def refuse_event(self, event_id: str, message: str) -> None:
        """TikTok refuses the event ``event_id`` (its request answers ``code`` 40002) until accepted."""
        self._refused_events[event_id] = message

    def accept_event(self, event_id: str) -> None:
        self._refused_events.pop(event_id, None)

    def counted_events(self) -> list[dict[str, Any]]:
        """The events TikTok counts: duplicates (same source, event and event_id within 48 h) dropped."""
        first: dict[tuple[str, str, str], float] = {}
        counted = []
        for e in self.events:
            key = (e.event_source_id, str(e.event.get("event")), str(e.event.get("event_id")))
            if key in first and e.received - first[key] < DEDUP_SECONDS:
                continue
            first[key] = e.received
            counted.append(e.event)
        return counted

    def revoke_token(self) -> None:
        """The advertiser revoked the app's access token."""
        self.access_token = "revoked-" + self.access_token

    def _app(self, request: FakeRequest) -> FakeResponse:
        if self.latency:
            time.sleep(self.latency)
        with self._lock:
            response = self._api(request)
            self.answers.append((request.method, request.path, response.body["code"]))
        return response

    def _api(self, request: FakeRequest) -> FakeResponse:
        token = request.headers.get("access-token")
        if not token:
            return answer(40104, "Access token is null.")
        if token != self.access_token:
            return answer(40105, "Access token is incorrect or has been revoked.")
        if self._throttled:
            self._throttled -= 1
            return answer(40100, "Too many requests. Please retry in some time.")
        for i, (suffix, response) in enumerate(self._failures):
            if request.path.endswith(suffix):
                del self._failures[i]
                return response
        route = request.path.removeprefix(API)
        if route == "/event/track/" and request.method == "POST":
            return self._track(request.json)
        body = request.json if request.method == "POST" and route != "/file/custom_audience/upload/" else None
        advertiser = (body or request.query).get("advertiser_id")
        if route == "/advertiser/info/" and request.method == "GET":
            if json.loads(request.query.get("advertiser_ids", "[]")) != [self.advertiser_id]:
                return answer(40001, "No permission to operate advertiser.")
            return answer(data={"list": [{"advertiser_id": self.advertiser_id, "name": "Fake advertiser"}]})
        if route == "/file/custom_audience/upload/" and request.method == "POST":
            return self._upload(parse_form(request))
        if advertiser != self.advertiser_id:
            return answer(40001, f"No permission to operate advertiser {advertiser}.")
        if route == "/dmp/custom_audience/list/" and request.method == "GET":
            return self._list(request)
        if route == "/dmp/custom_audience/get/" and request.method == "GET":
            wanted = json.loads(request.query.get("custom_audience_ids", "[]"))
            found = [self.audiences[i] for i in wanted if i in self.audiences]
            if len(found) != len(wanted):
                return answer(40001, f"Custom audience {', '.join(wanted)} does not exist.")
            return answer(data={"list": [{"audience_details": {"audience_id": a.id, "name": a.name}} for a in found]})
        if route == "/dmp/custom_audience/create/" and request.method == "POST":
            return self._create(body or {})
        if route == "/dmp/custom_audience/update/" and request.method == "POST":
            return self._update(body or {})
        return FakeResponse(404, {"code": 40400, "message": f"No route {request.method} {request.path}"})

    def _upload(self, form: dict[str, bytes]) -> FakeResponse:
        if form.get("advertiser_id", b"").decode() != self.advertiser_id:
            return answer(40001, "No permission to operate advertiser.")
        calculate_type = form.get("calculate_type", b"").decode()
        if calculate_type not in TYPES:
            return answer(40002, f"calculate_type: {calculate_type!r} is not one of {', '.join(TYPES)}.")
        content = form.get("file")
        if content is None:
            return answer(40002, "file: required.")
        if form.get("file_signature", b"").decode() != hashlib.md5(content).hexdigest():
            return answer(40002, "file_signature does not match the file.")
        lines = [line for line in content.decode().split("\n") if line]
        if len(lines) > MAX_LINES:
            return answer(40002, f"The file has {len(lines)} lines; at most {MAX_LINES}.")
        if not all(_SHA256.fullmatch(line) for line in lines):
            return answer(40002, f"The file holds values that are not {calculate_type} digests.")
        path = f"tos-fake/audience/{next(self._file_ids)}.txt"
        self.files[path] = (calculate_type, set(lines))
        return answer(data={"file_path": path, "size": len(content)})

    def _track(self, body: Any) -> FakeResponse:
        if not isinstance(body, dict):
            return answer(40002, "The request body must be a JSON object.")
        if body.get("event_source") not in ("web", "app", "offline", "crm"):
            return answer(40002, f"event_source: {body.get('event_source')!r} is not one of web, app, offline, crm.")
        source = body.get("event_source_id")
        if source not in self.event_sources:
            return answer(40001, f"event_source_id {source} does not exist or has no permission.")
        data = body.get("data")
        if not isinstance(data, list) or not 1 <= len(data) <= MAX_EVENTS:
            return answer(40002, f"data: between 1 and {MAX_EVENTS} events are allowed.")
        for i, event in enumerate(data):
            problem = self._event_problem(event)
            if problem:
                return answer(40002, f"data[{i}].{problem}")
        now = time.time()
        self.events += [ReceivedEvent(source, e, body.get("test_event_code"), now) for e in data]
        return answer()

    def _event_problem(self, event: Any) -> str | None:
        if not isinstance(event, dict) or not isinstance(event.get("event"), str) or not event["event"]:
            return "event: required."
        if not isinstance(event.get("event_time"), int) or isinstance(event.get("event_time"), bool):
            return "event_time: must be a Unix timestamp in seconds."
        user = event.get("user") or {}
        for key in ("email", "phone", "external_id"):
            value = user.get(key)
            if value is not None and not (isinstance(value, str) and _SHA256.fullmatch(value)):
                return f"user.{key}: must be hashed with SHA-256."
        refused = self._refused_events.get(str(event.get("event_id")))
        return refused

    def _files(self, body: dict[str, Any]) -> list[tuple[str, set[str]]] | FakeResponse:
        paths = body.get("file_paths")
        if not isinstance(paths, list) or not paths or any(p not in self.files for p in paths):
            return answer(40002, f"file_paths: unknown file {paths!r}.")
        return [self.files[p] for p in paths]

    def _list(self, request: FakeRequest) -> FakeResponse:
        page = int(request.query.get("page") or 1)
        size = min(int(request.query.get("page_size") or 10), self.page_size)
        everything = list(self.audiences.values())
        chunk = everything[(page - 1) * size : page * size]
        return answer(data={
            "list": [{"custom_audience_id": a.id, "name": a.name} for a in chunk],
            "page_info": {"page": page, "page_size": size, "total_number": len(everything),
                          "total_page": max(1, math.ceil(len(everything) / size))},
        })  # fmt: skip

    def _create(self, body: dict[str, Any]) -> FakeResponse:
        name, calculate_type = body.get("custom_audience_name"), body.get("calculate_type")
        if not name or calculate_type not in TYPES:
            return answer(40002, "custom_audience_name and calculate_type are required.")
        files = self._files(body)
        if isinstance(files, FakeResponse):
            return files
        audience = Audience(str(next(self._ids)), name, calculate_type)
        for file_type, digests in files:
            audience.members[file_type] |= digests
        self.audiences[audience.id] = audience
        return answer(data={"custom_audience_id": audience.id})

    def _update(self, body: dict[str, Any]) -> FakeResponse:
        audience = self.audiences.get(str(body.get("custom_audience_id")))
        if audience is None:
            return answer(40001, f"Custom audience {body.get('custom_audience_id')} does not exist.")
        action = body.get("action")
        if action not in ("APPEND", "DELETE", "REPLACE"):
            return answer(40002, f"action: {action!r} is not one of APPEND, DELETE, REPLACE.")
        files = self._files(body)
        if isinstance(files, FakeResponse):
            return files
        if action == "REPLACE":
            audience.members = {t: set() for t in TYPES}
        for file_type, digests in files:
            if action == "DELETE":
                audience.members[file_type] -= digests
            else:
                audience.members[file_type] |= digests
        return answer(data={"custom_audience_id": audience.id})
