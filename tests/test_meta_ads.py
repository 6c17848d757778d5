"""The Meta Ads adapter through a fake Graph API built from Meta's documentation (tests/fakes/
meta_ads.py): the members each custom audience holds, the Conversions API events Meta counts, what
Meta answered, and that the token never shows anywhere but in the Authorization header.

Expected digests are computed here with hashlib from the normalized values Meta's documentation
gives (its worked examples, such as ``(650)555-1212`` -> ``16505551212`` -> ``e323ec62...``, are
quoted literally)."""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import json
import logging
import re
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pytest
import requests
from fakes.meta_ads import MetaAdsFake

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
from dinmo_dagster.platforms.meta_ads import MetaAds

TOKEN = "EAAGm0PX4ZCpsBAKZB7f3c9e1d2b4a6c8e0f1a3b5c7d9e"
PIXEL = "1234567890"
FAST = RetryPolicy(
    max_attempts=3, max_rate_limited_attempts=20, initial_wait_seconds=0.01, max_wait_seconds=0.05
)
MEMBERS = ActivationSpec(
    "vip_to_meta", "customer_id", {"email": "email", "phone": "phone"}, default_country="FR"
)
EMAILS = ActivationSpec("vip_to_meta", "customer_id", {"email": "email"})
# Meta's worked examples (Conversions API customer information parameters page).
JOHN_SMITH = "62a14e44f765419d10fea99367361a727c12365e2520f32218d505ed9aa0f62f"  # john_smith@gmail.com
PHONE_US = "e323ec626319ca94ee8bff2e4c87cf613be6ea19919ed1364124e16807ab3176"  # 16505551212
MARY = "6915771be1c5aa0c886870b6951b03d7eafc121fea0e80a5ea83beb7c449f4ec"  # mary
VALERY = "08e1996b5dd49e62a4b4c010d44e4345592a863bb9f8e3976219bac29417149c"  # valéry
US = "79adb2a2fce5c6ba215fe5f27f532d4e7edbac4b6a5e09e1ef3a08084a904621"  # us
BORN_1997_02_16 = "01acdbf6ec7b4f478a225f1a246e5d6767eeab1a7ffa17f025265b5b94f40f0c"  # 19970216
ACTION_SOURCES = [
    "app", "business_messaging", "chat", "email", "other", "phone_call", "physical_store", "system_generated",
    "website",
]  # fmt: skip


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture
def meta() -> Iterator[MetaAdsFake]:
    with MetaAdsFake(TOKEN, ad_account_id="act_1234", pixel_ids=(PIXEL,)) as fake:
        yield fake


def audiences(fake: MetaAdsFake, **settings: Any) -> MetaAds:
    raw = {
        "service": "audiences",
        "access_token": TOKEN,
        "ad_account_id": "act_1234",
        "audience": {"name": "VIP Europe"},
        "base_url": fake.url,
        **settings,
    }
    platform = build_platform("meta_ads", raw, destination="meta_vip")
    assert isinstance(platform, MetaAds)
    return platform


def events(fake: MetaAdsFake, **settings: Any) -> MetaAds:
    raw = {
        "service": "events",
        "access_token": TOKEN,
        "pixel_id": PIXEL,
        "event_name": "Purchase",
        "action_source": "physical_store",
        "base_url": fake.url,
        **settings,
    }
    platform = build_platform("meta_ads", raw, destination="meta_orders")
    assert isinstance(platform, MetaAds)
    return platform


def phone_of(i: int) -> str:
    return f"06 12 34 {i // 100 % 100:02d} {i % 100:02d}"


def customers(ids: Any, **overrides: list[Any]) -> pa.RecordBatch:
    ids = list(ids)
    columns: dict[str, list[Any]] = {
        "customer_id": ids,
        "email": [f" Customer{i}@Example.com" for i in ids],
        "phone": [phone_of(i) for i in ids],
    }
    columns.update(overrides)
    return pa.record_batch(columns)


def member(i: int) -> dict[str, str]:
    """What Meta holds for customer i: the digests of the normalized e-mail and phone."""
    return {
        "EMAIL": sha(f"customer{i}@example.com"),
        "PHONE": sha(f"3361234{i // 100 % 100:02d}{i % 100:02d}"),
    }


def emails(ids: Any) -> set[str]:
    return {sha(f"customer{i}@example.com") for i in ids}


def graph_paths(fake: MetaAdsFake) -> list[tuple[str, str]]:
    return [(r.method, r.path) for r in fake.requests]


# --------------------------------------------------------------------------------------------------
# Custom audiences: first sync, delta, full-sync replace
# --------------------------------------------------------------------------------------------------


def test_a_first_sync_creates_the_audience_by_name_and_adds_every_member_hashed(meta):
    journal = InMemoryJournal()
    result = deliver(audiences(meta), MEMBERS, {"add": [customers(range(1, 6))]}, journal)

    audience = meta.audience_named("VIP Europe")
    assert audience is not None
    assert (audience.subtype, audience.customer_file_source) == ("CUSTOM", "USER_PROVIDED_ONLY")
    assert meta.members(audience.id) == [member(i) for i in range(1, 6)]
    assert graph_paths(meta) == [
        ("GET", "/v25.0/act_1234/customaudiences"),
        ("POST", "/v25.0/act_1234/customaudiences"),
        ("POST", f"/v25.0/{audience.id}/users"),
    ]
    assert meta.requests[-1].params["payload"]["schema"] == ["EMAIL", "PHONE"]
    assert sorted(journal.acknowledged_keys["add"]) == ["1", "2", "3", "4", "5"]
    assert (result.accepted, result.rejected, result.batches, result.requests) == (5, 0, 1, 3)


def test_an_audience_is_found_by_its_name_or_used_by_its_id_and_never_created_twice(meta):
    existing = meta.create_audience("VIP Europe")
    deliver(audiences(meta), MEMBERS, {"add": [customers([1])]}, InMemoryJournal())
    deliver(
        audiences(meta, audience={"id": existing.id}), MEMBERS, {"add": [customers([2])]}, InMemoryJournal()
    )

    assert list(meta.audiences) == [existing.id]
    assert meta.members(existing.id) == [member(1), member(2)]
    assert graph_paths(meta) == [
        ("GET", "/v25.0/act_1234/customaudiences"),
        ("POST", f"/v25.0/{existing.id}/users"),
        ("POST", f"/v25.0/{existing.id}/users"),
    ]


def test_a_delta_removes_those_that_left_and_moves_a_changed_email(meta):
    platform = audiences(meta)
    deliver(platform, MEMBERS, {"add": [customers(range(1, 6))]}, InMemoryJournal())
    old_3 = customers([3])
    new_3 = customers([3], email=["new.three@example.com"])
    journal = InMemoryJournal()
    result = deliver(
        audiences(meta),
        MEMBERS,
        {"remove": [customers([4, 5]), old_3], "add": [new_3, customers([6])]},
        journal,
    )

    audience_id = meta.audience_named("VIP Europe").id
    assert meta.member_hashes(audience_id, "EMAIL") == emails([1, 2, 6]) | {sha("new.three@example.com")}
    assert [m for m in meta.members(audience_id) if m["EMAIL"] == sha("new.three@example.com")] == [
        {"EMAIL": sha("new.three@example.com"), "PHONE": member(3)["PHONE"]}
    ]
    assert [r.method for r in meta.requests[-2:]] == ["DELETE", "POST"]
    assert sorted(journal.acknowledged_keys["remove"]) == ["3", "4", "5"]
    assert sorted(journal.acknowledged_keys["add"]) == ["3", "6"]
    assert result.accepted == 5


def test_a_full_sync_replaces_the_membership_in_one_session_of_at_most_10000_rows_per_batch(meta):
    audience = meta.create_audience("VIP Europe", members=[{"EMAIL": sha("old@example.com")}])
    journal = InMemoryJournal()
    result = deliver(audiences(meta), EMAILS, {"replace": [customers(range(1, 20_002))]}, journal)

    assert meta.member_hashes(audience.id, "EMAIL") == emails(range(1, 20_002))
    replaces = [r for r in meta.requests if r.path.endswith("/usersreplace")]
    sessions = [r.params["session"] for r in replaces]
    assert [(s["batch_seq"], s["last_batch_flag"]) for s in sessions] == [(1, False), (2, False), (3, True)]
    assert len({s["session_id"] for s in sessions}) == 1
    assert [s["estimated_num_total"] for s in sessions][-1] == 20_001
    assert sorted(len(r.params["payload"]["data"]) for r in replaces) == [1, 10_000, 10_000]
    assert len(journal.acknowledged_keys["replace"]) == 20_001
    assert (result.accepted, result.batches) == (20_001, 3)


def test_a_replace_that_fails_acknowledges_nothing_and_the_audience_keeps_its_members(meta):
    audience = meta.create_audience("VIP Europe", members=[{"EMAIL": sha("old@example.com")}])
    meta.fail_next(f"/{audience.id}/usersreplace", 2650, "Failed to update the custom audience")
    journal = InMemoryJournal()
    with pytest.raises(PlatformRequestError) as failed:
        deliver(audiences(meta), EMAILS, {"replace": [customers(range(1, 6))]}, journal)

    assert re.fullmatch(
        r"destination 'meta_vip' \(meta_ads\): replacing the members of Meta custom audience 'VIP Europe' failed "
        r"\(batch 1 of session \d{16}, HTTP 400\): Failed to update the custom audience \(code 2650\); the "
        r"audience keeps its members and the next sync sends them all again",
        str(failed.value),
    )
    assert journal.acknowledged_keys == {}
    assert meta.member_hashes(audience.id) == {sha("old@example.com")}


# --------------------------------------------------------------------------------------------------
# Identifiers: Meta's normalization per key, raw values never sent, invalid entries
# --------------------------------------------------------------------------------------------------


EVERY_KEY = ActivationSpec(
    "vip_to_meta",
    "customer_id",
    {
        "email": "email",
        "phone": "phone",
        "fn": "first",
        "last_name": "last",
        "first_initial": "first",
        "gender": "gender",
        "birth_year": "year",
        "birth_month": "month",
        "birth_day": "day",
        "city": "city",
        "state": "state",
        "zip": "zip",
        "country": "country",
        "external_id": "crm_id",
        "madid": "device",
    },
    default_country="US",
)


def every_key_batch() -> pa.RecordBatch:
    return pa.record_batch(
        {
            "customer_id": [1, 2],
            "email": ["John_Smith@gmail.com ", "jane@example.co.uk"],
            "phone": ["(650)555-1212", "+44 20 7946 0958"],
            "first": ["Mary", "Anne-Marie"],
            "last": ["Valéry", "O'Brien"],
            "gender": ["Female", "m"],
            "year": [1997, 1985],
            "month": [2, 11],
            "day": [16, 3],
            "city": ["New York", "St. Albans"],
            "state": ["California", "Herts"],
            "zip": ["94035-1234", "M1 1AE"],
            "country": ["US", "gb"],
            "crm_id": [" CRM-42 ", "CRM-43"],
            "device": ["AECE52E7-03EE-455A-B3C4-E57283966239", "6d92078a-8246-4ba4-ae5b-76104861e7dc"],
        }
    )


def test_every_key_is_normalized_and_hashed_as_meta_documents(meta):
    deliver(audiences(meta), EVERY_KEY, {"add": [every_key_batch()]}, InMemoryJournal())

    audience_id = meta.audience_named("VIP Europe").id
    assert meta.members(audience_id) == [
        {
            "EMAIL": JOHN_SMITH,
            "PHONE": PHONE_US,
            "FN": MARY,
            "LN": VALERY,
            "FI": sha("m"),
            "GEN": sha("f"),
            "DOBY": sha("1997"),
            "DOBM": sha("02"),
            "DOBD": sha("16"),
            "CT": sha("newyork"),
            "ST": sha("ca"),
            "ZIP": sha("94035"),
            "COUNTRY": US,
            "EXTERN_ID": sha("CRM-42"),
            "MADID": "aece52e7-03ee-455a-b3c4-e57283966239",
        },
        {
            "EMAIL": sha("jane@example.co.uk"),
            "PHONE": sha("442079460958"),
            "FN": sha("annemarie"),
            "LN": sha("obrien"),
            "FI": sha("a"),
            "GEN": sha("m"),
            "DOBY": sha("1985"),
            "DOBM": sha("11"),
            "DOBD": sha("03"),
            "CT": sha("stalbans"),
            "ST": sha("herts"),
            "ZIP": sha("m11ae"),
            "COUNTRY": sha("gb"),
            "EXTERN_ID": sha("CRM-43"),
            "MADID": "6d92078a-8246-4ba4-ae5b-76104861e7dc",
        },
    ]
    assert meta.requests[-1].params["payload"]["schema"] == [
        "EXTERN_ID", "EMAIL", "PHONE", "GEN", "DOBY", "DOBM", "DOBD", "LN", "FN", "FI", "CT", "ST", "ZIP", "MADID",
        "COUNTRY",
    ]  # fmt: skip


def test_raw_identifiers_never_reach_meta(meta):
    deliver(audiences(meta), EVERY_KEY, {"add": [every_key_batch()]}, InMemoryJournal())

    payload = meta.requests[-1].params["payload"]
    madid = payload["schema"].index("MADID")
    for row in payload["data"]:
        assert all(re.fullmatch(r"[0-9a-f]{64}", v) for i, v in enumerate(row) if i != madid)
    sent = json.dumps([r.params for r in meta.requests], ensure_ascii=False)
    # Only raw values that no hex digest can contain (digits alone could appear in one).
    for raw in ("John", "john", "(650)", "555-1212", "+44", "Mary", "mary", "Val", "Anne", "Brien", "York", "Calif",
                "M1 1AE", "m11ae", "CRM-4", "jane", "Female"):  # fmt: skip
        assert raw not in sent


def test_a_customer_without_phone_is_added_by_email_and_one_without_any_identifier_is_rejected(meta):
    batch = customers(
        [1, 2, 3, 4],
        email=[" Customer1@Example.com", None, None, "customer4@example.com"],
        phone=[None, phone_of(2), None, "12"],
    )
    journal = InMemoryJournal()
    result = deliver(audiences(meta), MEMBERS, {"add": [batch]}, journal)

    audience_id = meta.audience_named("VIP Europe").id
    assert meta.members(audience_id) == [{"EMAIL": member(1)["EMAIL"]}, {"PHONE": member(2)["PHONE"]}]
    assert meta.requests[-1].params["payload"]["data"] == [[member(1)["EMAIL"], ""], ["", member(2)["PHONE"]]]
    assert journal.rejections == [
        ("3", "add", "no identifier has a value (columns email, phone)"),
        ("4", "add", "identifier phone (column phone) is not a valid phone number"),
    ]
    assert result.top_reasons() == [("no identifier", 1), ("invalid identifier phone", 1)]


def test_an_invalid_entry_meta_counts_is_rejected_with_its_key_and_never_its_value(meta, caplog):
    caplog.set_level(logging.DEBUG)
    spec = ActivationSpec("vip_to_meta", "customer_id", {"email": "email", "madid": "device"})
    devices = [f"6d92078a-8246-4ba4-ae5b-76104861e7d{i}" for i in range(5)]
    devices[2] = "Not-A-Device-Id"
    journal = InMemoryJournal()
    result = deliver(audiences(meta), spec, {"add": [customers(range(5), device=devices)]}, journal)

    audience_id = meta.audience_named("VIP Europe").id
    assert meta.member_hashes(audience_id, "EMAIL") == emails([0, 1, 3, 4])
    assert journal.rejections == [("2", "add", "Meta counted this row as an invalid entry (MADID)")]
    assert result.as_metadata()["top_rejection_reasons"] == "invalid entry (MADID) (1)"
    shown = [caplog.text, repr(result), str(result.as_metadata()), repr(journal.rejections)]
    assert all("not-a-device-id" not in text.lower() for text in shown)


def test_invalid_entries_meta_did_not_sample_are_found_by_halves():
    with MetaAdsFake(TOKEN, invalid_sample_limit=1) as meta:
        spec = ActivationSpec("vip_to_meta", "customer_id", {"email": "email", "madid": "device"})
        devices = [f"6d92078a-8246-4ba4-ae5b-76104861e7d{i}" for i in range(8)]
        for bad in (1, 4, 6):
            devices[bad] = f"bad-device-{bad}"
        journal = InMemoryJournal()
        result = deliver(audiences(meta), spec, {"add": [customers(range(8), device=devices)]}, journal)

        audience_id = meta.audience_named("VIP Europe").id
        assert meta.member_hashes(audience_id, "EMAIL") == emails([0, 2, 3, 5, 7])
        assert sorted(key for key, _, _ in journal.rejections) == ["1", "4", "6"]
        assert sorted(journal.acknowledged_keys["add"]) == ["0", "2", "3", "5", "7"]
        assert result.rejected == 3 and result.accepted == 5


# --------------------------------------------------------------------------------------------------
# Conversions API events
# --------------------------------------------------------------------------------------------------


ORDERS = ActivationSpec(
    "orders_to_meta",
    "order_id",
    {"email": "email", "external_id": "customer_id", "date_of_birth": "born"},
    {"ordered_at": "event_time", "amount": "value", "currency": "currency"},
)


def orders(ids: list[int], hours_ago: float = 1.0, **overrides: list[Any]) -> pa.RecordBatch:
    at = dt.datetime.now(dt.timezone.utc).replace(microsecond=0) - dt.timedelta(hours=hours_ago)
    columns: dict[str, Any] = {
        "order_id": ids,
        "email": [f"Customer{i}@Example.com" for i in ids],
        "customer_id": [f"C{i}" for i in ids],
        "born": [dt.date(1997, 2, 16)] * len(ids),
        "ordered_at": pa.array([at - dt.timedelta(minutes=i) for i in ids], pa.timestamp("us", tz="UTC")),
        "amount": [decimal.Decimal(f"{i}.90") for i in ids],
        "currency": ["EUR"] * len(ids),
    }
    columns.update(overrides)
    return pa.record_batch(columns)


def test_events_carry_their_key_as_event_id_so_meta_counts_a_resent_event_once(meta):
    batch = orders([101, 102, 103])
    journal = InMemoryJournal()
    deliver(events(meta), ORDERS, {"track": [batch]}, journal)
    deliver(events(meta), ORDERS, {"track": [batch]}, InMemoryJournal())  # a retry of the same sync

    at = batch.column("ordered_at").to_pylist()
    assert len(meta.capi_events) == 6
    assert [
        (e.event_id, e.event_name, e.event_time, e.action_source, e.user_data, e.custom_data)
        for e in meta.counted_events(PIXEL)
    ] == [
        (
            str(i),
            "Purchase",
            int(at[n].timestamp()),
            "physical_store",
            {"em": sha(f"customer{i}@example.com"), "external_id": sha(f"C{i}"), "db": BORN_1997_02_16},
            {"value": float(f"{i}.90"), "currency": "EUR"},
        )
        for n, i in enumerate([101, 102, 103])
    ]
    assert graph_paths(meta) == [("POST", f"/v25.0/{PIXEL}/events")] * 2
    assert sorted(journal.acknowledged_keys["track"]) == ["101", "102", "103"]


def test_one_invalid_event_is_rejected_with_metas_message_while_the_others_land(meta):
    spec = ActivationSpec(
        "orders_to_meta", "order_id", {"email": "email"}, {**ORDERS.mapping, "source": "action_source"}
    )
    batch = orders([101, 102, 103, 104], source=["physical_store", "in_store", "website_x", "physical_store"])
    journal = InMemoryJournal()
    result = deliver(events(meta), spec, {"track": [batch]}, journal)

    assert [e.event_id for e in meta.counted_events()] == ["101", "104"]
    assert journal.rejections == [
        (
            "102",
            "track",
            (
                "Server-side API parameter error: The parameter $['data'][1]['action_source'] must be one of "
                f"{ACTION_SOURCES}."
            ),
        ),
        (
            "103",
            "track",
            (
                "Server-side API parameter error: The parameter $['data'][1]['action_source'] must be one of "
                f"{ACTION_SOURCES}."
            ),
        ),
    ]
    assert result.top_reasons() == [("Server-side API parameter error (action_source)", 2)]
    assert len(meta.requests) == 3  # each refusal named its event: no halving needed


def test_a_request_refused_whole_without_naming_the_event_is_split_in_halves(meta):
    meta.fail_next(f"/{PIXEL}/events", 100, "Invalid parameter", subcode=2804019)
    result = deliver(events(meta), ORDERS, {"track": [orders([1, 2, 3, 4])]}, InMemoryJournal())

    assert sorted(e.event_id for e in meta.counted_events()) == ["1", "2", "3", "4"]
    assert [len(r.params.get("data", [])) for r in meta.requests] == [4, 2, 2]
    assert result.accepted == 4


def test_a_refusal_that_names_no_event_rejects_the_requests_events_without_splitting(meta):
    meta.fail_next(f"/{PIXEL}/events", 100, "(#100) Param test_event_code must be a string")
    journal = InMemoryJournal()
    result = deliver(events(meta), ORDERS, {"track": [orders([1, 2, 3, 4])]}, journal)

    assert meta.capi_events == [] and len(meta.requests) == 1
    reason = "(#100) Param test_event_code must be a string (code 100)"
    assert journal.rejections == [(str(i), "track", reason) for i in (1, 2, 3, 4)]
    assert result.top_reasons() == [("code 100", 4)]


def test_events_older_than_7_days_or_without_a_time_are_rejected_before_sending(meta):
    stale = orders([1, 2], hours_ago=8 * 24)
    blank = orders([3], ordered_at=pa.array([None], pa.timestamp("us", tz="UTC")))
    journal = InMemoryJournal()
    deliver(events(meta), ORDERS, {"track": [stale, blank, orders([4])]}, journal)

    assert [e.event_id for e in meta.counted_events()] == ["4"]
    assert [len(r.params["data"]) for r in meta.requests] == [1]
    too_old = "event_time is more than 7 days in the past; Meta refuses such events (and their whole request)"
    assert journal.rejections == [
        ("1", "track", too_old),
        ("2", "track", too_old),
        ("3", "track", "event_time is empty"),
    ]


def test_events_go_in_requests_of_at_most_1000(meta):
    result = deliver(events(meta), ORDERS, {"track": [orders(list(range(1, 2501)))]}, InMemoryJournal())

    assert sorted(len(r.params["data"]) for r in meta.requests) == [500, 1000, 1000]
    assert len(meta.counted_events()) == 2500 and result.accepted == 2500


def test_website_events_send_their_url_and_the_browser_identifiers_in_clear(meta):
    spec = ActivationSpec(
        "orders_to_meta",
        "order_id",
        {"email": "email", "client_user_agent": "agent", "client_ip_address": "ip", "fbp": "fbp"},
        {"ordered_at": "event_time"},
    )
    batch = orders(
        [7],
        agent=["Mozilla/5.0 (X11; Linux x86_64)"],
        ip=[" 2001:db8::1 "],
        fbp=["fb.1.1596403881668.1116446470"],
    )
    platform = events(meta, action_source="website", event_source_url="https://shop.example.com/checkout")
    assert platform.validate_activation(spec.match, spec.mapping) == []
    deliver(platform, spec, {"track": [batch]}, InMemoryJournal())

    (event,) = meta.counted_events()
    assert event.action_source == "website"
    assert event.user_data == {
        "em": sha("customer7@example.com"),
        "client_user_agent": "Mozilla/5.0 (X11; Linux x86_64)",
        "client_ip_address": "2001:db8::1",
        "fbp": "fb.1.1596403881668.1116446470",
    }
    assert meta.requests[0].params["data"][0]["event_source_url"] == "https://shop.example.com/checkout"


# --------------------------------------------------------------------------------------------------
# Rate limits and budgets
# --------------------------------------------------------------------------------------------------


def test_a_storm_of_throttling_codes_is_ridden_out(meta):
    audience = meta.create_audience("VIP Europe")
    for code, subcode in ((17, 2446079), (613, 1487742), (4, None), (32, None), (80003, 2446079)):
        meta.fail_next(
            f"/{audience.id}/users", code, "Calls to this api have exceeded the rate limit.", subcode=subcode
        )
    platform = audiences(meta, audience={"id": audience.id})
    result = deliver(platform, MEMBERS, {"add": [customers(range(1, 4))]}, InMemoryJournal(), retry=FAST)

    assert meta.members(audience.id) == [member(i) for i in range(1, 4)]
    assert [r.status for r in meta.requests] == [400, 400, 400, 400, 400, 200]
    assert (result.retries, result.requests, result.accepted) == (5, 6, 3)
    assert result.rate_limit_wait_seconds > 0


def test_a_spent_business_use_case_budget_ends_the_sync_early_as_a_partial_success():
    with MetaAdsFake(TOKEN, audience_call_limit=1) as meta:
        audience = meta.create_audience("VIP Europe")
        platform = audiences(meta, audience={"id": audience.id}, max_concurrency=1)
        journal = InMemoryJournal()
        result = deliver(platform, EMAILS, {"add": [customers(range(1, 10_002))]}, journal)

        assert result.quota is not None
        assert result.quota.message == (
            "destination 'meta_vip' (meta_ads): the platform asked to wait 3600s (HTTP 400: (#80003) There have "
            "been too many calls to this ad-account. Wait a bit and try again. For more info, please refer to "
            "https://developers.facebook.com/docs/graph-api/overview/rate-limiting. (code 80003, subcode 2446079)), "
            "longer than a sync waits (900s)"
        )
        assert len(journal.acknowledged_keys["add"]) == 10_000
        assert len(meta.members(audience.id)) == 10_000
        assert result.counts("add").not_sent == 1


# --------------------------------------------------------------------------------------------------
# Credentials and secrets
# --------------------------------------------------------------------------------------------------


def test_a_wrong_token_fails_at_once_and_the_token_never_shows():
    with MetaAdsFake("EAAGm0-the-right-token") as meta:
        with pytest.raises(PlatformAuthError) as refused:
            deliver(
                audiences(meta), MEMBERS, {"add": [customers(range(1, 4))]}, InMemoryJournal(), retry=FAST
            )
        assert len(meta.requests) == 1
    assert str(refused.value) == (
        "destination 'meta_vip' (meta_ads): the platform refused the credentials (HTTP 400): Invalid OAuth access "
        "token - Cannot parse access token (code 190)"
    )
    assert TOKEN not in str(refused.value) and TOKEN not in repr(refused.value)


def test_a_missing_permission_stops_the_sync_at_once(meta):
    audience = meta.create_audience("VIP Europe")
    meta.fail_next(
        "*", 200, "(#200) The user hasn't authorized the application to perform this action", times=5
    )
    with pytest.raises(PlatformAuthError) as refused:
        deliver(
            audiences(meta, audience={"id": audience.id}),
            MEMBERS,
            {"add": [customers([1])]},
            InMemoryJournal(),
        )
    assert str(refused.value).endswith(
        "(HTTP 400): (#200) The user hasn't authorized the application to perform this action (code 200)"
    )
    assert len(meta.requests) == 1


def test_the_token_is_only_ever_in_the_authorization_header(meta, caplog):
    caplog.set_level(logging.DEBUG)
    meta.fail_next("*", 2, f"Service temporarily unavailable for {TOKEN}", is_transient=True)
    platform = audiences(meta)
    result = deliver(platform, MEMBERS, {"add": [customers(range(1, 4))]}, InMemoryJournal(), retry=FAST)
    shown = preview(platform, MEMBERS, {"add": [customers([1])]})
    tracked = deliver(events(meta), ORDERS, {"track": [orders([1])]}, InMemoryJournal())

    assert result.retries == 1 and result.accepted == 3 and tracked.accepted == 1
    assert {r.token_via for r in meta.requests} == {"header"}
    assert all(TOKEN not in r.path + json.dumps(r.params) for r in meta.requests)
    texts = [
        caplog.text,
        repr(result),
        str(result.as_metadata()),
        repr(shown),
        repr(platform.settings),
        repr(tracked),
    ]
    assert all(TOKEN not in text for text in texts)
    assert "Service temporarily unavailable for *** (code 2)" in caplog.text


# --------------------------------------------------------------------------------------------------
# preview, validate --connect, settings
# --------------------------------------------------------------------------------------------------


def test_preview_shows_the_first_requests_with_identifiers_masked_and_sends_nothing(meta):
    shown = preview(audiences(meta), MEMBERS, {"add": [customers([1, 2])], "replace": [customers([3])]})
    tracked = preview(events(meta), ORDERS, {"track": [orders([9])]})

    assert meta.requests == []
    add, replace = shown
    assert add.url == f"{meta.url}/v25.0/<id of audience 'VIP Europe'>/users"
    assert add.body == {
        "payload": {
            "schema": ["EMAIL", "PHONE"],
            "data": [[member(i)["EMAIL"][:8] + "…", member(i)["PHONE"][:8] + "…"] for i in (1, 2)],
        }
    }
    assert replace.url.endswith("/usersreplace")
    assert replace.body["session"]["last_batch_flag"] == "<true on the last batch>"
    (event,) = tracked
    assert event.url == f"{meta.url}/v25.0/{PIXEL}/events"
    assert event.body["data"][0]["user_data"] == {
        "em": sha("customer9@example.com")[:8] + "…",
        "external_id": sha("C9")[:8] + "…",
        "db": BORN_1997_02_16[:8] + "…",
    }


def test_validate_connect_checks_the_token_the_account_the_audience_and_the_pixel(meta):
    flagged_free = meta.create_audience("Existing")
    assert validate_connection(audiences(meta), MEMBERS) == []
    assert validate_connection(audiences(meta, audience={"id": flagged_free.id}), MEMBERS) == []
    assert validate_connection(events(meta), ORDERS) == []
    assert list(meta.audiences) == [flagged_free.id]  # an audience given by name is not created by validate

    assert validate_connection(audiences(meta, audience={"id": "999"}), MEMBERS) == [
        (
            "destination 'meta_vip' (meta_ads): reading custom audience 999 failed with HTTP 400: Unsupported get "
            "request. Object with ID '999' does not exist, cannot be loaded due to missing permissions, or does not "
            "support this operation. Please read the Graph API documentation at https://developers.facebook.com/docs/"
            "graph-api (code 100, subcode 33)"
        )
    ]
    assert validate_connection(audiences(meta, access_token="EAAG-wrong"), MEMBERS) == [
        (
            "destination 'meta_vip' (meta_ads): the platform refused the credentials (HTTP 400): Invalid OAuth access "
            "token - Cannot parse access token (code 190)"
        )
    ]
    assert validate_connection(events(meta, pixel_id="555"), ORDERS) == [
        (
            "destination 'meta_orders' (meta_ads): reading pixel 555 failed with HTTP 400: Unsupported get request. "
            "Object with ID '555' does not exist, cannot be loaded due to missing permissions, or does not support this "
            "operation. Please read the Graph API documentation at https://developers.facebook.com/docs/graph-api "
            "(code 100, subcode 33)"
        )
    ]


def test_activation_problems_name_the_key_and_what_is_allowed(meta):
    spec = ActivationSpec(
        "vip_to_meta", "id", {"email": "email", "em": "mail2", "twitter": "handle"}, {"ltv": "value"}
    )
    assert audiences(meta).validate_activation(spec.match, spec.mapping) == [
        "identifiers.em: email already sends EMAIL; keep one of them",
        (
            "identifiers.twitter: found 'twitter'; allowed for audiences: email, phone, first_name, last_name, "
            "first_initial, gender, birth_year, birth_month, birth_day, city, state, zip, country, external_id, madid"
        ),
        "mapping: found ltv; allowed: nothing (custom audiences take identifiers only)",
    ]
    platform = events(meta, event_name=None, action_source="website")
    assert platform.validate_activation({"email": "email", "birth_year": "year"}, {}) == [
        (
            "identifiers.birth_year: found 'birth_year'; allowed for events: email, phone, first_name, last_name, "
            "gender, date_of_birth, city, state, zip, country, external_id, madid, client_ip_address, "
            "client_user_agent, fbc, fbp"
        ),
        "mapping: no column is mapped to event_time; allowed: the fact model's time column",
        "event_name: found nothing; allowed: the event_name setting or a column mapped to it",
        "event_source_url: website events need it (the setting or a mapped column)",
        "identifiers.client_user_agent: website events need it",
    ]


def test_settings_errors_name_the_key_and_what_is_allowed():
    with pytest.raises(PlatformConfigError) as bad:
        build_platform(
            "meta_ads",
            {
                "service": "audiences",
                "access_token": TOKEN,
                "ad_account_id": "1234-5",
                "api_version": "25",
                "audience": {"name": "VIP", "id": "42"},
                "customer_file_source": "CRM",
            },
            destination="meta_vip",
        )
    assert str(bad.value).splitlines() == [
        "destinations.meta_vip.api_version: found '25'; allowed: a Graph API version such as v25.0",
        (
            "destinations.meta_vip.ad_account_id: found '1234-5'; allowed: act_ followed by the ad account's digits "
            "(act_1234)"
        ),
        "destinations.meta_vip.audience: found both name and id; allowed: {name: ...} or {id: ...}",
        (
            "destinations.meta_vip.customer_file_source: Input should be 'USER_PROVIDED_ONLY', "
            "'PARTNER_PROVIDED_ONLY' or 'BOTH_USER_AND_PARTNER_PROVIDED' (found 'CRM')"
        ),
    ]
    with pytest.raises(PlatformConfigError) as wrong_service:
        build_platform(
            "meta_ads",
            {"service": "events", "access_token": TOKEN, "ad_account_id": "act_1"},
            destination="orders",
        )
    assert str(wrong_service.value) == (
        "destinations.orders: pixel_id is required for service events; ad_account_id is not used by service events"
    )
    platform = build_platform(
        "meta_ads",
        {"service": "audiences", "access_token": TOKEN, "ad_account_id": 1234, "audience": {"id": 42}},
    )
    assert platform.base_url == "https://graph.facebook.com"
    assert platform.settings.ad_account_id == "act_1234" and platform.settings.audience.id == "42"
    assert TOKEN not in repr(platform.settings)


def test_the_fake_reads_a_pixel_and_counts_a_malformed_madid_as_invalid(meta):
    pixel = requests.get(
        f"{meta.graph_url()}/{PIXEL}", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5
    )
    audience = meta.create_audience("Devices")
    answer = requests.post(
        f"{meta.graph_url()}/{audience.id}/users",
        json={
            "payload": {
                "schema": "MOBILE_ADVERTISER_ID",
                "data": ["not-an-idfa", "AECE52E7-03EE-455A-B3C4-E57283966239"],
            }
        },
        params={"access_token": TOKEN},
        timeout=5,
    )

    assert pixel.json() == {"id": PIXEL, "name": f"Pixel {PIXEL}"}
    assert {
        k: answer.json()[k] for k in ("num_received", "num_invalid_entries", "invalid_entry_samples")
    } == {
        "num_received": 2,
        "num_invalid_entries": 1,
        "invalid_entry_samples": {"not-an-idfa": "MADID"},
    }
    assert meta.members(audience.id) == [{"MADID": "AECE52E7-03EE-455A-B3C4-E57283966239"}]
    assert [r.token_via for r in meta.requests] == ["header", "query"]
