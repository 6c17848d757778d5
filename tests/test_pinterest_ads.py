"""The Pinterest Ads adapter through a fake Pinterest API v5 built from Pinterest's documentation
(tests/fakes/pinterest_ads.py): the records each customer list holds, the conversion events
Pinterest counts, what Pinterest answered, and that neither a raw identifier nor the token is ever
sent anywhere but where it belongs. Expected digests are computed here with hashlib."""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import dagster as dg
import duckdb
import pyarrow as pa
import pytest
from fakes.pinterest_ads import PinterestAdsFake
from platform_scenarios import (
    SEED,
    create_customers,
    open_project,
    project_yaml,
    run,
    run_sync_job,
    sync_steps,
)

from dinmo_dagster.definitions import build_definitions
from dinmo_dagster.names import activation_key
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
from dinmo_dagster.platforms.pinterest_ads import PinterestAds

TOKEN = "pina_AMAXXXXXWAAAAGAAFAB3c9e1d2b4a6c8e0f1a3b5c7d9e"
ACCOUNT = "549755885175"
FAST = RetryPolicy(max_attempts=3, max_rate_limited_attempts=20, initial_wait_seconds=0.01, max_wait_seconds=0.05)
EMAILS = ActivationSpec("vip_to_pinterest", "customer_id", {"email": "email"})
NOW = int(dt.datetime.now(dt.timezone.utc).timestamp())
ORDERS = ActivationSpec(
    "orders_to_pinterest",
    "order_id",
    {"email": "email", "phone": "phone"},
    {"ordered_at": "event_time", "amount": "value", "currency": "currency"},
    default_country="FR",
)


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture
def pinterest() -> Iterator[PinterestAdsFake]:
    with PinterestAdsFake(TOKEN, ad_account_id=ACCOUNT) as fake:
        yield fake


def audiences(fake: PinterestAdsFake, **settings: Any) -> PinterestAds:
    raw = {"service": "audiences", "access_token": TOKEN, "ad_account_id": ACCOUNT,
           "audience": {"name": "VIP Europe"}, "base_url": fake.url, **settings}
    platform = build_platform("pinterest_ads", raw, destination="pin_vip")
    assert isinstance(platform, PinterestAds)
    return platform


def events(fake: PinterestAdsFake, **settings: Any) -> PinterestAds:
    raw = {"service": "events", "access_token": TOKEN, "ad_account_id": ACCOUNT, "event_name": "checkout",
           "action_source": "web", "base_url": fake.url, **settings}
    platform = build_platform("pinterest_ads", raw, destination="pin_orders")
    assert isinstance(platform, PinterestAds)
    return platform


def customers(ids: Any, **overrides: list[Any]) -> pa.RecordBatch:
    ids = list(ids)
    columns: dict[str, list[Any]] = {"customer_id": ids, "email": [f" Customer{i}@Example.com " for i in ids]}
    columns.update(overrides)
    return pa.record_batch(columns)


def emails(ids: Any) -> set[str]:
    return {sha(f"customer{i}@example.com") for i in ids}


def orders(ids: Any, **overrides: list[Any]) -> pa.RecordBatch:
    ids = list(ids)
    columns: dict[str, list[Any]] = {
        "order_id": [f"O{i}" for i in ids],
        "email": [f"Customer{i}@Example.com" for i in ids],
        "phone": ["06 12 34 56 78" for _ in ids],
        "ordered_at": [dt.datetime.fromtimestamp(NOW - 3600, dt.timezone.utc).replace(tzinfo=None) for _ in ids],
        "amount": ["19.90" for _ in ids],
        "currency": ["EUR" for _ in ids],
    }
    columns.update(overrides)
    return pa.record_batch(columns)


def no_raw_identifier(fake: PinterestAdsFake) -> bool:
    return all(b"example.com" not in r.raw.lower() and b"06 12" not in r.raw for r in fake.requests)


# --------------------------------------------------------------------------------------------------
# Customer lists
# --------------------------------------------------------------------------------------------------


def test_a_first_sync_creates_the_customer_list_by_name_with_hashed_emails(pinterest):
    journal = InMemoryJournal()
    result = deliver(audiences(pinterest), EMAILS, {"add": [customers(range(1, 6))]}, journal)

    created = pinterest.list_named("VIP Europe")
    assert created is not None and created.list_type == "EMAIL"
    assert created.records == emails(range(1, 6))
    assert [(r.method, r.path) for r in pinterest.requests] == [
        ("GET", f"/v5/ad_accounts/{ACCOUNT}/customer_lists"),
        ("POST", f"/v5/ad_accounts/{ACCOUNT}/customer_lists"),
    ]
    assert pinterest.requests[1].body == {
        "name": "VIP Europe", "list_type": "EMAIL", "records": ",".join(sha(f"customer{i}@example.com")
                                                                    for i in range(1, 6))}
    assert sorted(journal.acknowledged_keys["add"]) == ["1", "2", "3", "4", "5"]
    assert (result.accepted, result.rejected) == (5, 0)
    assert no_raw_identifier(pinterest)


def test_a_delta_removes_those_that_left_and_moves_a_changed_email(pinterest):
    existing = pinterest.create_list("VIP Europe", records=emails(range(1, 6)))
    journal = InMemoryJournal()
    result = deliver(
        audiences(pinterest), EMAILS,
        {"remove": [customers([4, 5]), customers([3])],
         "add": [customers([3], email=["New.Three@example.com"]), customers([6])]},
        journal,
    )

    assert existing.records == emails([1, 2, 6]) | {sha("new.three@example.com")}
    patches = [r.body for r in pinterest.requests if r.method == "PATCH"]
    assert [p["operation_type"] for p in patches] == ["REMOVE", "ADD"]
    assert sorted(journal.acknowledged_keys["remove"]) == ["3", "4", "5"]
    assert sorted(journal.acknowledged_keys["add"]) == ["3", "6"]
    assert result.accepted == 5 and no_raw_identifier(pinterest)
    assert [r.method for r in pinterest.requests].count("POST") == 0  # found by name, never created twice


def test_a_list_given_by_id_is_used_and_batches_hold_at_most_10000_records(pinterest):
    existing = pinterest.create_list("Other name", records={sha("old@example.com")})
    result = deliver(audiences(pinterest, audience={"id": existing.id}), EMAILS,
                     {"add": [customers(range(1, 20_002))]}, InMemoryJournal())

    assert existing.records == emails(range(1, 20_002)) | {sha("old@example.com")}
    sizes = [len(r.body["records"].split(",")) for r in pinterest.requests]
    assert sorted(sizes) == [1, 10_000, 10_000]  # batches go concurrently
    assert {r.path for r in pinterest.requests} == {f"/v5/ad_accounts/{ACCOUNT}/customer_lists/{existing.id}"}
    assert result.accepted == 20_001


def test_the_fake_refuses_more_than_its_batch_limit_and_the_batch_is_rejected(pinterest):
    pinterest.max_records = 2
    existing = pinterest.create_list("VIP Europe")
    journal = InMemoryJournal()
    result = deliver(audiences(pinterest), EMAILS, {"add": [customers(range(1, 4))]}, journal)

    assert existing.records == set()
    assert result.rejected == 3
    assert journal.rejections[0] == ("1", "add", "Too many records: 3; at most 2 per request. (code 1)")


def test_a_429_storm_is_waited_out_and_nothing_is_lost(pinterest):
    existing = pinterest.create_list("VIP Europe")
    pinterest.fail_next("*", 429, 8, "You have exceeded your rate limit. Try again later.", times=6,
                        headers={"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "0.01"})
    result = deliver(audiences(pinterest), EMAILS, {"add": [customers(range(1, 4))]}, InMemoryJournal(),
                     retry=FAST)

    assert existing.records == emails(range(1, 4))
    assert result.accepted == 3
    assert len(pinterest.requests) == 8  # 6 refused, then the list read and the PATCH


def test_a_wrong_token_fails_at_once_and_the_token_never_shows(caplog):
    caplog.set_level(logging.DEBUG)
    with PinterestAdsFake("pina_the_right_one", ad_account_id=ACCOUNT) as fake:
        with pytest.raises(PlatformAuthError) as refused:
            deliver(audiences(fake), EMAILS, {"add": [customers([1])]}, InMemoryJournal(), retry=FAST)
        assert len(fake.requests) == 1 and not fake.requests[0].authorized
        assert all(TOKEN.encode() not in r.raw and TOKEN not in r.path for r in fake.requests)
    assert str(refused.value) == (
        "destination 'pin_vip' (pinterest_ads): the platform refused the credentials (HTTP 401): "
        "Authentication failed. (code 2)"
    )
    assert TOKEN not in caplog.text and TOKEN not in repr(refused.value)


def test_one_list_takes_one_kind_of_identifier():
    platform = build_platform("pinterest_ads", {"service": "audiences", "access_token": TOKEN,
                                                "ad_account_id": ACCOUNT, "audience": {"name": "x"}})
    assert platform.validate_activation({"email": "email", "maid": "maid"}, {}) == [
        ("identifiers: found email, maid; allowed: one of email, maid, idfa "
         "(a Pinterest customer list holds one kind of identifier)")
    ]
    assert platform.validate_activation({"phone": "phone"}, {}) == [
        "identifiers.phone: found 'phone'; allowed for audiences: email, maid, idfa"
    ]
    with pytest.raises(PlatformConfigError) as bad:
        build_platform("pinterest_ads", {"service": "audiences", "access_token": TOKEN, "ad_account_id": "act_1"},
                       destination="pin")
    assert str(bad.value) == "destinations.pin.ad_account_id: found 'act_1'; allowed: the ad account's numeric id"


def test_a_destination_authenticates_one_way_static_token_or_oauth():
    base = {"service": "audiences", "ad_account_id": ACCOUNT}
    cases = [
        {},
        {"access_token": TOKEN, "client_id": "1484362"},
        {"client_id": "1484362", "client_secret": APP_SECRET},
    ]
    messages = []
    for extra in cases:
        with pytest.raises(PlatformConfigError) as bad:
            build_platform("pinterest_ads", {**base, **extra}, destination="pin")
        messages.append(str(bad.value))
    allowed = "allowed: access_token, or client_id, client_secret and refresh_token"
    assert messages == [
        f"destinations.pin.access_token: found nothing (and no client_id, client_secret, refresh_token); {allowed}",
        f"destinations.pin.access_token: found it with client_id; {allowed}",
        f"destinations.pin.access_token: found nothing (and no refresh_token); {allowed}",
    ]
    assert all(TOKEN not in m and APP_SECRET not in m for m in messages)


def test_mobile_ad_ids_are_lower_cased_then_hashed(pinterest):
    spec = ActivationSpec("vip_to_pinterest", "customer_id", {"maid": "maid"})
    batch = pa.record_batch({"customer_id": [1], "maid": [" CDDA802E-FB9C-47AD-9866-0794D394C912 "]})
    deliver(audiences(pinterest), spec, {"add": [batch]}, InMemoryJournal())
    created = pinterest.list_named("VIP Europe")
    assert created.list_type == "MAID"
    assert created.records == {sha("cdda802e-fb9c-47ad-9866-0794d394c912")}


def oauth_audiences(fake: PinterestAdsFake, **settings: Any) -> PinterestAds:
    raw = {"service": "audiences", "client_id": "1484362", "client_secret": APP_SECRET, "refresh_token": REFRESH,
           "ad_account_id": ACCOUNT, "audience": {"name": "VIP Europe"}, "base_url": fake.url, **settings}
    platform = build_platform("pinterest_ads", raw, destination="pin_vip")
    assert isinstance(platform, PinterestAds)
    return platform


APP_SECRET = "a1b2c3d4e5f60718293a4b5c6d7e8f90"
REFRESH = "pinr_refresh_0f1e2d3c4b5a69788796a5b4c3d2e1f0"


def test_an_access_token_that_expires_mid_sync_is_refreshed_and_the_sync_goes_on(caplog):
    caplog.set_level(logging.DEBUG)
    with PinterestAdsFake(None, ad_account_id=ACCOUNT, client=("1484362", APP_SECRET, REFRESH)) as fake:
        made = fake.create_list("VIP Europe")
        platform = oauth_audiences(fake, max_concurrency=1)
        journal = InMemoryJournal()
        # Pinterest revokes the token after the first request: the next one gets a 401, then a new token.
        deliver(platform, EMAILS, {"add": [customers(range(1, 3))]}, journal, retry=FAST)
        fake.expire_tokens()
        result = deliver(platform, EMAILS, {"add": [customers(range(3, 6))]}, journal, retry=FAST)

        assert made.records == emails(range(1, 6))
        assert result.accepted == 3 and fake.refused_auth == 1
        assert len(fake.token_requests) == 2
        form = dict(p.split("=", 1) for p in fake.token_requests[0].raw.decode().split("&"))
        assert (form["grant_type"], form["refresh_token"]) == ("refresh_token", REFRESH)
        sent = [r.raw.decode() + r.path for r in fake.requests]
        assert all(APP_SECRET not in t and REFRESH not in t for t in sent)
    assert APP_SECRET not in caplog.text and REFRESH not in caplog.text and "pina_" not in caplog.text


def test_a_short_lived_token_is_renewed_before_it_expires():
    with PinterestAdsFake(None, ad_account_id=ACCOUNT, client=("1484362", APP_SECRET, REFRESH),
                          token_lifetime=1, latency=0.3) as fake:
        made = fake.create_list("VIP Europe")
        platform = oauth_audiences(fake, max_concurrency=1)
        for i in range(1, 6):
            deliver(platform, EMAILS, {"add": [customers([i])]}, InMemoryJournal(), retry=FAST)
        assert made.records == emails(range(1, 6))
        assert fake.refused_auth == 0 and len(fake.token_requests) >= 2


def test_a_refused_refresh_token_stops_the_sync_naming_the_endpoint_not_the_secret():
    with PinterestAdsFake(None, ad_account_id=ACCOUNT, client=("1484362", APP_SECRET, "another")) as fake:
        with pytest.raises(PlatformAuthError) as refused:
            deliver(oauth_audiences(fake), EMAILS, {"add": [customers([1])]}, InMemoryJournal(), retry=FAST)
        assert fake.requests == []
    assert str(refused.value) == (
        "destination 'pin_vip' (pinterest_ads): the token endpoint refused the refresh token (HTTP 400 "
        "invalid_grant: Invalid refresh token.); create a new refresh token and set it in refresh_token"
    )
    assert REFRESH not in repr(refused.value) and APP_SECRET not in repr(refused.value)


# --------------------------------------------------------------------------------------------------
# Conversions
# --------------------------------------------------------------------------------------------------


def test_events_are_sent_hashed_with_their_event_id_and_a_resent_one_counts_once(pinterest):
    journal = InMemoryJournal()
    result = deliver(events(pinterest), ORDERS, {"track": [orders([1, 2])]}, journal)
    again = deliver(events(pinterest), ORDERS, {"track": [orders([2])]}, InMemoryJournal())

    assert (result.accepted, again.accepted) == (2, 1)
    counted = pinterest.counted_events()
    assert [e["event_id"] for e in counted] == ["O1", "O2"]
    assert counted[0] == {
        "event_name": "checkout",
        "action_source": "web",
        "event_time": NOW - 3600,
        "event_id": "O1",
        "user_data": {"em": [sha("customer1@example.com")], "ph": [sha("33612345678")]},
        "custom_data": {"value": "19.90", "currency": "EUR"},
    }
    assert pinterest.requests[0].path == f"/v5/ad_accounts/{ACCOUNT}/events"
    assert no_raw_identifier(pinterest)


def test_a_failed_event_is_rejected_alone_with_pinterests_message(pinterest):
    journal = InMemoryJournal()
    result = deliver(events(pinterest), ORDERS, {"track": [orders([1, 2], ordered_at=[None, "2026-01-01"])]},
                     journal)
    # The engine needs an event time: a NULL one goes out as null and Pinterest refuses that event only.
    assert (result.accepted, result.rejected) == (1, 1)
    assert journal.rejections == [("O1", "track", "Pinterest: Required field 'event_time' is missing.")]
    assert [e["event_id"] for e in pinterest.counted_events()] == ["O2"]


def test_at_most_1000_events_per_request(pinterest):
    deliver(events(pinterest), ORDERS, {"track": [orders(range(2500))]}, InMemoryJournal())
    assert sorted(len(r.body["data"]) for r in pinterest.requests) == [500, 1000, 1000]
    assert len(pinterest.counted_events()) == 2500


# --------------------------------------------------------------------------------------------------
# preview and validate --connect
# --------------------------------------------------------------------------------------------------


def test_preview_masks_identifiers_and_sends_nothing(pinterest):
    (add,) = preview(audiences(pinterest), EMAILS, {"add": [customers([1])]})
    assert pinterest.requests == []
    assert add.url == f"{pinterest.url}/v5/ad_accounts/{ACCOUNT}/customer_lists/<id of customer list 'VIP Europe'>"
    assert add.method == "PATCH"
    assert sha("customer1@example.com") not in str(add.body)


def test_validate_connect_checks_the_token_the_account_and_a_list_given_by_id(pinterest):
    made = pinterest.create_list("Existing")
    assert validate_connection(audiences(pinterest), EMAILS) == []
    assert validate_connection(audiences(pinterest, audience={"id": made.id}), EMAILS) == []
    assert validate_connection(audiences(pinterest, audience={"id": "999"}), EMAILS) == [
        ("destination 'pin_vip' (pinterest_ads): reading customer list 999 failed with HTTP 404: "
         "Customer list 999 not found. (code 2901)")
    ]
    assert validate_connection(audiences(pinterest, access_token="pina_wrong"), EMAILS) == [
        ("destination 'pin_vip' (pinterest_ads): the platform refused the credentials (HTTP 401): "
         "Authentication failed. (code 2)")
    ]
    assert list(pinterest.lists) == [made.id]


# --------------------------------------------------------------------------------------------------
# A DuckDB project synced through the Dagster sync job
# --------------------------------------------------------------------------------------------------


def test_a_duckdb_segment_and_its_orders_synced_through_dagster(tmp_path, monkeypatch):
    monkeypatch.setenv("PINTEREST_TOKEN", TOKEN)
    with PinterestAdsFake(TOKEN, ad_account_id=ACCOUNT) as fake, dg.DagsterInstance.ephemeral() as instance:
        common = f"ad_account_id: '{ACCOUNT}'\n  access_token: {{env: PINTEREST_TOKEN}}\n  base_url: {fake.url}\n"
        (tmp_path / "dinmo.yaml").write_text(project_yaml(
            f"{{type: duckdb, path: {tmp_path / 'wh.duckdb'}}}",
            models="orders: {source: wh, kind: fact, time_column: ordered_at, table: raw.orders, "
                   "primary_key: order_id}\n",
            segments='all_orders: {model: orders, sql: "select * from {{ model }}"}\n',
            destinations=["pin_vip:\n  type: pinterest_ads\n  service: audiences\n  " + common,
                          "pin_events:\n  type: pinterest_ads\n  service: events\n  event_name: checkout\n"
                          "  action_source: offline\n  " + common],
            activations=textwrap.dedent("""
                to_pinterest:
                  segment: big
                  destination: pin_vip
                  audience: {name: "VIP Europe"}
                  identifiers: {email: email}
                  max_rejected_pct: 100
                conversions:
                  segment: all_orders
                  destination: pin_events
                  identifiers: {email: email}
                  mapping: {ordered_at: event_time}
                """)))
        with open_project(tmp_path) as (project, resources, wh):
            create_customers(wh, SEED)
            run(wh, "create table raw.orders (order_id integer, email varchar, ordered_at timestamp)")
            run(wh, "insert into raw.orders values (10, 'ann@example.com', now()::timestamp - interval 3 hour)")
            defs = build_definitions(project)

            def sync_once(activation: str) -> dict[str, Any]:
                result = run_sync_job(defs, instance, activation)
                assert result.success
                (mat,) = [m for m in result.asset_materializations_for_node(f"activations__{activation}")
                          if m.asset_key == activation_key(activation)]
                return {k: v.value for k, v in mat.metadata.items()}

            # first sync: the list is created with Bob, Cle and Dan (Ann is out of the segment)
            md = sync_once("to_pinterest")
            made = fake.list_named("VIP Europe")
            assert made.records == {sha(f"{n}@example.com") for n in ("bob", "cle", "dan")}
            assert md["accepted_add"] == 3

            # Dan leaves, Bob's e-mail changes; the REMOVE fails once: retried by the next sync
            run(wh, "update raw.customers set ltv = 10 where customer_id = 4")
            run(wh, "update raw.customers set email = 'Robert@Example.com ' where customer_id = 2")
            fake.fail_next(f"/customer_lists/{made.id}", 400, 1, "Invalid records.", times=1)
            sync_once("to_pinterest")
            assert sha("robert@example.com") in made.records and sha("dan@example.com") in made.records
            sync_once("to_pinterest")
            assert made.records == {sha(f"{n}@example.com") for n in ("robert", "cle")}

            # a full refresh (no replace on Pinterest: remove + add) puts back a member lost on Pinterest's
            # side; one added there by hand stays (the SDK never clears a list)
            made.records = {sha("cle@example.com"), sha("manual@example.com")}
            full = sync_steps(SimpleNamespace(project=project, resources=resources), "to_pinterest", full_refresh=True)
            assert full is not None
            assert made.records == {sha(f"{n}@example.com") for n in ("robert", "cle", "manual")}

            # conversions: a second sync sends the new order only, each counted once
            sync_once("conversions")
            run(wh, "insert into raw.orders values (11, 'bob@example.com', now()::timestamp - interval 1 hour)")
            sync_once("conversions")
            assert sorted(e["event_id"] for e in fake.counted_events()) == ["10", "11"]
            assert len(fake.events) == 2
            assert no_raw_identifier(fake)


def test_conversions_killed_mid_sync_are_counted_once_after_the_next_sync(tmp_path):
    dinmo = str(Path(sys.executable).with_name("dinmo"))
    project, home, tmp = tmp_path / "project", tmp_path / "dagster_home", tmp_path / "tmp"
    for d in (project, home, tmp):
        d.mkdir()
    con = duckdb.connect(str(tmp_path / "wh.duckdb"))
    con.execute("create schema raw")
    con.execute("create table raw.customers (customer_id integer, email varchar, first_name varchar, "
                "ltv decimal(10, 2))")
    con.execute("create table raw.orders (order_id integer, email varchar, ordered_at timestamp)")
    con.execute("insert into raw.orders select i, 'c' || (i % 700) || '@example.com', "
                "current_timestamp::timestamp - i * interval '1 second' from generate_series(1, 4000) t(i)")
    con.close()
    with PinterestAdsFake(TOKEN, ad_account_id=ACCOUNT, latency=0.5) as fake:
        (project / "dinmo.yaml").write_text(project_yaml(
            f"{{type: duckdb, path: {tmp_path / 'wh.duckdb'}}}",
            models="orders: {source: wh, kind: fact, time_column: ordered_at, table: raw.orders, "
                   "primary_key: order_id}\n",
            segments='all_orders: {model: orders, sql: "select * from {{ model }}"}\n',
            destinations=[(f"pin_events:\n  type: pinterest_ads\n  service: events\n  event_name: checkout\n"
                           f"  action_source: offline\n  ad_account_id: '{ACCOUNT}'\n  max_concurrency: 1\n"
                           f"  access_token: {{env: PINTEREST_TOKEN}}\n  base_url: {fake.url}\n")],
            activations="conversions:\n  segment: all_orders\n  destination: pin_events\n"
                        "  identifiers: {email: email}\n  mapping: {ordered_at: event_time}\n"))
        env = {**os.environ, "DAGSTER_HOME": str(home), "TMPDIR": str(tmp), "PINTEREST_TOKEN": TOKEN}
        argv = [dinmo, "--project", str(project), "sync", "conversions"]
        # 1. 4,000 events go in 4 requests of 1,000, one at a time: killed after the second answer.
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 90
        while len(fake.requests) < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        # The request in flight at the kill is answered (its events recorded) before what Pinterest received
        # is read: wait until nothing is in flight and no event came in for longer than the fake's latency
        # (a fixed second was too short on a loaded machine).
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            seen = len(fake.events)
            time.sleep(0.6)
            if fake._in_flight == 0 and len(fake.events) == seen:
                break
        received_before = len(fake.events)
        assert 0 < received_before < 4000
        with duckdb.connect(str(tmp_path / "wh.duckdb"), read_only=True) as con:  # what the dead sync journalled
            journalled = {key for (key,) in con.execute(
                "select record_key from dinmo_delta_storage.dinmo_acknowledgements").fetchall()}

        # 2. The next sync recovers: every event is counted once; only events that reached Pinterest before
        # the kill without their acknowledgement journalled are sent twice (de-duplicated by event_id).
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=180, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        counted = sorted(int(e["event_id"]) for e in fake.counted_events())
        assert counted == list(range(1, 4001))
        first = {e.event["event_id"] for e in fake.events[:received_before]}
        resent = [e.event["event_id"] for e in fake.events[received_before:] if e.event["event_id"] in first]
        assert len(fake.events) == 4000 + len(resent)  # only events received before the kill went twice
        assert journalled.isdisjoint(resent)  # and none the dead sync had journalled
        assert no_raw_identifier(fake)
    assert sorted(p.name for p in tmp.glob("dinmo-sync-*")) == []
    assert not any(TOKEN.encode() in p.read_bytes() for p in home.rglob("*") if p.is_file())
