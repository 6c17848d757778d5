"""Microsoft Advertising (Bing): ``audiences`` (Customer Match customer lists, Campaign Management API v13).

**Target.** The activation's ``audience``: ``{name: "VIP Europe"}`` (looked up among the ad account's
customer lists, created when missing) or ``{id: "512345678"}`` (a customer list's id). The destination
names the manager account (``customer_id``, sent as the ``CustomerId`` header) and the ad account
(``account_id``, the ``CustomerAccountId`` header and the new list's ``ParentId``).

**Operations** (``add``, ``remove``, ``replace``) on the REST endpoints of the Campaign Management
service, ``https://campaign.api.bingads.microsoft.com/CampaignManagement/v13`` (sandbox:
``https://campaign.api.sandbox.bingads.microsoft.com``, set as ``base_url``):

- ``POST /CustomerListUserData/Apply`` (the REST form of ``ApplyCustomerListUserData``) with
  ``{"CustomerListUserData": {"ActionType": "Add" | "Remove" | "Replace", "AudienceId": "<id>",
  "CustomerListItemSubType": "Email", "CustomerListItems": ["<sha-256>", ...]}}``: one request per batch,
  one item per record, at most **1,000 items per call** (documented: "The maximum user data for
  CustomerListItems is 1000"). ``ApplyCustomerListItems`` (``/CustomerListItems/Apply``) is not used:
  Microsoft marks it deprecated. The Bulk API's Customer List Item records are not used either: they
  need an upload/poll cycle for what one JSON call does.
- The answer is ``{"PartialErrors": [BatchError, ...]}``: each ``BatchError``'s ``Index`` is the
  position of the refused item in ``CustomerListItems``; that record is rejected with Microsoft's
  ``Message`` and ``ErrorCode`` (the next sync sends it again), the others are accepted.
- ``replace`` (a full sync): the first batch of the operation goes with ``ActionType: Replace`` (the
  other workers wait for it), the following ones with ``Add``. Microsoft's Bulk "Customer List" page
  documents Replace as "all previous customer match data for this list will be removed" and the items
  sent added; the ``CustomerListActionType`` page says only "replace the customer list item", so the
  same meaning is assumed for ``ApplyCustomerListUserData``. A full sync with no record sends
  ``Replace`` with an empty ``CustomerListItems`` to leave the list empty (assumed: not documented
  either way). A replace killed midway is sent again whole by the next sync.
- find a list by name: ``POST /Audiences/QueryByIds`` (``GetAudiencesByIds``) with ``{"Type":
  "CustomerList"}`` and no ids ("all customer and account scoped audiences for the specified
  account"), keeping those whose ``Name`` matches; two lists of that name are a configuration error.
  Create it: ``POST /Audiences`` (``AddAudiences``) with ``{"Audiences": [{"Type": "CustomerList",
  "Name", "ParentId": <account_id>, "Scope": "Account", "MembershipDuration": -1}]}``; the answer's
  ``AudienceIds[0]`` (``null`` with a ``PartialErrors`` entry when refused). ``MembershipDuration``
  defaults here to ``-1`` ("no expiration", documented on the CustomerList page) instead of
  Microsoft's 30 days, so members a sync added are not dropped a month later
  (``membership_duration_days`` sets 1-390 instead; ``list_scope: Customer`` shares the list with
  every account of the manager account, ``ParentId`` then being ``customer_id``).

**Customer Match terms.** Microsoft refuses customer data until the advertiser accepted the Customer
Match terms, either once in the Microsoft Advertising UI (Tools > Audiences > Create, a customer match
list, "I accept"), or per request with ``AcceptCustomerMatchTerm: true``. The setting
``accept_customer_match_terms: true`` sends it in every call (by setting it, the advertiser accepts
the terms, https://go.microsoft.com/fwlink/?linkid=2106709); left unset it is not sent (the UI
acceptance applies); ``false`` sends ``false``, which Microsoft answers with error 8003. Error 8003
``CustomerListTermsAndConditionsNotAccepted`` (in a fault or a partial error) stops the sync with a
message saying both ways to accept them: no record of the list could be delivered.

**Identifiers** (``identifiers:`` names): ``email`` only (``CustomerListItemSubType: Email``); Microsoft
documents ``Phone`` and ``CRM`` as "Not currently supported". The address is trimmed and lower-cased,
then hashed with SHA-256 as a 64-character lower-case hex string, as ``CustomerListUserData`` requires
(a value that already is such a digest passes unchanged; a raw address is never sent). Microsoft's
customer-list pages state no further normalization; its UET enhanced-conversions guide also removes
dots and ``+alias`` from the user name before hashing, which is **not** applied here (assumed: that
guide is written for conversions, and Microsoft's own CustomerListItem examples hash the address as
given, e.g. ``test@contoso.com`` -> ``f25ad364...0101`` on the Bulk page; the example digest on the
``CustomerListUserData`` page, ``a8e34c39...ad76``, is not the SHA-256 of the address it names).
A record with no e-mail, or one that is not an address, is rejected before anything is sent.

**Errors.** A refused call is a fault: ``{"TrackingId", "Type": "ApiFaultDetail", "OperationErrors":
[{"Code", "ErrorCode", "Message", "Details"}], "BatchErrors": [...]}`` or ``{"Type":
"AdApiFaultDetail", "Errors": [...]}`` (the HTTP status of a REST fault is not documented; read here
by its codes whatever the status, 401/403/429/5xx by theirs). Read:

- ``117 CallRateExceeded`` (or HTTP 429): the rate limit; Microsoft says to "resubmit the request under
  the limit after waiting 60 seconds": every worker holds for ``Retry-After`` when given, else 60 s;
- ``109 AuthenticationTokenExpired`` or HTTP 401: the access token is renewed once and the request sent
  again; ``105 InvalidCredentials`` (a wrong access or developer token), ``106 UserIsNotAuthorized``
  and a second refusal stop the sync with Microsoft's message;
- ``0 InternalError`` and 5xx: retried with backoff;
- ``8003`` (terms): stops the sync (see above); ``8000 InvalidCustomerListId``, ``4835
  InvalidAudienceId``, ``4861 AudienceIdDoNotMatchAudienceType``, ``1102
  CampaignServiceInvalidAccountId``, ``116 RequestMissingHeaders``: stop the sync (the list or the
  account is wrong, no record can be delivered); any other fault rejects the batch's records with
  Microsoft's message and code, and ``BatchErrors`` with an ``Index`` reject that record only.

**Limits as data.** 1,000 items per call (documented). Microsoft throttles the Campaign Management
service per user and per customer in a sliding 60-second window without publishing the figure; the
SDK keeps to 120 calls per 60 seconds (assumed) with two in flight, and ``117`` governs beyond that.

**Authentication.** OAuth 2.0 with the Microsoft identity platform (see ``oauth.py``): a web app's
``client_id`` and ``client_secret`` and a user's ``refresh_token`` are exchanged at
``https://login.microsoftonline.com/common/oauth2/v2.0/token`` (``grant_type=refresh_token``, ``scope``
``https://ads.microsoft.com/msads.manage offline_access``, all in the form body) for an access token
lasting ``expires_in`` seconds (about an hour), renewed before it expires, kept in memory only and sent
as ``Authorization: Bearer <token>`` with the ``DeveloperToken``, ``CustomerId`` and
``CustomerAccountId`` headers (the REST names; SOAP's ``AuthenticationToken`` header is not used).
Microsoft returns a new refresh token with each access token: it replaces the configured one for the
rest of the process (the configured one stays valid until it expires).

Microsoft's documentation this adapter follows (https://learn.microsoft.com/advertising/...):

- ApplyCustomerListUserData (REST URL, body, ``AcceptCustomerMatchTerm``, 1,000 items, PartialErrors):
  https://learn.microsoft.com/advertising/campaign-management-service/applycustomerlistuserdata
  (``&pivots=rest`` for the REST form; the pages below likewise)
- CustomerListUserData, CustomerListActionType, CustomerListItemSubType:
  https://learn.microsoft.com/advertising/campaign-management-service/customerlistuserdata ,
  .../customerlistactiontype , .../customerlistitemsubtype
- ApplyCustomerListItems (deprecated):
  https://learn.microsoft.com/advertising/campaign-management-service/applycustomerlistitems
- AddAudiences, GetAudiencesByIds, CustomerList (Name 128 characters, ParentId, Scope, MembershipDuration):
  https://learn.microsoft.com/advertising/campaign-management-service/addaudiences ,
  .../getaudiencesbyids , .../customerlist
- Bulk Customer List (Replace semantics) and Customer List Item (SHA-256, 64 hex characters):
  https://learn.microsoft.com/advertising/bulk-service/customer-list#actiontype ,
  https://learn.microsoft.com/advertising/bulk-service/customer-list-item
- Customer lists and the terms (UI or ``AcceptCustomerMatchTerm``):
  https://learn.microsoft.com/advertising/guides/universal-event-tracking#customerlist
- Request headers (Authorization, DeveloperToken, CustomerId, CustomerAccountId), faults
  (ApiFaultDetail, AdApiFaultDetail, BatchError, OperationError), throttling (117) and error codes:
  https://learn.microsoft.com/advertising/guides/services-protocol#throttling ,
  https://learn.microsoft.com/advertising/guides/handle-service-errors-exceptions ,
  https://learn.microsoft.com/advertising/guides/operation-error-codes
- OAuth (token endpoint, scope, refresh):
  https://learn.microsoft.com/advertising/guides/authentication-oauth-get-tokens
- The SOAP API ends on January 31, 2027 (REST is the way on):
  https://learn.microsoft.com/advertising/guides/migrate-to-rest
"""

from __future__ import annotations

import logging
import re
import threading
import weakref
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

import pydantic
from pydantic import Field, SecretStr

from dinmo_dagster.platforms import register_platform
from dinmo_dagster.platforms.audiences import AudiencePlatform, AudienceTarget, IdentifierTable, OAuthBearer
from dinmo_dagster.platforms.base import (
    BatchOutcome,
    HttpResponse,
    Limits,
    PlatformSettings,
    PreparedRequest,
    Record,
    RecordResult,
    ResponseKind,
    Signal,
    parse_retry_after,
)
from dinmo_dagster.platforms.errors import PlatformConfigError
from dinmo_dagster.platforms.identifiers import IdentifierSpec, normalize_email
from dinmo_dagster.platforms.oauth import OAuthSettings, OAuthToken

if TYPE_CHECKING:
    from dinmo_dagster.platforms.http import Transport

__all__ = ["MicrosoftAds", "MicrosoftAdsSettings", "MicrosoftAudienceTarget"]

logger = logging.getLogger("dinmo_dagster.platforms")

API = "/CampaignManagement/v13"
TOKEN_URL = "https://login.microsoftonline.com/common/oauth2/v2.0/token"
SCOPE = "https://ads.microsoft.com/msads.manage offline_access"
MAX_ITEMS_PER_CALL = 1_000
LIMITS = Limits(
    max_records_per_batch=MAX_ITEMS_PER_CALL, requests_per_window=120, window_seconds=60.0, max_concurrency=2
)
CALL_RATE_EXCEEDED = 117
TOKEN_EXPIRED = 109
AUTH_CODES = frozenset({105, 106, TOKEN_EXPIRED})
INTERNAL_ERROR = 0
TERMS_NOT_ACCEPTED = 8003
# Faults about the list or the account: no record can be delivered, the sync stops.
FATAL_CODES = frozenset({8000, 4835, 4861, 1102, 116})
_DIGITS = re.compile(r"\d+")
_ACTIONS = {"add": "Add", "remove": "Remove", "replace": "Replace"}
_TERMS = (
    "Microsoft Advertising refused the customer data of {target}: the Customer Match terms are not accepted "
    "(CustomerListTermsAndConditionsNotAccepted, 8003); accept them in the Microsoft Advertising UI "
    "(Tools > Audiences > Create > Customer match list, select I accept) or set "
    "accept_customer_match_terms: true in the destination"
)

# identifiers: name -> (CustomerListItemSubType, how it is prepared)
_SUBTYPES = IdentifierTable({
    "email": ("Email", IdentifierSpec("email", hashed=True, normalize=lambda text, _: normalize_email(text))),
})  # fmt: skip


class MicrosoftAudienceTarget(AudienceTarget):
    """The customer list an activation fills: ``{name: ...}`` (created when missing) or ``{id: ...}``."""

    noun = "customer list"
    max_name_length = 128  # CustomerList.Name: "a maximum of 128 characters"

    name: str | None = Field(default=None, description="The customer list's name (128 characters at most).")
    id: str | None = Field(default=None, description="The customer list's id (digits).")
    description: str | None = Field(
        default=None, max_length=1024, description="Description of a list created by name (1,024 characters)."
    )


def _as_text(value: Any) -> Any:
    """YAML reads an unquoted id as a number: taken as its digits (also where the project file is checked)."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


NumericId = Annotated[str, pydantic.BeforeValidator(_as_text)]


def _digits(value: Any, what: str) -> Any:
    text = str(value).strip() if isinstance(value, (str, int)) and not isinstance(value, bool) else value
    if not (isinstance(text, str) and _DIGITS.fullmatch(text)):
        raise ValueError(f"found {value!r}; allowed: {what}")
    return text


class MicrosoftAdsSettings(OAuthSettings):
    """Settings of a ``type: microsoft_ads`` destination (``audience`` comes from the activation)."""

    service: Literal["audiences"] = Field(description="audiences (Customer Match customer lists).")
    developer_token: SecretStr = Field(
        description="The Microsoft Advertising developer token ({env: VAR}); secret."
    )
    customer_id: NumericId = Field(description="The manager account (customer) id: the CustomerId header.")
    account_id: NumericId = Field(description="The ad account id: the CustomerAccountId header.")
    scope: str | None = Field(default=SCOPE, description="OAuth scopes asked for with each token.")
    accept_customer_match_terms: bool | None = Field(
        default=None,
        description="true: accept the Customer Match terms with every call (AcceptCustomerMatchTerm); "
        "unset: the terms accepted in the Microsoft Advertising UI apply.",
    )
    list_scope: Literal["Account", "Customer"] = Field(
        default="Account",
        description="Scope of a list created by name: Account, or Customer (every account).",
    )
    membership_duration_days: int = Field(
        default=-1,
        description="MembershipDuration of a list created by name: -1 (no expiration) or 1-390 days.",
    )
    audience: MicrosoftAudienceTarget | None = Field(
        default=None, description="The list; from the activation."
    )

    @pydantic.field_validator("customer_id", mode="before")
    @classmethod
    def _check_customer(cls, value: Any) -> Any:
        return _digits(value, "the manager account's numeric customer id, such as 251186883")

    @pydantic.field_validator("account_id", mode="before")
    @classmethod
    def _check_account(cls, value: Any) -> Any:
        return _digits(value, "the ad account's numeric id (not its account number), such as 149123456")

    @pydantic.field_validator("developer_token")
    @classmethod
    def _check_developer_token(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().strip():
            raise ValueError("is empty; allowed: the developer token of the Microsoft Advertising API")
        return value

    @pydantic.field_validator("membership_duration_days")
    @classmethod
    def _check_duration(cls, value: int) -> int:
        if value != -1 and not 1 <= value <= 390:
            raise ValueError(f"found {value}; allowed: -1 (no expiration) or 1 to 390 days")
        return value


def _errors(body: Any) -> list[Mapping[str, Any]]:
    """Every error object of a fault (OperationErrors, BatchErrors, Errors) or an answer's PartialErrors."""
    if not isinstance(body, dict):
        return []
    if isinstance(body.get("ApplicationFault"), dict):  # a wrapped fault
        body = body["ApplicationFault"]
    found = []
    for key in ("OperationErrors", "BatchErrors", "Errors", "PartialErrors"):
        for error in body.get(key) or []:
            if isinstance(error, dict):
                found.append(error)
    return found


def _code(error: Mapping[str, Any]) -> int | None:
    try:
        return int(error.get("Code"))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _codes(response: HttpResponse) -> set[int]:
    return {c for e in _errors(response.json()) if (c := _code(e)) is not None}


def _describe(error: Mapping[str, Any]) -> str:
    """``Message (ErrorCode Code)``."""
    message = str(error.get("Message") or error.get("Details") or "refused")
    label = " ".join(str(p) for p in (error.get("ErrorCode"), error.get("Code")) if p not in (None, ""))
    return f"{message} ({label})" if label else message


class MicrosoftAds(OAuthBearer, AudiencePlatform):
    """Microsoft Advertising customer lists: add, remove, replace members (module docstring)."""

    name = "microsoft_ads"
    settings_model: ClassVar[type[PlatformSettings]] = MicrosoftAdsSettings
    services: ClassVar[Mapping[str, tuple[str, ...]]] = {"audiences": ("add", "remove", "replace")}
    default_base_url = "https://campaign.api.bingads.microsoft.com"
    limits = LIMITS
    audience_label = "Microsoft Advertising customer list"
    audience_noun = "customer list"
    identifier_table = _SUBTYPES
    audiences_taking = "Microsoft Advertising customer lists"
    # Microsoft: after 117 CallRateExceeded, "resubmit the request under the limit after waiting 60 seconds"
    call_rate_wait_seconds: ClassVar[float] = 60.0

    settings: MicrosoftAdsSettings

    def __init__(self, settings: PlatformSettings, *, destination: str = "") -> None:
        super().__init__(settings, destination=destination)
        self.oauth = OAuthToken(self, default_token_url=TOKEN_URL)
        self._replace_lock = threading.Lock()
        # transport (one per delivery) -> its replace already sent Replace
        self._replaced: weakref.WeakKeyDictionary[Transport, bool] = weakref.WeakKeyDictionary()

    # -- auth -------------------------------------------------------------------------------------

    def auth_headers(self) -> dict[str, str]:
        """The bearer token with the developer token and the two account headers."""
        return {
            **super().auth_headers(),
            "DeveloperToken": self.settings.developer_token.get_secret_value(),
            "CustomerId": self.settings.customer_id,
            "CustomerAccountId": self.settings.account_id,
        }

    def renew_auth(self, response: HttpResponse, sent: Mapping[str, str]) -> bool:
        """An expired token (109, or a 401 not saying 106): renew it once."""
        codes = _codes(response)
        expired = TOKEN_EXPIRED in codes or (response.status == 401 and 106 not in codes)
        return self.oauth is not None and expired and self.oauth.renew(sent)

    # -- requests -----------------------------------------------------------------------------------

    def _apply_request(self, action: str, items: Sequence[str], ref: str | None = None) -> PreparedRequest:
        data: dict[str, Any] = {
            "ActionType": action,
            "AudienceId": ref or self._audience_ref(),
            "CustomerListItemSubType": "Email",
            "CustomerListItems": list(items),
        }
        if self.settings.accept_customer_match_terms is not None:
            data["AcceptCustomerMatchTerm"] = self.settings.accept_customer_match_terms
        return PreparedRequest(
            "POST", f"{API}/CustomerListUserData/Apply", json={"CustomerListUserData": data}
        )

    def record_input(self, operation: str, record: Record) -> str:
        """The record's e-mail digest (one CustomerListItems entry)."""
        return _SUBTYPES.by_kind(record.identifiers)["Email"]

    def build_request(
        self, operation: str, inputs: Sequence[Any], records: Sequence[Record]
    ) -> PreparedRequest:
        """One ApplyCustomerListUserData call for the batch (the first of a replace: Replace)."""
        return self._apply_request(_ACTIONS[operation], inputs)

    def deliver_batch(
        self, operation: str, records: Sequence[Record], inputs: Sequence[Any], transport: Transport
    ) -> BatchOutcome:
        """Resolve the list (created when missing); a replace's first call replaces, the others add."""
        ref = self._resolve_audience(transport)
        if operation == "replace":
            with self._replace_lock:  # the other workers wait for the Replace
                if not self._replaced.get(transport):
                    response = transport.send(self._apply_request("Replace", inputs, ref))
                    outcome = self.parse_response(operation, records, response)
                    if 200 <= response.status < 300:
                        self._replaced[transport] = True
                        logger.info(
                            "%s: replaced the members of %s (full sync)", self.label, self.target_label()
                        )
                    return outcome
        action = "Remove" if operation == "remove" else "Add"
        response = transport.send(self._apply_request(action, inputs, ref))
        return self.parse_response(operation, records, response)

    def finish_operation(self, operation: str, pending: Sequence[str], transport: Transport) -> BatchOutcome:
        """A replace that sent no record replaces the members with none (the list is then empty)."""
        if operation != "replace":
            return BatchOutcome()
        with self._replace_lock:
            done = self._replaced.pop(transport, False)
        if not done:
            ref = self._resolve_audience(transport)
            response = transport.send(self._apply_request("Replace", [], ref))
            self._raise_for_terms(response)
            if not 200 <= response.status < 300 or _errors(response.json()):
                raise self.request_error(response, f"emptying {self.target_label()} (full sync)")
            logger.info("%s: emptied %s (full sync with no record)", self.label, self.target_label())
        return BatchOutcome()

    def parse_response(
        self, operation: str, records: Sequence[Record], response: HttpResponse
    ) -> BatchOutcome:
        """PartialErrors reject the items at their Index; a fault rejects every record (or stops the sync)."""
        self._raise_for_terms(response)
        body = response.json()
        if 200 <= response.status < 300:
            failed: dict[int, RecordResult] = {}
            for error in _errors(body):
                index = error.get("Index")
                if isinstance(index, int) and 0 <= index < len(records) and index not in failed:
                    reason = self.redact(_describe(error))
                    failed[index] = RecordResult(records[index].key, "rejected", reason, _reason_code(error))
            return BatchOutcome(
                [failed.get(i) or RecordResult(r.key, "accepted") for i, r in enumerate(records)]
            )
        errors = _errors(body)
        if response.status in (401, 403, 404) or response.status >= 500 or _codes(response) & FATAL_CODES:
            raise self.request_error(response, f"{operation} of members of {self.target_label()}")
        indexed = {e["Index"]: e for e in errors if isinstance(e.get("Index"), int)}
        reason, code = (
            self.error_message(response),
            _reason_code(errors[0]) if errors else f"HTTP {response.status}",
        )
        results = []
        for i, record in enumerate(records):
            own = indexed.get(i)
            if own is not None:
                results.append(
                    RecordResult(record.key, "rejected", self.redact(_describe(own)), _reason_code(own))
                )
            else:
                results.append(RecordResult(record.key, "rejected", reason, code))
        return BatchOutcome(results)

    def _raise_for_terms(self, response: HttpResponse) -> None:
        if TERMS_NOT_ACCEPTED in _codes(response):
            raise self.config_error(_TERMS.format(target=self.target_label()))

    # -- the list -----------------------------------------------------------------------------------

    def _query_lists(self, transport: Transport, ids: Sequence[str] | None, what: str) -> list[Any]:
        body: dict[str, Any] = {"Type": "CustomerList"}
        if ids:
            body["AudienceIds"] = list(ids)
        response = transport.send(PreparedRequest("POST", f"{API}/Audiences/QueryByIds", json=body))
        if response.status != 200:
            raise self.request_error(response, what)
        audiences = (response.json() or {}).get("Audiences")
        return audiences if isinstance(audiences, list) else []

    def _find_by_name(self, name: str, transport: Transport) -> str | None:
        account = self.settings.account_id
        lists = self._query_lists(transport, None, f"listing the customer lists of account {account}")
        found = [
            str(a["Id"]) for a in lists
            if isinstance(a, dict) and a.get("Name") == name and a.get("Id") is not None
            and a.get("Type", "CustomerList") == "CustomerList"
        ]  # fmt: skip
        return self._the_one_named(name, found, f"customer lists of account {account}")

    def _create_named(self, target: AudienceTarget, transport: Transport) -> str:
        assert isinstance(target, MicrosoftAudienceTarget) and target.name is not None
        settings = self.settings
        audience: dict[str, Any] = {
            "Type": "CustomerList",
            "Name": target.name,
            "ParentId": settings.account_id if settings.list_scope == "Account" else settings.customer_id,
            "Scope": settings.list_scope,
            "MembershipDuration": settings.membership_duration_days,
        }
        if target.description:
            audience["Description"] = target.description
        response = transport.send(PreparedRequest("POST", f"{API}/Audiences", json={"Audiences": [audience]}))
        self._raise_for_terms(response)
        body = response.json() if response.status == 200 else None
        ids = body.get("AudienceIds") if isinstance(body, dict) else None
        created = ids[0] if isinstance(ids, list) and ids else None
        if created is None:
            raise self.request_error(response, f"creating the customer list {target.name!r} in account "
                                               f"{settings.account_id}")  # fmt: skip
        logger.info("%s: created customer list %r (id %s)", self.label, target.name, created)
        return str(created)

    # -- reading responses --------------------------------------------------------------------------

    def classify(self, response: HttpResponse) -> Signal:
        """Microsoft's codes first (117 rate limited, 105/106/109 auth, 0 internal), then the HTTP status."""
        codes = _codes(response) if response.status >= 400 else set()
        if CALL_RATE_EXCEEDED in codes or response.status == 429:
            wait = parse_retry_after(response.header("Retry-After"))
            return Signal(ResponseKind.RATE_LIMITED, self.call_rate_wait_seconds if wait is None else wait,
                          self.error_message(response))  # fmt: skip
        if codes & AUTH_CODES:
            return Signal(ResponseKind.AUTH, message=self.error_message(response))
        if INTERNAL_ERROR in codes:
            return Signal(ResponseKind.TRANSIENT, None, self.error_message(response))
        return super().classify(response)

    def error_message(self, response: HttpResponse) -> str:
        """The fault's errors, ``Message (ErrorCode Code)`` each, secrets masked."""
        errors = _errors(response.json())
        if errors:
            return self.redact("; ".join(_describe(e) for e in errors[:3]))
        return super().error_message(response)

    # -- validate --connect -------------------------------------------------------------------------

    def check_connection(self, transport: Transport) -> None:
        """The token (obtained here), the developer token and the account (its customer lists), and a
        list given by id."""
        account = self.settings.account_id
        self._query_lists(transport, None, f"reading the customer lists of account {account}")
        target = self.settings.audience
        if target is None or target.id is None:
            return  # a list given by name is created by the first sync when missing
        found = self._query_lists(transport, [target.id], f"reading customer list {target.id}")
        if not any(isinstance(a, dict) and str(a.get("Id")) == target.id for a in found):
            raise PlatformConfigError(
                f"{self.label}: audience.id: found {target.id!r}; allowed: the id of a customer list of "
                f"account {account} (Microsoft Advertising has none with that id)"
            )


def _reason_code(error: Mapping[str, Any]) -> str:
    return (
        " ".join(str(p) for p in (error.get("ErrorCode"), error.get("Code")) if p not in (None, ""))
        or "refused"
    )


register_platform("microsoft_ads", MicrosoftAdsSettings, MicrosoftAds)
