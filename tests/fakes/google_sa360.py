"""A local fake of the Search Ads 360 API v2 (``conversion.insert``) and Google's OAuth 2.0 token endpoint.

Serves on ``127.0.0.1`` (a free port), keeps everything in memory, and lets a test assert what Search Ads
360 would hold: the conversions of each advertiser, keyed by (conversion ID, timestamp) as Google
de-duplicates them, and every request it got.

Contract (and where each part comes from):

* **Token endpoint** -- as Google's (see ``fakes/google_dv360.py``), scope ``doubleclicksearch``.
* **Auth** -- ``Authorization: Bearer <token>``; otherwise HTTP 401 with Google's classic error body
  ``{"error": {"errors": [{"domain": "global", "reason": "authError", "message": "Invalid Credentials",
  "locationType": "header", "location": "Authorization"}], "code": 401, "message": "Invalid Credentials"}}``.
* **Insert** -- ``POST /doubleclicksearch/v2/conversion`` with ``{"kind":
  "doubleclicksearch#conversionList", "conversion": [...]}``; a valid request is answered with the list
  echoed. The whole request is validated first: one invalid conversion fails it with HTTP 400
  ``requestValidation`` ``"The request was not valid. Details: [...]"`` and nothing is inserted. Invalid:
  an empty batch (``[Empty batch encountered.]``, Google's own words), more than **200** conversions
  (assumed limit), another agency or advertiser, no ``clickId`` or one the fake does not know (when
  ``known_clicks`` is set), no ``conversionId``, a ``conversionTimestamp`` that is not epoch
  milliseconds, ``segmentationType`` other than ``FLOODLIGHT``, an unknown Floodlight activity name or
  id, a ``type`` other than ``ACTION``/``TRANSACTION``, ``revenueMicros`` not an integer or on an
  ``ACTION``, a ``currencyCode`` that is not three capital letters, two conversions of the request with
  the same ID and timestamp, or a (conversion ID, timestamp) the advertiser already holds (``already
  exists``: assumed wording).
  https://developers.google.com/search-ads/v2/reference/conversion/insert
* **Saved columns** -- ``GET /doubleclicksearch/v2/agency/{a}/advertiser/{b}/savedcolumns`` answers
  ``{"kind": "doubleclicksearch#savedColumnList", "items": []}``; another agency or advertiser is HTTP 403
  ``insufficientPermissions``.
* **Rate limits** -- :meth:`SA360Fake.throttle` answers the next calls with HTTP 403
  ``userRateLimitExceeded`` (Google's classic usage-limit error); :meth:`exhaust_daily_quota` with 403
  ``dailyLimitExceeded``.
"""

from __future__ import annotations

import re
import time
from typing import Any

from dinmo_dagster.fakes.server import FakeRequest, FakeResponse

from .google_dv360 import google_token
from .oauth_token import OAuthTokenFake

PATH = "/doubleclicksearch/v2/conversion"
MAX_CONVERSIONS = 200
_DIGITS = re.compile(r"-?\d+")


def classic_error(status: int, reason: str, message: str, domain: str = "global") -> FakeResponse:
    """Google's classic (www.googleapis.com) JSON error body."""
    return FakeResponse(
        status,
        {
            "error": {
                "errors": [{"domain": domain, "reason": reason, "message": message}],
                "code": status,
                "message": message,
            }
        },
    )


class _Invalid(Exception):
    pass


class SA360Fake(OAuthTokenFake):
    """The Search Ads 360 API v2 and Google's token endpoint, in memory (a context manager)."""

    token_path = "/token"

    def __init__(
        self, *, client_id: str, client_secret: str, refresh_token: str, agency_id: str, advertiser_id: str,
        activities: dict[str, str] | None = None, token_lifetime: float = 3599.0, latency: float = 0.0,
    ) -> None:  # fmt: skip
        super().__init__(token_lifetime=token_lifetime)
        self.client_id = client_id
        self.client_secret = client_secret
        self.refresh_token = refresh_token
        self.agency_id = agency_id
        self.advertiser_id = advertiser_id
        self.activities = activities or {"Offline purchase": "4321"}  # name -> id
        self.known_clicks: set[str] | None = None
        self.latency = latency
        self.max_conversions = MAX_CONVERSIONS
        # (advertiserId, conversionId, conversionTimestamp) -> the conversion Search Ads 360 holds
        self.conversions: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.inserted: list[dict[str, Any]] = []  # every conversion of every accepted request, in order
        self._quota_gone = False

    # -- what tests arrange and read ------------------------------------------------------------------

    def revoke_refresh_token(self) -> None:
        """The refresh token stops working."""
        self.refresh_token = "revoked-" + self.refresh_token

    def exhaust_daily_quota(self) -> None:
        """Every later call is refused with 403 dailyLimitExceeded."""
        self._quota_gone = True

    def sent_conversions(self) -> list[dict[str, Any]]:
        """Every conversion of every insert request received (accepted or not)."""
        return [c for r in self.requests if r.path == PATH for c in (r.json or {}).get("conversion") or []]

    # -- serving --------------------------------------------------------------------------------------

    def _token(self, request: FakeRequest) -> FakeResponse:
        return google_token(
            self, request, "ya29.sa360-access", "https://www.googleapis.com/auth/doubleclicksearch"
        )

    def _api(self, request: FakeRequest) -> FakeResponse:
        if self.latency:
            time.sleep(self.latency)
        if not self._bearer_ok(request):
            response = classic_error(401, "authError", "Invalid Credentials")
            response.body["error"]["errors"][0].update(
                {"locationType": "header", "location": "Authorization"}
            )
            response.headers["WWW-Authenticate"] = (
                'Bearer realm="https://accounts.google.com/", error="invalid_token"'
            )
            return response
        if self._quota_gone:
            return classic_error(403, "dailyLimitExceeded", "Daily Limit Exceeded", domain="usageLimits")
        if self._throttled:
            self._throttled -= 1
            return classic_error(
                403, "userRateLimitExceeded", "User Rate Limit Exceeded", domain="usageLimits"
            )
        if (planned := self._planned_failure(request)) is not None:
            return planned
        if request.path == PATH and request.method == "POST":
            try:
                return self._insert(request.json or {})
            except _Invalid as exc:
                return classic_error(400, "requestValidation", f"The request was not valid. Details: [{exc}]")
        saved = re.fullmatch(
            r"/doubleclicksearch/v2/agency/(\w+)/advertiser/(\w+)/savedcolumns", request.path
        )
        if saved and request.method == "GET":
            if saved.groups() != (self.agency_id, self.advertiser_id):
                return classic_error(
                    403,
                    "insufficientPermissions",
                    f"The user does not have access to advertiser {saved.group(2)}",
                )
            return FakeResponse(200, {"kind": "doubleclicksearch#savedColumnList", "items": []})
        return classic_error(404, "notFound", "Not Found")

    def _insert(self, body: dict[str, Any]) -> FakeResponse:
        conversions = body.get("conversion")
        if not isinstance(conversions, list) or not conversions:
            raise _Invalid("Empty batch encountered.")
        if len(conversions) > self.max_conversions:
            raise _Invalid(
                f"Too many conversions in one request: {len(conversions)}; at most {self.max_conversions}"
            )
        keys = set()
        for n, conversion in enumerate(conversions):
            key = self._check(n, conversion)
            if key in keys:
                raise _Invalid(
                    f"Conversion {n}: conversion ID and timestamp repeat another conversion of the request"
                )
            if key in self.conversions:
                raise _Invalid(
                    f"Conversion {n}: a conversion with ID {key[1]} and timestamp {key[2]} already exists"
                )
            keys.add(key)
        for conversion in conversions:
            key = (conversion["advertiserId"], conversion["conversionId"], conversion["conversionTimestamp"])
            self.conversions[key] = conversion
            self.inserted.append(conversion)
        return FakeResponse(200, {"kind": "doubleclicksearch#conversionList", "conversion": conversions})

    def _check(self, n: int, c: Any) -> tuple[str, str, str]:
        where = f"Conversion {n}"
        if not isinstance(c, dict):
            raise _Invalid(f"{where}: not an object")
        if str(c.get("agencyId")) != self.agency_id or str(c.get("advertiserId")) != self.advertiser_id:
            raise _Invalid(f"{where}: agency or advertiser is not accessible")
        click = c.get("clickId")
        if not click or (self.known_clicks is not None and click not in self.known_clicks):
            raise _Invalid(f"{where}: invalid click ID")
        if not c.get("conversionId"):
            raise _Invalid(f"{where}: conversionId is required")
        if not _DIGITS.fullmatch(str(c.get("conversionTimestamp") or "")):
            raise _Invalid(f"{where}: conversionTimestamp must be epoch milliseconds")
        if c.get("segmentationType") != "FLOODLIGHT":
            raise _Invalid(f"{where}: segmentationType must be FLOODLIGHT")
        name, ident = c.get("segmentationName"), c.get("segmentationId")
        if (
            (name is None) == (ident is None)
            or (name is not None and name not in self.activities)
            or (ident is not None and str(ident) not in self.activities.values())
        ):
            raise _Invalid(f"{where}: unknown Floodlight activity")
        if c.get("type") not in ("ACTION", "TRANSACTION"):
            raise _Invalid(f"{where}: type must be ACTION or TRANSACTION")
        if "revenueMicros" in c and (
            c["type"] != "TRANSACTION" or not _DIGITS.fullmatch(str(c["revenueMicros"]))
        ):
            raise _Invalid(f"{where}: revenueMicros must be an integer of a TRANSACTION")
        if "currencyCode" in c and not re.fullmatch(r"[A-Z]{3}", str(c["currencyCode"])):
            raise _Invalid(f"{where}: invalid currencyCode")
        return (str(c["advertiserId"]), str(c["conversionId"]), str(c["conversionTimestamp"]))
