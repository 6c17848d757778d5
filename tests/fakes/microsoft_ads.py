"""A local fake of Microsoft Advertising's Campaign Management REST API v13 (customer lists) and of the
Microsoft identity platform's token endpoint.

Serves on ``127.0.0.1`` (a free port), keeps everything in memory, and lets a test assert what Microsoft
would hold: each customer list's members (e-mail digests) and every request it got.

Contract, from Microsoft's documentation (learn.microsoft.com/advertising; where the REST pages do not
say, the fake's choice is marked *assumed*):

* **Token endpoint** -- ``POST /common/oauth2/v2.0/token`` (``login.microsoftonline.com``), a form body
  ``client_id``, ``client_secret``, ``grant_type=refresh_token``, ``refresh_token`` and ``scope``
  (required; ``https://ads.microsoft.com/msads.manage`` must be in it). Answers ``{"token_type":
  "Bearer", "scope", "expires_in": 3599, "access_token", "refresh_token"}`` with a new refresh token each
  time (the previous ones stay valid). A wrong client: HTTP 401 ``invalid_client`` (AADSTS7000215); a
  revoked refresh token: HTTP 400 ``invalid_grant`` with the description Microsoft's guide quotes; no
  scope: HTTP 400 ``invalid_request`` (AADSTS900144).
  https://learn.microsoft.com/advertising/guides/authentication-oauth-get-tokens
* **Headers** -- ``Authorization: Bearer <token>``, ``DeveloperToken``, ``CustomerId``,
  ``CustomerAccountId``. An expired token: HTTP 401 ``AdApiFaultDetail`` code 109
  ``AuthenticationTokenExpired``; an unknown token or developer token: HTTP 401 code 105
  ``InvalidCredentials``; a missing account header: HTTP 400 ``ApiFaultDetail`` operation error 116
  ``RequestMissingHeaders``; another customer or account: HTTP 403 code 106 ``UserIsNotAuthorized``
  (the HTTP statuses of REST faults are assumed; the codes and messages are Microsoft's).
* **Faults** -- ``{"TrackingId", "Type": "ApiFaultDetail", "BatchErrors": [], "OperationErrors": [{"Code",
  "Details", "ErrorCode", "Message"}]}`` (HTTP 400, assumed) or ``{"TrackingId", "Type":
  "AdApiFaultDetail", "Errors": [...]}``.
* **Throttling** -- :meth:`MicrosoftAdsFake.throttle` answers the next calls with HTTP 429 and an
  ``AdApiFaultDetail`` of code 117 ``CallRateExceeded`` (assumed status; no ``Retry-After``: Microsoft
  says to wait 60 seconds).
* **Lists** -- ``POST /CampaignManagement/v13/Audiences`` (AddAudiences: at most 100, each ``Type:
  CustomerList``, ``Name`` of 1-128 characters, ``ParentId``, ``Scope``) answers ``{"AudienceIds": [...],
  "PartialErrors": [...]}``; ``POST /CampaignManagement/v13/Audiences/QueryByIds`` (GetAudiencesByIds:
  ``Type`` required, no ids: every list of the account; unknown ids: ``null`` plus a partial error 4835
  ``InvalidAudienceId``).
* **Members** -- ``POST /CampaignManagement/v13/CustomerListUserData/Apply`` with ``{"CustomerListUserData":
  {"ActionType": "Add" | "Remove" | "Replace", "AudienceId", "CustomerListItemSubType": "Email",
  "CustomerListItems": [...], "AcceptCustomerMatchTerm"?}}``. Refused whole (an operation error, nothing
  applied): more than **1,000** items (6999 ``CampaignServiceBatchLimitExceeded``), another action
  (8001), another sub type (8002 ``CustomerListItemSubTypeNotSupported``: Phone and CRM are "not
  currently supported"), an unknown list (8000 ``InvalidCustomerListId``), the Customer Match terms
  neither accepted in the UI (:attr:`terms_accepted_in_ui`) nor by ``AcceptCustomerMatchTerm: true``
  (8003 ``CustomerListTermsAndConditionsNotAccepted``). Per item, in ``PartialErrors`` with the item's
  ``Index``: not a 64-character lower-case hex SHA-256 (8004 ``EmailMustBeHashed``), or a refusal a test
  planned with :meth:`MicrosoftAdsFake.refuse_item`. ``Replace`` removes every member, then adds the
  items (the Bulk Customer List page's meaning).
  https://learn.microsoft.com/advertising/campaign-management-service/applycustomerlistuserdata
"""

from __future__ import annotations

import itertools
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from dinmo_dagster.fakes.server import FakeRequest, FakeResponse

from .oauth_token import OAuthTokenFake, token_form

API = "/CampaignManagement/v13"
MAX_ITEMS = 1_000
SCOPE = "https://ads.microsoft.com/msads.manage"
_SHA256 = re.compile(r"[0-9a-f]{64}")
_RATE = (
    "You have exceeded the number of calls that you are allowed to make in a minute. Please reduce the "
    "number of calls that you make per minute."
)
_TERMS = "The Customer Match 'Terms And Conditions' are not yet Accepted in the Microsoft Advertising web UI."


@dataclass
class CustomerList:
    """One customer list audience."""

    id: str
    name: str
    parent_id: str
    scope: str = "Account"
    membership_duration: int = 30
    description: str | None = None
    members: set[str] = field(default_factory=set)


def _error(code: int, error_code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"Code": code, "Details": None, "ErrorCode": error_code, "Message": message, **extra}


def _fault(status: int, code: int, error_code: str, message: str) -> FakeResponse:
    """An ``ApiFaultDetail`` with one operation error."""
    return FakeResponse(
        status,
        {
            "TrackingId": str(uuid.uuid4()),
            "Type": "ApiFaultDetail",
            "BatchErrors": [],
            "OperationErrors": [_error(code, error_code, message)],
        },
    )


def _ad_fault(status: int, code: int, error_code: str, message: str) -> FakeResponse:
    """An ``AdApiFaultDetail`` (authentication, throttling)."""
    return FakeResponse(
        status,
        {
            "TrackingId": str(uuid.uuid4()),
            "Type": "AdApiFaultDetail",
            "Errors": [_error(code, error_code, message)],
        },
    )


class MicrosoftAdsFake(OAuthTokenFake):
    """Microsoft Advertising's customer lists and token endpoint, in memory (a context manager)."""

    token_path = "/common/oauth2/v2.0/token"

    def __init__(
        self,
        *,
        client_id: str,
        client_secret: str,
        refresh_token: str,
        developer_token: str,
        customer_id: str,
        account_id: str,
        token_lifetime: float = 3599.0,
        latency: float = 0.0,
    ) -> None:
        super().__init__(token_lifetime=token_lifetime)
        self.client_id = client_id
        self.client_secret = client_secret
        self.refresh_tokens = {refresh_token}
        self.developer_token = developer_token
        self.customer_id = customer_id
        self.account_id = account_id
        self.latency = latency
        self.terms_accepted_in_ui = True
        self.lists: dict[str, CustomerList] = {}
        self.in_flight = 0
        self._refusals: dict[str, tuple[int, str, str]] = {}
        self._ids = itertools.count(512_345_678)
        self._flight = threading.Lock()

    # -- what tests arrange and read ------------------------------------------------------------------

    def create_list(
        self, name: str, members: set[str] | None = None, parent_id: str | None = None
    ) -> CustomerList:
        """A customer list already in the account."""
        audience = CustomerList(str(next(self._ids)), name, parent_id or self.account_id)
        audience.members |= members or set()
        self.lists[audience.id] = audience
        return audience

    def list_named(self, name: str) -> CustomerList | None:
        """The customer list of that name, if any."""
        return next((a for a in self.lists.values() if a.name == name), None)

    def refuse_item(self, digest: str, code: int, error_code: str, message: str) -> None:
        """The next Apply carrying ``digest`` refuses that item (a partial error), applying the others."""
        self._refusals[digest] = (code, error_code, message)

    def revoke_refresh_token(self) -> None:
        """Every refresh token stops working (the user removed the app's consent)."""
        self.refresh_tokens.clear()

    def applied(self, action: str | None = None) -> list[dict[str, Any]]:
        """The ``CustomerListUserData`` of every Apply request received (of ``action``)."""
        return [
            r.json["CustomerListUserData"]
            for r in self.requests
            if r.path.endswith("/CustomerListUserData/Apply")
            and isinstance(r.json, dict)
            and (action is None or r.json["CustomerListUserData"].get("ActionType") == action)
        ]

    # -- serving --------------------------------------------------------------------------------------

    def _app(self, request: FakeRequest) -> FakeResponse:
        with self._flight:
            self.in_flight += 1
        try:
            if self.latency and not self._is_token_path(request.path):
                time.sleep(self.latency)
            return super()._app(request)
        finally:
            with self._flight:
                self.in_flight -= 1

    def _token(self, request: FakeRequest) -> FakeResponse:
        form = token_form(request)
        if form.get("client_id") != self.client_id or form.get("client_secret") != self.client_secret:
            return FakeResponse(
                401,
                {
                    "error": "invalid_client",
                    "error_description": "AADSTS7000215: Invalid client secret provided.",
                    "error_codes": [7000215],
                },
            )
        if form.get("grant_type") != "refresh_token":
            return FakeResponse(
                400,
                {
                    "error": "unsupported_grant_type",
                    "error_description": "AADSTS70003: The app requested an unsupported grant type.",
                },
            )
        if not form.get("scope"):
            return FakeResponse(
                400,
                {
                    "error": "invalid_request",
                    "error_description": "AADSTS900144: The "
                    "request body must contain the following parameter: 'scope'.",
                },
            )
        if form.get("refresh_token") not in self.refresh_tokens or SCOPE not in form["scope"].split():
            return FakeResponse(
                400,
                {
                    "error": "invalid_grant",
                    "error_description": "The user could not be "
                    "authenticated or the grant is expired. The user must first sign in and if "
                    "needed grant the client application access to the requested scope.",
                },
            )
        token = self._issue("EwBQA8l6BAAU", "Z")
        rotated = f"M.C5{uuid.uuid4().hex}"
        self.refresh_tokens.add(rotated)
        return FakeResponse(
            200,
            {
                "token_type": "Bearer",
                "scope": SCOPE,
                "expires_in": self.token_lifetime,
                "ext_expires_in": self.token_lifetime,
                "access_token": token,
                "refresh_token": rotated,
            },
        )

    def _api(self, request: FakeRequest) -> FakeResponse:
        token = request.headers.get("authorization", "").removeprefix("Bearer ")
        if token in self.tokens and not self._bearer_ok(request):
            return _ad_fault(
                401,
                109,
                "AuthenticationTokenExpired",
                "Authentication token expired. Please renew it or obtain a new token.",
            )
        if not self._bearer_ok(request) or request.headers.get("developertoken") != self.developer_token:
            return _ad_fault(
                401,
                105,
                "InvalidCredentials",
                "Authentication failed. Either supplied credentials are invalid or the account is inactive",
            )
        if not request.headers.get("customerid") or not request.headers.get("customeraccountid"):
            return _fault(
                400,
                116,
                "RequestMissingHeaders",
                "One or more required header elements are missing from the request.",
            )
        if (request.headers["customerid"], request.headers["customeraccountid"]) != (
            self.customer_id,
            self.account_id,
        ):
            return _ad_fault(
                403, 106, "UserIsNotAuthorized", "The user is not authorized to perform this action."
            )
        if self._throttled:
            self._throttled -= 1
            return _ad_fault(429, 117, "CallRateExceeded", _RATE)
        if (planned := self._planned_failure(request)) is not None:
            return planned
        body = request.json if isinstance(request.json, dict) else {}
        if request.method == "POST" and request.path == f"{API}/Audiences":
            return self._add_audiences(body)
        if request.method == "POST" and request.path == f"{API}/Audiences/QueryByIds":
            return self._query(body)
        if request.method == "POST" and request.path == f"{API}/CustomerListUserData/Apply":
            return self._apply(body)
        return FakeResponse(
            404, {"Message": f"No HTTP resource was found that matches the request URI '{request.path}'."}
        )

    def _view(self, audience: CustomerList) -> dict[str, Any]:
        return {
            "Id": audience.id,
            "Name": audience.name,
            "Type": "CustomerList",
            "ParentId": audience.parent_id,
            "Scope": audience.scope,
            "MembershipDuration": audience.membership_duration,
            "Description": audience.description,
            "SearchSize": None,
            "AudienceNetworkSize": None,
        }

    def _add_audiences(self, body: dict[str, Any]) -> FakeResponse:
        audiences = body.get("Audiences")
        if not isinstance(audiences, list) or not audiences:
            return _fault(400, 4836, "AudienceIdsNotPassed", "Audiences are required.")
        if len(audiences) > 100:
            return _fault(
                400,
                6999,
                "CampaignServiceBatchLimitExceeded",
                "The maximum number of items per request would be exceeded.",
            )
        ids: list[str | None] = []
        errors = []
        for i, spec in enumerate(audiences):
            name = spec.get("Name") if isinstance(spec, dict) else None
            if (
                spec.get("Type") != "CustomerList"
                or spec.get("ParentId") is None
                or spec.get("Scope") not in ("Account", "Customer")
                or not isinstance(name, str)
                or not 1 <= len(name) <= 128
            ):
                ids.append(None)
                errors.append(_error(4852, "InvalidAudience", "The audience is invalid.", Index=i))
                continue
            if any(a.name == name for a in self.lists.values()):
                ids.append(None)
                errors.append(_error(4853, "DuplicateAudienceName", "Audience name is duplicate.", Index=i))
                continue
            duration = int(spec.get("MembershipDuration") or 30)
            audience = CustomerList(
                str(next(self._ids)),
                name,
                str(spec["ParentId"]),
                spec["Scope"],
                duration,
                spec.get("Description"),
            )
            self.lists[audience.id] = audience
            ids.append(audience.id)
        return FakeResponse(200, {"AudienceIds": ids, "PartialErrors": errors or None})

    def _query(self, body: dict[str, Any]) -> FakeResponse:
        if body.get("Type") != "CustomerList":
            return FakeResponse(200, {"Audiences": [], "PartialErrors": None})
        ids = body.get("AudienceIds") or []
        if not ids:
            return FakeResponse(
                200, {"Audiences": [self._view(a) for a in self.lists.values()], "PartialErrors": None}
            )
        found, errors = [], []
        for i, audience_id in enumerate(ids):
            audience = self.lists.get(str(audience_id))
            found.append(self._view(audience) if audience else None)
            if audience is None:
                errors.append(_error(4835, "InvalidAudienceId", "The audience ID is invalid.", Index=i))
        return FakeResponse(200, {"Audiences": found, "PartialErrors": errors or None})

    def _apply(self, body: dict[str, Any]) -> FakeResponse:
        data = body.get("CustomerListUserData")
        if not isinstance(data, dict):
            return _fault(400, 100, "NullRequest", "The request message is null.")
        if data.get("ActionType") not in ("Add", "Remove", "Replace"):
            return _fault(
                400,
                8001,
                "InvalidCustomerListActionType",
                "The Customer List Action Type can only be Add, Replace, or Delete.",
            )
        if data.get("CustomerListItemSubType") != "Email":
            return _fault(
                400,
                8002,
                "CustomerListItemSubTypeNotSupported",
                "The Customer List Item sub type is not supported.",
            )
        audience = self.lists.get(str(data.get("AudienceId")))
        if audience is None:
            return _fault(400, 8000, "InvalidCustomerListId", "Invalid CustomerList Id")
        items = data.get("CustomerListItems") or []
        if not isinstance(items, list):
            return _fault(400, 8000, "InvalidCustomerListId", "Invalid CustomerList Id")
        if len(items) > MAX_ITEMS:
            return _fault(
                400,
                6999,
                "CampaignServiceBatchLimitExceeded",
                "The maximum number of items per request would be exceeded.",
            )
        accepted = data.get("AcceptCustomerMatchTerm")
        if accepted is False or (accepted is None and not self.terms_accepted_in_ui):
            return _fault(400, 8003, "CustomerListTermsAndConditionsNotAccepted", _TERMS)
        errors, good = [], set()
        for i, item in enumerate(items):
            if not (isinstance(item, str) and _SHA256.fullmatch(item)):
                errors.append(
                    _error(
                        8004,
                        "EmailMustBeHashed",
                        "Email address can't be in plain text and must be hashed.",
                        Index=i,
                    )
                )
            elif item in self._refusals:
                code, error_code, message = self._refusals.pop(item)
                errors.append(_error(code, error_code, message, Index=i))
            else:
                good.add(item)
        if data["ActionType"] == "Replace":
            audience.members = good
        elif data["ActionType"] == "Add":
            audience.members |= good
        else:
            audience.members -= good
        return FakeResponse(200, {"PartialErrors": errors or None})
