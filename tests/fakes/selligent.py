"""A local fake of Marigold Engage's (Selligent's) REST API v1: one organization's lists, their records,
static segments, and data loads run as jobs.

Contract (cited and, where the reference could not be read, stated as assumed in
``dinmo_dagster/platforms/selligent.py``):

* **Auth** -- ``X-ApiKey: {key}:{secret}``; anything else is HTTP 401 ``{"code": "Unauthorized",
  "message": "The access key was incorrect"}``.
* **Lists** -- ``GET /organizations/{org}/lists/{list}`` -> ``{"api_name", "fields": [{"name",
  "data_type"}]}``; an unknown org or list is HTTP 404.
* **Loads** -- ``POST .../lists/{list}/data/load`` ``{"mode", "keys", "data"}``: more than 1,000 rows is
  HTTP 400 ``{"code": "TooManyRecords"}``; an unknown mode or key field HTTP 422; else ``202 {"id"}``.
  Each ``GET .../data/load/{id}`` moves the job one step, ``Queued`` -> ``Processing`` -> ``Completed``
  (applied then): a row naming a field the list lacks, or a key named by :meth:`SelligentFake.fail`,
  is an ``errors`` entry ``{"index", "code", "message"}``.
* **Segments** -- ``GET .../lists/{list}/segments`` -> ``[{"name", "api_name", "type"}]``; ``POST
  .../segments/{segment}/data/load`` (a job; a key the list does not hold is ``RecordNotFound``);
  ``DELETE .../segments/{segment}/data`` ``{"keys", "data"}`` -> ``200 {"removed"}``.
* **Rate limit** -- :meth:`SelligentFake.throttle` answers HTTP 429 with ``Retry-After: 0``.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from typing import Any

from dinmo_dagster.fakes.server import FakeRequest, FakeResponse
from fakes.common import RecordingFake

MAX_ROWS = 1_000
MODES = ("InsertOrUpdate", "Update", "Insert")


@dataclass
class Job:
    """A data load."""

    id: str
    target: str  # "list" or a segment's API name
    body: dict[str, Any]
    status: str = "Queued"
    errors: list[dict[str, Any]] = field(default_factory=list)


class SelligentFake(RecordingFake):
    """One organization of Marigold Engage in memory, served on loopback (a context manager)."""

    def __init__(
        self,
        key: str,
        secret: str,
        *,
        org: str = "SHOP",
        list_name: str = "CONTACTS",
        fields: tuple[str, ...] = ("MAIL", "FIRSTNAME", "LASTNAME"),
    ) -> None:
        self.auth = f"{key}:{secret}"
        self.org, self.list_name, self.fields = org, list_name, fields
        self.records: list[dict[str, Any]] = []
        self.segments: dict[str, dict[str, Any]] = {}  # api name -> {"name", "members": set of keys}
        self.jobs: dict[str, Job] = {}
        self._ids = itertools.count(1)
        self._failing: dict[str, str] = {}
        super().__init__()

    # -- what tests arrange and read -----------------------------------------------------------------

    def add_segment(self, name: str, api_name: str) -> dict[str, Any]:
        """A static segment of the list."""
        self.segments[api_name] = {"name": name, "members": set()}
        return self.segments[api_name]

    def record(self, mail: str) -> dict[str, Any] | None:
        """The list record of that MAIL."""
        return next((r for r in self.records if r.get("MAIL") == mail), None)

    def fail(self, message: str, *mails: str) -> None:
        """The next load of these MAIL keys reports them failed (once)."""
        self._failing.update(dict.fromkeys(mails, message))

    # -- serving -------------------------------------------------------------------------------------

    def _answer(self, request: FakeRequest) -> FakeResponse:
        if request.headers.get("x-apikey") != self.auth:
            return FakeResponse(401, {"code": "Unauthorized", "message": "The access key was incorrect"})
        if self._throttled:
            self._throttled -= 1
            return FakeResponse(
                429, {"code": "TooManyRequests", "message": "Too many requests"}, {"Retry-After": "0"}
            )
        return self._route(request)

    def _route(self, request: FakeRequest) -> FakeResponse:
        prefix = f"/organizations/{self.org}/lists/{self.list_name}"
        path, method, body = request.path, request.method, request.json
        if not path.startswith(prefix):
            return FakeResponse(404, {"code": "NotFound", "message": "Organization or list not found"})
        rest = path[len(prefix) :]
        if rest == "" and method == "GET":
            return FakeResponse(
                200,
                {
                    "api_name": self.list_name,
                    "fields": [{"name": f, "data_type": "Text"} for f in self.fields],
                },
            )
        if rest == "/segments" and method == "GET":
            return FakeResponse(
                200, [{"name": s["name"], "api_name": a, "type": "Static"} for a, s in self.segments.items()]
            )
        if rest == "/data/load" and method == "POST":
            return self._start(body, "list")
        m = re.fullmatch(r"/segments/([^/]+)(/data/load|/data)?(?:/(\w+))?", rest)
        if m and m.group(1) not in self.segments:
            return FakeResponse(404, {"code": "NotFound", "message": f"Segment {m.group(1)} not found"})
        if m and m.group(2) is None and method == "GET":
            return FakeResponse(200, {"api_name": m.group(1), "name": self.segments[m.group(1)]["name"]})
        if m and m.group(2) == "/data/load" and method == "POST" and m.group(3) is None:
            return self._start(body, m.group(1))
        if m and m.group(2) == "/data" and method == "DELETE":
            keys = body["keys"]
            members = self.segments[m.group(1)]["members"]
            for row in body["data"]:
                members.discard(tuple(row[k] for k in keys))
            return FakeResponse(200, {"removed": len(body["data"])})
        job_id = (
            m.group(3)
            if m and m.group(2) == "/data/load"
            else (rest.removeprefix("/data/load/") if rest.startswith("/data/load/") else None)
        )
        if job_id is not None and method == "GET":
            return self._poll(job_id)
        return FakeResponse(404, {"code": "NotFound", "message": f"No route {method} {path}"})

    def _start(self, body: Any, target: str) -> FakeResponse:
        if not isinstance(body, dict) or not isinstance(body.get("data"), list):
            return FakeResponse(400, {"code": "InvalidRequest", "message": "data is required"})
        if len(body["data"]) > MAX_ROWS:
            return FakeResponse(
                400, {"code": "TooManyRecords", "message": f"At most {MAX_ROWS} records per load"}
            )
        if body.get("mode") not in MODES:
            return FakeResponse(422, {"code": "InvalidMode", "message": f"Unknown mode {body.get('mode')!r}"})
        unknown = [k for k in body.get("keys") or [] if k not in self.fields]
        if not body.get("keys") or unknown:
            return FakeResponse(422, {"code": "InvalidKey", "message": f"Unknown key fields {unknown}"})
        job = Job(str(next(self._ids)), target, body)
        self.jobs[job.id] = job
        return FakeResponse(202, {"id": job.id, "status": job.status})

    def _poll(self, job_id: str) -> FakeResponse:
        job = self.jobs.get(job_id)
        if job is None:
            return FakeResponse(404, {"code": "NotFound", "message": f"Job {job_id} not found"})
        if job.status == "Queued":
            job.status = "Processing"
        elif job.status == "Processing":
            job.status = "Completed"
            self._apply(job)
        return FakeResponse(200, {"id": job.id, "status": job.status, "errors": job.errors})

    def _apply(self, job: Job) -> None:
        keys, mode = job.body["keys"], job.body["mode"]
        for index, row in enumerate(job.body["data"]):
            key = tuple(row.get(k) for k in keys)
            existing = next((r for r in self.records if tuple(r.get(k) for k in keys) == key), None)
            if row.get("MAIL") in self._failing:
                message = self._failing.pop(row["MAIL"])
                job.errors.append({"index": index, "code": "InvalidValue", "message": message})
                continue
            if job.target != "list":
                if existing is None:
                    job.errors.append(
                        {
                            "index": index,
                            "code": "RecordNotFound",
                            "message": "No record of the list matches the keys",
                        }
                    )
                else:
                    self.segments[job.target]["members"].add(key)
                continue
            unknown = [f for f in row if f not in self.fields]
            if unknown:
                job.errors.append(
                    {"index": index, "code": "UnknownField", "message": f"Unknown field {unknown[0]}"}
                )
            elif existing is None and mode != "Update":
                self.records.append(dict(row))
            elif existing is not None and mode != "Insert":
                existing.update(row)
