"""A local fake of Batch's Profile API (CEP) and Custom Data API (MEP).

Serves on ``127.0.0.1`` and keeps what Batch would hold: profiles by Custom ID (attributes, consent, events
in the order received, every one kept: Batch has no de-duplication id), MEP users' custom data, and every
request.

Contract (from Batch's pages, cited in ``dinmo_dagster/platforms/batch.py``):

* **CEP auth** -- ``Authorization: Bearer <REST key>`` and ``X-Batch-Project``: a wrong key is HTTP 401
  ``{"error_code": "AUTHENTICATION_INVALID", ...}``; a missing project header HTTP 400 ``MISSING_PARAMETER``.
* ``POST /2.11/profiles/update`` -- an array of at most 200 operations (more: HTTP 400
  ``TOO_MANY_OPERATIONS``); an operation without ``identifiers.custom_id`` or with a non-array ``events`` is
  HTTP 400 ``MALFORMED_PARAMETER`` for the whole call. Otherwise HTTP 202: attributes are applied (``null``
  deletes one; ``date(x)`` stores ``x`` as a date: a value that is no ISO 8601 time is a partial error;
  ``$email_address`` must look like an e-mail, else a partial error; ``$email_marketing`` / ``$sms_marketing``
  only ``subscribed`` / ``unsubscribed``), events appended; the answer is ``{"code": "SUCCESS"}`` or
  ``{"code": "SUCCESS_WITH_PARTIAL_ERRORS", "errors": [{"index", "attribute", "reason"}]}`` (the faulty
  attribute is ignored, the rest applied).
* **MEP** -- ``POST /1.0/{app key}/data/users`` with ``X-Authorization: <REST key>``: an array of at most
  10,000 ``{"id", "update": {"overwrite", "values"}}``; HTTP 202 ``{"token"}``.
* **Rate limit** -- :meth:`BatchFake.throttle` answers the next calls with HTTP 429 ``TOO_MANY_REQUESTS``
  (no ``Retry-After``).
"""

from __future__ import annotations

import datetime as dt
import itertools
import re
from dataclasses import dataclass, field
from typing import Any

from dinmo_dagster.fakes.server import FakeRequest, FakeResponse
from fakes.common import RecordingFake

MAX_OPERATIONS = 200
MAX_MEP = 10_000
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_TYPED = re.compile(r"(date|url)\((.+)\)")


@dataclass
class Profile:
    """One CEP profile (or MEP user)."""

    custom_id: str
    attributes: dict[str, Any] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)


def _error(status: int, code: str, message: str) -> FakeResponse:
    return FakeResponse(status, {"error_code": code, "error_message": message})


class BatchFake(RecordingFake):
    """Batch's CEP Profile API and MEP Custom Data API in memory, on loopback (a context manager)."""

    def __init__(
        self,
        rest_key: str,
        *,
        project_key: str = "project_shop",
        app_key: str = "APPKEY1",
        latency: float = 0.0,
    ) -> None:
        self.rest_key = rest_key
        self.project_key = project_key
        self.app_key = app_key
        self.profiles: dict[str, Profile] = {}
        self.mep_users: dict[str, Profile] = {}
        self._tokens = itertools.count(1)
        super().__init__(latency)

    def attributes(self) -> dict[str, dict[str, Any]]:
        """Every CEP profile's attributes, by Custom ID."""
        return {p.custom_id: dict(p.attributes) for p in self.profiles.values()}

    # -- serving ------------------------------------------------------------------------------------------

    def _answer(self, request: FakeRequest) -> FakeResponse:
        mep = re.fullmatch(r"/1\.0/([^/]+)/data/users", request.path)
        if mep:
            if request.headers.get("x-authorization") != self.rest_key:
                return _error(401, "AUTHENTICATION_INVALID", "Invalid REST API key")
            if mep.group(1) != self.app_key:
                return _error(404, "ROUTE_NOT_FOUND", "Unknown API key")
        elif request.path == "/2.11/profiles/update":
            if request.headers.get("authorization") != f"Bearer {self.rest_key}":
                return _error(401, "AUTHENTICATION_INVALID", "Invalid REST API key")
            if request.headers.get("x-batch-project") != self.project_key:
                return _error(400, "MISSING_PARAMETER", "X-Batch-Project header is missing or unknown")
        else:
            return _error(404, "ROUTE_NOT_FOUND", f"{request.method} {request.path} is not a route")
        if request.method != "POST":
            return _error(405, "METHOD_NOT_ALLOWED", "POST only")
        if self._throttled:
            self._throttled -= 1
            return _error(429, "TOO_MANY_REQUESTS", "Too many requests, retry in a few seconds")
        body = request.json
        if not isinstance(body, list):
            return _error(400, "MALFORMED_JSON_BODY", "The body must be a JSON array")
        return self._mep(body) if mep else self._profiles(body)

    def _profiles(self, body: list[Any]) -> FakeResponse:
        if len(body) > MAX_OPERATIONS:
            return _error(400, "TOO_MANY_OPERATIONS", f"at most {MAX_OPERATIONS} operations per call")
        for n, op in enumerate(body):
            custom_id = (
                ((op or {}).get("identifiers") or {}).get("custom_id") if isinstance(op, dict) else None
            )
            if not isinstance(custom_id, str) or not custom_id:
                return _error(400, "MALFORMED_PARAMETER", f"[{n}].identifiers.custom_id is required")
            if "events" in op and not isinstance(op["events"], list):
                return _error(400, "MALFORMED_PARAMETER", f"[{n}].events must be an array")
        errors: list[dict[str, Any]] = []
        for n, op in enumerate(body):
            profile = self.profiles.setdefault(
                op["identifiers"]["custom_id"], Profile(op["identifiers"]["custom_id"])
            )
            for name, value in (op.get("attributes") or {}).items():
                problem = _check(name, value)
                if problem:
                    errors.append({"index": n, "attribute": name, "reason": problem})
                    continue
                typed = _TYPED.fullmatch(name)
                key = typed.group(2) if typed else name
                if value is None:
                    profile.attributes.pop(key, None)
                else:
                    profile.attributes[key] = value
            for event in op.get("events") or []:
                profile.events.append(dict(event))
        if errors:
            return FakeResponse(202, {"code": "SUCCESS_WITH_PARTIAL_ERRORS", "errors": errors})
        return FakeResponse(202, {"code": "SUCCESS"})

    def _mep(self, body: list[Any]) -> FakeResponse:
        if len(body) > MAX_MEP:
            return _error(400, "TOO_MANY_USERS", f"at most {MAX_MEP} users per call")
        for n, entry in enumerate(body):
            if not (isinstance(entry, dict) and entry.get("id") and isinstance(entry.get("update"), dict)):
                return _error(400, "MALFORMED_PARAMETER", f"[{n}] needs id and update")
        for entry in body:
            user = self.mep_users.setdefault(entry["id"], Profile(entry["id"]))
            if entry["update"].get("overwrite"):
                user.attributes.clear()
            for name, value in (entry["update"].get("values") or {}).items():
                typed = _TYPED.fullmatch(name)
                key = typed.group(2) if typed else name
                if value is None:
                    user.attributes.pop(key, None)
                else:
                    user.attributes[key] = value
        return FakeResponse(202, {"token": f"t{next(self._tokens)}"})


def _check(name: str, value: Any) -> str | None:
    if value is None:
        return None
    if name in ("$email_marketing", "$sms_marketing") and value not in ("subscribed", "unsubscribed"):
        return f"{name} must be subscribed or unsubscribed"
    if name == "$email_address" and not (isinstance(value, str) and _EMAIL.fullmatch(value)):
        return "$email_address must be a valid email address"
    if name.startswith("date("):
        try:
            dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            return f"{name} must be an ISO 8601 date"
    return None
