"""A fake HubSpot CRM API, written from HubSpot's documentation (the pages cited in
``dinmo_dagster/platforms/hubspot.py``), not from our client.

``dinmo demo`` serves it for the quickstart's ``crm`` destination (see ``dinmo_dagster.fakes.local``)
and the tests run it on a free port. With ``data_file`` its records survive a restart (the demo keeps
them under ``<project>/.hubspot/``), as a real account's would.

What it implements, as documented:

- ``Authorization: Bearer <token>`` on every call; a missing or wrong token gets ``401`` with
  ``category: INVALID_AUTHENTICATION``; a token without the object's write scope gets ``403``
  ``MISSING_SCOPES`` with ``errors[].context.requiredGranularScopes``.
- ``POST /crm/v3/objects/{t}/batch/upsert|update|create|read|archive`` (and the dated
  ``/crm/objects/2026-03/{t}/...`` paths) over an in-memory store of records with numeric ids.
- More than 100 inputs: ``400 VALIDATION_ERROR`` (wording modelled on HubSpot's answer to the
  50-input limit of property-history reads), and nothing is written.
- Property validation: an unknown property (``PROPERTY_DOESNT_EXIST``), an invalid e-mail
  (``INVALID_EMAIL``) or a read-only property (``READ_ONLY_VALUE``) fails its input with HubSpot's
  ``Property values were not valid: [...]`` message. With ``objectWriteTraceId`` on every input the
  answer is ``207`` with ``results`` and ``errors[].context.objectWriteTraceId`` (multi-status: the
  valid inputs are written); without, the whole batch gets ``400`` and nothing is written.
- ``update`` of a record that does not exist: ``OBJECT_NOT_FOUND`` (context ``ids``); ``create`` of
  a contact whose e-mail exists: ``CONFLICT`` "Contact already exists. Existing ID: N".
- ``GET /crm/v3/properties/{t}``: the object's property definitions (``hasUniqueValue``,
  ``modificationMetadata.readOnlyValue``); ``GET /crm/v3/objects/{t}?limit=1``.
- Rate limits: a rolling window (``rate_limit`` requests per ``window_ms``) and an optional daily
  limit, counted on arrival; every answer carries ``X-HubSpot-RateLimit-Max``, ``-Remaining``,
  ``-Interval-Milliseconds`` (and ``-Daily``, ``-Daily-Remaining`` when a daily limit is set); over
  the limit: ``429`` with ``{"status": "error", "errorType": "RATE_LIMIT", "policyName":
  "TEN_SECONDLY_ROLLING" | "DAILY", ...}``.
- ``queue(status, body, headers)``: answer the next requests with these (a 429 storm, a 503).
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from typing_extensions import Self

from dinmo_dagster.fakes.server import FakeRequest, FakeResponse, FakeServer

MAX_INPUTS = 100
_PATH = re.compile(r"/crm/(?:v3/objects|objects/\d{4}-\d{2})/(?P<object>[^/]+)(?:/batch/(?P<action>[a-z]+))?")
_PROPERTIES_PATH = re.compile(r"/crm/(?:v3/properties|properties/\d{4}-\d{2})/(?P<object>[^/]+)")
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[a-zA-Z]{2,}")

# Property definitions per object: name -> (type, hasUniqueValue, readOnlyValue).
DEFAULT_SCHEMAS: dict[str, dict[str, tuple[str, bool, bool]]] = {
    "contacts": {
        "email": ("string", False, False),
        "firstname": ("string", False, False),
        "lastname": ("string", False, False),
        "phone": ("string", False, False),
        "lifetime_value": ("number", False, False),
        "vip": ("bool", False, False),
        "signup_date": ("date", False, False),
        "hs_object_id": ("number", True, True),
        "createdate": ("datetime", False, True),
    },
    "companies": {
        "domain": ("string", False, False),
        "name": ("string", False, False),
        "hs_object_id": ("number", True, True),
    },
    "deals": {
        "dealname": ("string", False, False),
        "amount": ("number", False, False),
        "external_deal_id": ("string", True, False),
        "hs_object_id": ("number", True, True),
    },
    "2-9001": {
        "external_id": ("string", True, False),
        "name": ("string", False, False),
        "hs_object_id": ("number", True, True),
    },
}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())


def _error(status: int, category: str, message: str, **extra: Any) -> FakeResponse:
    body = {"status": "error", "message": message, "correlationId": str(uuid.uuid4()), "category": category}
    body.update(extra)
    return FakeResponse(status, body)


class FakeHubSpot:
    """The fake's state and its request handler; ``with FakeHubSpot(token) as hs:`` serves it.

    ``port`` 0 picks a free loopback port; a taken one raises ``OSError`` here. ``data_file``: a JSON
    file the records are read from at start and written to after every write request.
    """

    def __init__(
        self,
        token: str,
        *,
        rate_limit: int = 100,
        window_ms: int = 10_000,
        daily_limit: int | None = None,
        scopes: set[str] | None = None,
        port: int = 0,
        data_file: Path | None = None,
    ) -> None:
        self.token = token
        self.rate_limit = rate_limit
        self.window_ms = window_ms
        self.daily_limit = daily_limit
        self.scopes = scopes  # None: every scope
        self.schemas = {name: dict(props) for name, props in DEFAULT_SCHEMAS.items()}
        self.store: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in self.schemas}
        self.archived: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in self.schemas}
        self.batch_sizes: list[int] = []  # inputs of every batch request received
        self.throttled = 0  # 429s answered
        self._arrivals: deque[float] = deque()
        self._daily_used = 0
        self._next_id = 1000
        self._queued: deque[FakeResponse] = deque()
        self._lock = threading.Lock()
        self.data_file = data_file
        if data_file is not None and data_file.exists():
            self._load(data_file)
        self.server = FakeServer(self.handle, port=port)

    # -- test helpers ---------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The fake's base URL (``base_url`` of the destination)."""
        return self.server.url

    @property
    def requests(self) -> list[FakeRequest]:
        """Every request received, in arrival order."""
        return self.server.requests

    def queue(
        self, status: int, body: Any = None, headers: dict[str, str] | None = None, times: int = 1
    ) -> None:
        """Answer the next ``times`` requests with this response (after authentication)."""
        for _ in range(times):
            self._queued.append(FakeResponse(status, body, dict(headers or {})))

    def records(self, obj: str = "contacts") -> dict[str, dict[str, Any]]:
        """Live records of ``obj`` by their unique value (email, domain, ...) or id: properties only."""
        key = {"contacts": "email", "companies": "domain", "2-9001": "external_id"}.get(obj)
        return {
            str(rec["properties"].get(key) if key else rec["id"]): dict(rec["properties"])
            for rec in self.store[obj].values()
        }

    def seed(self, obj: str, properties: dict[str, Any]) -> str:
        """Put a record in the store directly; returns its id."""
        with self._lock:
            rid = self._new_record(obj, {k: str(v) for k, v in properties.items()})["id"]
            self._save()
            return rid

    def __enter__(self) -> Self:
        self.server.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.__exit__(*exc)

    # -- persistence (data_file) ---------------------------------------------------------------------

    def _load(self, path: Path) -> None:
        saved = json.loads(path.read_text(encoding="utf-8"))
        for obj in self.schemas:
            self.store[obj] = dict(saved.get("store", {}).get(obj, {}))
            self.archived[obj] = dict(saved.get("archived", {}).get(obj, {}))
        self._next_id = int(saved.get("next_id", self._next_id))

    def _save(self) -> None:
        """Write the records to ``data_file`` (called under the lock); a crash mid-write keeps the old file."""
        if self.data_file is None:
            return
        self.data_file.parent.mkdir(parents=True, exist_ok=True)
        temp = self.data_file.with_name(self.data_file.name + ".tmp")
        temp.write_text(json.dumps({"store": self.store, "archived": self.archived, "next_id": self._next_id}),
                        encoding="utf-8")
        os.replace(temp, self.data_file)

    # -- request handling ----------------------------------------------------------------------------

    def handle(self, request: FakeRequest) -> FakeResponse:
        """Authenticate, rate-limit, then route."""
        auth = request.headers.get("authorization", "")
        if not auth.startswith("Bearer "):
            return _error(
                401,
                "INVALID_AUTHENTICATION",
                "Authentication credentials not found. This API supports OAuth 2.0 authentication and you "
                "can find more details at https://developers.hubspot.com/docs/methods/auth/oauth-overview",
            )
        if auth.removeprefix("Bearer ") != self.token:
            return _error(
                401,
                "INVALID_AUTHENTICATION",
                "The OAuth token used to make this call expired or is not valid for this account.",
            )
        with self._lock:
            limited = self._rate_limit(request)
            if limited is not None:
                return limited
            headers = self._rate_headers()
            if self._queued:
                queued = self._queued.popleft()
                return FakeResponse(queued.status, queued.body, {**headers, **queued.headers})
            response = self._route(request)
            if request.method == "POST" and not request.path.endswith("/batch/read") and response.status < 300:
                self._save()
        response.headers = {**headers, **response.headers}
        return response

    def _rate_limit(self, request: FakeRequest) -> FakeResponse | None:
        now = request.arrived
        while self._arrivals and self._arrivals[0] <= now - self.window_ms / 1000:
            self._arrivals.popleft()
        if self.daily_limit is not None and self._daily_used >= self.daily_limit:
            self.throttled += 1
            response = self._throttle("You have reached your daily limit.", "DAILY")
            response.headers = self._rate_headers()
            return response
        if len(self._arrivals) >= self.rate_limit:
            self.throttled += 1
            response = self._throttle(
                "You have reached your ten_secondly_rolling limit.", "TEN_SECONDLY_ROLLING"
            )
            response.headers = self._rate_headers()
            return response
        self._arrivals.append(now)
        self._daily_used += 1
        return None

    @staticmethod
    def _throttle(message: str, policy: str) -> FakeResponse:
        # The documented 429 body: no category, but errorType and policyName.
        return FakeResponse(
            429,
            {
                "status": "error",
                "message": message,
                "errorType": "RATE_LIMIT",
                "correlationId": str(uuid.uuid4()),
                "policyName": policy,
            },
        )

    def _rate_headers(self) -> dict[str, str]:
        headers = {
            "X-HubSpot-RateLimit-Max": str(self.rate_limit),
            "X-HubSpot-RateLimit-Remaining": str(max(0, self.rate_limit - len(self._arrivals))),
            "X-HubSpot-RateLimit-Interval-Milliseconds": str(self.window_ms),
        }
        if self.daily_limit is not None:
            headers["X-HubSpot-RateLimit-Daily"] = str(self.daily_limit)
            headers["X-HubSpot-RateLimit-Daily-Remaining"] = str(max(0, self.daily_limit - self._daily_used))
        return headers

    def _route(self, request: FakeRequest) -> FakeResponse:
        props = _PROPERTIES_PATH.fullmatch(request.path)
        if props and request.method == "GET":
            obj = props["object"]
            if obj not in self.schemas:
                return self._unknown_object(obj)
            return FakeResponse(
                200, {"results": [self._property_def(n, d) for n, d in self.schemas[obj].items()]}
            )
        match = _PATH.fullmatch(request.path)
        if not match:
            return _error(404, "OBJECT_NOT_FOUND", f"No route for {request.method} {request.path}")
        obj, action = match["object"], match["action"]
        if obj not in self.schemas:
            return self._unknown_object(obj)
        if action is None and request.method == "GET":
            limit = int(request.query.get("limit", "10"))
            return FakeResponse(200, {"results": list(self.store[obj].values())[:limit]})
        if request.method != "POST" or action not in ("upsert", "update", "create", "read", "archive"):
            return _error(405, "VALIDATION_ERROR", f"{request.method} is not allowed here")
        scope = "crm.objects.custom.write" if obj.startswith(("2-", "p")) else f"crm.objects.{obj}.write"
        if self.scopes is not None and action != "read" and scope not in self.scopes:
            return _error(
                403,
                "MISSING_SCOPES",
                "This app hasn't been granted all required scopes to make this call. Read more about "
                "required scopes here: https://developers.hubspot.com/scopes.",
                errors=[
                    {
                        "message": "One or more of the following scopes are required.",
                        "context": {"requiredGranularScopes": [scope]},
                    }
                ],
            )
        body = request.json
        inputs = body.get("inputs") if isinstance(body, dict) else None
        if not isinstance(inputs, list) or not inputs:
            return _error(400, "VALIDATION_ERROR", "Invalid input JSON: 'inputs' must be a non-empty list")
        self.batch_sizes.append(len(inputs))
        if len(inputs) > MAX_INPUTS:
            return _error(
                400,
                "VALIDATION_ERROR",
                f"The maximum number of inputs supported in a batch request is {MAX_INPUTS}. "
                "Please reduce the number of items and try again",
            )
        return getattr(self, f"_batch_{action}")(obj, body, inputs)

    def _unknown_object(self, obj: str) -> FakeResponse:
        return _error(404, "OBJECT_NOT_FOUND", f"Unable to infer object type from: {obj}")

    def _property_def(self, name: str, definition: tuple[str, bool, bool]) -> dict[str, Any]:
        kind, unique, read_only = definition
        return {
            "name": name,
            "label": name.replace("_", " ").title(),
            "type": kind,
            "fieldType": "text",
            "hasUniqueValue": unique,
            "modificationMetadata": {
                "archivable": True,
                "readOnlyDefinition": True,
                "readOnlyValue": read_only,
            },
        }

    # -- store helpers -------------------------------------------------------------------------------

    def _find(self, obj: str, prop: str | None, value: str) -> dict[str, Any] | None:
        if prop in (None, "hs_object_id"):
            return self.store[obj].get(str(value))
        for rec in self.store[obj].values():
            found = rec["properties"].get(prop)
            if found is not None and (
                found.lower() == str(value).lower() if prop == "email" else found == value
            ):
                return rec
        return None

    def _new_record(self, obj: str, properties: dict[str, str]) -> dict[str, Any]:
        self._next_id += 1
        rid = str(self._next_id)
        rec = {
            "id": rid,
            "properties": {"hs_object_id": rid},
            "createdAt": _now(),
            "updatedAt": _now(),
            "archived": False,
        }
        self._apply(rec, properties)
        self.store[obj][rid] = rec
        return rec

    @staticmethod
    def _apply(rec: dict[str, Any], properties: dict[str, Any]) -> None:
        for name, value in properties.items():
            if value == "" or value is None:
                rec["properties"].pop(name, None)  # an empty string clears the property
            else:
                rec["properties"][name] = value.lower() if name == "email" else value
        rec["updatedAt"] = _now()

    def _invalid(self, obj: str, properties: dict[str, Any]) -> list[dict[str, Any]]:
        problems = []
        schema = self.schemas[obj]
        for name, value in properties.items():
            if name not in schema:
                problems.append(
                    {
                        "isValid": False,
                        "message": f'Property "{name}" does not exist',
                        "error": "PROPERTY_DOESNT_EXIST",
                        "name": name,
                    }
                )
            elif schema[name][2] and name != "hs_object_id":
                problems.append(
                    {
                        "isValid": False,
                        "message": f'"{name}" is a read only property; its value cannot be set.',
                        "error": "READ_ONLY_VALUE",
                        "name": name,
                    }
                )
            elif name == "email" and value and not _EMAIL.fullmatch(str(value)):
                problems.append(
                    {
                        "isValid": False,
                        "message": f"Email address {value} is invalid",
                        "error": "INVALID_EMAIL",
                        "name": name,
                    }
                )
        return problems

    def _validation_error(self, problems: list[dict[str, Any]], trace: str | None) -> dict[str, Any]:
        error: dict[str, Any] = {
            "status": "error",
            "category": "VALIDATION_ERROR",
            "message": f"Property values were not valid: {json.dumps(problems)}",
        }
        if trace is not None:
            error["context"] = {"objectWriteTraceId": [trace]}
        return error

    def _batch_answer(
        self,
        inputs: list[dict[str, Any]],
        results: list[dict[str, Any]],
        errors: list[dict[str, Any]],
        ok_status: int = 200,
    ) -> FakeResponse:
        body: dict[str, Any] = {
            "status": "COMPLETE",
            "results": results,
            "startedAt": _now(),
            "completedAt": _now(),
        }
        if not errors:
            return FakeResponse(ok_status, body)
        body["numErrors"] = len(errors)
        body["errors"] = errors
        return FakeResponse(207, body)

    def _multi_status(self, inputs: list[dict[str, Any]]) -> bool:
        return all(isinstance(i, dict) and i.get("objectWriteTraceId") for i in inputs)

    def _write(
        self, obj: str, inputs: list[dict[str, Any]], one: Callable[[dict[str, Any]], tuple[Any, Any]]
    ) -> FakeResponse | tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Run ``one(input) -> (result | None, error | None)`` on each input; without multi-status
        the first error refuses the whole batch and nothing is written."""
        multi = self._multi_status(inputs)
        if not multi:
            for item in inputs:
                error = self._check(obj, item)
                if error is not None:
                    return FakeResponse(400, {**error, "correlationId": str(uuid.uuid4())})
        results, errors = [], []
        for item in inputs:
            result, error = one(item)
            if error is not None:
                errors.append(error)
            else:
                if multi:
                    result = {**result, "objectWriteTraceId": item["objectWriteTraceId"]}
                results.append(result)
        return results, errors

    def _check(self, obj: str, item: dict[str, Any]) -> dict[str, Any] | None:
        problems = self._invalid(obj, item.get("properties") or {})
        return self._validation_error(problems, item.get("objectWriteTraceId")) if problems else None

    # -- batch endpoints -----------------------------------------------------------------------------

    def _batch_upsert(self, obj: str, body: dict[str, Any], inputs: list[dict[str, Any]]) -> FakeResponse:
        for item in inputs:
            prop = item.get("idProperty")
            unique = prop in self.schemas[obj] and self.schemas[obj][prop][1]
            if not (unique or (obj == "contacts" and prop == "email")) or prop == "hs_object_id":
                return _error(
                    400, "VALIDATION_ERROR", f"idProperty {prop!r} is not a unique property of {obj}"
                )

        def one(item: dict[str, Any]):
            error = self._check(obj, item)
            if error is not None:
                return None, error
            prop, value = item["idProperty"], str(item["id"])
            if prop == "email" and not _EMAIL.fullmatch(value):
                return None, self._validation_error(
                    [
                        {
                            "isValid": False,
                            "message": f"Email address {value} is invalid",
                            "error": "INVALID_EMAIL",
                            "name": "email",
                        }
                    ],
                    item.get("objectWriteTraceId"),
                )
            rec = self._find(obj, prop, value)
            new = rec is None
            if new:
                rec = self._new_record(obj, {prop: value, **(item.get("properties") or {})})
            else:
                self._apply(rec, item.get("properties") or {})
            return {**rec, "new": new}, None

        answer = self._write(obj, inputs, one)
        return answer if isinstance(answer, FakeResponse) else self._batch_answer(inputs, *answer)

    def _batch_update(self, obj: str, body: dict[str, Any], inputs: list[dict[str, Any]]) -> FakeResponse:
        def one(item: dict[str, Any]):
            error = self._check(obj, item)
            if error is not None:
                return None, error
            rec = self._find(obj, item.get("idProperty"), str(item.get("id")))
            if rec is None:
                error = {
                    "status": "error",
                    "category": "OBJECT_NOT_FOUND",
                    "message": f"Could not get some {obj.upper()} objects, they may be deleted or not exist. "
                    "Check that ids are valid.",
                    "context": {"ids": [str(item.get("id"))]},
                }
                if item.get("objectWriteTraceId"):
                    error["context"]["objectWriteTraceId"] = [item["objectWriteTraceId"]]
                return None, error
            self._apply(rec, item.get("properties") or {})
            return dict(rec), None

        answer = self._write(obj, inputs, one)
        return answer if isinstance(answer, FakeResponse) else self._batch_answer(inputs, *answer)

    def _batch_create(self, obj: str, body: dict[str, Any], inputs: list[dict[str, Any]]) -> FakeResponse:
        def one(item: dict[str, Any]):
            error = self._check(obj, item)
            if error is not None:
                return None, error
            properties = item.get("properties") or {}
            if obj == "contacts" and properties.get("email"):
                existing = self._find(obj, "email", properties["email"])
                if existing is not None:
                    context: dict[str, list[str]] = {"existingId": [existing["id"]]}
                    if item.get("objectWriteTraceId"):
                        context["objectWriteTraceId"] = [item["objectWriteTraceId"]]
                    return None, {
                        "status": "error",
                        "category": "CONFLICT",
                        "message": f"Contact already exists. Existing ID: {existing['id']}",
                        "context": context,
                    }
            return self._new_record(obj, properties), None

        answer = self._write(obj, inputs, one)
        return (
            answer if isinstance(answer, FakeResponse) else self._batch_answer(inputs, *answer, ok_status=201)
        )

    def _batch_read(self, obj: str, body: dict[str, Any], inputs: list[dict[str, Any]]) -> FakeResponse:
        prop = body.get("idProperty")
        wanted = body.get("properties") or []
        results, missing = [], []
        for item in inputs:
            rec = self._find(obj, prop, str(item.get("id")))
            if rec is None:
                missing.append(str(item.get("id")))
            else:
                shown = {
                    k: v
                    for k, v in rec["properties"].items()
                    if not wanted or k in wanted or k == "hs_object_id"
                }
                results.append({**rec, "properties": shown})
        errors = []
        if missing:
            errors.append(
                {
                    "status": "error",
                    "category": "OBJECT_NOT_FOUND",
                    "message": f"Could not get some {obj.upper()} objects, they may be deleted or not exist. "
                    "Check that ids are valid.",
                    "context": {"ids": missing},
                }
            )
        return self._batch_answer(inputs, results, errors)

    def _batch_archive(self, obj: str, body: dict[str, Any], inputs: list[dict[str, Any]]) -> FakeResponse:
        for item in inputs:
            rec = self.store[obj].pop(str(item.get("id")), None)
            if rec is not None:
                rec["archived"] = True
                self.archived[obj][rec["id"]] = rec
        return FakeResponse(204)
