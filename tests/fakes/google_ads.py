"""A local fake of the Google Ads API (REST) for Customer Match and conversion uploads, and of Google's
OAuth token endpoint, built from Google's reference pages (the adapter's docstring cites them).

Serves on ``127.0.0.1`` (a free port), keeps everything in memory and lets a test assert what Google
would hold: the members of each user list (after its jobs ran), the conversions and adjustments
recorded (de-duplicated as Google does), and every request it got.

Contract:

* **Token endpoint** -- ``POST /token`` (Google: ``https://oauth2.googleapis.com/token``), a form body
  with ``client_id``, ``client_secret``, ``grant_type=refresh_token`` and ``refresh_token``; answers
  ``{"access_token", "expires_in", "scope", "token_type": "Bearer"}``. A wrong client: HTTP 401
  ``{"error": "invalid_client", "error_description": "The OAuth client was not found."}``; a revoked
  refresh token: HTTP 400 ``{"error": "invalid_grant", "error_description": "Token has been expired or
  revoked."}``.
* **Auth** -- every API call needs ``Authorization: Bearer <token>`` (else HTTP 401 ``UNAUTHENTICATED``,
  Google's message), the ``developer-token`` header (else HTTP 401 with ``authenticationError.
  DEVELOPER_TOKEN_INVALID``) and, when the customer is reached through a manager, ``login-customer-id``
  set to it (else HTTP 403 ``PERMISSION_DENIED``, ``authorizationError.USER_PERMISSION_DENIED``). The
  path's version must be the fake's (else 404), the customer the fake's (else 403).
* **Errors** -- ``{"error": {"code", "message", "status", "details": [{"@type":
  "type.googleapis.com/google.ads.googleads.<v>.errors.GoogleAdsFailure", "errors": [{"errorCode":
  {"<category>": "<CODE>"}, "message", "location": {"fieldPathElements": [...]}}], "requestId"}]}}``;
  partial failures the same ``GoogleAdsFailure`` in ``partialFailureError`` (code 3), each error's
  location naming ``operations`` / ``conversions`` / ``conversion_adjustments`` with the item's index.
* **Rate limit** -- :meth:`GoogleAdsFake.throttle` answers the next API calls with HTTP 429
  ``RESOURCE_EXHAUSTED``, ``quotaError.RESOURCE_TEMPORARILY_EXHAUSTED`` and ``quotaErrorDetails.
  retryDelay`` (``"0.05s"``).
* **GAQL** -- ``POST /{v}/customers/{id}/googleAds:search`` ``{"query", "pageToken"?}`` understands
  the queries of the adapter: ``user_list`` by ``name`` or ``id``, ``conversion_action`` by ``name`` or
  ``id``, ``offline_user_data_job`` by ``resource_name``, and ``customer``; rows in camelCase with int64
  ids as text, ``page_size`` rows per page and ``nextPageToken``.
* **User lists** -- ``POST /{v}/customers/{id}/userLists:mutate`` with one ``create`` (``name``,
  ``crmBasedUserList.uploadKeyType`` ``CONTACT_INFO`` | ``MOBILE_ADVERTISING_ID``; a name in use is
  ``userListError.NAME_ALREADY_USED``) answers ``{"results": [{"resourceName"}]}``.
* **Offline user data jobs** -- ``:create`` (type ``CUSTOMER_MATCH_USER_LIST`` and an existing user
  list) answers ``{"resourceName"}`` (status ``PENDING``); ``:addOperations`` (only while ``PENDING``)
  takes at most **100,000 user identifiers** (more: HTTP 400 ``requestError.TOO_MANY_OPERATIONS``, the
  fake's choice: Google documents the limit, not its code) and validates each operation: exactly one
  of ``create`` / ``remove`` / ``removeAll``; ``removeAll`` only as the job's first operation; 1 to 20
  ``userIdentifiers``; hashed fields 64 lower-case hex (``INVALID_SHA256_FORMAT``); an ``addressInfo``
  whole; ``mobileId`` only on a ``MOBILE_ADVERTISING_ID`` list and contact identifiers only on a
  ``CONTACT_INFO`` one (``INCOMPATIBLE_UPLOAD_KEY_TYPE``); plus values a test refuses
  (:meth:`GoogleAdsFake.refuse_identifier`). With ``enablePartialFailure`` the bad operations are
  named in ``partialFailureError`` and the others kept; without it one bad operation fails the request.
  ``:run`` starts the job (``RUNNING``) and answers a long-running ``Operation`` ``{"name"}``; the job
  is applied (``removeAll``, then creates and removes in order) and turns ``SUCCESS`` once
  ``job_seconds`` passed, or ``FAILED`` with a ``failureReason`` (:meth:`GoogleAdsFake.fail_next_job`,
  nothing applied). A second job of a list may not run while one runs (``CONCURRENT_MODIFICATION``).
* **Conversions** -- ``POST /{v}/customers/{id}:uploadClickConversions`` and
  ``:uploadConversionAdjustments`` need ``partialFailure: true`` and at most **2,000** items (else
  ``conversionUploadError.TOO_MANY_CONVERSIONS_IN_REQUEST`` / ``conversionAdjustmentUploadError.
  TOO_MANY_ADJUSTMENTS_IN_REQUEST``, whole request). A click conversion needs a known conversion action,
  one of ``gclid`` / ``gbraid`` / ``wbraid`` and ``conversionDateTime`` as ``yyyy-mm-dd hh:mm:ss+hh:mm``;
  one whose click is too recent (:meth:`GoogleAdsFake.recent_click`) is ``TOO_RECENT_EVENT``; Google keeps
  one per conversion action, click and date time (``CLICK_CONVERSION_ALREADY_EXISTS``). Adjustments
  need ``adjustmentType`` and an ``orderId``; hashed user identifiers as above; one per conversion
  action, order id and type (``CONVERSION_ALREADY_ENHANCED`` / ``RESTATEMENT_ALREADY_EXISTS`` /
  ``CONVERSION_ALREADY_RETRACTED``). Answers ``{"results": [...], "partialFailureError"?, "jobId"}``.

Error codes the pages read do not name for a case (a malformed date time, a missing click id,
``partialFailure`` false, an incomplete address, a job no longer PENDING) are the fake's own choice
(``INVALID_CONVERSION_DATE_TIME``, ``INVALID_USER_IDENTIFIER``, ``PARTIAL_FAILURE_REQUIRED``,
``INCOMPLETE_ADDRESS_INFO``, ``INVALID_JOB_STATUS``): the adapter reads any code the same way.
"""

from __future__ import annotations

import itertools
import re
import time
from dataclasses import dataclass, field
from typing import Any

from dinmo_dagster.fakes.server import FakeRequest, FakeResponse

from .oauth_token import OAuthTokenFake, refuse_form, token_form

MAX_IDENTIFIERS = 100_000
MAX_CONVERSIONS = 2_000
_SHA256 = re.compile(r"[0-9a-f]{64}")
_DATE_TIME = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}[+-]\d{2}:\d{2}")
_HASHED = ("hashedEmail", "hashedPhoneNumber")
_ADDRESS = ("hashedFirstName", "hashedLastName", "countryCode", "postalCode")
_ALREADY = {"ENHANCEMENT": "CONVERSION_ALREADY_ENHANCED", "RESTATEMENT": "RESTATEMENT_ALREADY_EXISTS",
            "RETRACTION": "CONVERSION_ALREADY_RETRACTED"}  # fmt: skip


@dataclass
class UserList:
    """One CRM-based user list; ``members`` holds identifiers as ``(kind, value)`` pairs (an address is
    ``("addressInfo", (first, last, country, postal))``)."""

    id: str
    name: str
    upload_key_type: str
    membership_life_span: int | None = None
    app_id: str | None = None
    members: set[tuple[str, Any]] = field(default_factory=set)


@dataclass
class Job:
    """One offline user data job."""

    id: str
    user_list: UserList
    consent: dict[str, str] | None
    status: str = "PENDING"
    operations: list[dict[str, Any]] = field(default_factory=list)
    ran_at: float | None = None
    failure_reason: str | None = None


def _identifiers(user_data: dict[str, Any]) -> set[tuple[str, Any]]:
    out: set[tuple[str, Any]] = set()
    for ident in user_data.get("userIdentifiers") or []:
        for kind, value in ident.items():
            out.add((kind, tuple(value[p] for p in _ADDRESS) if kind == "addressInfo" else value))
    return out


class GoogleAdsFake(OAuthTokenFake):
    """The Google Ads API (Customer Match, conversion uploads) and Google's token endpoint (a context manager)."""

    token_path = "/token"

    def __init__(
        self,
        *,
        client_id: str,
        client_secret: str,
        refresh_token: str,
        developer_token: str,
        customer_id: str,
        manager_id: str | None = None,
        version: str = "v26",
        token_lifetime: float = 3599.0,
        job_seconds: float = 0.02,
        page_size: int = 1000,
        max_identifiers: int = MAX_IDENTIFIERS,
        latency: float = 0.0,
    ) -> None:
        super().__init__(token_lifetime=token_lifetime)
        self.client_id, self.client_secret, self.refresh_token = client_id, client_secret, refresh_token
        self.developer_token = developer_token
        self.customer_id = customer_id
        self.manager_id = manager_id
        self.version = version
        self.job_seconds = job_seconds
        self.page_size = page_size
        self.max_identifiers = max_identifiers
        self.latency = latency  # seconds each upload takes (kill tests)
        self.user_lists: dict[str, UserList] = {}
        self.jobs: dict[str, Job] = {}
        self.conversion_actions: dict[str, str] = {}  # id -> name
        self.conversions: dict[
            tuple[str, str, str], dict[str, Any]
        ] = {}  # (action, click, date time) -> conversion
        self.adjustments: dict[
            tuple[str, str, str], dict[str, Any]
        ] = {}  # (action, order id, type) -> adjustment
        self.received: list[dict[str, Any]] = []  # every conversion / adjustment Google got, in order
        self._recent_clicks: set[str] = set()
        self._refused: dict[str, tuple[str, str]] = {}
        self._failing_jobs: list[str] = []
        self._ids = itertools.count(4001)

    # -- what tests arrange and read ------------------------------------------------------------------

    def create_user_list(
        self, name: str, upload_key_type: str = "CONTACT_INFO", **members: set[Any]
    ) -> UserList:
        """A user list already in the account, with members per identifier kind (``hashedEmail={...}``)."""
        user_list = UserList(str(next(self._ids)), name, upload_key_type)
        user_list.members = {(kind, value) for kind, values in members.items() for value in values}
        self.user_lists[user_list.id] = user_list
        return user_list

    def user_list_named(self, name: str) -> UserList | None:
        return next((u for u in self.user_lists.values() if u.name == name), None)

    def create_conversion_action(self, name: str) -> str:
        action_id = str(next(self._ids))
        self.conversion_actions[action_id] = name
        return action_id

    def recent_click(self, click_id: str, recent: bool = True) -> None:
        """Conversions of this click are ``TOO_RECENT_EVENT`` (Google: under 6 hours old) until unset."""
        (self._recent_clicks.add if recent else self._recent_clicks.discard)(click_id)

    def refuse_identifier(self, value: str, code: str, message: str) -> None:
        """An operation carrying ``value`` fails with ``offlineUserDataJobError.<code>``."""
        self._refused[value] = (code, message)

    def accept_identifier(self, value: str) -> None:
        """Undo :meth:`refuse_identifier`."""
        self._refused.pop(value, None)

    def fail_next_job(self, reason: str) -> None:
        """The next job run ends FAILED with ``failureReason`` ``reason`` (nothing applied)."""
        self._failing_jobs.append(reason)

    def revoke_refresh_token(self) -> None:
        self.refresh_token = "revoked-" + self.refresh_token

    def hashed_emails(self, user_list: UserList) -> set[str]:
        return {value for kind, value in user_list.members if kind == "hashedEmail"}

    # -- token endpoint -------------------------------------------------------------------------------

    def _token(self, request: FakeRequest) -> FakeResponse:
        form = token_form(request)
        refusal = refuse_form(
            form, client_id=self.client_id, client_secret=self.client_secret, client_status=401,
            client_description="The OAuth client was not found.", grant_type="refresh_token",
            refresh_token=self.refresh_token, refresh_description="Token has been expired or revoked.",
        )  # fmt: skip
        if refusal is not None:
            return refusal
        token = self._issue("ya29.google-access")
        return FakeResponse(200, {"access_token": token, "expires_in": int(self.token_lifetime),
                                  "scope": "https://www.googleapis.com/auth/adwords", "token_type": "Bearer"})  # fmt: skip

    # -- serving --------------------------------------------------------------------------------------

    def _status(
        self, http: int, status: str, message: str, errors: list[dict[str, Any]] | None = None
    ) -> FakeResponse:
        body: dict[str, Any] = {"code": http, "message": message, "status": status}
        if errors:
            body["details"] = [self._failure(errors)]
        return FakeResponse(http, {"error": body})

    def _failure(self, errors: list[dict[str, Any]]) -> dict[str, Any]:
        return {"@type": f"type.googleapis.com/google.ads.googleads.{self.version}.errors.GoogleAdsFailure",
                "errors": errors, "requestId": f"req-{next(self._ids)}"}  # fmt: skip

    @staticmethod
    def _error(category: str, code: str, message: str, where: str | None = None, index: int | None = None,
               **details: Any) -> dict[str, Any]:  # fmt: skip
        error: dict[str, Any] = {"errorCode": {category: code}, "message": message}
        if where is not None:
            error["location"] = {"fieldPathElements": [{"fieldName": where, "index": index}]}
        if details:
            error["details"] = details
        return error

    def _invalid(self, *errors: dict[str, Any]) -> FakeResponse:
        return self._status(400, "INVALID_ARGUMENT", "Request contains an invalid argument.", list(errors))

    def _partial(self, errors: list[dict[str, Any]]) -> dict[str, Any]:
        text = ", ".join(f"{e['message']}, at {e['location']['fieldPathElements'][0]['fieldName']}"
                         f"[{e['location']['fieldPathElements'][0]['index']}]" for e in errors)  # fmt: skip
        return {"code": 3, "message": text, "details": [self._failure(errors)]}

    def _api(self, request: FakeRequest) -> FakeResponse:
        if not self._bearer_ok(request):
            return self._status(401, "UNAUTHENTICATED", "Request had invalid authentication credentials. Expected "
                                "OAuth 2 access token, login cookie or other valid authentication credential.")  # fmt: skip
        if request.headers.get("developer-token") != self.developer_token:
            return self._status(401, "UNAUTHENTICATED", "Request is missing required authentication credential.",
                                [self._error("authenticationError", "DEVELOPER_TOKEN_INVALID",
                                             "The developer token is not valid.")])  # fmt: skip
        if self._throttled:
            self._throttled -= 1
            return self._status(429, "RESOURCE_EXHAUSTED", "Resource has been exhausted (e.g. check quota).", [
                self._error("quotaError", "RESOURCE_TEMPORARILY_EXHAUSTED", "Too many requests. Retry in 0.05 seconds.",
                            quotaErrorDetails={"rateScope": "ACCOUNT", "rateName": "Requests per account",
                                               "retryDelay": "0.050s"})])  # fmt: skip
        if (planned := self._planned_failure(request)) is not None:
            return planned
        prefix = f"/{self.version}/customers/"
        if not request.path.startswith(prefix):
            return self._status(404, "NOT_FOUND", f"Method not found: {request.path}")
        rest = request.path[len(prefix) :]
        parsed = re.fullmatch(r"(\d+)(/.*|:.*)", rest)
        customer, tail = (parsed.group(1), parsed.group(2).removeprefix("/")) if parsed else (rest, "")
        if customer != self.customer_id or (
            self.manager_id and request.headers.get("login-customer-id") != self.manager_id
        ):
            return self._status(403, "PERMISSION_DENIED", "The caller does not have permission", [self._error(
                "authorizationError", "USER_PERMISSION_DENIED", "User doesn't have permission to access customer. "
                "Note: If you're accessing a client customer, the manager's customer id must be set in the "
                "'login-customer-id' header.")])  # fmt: skip
        body = request.json if isinstance(request.json, dict) else {}
        if request.method != "POST":
            return self._status(404, "NOT_FOUND", f"Method not found: {request.method} {request.path}")
        routes = {"googleAds:search": self._search, "userLists:mutate": self._mutate_user_lists,
                  "offlineUserDataJobs:create": self._create_job, ":uploadClickConversions": self._upload_clicks,
                  ":uploadConversionAdjustments": self._upload_adjustments}  # fmt: skip
        if tail in routes:
            if self.latency and tail.startswith(":upload"):
                time.sleep(self.latency)
            return routes[tail](body)
        match = re.fullmatch(r"offlineUserDataJobs/(\d+):(addOperations|run)", tail)
        if match:
            job = self.jobs.get(match.group(1))
            if job is None:
                return self._status(
                    404, "NOT_FOUND", f"Resource was not found: offlineUserDataJobs/{match.group(1)}"
                )
            return self._add_operations(job, body) if match.group(2) == "addOperations" else self._run(job)
        return self._status(404, "NOT_FOUND", f"Method not found: {request.path}")

    # -- GAQL -----------------------------------------------------------------------------------------

    def _search(self, body: dict[str, Any]) -> FakeResponse:
        query = str(body.get("query") or "")
        found = re.search(r"FROM (\w+)(?: WHERE (\w+)\.(\w+) = ('(?:[^'\\]|\\.)*'|\d+))?", query)
        if not found:
            return self._invalid(self._error("queryError", "UNEXPECTED_END_OF_QUERY", "Error in query."))
        resource, _, column, literal = found.groups()
        value = literal.strip("'").replace("\\'", "'").replace("\\\\", "\\") if literal else None
        rows: list[dict[str, Any]] = []
        if resource == "customer":
            rows = [{"customer": {"resourceName": f"customers/{self.customer_id}", "id": self.customer_id}}]
        elif resource == "user_list":
            rows = [{"userList": {"resourceName": f"customers/{self.customer_id}/userLists/{u.id}", "id": u.id,
                                  "name": u.name}}
                    for u in self.user_lists.values() if value is None or getattr(u, column) == value]  # fmt: skip
        elif resource == "conversion_action":
            rows = [{"conversionAction": {"resourceName": f"customers/{self.customer_id}/conversionActions/{i}",
                                          "id": i, "name": n}}
                    for i, n in self.conversion_actions.items()
                    if value is None or (n if column == "name" else i) == value]  # fmt: skip
        elif resource == "offline_user_data_job":
            for job in self.jobs.values():
                if value in (None, self._job_name(job)):
                    self._progress(job)
                    state = {"resourceName": self._job_name(job), "id": job.id, "status": job.status}
                    if job.failure_reason:
                        state["failureReason"] = job.failure_reason
                    rows.append({"offlineUserDataJob": state})
        start = int(body.get("pageToken") or 0)
        answer: dict[str, Any] = {"results": rows[start : start + self.page_size], "fieldMask": "..."}
        if start + self.page_size < len(rows):
            answer["nextPageToken"] = str(start + self.page_size)
        return FakeResponse(200, answer)

    # -- user lists and jobs --------------------------------------------------------------------------

    def _job_name(self, job: Job) -> str:
        return f"customers/{self.customer_id}/offlineUserDataJobs/{job.id}"

    def _mutate_user_lists(self, body: dict[str, Any]) -> FakeResponse:
        operations = body.get("operations") or []
        create = (
            operations[0].get("create") if len(operations) == 1 and isinstance(operations[0], dict) else None
        )
        crm = (create or {}).get("crmBasedUserList") or {}
        if (
            not create
            or not create.get("name")
            or crm.get("uploadKeyType") not in ("CONTACT_INFO", "MOBILE_ADVERTISING_ID")
        ):
            return self._invalid(self._error("fieldError", "REQUIRED", "The required field was not present.",
                                             "operations", 0))  # fmt: skip
        if crm["uploadKeyType"] == "MOBILE_ADVERTISING_ID" and not crm.get("appId"):
            return self._invalid(self._error("userListError", "APP_ID_NOT_SET",
                                             "Mobile app id is required for mobile advertising id lists.", "operations", 0))  # fmt: skip
        if self.user_list_named(create["name"]) is not None:
            return self._invalid(self._error("userListError", "NAME_ALREADY_USED", "Name is already being used "
                                             "for another user list for the account.", "operations", 0))  # fmt: skip
        user_list = UserList(str(next(self._ids)), create["name"], crm["uploadKeyType"],
                             create.get("membershipLifeSpan"), crm.get("appId"))  # fmt: skip
        self.user_lists[user_list.id] = user_list
        return FakeResponse(
            200, {"results": [{"resourceName": f"customers/{self.customer_id}/userLists/{user_list.id}"}]}
        )

    def _create_job(self, body: dict[str, Any]) -> FakeResponse:
        job = body.get("job") or {}
        metadata = job.get("customerMatchUserListMetadata") or {}
        list_id = str(metadata.get("userList") or "").rpartition("/")[2]
        if job.get("type") != "CUSTOMER_MATCH_USER_LIST" or list_id not in self.user_lists:
            return self._invalid(self._error("offlineUserDataJobError", "INVALID_USER_LIST_ID",
                                             "The user list ID provided for the job is invalid."))  # fmt: skip
        created = Job(str(next(self._ids)), self.user_lists[list_id], metadata.get("consent"))
        self.jobs[created.id] = created
        return FakeResponse(200, {"resourceName": self._job_name(created)})

    def _operation_error(self, job: Job, index: int, operation: Any) -> dict[str, Any] | None:
        def bad(code: str, message: str) -> dict[str, Any]:
            return self._error("offlineUserDataJobError", code, message, "operations", index)

        if (
            not isinstance(operation, dict)
            or len(operation) != 1
            or next(iter(operation)) not in ("create", "remove", "removeAll")
        ):
            return self._error("mutateError", "UNKNOWN_OPERATION", "The operation is not supported.", "operations", index)  # fmt: skip
        verb, user_data = next(iter(operation.items()))
        if verb == "removeAll":
            if job.operations or index != 0:
                return bad(
                    "INVALID_REMOVE_ALL_OPERATION", "removeAll must be the first operation of the job."
                )
            return None
        identifiers = (user_data or {}).get("userIdentifiers") or []
        if not 1 <= len(identifiers) <= 20:
            return bad("INVALID_USER_IDENTIFIERS", "A user data needs 1 to 20 user identifiers.")
        for ident in identifiers:
            for kind, value in ident.items():
                parts = value if kind == "addressInfo" else {kind: value}
                if kind == "addressInfo" and set(parts) != set(_ADDRESS):
                    return bad(
                        "INCOMPLETE_ADDRESS_INFO", "An address needs first and last name, country and zip."
                    )
                for part, text in parts.items():
                    if (
                        part in _HASHED or part in ("hashedFirstName", "hashedLastName")
                    ) and not _SHA256.fullmatch(str(text)):
                        return bad("INVALID_SHA256_FORMAT", "The SHA256 encoded value is malformed.")
                    if str(text) in self._refused:
                        return bad(*self._refused[str(text)])
                mobile = kind == "mobileId"
                if mobile != (job.user_list.upload_key_type == "MOBILE_ADVERTISING_ID"):
                    return bad(
                        "INCOMPATIBLE_UPLOAD_KEY_TYPE",
                        "The user identifier does not match the user list's upload key type.",
                    )
        return None

    def _add_operations(self, job: Job, body: dict[str, Any]) -> FakeResponse:
        if job.status != "PENDING":
            return self._invalid(self._error("offlineUserDataJobError", "INVALID_JOB_STATUS",
                                             f"Operations cannot be added to a {job.status} job."))  # fmt: skip
        operations = body.get("operations") or []
        count = sum(len((next(iter(op.values())) or {}).get("userIdentifiers") or []) if isinstance(op, dict)
                    and isinstance(next(iter(op.values()), None), dict) else 1 for op in operations)  # fmt: skip
        if count > self.max_identifiers:
            return self._invalid(self._error("requestError", "TOO_MANY_OPERATIONS",
                                             f"Too many user identifiers in the request ({count}); "
                                             f"at most {self.max_identifiers}."))  # fmt: skip
        errors = [
            e for i, op in enumerate(operations) if (e := self._operation_error(job, i, op)) is not None
        ]
        if errors and not body.get("enablePartialFailure"):
            return self._invalid(*errors)
        failed = {e["location"]["fieldPathElements"][0]["index"] for e in errors}
        job.operations += [op for i, op in enumerate(operations) if i not in failed]
        return FakeResponse(200, {"partialFailureError": self._partial(errors)} if errors else {})

    def _run(self, job: Job) -> FakeResponse:
        if job.status != "PENDING":
            return self._invalid(self._error("offlineUserDataJobError", "INVALID_JOB_STATUS",
                                             f"The job is {job.status}; only a PENDING job can run."))  # fmt: skip
        if any(
            j.status == "RUNNING" and j.user_list is job.user_list
            for j in self.jobs.values()
            if self._progress(j)
        ):
            return self._invalid(self._error("databaseError", "CONCURRENT_MODIFICATION",
                                             "Multiple requests were attempting to modify the same resource at once."))  # fmt: skip
        job.status, job.ran_at = "RUNNING", time.monotonic()
        return FakeResponse(200, {"name": f"customers/{self.customer_id}/operations/{job.id}-run"})

    def _progress(self, job: Job) -> bool:
        """Finish a running job whose time has come; True (for use in filters)."""
        if (
            job.status == "RUNNING"
            and job.ran_at is not None
            and time.monotonic() - job.ran_at >= self.job_seconds
        ):
            if self._failing_jobs:
                job.status, job.failure_reason = "FAILED", self._failing_jobs.pop(0)
                return True
            members = job.user_list.members
            for operation in job.operations:
                verb, user_data = next(iter(operation.items()))
                if verb == "removeAll":
                    members.clear()
                elif verb == "create":
                    members |= _identifiers(user_data)
                else:
                    members -= _identifiers(user_data)
            job.status = "SUCCESS"
        return True

    # -- conversions ----------------------------------------------------------------------------------

    def _action_ok(self, resource: Any) -> bool:
        prefix = f"customers/{self.customer_id}/conversionActions/"
        return (
            isinstance(resource, str)
            and resource.startswith(prefix)
            and resource[len(prefix) :] in self.conversion_actions
        )

    def _hash_error(self, item: dict[str, Any]) -> bool:
        for ident in item.get("userIdentifiers") or []:
            for kind, value in ident.items():
                parts = value if kind == "addressInfo" else {kind: value}
                for part, text in parts.items():
                    if part.startswith("hashed") and not _SHA256.fullmatch(str(text)):
                        return True
        return False

    def _upload(self, body: dict[str, Any], key: str, category: str, too_many: str,
                check: Any) -> FakeResponse:  # fmt: skip
        items = body.get(key)
        where = "conversions" if key == "conversions" else "conversion_adjustments"
        if not isinstance(items, list) or not items:
            return self._invalid(self._error("fieldError", "REQUIRED", f"{key} is required."))
        if len(items) > MAX_CONVERSIONS:
            return self._invalid(self._error(category, too_many, f"Upload fewer than {MAX_CONVERSIONS + 1} events "
                                             "in a single request."))  # fmt: skip
        if body.get("partialFailure") is not True:
            return self._invalid(self._error("requestError", "PARTIAL_FAILURE_REQUIRED",
                                             "partial_failure must be true for this method."))  # fmt: skip
        errors, results = [], []
        for i, item in enumerate(items):
            self.received.append(item)
            problem = check(item)
            if problem is not None:
                errors.append(self._error(category, problem[0], problem[1], where, i))
                results.append({})
            else:
                results.append(
                    {"conversionAction": item.get("conversionAction"), "orderId": item.get("orderId")}
                )
        answer: dict[str, Any] = {"results": results, "jobId": str(next(self._ids))}
        if errors:
            answer["partialFailureError"] = self._partial(errors)
        return FakeResponse(200, answer)

    def _upload_clicks(self, body: dict[str, Any]) -> FakeResponse:
        def check(item: dict[str, Any]) -> tuple[str, str] | None:
            if not self._action_ok(item.get("conversionAction")):
                return "NO_CONVERSION_ACTION_FOUND", "The conversion action can't be found."
            clicks = [item[k] for k in ("gclid", "gbraid", "wbraid") if item.get(k)]
            if len(clicks) != 1:
                return "INVALID_USER_IDENTIFIER", "Exactly one of gclid, gbraid or wbraid is needed."
            if not _DATE_TIME.fullmatch(str(item.get("conversionDateTime") or "")):
                return "INVALID_CONVERSION_DATE_TIME", "The conversion date time could not be parsed."
            if self._hash_error(item):
                return "INVALID_USER_IDENTIFIER", "A hashed user identifier is not a SHA-256 digest."
            if clicks[0] in self._recent_clicks:
                return "TOO_RECENT_EVENT", ("The click associated with the given identifier occurred less than "
                                            "6 hours ago, please retry after 6 hours have passed.")  # fmt: skip
            key = (item["conversionAction"], clicks[0], item["conversionDateTime"])
            if key in self.conversions:
                return "CLICK_CONVERSION_ALREADY_EXISTS", ("The imported event has the same click and "
                                                           "conversion_date_time as an existing conversion.")  # fmt: skip
            self.conversions[key] = item
            return None

        return self._upload(
            body, "conversions", "conversionUploadError", "TOO_MANY_CONVERSIONS_IN_REQUEST", check
        )

    def _upload_adjustments(self, body: dict[str, Any]) -> FakeResponse:
        def check(item: dict[str, Any]) -> tuple[str, str] | None:
            kind = item.get("adjustmentType")
            if not self._action_ok(item.get("conversionAction")):
                return "NO_CONVERSION_ACTION_FOUND", "The conversion action can't be found."
            if kind not in _ALREADY or not (item.get("orderId") or item.get("gclidDateTimePair")):
                return "INVALID_ADJUSTMENT", "An adjustment needs its type and the conversion's order id."
            if kind != "ENHANCEMENT" and not _DATE_TIME.fullmatch(str(item.get("adjustmentDateTime") or "")):
                return "INVALID_ADJUSTMENT_DATE_TIME", "The adjustment date time is missing or malformed."
            if kind == "ENHANCEMENT" and (not item.get("userIdentifiers") or self._hash_error(item)):
                return "INVALID_USER_IDENTIFIER", "Enhancements need hashed user identifiers."
            key = (item["conversionAction"], str(item.get("orderId")), kind)
            if key in self.adjustments:
                return _ALREADY[kind], f"The conversion already has a {kind.lower()} with this order id."
            self.adjustments[key] = item
            return None

        return self._upload(body, "conversionAdjustments", "conversionAdjustmentUploadError",
                            "TOO_MANY_ADJUSTMENTS_IN_REQUEST", check)  # fmt: skip
