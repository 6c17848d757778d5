"""The Braze adapter through a fake Braze built from Braze's documentation (tests/fakes/braze.py):
what the workspace holds afterwards (users, attributes, events, subscription states, audience
membership), what Braze answered, and that the REST API key never shows anywhere but in the
Authorization header. The last tests check the fake itself where it goes beyond tests/test_fakes.py."""

from __future__ import annotations

import datetime as dt
import decimal
import logging
import math
import time

import pyarrow as pa
import pytest
import requests
from fakes.braze import BrazeFake

from dinmo_dagster.platforms import (
    ActivationSpec,
    InMemoryJournal,
    PlatformAuthError,
    PlatformConfigError,
    PlatformRequestError,
    RetryPolicy,
    build_platform,
    deliver,
    preview,
    validate_connection,
)
from dinmo_dagster.platforms.braze import Braze

KEY = "braze-rest-3f9c2a71-5d4e-4b8a-9c61-0e7d2f8a1b45"
AUTH = {"Authorization": f"Bearer {KEY}"}
FAST = RetryPolicy(
    max_attempts=3, max_rate_limited_attempts=30, initial_wait_seconds=0.01, max_wait_seconds=0.05
)
USERS = ActivationSpec(
    "crm",
    "customer_id",
    match={"external_id": "customer_id"},
    mapping={"first_name": "first_name", "ltv": "lifetime_value", "is_vip": "vip", "signup": "signup_date"},
)


ORDERS = ActivationSpec(
    "crm",
    "order_id",
    match={"external_id": "customer_id"},
    mapping={"ordered_at": "time", "amount": "amount", "coupon": "coupon"},
)


def orders(n: int, start: int = 1, **overrides) -> pa.RecordBatch:
    ids = list(range(start, start + n))
    columns = {
        "order_id": [f"o-{i}" for i in ids],
        "customer_id": [f"c{i % 7}" for i in ids],
        "ordered_at": pa.array(
            [dt.datetime(2025, 3, 1, 10, 0, tzinfo=dt.timezone.utc) + dt.timedelta(minutes=i) for i in ids]
        ),
        "amount": [decimal.Decimal(f"{i}.25") for i in ids],
        "coupon": [None if i % 2 else "SPRING" for i in ids],
    }
    columns.update(overrides)
    return pa.record_batch(columns)


@pytest.fixture
def braze():
    with BrazeFake(KEY) as fake:
        yield fake


def destination(fake: BrazeFake, service: str = "attributes", **settings) -> Braze:
    raw = {"service": service, "api_key": KEY, "base_url": fake.url, **settings}
    platform = build_platform("braze", raw, destination="crm")
    assert isinstance(platform, Braze)
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


def expected_user(i: int) -> dict:
    return {
        "first_name": f"Name{i}",
        "lifetime_value": i + 0.5,
        "vip": i % 2 == 0,
        "signup_date": (dt.date(2025, 1, 1) + dt.timedelta(days=i)).isoformat(),
    }


def attributes_by_id(fake: BrazeFake) -> dict[str, dict]:
    return {u.external_id: u.attributes for u in fake.users}


def track_sizes(fake: BrazeFake, array: str = "attributes") -> list[int]:
    return [len(r.body[array]) for r in fake.requests if r.path == "/users/track" and r.status == 201]


def seed(fake: BrazeFake, *attributes: dict) -> None:
    """Profiles Braze already holds (put there by the SDKs or another tool)."""
    answer = requests.post(
        f"{fake.url}/users/track", json={"attributes": list(attributes)}, headers=AUTH, timeout=5
    )
    assert answer.status_code == 201 and "errors" not in answer.json()
    fake.requests.clear()


# --------------------------------------------------------------------------------------------------
# attributes: upsert, update, mirror
# --------------------------------------------------------------------------------------------------


def test_a_first_upsert_creates_every_user_with_its_attributes_in_requests_of_75(braze):
    journal = InMemoryJournal()
    result = deliver(destination(braze), USERS, {"upsert": [customers(160)]}, journal)

    assert attributes_by_id(braze) == {str(i): expected_user(i) for i in range(1, 161)}
    assert sorted(track_sizes(braze)) == [10, 75, 75]  # never over Braze's 75 objects per request
    first = next(
        r.body["attributes"][0] for r in braze.requests if r.body["attributes"][0]["external_id"] == "1"
    )
    assert first == {"external_id": "1", "_update_existing_only": False, **expected_user(1)}
    assert sorted(journal.acknowledged_keys["upsert"], key=int) == [str(i) for i in range(1, 161)]
    assert (result.accepted, result.rejected, result.batches, result.requests) == (160, 0, 3, 3)


def test_a_delta_changes_the_mapped_attributes_and_a_null_removes_one_unless_skipped(braze):
    seed(braze, {"external_id": "1", "loyalty_tier": "gold"})  # set in Braze by something else
    deliver(destination(braze), USERS, {"upsert": [customers(3)]}, InMemoryJournal())
    changed = customers(2, first_name=["Ann", "Bob"], ltv=[None, decimal.Decimal("99.00")])
    deliver(destination(braze), USERS, {"upsert": [changed]}, InMemoryJournal())

    assert attributes_by_id(braze) == {
        "1": {"loyalty_tier": "gold", "first_name": "Ann", "vip": False, "signup_date": "2025-01-02"},
        "2": {**expected_user(2), "first_name": "Bob", "lifetime_value": 99},
        "3": expected_user(3),
    }
    skip = ActivationSpec("crm", "customer_id", USERS.match, USERS.mapping, null_values="skip")
    deliver(destination(braze), skip, {"upsert": [customers(1, first_name=[None])]}, InMemoryJournal())
    assert attributes_by_id(braze)["1"]["first_name"] == "Ann"
    assert "first_name" not in braze.requests[-1].body["attributes"][0]


def test_update_changes_only_the_users_braze_already_holds(braze):
    seed(braze, {"external_id": "1", "first_name": "Old"})
    result = deliver(destination(braze), USERS, {"update": [customers(2)]}, InMemoryJournal())

    assert attributes_by_id(braze) == {"1": expected_user(1)}  # customer 2 was not created
    assert result.accepted == 2 and result.rejected == 0
    assert {o["_update_existing_only"] for o in braze.requests[0].body["attributes"]} == {True}


def test_mirror_clears_the_mapped_attributes_of_users_who_left_and_keeps_their_profiles(braze):
    deliver(destination(braze), USERS, {"upsert": [customers(3)]}, InMemoryJournal())
    seed(braze, {"external_id": "2", "loyalty_tier": "gold"})
    left = pa.record_batch({"customer_id": [2, 3, 99]})
    journal = InMemoryJournal()
    result = deliver(destination(braze), USERS, {"delete": [left]}, journal)

    assert attributes_by_id(braze) == {"1": expected_user(1), "2": {"loyalty_tier": "gold"}, "3": {}}
    assert braze.requests[-1].body["attributes"][0] == {
        "external_id": "2",
        "_update_existing_only": True,
        "first_name": None,
        "lifetime_value": None,
        "vip": None,
        "signup_date": None,
    }
    assert sorted(journal.acknowledged_keys["delete"]) == ["2", "3", "99"] and result.accepted == 3


def test_mirror_delete_users_deletes_the_profiles_in_requests_of_50(braze):
    platform = destination(braze, mirror="delete_users")
    deliver(platform, USERS, {"upsert": [customers(80)]}, InMemoryJournal())
    result = deliver(
        platform, USERS, {"delete": [pa.record_batch({"customer_id": list(range(1, 61))})]}, InMemoryJournal()
    )

    assert sorted(int(u.external_id) for u in braze.users) == list(range(61, 81))
    assert sorted(int(u.external_id) for u in braze.deleted) == list(range(1, 61))
    deletions = [r.body["external_ids"] for r in braze.requests if r.path == "/users/delete"]
    assert sorted(len(d) for d in deletions) == [10, 50]  # 75-record batches, at most 50 ids a request
    assert result.accepted == 60


def test_an_invalid_value_is_rejected_with_brazes_reason_while_the_others_land(braze):
    spec = ActivationSpec("crm", "customer_id", USERS.match, {"first_name": "first_name", "mobile": "phone"})
    batch = customers(4, mobile=["+33612345678", "555-1234", "+33612345679", "+33612345670"])
    journal = InMemoryJournal()
    result = deliver(destination(braze), spec, {"upsert": [batch]}, journal)

    assert sorted(attributes_by_id(braze)) == ["1", "3", "4"]
    assert braze.user(external_id="3").phone == "+33612345679"
    reason = "'phone' must be a valid phone number (E.164, e.g. +15043277269)"
    assert journal.rejections == [("2", "upsert", reason)]
    assert result.top_reasons() == [(reason, 1)]
    assert result.as_metadata()["top_rejection_reasons"] == f"{reason} (1)"
    assert (result.accepted, result.rejected) == (3, 1)


def test_a_rejection_label_never_carries_the_records_values(braze):
    seed(braze, {"external_id": "x"})
    braze.fail_next(
        "/users/track",
        201,
        {
            "message": "success",
            "errors": [
                {
                    "type": "value 'Secret Name' of customer 'customer1@example.com' is bad",
                    "input_array": "attributes",
                    "index": 0,
                }
            ],
        },
    )
    spec = ActivationSpec("crm", "customer_id", {"email": "email"}, {"first_name": "first_name"})
    journal = InMemoryJournal()
    result = deliver(
        destination(braze), spec, {"upsert": [customers(1, first_name=["Secret Name"])]}, journal
    )

    assert journal.rejections[0][2] == "value 'Secret Name' of customer 'customer1@example.com' is bad"
    assert result.top_reasons() == [("value '***' of customer '***' is bad", 1)]


def test_an_error_without_an_index_splits_an_attribute_batch_and_the_halves_land(braze):
    braze.fail_next(
        "/users/track",
        201,
        {"message": "success", "attributes_processed": 3, "errors": [{"type": "Internal"}]},
    )
    result = deliver(destination(braze), USERS, {"upsert": [customers(4)]}, InMemoryJournal())

    assert attributes_by_id(braze) == {str(i): expected_user(i) for i in range(1, 5)}
    assert [len(r.body["attributes"]) for r in braze.requests] == [4, 2, 2]
    assert (result.accepted, result.rejected, result.batches) == (4, 0, 3)


def test_an_error_without_an_index_rejects_an_event_batch_rather_than_duplicate_events(braze):
    braze.fail_next(
        "/users/track", 201, {"message": "success", "events_processed": 1, "errors": [{"type": "Oops"}]}
    )
    journal = InMemoryJournal()
    result = deliver(
        destination(braze, "events", event_name="order_placed"), ORDERS, {"track": [orders(2)]}, journal
    )

    assert len(braze.requests) == 1  # not sent again: Braze kept one of them and does not say which
    reason = "Braze reported an error without an index (Oops); 1 of 2 events were processed and Braze does not say which"
    assert journal.rejections == [("o-1", "track", reason), ("o-2", "track", reason)]
    assert result.top_reasons() == [("error without index: Oops", 2)]


def test_an_error_without_an_index_is_harmless_when_braze_processed_every_other_object(braze):
    braze.fail_next(
        "/users/track",
        201,
        {"message": "success", "events_processed": 2, "errors": [{"type": "partner field ignored"}]},
    )
    result = deliver(
        destination(braze, "events", event_name="order_placed"),
        ORDERS,
        {"track": [orders(2)]},
        InMemoryJournal(),
    )
    assert (result.accepted, result.rejected) == (2, 0)


def test_a_request_braze_refuses_whole_is_rejected_with_its_message_once_alone(braze):
    braze.fail_next("/users/track", 400, {"message": "Bad Request", "errors": [{"type": "malformed object"}]})
    journal = InMemoryJournal()
    deliver(destination(braze), USERS, {"upsert": [customers(1)]}, journal)
    assert journal.rejections == [("1", "upsert", "Bad Request: malformed object")]

    braze.fail_next("/users/track", 400, {"message": "Bad Request"})
    result = deliver(destination(braze), USERS, {"upsert": [customers(4, start=10)]}, InMemoryJournal())
    assert [len(r.body["attributes"]) for r in braze.requests[1:]] == [
        4,
        2,
        2,
    ]  # split, then both halves land
    assert result.accepted == 4 and len(braze.users) == 4


def test_queued_answers_during_maintenance_count_as_delivered(braze):
    braze.fail_next("/users/track", 202, {"message": "queued"})
    result = deliver(destination(braze), USERS, {"upsert": [customers(3)]}, InMemoryJournal())
    assert (result.accepted, result.rejected, len(braze.requests)) == (3, 0, 1)


def test_a_contract_of_50_objects_per_request_needs_the_setting_and_is_kept_with_it():
    with BrazeFake(KEY, max_objects_per_request=50) as fake:
        with pytest.raises(PlatformRequestError) as refused:
            deliver(destination(fake), USERS, {"upsert": [customers(75)]}, InMemoryJournal())
        assert str(refused.value) == (
            "destination 'crm' (braze): sending 75 objects per request (set max_objects_per_request to your "
            "contract's limit, 50 for Monthly Active Users CY 24-25) failed with HTTP 400: Max Input Length Exceeded"
        )
        assert fake.users == []

        deliver(
            destination(fake, max_objects_per_request=50),
            USERS,
            {"upsert": [customers(80)]},
            InMemoryJournal(),
        )
        assert sorted(track_sizes(fake)) == [30, 50] and len(fake.users) == 80


def test_users_are_found_by_email_phone_or_alias_as_match_says(braze):
    seed(braze, {"external_id": "crm-1", "email": "customer1@example.com"})
    by_email = ActivationSpec("crm", "customer_id", {"email": "email"}, {"first_name": "first_name"})
    deliver(destination(braze), by_email, {"upsert": [customers(1)]}, InMemoryJournal())
    assert braze.user(external_id="crm-1").attributes == {"first_name": "Name1"}

    by_phone = ActivationSpec(
        "crm", "customer_id", {"phone": "mobile"}, {"first_name": "first_name"}, default_country="FR"
    )
    batch = customers(2, start=5, mobile=["06 12 34 56 78", "12"])
    journal = InMemoryJournal()
    deliver(destination(braze), by_phone, {"upsert": [batch]}, journal)
    assert braze.user(phone="+33612345678").attributes == {"first_name": "Name5"}  # sent in E.164
    assert journal.rejections == [
        ("6", "upsert", "identifier phone (column mobile) is not a valid phone number")
    ]

    by_alias = ActivationSpec("crm", "customer_id", {"user_alias": "email"}, {"first_name": "first_name"})
    deliver(
        destination(braze, alias_label="crm_email"),
        by_alias,
        {"upsert": [customers(1, start=9)]},
        InMemoryJournal(),
    )
    alias_user = braze.user(alias=("customer9@example.com", "crm_email"))
    assert alias_user is not None and alias_user.attributes == {"first_name": "Name9"}


# --------------------------------------------------------------------------------------------------
# events
# --------------------------------------------------------------------------------------------------


def test_events_carry_the_settings_name_the_time_column_and_the_mapped_properties(braze):
    result = deliver(
        destination(braze, "events", event_name="order_placed", app_id="web"),
        ORDERS,
        {"track": [orders(3)]},
        InMemoryJournal(),
    )

    stored = [
        (e.external_id, e.name, e.time, e.properties, e.app_id) for e in braze.events_named("order_placed")
    ]
    assert stored == [
        ("c1", "order_placed", "2025-03-01T10:01:00.000Z", {"amount": 1.25}, "web"),
        ("c2", "order_placed", "2025-03-01T10:02:00.000Z", {"amount": 2.25, "coupon": "SPRING"}, "web"),
        ("c3", "order_placed", "2025-03-01T10:03:00.000Z", {"amount": 3.25}, "web"),
    ]
    assert braze.requests[0].body["events"][0]["_update_existing_only"] is False
    assert result.accepted == 3


def test_an_event_without_a_time_is_rejected_before_anything_is_sent(braze):
    batch = orders(2, ordered_at=pa.array([None, dt.datetime(2025, 3, 1, 10, 0)], type=pa.timestamp("us")))
    journal = InMemoryJournal()
    deliver(destination(braze, "events", event_name="order_placed"), ORDERS, {"track": [batch]}, journal)

    assert journal.rejections == [
        ("o-1", "track", "the event has no time: field time is NULL, not a timestamp, or not mapped")
    ]
    assert [e.time for e in braze.events] == ["2025-03-01T10:00:00.000Z"]  # a naive timestamp is UTC
    assert len(braze.requests[0].body["events"]) == 1


def test_a_retried_sync_never_sends_an_acknowledged_event_twice(braze):
    # Braze keeps duplicate events, so the journal is what keeps a retry from counting twice.
    t0 = time.time()
    aligned = math.ceil(t0 / 3600) * 3600 + 3600  # the fake's clock at the start of an hourly window
    with BrazeFake(KEY, track_limit=1, track_window=3600, clock=lambda: aligned + time.time() - t0) as fake:
        platform = destination(fake, "events", event_name="order_placed", max_concurrency=1)
        journal = InMemoryJournal()
        first = deliver(platform, ORDERS, {"track": [orders(150)]}, journal)
        assert first.quota is not None and first.accepted == 75
        assert first.quota.message.startswith(
            "destination 'crm' (braze): the platform's rate limit resets in "
        ) and first.quota.message.endswith("s (X-RateLimit-Remaining: 0)")

        fake.set_rate_limit("track", 3000, 3.0)
        second = deliver(platform, ORDERS, {"track": [orders(150)]}, journal)
        assert second.quota is None and second.accepted == 75
        assert second.counts("track").already_acknowledged == 75
        assert sorted(e.time for e in fake.events) == sorted(
            (dt.datetime(2025, 3, 1, 10, 0) + dt.timedelta(minutes=i)).isoformat(timespec="milliseconds")
            + "Z"
            for i in range(1, 151)
        )


class _FlushingJournal(InMemoryJournal):
    """A journal that buffers like the warehouse's and notes, at each write, how many event requests
    Braze had received and how many events were journalled."""

    def __init__(self, fake: BrazeFake) -> None:
        super().__init__()
        self.fake = fake
        self.buffered: list[str] = []
        self.writes: list[tuple[int, int]] = []

    def acknowledged(self, operation: str, keys) -> None:
        self.buffered.extend(keys)

    def flush(self) -> None:
        if self.buffered:
            super().acknowledged("track", self.buffered)
            self.buffered = []
            sent = sum(1 for r in self.fake.requests if r.body and r.body.get("events"))
            self.writes.append((sent, len(self.acknowledged_keys["track"])))


def test_events_go_one_batch_at_a_time_each_journalled_before_the_next_is_sent():
    # Braze would count an event sent twice: a kill may re-send only the batch in flight.
    with BrazeFake(KEY, latency=0.01) as fake:
        platform = destination(fake, "events", event_name="order_placed")
        journal = _FlushingJournal(fake)
        result = deliver(platform, ORDERS, {"track": [orders(75 * 6)]}, journal)

    assert result.accepted == 450
    assert journal.writes == [(n, 75 * n) for n in range(1, 7)]
    assert fake.max_in_flight == 1


def test_attribute_batches_still_go_out_concurrently_with_a_buffering_journal():
    with BrazeFake(KEY, latency=0.05) as fake:
        deliver(destination(fake), USERS, {"upsert": [customers(75 * 8)]}, _FlushingJournal(fake))

    assert fake.max_in_flight > 1


# --------------------------------------------------------------------------------------------------
# subscriptions
# --------------------------------------------------------------------------------------------------

CONSENT = ActivationSpec(
    "crm", "customer_id", {"external_id": "customer_id"}, {"consent": "subscription_state"}
)


def test_subscription_states_follow_the_consent_column_and_nobody_is_subscribed_without_one(braze):
    seed(
        braze,
        *(
            {
                "external_id": str(i),
                "subscription_groups": [
                    {
                        "subscription_group_id": "news",
                        "subscription_state": "unsubscribed" if i == 5 else "subscribed",
                    }
                ],
            }
            for i in range(1, 6)
        ),
    )
    journal = InMemoryJournal()
    platform = destination(braze, "subscriptions", subscription_group_id="news")
    booleans = customers(3, consent=[False, True, None])
    words = customers(2, start=4, consent=[" Subscribed ", "yes"])  # a text column says it in words
    result = deliver(platform, CONSENT, {"upsert": [booleans, words]}, journal)

    states = {str(i): braze.subscription_state("news", external_id=str(i)) for i in range(1, 6)}
    assert states == {
        "1": "unsubscribed",
        "2": "subscribed",
        "3": "subscribed",
        "4": "subscribed",
        "5": "unsubscribed",
    }  # 3 and 5 kept what Braze held
    reason = (
        "field subscription_state is NULL or not a consent state; allowed: true/false or "
        "subscribed/unsubscribed (nothing is changed in Braze without one)"
    )
    assert journal.rejections == [("3", "upsert", reason), ("5", "upsert", reason)]
    assert braze.requests[0].path == "/v2/subscription/status/set"
    assert braze.requests[0].body == {
        "subscription_groups": [
            {"subscription_group_id": "news", "subscription_state": "subscribed", "external_ids": ["2", "4"]},
            {"subscription_group_id": "news", "subscription_state": "unsubscribed", "external_ids": ["1"]},
        ]
    }
    assert (result.accepted, result.rejected) == (3, 2)


def test_subscriptions_go_50_users_a_request_and_mirror_unsubscribes_who_left(braze):
    seed(braze, *({"email": f"customer{i}@example.com"} for i in range(1, 71)))
    spec = ActivationSpec("crm", "customer_id", {"email": "email"}, {"consent": "subscription_state"})
    platform = destination(braze, "subscriptions", subscription_group_id="news")
    deliver(platform, spec, {"upsert": [customers(70, consent=[True] * 70)]}, InMemoryJournal())
    deliver(platform, spec, {"delete": [customers(2, start=69)]}, InMemoryJournal())

    sizes = [sum(len(g["emails"]) for g in r.body["subscription_groups"]) for r in braze.requests]
    assert sorted(sizes) == [2, 20, 50]
    subscribed = [
        i
        for i in range(1, 71)
        if braze.subscription_state("news", email=f"customer{i}@example.com") == "subscribed"
    ]
    assert subscribed == list(range(1, 69))


# --------------------------------------------------------------------------------------------------
# audiences
# --------------------------------------------------------------------------------------------------

MEMBERS = ActivationSpec("crm", "customer_id", {"external_id": "customer_id"})


def members(fake: BrazeFake, audience: str = "VIP Europe", attribute: str = "dinmo_audiences") -> list[int]:
    return sorted(int(u.external_id) for u in fake.users if audience in (u.attributes.get(attribute) or []))


def test_audience_members_are_added_and_removed_in_the_array_leaving_other_audiences_alone(braze):
    seed(braze, *({"external_id": str(i), "dinmo_audiences": ["Churn risk"]} for i in range(1, 4)))
    platform = destination(braze, "audiences", audience="VIP Europe")
    deliver(platform, MEMBERS, {"add": [customers(3, start=2)]}, InMemoryJournal())  # 2, 3, and 4 unknown

    assert members(braze) == [2, 3]
    assert len(braze.users) == 3  # adding someone Braze does not hold creates no profile
    assert braze.user(external_id="3").attributes == {"dinmo_audiences": ["Churn risk", "VIP Europe"]}
    deliver(platform, MEMBERS, {"remove": [customers(1, start=3)]}, InMemoryJournal())
    assert members(braze) == [2]
    assert members(braze, "Churn risk") == [1, 2, 3]
    assert braze.requests[-1].body == {
        "attributes": [
            {"external_id": "3", "_update_existing_only": True, "dinmo_audiences": {"remove": ["VIP Europe"]}}
        ]
    }


def test_a_full_sync_of_an_audience_is_remove_then_add_as_braze_has_no_replace(braze):
    seed(braze, *({"external_id": str(i)} for i in range(1, 8)))
    platform = destination(braze, "audiences", audience="VIP Europe")
    deliver(platform, MEMBERS, {"add": [customers(4)]}, InMemoryJournal())  # the baseline: 1-4

    # Full sync of a segment that now holds 3-6: remove who left (from the baseline), then add all.
    result = deliver(
        platform, MEMBERS, [("remove", [customers(2)]), ("add", [customers(4, start=3)])], InMemoryJournal()
    )
    assert members(braze) == [3, 4, 5, 6]
    assert (result.counts("remove").accepted, result.counts("add").accepted) == (2, 4)
    with pytest.raises(PlatformConfigError) as replace:
        deliver(platform, MEMBERS, {"replace": [customers(1)]}, InMemoryJournal())
    assert str(replace.value) == (
        "destination 'crm' (braze): service 'audiences' does not support operation 'replace'; allowed: add, remove"
    )


def test_boolean_membership_sets_the_audience_attribute_true_and_false(braze):
    seed(braze, {"external_id": "1"}, {"external_id": "2"})
    platform = destination(
        braze, "audiences", membership="boolean", audience_attribute="in_vip_europe", create_users=True
    )
    deliver(platform, MEMBERS, [("add", [customers(3)]), ("remove", [customers(1)])], InMemoryJournal())
    assert {u.external_id: u.attributes for u in braze.users} == {
        "1": {"in_vip_europe": False},
        "2": {"in_vip_europe": True},
        "3": {"in_vip_europe": True},
    }


# --------------------------------------------------------------------------------------------------
# rate limits
# --------------------------------------------------------------------------------------------------


def test_a_429_storm_from_brazes_own_limit_is_ridden_out_until_each_reset():
    with BrazeFake(KEY, track_limit=4, track_window=1.0) as fake:
        result = deliver(
            destination(fake), USERS, {"upsert": [customers(12 * 75)]}, InMemoryJournal(), retry=FAST
        )
        throttled = sum(1 for r in fake.requests if r.status == 429)

        assert len(fake.users) == 900 and result.accepted == 900
        assert result.requests == 12 + throttled and result.retries == throttled
        assert result.rate_limit_wait_seconds > 0  # X-RateLimit-Remaining: 0 and 429s held every worker


def test_a_lower_rate_limit_setting_is_obeyed(braze):
    platform = destination(braze, rate_limit={"requests": 2, "per_seconds": 0.4})
    deliver(platform, USERS, {"upsert": [customers(5 * 75)]}, InMemoryJournal())
    arrivals = sorted(r.at for r in braze.requests)
    assert len(arrivals) == 5
    assert all(arrivals[i + 2] - arrivals[i] >= 0.3 for i in range(len(arrivals) - 2))


def test_the_concurrency_is_bounded():
    with BrazeFake(KEY, latency=0.05) as fake:
        deliver(destination(fake), USERS, {"upsert": [customers(30 * 75)]}, InMemoryJournal())
        assert 1 < fake.max_in_flight <= 8 and len(fake.users) == 2250


# --------------------------------------------------------------------------------------------------
# credentials and secrets
# --------------------------------------------------------------------------------------------------


def test_a_wrong_key_fails_at_once_and_the_key_never_shows():
    with BrazeFake("another-workspace-key") as fake:
        with pytest.raises(PlatformAuthError) as refused:
            deliver(destination(fake), USERS, {"upsert": [customers(600)]}, InMemoryJournal(), retry=FAST)
        assert len(fake.requests) <= 8  # one per worker at most, and no retry
    assert str(refused.value) == (
        "destination 'crm' (braze): the platform refused the credentials (HTTP 401): Invalid API key"
    )
    assert KEY not in str(refused.value) and KEY not in repr(refused.value)


def test_a_key_without_the_permission_names_it():
    with BrazeFake(KEY, permissions={"users.track"}) as fake, pytest.raises(PlatformAuthError) as refused:
        deliver(
            destination(fake, "subscriptions", subscription_group_id="news"),
            CONSENT,
            {"upsert": [customers(1, consent=[True])]},
            InMemoryJournal(),
        )
    assert str(refused.value) == (
        "destination 'crm' (braze): the platform refused the credentials (HTTP 403): Access Denied "
        "(the REST API key needs the subscription.status.set permission)"
    )


def test_the_key_is_only_ever_in_the_authorization_header(braze, caplog):
    caplog.set_level(logging.DEBUG)
    braze.fail_next("/users/track", 503, {"message": f"upstream trouble for {KEY}"})
    platform = destination(braze)
    result = deliver(platform, USERS, {"upsert": [customers(100)]}, InMemoryJournal(), retry=FAST)
    shown = preview(platform, USERS, {"upsert": [customers(3)]})

    assert result.retries == 1 and len(braze.users) == 100
    assert sorted(r.status for r in braze.requests) == [201, 201, 503]
    assert all(r.authorized for r in braze.requests)  # the key went in the Authorization header...
    assert all(KEY not in repr(r.body) + r.path + repr(r.headers) for r in braze.requests)  # ...only there
    texts = [caplog.text, repr(result), str(result.as_metadata()), repr(shown), repr(platform.settings)]
    assert all(KEY not in text for text in texts)
    assert "upstream trouble for ***" in caplog.text


# --------------------------------------------------------------------------------------------------
# preview, validate --connect, settings
# --------------------------------------------------------------------------------------------------


def test_preview_shows_the_first_requests_with_identifiers_masked_and_sends_nothing(braze):
    spec = ActivationSpec("crm", "customer_id", {"email": "email"}, {"first_name": "first_name"})
    (upsert,) = preview(destination(braze), spec, {"upsert": [customers(2)]})
    assert (upsert.url, upsert.records) == (f"{braze.url}/users/track", 2)
    assert upsert.body == {
        "attributes": [
            {"first_name": "Name1", "email": "c***@e***", "_update_existing_only": False},
            {"first_name": "Name2", "email": "c***@e***", "_update_existing_only": False},
        ]
    }
    ids = ActivationSpec("crm", "customer_id", {"external_id": "email"})
    (delete,) = preview(destination(braze, mirror="delete_users"), ids, {"delete": [customers(60)]})
    assert (delete.url, delete.records) == (f"{braze.url}/users/delete", 60)
    assert delete.body == {"external_ids": ["c***@e***"] * 50}  # the first request: 50 ids
    with pytest.raises(PlatformConfigError) as by_email:
        preview(destination(braze, mirror="delete_users"), spec, {"delete": [customers(1)]})
    assert str(by_email.value) == (
        "destination 'crm' (braze): match: found email; mirror: delete_users deletes users by external_id or "
        "user_alias only"
    )
    assert braze.requests == []

    alias = ActivationSpec("crm", "customer_id", {"user_alias": "email"})
    (added,) = preview(
        destination(braze, "audiences", audience="VIP", alias_label="crm_email"),
        alias,
        {"add": [customers(1)]},
    )
    assert added.body == {
        "attributes": [
            {
                "user_alias": {"alias_name": "c***@e***", "alias_label": "crm_email"},
                "_update_existing_only": True,
                "dinmo_audiences": {"add": ["VIP"]},
            }
        ]
    }


def test_validate_connect_checks_the_key_its_permission_the_instance_and_the_activation(braze):
    assert validate_connection(destination(braze), USERS) == []
    assert (
        validate_connection(destination(braze, "subscriptions", subscription_group_id="news"), CONSENT) == []
    )
    assert [r.path for r in braze.requests] == ["/users/track", "/v2/subscription/status/set"]
    assert braze.users == []

    wrong = build_platform(
        "braze", {"service": "attributes", "api_key": "nope-nope", "base_url": braze.url}, destination="crm"
    )
    assert validate_connection(wrong, USERS) == [
        "destination 'crm' (braze): the platform refused the credentials (HTTP 401): Invalid API key"
    ]
    with BrazeFake(KEY, permissions={"users.track"}) as fake:
        assert validate_connection(destination(fake, mirror="delete_users"), USERS) == [
            (
                "destination 'crm' (braze): the platform refused the credentials (HTTP 403): Access Denied "
                "(the REST API key needs the users.track and users.delete permission)"
            )
        ]
    lost = build_platform(
        "braze", {"service": "attributes", "api_key": KEY, "base_url": braze.url + "/v1"}, destination="crm"
    )
    assert validate_connection(lost, USERS) == [
        (
            f"destination 'crm' (braze): POST /users/track at {braze.url}/v1 (check the destination's instance or "
            "base_url) failed with HTTP 404: Not Found"
        )
    ]
    bad = ActivationSpec(
        "crm", "id", {"email": "email", "braze_id": "bid"}, {"a": "external_id", "b": "$rank"}
    )
    assert validate_connection(destination(braze), bad) == [
        (
            "match.braze_id: braze has no identifier 'braze_id' for service attributes; allowed: external_id, "
            "user_alias, email, phone"
        ),
        (
            "match: found 2 identifiers (email, braze_id); allowed: one of external_id, user_alias, email, phone "
            "(Braze names a user by a single identifier)"
        ),
        (
            "mapping.a: found 'external_id'; allowed: an attribute name (external_id identifies the user or steers "
            "Braze)"
        ),
        "mapping.b: found '$rank'; allowed: an attribute name of 1 to 255 characters not starting with $",
    ]
    events = destination(braze, "events", event_name="order_placed")
    assert events.validate_activation({"user_alias": "id"}, {"amount": "amount"}) == [
        "match.user_alias: needs the destination's alias_label (the alias's label)",
        (
            "mapping: found no time; allowed: the fact model's time column mapped to time (the event's time), other "
            "columns mapped to event properties"
        ),
    ]
    subscriptions = destination(braze, "subscriptions", subscription_group_id="news")
    assert subscriptions.validate_activation({"user_alias": "id"}, {"consent": "state"}) == [
        (
            "match.user_alias: braze has no identifier 'user_alias' for service subscriptions; allowed: external_id, "
            "email, phone"
        ),
        (
            "mapping: found state; allowed: exactly one column mapped to subscription_state (true/false or "
            "subscribed/unsubscribed)"
        ),
    ]
    assert destination(braze, mirror="delete_users").validate_activation({"email": "email"}, {}) == [
        "match: found email; mirror: delete_users deletes users by external_id or user_alias only"
    ]


def test_settings_errors_name_the_key_and_what_is_allowed():
    with pytest.raises(PlatformConfigError) as bad:
        build_platform(
            "braze",
            {
                "service": "events",
                "api_key": KEY,
                "instance": "AU-01",
                "audience": "VIP",
                "max_objects_per_request": 100,
            },
            destination="crm",
        )
    assert str(bad.value).splitlines() == [
        (
            "destinations.crm.instance: found 'AU-01'; allowed: US-01 ... US-08, EU-01, EU-02 (for another instance "
            "set base_url to the REST endpoint of your dashboard's instance)"
        ),
        "destinations.crm.max_objects_per_request: Input should be less than or equal to 75 (found 100)",
        "destinations.crm.event_name: is required with service: events",
        "destinations.crm.audience: found 'VIP'; allowed only with service: audiences",
    ]
    with pytest.raises(PlatformConfigError) as missing:
        build_platform("braze", {"service": "audiences", "membership": "boolean"}, destination="crm")
    assert str(missing.value).splitlines() == [
        "destinations.crm.api_key: Field required",
        (
            "destinations.crm.audience_attribute: is required with membership: boolean (the boolean custom "
            "attribute's name)"
        ),
    ]
    us = build_platform("braze", {"service": "attributes", "api_key": KEY}, destination="crm")
    eu = build_platform(
        "braze", {"service": "attributes", "api_key": KEY, "instance": "eu-02"}, destination="crm"
    )
    assert (us.base_url, eu.base_url) == ("https://rest.iad-01.braze.com", "https://rest.fra-02.braze.eu")
    assert KEY not in repr(us.settings)


# --------------------------------------------------------------------------------------------------
# the fake, where it goes beyond tests/test_fakes.py
# --------------------------------------------------------------------------------------------------


def test_the_fake_counts_75_objects_across_the_three_arrays_of_a_request(braze):
    body = {
        "attributes": [{"external_id": f"u{i}"} for i in range(40)],
        "events": [{"external_id": "u1", "name": "e", "time": "2025-01-01T00:00:00Z"} for _ in range(36)],
    }
    refused = requests.post(f"{braze.url}/users/track", json=body, headers=AUTH, timeout=5)
    assert (refused.status_code, refused.json()["message"]) == (400, "Max Input Length Exceeded")
    assert braze.users == [] and braze.events == []

    with BrazeFake(KEY, max_objects_per_request=None) as legacy:
        accepted = requests.post(f"{legacy.url}/users/track", json=body, headers=AUTH, timeout=5)
        assert accepted.json() == {"message": "success", "attributes_processed": 40, "events_processed": 36}


def test_the_fake_deletes_users_by_one_kind_of_id_at_most_50_a_request(braze):
    seed(
        braze,
        {"external_id": "u1", "first_name": "A"},
        {"external_id": "u2"},
        {"user_alias": {"alias_name": "a1", "alias_label": "crm"}, "_update_existing_only": False},
    )
    answer = requests.post(
        f"{braze.url}/users/delete", json={"external_ids": ["u1", "ghost"]}, headers=AUTH, timeout=5
    )
    by_alias = requests.post(
        f"{braze.url}/users/delete",
        headers=AUTH,
        timeout=5,
        json={"user_aliases": [{"alias_name": "a1", "alias_label": "crm"}]},
    )
    both = requests.post(
        f"{braze.url}/users/delete",
        headers=AUTH,
        timeout=5,
        json={"external_ids": ["u2"], "braze_ids": ["x"]},
    )
    too_many = requests.post(
        f"{braze.url}/users/delete",
        headers=AUTH,
        timeout=5,
        json={"external_ids": [f"u{i}" for i in range(51)]},
    )

    assert (answer.status_code, answer.json()) == (201, {"message": "success", "deleted": 2})
    assert by_alias.status_code == 201 and "X-RateLimit-Remaining" in answer.headers
    assert (both.status_code, both.json()) == (
        400,
        {"message": "Exactly one of external_ids, user_aliases or braze_ids is required"},
    )
    assert (too_many.status_code, too_many.json()) == (
        400,
        {"message": "The max number of ids per request was exceeded"},
    )
    assert [u.external_id for u in braze.users] == ["u2"]
    assert [u.attributes for u in braze.deleted] == [{"first_name": "A"}, {}]
    with BrazeFake(KEY, permissions={"users.track"}) as fake:
        denied = requests.post(
            f"{fake.url}/users/delete", json={"external_ids": ["u1"]}, headers=AUTH, timeout=5
        )
        assert (denied.status_code, denied.json()) == (403, {"message": "Access Denied"})


def test_the_fake_refuses_event_property_names_braze_refuses(braze):
    body = {
        "events": [
            {"external_id": "u1", "name": "e", "time": "2025-01-01T00:00:00Z", "properties": {"$price": 1}},
            {"external_id": "u1", "name": "e", "time": "2025-01-01T00:00:00Z", "properties": {"price": 1}},
        ]
    }
    answer = requests.post(f"{braze.url}/users/track", json=body, headers=AUTH, timeout=5).json()
    assert answer == {
        "message": "success",
        "events_processed": 1,
        "errors": [
            {
                "type": "property names must be non-empty strings of at most 255 characters with no leading '$'",
                "input_array": "events",
                "index": 0,
            }
        ],
    }
