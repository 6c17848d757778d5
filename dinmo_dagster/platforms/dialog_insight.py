"""Dialog Insight: contact fields and opt-ins of one project, through the ``Contacts.Merge`` web service.

A ``type: dialog_insight`` destination (``service: attributes``) fills one project (``project_id``).
Dialog Insight's web services are JSON over HTTPS whose credentials travel in the body: every request
holds ``"AuthKey": {"idKey": <key_id>, "Key": <api_key>}`` and ``"idProject"``. The API root is
``https://app.dialoginsight.com/webservices/ofc4`` (Canadian platform; the French one is
``https://app.mydialoginsight.com/webservices/ofc4``: set ``base_url``). The key never appears in a
preview (shown as ``***``) nor in any message.

``POST /contacts.ashx?method=Merge`` with ``{"AuthKey", "idProject", "Records": [{"ID": {...}, "Data":
{...}}], "MergeOptions"}`` creates or updates contacts: ``ID`` holds the project key
(``key_f_EMail``: the activation's ``match`` names, written as the web services name them), ``Data``
the mapped fields, named as the web services name them: ``f_<code>`` for contact fields
(``f_FirstName``) and ``optin_<code>`` for consents (``optin_Newsletter``). ``MergeOptions`` says what
the operation may do: ``upsert`` allows insert and update, ``update`` update only (a contact the project
does not hold is left alone), ``insert`` insert only (an existing contact is left alone).

Consent: an ``optin_`` field is sent ``"1"`` when its column is true (``true``/``1``/``yes``), ``"0"``
when false, and left out when NULL or anything else, so a sync never subscribes a contact the segment
does not say consented (nor unsubscribes one it says nothing about). A NULL contact field is sent
``null`` (cleared) unless ``null_values: skip``.

The answer's ``Records`` (in request order) carry ``Success`` and, when false, ``ErrorCode`` /
``ErrorMessage``: such records are rejected with Dialog Insight's message and sent again by the next
sync. A request refused whole (``"Success": false`` with no ``Records``) for a bad credential
(``ErrorCode`` ``InvalidAuthKey`` / ``AccessDenied``) stops the sync; any other such refusal splits
the batch down to the bad record.

``validate --connect`` calls ``POST /projects.ashx?method=GetFields`` (``{"AuthKey", "idProject"}``):
the key and project are checked, and mapped names must be fields (``f_``) or opt-ins (``optin_``) of
the project.

Dialog Insight's documentation this adapter follows:

- web services (REST, JSON, API key, Canadian and French platforms, ``f_`` / ``key_f_`` / ``optin_``
  prefixes): https://developers.dialoginsight.com/en/support/solutions/articles/1000330259-web-services-presentation
- ``Contacts.Merge`` (create or update in one call, ``AuthKey`` ``idKey``/``Key``, ``idProject``,
  ``Records`` of ``ID``/``Data``): https://developers.dialoginsight.com/en/support/solutions/articles/1000330263-my-first-call-to-the-web-services
- opt-ins through ``Contacts.Merge`` (``optin_<code>``: ``1`` subscribes, ``0`` unsubscribes):
  https://developers.dialoginsight.com/en/support/solutions/articles/1000333948-opt-in-synchronization-using-web-services
- method reference (rendered by script, not readable here): https://app.dialoginsight.com/fe/webservices/about

Assumed where the method reference could not be read: the endpoint path and ``method`` query, the
``MergeOptions`` names (``AllowInsert``, ``AllowUpdate``), the answer's layout (``Success``,
``ErrorCode``, ``ErrorMessage``, per-record ``Records`` in request order), the auth error codes, the
``GetFields`` method and its ``Fields`` (``Code``, ``DataType``, ``IsOptin``), at most 500 records per
call, and a rate of 5 requests per second (no figure is published; ``429`` with ``Retry-After`` is
followed).
"""

from __future__ import annotations

import datetime as dt
import decimal
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, SecretStr

from dinmo_dagster.platforms import register_platform
from dinmo_dagster.platforms.base import (
    BatchOutcome,
    FieldInfo,
    HttpResponse,
    Limits,
    Platform,
    PlatformSettings,
    PreparedRequest,
    Record,
    RecordResult,
    ResponseKind,
    Signal,
)
from dinmo_dagster.platforms.identifiers import IdentifierSpec, normalize_email

if TYPE_CHECKING:
    from dinmo_dagster.platforms.http import Transport

__all__ = ["DialogInsight", "DialogInsightSettings"]

MAX_RECORDS = 500
MERGE_OPTIONS = {
    "upsert": {"AllowInsert": True, "AllowUpdate": True},
    "update": {"AllowInsert": False, "AllowUpdate": True},
    "insert": {"AllowInsert": True, "AllowUpdate": False},
}
AUTH_CODES = frozenset({"InvalidAuthKey", "AccessDenied", "AuthenticationFailed"})
MASK = "***"
TRUE = frozenset({"true", "1", "yes", "y", "t"})
FALSE = frozenset({"false", "0", "no", "n", "f"})


class DialogInsightSettings(PlatformSettings):
    """Settings of a ``type: dialog_insight`` destination."""

    service: Literal["attributes"] = Field(description="attributes (contact fields and opt-ins).")
    key_id: int = Field(ge=1, description="The API key's id (idKey).")
    api_key: SecretStr = Field(description="The API key (Key, from {env: VAR}); secret.")
    project_id: int = Field(ge=1, description="The project (idProject) the contacts belong to.")


class DialogInsight(Platform):
    """Dialog Insight contacts through ``Contacts.Merge``."""

    name = "dialog_insight"
    settings_model = DialogInsightSettings
    services: ClassVar[Mapping[str, tuple[str, ...]]] = {"attributes": ("upsert", "update", "insert")}
    default_base_url = "https://app.dialoginsight.com/webservices/ofc4"
    limits = Limits(
        max_records_per_batch=MAX_RECORDS,
        requests_per_window=5,
        window_seconds=1.0,
        max_concurrency=2,
        max_bytes_per_batch=4 * 1024 * 1024,
    )

    settings: DialogInsightSettings

    def target_label(self) -> str:
        """``Dialog Insight project 123``."""
        return f"Dialog Insight project {self.settings.project_id}"

    def _auth(self, real: bool) -> dict[str, Any]:
        key = self.settings.api_key.get_secret_value() if real else MASK
        return {"AuthKey": {"idKey": self.settings.key_id, "Key": key}, "idProject": self.settings.project_id}

    # -- identifiers and activation checks -------------------------------------------------------------

    def identifier_spec(self, name: str) -> IdentifierSpec | None:
        """A project key field (``key_f_<code>``); ``key_f_EMail`` is an e-mail (trimmed, lower-cased)."""
        if not name.startswith("key_f_"):
            return None
        if name.lower() == "key_f_email":
            return IdentifierSpec("email", normalize=lambda v, _c: normalize_email(v))
        return IdentifierSpec("id")

    def validate_activation(self, match: Mapping[str, str], mapping: Mapping[str, str]) -> list[str]:
        """Match names are ``key_f_`` fields; mapped names ``f_`` fields or ``optin_`` consents."""
        problems = []
        if not match:
            problems.append("match: found nothing; allowed: the project key, e.g. {key_f_EMail: email}")
        for name in match:
            if not name.startswith("key_f_"):
                problems.append(
                    f"match.{name}: found {name!r}; allowed: a project key field, e.g. key_f_EMail"
                )
        for column, target in mapping.items():
            if not target.startswith(("f_", "optin_")):
                problems.append(
                    f"mapping.{column}: found {target!r}; allowed: a field f_<code> or an opt-in optin_<code>"
                )
        return problems

    def discover_fields(self, transport: Transport) -> Mapping[str, FieldInfo] | None:
        """The project's fields and opt-ins, as the web services name them."""
        response = transport.send(self._get_fields(real=True))
        body = response.json() or {}
        if response.status != 200 or not body.get("Success"):
            raise self.request_error(response, f"reading the fields of {self.target_label()}")
        fields = {}
        for item in body.get("Fields") or []:
            name = ("optin_" if item.get("IsOptin") else "f_") + str(item.get("Code"))
            fields[name] = FieldInfo(name, type=item.get("DataType"))
        return fields

    def _get_fields(self, real: bool) -> PreparedRequest:
        return PreparedRequest(
            "POST", "/projects.ashx", params={"method": "GetFields"}, json=self._auth(real)
        )

    # -- requests ------------------------------------------------------------------------------------------

    def record_input(self, operation: str, record: Record) -> Any:
        """``{"ID": {key: value}, "Data": {field: value}}``; opt-ins only when the segment says."""
        data: dict[str, Any] = {}
        for name, value in record.fields.items():
            if name.startswith("optin_"):
                consent = consent_value(value)
                if consent is not None:
                    data[name] = consent
            else:
                data[name] = di_value(value)
        return {"ID": dict(record.identifiers), "Data": data}

    def _merge(self, operation: str, inputs: Sequence[Any], real: bool) -> PreparedRequest:
        body = {
            **self._auth(real),
            "Records": list(inputs),
            "MergeOptions": {**MERGE_OPTIONS[operation], "SkipDuplicateRecords": False},
        }
        return PreparedRequest("POST", "/contacts.ashx", params={"method": "Merge"}, json=body)

    def build_request(
        self, operation: str, inputs: Sequence[Any], records: Sequence[Record]
    ) -> PreparedRequest:
        """The Merge call (the key masked: :meth:`deliver_batch` sends the real one)."""
        return self._merge(operation, inputs, real=False)

    def deliver_batch(
        self, operation: str, records: Sequence[Record], inputs: Sequence[Any], transport: Transport
    ) -> BatchOutcome:
        """One Merge call with the real key."""
        return self.parse_response(
            operation, records, transport.send(self._merge(operation, inputs, real=True))
        )

    def parse_response(
        self, operation: str, records: Sequence[Record], response: HttpResponse
    ) -> BatchOutcome:
        """Per-record ``Success`` of ``Records``; a batch refused whole is split down to its bad record."""
        body = response.json() or {}
        results = body.get("Records")
        if response.status != 200 or not isinstance(results, list) or len(results) != len(records):
            if response.status in (200, 400) and len(records) > 1:
                return BatchOutcome(split=True)
            if response.status in (200, 400):
                return BatchOutcome.reject_all(
                    records, self.error_message(response), str(body.get("ErrorCode") or "invalid")
                )
            raise self.request_error(response, f"merging contacts into {self.target_label()}")
        out = []
        for record, result in zip(records, results):
            if result.get("Success"):
                out.append(RecordResult(record.key, "accepted"))
            else:
                code = str(result.get("ErrorCode") or "error")
                reason = self.redact(f"{code}: {result.get('ErrorMessage') or 'refused by Dialog Insight'}")
                out.append(RecordResult(record.key, "rejected", reason, code))
        return BatchOutcome(out)

    # -- responses ---------------------------------------------------------------------------------------------

    def classify(self, response: HttpResponse) -> Signal:
        """An auth ``ErrorCode`` (answered with HTTP 200 or 401) stops the sync."""
        body = response.json()
        if isinstance(body, dict) and body.get("Success") is False and body.get("ErrorCode") in AUTH_CODES:
            return Signal(ResponseKind.AUTH, message=self.error_message(response))
        return super().classify(response)

    def error_message(self, response: HttpResponse) -> str:
        """``ErrorMessage`` (with its ``ErrorCode``) of an answer."""
        body = response.json()
        if isinstance(body, dict) and body.get("ErrorMessage"):
            return self.redact(f"{body.get('ErrorCode') or 'Error'}: {body['ErrorMessage']}")
        return super().error_message(response)

    def check_connection(self, transport: Transport) -> None:
        """The key and project (:meth:`discover_fields` reads the project's fields)."""


def consent_value(value: Any) -> str | None:
    """``"1"`` for a true consent, ``"0"`` for a false one, None (left out) otherwise."""
    if isinstance(value, bool):
        return "1" if value else "0"
    text = str(value).strip().lower() if value is not None else ""
    return "1" if text in TRUE else "0" if text in FALSE else None


def di_value(value: Any) -> Any:
    """A warehouse value as JSON for Dialog Insight (exact decimals as numbers, dates in ISO 8601)."""
    if isinstance(value, decimal.Decimal):
        return (
            None
            if not value.is_finite()
            else int(value)
            if value == value.to_integral_value()
            else float(value)
        )
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    return value


register_platform("dialog_insight", DialogInsightSettings, DialogInsight)
