"""A local fake of Klaviyo's REST API (JSON:API, revision-dated): profiles, bulk import jobs, lists and
their profile relationships, bulk subscribe / unsubscribe jobs.

Serves on ``127.0.0.1`` (a free port), keeps everything in memory, and lets a test assert what Klaviyo
would hold: profiles (identifiers, attributes, custom properties, consent per channel), lists and their
members, import jobs and their errors, every request and every answer's status.

Contract (from Klaviyo's pages, cited in ``dinmo_dagster/platforms/klaviyo.py``):

* **Auth** -- ``Authorization: Klaviyo-API-Key <private key>``; anything else is HTTP 401
  ``{"errors": [{"status": 401, "code": "not_authenticated", ...}]}``. A request without a
  ``revision`` header (``YYYY-MM-DD``) is HTTP 400 (``code: "invalid"``); a key given
  ``scopes`` lacking the endpoint's scope is HTTP 403 ``permission_denied``.
* **Bulk import** -- ``POST /api/profile-bulk-import-jobs`` ``{"data": {"type":
  "profile-bulk-import-job", "attributes": {"profiles": {"data": [{"type": "profile", "attributes":
  {...}}]}}}}``: more than 10,000 profiles or 5 MB is HTTP 400 with the pointer of ``profiles``; else
  HTTP 202 with the job (``queued``). Each ``GET /api/profile-bulk-import-jobs/{id}`` moves it one
  step: ``queued`` -> ``processing`` -> ``complete`` (the profiles are upserted then: matched by email,
  phone number or external id, else created; ``null`` values are ignored). A profile without an
  identifier, with an e-mail that is not one, a phone number not in E.164, or one named by
  :meth:`KlaviyoFake.fail_profiles` is not imported: it counts in ``failed_count`` and is listed by
  ``GET .../{id}/import-errors`` (``code``, ``title``, ``detail``, ``source.pointer``,
  ``original_payload``), 2 errors per page with an absolute ``links.next``.
* **Profiles** -- ``GET /api/profiles?filter=any(<email|phone_number|external_id>,["..",..])``
  (``page[size]`` at most 100, more values than that is HTTP 400); ``POST /api/profiles`` creates
  one, HTTP 409 ``duplicate_profile`` with ``meta.duplicate_profile_id`` when it exists.
* **Lists** -- ``GET /api/lists?filter=equals(name,"..")``, ``GET /api/lists/{id}``,
  ``POST /api/lists``; ``POST`` / ``DELETE /api/lists/{id}/relationships/profiles`` with
  ``{"data": [{"type": "profile", "id"}]}``: more than 1,000 is HTTP 400, an unknown profile id HTTP
  404; HTTP 204.
* **Consent** -- ``POST /api/profile-subscription-bulk-create-jobs`` / ``-bulk-delete-jobs``
  (at most 1,000 / 100 profiles): each profile's ``subscriptions.<email|sms>.marketing.consent`` is set
  (``SUBSCRIBED`` / ``UNSUBSCRIBED``), the profile created when missing, subscribed ones added to the
  related list; HTTP 202, no body.
* **Rate limits** -- per tier, fixed windows: M (imports, lists, relationships: 10/s, 150/m), L
  (profiles, subscription jobs: 75/s, 700/m); past either: HTTP 429 ``throttled`` with ``Retry-After``.
  :meth:`KlaviyoFake.throttle` answers the next calls with 429. Other answers carry ``RateLimit-Limit``
  / ``-Remaining`` / ``-Reset`` of the steady window.
"""

from __future__ import annotations

import itertools
import json
import re
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from dinmo_dagster.fakes.server import FakeRequest, FakeResponse
from fakes.common import RecordingFake

MAX_IMPORT = 10_000
MAX_IMPORT_BYTES = 5 * 1024 * 1024
MAX_RELATIONSHIPS = 1_000
MAX_SUBSCRIPTIONS = 1_000
MAX_UNSUBSCRIPTIONS = 100
MAX_PAGE = 100
ERRORS_PER_PAGE = 2
TIERS = {"M": ((10, 1.0), (150, 60.0)), "L": ((75, 1.0), (700, 60.0))}
_E164 = re.compile(r"\+[1-9]\d{6,14}")
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_ANY = re.compile(r"any\((email|phone_number|external_id),\[(.*)\]\)")
_EQUALS = re.compile(r'equals\(name,"(.*)"\)')
KINDS = ("email", "phone_number", "external_id")


@dataclass
class Profile:
    """One Klaviyo profile."""

    id: str
    email: str | None = None
    phone_number: str | None = None
    external_id: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)  # first_name, location...
    properties: dict[str, Any] = field(default_factory=dict)
    consent: dict[str, str] = field(default_factory=dict)  # channel -> SUBSCRIBED / UNSUBSCRIBED


@dataclass
class KList:
    """One list and the ids of its member profiles."""

    id: str
    name: str
    members: set[str] = field(default_factory=set)


@dataclass
class Job:
    """A bulk import job."""

    id: str
    profiles: list[dict[str, Any]]
    status: str = "queued"
    errors: list[dict[str, Any]] = field(default_factory=list)
    failed: int = 0


def _error(
    status: int,
    code: str,
    title: str,
    detail: str,
    pointer: str | None = None,
    headers: dict[str, str] | None = None,
    meta: dict[str, Any] | None = None,
) -> FakeResponse:
    error: dict[str, Any] = {
        "id": f"err-{status}",
        "status": status,
        "code": code,
        "title": title,
        "detail": detail,
    }
    if pointer is not None:
        error["source"] = {"pointer": pointer}
    if meta:
        error["meta"] = meta
    return FakeResponse(status, {"errors": [error]}, headers=headers or {})


class KlaviyoFake(RecordingFake):
    """Klaviyo's REST API in memory, served on loopback (a context manager)."""

    def __init__(
        self, api_key: str, *, scopes: set[str] | None = None, retry_after: str = "1", latency: float = 0.0
    ) -> None:
        self.api_key = api_key
        self.scopes = scopes
        self.retry_after = retry_after
        self.profiles: dict[str, Profile] = {}
        self.lists: dict[str, KList] = {}
        self.jobs: dict[str, Job] = {}
        self._ids = itertools.count(1)
        self._failing: dict[str, str] = {}  # identifier value -> detail, failed once in an import
        self._windows: dict[tuple[str, int], deque[float]] = {}
        super().__init__(latency)

    # -- what tests arrange and read --------------------------------------------------------------------

    def add_profile(self, **fields: Any) -> Profile:
        """A profile Klaviyo already holds."""
        with self._lock:
            profile = Profile(f"01P{next(self._ids):06d}", **fields)
            self.profiles[profile.id] = profile
            return profile

    def create_list(self, name: str) -> KList:
        """A list already in the account."""
        with self._lock:
            klist = KList(f"L{next(self._ids):05d}", name)
            self.lists[klist.id] = klist
            return klist

    def list_named(self, name: str) -> KList | None:
        """The list of that name, if any."""
        return next((k for k in self.lists.values() if k.name == name), None)

    def members(self, name: str, kind: str = "email") -> set[str]:
        """The ``kind`` identifiers of the profiles in the list ``name``."""
        klist = self.list_named(name)
        return {getattr(self.profiles[p], kind) for p in klist.members} if klist else set()

    def by_email(self, email: str) -> Profile | None:
        """The profile of that e-mail address."""
        return next((p for p in self.profiles.values() if p.email == email), None)

    def fail_profiles(self, detail: str, *values: str) -> None:
        """The next import of a profile named by one of ``values`` fails with ``detail`` (once)."""
        with self._lock:
            self._failing.update(dict.fromkeys(values, detail))

    # -- serving ------------------------------------------------------------------------------------------

    def _tier(self, request: FakeRequest) -> str:
        if request.path.startswith(("/api/profiles", "/api/profile-subscription")):
            return "L"
        return "M"

    def _limited(self, tier: str) -> bool:
        now = time.monotonic()
        over = False
        for n, (limit, seconds) in enumerate(TIERS[tier]):
            window = self._windows.setdefault((tier, n), deque())
            while window and window[0] <= now - seconds:
                window.popleft()
            over = over or len(window) >= limit
        if not over:
            for n in range(len(TIERS[tier])):
                self._windows[(tier, n)].append(now)
        return over

    def _answer(self, request: FakeRequest) -> FakeResponse:
        if request.headers.get("authorization") != f"Klaviyo-API-Key {self.api_key}":
            return _error(
                401,
                "not_authenticated",
                "Authentication credentials were not provided.",
                "Missing or invalid private key.",
            )
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}(\.\w+)?", request.headers.get("revision", "")):
            return _error(400, "invalid", "Invalid input.", "Missing or invalid revision header.")
        tier = self._tier(request)
        if self._throttled or self._limited(tier):
            self._throttled = max(0, self._throttled - 1)
            return _error(
                429,
                "throttled",
                "Request was throttled.",
                "Request was throttled. Expected available in 1 second.",
                headers={"Retry-After": self.retry_after},
            )
        response = self._route(request)
        steady = TIERS[tier][1]
        response.headers.update(
            {"RateLimit-Limit": str(steady[0]), "RateLimit-Remaining": "100", "RateLimit-Reset": "30"}
        )
        return response

    def _scope(self, scope: str) -> FakeResponse | None:
        if self.scopes is not None and scope not in self.scopes:
            return _error(
                403,
                "permission_denied",
                "You do not have permission to perform this action.",
                f"This API key is missing required scopes: {scope}",
            )
        return None

    def _route(self, request: FakeRequest) -> FakeResponse:
        method, path, body = request.method, request.path, request.json
        if path == "/api/profile-bulk-import-jobs" and method == "POST":
            return self._scope("profiles:write") or self._import(request)
        if m := re.fullmatch(r"/api/profile-bulk-import-jobs/([^/]+)", path):
            return self._scope("profiles:read") or self._job(m.group(1))
        if m := re.fullmatch(r"/api/profile-bulk-import-jobs/([^/]+)/import-errors", path):
            return self._scope("profiles:read") or self._job_errors(m.group(1), request)
        if path == "/api/profiles" and method == "GET":
            return self._scope("profiles:read") or self._get_profiles(request)
        if path == "/api/profiles" and method == "POST":
            return self._scope("profiles:write") or self._create_profile(body)
        if path == "/api/lists" and method == "GET":
            return self._scope("lists:read") or self._get_lists(request)
        if path == "/api/lists" and method == "POST":
            name = (((body or {}).get("data") or {}).get("attributes") or {}).get("name")
            if not name:
                return _error(
                    400, "invalid", "Invalid input.", "'name' is a required field", "/data/attributes/name"
                )
            klist = KList(f"L{next(self._ids):05d}", name)
            self.lists[klist.id] = klist
            return FakeResponse(201, {"data": self._list_view(klist)})
        if m := re.fullmatch(r"/api/lists/([^/]+)", path):
            klist = self.lists.get(m.group(1))
            if klist is None:
                return _error(404, "not_found", "Not found.", f"A list with id {m.group(1)} does not exist.")
            return FakeResponse(200, {"data": self._list_view(klist)})
        if m := re.fullmatch(r"/api/lists/([^/]+)/relationships/profiles", path):
            return self._scope("lists:write") or self._relationships(m.group(1), method, body)
        if path in (
            "/api/profile-subscription-bulk-create-jobs",
            "/api/profile-subscription-bulk-delete-jobs",
        ):
            return self._scope("subscriptions:write") or self._consent(path.endswith("create-jobs"), body)
        return _error(404, "not_found", "Not found.", f"{method} {path} is not an endpoint")

    # -- profiles --------------------------------------------------------------------------------------------

    def _find(self, attributes: dict[str, Any]) -> Profile | None:
        for kind in KINDS:
            value = attributes.get(kind)
            if value:
                found = next((p for p in self.profiles.values() if getattr(p, kind) == value), None)
                if found:
                    return found
        return None

    def _invalid(self, attributes: dict[str, Any]) -> tuple[str, str] | None:
        if not any(attributes.get(k) for k in KINDS):
            return "/email", "One of email, phone_number or external_id is required."
        if attributes.get("email") is not None and not _EMAIL.fullmatch(str(attributes["email"])):
            return "/email", "Invalid email address"
        if attributes.get("phone_number") is not None and not _E164.fullmatch(
            str(attributes["phone_number"])
        ):
            return "/phone_number", "Invalid phone number format (Example of a valid format: +13239169023)"
        return None

    def _upsert(self, attributes: dict[str, Any]) -> Profile:
        profile = self._find(attributes)
        if profile is None:
            profile = Profile(f"01P{next(self._ids):06d}")
            self.profiles[profile.id] = profile
        for kind in KINDS:
            if attributes.get(kind):
                setattr(profile, kind, attributes[kind])
        for name, value in attributes.items():
            if name in KINDS or name == "subscriptions" or value is None:
                continue
            if name == "properties":
                profile.properties.update({k: v for k, v in value.items() if v is not None})
            elif name == "location":
                profile.attributes.setdefault("location", {}).update(
                    {k: v for k, v in value.items() if v is not None}
                )
            else:
                profile.attributes[name] = value
        return profile

    def _view(self, profile: Profile) -> dict[str, Any]:
        return {
            "type": "profile",
            "id": profile.id,
            "attributes": {
                "email": profile.email,
                "phone_number": profile.phone_number,
                "external_id": profile.external_id,
                **profile.attributes,
                "properties": profile.properties,
            },
        }

    def _get_profiles(self, request: FakeRequest) -> FakeResponse:
        size = int(request.query.get("page[size]", "20"))
        if size > MAX_PAGE:
            return _error(
                400, "invalid", "Invalid input.", f"Page size must be at most {MAX_PAGE}", "page[size]"
            )
        match = _ANY.fullmatch(request.query.get("filter", ""))
        if not match:
            return _error(400, "invalid", "Invalid input.", "Invalid filter", "filter")
        kind, values = match.group(1), json.loads(f"[{match.group(2)}]")
        if len(values) > MAX_PAGE:
            return _error(
                400, "invalid", "Invalid input.", f"any() takes at most {MAX_PAGE} values", "filter"
            )
        found = [self._view(p) for p in self.profiles.values() if getattr(p, kind) in values]
        return FakeResponse(
            200, {"data": found[:size], "links": {"self": self.url + request.path, "next": None}}
        )

    def _create_profile(self, body: Any) -> FakeResponse:
        attributes = dict(((body or {}).get("data") or {}).get("attributes") or {})
        if problem := self._invalid(attributes):
            return _error(400, "invalid", "Invalid input.", problem[1], "/data/attributes" + problem[0])
        existing = self._find(attributes)
        if existing is not None:
            return _error(
                409,
                "duplicate_profile",
                "Conflict.",
                "A profile already exists with one of these identifiers.",
                meta={"duplicate_profile_id": existing.id},
            )
        return FakeResponse(201, {"data": self._view(self._upsert(attributes))})

    # -- import jobs -------------------------------------------------------------------------------------------

    def _import(self, request: FakeRequest) -> FakeResponse:
        data = (request.json or {}).get("data") or {}
        if data.get("type") != "profile-bulk-import-job":
            return _error(
                400, "invalid", "Invalid input.", "data.type must be profile-bulk-import-job", "/data/type"
            )
        profiles = ((data.get("attributes") or {}).get("profiles") or {}).get("data")
        if not isinstance(profiles, list) or not profiles:
            return _error(
                400, "invalid", "Invalid input.", "profiles is required", "/data/attributes/profiles"
            )
        if len(profiles) > MAX_IMPORT:
            return _error(
                400,
                "invalid",
                "Invalid input.",
                f"A job takes at most {MAX_IMPORT} profiles.",
                "/data/attributes/profiles",
            )
        if len(request.raw_body) > MAX_IMPORT_BYTES:
            return _error(413, "payload_too_large", "Payload too large.", "The payload is larger than 5 MB.")
        job = Job(f"IMP{next(self._ids):05d}", profiles)
        self.jobs[job.id] = job
        return FakeResponse(202, {"data": self._job_view(job)})

    def _job_view(self, job: Job) -> dict[str, Any]:
        done = job.status == "complete"
        return {
            "type": "profile-bulk-import-job",
            "id": job.id,
            "attributes": {
                "status": job.status,
                "total_count": len(job.profiles),
                "completed_count": len(job.profiles) - job.failed if done else 0,
                "failed_count": job.failed if done else 0,
            },
        }

    def _job(self, job_id: str) -> FakeResponse:
        job = self.jobs.get(job_id)
        if job is None:
            return _error(404, "not_found", "Not found.", f"No job {job_id}")
        if job.status == "queued":
            job.status = "processing"
        elif job.status == "processing":
            self._run(job)
            job.status = "complete"
        return FakeResponse(200, {"data": self._job_view(job)})

    def _run(self, job: Job) -> None:
        for index, profile in enumerate(job.profiles):
            attributes = dict(profile.get("attributes") or {})
            problem = self._invalid(attributes)
            failing = next((attributes.get(k) for k in KINDS if attributes.get(k) in self._failing), None)
            if failing is not None:
                problem = ("", self._failing.pop(failing))
            if problem is not None:
                job.failed += 1
                job.errors.append(
                    {
                        "type": "import-error",
                        "id": f"{job.id}-{index}",
                        "attributes": {
                            "code": "invalid",
                            "title": "Invalid input.",
                            "detail": problem[1],
                            "source": {
                                "pointer": f"/data/attributes/profiles/data/{index}/attributes{problem[0]}"
                            },
                            "original_payload": attributes,
                        },
                    }
                )
                continue
            self._upsert(attributes)

    def _job_errors(self, job_id: str, request: FakeRequest) -> FakeResponse:
        job = self.jobs.get(job_id)
        if job is None:
            return _error(404, "not_found", "Not found.", f"No job {job_id}")
        start = int(request.query.get("page[cursor]", "0"))
        page = job.errors[start : start + ERRORS_PER_PAGE]
        following = start + ERRORS_PER_PAGE
        link = f"{self.url}{request.path}?page[cursor]={following}" if following < len(job.errors) else None
        return FakeResponse(200, {"data": page, "links": {"next": link}})

    # -- lists -----------------------------------------------------------------------------------------------------

    def _list_view(self, klist: KList) -> dict[str, Any]:
        return {"type": "list", "id": klist.id, "attributes": {"name": klist.name}}

    def _get_lists(self, request: FakeRequest) -> FakeResponse:
        found = list(self.lists.values())
        if "filter" in request.query:
            match = _EQUALS.fullmatch(request.query["filter"])
            if not match:
                return _error(400, "invalid", "Invalid input.", "Invalid filter", "filter")
            found = [k for k in found if k.name == match.group(1)]
        return FakeResponse(200, {"data": [self._list_view(k) for k in found], "links": {"next": None}})

    def _relationships(self, list_id: str, method: str, body: Any) -> FakeResponse:
        klist = self.lists.get(list_id)
        if klist is None:
            return _error(404, "not_found", "Not found.", f"A list with id {list_id} does not exist.")
        data = (body or {}).get("data")
        if not isinstance(data, list):
            return _error(400, "invalid", "Invalid input.", "data must be a list", "/data")
        if len(data) > MAX_RELATIONSHIPS:
            return _error(
                400,
                "invalid",
                "Invalid input.",
                f"At most {MAX_RELATIONSHIPS} profiles per request.",
                "/data",
            )
        ids = [d.get("id") for d in data]
        unknown = [i for i in ids if i not in self.profiles]
        if unknown:
            return _error(404, "not_found", "Not found.", f"Profile {unknown[0]} does not exist.")
        if method == "POST":
            klist.members.update(ids)
        elif method == "DELETE":
            klist.members.difference_update(ids)
        else:
            return _error(405, "method_not_allowed", "Method not allowed.", method)
        return FakeResponse(204)

    # -- consent -------------------------------------------------------------------------------------------------

    def _consent(self, subscribe: bool, body: Any) -> FakeResponse:
        data = (body or {}).get("data") or {}
        expected = (
            "profile-subscription-bulk-create-job" if subscribe else "profile-subscription-bulk-delete-job"
        )
        if data.get("type") != expected:
            return _error(400, "invalid", "Invalid input.", f"data.type must be {expected}", "/data/type")
        profiles = ((data.get("attributes") or {}).get("profiles") or {}).get("data") or []
        most = MAX_SUBSCRIPTIONS if subscribe else MAX_UNSUBSCRIPTIONS
        if not profiles or len(profiles) > most:
            return _error(
                400,
                "invalid",
                "Invalid input.",
                f"Between 1 and {most} profiles.",
                "/data/attributes/profiles/data",
            )

        list_id = (((data.get("relationships") or {}).get("list") or {}).get("data") or {}).get("id")
        if list_id is not None and list_id not in self.lists:
            return _error(404, "not_found", "Not found.", f"A list with id {list_id} does not exist.")
        for index, item in enumerate(profiles):
            attributes = item.get("attributes") or {}
            if problem := self._invalid({k: attributes.get(k) for k in ("email", "phone_number")}):
                return _error(
                    400,
                    "invalid",
                    "Invalid input.",
                    problem[1],
                    f"/data/attributes/profiles/data/{index}/attributes{problem[0]}",
                )
            channels = attributes.get("subscriptions") or {}
            wanted = "SUBSCRIBED" if subscribe else "UNSUBSCRIBED"
            for channel, spec in channels.items():
                if channel not in ("email", "sms") or (spec.get("marketing") or {}).get("consent") != wanted:
                    return _error(
                        400,
                        "invalid",
                        "Invalid input.",
                        f"Invalid consent for channel {channel}",
                        f"/data/attributes/profiles/data/{index}/attributes/subscriptions",
                    )
        for item in profiles:
            attributes = item["attributes"]
            profile = self._find(attributes)  # one Klaviyo does not hold is created, then (un)subscribed
            profile = profile or self._upsert({k: attributes.get(k) for k in ("email", "phone_number")})
            for channel in attributes.get("subscriptions") or {}:
                profile.consent[channel] = "SUBSCRIBED" if subscribe else "UNSUBSCRIBED"
            if subscribe and list_id is not None:
                self.lists[list_id].members.add(profile.id)
        return FakeResponse(202)
