"""A local fake of Dialog Insight's web services (``Contacts.Merge``, ``GetFields``) for one project.

Contract (cited, and stated as assumed where the method reference could not be read, in
``dinmo_dagster/platforms/dialog_insight.py``):

* **Auth** -- ``AuthKey`` ``{idKey, Key}`` in the body; a wrong one is HTTP 200 ``{"Success": false,
  "ErrorCode": "InvalidAuthKey", "ErrorMessage": "Invalid authentication key"}``; an unknown
  ``idProject`` is ``AccessDenied``.
* **Merge** -- ``POST /contacts.ashx?method=Merge`` ``{"Records", "MergeOptions": {"AllowInsert",
  "AllowUpdate"}}``: more than 500 records is ``{"Success": false, "ErrorCode": "TooManyRecords"}``;
  else per-record ``Records`` in request order: a field the project lacks is ``UnknownField``, a key
  named by :meth:`DialogInsightFake.fail` fails with its message (once); contacts are created or
  updated as the options allow, ``optin_`` values must be ``"0"``/``"1"`` (``InvalidOptinValue``).
* **Fields** -- ``POST /projects.ashx?method=GetFields`` -> ``{"Success", "Fields": [{"Code",
  "DataType", "IsOptin"}]}``.
* **Rate limit** -- :meth:`DialogInsightFake.throttle` answers HTTP 429 with ``Retry-After: 0``.
"""

from __future__ import annotations

from typing import Any

from dinmo_dagster.fakes.server import FakeRequest, FakeResponse
from fakes.common import RecordingFake

MAX_RECORDS = 500


class DialogInsightFake(RecordingFake):
    """One Dialog Insight project in memory, served on loopback (a context manager)."""

    def __init__(
        self,
        key_id: int,
        key: str,
        project: int,
        *,
        fields: tuple[str, ...] = ("EMail", "FirstName", "LastName"),
        optins: tuple[str, ...] = ("Newsletter",),
    ) -> None:
        self.key_id, self.key, self.project = key_id, key, project
        self.fields, self.optins = fields, optins
        self.contacts: dict[str, dict[str, Any]] = {}  # key_f_EMail -> Data
        self._failing: dict[str, str] = {}
        super().__init__()

    def fail(self, message: str, *emails: str) -> None:
        """The next merge of these e-mails fails with ``message`` (once)."""
        self._failing.update(dict.fromkeys(emails, message))

    def _answer(self, request: FakeRequest) -> FakeResponse:
        if self._throttled:
            self._throttled -= 1
            return FakeResponse(
                429,
                {"Success": False, "ErrorCode": "TooManyRequests", "ErrorMessage": "Too many requests"},
                {"Retry-After": "0"},
            )
        body = request.json if isinstance(request.json, dict) else {}
        auth = body.get("AuthKey") or {}
        if auth.get("idKey") != self.key_id or auth.get("Key") != self.key:
            return FakeResponse(
                200,
                {
                    "Success": False,
                    "ErrorCode": "InvalidAuthKey",
                    "ErrorMessage": "Invalid authentication key",
                },
            )
        if body.get("idProject") != self.project:
            return FakeResponse(
                200,
                {
                    "Success": False,
                    "ErrorCode": "AccessDenied",
                    "ErrorMessage": "No access to this project",
                },
            )
        method = request.query.get("method")
        if request.path == "/projects.ashx" and method == "GetFields":
            return FakeResponse(
                200,
                {
                    "Success": True,
                    "Fields": [
                        *({"Code": f, "DataType": "Text", "IsOptin": False} for f in self.fields),
                        *({"Code": o, "DataType": "Boolean", "IsOptin": True} for o in self.optins),
                    ],
                },
            )
        if request.path == "/contacts.ashx" and method == "Merge":
            return self._merge(body)
        return FakeResponse(404, {"Success": False, "ErrorCode": "UnknownMethod", "ErrorMessage": "Unknown"})

    def _merge(self, body: dict[str, Any]) -> FakeResponse:
        records = body.get("Records") or []
        if len(records) > MAX_RECORDS:
            return FakeResponse(
                200,
                {
                    "Success": False,
                    "ErrorCode": "TooManyRecords",
                    "ErrorMessage": f"At most {MAX_RECORDS} records per call",
                },
            )
        options = body.get("MergeOptions") or {}
        known = {f"f_{f}" for f in self.fields} | {f"optin_{o}" for o in self.optins}
        out = []
        for record in records:
            email = (record.get("ID") or {}).get("key_f_EMail")
            data = record.get("Data") or {}
            unknown = [n for n in data if n not in known]
            bad_optin = [n for n, v in data.items() if n.startswith("optin_") and v not in ("0", "1")]
            if email in self._failing:
                out.append(
                    {"Success": False, "ErrorCode": "InvalidValue", "ErrorMessage": self._failing.pop(email)}
                )
            elif unknown:
                out.append(
                    {
                        "Success": False,
                        "ErrorCode": "UnknownField",
                        "ErrorMessage": f"Unknown field {unknown[0]}",
                    }
                )
            elif bad_optin:
                out.append({"Success": False, "ErrorCode": "InvalidOptinValue", "ErrorMessage": bad_optin[0]})
            elif email in self.contacts:
                if options.get("AllowUpdate"):
                    self.contacts[email].update(data)
                out.append({"Success": True, "Action": "Update" if options.get("AllowUpdate") else "None"})
            elif options.get("AllowInsert"):
                self.contacts[email] = dict(data)
                out.append({"Success": True, "Action": "Insert"})
            else:
                out.append({"Success": True, "Action": "None"})
        return FakeResponse(200, {"Success": True, "Records": out})
