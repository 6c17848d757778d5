"""Braze: user attributes, custom events, subscription states and audiences, over Braze's REST API.

A ``type: braze`` destination serves one ``service`` (DinMo: one destination per use case). Every
service names a user by the activation's single ``match`` identifier: ``external_id``,
``user_alias`` (the column holds the alias name; ``alias_label`` comes from the settings), ``email``
or ``phone`` (sent in E.164; national numbers use the activation's ``default_country``). Braze
needs the real address or number to message the user, so nothing is hashed.

- ``attributes`` -- ``POST /users/track`` with ``attributes`` objects, one per record, whose keys
  are the mapped attributes (custom attributes or Braze's profile fields such as ``first_name``).
  ``upsert`` sends ``_update_existing_only: false`` (Braze creates the profile when it has none,
  alias-only profiles included), ``update`` sends ``true`` (profiles Braze does not hold are left
  alone, and count as done). Braze has no "create only" flag, so ``insert`` is not offered.
  ``delete`` (the removals of ``sync_mode: mirror``) depends on the ``mirror`` setting:
  ``clear_attributes`` (the default) sets every mapped attribute of the user that left to ``null``,
  which removes it from the profile, with ``_update_existing_only: true``; ``delete_users`` deletes
  the whole profile through ``POST /users/delete`` (at most 50 ids per request, ``external_id`` or
  ``user_alias`` only, permission ``users.delete``). DinMo clears by default because Braze's deletion
  cannot be undone and takes what the SDKs, campaigns and other sources put on the profile with it:
  leaving a segment is rarely a reason to erase a customer.
- ``events`` -- ``POST /users/track`` with ``events`` objects: ``name`` is the ``event_name``
  setting, ``time`` the record's field mapped to ``time`` (the fact model's time column; a naive
  timestamp is taken as UTC), every other mapped field is an event property (NULL properties are
  left out). Braze does **not** de-duplicate events ("each event ingested into Braze has its own
  event ID, so duplicate events are treated as separate, unique events"): the delivery journal keeps
  acknowledged batches from being sent again when a sync is retried, but a request that timed out
  after Braze processed it is sent again (at least once, not exactly once). An event without a time
  is rejected before anything is sent.
- ``subscriptions`` -- ``POST /v2/subscription/status/set`` on the ``subscription_group_id``
  setting, at most 50 users per request. The state comes from the field mapped to
  ``subscription_state``: ``true`` or ``subscribed`` subscribes, ``false`` or ``unsubscribed``
  unsubscribes; anything else (NULL included) is rejected and changes nothing, so DinMo never
  subscribes anyone the segment does not say consented. ``delete`` (mirror) unsubscribes the users
  who left the segment. Braze ignores ids it does not know and reports nothing per user.
- ``audiences`` -- membership as a REST key can write it, through ``POST /users/track``:
  ``membership: array`` (the default) adds the ``audience`` setting's name to the custom attribute
  array ``audience_attribute`` (default ``dinmo_audiences``) with ``{"add": [name]}`` and takes it
  out with ``{"remove": [name]}``, leaving the other audiences in the array alone;
  ``membership: boolean`` sets the custom attribute ``audience_attribute`` to ``true`` / ``false``.
  Adds do not create profiles unless ``create_users: true`` (a profile made only to hold a list
  membership has nothing to message). Braze has no "replace the membership" or "clear this value
  from every user" operation, and no cheap listing of the users holding a value (its only listing is
  the asynchronous export of a dashboard segment, ``/users/export/segment``), so ``replace`` is not
  offered and a full sync does not clear the audience: it is remove + add, ``remove`` for every
  record DinMo had put in the audience that left it and for the old identifiers of a member whose
  identifiers changed (both under the values last delivered; removing a value a user does not hold
  changes nothing), then ``add`` for every member. Users given the value by something other than
  DinMo are not cleared. Braze keeps at most 25 values in an array attribute by default (up to 100
  on request) and drops the oldest past that: keep the audiences written to one array under that
  number, or use ``membership: boolean``.
  Braze's cohort import (``/partners/<partner>/cohorts``) is not used: it needs a partner key that
  Braze gives to technology partners only.

Limits: a ``/users/track`` request carries at most 75 objects (Braze's base rule; the 2025 pages
count the three arrays together and say legacy accounts may send 75 per array; Monthly Active Users
CY 24-25 contracts batch at most 50 updates: set ``max_objects_per_request: 50``). This adapter
puts one array per request, so 75 objects is within every rule. Braze documents no byte limit for
``/users/track``. Rate limits: ``/users/track`` 3,000 requests per 3 seconds per workspace, the
subscription endpoints 5,000 per minute (shared), ``/users/delete`` 20,000 per minute (shared with
the alias and identify endpoints; a mirror that deletes users runs under the ``/users/track`` limit
and rides out Braze's 429s). Every answer carries ``X-RateLimit-Limit``, ``X-RateLimit-Remaining``
and ``X-RateLimit-Reset`` (UTC epoch seconds): the SDK's transport holds every worker until the
reset when ``Remaining`` reaches 0, waits a ``429`` out until the reset, and ends the sync early as
a partial success when the reset is further away than a sync waits (an hourly limit, as Monthly
Active Users contracts have).

Answers: ``201`` ``{"message": "success"}``; ``202`` ``{"message": "queued"}`` during Braze's
maintenance (accepted: Braze has the data). Non-fatal errors come in an ``errors`` array next to
``"message": "success"``; Braze documents them only as ``{<minor error message>}``. Braze's answers
carry ``type`` (the reason), ``input_array`` and ``index`` (the object's position in that array),
as reproduced in a client's test (github.com/dietdoctor/go-braze, ``users_test.go``): an error with
an index rejects that record with Braze's reason while the others count as done. An error without an
index cannot be tied to a record: when ``<array>_processed`` says every other object was processed
the others count as done; otherwise attribute and audience batches (idempotent) are split in halves
until the bad record is alone, and event batches are rejected whole with the reason (re-sending
them would duplicate the events Braze did keep). A fatal ``400`` processes nothing: the batch is
split until the bad record is alone; ``Max Input Length Exceeded`` fails the sync with a hint about
``max_objects_per_request``. ``401`` (``Invalid API key``) and ``403`` (``Access Denied``, with the
permission the key needs) stop the sync at once, ``404`` names the instance and ``base_url``.

Values: numbers, booleans and text as JSON; decimals as numbers; timestamps ISO 8601 in UTC with
milliseconds (``2025-04-14T09:05:07.042Z``); dates ``YYYY-MM-DD``; lists as arrays; structs as
nested objects. A NULL attribute is sent as ``null``, which removes it from the profile, unless the
activation says ``null_values: skip``.

Authentication: a REST API key (``api_key``, from ``{env: VAR}``) sent as ``Authorization: Bearer``,
with the ``users.track`` permission (``users.delete`` for ``mirror: delete_users``,
``subscription.status.set`` for subscriptions). The REST endpoint depends on the workspace's
instance: ``instance: US-01`` (the default) is ``https://rest.iad-01.braze.com``, ``EU-01`` is
``https://rest.fra-01.braze.eu``; ``base_url`` overrides it (other instances, proxies, tests).
``validate --connect`` sends the service's endpoint an empty request (nothing to write): Braze has no
read-only way to check a key, and the key and its permission are checked before the body, so a
``401``/``403`` there names the problem and a ``400`` about the empty body means the key passed.

Client: plain ``requests`` through the SDK's transport. Braze publishes no Python client for its
REST API (the PyPI packages are unofficial, the most used last released in 2022), and the transport
already owns rate limits, retries and secret redaction.

Braze's documentation this adapter follows:

- ``/users/track`` (request, answers, identifiers, duplicate events, MAU CY 24-25 batching):
  https://www.braze.com/docs/api/endpoints/user_data/post_user_track/
- attributes object (``_update_existing_only``, ``null`` removes, array ``add``/``remove``, array
  size): https://www.braze.com/docs/api/objects_filters/user_attributes_object/
- event object (``name``, ``time``, property names and values):
  https://www.braze.com/docs/api/objects_filters/event_object/
- rate limits, batching, ``X-RateLimit-*`` headers: https://www.braze.com/docs/api/api_limits/ and
  its current translation with the combined 75-object rule: https://www.braze.com/docs/de/api/api_limits/
- errors and responses (non-fatal ``errors``, ``202 queued``, fatal codes):
  https://www.braze.com/docs/api/errors/
- subscription group status V2 (50 users per request, 5,000 requests per minute):
  https://www.braze.com/docs/api/endpoints/subscription_groups/post_update_user_subscription_group_status_v2/
- user export by segment (asynchronous, files of a dashboard segment's users; not used):
  https://www.braze.com/docs/api/endpoints/export/user_data/post_users_segment/
- user deletion (50 ids, one kind per request, cannot be undone):
  https://www.braze.com/docs/api/endpoints/user_data/post_user_delete/
- instances and REST endpoints: https://www.braze.com/docs/api/basics/#endpoints
- API key permissions: https://www.braze.com/docs/api/api_key/
- cohort import (partners only, not used): https://www.braze.com/docs/partners/isv_partners/cohort_import
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import math
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import pydantic
from pydantic import Field, SecretStr, ValidationInfo

from dinmo_dagster.platforms import register_platform
from dinmo_dagster.platforms.base import (
    BatchOutcome,
    HttpResponse,
    Limits,
    Platform,
    PlatformSettings,
    PreparedRequest,
    Record,
    RecordResult,
)
from dinmo_dagster.platforms.identifiers import IdentifierSpec, normalize_phone

if TYPE_CHECKING:
    from dinmo_dagster.platforms.http import Transport

__all__ = ["Braze", "BrazeSettings", "braze_value"]

# Objects per /users/track request, users per subscription request, ids per deletion request.
MAX_TRACK_OBJECTS = 75
MAX_SUBSCRIPTION_USERS = 50
MAX_DELETE_IDS = 50
TRACK_LIMITS = Limits(
    max_records_per_batch=MAX_TRACK_OBJECTS, requests_per_window=3000, window_seconds=3.0, max_concurrency=8
)
SUBSCRIPTION_LIMITS = Limits(
    max_records_per_batch=MAX_SUBSCRIPTION_USERS,
    requests_per_window=5000,
    window_seconds=60.0,
    max_concurrency=4,
)
# Identifiers per service (subscriptions take no alias; deleting users takes no email or phone).
_IDENTIFIERS = {
    "external_id": IdentifierSpec("id"),
    "user_alias": IdentifierSpec("id"),
    "email": IdentifierSpec("email"),
    # Braze matches phone numbers in E.164 only: national numbers use the activation's default_country.
    "phone": IdentifierSpec("phone", normalize=normalize_phone),
}
_SUBSCRIPTION_IDS = {"external_id": "external_ids", "email": "emails", "phone": "phones"}
# Keys of an attributes object that identify the user or steer Braze: never attribute names.
_RESERVED_ATTRIBUTES = frozenset(
    {"external_id", "user_alias", "braze_id", "_update_existing_only", "push_token_import"}
)
_INSTANCE = re.compile(r"(US|EU)-(\d{2})", re.IGNORECASE)
_ARRAY = {"attributes": "attributes", "audiences": "attributes", "events": "events"}
TIME_FIELD = "time"
STATE_FIELD = "subscription_state"


def _service_key(
    value: Any, info: ValidationInfo, services: tuple[str, ...], *, required: bool = False
) -> Any:
    """A setting that belongs to some services: required there when ``required``, refused elsewhere."""
    service = info.data.get("service")
    if service is None:  # the service itself was invalid: reported on its own
        return value
    if value is None:
        if required and service in services:
            raise ValueError(f"is required with service: {service}")
        return value
    if service not in services:
        raise ValueError(f"found {value!r}; allowed only with service: {' or '.join(services)}")
    return value


class BrazeSettings(PlatformSettings):
    """Settings of a ``type: braze`` destination."""

    service: Literal["attributes", "events", "subscriptions", "audiences"] = Field(
        description="attributes (users), events (custom events), subscriptions (subscription group "
        "states) or audiences (a custom attribute holding the membership)."
    )
    api_key: SecretStr = Field(description="A REST API key of the workspace (from {env: VAR}); secret.")
    instance: str = Field(
        default="US-01",
        description="The workspace's instance (US-01 ... US-08, EU-01, EU-02); base_url overrides it.",
    )
    max_objects_per_request: int = Field(
        default=MAX_TRACK_OBJECTS,
        ge=1,
        le=MAX_TRACK_OBJECTS,
        description="Objects per /users/track request: 75, or 50 for Monthly Active Users CY 24-25 contracts.",
    )
    alias_label: str | None = Field(
        default=None, description="The alias label when match uses user_alias (the column holds the name)."
    )
    mirror: Literal["clear_attributes", "delete_users"] | None = Field(
        default=None,
        validate_default=True,
        description="attributes: what a record leaving the segment does with sync_mode mirror; "
        "clear_attributes (default) or delete_users.",
    )
    event_name: str | None = Field(
        default=None, validate_default=True, description="events: the custom event's name."
    )
    app_id: str | None = Field(
        default=None, validate_default=True, description="events: the app identifier the events belong to."
    )
    subscription_group_id: str | None = Field(
        default=None, validate_default=True, description="subscriptions: the group's id."
    )
    membership: Literal["array", "boolean"] | None = Field(
        default=None,
        validate_default=True,
        description="audiences: array (default: a value in an array attribute) or boolean.",
    )
    audience: str | None = Field(
        default=None,
        validate_default=True,
        description="audiences: the audience's name, the value put in the array attribute.",
    )
    audience_attribute: str | None = Field(
        default=None,
        validate_default=True,
        description="audiences: the custom attribute holding the membership (array default: dinmo_audiences).",
    )
    create_users: bool | None = Field(
        default=None,
        validate_default=True,
        description="events (default true) and audiences (default false): create profiles Braze does not hold.",
    )

    @pydantic.field_validator("instance")
    @classmethod
    def _check_instance(cls, value: str) -> str:
        if _INSTANCE.fullmatch(value):
            return value.upper()
        raise ValueError(
            f"found {value!r}; allowed: US-01 ... US-08, EU-01, EU-02 (for another instance set base_url "
            "to the REST endpoint of your dashboard's instance)"
        )

    @pydantic.field_validator("api_key")
    @classmethod
    def _check_key(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().strip():
            raise ValueError("is empty; allowed: a Braze REST API key")
        return value

    @pydantic.field_validator("alias_label", "event_name", "app_id", "subscription_group_id", "audience")
    @classmethod
    def _check_text(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("is empty; allowed: a non-empty text")
        return value

    @pydantic.field_validator("mirror")
    @classmethod
    def _check_mirror(cls, value: str | None, info: ValidationInfo) -> str | None:
        return _service_key(value, info, ("attributes",))

    @pydantic.field_validator("event_name")
    @classmethod
    def _check_event_name(cls, value: str | None, info: ValidationInfo) -> str | None:
        return _service_key(value, info, ("events",), required=True)

    @pydantic.field_validator("app_id")
    @classmethod
    def _check_app_id(cls, value: str | None, info: ValidationInfo) -> str | None:
        return _service_key(value, info, ("events",))

    @pydantic.field_validator("subscription_group_id")
    @classmethod
    def _check_group(cls, value: str | None, info: ValidationInfo) -> str | None:
        return _service_key(value, info, ("subscriptions",), required=True)

    @pydantic.field_validator("membership")
    @classmethod
    def _check_membership(cls, value: str | None, info: ValidationInfo) -> str | None:
        return _service_key(value, info, ("audiences",))

    @pydantic.field_validator("audience")
    @classmethod
    def _check_audience(cls, value: str | None, info: ValidationInfo) -> str | None:
        if info.data.get("membership") == "boolean" and value is not None:
            raise ValueError(
                f"found {value!r}; allowed only with membership: array (boolean uses audience_attribute)"
            )
        array = info.data.get("service") == "audiences" and info.data.get("membership") != "boolean"
        return _service_key(value, info, ("audiences",), required=array)

    @pydantic.field_validator("audience_attribute")
    @classmethod
    def _check_audience_attribute(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and (problem := _attribute_name_problem(value)):
            raise ValueError(f"found {value!r}; allowed: {problem}")
        boolean = info.data.get("membership") == "boolean"
        if boolean and value is None:
            raise ValueError("is required with membership: boolean (the boolean custom attribute's name)")
        value = _service_key(value, info, ("audiences",))
        if value is None and info.data.get("service") == "audiences" and not boolean:
            return "dinmo_audiences"
        return value

    @pydantic.field_validator("create_users")
    @classmethod
    def _check_create_users(cls, value: bool | None, info: ValidationInfo) -> bool | None:
        return _service_key(value, info, ("events", "audiences"))


class Braze(Platform):
    """Braze users: attributes, custom events, subscription group states and audience membership."""

    name = "braze"
    settings_model = BrazeSettings
    services: ClassVar[Mapping[str, tuple[str, ...]]] = {
        "attributes": ("upsert", "update", "delete"),
        "events": ("track",),
        "subscriptions": ("upsert", "delete"),
        "audiences": ("add", "remove"),
    }
    default_base_url = "https://rest.iad-01.braze.com"
    limits = TRACK_LIMITS

    settings: BrazeSettings

    def __init__(self, settings: PlatformSettings, *, destination: str = "") -> None:
        super().__init__(settings, destination=destination)
        # The service decides the endpoint, hence the documented batch size and rate limit.
        if self.settings.service == "subscriptions":
            self.limits = SUBSCRIPTION_LIMITS
        else:
            self.limits = dataclasses.replace(
                TRACK_LIMITS, max_records_per_batch=self.settings.max_objects_per_request
            )

    # -- settings-derived ---------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """``base_url``, or the REST endpoint of the ``instance`` (US-01: rest.iad-01.braze.com)."""
        if self.settings.base_url:
            return self.settings.base_url
        match = _INSTANCE.fullmatch(self.settings.instance)
        assert match is not None  # the settings model validated it
        region, number = match.group(1).upper(), match.group(2)
        return (
            f"https://rest.iad-{number}.braze.com"
            if region == "US"
            else f"https://rest.fra-{number}.braze.eu"
        )

    @property
    def mirror(self) -> str:
        """What ``delete`` does for attributes: ``clear_attributes`` or ``delete_users``."""
        return self.settings.mirror or "clear_attributes"

    @property
    def deletes_users(self) -> bool:
        """True when ``delete`` deletes profiles through ``/users/delete``."""
        return self.settings.service == "attributes" and self.mirror == "delete_users"

    @property
    def permissions(self) -> tuple[str, ...]:
        """The REST API key permissions the configured service needs."""
        if self.settings.service == "subscriptions":
            return ("subscription.status.set",)
        return ("users.track", "users.delete") if self.deletes_users else ("users.track",)

    def deduplicates(self, operation: str) -> bool:
        """Braze keeps every event it is sent (no de-duplication id on ``/users/track`` events): ``track``
        batches go one at a time, each journalled before the next. Attributes, subscription states and
        audience memberships are set to a value, so a batch sent twice is harmless."""
        return operation != "track"

    def auth_headers(self) -> dict[str, str]:
        """Bearer authentication with the REST API key."""
        return {"Authorization": f"Bearer {self.settings.api_key.get_secret_value()}"}

    def target_label(self) -> str:
        """``Braze users`` (or the subscription group / audience attribute)."""
        service = self.settings.service
        if service == "subscriptions":
            return f"Braze subscription group {self.settings.subscription_group_id}"
        if service == "audiences":
            return f"Braze audience attribute {self.settings.audience_attribute}"
        return "Braze users"

    # -- identifiers and activation checks -----------------------------------------------------------

    def _identifier_names(self) -> tuple[str, ...]:
        if self.settings.service == "subscriptions":
            return tuple(_SUBSCRIPTION_IDS)
        return tuple(_IDENTIFIERS)

    def identifier_spec(self, name: str) -> IdentifierSpec | None:
        """external_id, user_alias, email or phone (no user_alias for subscriptions), never hashed."""
        return _IDENTIFIERS[name] if name in self._identifier_names() else None

    def clears_fields_on(self, operation: str) -> bool:
        """``mirror: clear_attributes``: the removals of the attributes service clear the mapped ones."""
        return operation == "delete" and self.settings.service == "attributes" and not self.deletes_users

    def validate_activation(self, match: Mapping[str, str], mapping: Mapping[str, str]) -> list[str]:
        """One match identifier Braze resolves users by; mapped fields that fit the service."""
        allowed = ", ".join(self._identifier_names())
        problems = []
        if not match:
            problems.append(f"match: found nothing; allowed: one of {allowed} mapped to a column")
        problems.extend(
            f"match.{name}: braze has no identifier {name!r} for service {self.settings.service}; "
            f"allowed: {allowed}"
            for name in match
            if self.identifier_spec(name) is None
        )
        if len(match) > 1:
            problems.append(
                f"match: found {len(match)} identifiers ({', '.join(match)}); allowed: one of {allowed} "
                "(Braze names a user by a single identifier)"
            )
        if (
            "user_alias" in match
            and "user_alias" in self._identifier_names()
            and not self.settings.alias_label
        ):
            problems.append("match.user_alias: needs the destination's alias_label (the alias's label)")
        if self.deletes_users and set(match) - {"external_id", "user_alias"}:
            problems.append(
                f"match: found {', '.join(match)}; mirror: delete_users deletes users by external_id or "
                "user_alias only"
            )
        problems.extend(self._mapping_problems(mapping))
        return problems

    def _mapping_problems(self, mapping: Mapping[str, str]) -> list[str]:
        service = self.settings.service
        problems = []
        if service == "audiences":
            problems.extend(
                f"mapping.{column}: found {target!r}; allowed: nothing (audiences send membership only: "
                "map attributes with a service: attributes destination)"
                for column, target in mapping.items()
            )
        elif service == "subscriptions":
            if list(mapping.values()) != [STATE_FIELD]:
                problems.append(
                    f"mapping: found {', '.join(map(str, mapping.values())) or 'nothing'}; allowed: exactly one "
                    f"column mapped to {STATE_FIELD} (true/false or subscribed/unsubscribed)"
                )
        elif service == "events":
            if TIME_FIELD not in mapping.values():
                problems.append(
                    f"mapping: found no {TIME_FIELD}; allowed: the fact model's time column mapped to "
                    f"{TIME_FIELD} (the event's time), other columns mapped to event properties"
                )
            for column, target in mapping.items():
                if target != TIME_FIELD and (problem := _property_name_problem(str(target))):
                    problems.append(f"mapping.{column}: found {target!r}; allowed: {problem}")
        else:
            for column, target in mapping.items():
                if problem := _attribute_name_problem(str(target)):
                    problems.append(f"mapping.{column}: found {target!r}; allowed: {problem}")
        return problems

    # -- requests -------------------------------------------------------------------------------------

    def _identify(self, record: Record) -> dict[str, Any]:
        if len(record.identifiers) != 1:
            raise self.config_error(
                f"match: found {len(record.identifiers)} identifiers ({', '.join(record.identifiers)}); "
                f"allowed: one of {', '.join(self._identifier_names())}"
            )
        name, value = next(iter(record.identifiers.items()))
        if name == "user_alias":
            if not self.settings.alias_label:
                raise self.config_error(
                    "match.user_alias: needs the destination's alias_label (the alias's label)"
                )
            return {"user_alias": {"alias_name": value, "alias_label": self.settings.alias_label}}
        return {name: value}

    def record_input(self, operation: str, record: Record) -> dict[str, Any]:
        """The record's object: an attributes or events object, or its subscription or deletion entry."""
        service = self.settings.service
        who = self._identify(record)
        if service == "subscriptions":
            state = "unsubscribed" if operation == "delete" else consent_state(record.fields.get(STATE_FIELD))
            return {**who, STATE_FIELD: state}
        if operation == "delete" and self.deletes_users:
            return who
        if service == "events":
            event: dict[str, Any] = {**who, "_update_existing_only": self.settings.create_users is False}
            if self.settings.app_id:
                event["app_id"] = self.settings.app_id
            properties = {
                name: braze_value(value)
                for name, value in record.fields.items()
                if name != TIME_FIELD and value is not None
            }
            event.update(name=self.settings.event_name, time=braze_time(record.fields.get(TIME_FIELD)))
            if properties:
                event["properties"] = properties
            return event
        if service == "audiences":
            attribute = str(self.settings.audience_attribute)
            if self.settings.membership == "boolean":
                member: Any = operation == "add"
            else:
                member = {"add" if operation == "add" else "remove": [self.settings.audience]}
            create = operation == "add" and bool(self.settings.create_users)
            return {**who, "_update_existing_only": not create, attribute: member}
        attributes = {name: braze_value(value) for name, value in record.fields.items()}
        return {**attributes, **who, "_update_existing_only": operation != "upsert"}

    def _endpoint(self, operation: str) -> str:
        if self.settings.service == "subscriptions":
            return "/v2/subscription/status/set"
        return "/users/delete" if operation == "delete" and self.deletes_users else "/users/track"

    def build_request(
        self, operation: str, inputs: Sequence[Any], records: Sequence[Record]
    ) -> PreparedRequest:
        """The request of one batch: a /users/track array, a V2 subscription update or a deletion."""
        endpoint = self._endpoint(operation)
        if endpoint == "/users/track":
            return PreparedRequest("POST", endpoint, json={_ARRAY[self.settings.service]: list(inputs)})
        if endpoint == "/users/delete":
            if inputs and not {"external_id", "user_alias"} & set(inputs[0]):
                raise self.config_error(
                    f"match: found {', '.join(records[0].identifiers)}; mirror: delete_users deletes users by "
                    "external_id or user_alias only"
                )
            if inputs and "user_alias" in inputs[0]:
                return PreparedRequest(
                    "POST", endpoint, json={"user_aliases": [i["user_alias"] for i in inputs]}
                )
            return PreparedRequest(
                "POST", endpoint, json={"external_ids": [i["external_id"] for i in inputs]}
            )
        groups = []
        for state in ("subscribed", "unsubscribed"):
            members = [i for i in inputs if i[STATE_FIELD] == state]
            if not members:
                continue
            name = next(k for k in members[0] if k != STATE_FIELD)
            groups.append(
                {
                    "subscription_group_id": self.settings.subscription_group_id,
                    "subscription_state": state,
                    _SUBSCRIPTION_IDS[name]: [m[name] for m in members],
                }
            )
        return PreparedRequest("POST", endpoint, json={"subscription_groups": groups})

    def preview_request(
        self, operation: str, inputs: Sequence[Any], records: Sequence[Record]
    ) -> PreparedRequest:
        """The first request of the batch (a deletion sends at most 50 ids per request)."""
        sendable = [i for i, _ in self._sendable(operation, records, inputs)[0]]
        if self._endpoint(operation) == "/users/delete":
            sendable = sendable[:MAX_DELETE_IDS]
        return self.build_request(operation, [inputs[i] for i in sendable], [records[i] for i in sendable])

    def _sendable(
        self, operation: str, records: Sequence[Record], inputs: Sequence[Any]
    ) -> tuple[list[tuple[int, Any]], list[RecordResult]]:
        """The positions and inputs worth sending, and the records rejected before sending."""
        keep: list[tuple[int, Any]] = []
        rejected: list[RecordResult] = []
        for index, (record, payload) in enumerate(zip(records, inputs)):
            if self.settings.service == "events" and payload.get("time") is None:
                rejected.append(
                    RecordResult(
                        record.key,
                        "rejected",
                        f"the event has no time: field {TIME_FIELD} is NULL, not a timestamp, or not mapped",
                        "no event time",
                    )
                )
            elif self.settings.service == "subscriptions" and payload.get(STATE_FIELD) is None:
                rejected.append(
                    RecordResult(
                        record.key,
                        "rejected",
                        f"field {STATE_FIELD} is NULL or not a consent state; allowed: true/false or "
                        "subscribed/unsubscribed (nothing is changed in Braze without one)",
                        "no consent state",
                    )
                )
            else:
                keep.append((index, payload))
        return keep, rejected

    def deliver_batch(
        self, operation: str, records: Sequence[Record], inputs: Sequence[Any], transport: Transport
    ) -> BatchOutcome:
        """Reject what cannot be sent, send the rest (deletions in requests of at most 50 ids: when a batch takes
        two, the first one's verdicts are handed to the engine as it answers, ``acknowledge_early``)."""
        keep, results = self._sendable(operation, records, inputs)
        chunk = MAX_DELETE_IDS if self._endpoint(operation) == "/users/delete" else len(keep) or 1
        for start in range(0, len(keep), chunk):
            part = keep[start : start + chunk]
            sent_records = [records[i] for i, _ in part]
            response = transport.send(self.build_request(operation, [p for _, p in part], sent_records))
            outcome = self.parse_response(operation, sent_records, response)
            if outcome.split:
                # Braze refused the request whole: the engine halves the batch (re-sending is harmless).
                return outcome
            results.extend(outcome.results)
            if len(keep) > chunk:
                self.acknowledge_early(outcome.results)
        return BatchOutcome(results)

    # -- responses ------------------------------------------------------------------------------------

    def parse_response(
        self, operation: str, records: Sequence[Record], response: HttpResponse
    ) -> BatchOutcome:
        """Per-record verdicts from Braze's answer to one request of ``records``."""
        body = response.json()
        body = body if isinstance(body, dict) else {}
        status = response.status
        if 200 <= status < 300:
            if self._endpoint(operation) != "/users/track" or status == 202:
                # Subscriptions and deletions report nothing per user; 202 is "queued" (maintenance).
                return BatchOutcome.accept_all(records)
            return self._track_results(records, body)
        message = str(body.get("message") or f"HTTP {status}")
        if status == 400 and message == "Max Input Length Exceeded":
            raise self.request_error(
                response,
                f"sending {len(records)} objects per request (set max_objects_per_request to your contract's "
                "limit, 50 for Monthly Active Users CY 24-25)",
            )
        if status == 400:
            if len(records) > 1:
                return BatchOutcome(split=True)
            reason = self.redact(_error_text(message, body.get("errors")))
            return BatchOutcome(
                [RecordResult(records[0].key, "rejected", reason, self._code(reason, records[0]))]
            )
        if status == 404:
            raise self.request_error(
                response,
                f"POST {self._endpoint(operation)} at {self.base_url} (check the destination's instance or base_url)",
            )
        raise self.request_error(response, f"POST {self._endpoint(operation)}")

    def _track_results(self, records: Sequence[Record], body: Mapping[str, Any]) -> BatchOutcome:
        array = _ARRAY[self.settings.service]
        by_index: dict[int, list[str]] = {}
        unindexed: list[str] = []
        for error in body.get("errors") or []:
            if not isinstance(error, dict):
                unindexed.append(str(error))
                continue
            if error.get("input_array") not in (None, array):
                continue  # about another array: this request sends only ``array``
            index = error.get("index")
            text = _error_text(str(error.get("type") or error.get("message") or error), None)
            if isinstance(index, int) and not isinstance(index, bool) and 0 <= index < len(records):
                by_index.setdefault(index, []).append(text)
            else:
                unindexed.append(text)
        others = len(records) - len(by_index)
        processed = body.get(f"{array}_processed")
        # An error without an index is harmless only when every other object was processed.
        unknown = bool(unindexed) and not (isinstance(processed, int) and processed >= others)
        if unknown and array == "attributes" and others > 1:
            return BatchOutcome(split=True)  # idempotent: re-sending the halves isolates the bad one
        results = []
        for index, record in enumerate(records):
            if index in by_index:
                reason = self.redact("; ".join(by_index[index]))
                results.append(RecordResult(record.key, "rejected", reason, self._code(reason, record)))
            elif unknown:
                # Events: re-sending would duplicate the ones Braze kept, so the batch is rejected.
                done = processed if isinstance(processed, int) else "?"
                reason = self.redact(
                    f"Braze reported an error without an index ({'; '.join(unindexed)}); {done} of {others} "
                    f"{array} were processed and Braze does not say which"
                )
                code = self._code("error without index: " + "; ".join(unindexed), record)
                results.append(RecordResult(record.key, "rejected", reason, code))
            else:
                results.append(RecordResult(record.key, "accepted"))
        return BatchOutcome(results)

    def _code(self, text: str, record: Record) -> str:
        """A rejection's label without the record's values (they may be personal data)."""
        values = [str(v) for v in (*record.identifiers.values(), *record.fields.values()) if v is not None]
        for value in sorted(values, key=len, reverse=True):
            if len(value) >= 3:
                text = text.replace(value, "***")
        return self.redact(text)

    def error_message(self, response: HttpResponse) -> str:
        """Braze's ``message``; a 403 also names the permission the REST API key needs."""
        text = super().error_message(response)
        if response.status == 403:
            text += f" (the REST API key needs the {' and '.join(self.permissions)} permission)"
        return text

    # -- validate --connect ---------------------------------------------------------------------------

    def check_connection(self, transport: Transport) -> None:
        """Send the service's endpoints an empty request: 401/403 name a bad key or permission."""
        checks = [
            (
                self._endpoint("upsert"),
                {"subscription_groups": []}
                if self.settings.service == "subscriptions"
                else {_ARRAY[self.settings.service]: []},
            )
        ]
        if self.deletes_users:
            checks.append(("/users/delete", {"external_ids": []}))
        for path, body in checks:
            response = transport.send(PreparedRequest("POST", path, json=body))
            if response.status == 404:
                raise self.request_error(
                    response, f"POST {path} at {self.base_url} (check the destination's instance or base_url)"
                )
            # A 400 about the empty body means the key and its permission passed.
            if not (200 <= response.status < 300 or response.status == 400):
                raise self.request_error(response, f"POST {path}")


def consent_state(value: Any) -> str | None:
    """``subscribed`` / ``unsubscribed`` from a boolean or those words; None for anything else."""
    if isinstance(value, bool):
        return "subscribed" if value else "unsubscribed"
    if isinstance(value, str) and value.strip().lower() in ("subscribed", "unsubscribed"):
        return value.strip().lower()
    return None


def braze_time(value: Any) -> str | None:
    """An event time as Braze reads it (ISO 8601); None when the value is no time at all."""
    if isinstance(value, (dt.datetime, dt.date)):
        return braze_value(value if isinstance(value, dt.datetime) else dt.datetime.combine(value, dt.time()))
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def braze_value(value: Any) -> Any:
    """A warehouse value as JSON Braze stores with its type (``None`` removes an attribute)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, decimal.Decimal):
        if not value.is_finite():
            return None
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.timezone.utc).replace(tzinfo=None)
        return value.isoformat(timespec="milliseconds") + "Z"
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, (list, tuple)):
        return [braze_value(v) for v in value if v is not None]
    if isinstance(value, dict):
        return {str(k): braze_value(v) for k, v in value.items()}
    return str(value)


def _attribute_name_problem(name: str) -> str | None:
    if name in _RESERVED_ATTRIBUTES:
        return f"an attribute name ({name} identifies the user or steers Braze)"
    if not name or len(name) > 255 or name.startswith("$"):
        return "an attribute name of 1 to 255 characters not starting with $"
    return None


def _property_name_problem(name: str) -> str | None:
    if not name or len(name) > 255 or name.startswith("$"):
        return "an event property name of 1 to 255 characters not starting with $"
    if name == "event_name":
        return "an event property name (event_name is Braze's own)"
    return None


def _error_text(message: str, errors: Any) -> str:
    """Braze's message with the ``type`` of each error it lists."""
    details = [
        str(e.get("type") or e.get("message") or e) if isinstance(e, dict) else str(e) for e in errors or []
    ]
    return f"{message}: {'; '.join(details)}" if details else message


register_platform("braze", BrazeSettings, Braze)
