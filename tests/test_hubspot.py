"""The HubSpot adapter through a fake HubSpot built from HubSpot's documentation (tests/fakes/
hubspot.py): what lands in the fake's store, what HubSpot answered, and that the token never
shows anywhere but in the Authorization header."""

from __future__ import annotations

import datetime as dt
import decimal
import logging

import pyarrow as pa
import pytest
import requests
from fakes.hubspot import FakeHubSpot

from dinmo_dagster.platforms import (
    ActivationSpec,
    InMemoryJournal,
    PlatformAuthError,
    PlatformConfigError,
    RetryPolicy,
    build_platform,
    deliver,
    preview,
    validate_connection,
)
from dinmo_dagster.platforms.hubspot import HubSpot

TOKEN = "pat-na1-7d3f1c9e-4b2a-4e8f-9a61-0c5d2e8b7f34"
FAST = RetryPolicy(
    max_attempts=3, max_rate_limited_attempts=20, initial_wait_seconds=0.01, max_wait_seconds=0.05
)
CONTACTS = ActivationSpec(
    "crm",
    "customer_id",
    match={"email": "email"},
    mapping={"first_name": "firstname", "ltv": "lifetime_value", "is_vip": "vip", "signup": "signup_date"},
)


@pytest.fixture
def hubspot():
    with FakeHubSpot(TOKEN) as fake:
        yield fake


def crm(fake: FakeHubSpot, **settings) -> HubSpot:
    raw = {
        "service": "attributes",
        "object": "contacts",
        "access_token": TOKEN,
        "base_url": fake.url,
        **settings,
    }
    platform = build_platform("hubspot", raw, destination="crm")
    assert isinstance(platform, HubSpot)
    return platform


def customers(n: int, start: int = 1, **overrides) -> pa.RecordBatch:
    ids = list(range(start, start + n))
    columns = {
        "customer_id": ids,
        "email": [f"customer{i}@example.com" for i in ids],
        "first_name": [f"Name{i}" for i in ids],
        "ltv": [decimal.Decimal(f"{i}.50") for i in ids],
        "is_vip": [i % 2 == 0 for i in ids],
        "signup": [dt.date(2025, 1, 1) + dt.timedelta(days=i) for i in ids],
    }
    columns.update(overrides)
    return pa.record_batch(columns)


def expected_contact(i: int) -> dict[str, str]:
    return {
        "email": f"customer{i}@example.com",
        "firstname": f"Name{i}",
        "lifetime_value": f"{i}.50",
        "vip": "true" if i % 2 == 0 else "false",
        "signup_date": (dt.date(2025, 1, 1) + dt.timedelta(days=i)).isoformat(),
    }


def stored(fake: FakeHubSpot, obj: str = "contacts") -> dict[str, dict[str, str]]:
    """The fake's records without HubSpot's own id property."""
    return {
        k: {p: v for p, v in props.items() if p != "hs_object_id"} for k, props in fake.records(obj).items()
    }


# --------------------------------------------------------------------------------------------------
# upsert, update, insert, mirror
# --------------------------------------------------------------------------------------------------


def test_an_upsert_of_250_contacts_lands_exactly_in_hubspot_in_batches_of_100(hubspot):
    journal = InMemoryJournal()
    result = deliver(crm(hubspot), CONTACTS, {"upsert": [customers(250)]}, journal)

    assert stored(hubspot) == {f"customer{i}@example.com": expected_contact(i) for i in range(1, 251)}
    assert sorted(hubspot.batch_sizes) == [50, 100, 100]  # never a batch over HubSpot's 100 inputs
    assert [r.path for r in hubspot.requests] == ["/crm/v3/objects/contacts/batch/upsert"] * 3
    assert sorted(journal.acknowledged_keys["upsert"], key=int) == [str(i) for i in range(1, 251)]
    assert result.accepted == 250 and result.rejected == 0 and result.batches == 3 and result.requests == 3


def test_a_second_upsert_updates_the_same_contacts_instead_of_creating_new_ones(hubspot):
    deliver(crm(hubspot), CONTACTS, {"upsert": [customers(3)]}, InMemoryJournal())
    changed = customers(
        3,
        first_name=["Ann", "Bob", "Cid"],
        email=["CUSTOMER1@example.com", *[f"customer{i}@example.com" for i in (2, 3)]],
    )
    deliver(crm(hubspot), CONTACTS, {"upsert": [changed]}, InMemoryJournal())
    assert len(hubspot.store["contacts"]) == 3
    assert {k: v["firstname"] for k, v in stored(hubspot).items()} == {
        "customer1@example.com": "Ann",
        "customer2@example.com": "Bob",
        "customer3@example.com": "Cid",
    }


def test_an_invalid_email_is_rejected_with_hubspots_reason_while_the_others_land(hubspot):
    batch = customers(
        5,
        email=[
            "customer1@example.com",
            "customer2@example",
            *[f"customer{i}@example.com" for i in (3, 4, 5)],
        ],
    )
    mapping = {**CONTACTS.mapping, "email": "email"}
    spec = ActivationSpec("crm", "customer_id", {"email": "email"}, mapping)
    journal = InMemoryJournal()
    result = deliver(crm(hubspot), spec, {"upsert": [batch]}, journal)

    assert sorted(stored(hubspot)) == [f"customer{i}@example.com" for i in (1, 3, 4, 5)]
    assert journal.rejections == [
        (
            "2",
            "upsert",
            (
                'VALIDATION_ERROR: Property values were not valid: [{"isValid": false, "message": "Email address '
                'customer2@example is invalid", "error": "INVALID_EMAIL", "name": "email"}]'
            ),
        )
    ]
    assert result.top_reasons() == [("VALIDATION_ERROR INVALID_EMAIL (email)", 1)]
    assert result.as_metadata()["top_rejection_reasons"] == "VALIDATION_ERROR INVALID_EMAIL (email) (1)"
    assert hubspot.requests[0].json["inputs"][1]["objectWriteTraceId"] == "2"


def test_update_touches_existing_contacts_only_and_insert_never_overwrites(hubspot):
    hubspot.seed("contacts", {"email": "customer1@example.com", "firstname": "Old"})
    result = deliver(crm(hubspot), CONTACTS, {"update": [customers(2)]}, InMemoryJournal())
    assert stored(hubspot) == {"customer1@example.com": expected_contact(1)}
    assert result.accepted == 2  # customer2 is not in HubSpot: nothing to update, nothing rejected

    result = deliver(
        crm(hubspot), CONTACTS, {"insert": [customers(2, first_name=["New1", "New2"])]}, InMemoryJournal()
    )
    assert stored(hubspot) == {
        "customer1@example.com": expected_contact(1),  # already there: left alone
        "customer2@example.com": {**expected_contact(2), "firstname": "New2"},
    }
    assert result.accepted == 2 and result.rejected == 0
    assert [r.path.rsplit("/", 1)[1] for r in hubspot.requests] == ["update", "create"]


def test_mirror_archives_the_contacts_that_left_the_segment(hubspot):
    deliver(crm(hubspot), CONTACTS, {"upsert": [customers(5)]}, InMemoryJournal())
    gone = pa.record_batch(
        {
            "customer_id": [4, 5, 99],
            "email": ["customer4@example.com", "CUSTOMER5@example.com", "never@example.com"],
        }
    )
    journal = InMemoryJournal()
    result = deliver(crm(hubspot), CONTACTS, {"delete": [gone]}, journal)

    assert sorted(stored(hubspot)) == [f"customer{i}@example.com" for i in (1, 2, 3)]
    assert sorted(r["properties"]["email"] for r in hubspot.archived["contacts"].values()) == [
        "customer4@example.com",
        "customer5@example.com",
    ]
    assert sorted(journal.acknowledged_keys["delete"]) == ["4", "5", "99"]
    assert result.accepted == 3
    assert [r.path.rsplit("/", 1)[1] for r in hubspot.requests[-2:]] == ["read", "archive"]


def test_custom_objects_upsert_by_their_unique_property_with_the_dated_api(hubspot):
    batch = pa.record_batch({"id": [1, 2], "ext": ["A-1", "A-2"], "label": ["First", None]})
    spec = ActivationSpec("crm", "id", {"external_id": "ext"}, {"label": "name"}, null_values="skip")
    deliver(
        crm(hubspot, object="2-9001", api_version="2026-03"), spec, {"upsert": [batch]}, InMemoryJournal()
    )
    assert stored(hubspot, "2-9001") == {
        "A-1": {"external_id": "A-1", "name": "First"},
        "A-2": {"external_id": "A-2"},
    }
    assert hubspot.requests[0].path == "/crm/objects/2026-03/2-9001/batch/upsert"


def test_null_values_skip_keeps_what_hubspot_holds_and_sync_clears_it(hubspot):
    hubspot.seed("contacts", {"email": "customer1@example.com", "firstname": "Known", "lifetime_value": "7"})
    blank = customers(1, first_name=[None], ltv=[None])
    skip = ActivationSpec("crm", "customer_id", {"email": "email"}, CONTACTS.mapping, null_values="skip")
    deliver(crm(hubspot), skip, {"upsert": [blank]}, InMemoryJournal())
    assert stored(hubspot)["customer1@example.com"]["firstname"] == "Known"
    assert stored(hubspot)["customer1@example.com"]["lifetime_value"] == "7"

    deliver(crm(hubspot), CONTACTS, {"upsert": [blank]}, InMemoryJournal())
    assert "firstname" not in stored(hubspot)["customer1@example.com"]
    assert "lifetime_value" not in stored(hubspot)["customer1@example.com"]
    assert hubspot.requests[-1].json["inputs"][0]["properties"]["firstname"] == ""


def test_timestamps_numbers_and_lists_are_sent_as_hubspot_property_strings(hubspot):
    batch = pa.record_batch(
        {
            "customer_id": [1],
            "email": ["customer1@example.com"],
            "seen": pa.array([dt.datetime(2025, 4, 14, 9, 5, 7, 42000, tzinfo=dt.timezone.utc)]),
            "score": [0.1],
            "tags": [["a", "b"]],
        }
    )
    spec = ActivationSpec(
        "crm", "customer_id", {"email": "email"}, {"seen": "firstname", "score": "lastname", "tags": "phone"}
    )
    deliver(crm(hubspot), spec, {"upsert": [batch]}, InMemoryJournal())
    assert hubspot.requests[0].json["inputs"][0]["properties"] == {
        "firstname": "2025-04-14T09:05:07.042Z",
        "lastname": "0.1",
        "phone": "a;b",
    }


# --------------------------------------------------------------------------------------------------
# Limits: batch size, rate limits, daily quota
# --------------------------------------------------------------------------------------------------


def test_hubspot_refuses_a_batch_over_100_inputs_which_the_adapter_never_sends(hubspot):
    inputs = [{"idProperty": "email", "id": f"c{i}@example.com", "properties": {}} for i in range(101)]
    answer = requests.post(
        f"{hubspot.url}/crm/v3/objects/contacts/batch/upsert",
        json={"inputs": inputs},
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=10,
    )
    assert answer.status_code == 400
    assert answer.json()["category"] == "VALIDATION_ERROR"
    assert answer.json()["message"] == (
        "The maximum number of inputs supported in a batch request is 100. Please reduce the number of items and "
        "try again"
    )
    assert hubspot.store["contacts"] == {}

    deliver(crm(hubspot), CONTACTS, {"upsert": [customers(101), customers(99, start=102)]}, InMemoryJournal())
    assert max(hubspot.batch_sizes[1:]) == 100 and sum(hubspot.batch_sizes[1:]) == 200
    assert len(stored(hubspot)) == 200


def test_a_429_storm_is_ridden_out(hubspot):
    hubspot.queue(
        429,
        {
            "status": "error",
            "message": "You have reached your ten_secondly_rolling limit.",
            "errorType": "RATE_LIMIT",
            "policyName": "TEN_SECONDLY_ROLLING",
        },
        times=8,
    )
    result = deliver(crm(hubspot), CONTACTS, {"upsert": [customers(300)]}, InMemoryJournal(), retry=FAST)
    assert len(stored(hubspot)) == 300
    assert result.accepted == 300
    assert result.retries == 8 and result.requests == 11
    assert result.rate_limit_wait_seconds > 0


def test_the_limiter_follows_the_lower_limit_hubspot_announces(hubspot):
    hubspot.rate_limit, hubspot.window_ms = 3, 600  # what X-HubSpot-RateLimit-* will announce
    result = deliver(crm(hubspot), CONTACTS, {"upsert": [customers(1000)]}, InMemoryJournal(), retry=FAST)
    assert len(stored(hubspot)) == 1000 and result.accepted == 1000
    # Before the first answer the client knew only the documented 100 per 10 s; after it, it keeps
    # to 3 per 600 ms: at most the first few requests (one per worker) can run into a 429.
    assert hubspot.throttled <= 6
    assert result.requests == 10 + hubspot.throttled


def test_a_lower_rate_limit_setting_is_obeyed(hubspot):
    platform = crm(hubspot, rate_limit={"requests": 2, "per_seconds": 0.4})
    deliver(platform, CONTACTS, {"upsert": [customers(500)]}, InMemoryJournal())
    arrivals = [r.arrived for r in hubspot.requests]
    assert len(arrivals) == 5
    assert all(arrivals[i + 2] - arrivals[i] >= 0.3 for i in range(len(arrivals) - 2))


def test_the_daily_limit_ends_the_sync_early_as_a_partial_success(hubspot):
    hubspot.daily_limit = 2
    journal = InMemoryJournal()
    result = deliver(crm(hubspot, max_concurrency=1), CONTACTS, {"upsert": [customers(450)]}, journal)

    assert len(stored(hubspot)) == 200
    assert len(journal.acknowledged_keys["upsert"]) == 200
    assert result.quota is not None
    assert result.quota.message == (
        "destination 'crm' (hubspot): HubSpot's daily API limit (2 requests) is used up "
        "(X-HubSpot-RateLimit-Daily-Remaining: 0)"
    )
    assert hubspot.throttled == 0  # it stopped before HubSpot had to say 429
    assert result.counts("upsert").not_sent > 0


def test_a_daily_429_ends_the_sync_early(hubspot):
    hubspot.queue(
        429,
        {
            "status": "error",
            "message": "You have reached your daily limit.",
            "errorType": "RATE_LIMIT",
            "policyName": "DAILY",
        },
    )
    result = deliver(
        crm(hubspot, max_concurrency=1), CONTACTS, {"upsert": [customers(150)]}, InMemoryJournal()
    )
    assert result.quota is not None
    assert result.quota.message == (
        "destination 'crm' (hubspot): HubSpot's daily API limit is used up (policy DAILY): "
        "You have reached your daily limit."
    )
    assert result.accepted == 0 and len(hubspot.requests) == 1


# --------------------------------------------------------------------------------------------------
# Credentials and secrets
# --------------------------------------------------------------------------------------------------


def test_a_wrong_token_fails_at_once_and_the_token_never_shows():
    with FakeHubSpot("pat-na1-the-right-one") as fake:
        with pytest.raises(PlatformAuthError) as refused:
            deliver(crm(fake), CONTACTS, {"upsert": [customers(500)]}, InMemoryJournal(), retry=FAST)
        assert len(fake.requests) <= 4  # one per worker at most, and no retry
    message = str(refused.value)
    assert message == (
        "destination 'crm' (hubspot): the platform refused the credentials (HTTP 401): INVALID_AUTHENTICATION: "
        "The OAuth token used to make this call expired or is not valid for this account."
    )
    assert TOKEN not in message and TOKEN not in repr(refused.value)


def test_a_missing_scope_names_the_scope(hubspot):
    hubspot.scopes = {"crm.objects.contacts.read"}
    with pytest.raises(PlatformAuthError) as refused:
        deliver(crm(hubspot), CONTACTS, {"upsert": [customers(1)]}, InMemoryJournal())
    assert str(refused.value).endswith(
        "(HTTP 403): MISSING_SCOPES: This app hasn't been granted all required scopes to make this call. Read more "
        "about required scopes here: https://developers.hubspot.com/scopes. (required scopes: "
        "crm.objects.contacts.write)"
    )


def test_the_token_is_only_ever_in_the_authorization_header(hubspot, caplog):
    caplog.set_level(logging.DEBUG)
    hubspot.queue(503, {"status": "error", "message": f"upstream trouble for {TOKEN}"})
    platform = crm(hubspot)
    result = deliver(platform, CONTACTS, {"upsert": [customers(120)]}, InMemoryJournal(), retry=FAST)
    shown = preview(platform, CONTACTS, {"upsert": [customers(3)]})

    assert result.retries == 1
    assert all(r.headers["authorization"] == f"Bearer {TOKEN}" for r in hubspot.requests)
    assert all(
        TOKEN.encode() not in r.raw_body and TOKEN not in r.path + str(r.query) for r in hubspot.requests
    )
    texts = [caplog.text, repr(result), str(result.as_metadata()), repr(shown), repr(platform.settings)]
    assert all(TOKEN not in text for text in texts)
    assert "upstream trouble for ***" in caplog.text


# --------------------------------------------------------------------------------------------------
# validate --connect, preview, settings
# --------------------------------------------------------------------------------------------------


def test_validate_connect_checks_the_token_the_object_and_every_property(hubspot):
    assert validate_connection(crm(hubspot), CONTACTS) == []
    spec = ActivationSpec(
        "crm", "id", {"firstname": "name"}, {"ltv": "lifetime_valu", "created": "createdate"}
    )
    assert validate_connection(crm(hubspot), spec) == [
        "mapping.ltv: no field 'lifetime_valu' in HubSpot contacts; did you mean 'lifetime_value'?",
        "mapping.created: field 'createdate' of HubSpot contacts is read-only",
        (
            "match.firstname: property 'firstname' of HubSpot contacts does not have unique values; allowed: a "
            "property with hasUniqueValue (or email for contacts)"
        ),
    ]
    assert validate_connection(crm(hubspot, access_token="pat-na1-wrong"), CONTACTS) == [
        (
            "destination 'crm' (hubspot): the platform refused the credentials (HTTP 401): INVALID_AUTHENTICATION: "
            "The OAuth token used to make this call expired or is not valid for this account."
        )
    ]
    assert validate_connection(crm(hubspot, object="p123_cars"), CONTACTS) == [
        (
            "destination 'crm' (hubspot): reading p123_cars (object type 'p123_cars') failed with HTTP 404: "
            "OBJECT_NOT_FOUND: Unable to infer object type from: p123_cars"
        )
    ]


def test_preview_shows_the_first_request_with_emails_masked(hubspot):
    shown = preview(crm(hubspot), CONTACTS, {"upsert": [customers(2)], "delete": [customers(1, start=9)]})
    assert hubspot.requests == []
    upsert, delete = shown
    assert upsert.url == f"{hubspot.url}/crm/v3/objects/contacts/batch/upsert"
    assert upsert.body["inputs"][0] == {
        "idProperty": "email",
        "id": "c***@e***",
        "objectWriteTraceId": "1",
        "properties": {
            "firstname": "Name1",
            "lifetime_value": "1.50",
            "vip": "false",
            "signup_date": "2025-01-02",
        },
    }
    assert delete.url == f"{hubspot.url}/crm/v3/objects/contacts/batch/read"
    assert delete.body == {"idProperty": "email", "inputs": [{"id": "c***@e***"}], "properties": ["email"]}


def test_settings_errors_name_the_key_and_what_is_allowed():
    with pytest.raises(PlatformConfigError) as bad:
        build_platform(
            "hubspot",
            {
                "service": "audiences",
                "object": "contact",
                "access_token": TOKEN,
                "base_url": "api.hubapi.com",
            },
            destination="crm",
        )
    assert str(bad.value).splitlines() == [
        "destinations.crm.service: Input should be 'attributes' (found 'audiences')",
        "destinations.crm.base_url: found 'api.hubapi.com'; allowed: an http:// or https:// URL",
        (
            "destinations.crm.object: found 'contact'; allowed: contacts, companies, deals, or a custom object's "
            "objectTypeId (2-123456) or fully qualified name (p123456_name)"
        ),
    ]
    with pytest.raises(PlatformConfigError) as missing:
        build_platform("hubspot", {"object": "deals"}, destination="crm")
    assert str(missing.value) == "destinations.crm.access_token: Field required"
    platform = build_platform("hubspot", {"object": "deals", "access_token": TOKEN}, destination="crm")
    assert platform.base_url == "https://api.hubapi.com"
    assert platform.validate_activation({"email": "email", "phone": "phone"}, {"ltv": "Lifetime Value"}) == [
        (
            "match: found 2 identifiers (email, phone); allowed: one unique property (HubSpot matches records by a "
            "single idProperty)"
        ),
        (
            "mapping.ltv: found 'Lifetime Value'; allowed: a HubSpot property's internal name (lower-case letters, "
            "digits, _)"
        ),
    ]
