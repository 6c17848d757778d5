"""What the ad-platform audience adapters share: the audience an activation fills, OAuth bearer auth
and the checks of an identifier-only activation.

An audience adapter (Snapchat, Criteo, Reddit, LinkedIn, TikTok, Pinterest customer lists) fills one
audience named by the activation's ``audience``: ``{name: "VIP Europe"}`` (looked up by name, created
when missing) or ``{id: "5677923948298240"}``. The pieces:

- :class:`AudienceTarget`: the ``{name:}`` / ``{id:}`` model; a subclass sets ``noun`` (the word in
  messages: "segment", "custom audience", "customer list"), ``numeric_id`` (whether an id must be
  digits) and ``max_name_length``; its messages are ``audience.name: is empty; allowed: the segment's
  name``, ``audience.id: found 'abc'; allowed: the segment's numeric id`` and ``audience: found both
  name and id; allowed: {name: ...} or {id: ...}``.
- :class:`AudiencePlatform`: a :class:`Platform` whose settings have an ``audience``: the target
  label (``Snapchat segment 'VIP Europe'``), the audience id in request paths (a placeholder in a
  preview before it is resolved), and the find-or-create of an audience given by name, once per
  adapter under a lock (a name shared by several audiences is a configuration error).
- :class:`OAuthBearer`: ``Authorization: Bearer <token>`` from ``self.oauth`` (``oauth.py``), renewed
  once on any 401 (most of these platforms document no expired-token body; LinkedIn's is
  ``INVALID_ACCESS_TOKEN``, 65600/65601), and the access token masked like the settings' secrets.
- :class:`IdentifierTable`: the identifiers an adapter takes, ``name -> (kind, IdentifierSpec)``
  (the kind: what the platform receives it as, a schema or an identifier type), with aliases.
- :func:`advertising_id`: an IDFA / AAID (a UUID) checked the same way by every adapter.
- :func:`check_audience_activation`: the identifiers are known, one per kind the platform receives,
  no ``mapping`` (audiences take identifiers only), and an ``audience``.
"""

from __future__ import annotations

import logging
import re
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import pydantic
from pydantic import ConfigDict, Field

from dinmo_dagster.platforms.base import (
    BatchOutcome,
    HttpResponse,
    Platform,
    PlatformSettings,
    PreparedRequest,
    Record,
    RecordResult,
)
from dinmo_dagster.platforms.identifiers import IdentifierError, IdentifierSpec

if TYPE_CHECKING:
    from dinmo_dagster.platforms.http import Transport
    from dinmo_dagster.platforms.oauth import OAuthToken

__all__ = [
    "AUDIENCE_MISSING",
    "UUID",
    "AudiencePlatform",
    "AudienceTarget",
    "IdentifierTable",
    "KindProgress",
    "OAuthBearer",
    "OneRequestPerKind",
    "advertising_id",
    "check_audience_activation",
]

logger = logging.getLogger("dinmo_dagster.platforms")

AUDIENCE_MISSING = "audience: found nothing; allowed: {name: ...} or {id: ...}"
UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_DIGITS = re.compile(r"\d+")
_AD_ID = "a mobile advertising id (IDFA or AAID, 8-4-4-4-12 hex digits)"


class IdentifierTable(dict[str, tuple[str, IdentifierSpec]]):
    """An adapter's identifiers: ``name -> (kind, spec)``, the kind being what the platform receives
    the identifier as (``EMAIL_SHA256``); names are looked up lower-cased and through ``aliases``
    (``madid`` -> ``mobile_ad_id``). A dict of the canonical names, in the order messages list them."""

    def __init__(
        self, entries: Mapping[str, tuple[str, IdentifierSpec]], aliases: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(entries)
        self.aliases = dict(aliases or {})

    def canonical(self, name: str) -> str:
        """The table's name for ``name`` (lower-cased, aliases resolved)."""
        return self.aliases.get(name.lower(), name.lower())

    def kind_of(self, name: str) -> str | None:
        """What ``name`` is sent as, None when the table does not know it."""
        entry = self.get(self.canonical(name))
        return entry[0] if entry else None

    def spec(self, name: str) -> IdentifierSpec | None:
        """How ``name`` is prepared, None when the table does not know it."""
        entry = self.get(self.canonical(name))
        return entry[1] if entry else None

    def by_kind(self, identifiers: Mapping[str, str]) -> dict[str, str]:
        """A record's identifier values by kind (its names are known: the activation was checked)."""
        return {self[self.canonical(name)][0]: value for name, value in identifiers.items()}


def advertising_id(text: str, what: str = _AD_ID) -> str:
    """A mobile advertising id (IDFA, AAID/GAID: a UUID), trimmed, its case kept; else
    ``IdentifierError("not <what>")`` (the value is never in the message)."""
    value = text.strip()
    if not UUID.fullmatch(value):
        raise IdentifierError(f"not {what}")
    return value


class AudienceTarget(pydantic.BaseModel):
    """The audience an activation fills: ``{name: ...}`` (created when missing) or ``{id: ...}``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    noun: ClassVar[str] = "audience"  # how messages name the audience: "the segment's name"
    numeric_id: ClassVar[bool] = True  # ids are digits
    max_name_length: ClassVar[int | None] = None

    name: str | None = Field(default=None, description="The audience's name.")
    id: str | None = Field(default=None, description="The audience's id.")

    @pydantic.field_validator("name")
    @classmethod
    def _check_name(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError(f"is empty; allowed: the {cls.noun}'s name")
        if value is not None and cls.max_name_length is not None and len(value) > cls.max_name_length:
            raise ValueError(f"has {len(value)} characters; allowed: at most {cls.max_name_length}")
        return value

    @pydantic.field_validator("id", mode="before")
    @classmethod
    def _check_id(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if cls.numeric_id and value is not None and not (isinstance(value, str) and _DIGITS.fullmatch(value)):
            raise ValueError(f"found {value!r}; allowed: the {cls.noun}'s numeric id")
        return value

    @pydantic.model_validator(mode="after")
    def _one_of(self) -> AudienceTarget:
        if (self.name is None) == (self.id is None):
            found = "both name and id" if self.name is not None else "neither name nor id"
            raise ValueError(f"found {found}; allowed: {{name: ...}} or {{id: ...}}")
        return self


def check_audience_activation(
    match: Mapping[str, str],
    mapping: Mapping[str, str],
    *,
    kind_of: Callable[[str], str | None],
    allowed: str,
    takes: str,
    has_audience: bool,
    allowed_for: str = "allowed",
) -> list[str]:
    """The problems of an identifier-only audience activation (empty: none).

    ``kind_of`` gives what an identifier name sends (a schema, an identifier type) or None when the
    platform does not know it; two names sending the same kind are a problem. ``allowed`` lists the
    names, ``takes`` names the audiences (``Snapchat segments``) in the mapping message, and
    ``allowed_for`` words the unknown-name message (``allowed for segment_type user``).
    """
    problems = []
    if not match:
        problems.append(f"identifiers: found nothing; allowed: at least one of {allowed}")
    seen: dict[str, str] = {}
    for name in match:
        kind = kind_of(name)
        if kind is None:
            problems.append(f"identifiers.{name}: found {name!r}; {allowed_for}: {allowed}")
            continue
        if kind in seen:
            problems.append(f"identifiers.{name}: {seen[kind]} already sends {kind}; keep one of them")
        seen[kind] = name
    if mapping:
        problems.append(f"mapping: found {', '.join(mapping)}; allowed: nothing ({takes} take identifiers only)")
    if not has_audience:
        problems.append(AUDIENCE_MISSING)
    return problems


class AudiencePlatform(Platform):
    """A platform whose settings' ``audience`` (an :class:`AudienceTarget`) names what it fills.

    A subclass sets ``audience_label`` (``Snapchat segment``) and ``audience_noun`` (``segment``, in
    the placeholder of an unresolved id) and, to create audiences given by name, implements
    ``_find_by_name`` and ``_create_named`` (called by :meth:`_resolve_audience`); to empty the
    audience before a full sync (platforms with no atomic replace), ``_clear_request`` (and
    ``_cleared_ok`` when a 2xx is not enough), used by :meth:`_clear_once` and :meth:`_end_replace`.
    """

    audience_label: ClassVar[str]
    audience_noun: ClassVar[str]
    # the identifiers, for the default identifier_spec, validate_activation and record_input below
    identifier_table: ClassVar[IdentifierTable | None] = None
    audiences_taking: ClassVar[str] = ""  # "Snapchat segments" in "(... take identifiers only)"

    def __init__(self, settings: PlatformSettings, *, destination: str = "") -> None:
        super().__init__(settings, destination=destination)
        self._lock = threading.Lock()
        target = self.audience_target
        self._audience_id: str | None = target.id if target else None
        # transport (one per delivery) -> its full sync already emptied the audience
        self._cleared: weakref.WeakKeyDictionary[Transport, bool] = weakref.WeakKeyDictionary()

    @property
    def audience_target(self) -> AudienceTarget | None:
        """The settings' ``audience`` (from the activation), or None."""
        target: AudienceTarget | None = getattr(self.settings, "audience", None)
        return target

    def target_label(self) -> str:
        """``Snapchat segment 'VIP Europe'`` or ``Snapchat segment 5677...``."""
        target = self.audience_target
        if target is None:
            return f"a {self.audience_label}"
        return f"{self.audience_label} {target.name!r}" if target.name else f"{self.audience_label} {target.id}"

    def identifier_spec(self, name: str) -> IdentifierSpec | None:
        """The ``identifier_table``'s spec for ``name`` (module docstring of the adapter)."""
        return self.identifier_table.spec(name) if self.identifier_table is not None else None

    def validate_activation(self, match: Mapping[str, str], mapping: Mapping[str, str]) -> list[str]:
        """Known identifiers, one per kind; no mapping; an audience (:func:`check_audience_activation`)."""
        table = self.identifier_table if self.identifier_table is not None else IdentifierTable({})
        return check_audience_activation(
            match, mapping, kind_of=table.kind_of, allowed=", ".join(table), takes=self.audiences_taking,
            has_audience=self.audience_target is not None,
        )

    def record_input(self, operation: str, record: Record) -> Any:
        """The record's identifier values by kind (what the platform receives them as)."""
        assert self.identifier_table is not None
        return self.identifier_table.by_kind(record.identifiers)

    def _audience_ref(self) -> str:
        """The audience id in a path, or a placeholder before an audience given by name is resolved."""
        if self._audience_id:
            return self._audience_id
        target = self.audience_target
        noun = self.audience_noun
        return f"<id of {noun} {target.name!r}>" if target and target.name else f"<{noun}>"

    def _resolve_audience(self, transport: Transport) -> str:
        """The audience id: given, or found by name, or created (once, whichever worker comes first)."""
        with self._lock:
            if self._audience_id is None:
                target = self.audience_target
                if target is None or target.name is None:
                    raise self.config_error(AUDIENCE_MISSING)
                self._audience_id = self._find_by_name(target.name, transport) or self._create_named(
                    target, transport
                )
            return self._audience_id

    def _find_by_name(self, name: str, transport: Transport) -> str | None:
        """The id of the one audience named ``name``, None when there is none."""
        raise NotImplementedError(f"{type(self).__name__} does not look audiences up by name")

    def _create_named(self, target: AudienceTarget, transport: Transport) -> str:
        """Create the audience ``target.name``; its id."""
        raise NotImplementedError(f"{type(self).__name__} does not create audiences")

    def _read(self, transport: Transport, path: str, what: str) -> None:
        """``GET path`` (``validate --connect``); any answer but 200 stops with ``reading <what>``."""
        response = transport.send(PreparedRequest("GET", path))
        if response.status != 200:
            raise self.request_error(response, f"reading {what}")

    def _clear_request(self, ref: str | None = None) -> PreparedRequest:
        """The request that removes every member of audience ``ref`` (default: the resolved one)."""
        raise NotImplementedError(f"{type(self).__name__} does not empty audiences")

    def _cleared_ok(self, response: HttpResponse) -> bool:
        """Whether the answer to :meth:`_clear_request` says the audience was emptied."""
        return 200 <= response.status < 300

    def _clear_once(self, transport: Transport) -> None:
        """Empty the audience once per delivery (``transport``), before the first add of a full sync."""
        with self._lock:
            if self._cleared.get(transport):
                return
            response = transport.send(self._clear_request())
            if not self._cleared_ok(response):
                raise self.request_error(response, f"removing every member of {self.target_label()} (full sync)")
            self._cleared[transport] = True
            logger.info("%s: emptied %s before a full sync", self.label, self.target_label())

    def _end_replace(self, transport: Transport) -> None:
        """The end of a full sync: one that sent no record still empties the audience (which is then
        empty); the delivery is then forgotten."""
        self._resolve_audience(transport)
        self._clear_once(transport)
        with self._lock:
            self._cleared.pop(transport, None)

    def _the_one_named(self, name: str, found: list[str], where: str) -> str | None:
        """``found`` ids of audiences named ``name`` among ``where``: the only one, None, or an error."""
        if len(found) > 1:
            raise self.config_error(
                f"audience.name: {len(found)} {where} are named {name!r} "
                f"(ids {', '.join(found)}); allowed: a unique name, or audience: {{id: ...}}"
            )
        return found[0] if found else None


class KindProgress:
    """Which records of a batch sent as one request per identifier kind are done, as the requests are
    answered: a record is done once the requests of all its kinds were answered without rejecting it.
    :meth:`answered` hands the records it completes to the engine (``Platform.acknowledge_early``), so a
    sync killed while a batch's later kinds are sent does not send the finished records again; a batch of
    one request is journalled when it ends, like any other."""

    def __init__(
        self, platform: Platform, records: Sequence[Record], plan: Sequence[tuple[str, list[int]]]
    ) -> None:
        self._platform = platform
        self._records = records
        self._early = len(plan) > 1
        self._left = [0] * len(records)  # requests still to answer, per record
        for _, indexes in plan:
            for i in indexes:
                self._left[i] += 1

    def answered(self, indexes: Sequence[int], failed: Mapping[int, RecordResult]) -> None:
        """The request for the records at ``indexes`` was answered; ``failed``: the batch's rejections so far."""
        done = []
        for i in indexes:
            self._left[i] -= 1
            if self._left[i] == 0 and i not in failed:
                done.append(RecordResult(self._records[i].key, "accepted"))
        if self._early:
            self._platform.acknowledge_early(done)


class OneRequestPerKind(AudiencePlatform):
    """An audience platform that takes one identifier kind per request (Snapchat schemas, Criteo
    identifierTypes) and has no atomic replace: a batch is sent as one request per kind its records hold,
    in ``identifier_order``, and a full sync empties the audience once before its first add.

    An adapter gives ``identifier_order``, :meth:`_kind_request` (the request for one kind's values),
    :meth:`_kind_rejections` (the records one answer rejects, or raise) and ``_clear_request``.
    """

    identifier_order: ClassVar[tuple[str, ...]] = ()

    def _requests(self, inputs: Sequence[Mapping[str, str]]) -> list[tuple[str, list[int]]]:
        """(kind, indexes of the inputs that have it), in ``identifier_order``."""
        return [
            (kind, [i for i, row in enumerate(inputs) if kind in row])
            for kind in self.identifier_order
            if any(kind in row for row in inputs)
        ]

    def _kind_request(self, operation: str, kind: str, values: list[str]) -> PreparedRequest:
        """The request that adds (or removes) ``values`` of identifier ``kind``."""
        raise NotImplementedError

    def _kind_rejections(
        self, operation: str, kind: str, indexes: list[int], inputs: Sequence[Any], records: Sequence[Record],
        response: HttpResponse,
    ) -> dict[int, RecordResult]:
        """The records (by index) that the answer to one kind's request rejects; raise for a failed request."""
        raise NotImplementedError

    def build_request(self, operation: str, inputs: Sequence[Any], records: Sequence[Record]) -> PreparedRequest:
        """The first request of the batch (one per identifier kind is sent: see :meth:`deliver_batch`)."""
        kind, indexes = self._requests(inputs)[0]
        return self._kind_request(operation, kind, [inputs[i][kind] for i in indexes])

    def preview_request(self, operation: str, inputs: Sequence[Any], records: Sequence[Record]) -> PreparedRequest:
        """The first request; a replace shows that the audience is emptied first."""
        request = self.build_request(operation, inputs, records)
        if operation != "replace":
            return request
        clear = self._clear_request(self._audience_ref())
        first = f"{clear.method} {clear.path} (once, before the first add)"
        return PreparedRequest(request.method, request.path, json={**request.json, "first": first})

    def deliver_batch(
        self, operation: str, records: Sequence[Record], inputs: Sequence[Any], transport: Transport
    ) -> BatchOutcome:
        """Resolve the audience, empty it first in a replace, then one request per identifier kind; the
        records all of whose kinds were sent are handed to the engine as they are (:class:`KindProgress`)."""
        self._resolve_audience(transport)
        if operation == "replace":
            self._clear_once(transport)
        failed: dict[int, RecordResult] = {}
        plan = self._requests(inputs)
        progress = KindProgress(self, records, plan)
        for kind, indexes in plan:
            response = transport.send(self._kind_request(operation, kind, [inputs[i][kind] for i in indexes]))
            for i, result in self._kind_rejections(operation, kind, indexes, inputs, records, response).items():
                failed.setdefault(i, result)
            progress.answered(indexes, failed)
        return BatchOutcome(
            [failed.get(i) or RecordResult(record.key, "accepted") for i, record in enumerate(records)]
        )

    def finish_operation(self, operation: str, pending: Sequence[str], transport: Transport) -> BatchOutcome:
        """A replace that sent no record still empties the audience (which is then empty)."""
        if operation == "replace":
            self._end_replace(transport)
        return BatchOutcome()


class OAuthBearer(Platform):
    """Bearer auth from ``self.oauth`` (an :class:`OAuthToken` the adapter makes in ``__init__``;
    None where the destination uses a static token instead, see Pinterest)."""

    oauth: OAuthToken | None

    def auth_headers(self) -> dict[str, str]:
        """The OAuth access token as a bearer token (renewed before it expires)."""
        assert self.oauth is not None
        return self.oauth.headers()

    def renew_auth(self, response: HttpResponse, sent: Mapping[str, str]) -> bool:
        """Any 401: renew the access token once (most platforms document no expired-token body)."""
        return self.oauth is not None and response.status == 401 and self.oauth.renew(sent)

    def runtime_secrets(self) -> list[str]:
        """The access token obtained from the platform, masked like the settings' secrets."""
        token = self.oauth.current if self.oauth is not None else None
        return [token] if token else []
