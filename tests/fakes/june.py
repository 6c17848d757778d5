"""A local fake of June's tracking HTTP API (identify) that keeps each user's traits.

Contract (cited, and stated as assumed where June's pages are silent, in
``dinmo_dagster/platforms/june.py``):

* **Auth** -- ``Authorization: Basic <write key>``; anything else is HTTP 401 ``{"message": "Invalid
  write key"}``.
* **Identify** -- ``POST /sdk/identify`` with ``userId`` or ``anonymousId`` (else HTTP 400 ``{"message":
  "userId or anonymousId is required"}``) and ``traits`` (an object, merged into the user's); a user
  named by :meth:`JuneFake.refuse` is refused once with HTTP 400; answers ``200 {"status": 200,
  "success": true}``.
* **Rate limit** -- :meth:`JuneFake.throttle` answers HTTP 429 with ``Retry-After: 0``.
"""

from __future__ import annotations

from typing import Any

from dinmo_dagster.fakes.server import FakeRequest, FakeResponse
from fakes.common import RecordingFake


class JuneFake(RecordingFake):
    """One June workspace's users and their traits, served on loopback (a context manager)."""

    def __init__(self, write_key: str, *, latency: float = 0.0) -> None:
        self.write_key = write_key
        self.users: dict[str, dict[str, Any]] = {}
        self._refused: dict[str, str] = {}
        super().__init__(latency)

    def refuse(self, message: str, *user_ids: str) -> None:
        """Refuse the next identify of these users (once) with HTTP 400 ``message``."""
        self._refused.update(dict.fromkeys(user_ids, message))

    def members(self, trait: str) -> set[str]:
        """The users whose ``trait`` is true."""
        return {u for u, traits in self.users.items() if traits.get(trait) is True}

    def _answer(self, request: FakeRequest) -> FakeResponse:
        if request.headers.get("authorization") != f"Basic {self.write_key}":
            return FakeResponse(401, {"message": "Invalid write key"})
        if self._throttled:
            self._throttled -= 1
            return FakeResponse(429, {"message": "Too many requests"}, {"Retry-After": "0"})
        if request.method != "POST" or request.path != "/sdk/identify":
            return FakeResponse(404, {"message": f"No route {request.method} {request.path}"})
        body = request.json if isinstance(request.json, dict) else {}
        user = body.get("userId") or body.get("anonymousId")
        if not user:
            return FakeResponse(400, {"message": "userId or anonymousId is required"})
        if user in self._refused:
            return FakeResponse(400, {"message": self._refused.pop(user)})
        traits = body.get("traits") or {}
        if not isinstance(traits, dict):
            return FakeResponse(400, {"message": "traits must be an object"})
        self.users.setdefault(str(user), {}).update(traits)
        return FakeResponse(200, {"status": 200, "success": True})
