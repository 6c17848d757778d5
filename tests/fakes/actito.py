"""A local fake of Actito's Integration API: the token endpoint, a profile table's structure, one shot ETL
executions (bulk profile imports) run as background jobs, profile deletion and segmentation membership.

Serves on ``127.0.0.1`` (a free port), keeps everything in memory, and lets a test assert what Actito
would hold: the table's profiles (attributes), each segmentation's members, the executions and every
request.

Contract (from Actito's pages, cited in ``dinmo_dagster/platforms/actito.py``; what they leave open is
assumed the same way there):

* **Token** -- ``GET /auth/token`` with the API key alone in ``Authorization``: ``{"accessToken",
  "tokenType": "bearer", "expiresIn": "900s"}``; another key is HTTP 401. API calls need ``Authorization:
  Bearer <a token issued and not expired>``, else HTTP 401 ``{"status": 401, "message": "Invalid token"}``.
* **Structure** -- ``GET /v4/entity/{e}/table/{t}``: ``{"name", "attributes": [{"name", "type",
  "valueType", "unique", "mandatory"}], "subscriptions": [{"name"}], "segmentations": [{"name",
  "type"}]}``; an unknown table is HTTP 404.
* **Imports** -- ``POST /mass-imports/v5/entities/{e}/etl-executions``, ``multipart/form-data`` with the
  CSV ``inputFile`` and the JSON ``oneShotEtlExecution`` (table, mode CREATE_UPDATE / UPDATE_ONLY /
  CREATE_ONLY, key attribute, column mapping): a file over 100 MB, an unknown table, a column that is no
  attribute or a key that is not unique is HTTP 400 ``{"message"}``; else HTTP 201 ``{"id"}``. Each
  ``GET .../etl-executions/{id}`` moves it one step, ``PENDING`` -> ``RUNNING`` -> ``FINISHED`` (applied
  then). Lines in error (an invalid e-mail, a profile UPDATE_ONLY does not find, lines named by
  :meth:`ActitoFake.fail_keys`) are listed by ``GET .../etl-executions/{id}/errors`` (CSV
  ``lineNumber,errorType,errorMessage``, the header being line 1). An empty cell empties the attribute.
* **Profiles** -- ``DELETE /v4/entity/{e}/table/{t}/profile/{key}={value}``: 200, or 404 when there is
  no such profile.
* **Segmentations** -- ``PUT`` / ``DELETE .../profile/{key}={value}/segmentation/{name}``: 200; 404
  ``{"message": "Profile not found"}`` or ``{"message": "Segmentation ... not found"}``.
* **Rate limit** -- past 10 requests a second (or when :meth:`ActitoFake.throttle` says) HTTP 429 with
  ``Retry-After``.
"""

from __future__ import annotations

import csv
import email.parser
import email.policy
import io
import itertools
import json
import re
import time
import urllib.parse
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from dinmo_dagster.fakes.server import FakeRequest, FakeResponse
from fakes.common import RecordingFake

MAX_FILE = 100 * 1024 * 1024
RATE = 10
ATTRIBUTES = [
    {"name": "profileId", "type": "CUSTOM", "valueType": "INTEGER", "unique": True, "mandatory": True},
    {
        "name": "creationMoment",
        "type": "CUSTOM",
        "valueType": "TIMESTAMP",
        "unique": False,
        "mandatory": True,
    },
    {"name": "updateMoment", "type": "CUSTOM", "valueType": "TIMESTAMP", "unique": False, "mandatory": True},
    {"name": "firstName", "type": "FIRSTNAME", "unique": False, "mandatory": False},
    {"name": "lastName", "type": "LASTNAME", "unique": False, "mandatory": False},
    {"name": "emailAddress", "type": "EMAIL_ADDRESS", "unique": True, "mandatory": False},
    {"name": "customerId", "type": "CUSTOM", "valueType": "STRING", "unique": True, "mandatory": False},
    {"name": "shop", "type": "CUSTOM", "valueType": "STRING", "unique": False, "mandatory": False},
]
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")


@dataclass
class Execution:
    """One one shot ETL execution."""

    id: int
    definition: dict[str, Any]
    rows: list[dict[str, str]]
    status: str = "PENDING"
    errors: list[tuple[int, str, str]] = field(default_factory=list)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> FakeResponse:
    return FakeResponse(status, {"status": status, "message": message}, headers=headers or {})


class ActitoFake(RecordingFake):
    """Actito's Integration API for one entity and profile table, in memory, on loopback."""

    def __init__(
        self, api_key: str, *, entity: str = "shop", table: str = "Customers",
        segmentations: dict[str, str] | None = None, token_lifetime: float = 900.0, retry_after: str = "0.05",
        latency: float = 0.0,
    ) -> None:  # fmt: skip
        self.api_key = api_key
        self.entity = entity
        self.table = table
        self.segmentations = (
            segmentations if segmentations is not None else {"VIP Europe": "SIMPLE", "Tier": "EXCLUSIVE"}
        )
        self.token_lifetime = token_lifetime
        self.retry_after = retry_after
        self.profiles: list[dict[str, str]] = []
        self.members: dict[str, set[str]] = {name: set() for name in self.segmentations}  # by e-mail
        self.executions: dict[int, Execution] = {}
        self.tokens: dict[str, float] = {}
        self._ids = itertools.count(1)
        self._expire_after: int | None = None
        self._failing: dict[str, tuple[str, str]] = {}
        self._window: deque[float] = deque()
        super().__init__(latency)

    @property
    def requests(self) -> list[FakeRequest]:
        """Every API request (token requests excluded)."""
        return [r for r in self.server.requests if r.path != "/auth/token"]

    @property
    def token_requests(self) -> list[FakeRequest]:
        """Every token request."""
        return [r for r in self.server.requests if r.path == "/auth/token"]

    # -- what tests arrange and read -------------------------------------------------------------------------

    def add_profile(self, **attributes: str) -> dict[str, str]:
        """A profile Actito already holds."""
        with self._lock:
            profile = {"profileId": str(next(self._ids)), **attributes}
            self.profiles.append(profile)
            return profile

    def profile(self, attribute: str, value: str) -> dict[str, str] | None:
        """The profile whose ``attribute`` is ``value``."""
        return next((p for p in self.profiles if p.get(attribute) == value), None)

    def by_email(self) -> dict[str, dict[str, str]]:
        """Every profile's attributes but the e-mail and profileId, by e-mail."""
        return {p["emailAddress"]: {k: v for k, v in p.items() if k not in ("emailAddress", "profileId")}
                for p in self.profiles}  # fmt: skip

    def expire_tokens_after(self, calls: int) -> None:
        """Every token issued so far expires once ``calls`` more API calls were answered."""
        with self._lock:
            self._expire_after = calls

    def expire_tokens(self) -> None:
        """Every token issued so far expires now (the next API call gets a 401)."""
        with self._lock:
            self.tokens = dict.fromkeys(self.tokens, 0.0)

    def fail_keys(self, error_type: str, message: str, *keys: str) -> None:
        """The next import line with one of these key values is in error (once)."""
        with self._lock:
            self._failing.update(dict.fromkeys(keys, (error_type, message)))

    # -- serving ----------------------------------------------------------------------------------------------

    def _app(self, request: FakeRequest) -> FakeResponse:
        if self.latency:
            time.sleep(self.latency)
        with self._lock:
            response = self._answer(request)
            self.answers.append((request.method, request.path, response.status))
            if request.path != "/auth/token" and self._expire_after is not None and response.status != 401:
                self._expire_after -= 1
                if self._expire_after <= 0:
                    self._expire_after = None
                    self.tokens = dict.fromkeys(self.tokens, 0.0)
            return response

    def _answer(self, request: FakeRequest) -> FakeResponse:
        if request.path == "/auth/token" and request.method == "GET":
            if request.headers.get("authorization") != self.api_key:
                return _error(401, "Bad credentials")
            token = f"actito-{next(self._ids)}-{'t' * 24}"
            self.tokens[token] = time.monotonic() + self.token_lifetime
            return FakeResponse(200, {"accessToken": token, "tokenType": "bearer", "expiresIn": f"{int(self.token_lifetime)}s",
                                      "scope": "read write", "jti": "ce6c1d3c"})  # fmt: skip
        token = request.headers.get("authorization", "").removeprefix("Bearer ")
        if self.tokens.get(token, 0.0) <= time.monotonic():
            return _error(401, "Invalid token")
        now = time.monotonic()
        while self._window and self._window[0] <= now - 1.0:
            self._window.popleft()
        if self._throttled or len(self._window) >= RATE:
            self._throttled = max(0, self._throttled - 1)
            return _error(429, "Too many requests", {"Retry-After": self.retry_after})
        self._window.append(now)
        return self._route(request)

    def _route(self, request: FakeRequest) -> FakeResponse:
        method, path = request.method, urllib.parse.unquote(request.path)
        table = f"/v4/entity/{self.entity}/table/{self.table}"
        executions = f"/mass-imports/v5/entities/{self.entity}/etl-executions"
        if path == table and method == "GET":
            return FakeResponse(200, {"name": self.table, "attributes": ATTRIBUTES,
                                      "subscriptions": [{"name": "Newsletter"}],
                                      "segmentations": [{"name": n, "type": t} for n, t in self.segmentations.items()]})  # fmt: skip
        if path == executions and method == "POST":
            return self._start(request)
        if m := re.fullmatch(re.escape(executions) + r"/(\d+)(/errors)?", path):
            return self._execution(int(m.group(1)), bool(m.group(2)))
        if m := re.fullmatch(re.escape(table) + r"/profile/(\w+)=([^/]+)(?:/segmentation/(.+))?", path):
            return self._profile(method, m.group(1), m.group(2), m.group(3))
        if path.startswith("/v4/entity/"):
            return _error(404, f"Table {path.split('/')[5] if len(path.split('/')) > 5 else ''} not found")
        return _error(404, f"{method} {path} is not an endpoint")

    def _start(self, request: FakeRequest) -> FakeResponse:
        parts = _multipart(request)
        if "inputFile" not in parts or "oneShotEtlExecution" not in parts:
            return _error(400, "inputFile and oneShotEtlExecution are required")
        if len(parts["inputFile"]) > MAX_FILE:
            return _error(400, "The file exceeds the maximum size of 100 MB")
        definition = json.loads(parts["oneShotEtlExecution"])
        (mapping,) = definition["mappings"]
        names = {a["name"]: a for a in ATTRIBUTES}
        if mapping["table"]["name"] != self.table:
            return _error(400, f"Profile table {mapping['table']['name']} does not exist")
        if mapping["mode"] not in ("CREATE_UPDATE", "UPDATE_ONLY", "CREATE_ONLY"):
            return _error(400, f"Invalid mode {mapping['mode']}")
        key = mapping["keyAttribute"]
        if not names.get(key, {}).get("unique"):
            return _error(400, f"Attribute {key} is not a unique attribute")
        for column in mapping["attributes"]:
            if column["tableAttribute"] not in names or column["tableAttribute"] in (
                "profileId",
                "creationMoment",
            ):
                return _error(
                    400, f"Attribute {column['tableAttribute']} does not exist in table {self.table}"
                )
        rows = list(csv.DictReader(io.StringIO(parts["inputFile"].decode("utf-8"))))
        execution = Execution(next(self._ids), definition, rows)
        self.executions[execution.id] = execution
        return FakeResponse(201, {"id": execution.id})

    def _execution(self, execution_id: int, errors: bool) -> FakeResponse:
        execution = self.executions.get(execution_id)
        if execution is None:
            return _error(404, f"Execution {execution_id} not found")
        if errors:
            if execution.status != "FINISHED":
                return _error(404, "No report yet")
            text = "lineNumber,errorType,errorMessage\n" + "".join(
                f"{n},{t},{m}\n" for n, t, m in execution.errors
            )
            return FakeResponse(200, text.encode(), headers={"Content-Type": "text/csv"})
        if execution.status == "PENDING":
            execution.status = "RUNNING"
        elif execution.status == "RUNNING":
            self._run(execution)
            execution.status = "FINISHED"
        return FakeResponse(200, {"id": execution.id, "status": execution.status,
                                  "errorLines": len(execution.errors)})  # fmt: skip

    def _run(self, execution: Execution) -> None:
        (mapping,) = execution.definition["mappings"]
        key, mode = mapping["keyAttribute"], mapping["mode"]
        columns = {c["fileColumn"]: c["tableAttribute"] for c in mapping["attributes"]}
        for line, row in enumerate(execution.rows, start=2):
            value = row.get(key, "")
            if value in self._failing:
                kind, message = self._failing.pop(value)
                execution.errors.append((line, kind, message))
                continue
            if key == "emailAddress" and not _EMAIL.fullmatch(value):
                execution.errors.append((line, "INVALID_VALUE", "emailAddress is not a valid e-mail address"))
                continue
            profile = self.profile(key, value)
            if profile is None and mode == "UPDATE_ONLY":
                execution.errors.append((line, "PROFILE_NOT_FOUND", f"No profile with {key} {value}"))
                continue
            if profile is not None and mode == "CREATE_ONLY":
                continue  # CREATE_ONLY loads only lines that match no profile
            if profile is None:
                profile = {"profileId": str(next(self._ids))}
                self.profiles.append(profile)
            for column, attribute in columns.items():
                cell = row.get(column, "")
                if cell == "":
                    profile.pop(attribute, None)
                else:
                    profile[attribute] = cell

    def _profile(self, method: str, key: str, value: str, segmentation: str | None) -> FakeResponse:
        profile = self.profile(key, value)
        if segmentation is None:
            if method != "DELETE":
                return _error(405, "Method not allowed")
            if profile is None:
                return _error(404, "Profile not found")
            self.profiles.remove(profile)
            for members in self.members.values():
                members.discard(profile.get("emailAddress", ""))
            return FakeResponse(200, {"profileId": profile["profileId"]})
        if segmentation not in self.segmentations:
            return _error(404, f"Segmentation {segmentation} not found")
        if profile is None:
            return _error(404, "Profile not found")
        if method == "PUT":
            self.members[segmentation].add(profile.get("emailAddress", ""))
        elif method == "DELETE":
            self.members[segmentation].discard(profile.get("emailAddress", ""))
        return FakeResponse(200, {"profileId": profile["profileId"]})


def _multipart(request: FakeRequest) -> dict[str, bytes]:
    """The parts of a ``multipart/form-data`` body, by name."""
    header = f"Content-Type: {request.headers.get('content-type', '')}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(header + request.raw_body)
    parts = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        parts[str(name)] = part.get_payload(decode=True) or b""
    return parts
