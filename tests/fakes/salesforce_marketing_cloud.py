"""A local fake of Salesforce Marketing Cloud's token endpoint and data extension APIs: the JSON
``/v2/token`` (client credentials, ``account_id``), the asynchronous rows API (``PUT`` upsert, ``POST``
insert, status, results), the ``customobjectdata`` rowset read, and REST throttling.

Serves the API and its token endpoint on one loopback server (``token_url`` is ``<url>/v2/token``),
keeps data extensions and their rows in memory so a test asserts what Marketing Cloud holds.

Contract (from Marketing Cloud's pages, cited in ``dinmo_dagster/platforms/salesforce_marketing_cloud.py``):

* **Token** -- ``POST /v2/token`` with a JSON body ``{"grant_type": "client_credentials", "client_id",
  "client_secret", "account_id"?}``; a wrong client is HTTP 401 ``invalid_client``, a form-encoded body
  or another grant HTTP 400; the answer holds ``access_token``, ``token_type``, ``expires_in``,
  ``scope``, ``rest_instance_url`` and ``soap_instance_url``. ``mid`` set: another ``account_id`` is
  HTTP 401 (assumed wording).
* **API auth** -- ``Authorization: Bearer <token issued and not expired>``; else HTTP 401
  ``{"message": "Not Authorized", "errorcode": 0, "documentation": ...}``.
* **Async rows** -- ``PUT`` / ``POST /data/v1/async/dataextensions/key:{key}/rows`` ``{"items": [...]}``:
  HTTP 202 ``{"requestId", "resultMessages": []}``; an unknown key HTTP 404; a body over 5 MB HTTP 413
  (assumed). ``GET /data/v1/async/{id}/status`` answers ``Pending`` first, then applies the rows and
  answers ``Complete`` with ``hasErrors``. A row is refused (not written) when it lacks a primary key
  column, names a column the data extension does not have, misses a required column, has a Number that is
  not one or a Text longer than its ``length``, or (insert) its key exists: "Violation of PRIMARY KEY
  constraint ... The duplicate key value is (k)." -- only that message names the row.
  ``GET /data/v1/async/{id}/results`` lists the failed rows (``errorCode``, ``message``,
  ``status: Error``), ``page_size`` per page (``$page``).
* **Rowset** -- ``GET /data/v1/customobjectdata/key/{key}/rowset?$page&$pagesize``: rows as ``keys``
  and ``values`` (column names lower-cased).
* **Throttling** -- :meth:`OAuthTokenFake.throttle` answers HTTP 429 ``errorcode 50100`` with
  ``Retry-After``.
"""

from __future__ import annotations

import itertools
import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from dinmo_dagster.fakes.server import FakeRequest, FakeResponse

from .oauth_token import OAuthTokenFake, refuse_form

MAX_BYTES = 5 * 1024 * 1024
DOCS = "https://developer.salesforce.com/docs/atlas.en-us.mc-apis.meta/mc-apis/error-handling.htm"


@dataclass
class Column:
    """One column of a data extension."""

    name: str
    type: str = "Text"  # Text, Number, Decimal, Date, Boolean, EmailAddress
    primary_key: bool = False
    required: bool = False
    length: int | None = None


@dataclass
class DataExtension:
    """A data extension: its columns and its rows by primary key value(s)."""

    key: str
    columns: list[Column]
    rows: dict[tuple[str, ...], dict[str, Any]] = field(default_factory=dict)

    @property
    def primary_key(self) -> list[str]:
        return [c.name for c in self.columns if c.primary_key]

    def row(self, *key: str) -> dict[str, Any] | None:
        """The row of that primary key value (case-insensitive, as Marketing Cloud compares text keys)."""
        return self.rows.get(tuple(k.lower() for k in key))


@dataclass
class AsyncRequest:
    """One queued asynchronous rows request."""

    id: str
    key: str
    insert: bool
    items: list[dict[str, Any]]
    state: str = "Pending"
    errors: list[dict[str, Any]] = field(default_factory=list)


class MarketingCloudFake(OAuthTokenFake):
    """Marketing Cloud's token endpoint and data extension APIs, in memory (a context manager)."""

    token_path = "/v2/token"

    def __init__(
        self,
        *,
        client_id: str,
        client_secret: str,
        mid: str | None = None,
        token_lifetime: float = 1079.0,
        page_size: int = 50,
        retry_after: str = "1",
    ) -> None:
        super().__init__(token_lifetime=token_lifetime)
        self.client_id = client_id
        self.client_secret = client_secret
        self.mid = mid
        self.page_size = page_size
        self.retry_after = retry_after
        self.data_extensions: dict[str, DataExtension] = {}
        self.async_requests: dict[str, AsyncRequest] = {}
        self._failing: dict[str, str] = {}  # primary key value -> message
        self._ids = itertools.count(1)

    # -- what tests arrange and read ------------------------------------------------------------------

    def add_data_extension(self, key: str, *columns: Column) -> DataExtension:
        """A data extension the account holds."""
        de = DataExtension(key, list(columns))
        self.data_extensions[key] = de
        return de

    def fail_rows(self, message: str, *keys: str) -> None:
        """Every write of a row of one of these key values fails with ``message`` (naming no row) until
        :meth:`heal_rows`."""
        self._failing.update(dict.fromkeys(keys, message))

    def heal_rows(self) -> None:
        """Rows of every key value are written again."""
        self._failing.clear()

    # -- token ----------------------------------------------------------------------------------------------

    def _token(self, request: FakeRequest) -> FakeResponse:
        body = request.json
        if not request.headers.get("content-type", "").startswith("application/json") or not isinstance(
            body, dict
        ):
            return FakeResponse(
                400, {"error": "invalid_request", "error_description": "Unsupported content type"}
            )
        refusal = refuse_form(
            {k: str(v) for k, v in body.items()},
            client_id=self.client_id,
            client_secret=self.client_secret,
            client_status=401,
            client_description="Client authentication failed.",
            grant_type="client_credentials",
        )
        if refusal is not None:
            return refusal
        if self.mid is not None and body.get("account_id", self.mid) != self.mid:
            return FakeResponse(
                401,
                {
                    "error": "unauthorized_client",
                    "error_description": "The client is not authorized for this account_id.",
                },
            )
        token = self._issue("mc-access", "t")
        return FakeResponse(
            200,
            {
                "access_token": token,
                "token_type": "Bearer",
                "expires_in": self.token_lifetime,
                "scope": "data_extensions_read data_extensions_write",
                "soap_instance_url": f"{self.url}/",
                "rest_instance_url": f"{self.url}/",
            },
        )

    # -- API ------------------------------------------------------------------------------------------------

    def _api(self, request: FakeRequest) -> FakeResponse:
        if not self._bearer_ok(request):
            return FakeResponse(401, {"documentation": DOCS, "errorcode": 0, "message": "Not Authorized"})
        if self._throttled:
            self._throttled -= 1
            return FakeResponse(
                429,
                {
                    "message": "Rate limit exceeded",
                    "errorcode": 50100,
                    "retryAfter": 5,
                    "documentation": DOCS,
                },
                headers={"Retry-After": self.retry_after},
            )
        method, path = request.method, request.path
        prefix = "/data/v1/async/dataextensions/key:"
        if path.startswith(prefix) and path.endswith("/rows") and method in ("PUT", "POST"):
            return self._queue(path[len(prefix) : -len("/rows")], method == "POST", request)
        if path.startswith("/data/v1/async/") and path.endswith("/status"):
            found = self.async_requests.get(path.split("/")[4])
            if found is None:
                return FakeResponse(
                    404, {"message": "Request not found", "errorcode": 10002, "documentation": DOCS}
                )
            if found.state == "Pending":
                found.state = "Picked"
            elif found.state == "Picked":
                self._apply(found)
                found.state = "Complete"
            state = "Pending" if found.state != "Complete" else "Complete"
            return FakeResponse(
                200,
                {
                    "status": {
                        "requestStatus": state,
                        "hasErrors": bool(found.errors),
                        "resultStatus": "OK",
                        "requestId": found.id,
                    },
                    "requestId": str(uuid.uuid4()),
                },
            )
        if path.startswith("/data/v1/async/") and path.endswith("/results"):
            found = self.async_requests.get(path.split("/")[4])
            if found is None:
                return FakeResponse(
                    404, {"message": "Request not found", "errorcode": 10002, "documentation": DOCS}
                )
            page = int(request.query.get("$page", "1"))
            items = found.errors[(page - 1) * self.page_size : page * self.page_size]
            return FakeResponse(
                200,
                {
                    "page": page,
                    "pageSize": self.page_size,
                    "count": len(found.errors),
                    "items": items,
                    "requestId": found.id,
                },
            )
        rowset = "/data/v1/customobjectdata/key/"
        if path.startswith(rowset) and path.endswith("/rowset") and method == "GET":
            de = self.data_extensions.get(path[len(rowset) : -len("/rowset")])
            if de is None:
                return self._no_de()
            size = int(request.query.get("$pagesize", "2500"))
            items = [
                {
                    "keys": {k.lower(): row[k] for k in de.primary_key},
                    "values": {k.lower(): v for k, v in row.items() if k not in de.primary_key},
                }
                for row in list(de.rows.values())[:size]
            ]
            return FakeResponse(
                200,
                {
                    "customObjectKey": de.key,
                    "page": 1,
                    "pageSize": size,
                    "count": len(de.rows),
                    "items": items,
                },
            )
        return FakeResponse(404, {"message": "Not Found", "errorcode": 404, "documentation": DOCS})

    def _no_de(self) -> FakeResponse:
        return FakeResponse(
            404,
            {
                "message": "Data extension not found or not accessible",
                "errorcode": 10000,
                "documentation": DOCS,
            },
        )

    def _queue(self, key: str, insert: bool, request: FakeRequest) -> FakeResponse:
        if key not in self.data_extensions:
            return self._no_de()
        if len(request.raw_body) > MAX_BYTES:
            return FakeResponse(
                413, {"message": "Request payload too large", "errorcode": 10006, "documentation": DOCS}
            )
        items = (request.json or {}).get("items")
        if not isinstance(items, list) or not items:
            return FakeResponse(
                400, {"message": "items is required", "errorcode": 10001, "documentation": DOCS}
            )
        found = AsyncRequest(str(uuid.uuid4()), key, insert, items)
        self.async_requests[found.id] = found
        return FakeResponse(202, {"requestId": found.id, "resultMessages": []})

    def _apply(self, found: AsyncRequest) -> None:
        de = self.data_extensions[found.key]
        columns = {c.name.lower(): c for c in de.columns}
        for item in found.items:
            problem = self._problem(de, columns, item)
            if problem is None:
                key = tuple(str(item[k]).lower() for k in de.primary_key)
                if found.insert and key in de.rows:
                    problem = (
                        "Violation of PRIMARY KEY constraint 'PK_C20720'. Cannot insert duplicate key in "
                        f"object 'C20720.{de.key}'. The duplicate key value is ({', '.join(key)}).\r\n"
                        "The statement has been terminated."
                    )
                else:
                    row = de.rows.setdefault(key, {})
                    row.update({columns[k.lower()].name: v for k, v in item.items()})
                    continue
            found.errors.append({"errorCode": "UnexpectedError", "message": problem, "status": "Error"})

    def _problem(self, de: DataExtension, columns: dict[str, Column], item: dict[str, Any]) -> str | None:
        names = {k.lower() for k in item}
        for pk in de.primary_key:
            if pk.lower() not in names or item.get(pk) in (None, ""):
                return f"The primary key column {pk} is required."
            if str(item[pk]) in self._failing:
                return self._failing[str(item[pk])]
        for name, value in item.items():
            column = columns.get(name.lower())
            if column is None:
                return f"The column '{name}' does not exist in the data extension."
            if value is None:
                if column.required:
                    return f"The column '{column.name}' is required and cannot be empty."
                continue
            if column.type in ("Number", "Decimal"):
                try:
                    float(value) if column.type == "Decimal" else int(str(value))
                except ValueError:
                    return f"The value for column '{column.name}' is not a valid {column.type.lower()}."
            if column.length is not None and len(str(value)) > column.length:
                return f"The value for column '{column.name}' exceeds its length of {column.length}."
        missing = [c.name for c in de.columns if c.required and c.name.lower() not in names]
        if missing and (tuple(str(item.get(k)).lower() for k in de.primary_key) not in de.rows):
            return f"The column '{missing[0]}' is required and cannot be empty."
        return None

    def rows(self, key: str) -> dict[str, dict[str, Any]]:
        """The rows of a data extension by their (single) primary key value."""
        return {k[0]: v for k, v in self.data_extensions[key].rows.items()}

    def dump(self) -> str:
        """Every request body as text (for asserting what was never sent)."""
        return json.dumps([r.raw_body.decode() for r in self.requests])
