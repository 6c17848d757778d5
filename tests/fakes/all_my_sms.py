"""A local fake of All My SMS's contact lists: lists and the mobile numbers they hold.

Contract (cited, and stated as assumed where the manual could not be read, in
``dinmo_dagster/platforms/all_my_sms.py``):

* **Auth** -- HTTP Basic ``login:api_key``; anything else is HTTP 401 ``{"code": 401, "description":
  "Authentication failed"}``.
* **Lists** -- ``GET /contacts/lists`` -> ``{"lists": [{"id", "name"}]}``; ``GET /contacts/lists/{id}``;
  ``POST /contacts/lists {"name"}`` -> ``201 {"id"}``; an unknown list is HTTP 404 ``{"code": 404,
  "description": "List not found"}``.
* **Members** -- ``POST /contacts/lists/{id}/contacts {"contacts": [{"mobile"}]}`` and ``DELETE
  /contacts/lists/{id}/contacts {"mobiles"}``: more than 500 numbers is HTTP 400 ``{"code": 400,
  "description": "Too many contacts (500 max)"}``; a number that is not international digits
  (``33612345678``), or one named by :meth:`AllMySmsFake.refuse`, is listed in ``invalid`` and not added.
* **Rate limit** -- :meth:`AllMySmsFake.throttle` answers HTTP 429 with ``Retry-After: 0``.
"""

from __future__ import annotations

import base64
import itertools
import re
from typing import Any

from dinmo_dagster.fakes.server import FakeRequest, FakeResponse
from fakes.common import RecordingFake

MAX_NUMBERS = 500
_NUMBER = re.compile(r"[1-9]\d{7,14}")


class AllMySmsFake(RecordingFake):
    """One All My SMS account's contact lists, served on loopback (a context manager)."""

    def __init__(self, login: str, api_key: str, *, latency: float = 0.0) -> None:
        self.auth = "Basic " + base64.b64encode(f"{login}:{api_key}".encode()).decode()
        self.lists: dict[int, dict[str, Any]] = {}  # id -> {"name", "members": set}
        self._ids = itertools.count(501)
        self._refused: set[str] = set()
        super().__init__(latency)

    def create_list(self, name: str) -> dict[str, Any]:
        """A list already in the account."""
        new = self.lists[next(self._ids)] = {"name": name, "members": set()}
        return new

    def members(self, name: str) -> set[str]:
        """The numbers of the list of that name."""
        return next(v["members"] for v in self.lists.values() if v["name"] == name)

    def refuse(self, *mobiles: str) -> None:
        """Report these numbers as invalid (once each)."""
        self._refused.update(mobiles)

    def _answer(self, request: FakeRequest) -> FakeResponse:
        if request.headers.get("authorization") != self.auth:
            return FakeResponse(401, {"code": 401, "description": "Authentication failed"})
        if self._throttled:
            self._throttled -= 1
            return FakeResponse(429, {"code": 429, "description": "Too many requests"}, {"Retry-After": "0"})
        return self._route(request)

    def _route(self, request: FakeRequest) -> FakeResponse:
        method, path, body = request.method, request.path, request.json or {}
        if path == "/contacts/lists" and method == "GET":
            return FakeResponse(200, {"lists": [{"id": i, "name": v["name"]} for i, v in self.lists.items()]})
        if path == "/contacts/lists" and method == "POST":
            if not body.get("name"):
                return FakeResponse(400, {"code": 400, "description": "name is required"})
            new_id = next(self._ids)
            self.lists[new_id] = {"name": body["name"], "members": set()}
            return FakeResponse(201, {"id": new_id})
        m = re.fullmatch(r"/contacts/lists/(\d+)(/contacts)?", path)
        if m is None:
            return FakeResponse(404, {"code": 404, "description": f"No route {method} {path}"})
        found = self.lists.get(int(m.group(1)))
        if found is None:
            return FakeResponse(404, {"code": 404, "description": "List not found"})
        if m.group(2) is None and method == "GET":
            return FakeResponse(
                200, {"id": int(m.group(1)), "name": found["name"], "size": len(found["members"])}
            )
        mobiles = (
            [c.get("mobile") for c in body.get("contacts") or []]
            if method == "POST"
            else body.get("mobiles") or []
        )
        if len(mobiles) > MAX_NUMBERS:
            return FakeResponse(400, {"code": 400, "description": f"Too many contacts ({MAX_NUMBERS} max)"})
        if method == "DELETE":
            before = len(found["members"])
            found["members"].difference_update(mobiles)
            return FakeResponse(200, {"deleted": before - len(found["members"])})
        invalid = [
            n for n in mobiles if not (isinstance(n, str) and _NUMBER.fullmatch(n)) or n in self._refused
        ]
        self._refused.difference_update(invalid)
        found["members"].update(n for n in mobiles if n not in invalid)
        return FakeResponse(200, {"added": len(mobiles) - len(invalid), "invalid": invalid})
