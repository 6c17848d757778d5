"""Salesforce Marketing Cloud (Engagement): the ``attributes`` service for the rows of a data extension.

A ``type: salesforce_marketing_cloud`` destination writes the data extension whose external key is
``data_extension_key``. Its tenant ``subdomain`` (the 28-character prefix of the account's API
endpoints, shown in Installed Packages) gives both endpoints: the token endpoint
``https://{subdomain}.auth.marketingcloudapis.com/v2/token`` (``token_url`` overrides it) and the REST
root ``https://{subdomain}.rest.marketingcloudapis.com`` (the ``rest_instance_url`` the token answer
names; ``base_url`` overrides it).

Authentication: a server-to-server installed package's ``client_id`` and ``client_secret`` (from
``{env: VAR}``), exchanged for an access token with a JSON ``POST /v2/token`` ``{"grant_type":
"client_credentials", "client_id", "client_secret", "account_id"}`` (``account_id``: the business unit's
MID, optional; ``scope`` optional). The token lives 20 minutes; it is renewed before it expires (and
once after a ``401``), kept in memory only and sent as ``Authorization: Bearer``.

Operations (records are rows; ``match`` names the data extension's primary key column(s), sent as
they are; mapped names are column names, case as in Marketing Cloud):

- ``upsert``: the asynchronous ``PUT /data/v1/async/dataextensions/key:{key}/rows`` ``{"items":
  [{column: value}]}`` -- rows whose primary key exists are updated, the others inserted.
- ``insert``: the asynchronous ``POST`` on the same path. A row whose key already exists is refused by
  Marketing Cloud ("Violation of PRIMARY KEY constraint ... The duplicate key value is (k)"): it is left
  alone and counts as done, as ``insert`` promises.

Marketing Cloud's REST API documents no row deletion and no update-only write: ``sync_mode`` ``mirror``
and ``update`` are not offered (rows of records that left the segment stay in the data extension).

Each request is accepted with ``202`` and a ``requestId``; ``GET /data/v1/async/{requestId}/status`` is
polled every ``poll_interval_seconds`` until ``requestStatus`` is no longer ``Pending``. When
``hasErrors`` is true, ``GET /data/v1/async/{requestId}/results`` lists the rows that failed
(``errorCode``, ``message``, ``status: Error``). An error message that quotes a record's primary key
value is that record's; an error naming no row rejects the record when it was alone in its request,
otherwise the request is split in halves and each half sent again (the upsert is idempotent) until
every failing row is alone -- so one bad value rejects one record with Marketing Cloud's message,
and the others land. A NULL is sent as ``null`` (the column is emptied) unless the activation says
``null_values: skip``; decimals go as exact text, dates and timestamps as ISO 8601.

Limits: the asynchronous rows API documents no row count; the synchronous rowset endpoint documents a
5 MB payload. The SDK sends at most 500 rows (assumed) and 5 MB per request. Marketing Cloud publishes
no request rate for REST beyond throttling when a tenant slows the system down: ``429`` with
``errorcode`` ``50100`` and ``Retry-After`` (waited out by every worker), or ``50200`` ("Your requests
are temporarily blocked", no ``Retry-After``: backed off). The SDK keeps to 2,500 requests a minute
(40 a second rounded down: 20 per half second; assumed, the figure Salesforce support suggests).
``401`` with a token just obtained, and ``403`` (the package lacks ``data_extensions_read`` /
``data_extensions_write``) stop the sync with Marketing Cloud's ``message``.

``validate --connect`` obtains a token and reads one row of the data extension
(``GET /data/v1/customobjectdata/key/{key}/rowset?$page=1&$pagesize=1``): a missing data extension or a
package without access fails there. When the data extension holds a row, its ``keys`` and ``values``
name every column, and mapped names are checked against them (case-insensitively); an empty data
extension has no schema to read through this endpoint and mapped names are not checked.

Marketing Cloud's documentation this adapter follows:

- access token for server-to-server integrations (JSON body, ``account_id``, 20 minutes,
  ``rest_instance_url``): https://developer.salesforce.com/docs/marketing/marketing-cloud/guide/access-token-s2s
- Data Extensions Async API (PUT upsert, POST insert, status, results):
  https://developer.salesforce.com/docs/marketing/marketing-cloud/references/mc_rest_data_extensions/updateDataExtensionIDAsync.html
  https://developer.salesforce.com/docs/marketing/marketing-cloud/references/mc_rest_data_extensions/insertDataExtensionIDAsync.html
  https://developer.salesforce.com/docs/marketing/marketing-cloud/guide/getStatusDataExtensionAsync.html
  https://developer.salesforce.com/docs/marketing/marketing-cloud/guide/getResultsDataExtensionAsync.html
- synchronous rowset (5 MB, 50 rows as a best practice):
  https://developer.salesforce.com/docs/marketing/marketing-cloud/guide/postDataExtensionRowsetByKey.html
- rate limiting errors (429, errorcode 50100 with Retry-After, 50200):
  https://developer.salesforce.com/docs/atlas.en-us.noversion.mc-apis.meta/mc-apis/rate-limiting-errors.htm
- reading rows (``customobjectdata`` rowset, ``$page``, ``$pagesize``):
  https://developer.salesforce.com/docs/marketing/marketing-cloud/guide/data-extensions-api.html

Assumed where the pages say nothing precise: 500 rows per asynchronous request; 2,500 requests a minute;
the results' ``$page`` parameter for more than one page of errors; an error item other than a primary key
violation does not say which row it is about; a ``null`` value empties a column.
"""

from __future__ import annotations

import datetime as dt
import decimal
import difflib
import logging
import math
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import pydantic
from pydantic import Field

from dinmo_dagster.platforms import register_platform
from dinmo_dagster.platforms.audiences import OAuthBearer
from dinmo_dagster.platforms.base import (
    BatchOutcome,
    FieldInfo,
    HttpResponse,
    JobHandle,
    Limits,
    PlatformSettings,
    PreparedRequest,
    Record,
    RecordResult,
    ResponseKind,
    Signal,
)
from dinmo_dagster.platforms.identifiers import IdentifierSpec
from dinmo_dagster.platforms.oauth import OAuthSettings, OAuthToken

if TYPE_CHECKING:
    from dinmo_dagster.platforms.http import Transport

__all__ = ["MarketingCloud", "MarketingCloudSettings"]

logger = logging.getLogger("dinmo_dagster.platforms")

MAX_ROWS = 500  # assumed: the async rows API documents no count
MAX_BYTES = 5 * 1024 * 1024
RESULTS_PAGE = 50
_SUBDOMAIN = re.compile(r"[a-z0-9][a-z0-9-]{2,63}")
_MID = re.compile(r"\d{4,12}")
_COLUMN = re.compile(r"[A-Za-z_][A-Za-z0-9_ ]{0,127}")
_DUPLICATE = re.compile(r"duplicate key value is \((.*?)\)\.?(?:\s|$)", re.IGNORECASE)


class MarketingCloudSettings(OAuthSettings):
    """Settings of a ``type: salesforce_marketing_cloud`` destination."""

    service: Literal["attributes"] = Field(
        default="attributes", description="Marketing Cloud offers attributes."
    )
    grant_type: Literal["client_credentials"] = Field(  # type: ignore[assignment]
        default="client_credentials", description="Server-to-server packages use client credentials."
    )
    subdomain: str = Field(description="The tenant subdomain of the account's API endpoints.")
    account_id: str | None = Field(default=None, description="The business unit's MID (optional).")
    data_extension_key: str = Field(description="The external key of the data extension the rows go to.")
    poll_interval_seconds: float = Field(
        default=2.0, gt=0, le=300, description="Seconds between two polls of an asynchronous request."
    )

    @pydantic.field_validator("subdomain")
    @classmethod
    def _check_subdomain(cls, value: str) -> str:
        if not _SUBDOMAIN.fullmatch(value):
            raise ValueError(
                f"found {value!r}; allowed: the tenant subdomain alone (mc563885gzs27c5t9-63k636ttgm for "
                "https://mc563885gzs27c5t9-63k636ttgm.rest.marketingcloudapis.com)"
            )
        return value

    @pydantic.field_validator("account_id")
    @classmethod
    def _check_mid(cls, value: str | None) -> str | None:
        if value is not None and not _MID.fullmatch(value):
            raise ValueError(f"found {value!r}; allowed: the business unit's MID (digits)")
        return value

    @pydantic.field_validator("data_extension_key")
    @classmethod
    def _check_key(cls, value: str) -> str:
        if not value.strip() or "/" in value or "?" in value:
            raise ValueError(f"found {value!r}; allowed: a data extension's external key (no / or ?)")
        return value


class MarketingCloud(OAuthBearer):
    """Marketing Cloud data extension rows: asynchronous upserts and inserts."""

    name = "salesforce_marketing_cloud"
    settings_model = MarketingCloudSettings
    services: ClassVar[Mapping[str, tuple[str, ...]]] = {"attributes": ("upsert", "insert")}
    limits = Limits(
        max_records_per_batch=MAX_ROWS,
        max_bytes_per_batch=MAX_BYTES,
        requests_per_window=20,
        window_seconds=0.5,
        max_concurrency=4,
        envelope_bytes=64,
    )

    settings: MarketingCloudSettings

    def __init__(self, settings: PlatformSettings, *, destination: str = "") -> None:
        super().__init__(settings, destination=destination)
        self.poll_interval_seconds = self.settings.poll_interval_seconds  # type: ignore[misc]
        extra = {"account_id": self.settings.account_id} if self.settings.account_id else {}
        self.oauth = OAuthToken(
            self,
            default_token_url=f"https://{self.settings.subdomain}.auth.marketingcloudapis.com/v2/token",
            body="json",
            extra=extra,
        )

    @property
    def base_url(self) -> str:
        """``https://{subdomain}.rest.marketingcloudapis.com``, or the ``base_url`` setting."""
        return self.settings.base_url or f"https://{self.settings.subdomain}.rest.marketingcloudapis.com"

    def target_label(self) -> str:
        """``Marketing Cloud data extension 'Customers'``."""
        return f"Marketing Cloud data extension {self.settings.data_extension_key!r}"

    def _rows_path(self) -> str:
        return f"/data/v1/async/dataextensions/key:{self.settings.data_extension_key}/rows"

    # -- identifiers and activation checks ------------------------------------------------------------

    def identifier_spec(self, name: str) -> IdentifierSpec | None:
        """Any column name: the data extension's primary key column(s), sent as they are."""
        return IdentifierSpec("id") if _COLUMN.fullmatch(name) else None

    def validate_activation(self, match: Mapping[str, str], mapping: Mapping[str, str]) -> list[str]:
        """Column names in match (the primary key) and mapping."""
        problems = []
        if not match:
            problems.append("match: found nothing; allowed: the data extension's primary key column(s)")
        problems.extend(
            f"match.{name}: found {name!r}; allowed: a data extension column name"
            for name in match
            if self.identifier_spec(name) is None
        )
        for column, target in mapping.items():
            if not _COLUMN.fullmatch(str(target)):
                problems.append(f"mapping.{column}: found {target!r}; allowed: a data extension column name")
            elif str(target).lower() in {m.lower() for m in match}:
                problems.append(
                    f"mapping.{column}: found {target!r}; allowed: a column (the primary key goes in match)"
                )
        return problems

    # -- requests -------------------------------------------------------------------------------------

    def record_input(self, operation: str, record: Record) -> dict[str, Any]:
        """The row: its primary key value(s) and mapped columns."""
        return {**record.identifiers, **{name: mc_value(v) for name, v in record.fields.items()}}

    def build_request(
        self, operation: str, inputs: Sequence[Any], records: Sequence[Record]
    ) -> PreparedRequest:
        """``PUT`` (upsert) or ``POST`` (insert) of the rows, asynchronously."""
        method = "PUT" if operation == "upsert" else "POST"
        return PreparedRequest(method, self._rows_path(), json={"items": list(inputs)})

    def parse_response(
        self, operation: str, records: Sequence[Record], response: HttpResponse
    ) -> BatchOutcome:
        """The request queued (its ``requestId`` polled), or refused whole."""
        body = response.json() or {}
        request_id = body.get("requestId") if isinstance(body, dict) else None
        if response.status in (200, 202) and request_id:
            logger.info("%s: request %s queued for %d row(s)", self.label, request_id, len(records))
            return BatchOutcome(job=JobHandle(str(request_id)))
        if response.status == 400:
            if len(records) > 1:
                return BatchOutcome(split=True)
            return BatchOutcome.reject_all(records, self.error_message(response), _code(body))
        raise self.request_error(response, f"{'upserting' if operation == 'upsert' else 'inserting'} rows")

    def poll_job(
        self, operation: str, records: Sequence[Record], job: JobHandle, transport: Transport
    ) -> BatchOutcome:
        """The request's status; once done, its failed rows mapped back to the records."""
        response = transport.send(PreparedRequest("GET", f"/data/v1/async/{job.id}/status"))
        if response.status != 200:
            raise self.request_error(response, f"reading the status of request {job.id}")
        status = (response.json() or {}).get("status") or {}
        state = str(status.get("requestStatus") or "")
        if state.lower() == "pending":
            return BatchOutcome(job=job)
        if not status.get("hasErrors") and state.lower() in ("complete", "completed"):
            return BatchOutcome.accept_all(records)
        errors = self._errors(job, transport)
        if not errors:
            logger.warning(
                "%s: request %s ended %r without row errors; its rows are sent again",
                self.label,
                job.id,
                state,
            )
            return BatchOutcome([RecordResult(r.key, "retry") for r in records])
        return self._map_errors(operation, records, errors)

    def _errors(self, job: JobHandle, transport: Transport) -> list[dict[str, Any]]:
        """Every error item of the request's results (page by page)."""
        items: list[dict[str, Any]] = []
        page = 1
        while True:
            params = {"$page": str(page), "$pageSize": str(RESULTS_PAGE)} if page > 1 else None
            response = transport.send(
                PreparedRequest("GET", f"/data/v1/async/{job.id}/results", params=params)
            )
            if response.status != 200:
                raise self.request_error(response, f"reading the results of request {job.id}")
            body = response.json() or {}
            found = [i for i in body.get("items") or [] if isinstance(i, dict)]
            items += [i for i in found if str(i.get("status", "Error")).lower() == "error"]
            size = int(body.get("pageSize") or RESULTS_PAGE)
            if not found or page * size >= int(body.get("count") or 0):
                return items
            page += 1

    def _map_errors(
        self, operation: str, records: Sequence[Record], errors: Sequence[Mapping[str, Any]]
    ) -> BatchOutcome:
        by_key = {_key_text(r): r.key for r in records}
        verdicts: dict[str, RecordResult] = {}
        unnamed: list[Mapping[str, Any]] = []
        for error in errors:
            message = self.redact(str(error.get("message") or error.get("errorCode") or "error"))
            duplicate = _DUPLICATE.search(message)
            key = by_key.get(duplicate.group(1).strip().lower()) if duplicate else None
            if key is None:
                unnamed.append(error)
            elif operation == "insert":
                verdicts[key] = RecordResult(key, "accepted")  # already there: what insert asks
            else:
                verdicts.setdefault(
                    key, RecordResult(key, "rejected", message, str(error.get("errorCode") or "Error"))
                )
        if unnamed:
            if len(records) > 1:
                return BatchOutcome(split=True)
            error = unnamed[0]
            message = self.redact(str(error.get("message") or error.get("errorCode") or "error"))
            return BatchOutcome.reject_all(records, message, str(error.get("errorCode") or "Error"))
        return BatchOutcome([verdicts.get(r.key) or RecordResult(r.key, "accepted") for r in records])

    # -- responses ------------------------------------------------------------------------------------

    def classify(self, response: HttpResponse) -> Signal:
        """A ``429`` (50100 with ``Retry-After``, or 50200 "temporarily blocked") is waited out."""
        signal = super().classify(response)
        if response.status == 429 and signal.retry_after is None:
            body = response.json() or {}
            retry = body.get("retryAfter") if isinstance(body, dict) else None
            if isinstance(retry, (int, float)):
                return Signal(ResponseKind.RATE_LIMITED, float(retry), signal.message)
        return signal

    def error_message(self, response: HttpResponse) -> str:
        """Marketing Cloud's ``message`` (and ``errorcode``), or the first ``resultMessages``, secrets masked."""
        body = response.json()
        if isinstance(body, dict):
            for item in body.get("resultMessages") or []:
                if isinstance(item, dict) and (item.get("message") or item.get("resultMessage")):
                    return self.redact(str(item.get("message") or item.get("resultMessage")))
            if body.get("message"):
                code = body.get("errorcode")
                return self.redact(f"{body['message']}" + (f" (errorcode {code})" if code else ""))
        return super().error_message(response)

    # -- validate --connect -------------------------------------------------------------------------------

    def _rowset(self, transport: Transport) -> dict[str, Any]:
        key = self.settings.data_extension_key
        response = transport.send(
            PreparedRequest(
                "GET", f"/data/v1/customobjectdata/key/{key}/rowset", params={"$page": "1", "$pagesize": "1"}
            )
        )
        if response.status != 200:
            raise self.request_error(response, f"reading {self.target_label()}")
        body = response.json()
        return body if isinstance(body, dict) else {}

    def check_connection(self, transport: Transport) -> None:
        """A token, then one row of the data extension (it exists and the package may read it)."""
        self._rowset(transport)

    def discover_fields(self, transport: Transport) -> Mapping[str, FieldInfo] | None:
        """The columns a row of the data extension shows (None when it holds no row)."""
        items = [i for i in self._rowset(transport).get("items") or [] if isinstance(i, dict)]
        if not items:
            return None
        names = [*(items[0].get("keys") or {}), *(items[0].get("values") or {})]
        return {str(n).lower(): FieldInfo(str(n)) for n in names}

    def validate_fields(
        self, match: Mapping[str, str], mapping: Mapping[str, str], fields: Mapping[str, FieldInfo]
    ) -> list[str]:
        """Mapped and match columns against the row's columns, case-insensitively."""
        problems = []
        wanted = [(f"mapping.{c}", str(t)) for c, t in mapping.items()] + [(f"match.{n}", n) for n in match]
        for key, name in wanted:
            if name.lower() in fields:
                continue
            close = difflib.get_close_matches(name.lower(), list(fields), n=3)
            hint = f"; did you mean {', '.join(repr(fields[c].name) for c in close)}?" if close else ""
            problems.append(f"{key}: no column {name!r} in {self.target_label()}{hint}")
        return problems


def mc_value(value: Any) -> Any:
    """A warehouse value as Marketing Cloud JSON: text, numbers, booleans, decimals as exact text, ISO dates."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, decimal.Decimal):
        return str(value) if value.is_finite() else None
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.timezone.utc).replace(tzinfo=None)
        return value.isoformat(timespec="seconds")
    if isinstance(value, (dt.date, dt.time)):
        return value.isoformat()
    return str(value)


def _key_text(record: Record) -> str:
    """How a primary key violation quotes the record's key: ``(k)`` or ``(k1, k2)``, lower-cased."""
    return ", ".join(str(v) for v in record.identifiers.values()).strip().lower()


def _code(body: Any) -> str:
    if isinstance(body, dict):
        return str(body.get("errorcode") or body.get("errorCode") or "invalid")
    return "invalid"


register_platform("salesforce_marketing_cloud", MarketingCloudSettings, MarketingCloud)
