"""A local fake of the Display & Video 360 API v4 (Customer Match first-party audiences) and Google's
OAuth 2.0 token endpoint.

Serves on ``127.0.0.1`` (a free port), keeps everything in memory, and lets a test assert what Display &
Video 360 would hold: each audience's members (hashed e-mails, hashed phones, addresses, device ids)
and every request it got.

Contract (and where each part comes from):

* **Token endpoint** -- ``POST /token`` (Google: ``https://oauth2.googleapis.com/token``), a form body
  ``grant_type=refresh_token``, ``client_id``, ``client_secret``, ``refresh_token``; answers
  ``{"access_token", "expires_in": 3599, "scope", "token_type": "Bearer"}``. A wrong client: HTTP 401
  ``{"error": "invalid_client", "error_description": "Unauthorized"}``; a revoked refresh token: HTTP
  400 ``{"error": "invalid_grant", "error_description": "Token has been expired or revoked."}``.
  https://developers.google.com/identity/protocols/oauth2/web-server#offline
* **Auth** -- ``Authorization: Bearer <token>``; otherwise HTTP 401 ``{"error": {"code": 401,
  "message": "Request had invalid authentication credentials. ...", "status": "UNAUTHENTICATED"}}``
  with ``WWW-Authenticate: Bearer ... error="invalid_token"`` (Google's JSON error format).
* **Audiences** -- ``POST /v4/firstPartyAndPartnerAudiences?advertiserId=`` with ``displayName``,
  ``firstPartyAndPartnerAudienceType`` (first party), ``audienceType`` ``CUSTOMER_MATCH_CONTACT_INFO``
  or ``CUSTOMER_MATCH_DEVICE_ID``, ``membershipDurationDays`` (1-540) and the initial
  ``contactInfoList`` / ``mobileDeviceIdList``; ``GET`` on the same path lists
  ``{"firstPartyAndPartnerAudiences": [...], "nextPageToken"?}`` (``filter=displayName:"x"``:
  "contains"; ``pageSize`` 1-5000); ``GET /v4/firstPartyAndPartnerAudiences/{id}?advertiserId=``;
  ``GET /v4/advertisers/{id}``.
  https://developers.google.com/display-video/api/reference/rest/v4/firstPartyAndPartnerAudiences
* **Members** -- ``POST /v4/firstPartyAndPartnerAudiences/{id}:editCustomerMatchMembers`` with
  ``advertiserId`` and ``added``/``removed`` ``ContactInfoList`` or ``MobileDeviceIdList``, answered
  ``{"firstPartyAndPartnerAudienceId"}``. All or nothing: HTTP 400 ``INVALID_ARGUMENT`` and nothing
  applied for a list of the other kind than the audience's, a hashed field that is not a lower-case
  SHA-256 digest, an unhashed zip or country that looks hashed, an address without all of its four
  fields, a contact info with nothing in it, a ``CONSENT_STATUS_DENIED``, or more than **500,000**
  members after splitting (each e-mail, phone and address of a contact info counts).
* **Rate limits** -- :meth:`DV360Fake.throttle` answers the next calls with HTTP 429
  ``RESOURCE_EXHAUSTED``, as the usage-limits page documents (no ``Retry-After``).
  https://developers.google.com/display-video/api/limits
"""

from __future__ import annotations

import itertools
import re
import time
from dataclasses import dataclass, field
from typing import Any

from dinmo_dagster.fakes.server import FakeRequest, FakeResponse

from .oauth_token import OAuthTokenFake, token_form

API = "/v4/firstPartyAndPartnerAudiences"
MAX_MEMBERS = 500_000
CONTACT_INFO, DEVICE_ID = "CUSTOMER_MATCH_CONTACT_INFO", "CUSTOMER_MATCH_DEVICE_ID"
FIRST_PARTY = "FIRST_PARTY_AND_PARTNER_AUDIENCE_TYPE_FIRST_PARTY"
_SHA256 = re.compile(r"[0-9a-f]{64}")
_COUNTRY = re.compile(r"[A-Z]{2}")
_CONSENT = {"CONSENT_STATUS_UNSPECIFIED", "CONSENT_STATUS_GRANTED", "CONSENT_STATUS_DENIED"}


@dataclass
class Audience:
    """One Customer Match audience and what it holds."""

    id: str
    name: str
    advertiser_id: str
    audience_type: str
    membership_duration_days: int
    emails: set[str] = field(default_factory=set)
    phones: set[str] = field(default_factory=set)
    addresses: set[tuple[str, str, str, str]] = field(default_factory=set)  # first, last, country, zip
    device_ids: set[str] = field(default_factory=set)
    consents: list[dict[str, str]] = field(default_factory=list)  # the consent of every member list received


def google_error(status: int, rpc: str, message: str, headers: dict[str, str] | None = None) -> FakeResponse:
    """Google's JSON error body."""
    return FakeResponse(
        status, {"error": {"code": status, "message": message, "status": rpc}}, headers=headers or {}
    )


def google_token(fake: Any, request: FakeRequest, prefix: str, scope: str) -> FakeResponse:
    """Google's token endpoint answer to a refresh-token grant (``fake`` has ``client_id``,
    ``client_secret``, ``refresh_token`` and issues the token)."""
    form = token_form(request)
    if form.get("client_id") != fake.client_id or form.get("client_secret") != fake.client_secret:
        return FakeResponse(401, {"error": "invalid_client", "error_description": "Unauthorized"})
    if form.get("grant_type") != "refresh_token":
        return FakeResponse(
            400, {"error": "unsupported_grant_type", "error_description": "Invalid grant_type"}
        )
    if form.get("refresh_token") != fake.refresh_token:
        return FakeResponse(
            400, {"error": "invalid_grant", "error_description": "Token has been expired or revoked."}
        )
    token = fake._issue(prefix)
    return FakeResponse(
        200,
        {"access_token": token, "expires_in": fake.token_lifetime, "token_type": "Bearer", "scope": scope},
    )


class _Invalid(Exception):
    pass


class DV360Fake(OAuthTokenFake):
    """The Display & Video 360 API v4 and Google's token endpoint, in memory (a context manager)."""

    token_path = "/token"

    def __init__(
        self, *, client_id: str, client_secret: str, refresh_token: str, advertiser_id: str,
        token_lifetime: float = 3599.0, max_members: int = MAX_MEMBERS, latency: float = 0.0,
    ) -> None:  # fmt: skip
        super().__init__(token_lifetime=token_lifetime)
        self.client_id = client_id
        self.client_secret = client_secret
        self.refresh_token = refresh_token
        self.advertiser_id = advertiser_id
        self.max_members = max_members
        self.latency = latency  # seconds before each API call is answered
        self.page_size_cap = 5000
        self.audiences: dict[str, Audience] = {}
        self._ids = itertools.count(4_000_000_001)

    # -- what tests arrange and read ------------------------------------------------------------------

    def create_audience(self, name: str, audience_type: str = CONTACT_INFO, **members: set[Any]) -> Audience:
        """An audience already in the advertiser, with members (``emails=``, ``device_ids=``...)."""
        audience = Audience(str(next(self._ids)), name, self.advertiser_id, audience_type, 540)
        for key, values in members.items():
            getattr(audience, key).update(values)
        self.audiences[audience.id] = audience
        return audience

    def audience_named(self, name: str) -> Audience | None:
        """The audience of that name, if any."""
        return next((a for a in self.audiences.values() if a.name == name), None)

    def revoke_refresh_token(self) -> None:
        """The refresh token stops working (the user removed the app's access)."""
        self.refresh_token = "revoked-" + self.refresh_token

    # -- serving --------------------------------------------------------------------------------------

    def _token(self, request: FakeRequest) -> FakeResponse:
        return google_token(
            self, request, "ya29.dv360-access", "https://www.googleapis.com/auth/display-video"
        )

    def _api(self, request: FakeRequest) -> FakeResponse:
        if self.latency:
            time.sleep(self.latency)
        if not self._bearer_ok(request):
            return google_error(
                401, "UNAUTHENTICATED",
                "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or "
                "other valid authentication credential.",
                headers={"WWW-Authenticate": 'Bearer realm="https://accounts.google.com/", error="invalid_token"'},
            )  # fmt: skip
        if self._throttled:
            self._throttled -= 1
            return google_error(429, "RESOURCE_EXHAUSTED", "Resource has been exhausted (e.g. check quota).")
        if (planned := self._planned_failure(request)) is not None:
            return planned
        try:
            return self._route(request)
        except _Invalid as exc:
            return google_error(400, "INVALID_ARGUMENT", str(exc))

    def _route(self, request: FakeRequest) -> FakeResponse:
        path = request.path
        if path.startswith("/v4/advertisers/") and request.method == "GET":
            advertiser = path.removeprefix("/v4/advertisers/")
            if advertiser != self.advertiser_id:
                return google_error(403, "PERMISSION_DENIED", "The caller does not have permission")
            return FakeResponse(
                200,
                {
                    "name": f"advertisers/{advertiser}",
                    "advertiserId": advertiser,
                    "displayName": "Fake advertiser",
                },
            )
        if path == API:
            self._check_advertiser(request.query.get("advertiserId"))
            return self._list(request) if request.method == "GET" else self._create(request)
        if (
            path.startswith(API + "/")
            and path.endswith(":editCustomerMatchMembers")
            and request.method == "POST"
        ):
            audience = self.audiences.get(
                path.removeprefix(API + "/").removesuffix(":editCustomerMatchMembers")
            )
            if audience is None:
                return google_error(404, "NOT_FOUND", "Requested entity was not found.")
            return self._edit(audience, request.json or {})
        if path.startswith(API + "/") and request.method == "GET":
            audience = self.audiences.get(path.removeprefix(API + "/"))
            if audience is None:
                return google_error(404, "NOT_FOUND", "Requested entity was not found.")
            return FakeResponse(200, self._view(audience))
        return google_error(404, "NOT_FOUND", f"No route {request.method} {path}")

    def _check_advertiser(self, advertiser: Any) -> None:
        if advertiser is None:
            raise _Invalid("Request contains an invalid argument: advertiserId is required.")
        if str(advertiser) != self.advertiser_id:
            raise _Invalid(
                f"Request contains an invalid argument: advertiser {advertiser} is not accessible."
            )

    def _view(self, audience: Audience) -> dict[str, Any]:
        return {
            "name": f"firstPartyAndPartnerAudiences/{audience.id}",
            "firstPartyAndPartnerAudienceId": audience.id,
            "displayName": audience.name,
            "firstPartyAndPartnerAudienceType": FIRST_PARTY,
            "audienceType": audience.audience_type,
            "audienceSource": "AUDIENCE_SOURCE_UNSPECIFIED",
            "membershipDurationDays": str(audience.membership_duration_days),
        }

    def _list(self, request: FakeRequest) -> FakeResponse:
        size = int(request.query.get("pageSize") or 5000)
        if not 1 <= size <= 5000:
            raise _Invalid("Request contains an invalid argument: pageSize must be between 1 and 5000.")
        size = min(size, self.page_size_cap)
        wanted = None
        if flt := request.query.get("filter"):
            match = re.fullmatch(r'displayName:"((?:[^"\\]|\\.)*)"', flt)
            if match is None:
                raise _Invalid(f"Request contains an invalid argument: invalid filter {flt!r}.")
            wanted = re.sub(r"\\(.)", r"\1", match.group(1))
        mine = [
            a
            for a in self.audiences.values()
            if a.advertiser_id == self.advertiser_id and (wanted is None or wanted.lower() in a.name.lower())
        ]
        start = int(request.query.get("pageToken") or 0)
        body: dict[str, Any] = {}
        page = mine[start : start + size]
        if page:
            body["firstPartyAndPartnerAudiences"] = [self._view(a) for a in page]
        if start + size < len(mine):
            body["nextPageToken"] = str(start + size)
        return FakeResponse(200, body)

    def _create(self, request: FakeRequest) -> FakeResponse:
        spec = request.json or {}
        if not spec.get("displayName"):
            raise _Invalid("Request contains an invalid argument: displayName is required.")
        if spec.get("firstPartyAndPartnerAudienceType") != FIRST_PARTY:
            raise _Invalid("Request contains an invalid argument: only first-party audiences can be created.")
        kind = spec.get("audienceType")
        if kind not in (CONTACT_INFO, DEVICE_ID):
            raise _Invalid(f"Request contains an invalid argument: audienceType {kind!r} cannot be created.")
        try:
            days = int(spec.get("membershipDurationDays"))
        except (TypeError, ValueError):
            days = 0
        if not 1 <= days <= 540:
            raise _Invalid("Request contains an invalid argument: membershipDurationDays must be 1-540.")
        audience = Audience(str(next(self._ids)), spec["displayName"], self.advertiser_id, kind, days)
        lists = {
            "contactInfoList": spec.get("contactInfoList"),
            "mobileDeviceIdList": spec.get("mobileDeviceIdList"),
        }
        apply = self._changes(audience, {f"added{k[0].upper()}{k[1:]}": v for k, v in lists.items() if v})
        apply()
        self.audiences[audience.id] = audience
        return FakeResponse(200, self._view(audience))

    def _edit(self, audience: Audience, body: dict[str, Any]) -> FakeResponse:
        self._check_advertiser(body.get("advertiserId"))
        lists = {k: v for k, v in body.items() if k != "advertiserId"}
        if not lists:
            raise _Invalid("Request contains an invalid argument: no members to add or remove.")
        self._changes(audience, lists)()
        return FakeResponse(200, {"firstPartyAndPartnerAudienceId": audience.id})

    def _changes(self, audience: Audience, lists: dict[str, Any]) -> Any:
        """Validate every list (nothing applied if one is wrong); return the function that applies them."""
        steps = []
        members = 0
        for key, value in lists.items():
            side = "added" if key.startswith("added") else "removed" if key.startswith("removed") else None
            kind = key.removeprefix(side or "")
            if (
                side is None
                or kind not in ("ContactInfoList", "MobileDeviceIdList")
                or not isinstance(value, dict)
            ):
                raise _Invalid(f'Invalid JSON payload received. Unknown name "{key}": Cannot find field.')
            wanted = CONTACT_INFO if kind == "ContactInfoList" else DEVICE_ID
            if audience.audience_type != wanted:
                raise _Invalid(
                    f"Request contains an invalid argument: {key} cannot edit an audience of type "
                    f"{audience.audience_type}."
                )
            consent = value.get("consent") or {}
            for name, status in consent.items():
                if name not in ("adUserData", "adPersonalization") or status not in _CONSENT:
                    raise _Invalid(f"Request contains an invalid argument: consent.{name}.")
                if status == "CONSENT_STATUS_DENIED":
                    raise _Invalid(
                        f"Request contains an invalid argument: consent.{name} is CONSENT_STATUS_DENIED."
                    )
            audience.consents.append(dict(consent))
            if kind == "MobileDeviceIdList":
                ids = value.get("mobileDeviceIds") or []
                if not all(isinstance(i, str) and i for i in ids):
                    raise _Invalid("Request contains an invalid argument: mobileDeviceIds.")
                members += len(ids)
                steps.append((side, "device_ids", set(ids)))
                continue
            infos = value.get("contactInfos") or []
            emails, phones, addresses = set(), set(), set()
            for n, info in enumerate(infos):
                members += self._check_info(n, info)
                emails |= set(info.get("hashedEmails") or [])
                phones |= set(info.get("hashedPhoneNumbers") or [])
                for zip_code in info.get("zipCodes") or []:
                    addresses.add(
                        (info["hashedFirstName"], info["hashedLastName"], info["countryCode"], zip_code)
                    )
            steps += [(side, "emails", emails), (side, "phones", phones), (side, "addresses", addresses)]
        if members > self.max_members:
            raise _Invalid(
                f"Request contains an invalid argument: {members} members after splitting the "
                f"contact_infos; at most {self.max_members}."
            )

        def apply() -> None:
            for side, attr, values in steps:
                target = getattr(audience, attr)
                if side == "added":
                    target |= values
                else:
                    target -= values

        return apply

    @staticmethod
    def _check_info(n: int, info: Any) -> int:
        """The members one ContactInfo splits into; _Invalid when it breaks the reference's rules."""
        where = f"contactInfos[{n}]"
        if not isinstance(info, dict):
            raise _Invalid(f"Request contains an invalid argument: {where}.")
        for key in ("hashedEmails", "hashedPhoneNumbers"):
            for value in info.get(key) or []:
                if not (isinstance(value, str) and _SHA256.fullmatch(value)):
                    raise _Invalid(
                        f"Request contains an invalid argument: {where}.{key} must be SHA256 hashed."
                    )
        address = [k for k in ("hashedFirstName", "hashedLastName", "countryCode", "zipCodes") if info.get(k)]
        if address and len(address) != 4:
            raise _Invalid(
                f"Request contains an invalid argument: {where}: hashedFirstName, hashedLastName, "
                "countryCode and zipCodes must be set together."
            )
        if address:
            for key in ("hashedFirstName", "hashedLastName"):
                if not _SHA256.fullmatch(str(info[key])):
                    raise _Invalid(
                        f"Request contains an invalid argument: {where}.{key} must be SHA256 hashed."
                    )
            if not _COUNTRY.fullmatch(str(info["countryCode"])):
                raise _Invalid(f"Request contains an invalid argument: {where}.countryCode.")
            if any(_SHA256.fullmatch(str(z)) for z in info["zipCodes"]):
                raise _Invalid(f"Request contains an invalid argument: {where}.zipCodes must not be hashed.")
        count = (
            len(info.get("hashedEmails") or [])
            + len(info.get("hashedPhoneNumbers") or [])
            + (len(info["zipCodes"]) if address else 0)
        )
        if not count:
            raise _Invalid(f"Request contains an invalid argument: {where} has no member data.")
        return count
