"""June (june.so, product analytics): audiences as a boolean user trait, over June's tracking HTTP API.

June has no contact-list API: what it offers a sender is Segment-style tracking (``identify``,
``track``, ``group``). An audience is therefore a user trait. A ``type: june`` destination
(``service: audiences``) sets, for each member of the activation's ``audience: {name: ...}``, the
trait named after the audience (or the ``trait`` setting) to ``true`` with ``POST /sdk/identify``
``{"userId", "traits": {"<trait>": true}}``, and a user who leaves the segment gets it set to
``false``; a June cohort filtered on ``<trait> is true`` then holds the audience. A boolean per
audience (rather than one list-valued trait of every audience) keeps each call idempotent: June offers
no read of a user's traits to merge a list with.

Users are named by ``user_id`` (June's ``userId``, the id the product tracks them with, sent as the
warehouse holds it); an optional ``email`` identifier (trimmed, lower-cased) is sent in ``traits``
too, as June reads a user's e-mail from there. Nothing is hashed: June needs the ids it tracks.

Every request carries the workspace's write key as ``Authorization: Basic <write key>`` (``write_key``,
from ``{env: VAR}``); the API root is ``https://api.june.so`` (``base_url`` overrides it). A call
answers ``200 {"status": 200, "success": true}``. June documents no batch endpoint: a batch of 100
users is sent as 100 calls (one at a time, so a refused user is rejected alone with June's message,
and sent again next sync); ``401`` stops the sync.

June's documentation this adapter follows:

- identify (``POST https://api.june.so/sdk/identify``, ``userId``/``anonymousId``, ``traits``, the
  e-mail read from the payload or ``traits``, the answer): https://www.june.so/docs/tracking/http-api/identify
- the identify request schema: https://schemas.apis.io/schemas/june/june-identify-request/
- endpoints of June's tracking API (identify, track, group), as a June-compatible vendor lists them:
  https://developer.accoil.com/docs/accoil-june-api-differences
- a server-side integration's mapping (userId required, traits, timestamp):
  https://www.rudderstack.com/docs/destinations/streaming-destinations/june/june-cloud-mode/

Assumed, as the pages read do not state it: the ``Authorization: Basic <write key>`` header (the write
key as is, the form June's HTTP API examples use), no batch endpoint, the error answers (``401`` for a
wrong key, ``400`` with ``{"message"}`` for a refused payload), and the rate: no limit is published;
the SDK keeps to 20 requests per second (4 at once) and follows ``429`` with ``Retry-After``. The
meaning of "audience" for June (a boolean trait) is this adapter's choice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, SecretStr

from dinmo_dagster.platforms import register_platform
from dinmo_dagster.platforms.audiences import AudiencePlatform, AudienceTarget, IdentifierTable
from dinmo_dagster.platforms.base import (
    BatchOutcome,
    HttpResponse,
    Limits,
    PlatformSettings,
    PreparedRequest,
    Record,
    RecordResult,
)
from dinmo_dagster.platforms.identifiers import IdentifierSpec, normalize_email

if TYPE_CHECKING:
    from dinmo_dagster.platforms.http import Transport

__all__ = ["June", "JuneAudience", "JuneSettings"]

IDENTIFIERS = IdentifierTable(
    {
        "user_id": ("userId", IdentifierSpec("id")),
        "email": (
            "email",
            IdentifierSpec("email", optional=True, normalize=lambda v, _c: normalize_email(v)),
        ),
    },
    aliases={"userid": "user_id"},
)


class JuneAudience(AudienceTarget):
    """An audience of June users: ``{name: ...}`` (the trait set on its members)."""

    noun: ClassVar[str] = "audience"
    numeric_id: ClassVar[bool] = False
    max_name_length: ClassVar[int | None] = 200


class JuneSettings(PlatformSettings):
    """Settings of a ``type: june`` destination."""

    service: Literal["audiences"] = Field(description="audiences (a boolean user trait per audience).")
    write_key: SecretStr = Field(description="The workspace's write key (from {env: VAR}); secret.")
    audience: JuneAudience | None = Field(default=None, description="The audience, from the activation.")
    trait: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="The trait set on members; default: the audience's name.",
    )


class June(AudiencePlatform):
    """June users: an audience is a boolean trait set by identify calls."""

    name = "june"
    settings_model = JuneSettings
    services: ClassVar[Mapping[str, tuple[str, ...]]] = {"audiences": ("add", "remove")}
    default_base_url = "https://api.june.so"
    limits = Limits(max_records_per_batch=100, requests_per_window=20, window_seconds=1.0, max_concurrency=4)
    audience_label = "June audience trait"
    audience_noun = "audience"
    audiences_taking = "June audiences"
    identifier_table = IDENTIFIERS

    settings: JuneSettings

    def auth_headers(self) -> dict[str, str]:
        """``Authorization: Basic <write key>``."""
        return {"Authorization": f"Basic {self.settings.write_key.get_secret_value()}"}

    @property
    def trait(self) -> str:
        """The trait an audience sets: ``trait``, else the audience's name (or id)."""
        target = self.audience_target
        return (
            self.settings.trait or (target.name or target.id or "") if target else (self.settings.trait or "")
        )

    def target_label(self) -> str:
        """``June audience trait 'VIP Europe'``."""
        return f"{self.audience_label} {self.trait!r}"

    def validate_activation(self, match: Mapping[str, str], mapping: Mapping[str, str]) -> list[str]:
        """``user_id`` is required (June identifies users by it); ``email`` may go along."""
        problems = super().validate_activation(match, mapping)
        if match and "user_id" not in {IDENTIFIERS.canonical(n) for n in match}:
            problems.append(
                "identifiers.user_id: found nothing; allowed: the user id June tracks the user with "
                "(June identifies users by userId)"
            )
        return problems

    def record_input(self, operation: str, record: Record) -> Any:
        """One identify call's body."""
        ids = IDENTIFIERS.by_kind(record.identifiers)
        traits: dict[str, Any] = {self.trait: operation == "add"}
        if ids.get("email"):
            traits["email"] = ids["email"]
        return {"userId": ids["userId"], "traits": traits}

    def build_request(
        self, operation: str, inputs: Sequence[Any], records: Sequence[Record]
    ) -> PreparedRequest:
        """The identify call of the batch's first user (one call per user is sent)."""
        return self._identify(inputs[0])

    def _identify(self, body: Mapping[str, Any]) -> PreparedRequest:
        return PreparedRequest("POST", "/sdk/identify", json=dict(body))

    def deliver_batch(
        self, operation: str, records: Sequence[Record], inputs: Sequence[Any], transport: Transport
    ) -> BatchOutcome:
        """One identify call per user (up to 100 a batch), each verdict its own, handed to the engine as it
        comes (``acknowledge_early``): a sync killed mid-batch does not send it again."""
        results: list[RecordResult] = []
        for record, body in zip(records, inputs):
            answered = self.parse_response(operation, [record], transport.send(self._identify(body))).results
            results += answered
            self.acknowledge_early(answered)
        return BatchOutcome(results)

    def parse_response(
        self, operation: str, records: Sequence[Record], response: HttpResponse
    ) -> BatchOutcome:
        """``200 {"success": true}`` accepts; a ``4xx`` rejects the user with June's message."""
        body = response.json()
        if response.status == 200 and (not isinstance(body, dict) or body.get("success", True)):
            return BatchOutcome.accept_all(records)
        if 400 <= response.status < 500:
            return BatchOutcome(
                [
                    RecordResult(r.key, "rejected", self.error_message(response), f"HTTP {response.status}")
                    for r in records
                ]
            )
        raise self.request_error(response, "POST /sdk/identify")


register_platform("june", JuneSettings, June)
