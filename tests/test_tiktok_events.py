"""TikTok Ads ``events`` (the Events API 2.0) through the fake of tests/fakes/tiktok_ads.py: the events
TikTok receives and counts (de-duplicated by ``event`` and ``event_id`` within 48 hours), what it refuses,
and that neither a raw identifier nor the access token is ever sent or shown. Then a DuckDB fact model
through the real Dagster sync job, and a ``dinmo sync`` killed mid-delivery.

Expected digests are computed here with hashlib from the normalized values the adapter documents."""

from __future__ import annotations

import datetime as dt
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
import pyarrow as pa
import pytest
import requests
from ad_scenarios import sha
from fakes.tiktok_ads import TikTokAdsFake
from platform_scenarios import SEED, create_customers, open_project, project_yaml, run, run_sync_job

from dinmo_dagster.config import load_project
from dinmo_dagster.definitions import build_definitions
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
from dinmo_dagster.platforms.tiktok_ads import TikTokAds

ADVERTISER = "7012345678901234567"
TOKEN = "tiktok-events-token-0a1b2c3d4e5f6a7b"
PIXEL = "CQ2A8RC77U2TMR44LI0"
TRACK = "/open_api/v1.3/event/track/"
FAST = RetryPolicy(max_attempts=3, max_rate_limited_attempts=20, initial_wait_seconds=0.01, max_wait_seconds=0.05)
NOW = int(dt.datetime.now(dt.timezone.utc).timestamp())
ORDERS = ActivationSpec(
    "orders_to_tiktok", "order_id", {"email": "email", "phone": "phone", "ip": "ip"},
    {"ordered_at": "event_time", "amount": "value", "currency": "currency"}, default_country="FR",
)  # fmt: skip


@pytest.fixture
def tiktok() -> Iterator[TikTokAdsFake]:
    with TikTokAdsFake(access_token=TOKEN, advertiser_id=ADVERTISER, event_sources=(PIXEL,)) as fake:
        yield fake


def events(fake: TikTokAdsFake, **settings: Any) -> TikTokAds:
    raw = {"service": "events", "access_token": TOKEN, "event_source": "web", "event_source_id": PIXEL,
           "event": "CompletePayment", "base_url": fake.url, **settings}  # fmt: skip
    platform = build_platform("tiktok_ads", raw, destination="tiktok_orders")
    assert isinstance(platform, TikTokAds)
    return platform


def orders(ids: Any, **overrides: list[Any]) -> pa.RecordBatch:
    ids = list(ids)
    columns: dict[str, list[Any]] = {
        "order_id": [f"O{i}" for i in ids],
        "email": [f" Customer{i}@Example.com" for i in ids],
        "phone": ["06 12 34 56 78" for _ in ids],
        "ip": ["203.0.113.7" for _ in ids],
        "ordered_at": [dt.datetime.fromtimestamp(NOW - 3600, dt.timezone.utc).replace(tzinfo=None) for _ in ids],
        "amount": ["19.90" for _ in ids],
        "currency": ["EUR" for _ in ids],
    }
    columns.update(overrides)
    return pa.record_batch(columns)


def no_raw_identifier(fake: TikTokAdsFake) -> bool:
    return all(b"xample.com" not in r.raw_body.lower() and b"06 12" not in r.raw_body
               and b"612345678" not in r.raw_body for r in fake.requests)  # fmt: skip


def test_events_are_sent_hashed_with_their_event_id_and_a_resent_one_counts_once(tiktok):
    journal = InMemoryJournal()
    result = deliver(events(tiktok), ORDERS, {"track": [orders([1, 2])]}, journal)
    again = deliver(events(tiktok), ORDERS, {"track": [orders([2])]}, InMemoryJournal())

    assert (result.accepted, again.accepted) == (2, 1)
    assert sorted(journal.acknowledged_keys["track"]) == ["O1", "O2"]
    assert len(tiktok.events) == 3
    counted = tiktok.counted_events()
    assert [e["event_id"] for e in counted] == ["O1", "O2"]
    assert counted[0] == {
        "event": "CompletePayment",
        "event_time": NOW - 3600,
        "event_id": "O1",
        "user": {"email": sha("customer1@example.com"), "phone": sha("+33612345678"), "ip": "203.0.113.7"},
        "properties": {"value": 19.9, "currency": "EUR"},
    }
    body = tiktok.requests[0].json
    assert (body["event_source"], body["event_source_id"], tiktok.requests[0].path) == ("web", PIXEL, TRACK)
    assert all(r.headers["access-token"] == TOKEN for r in tiktok.requests)
    assert no_raw_identifier(tiktok)


def test_a_mapped_event_name_url_and_event_id_and_offline_events_with_a_test_code(tiktok):
    tiktok.event_sources.add("7321456987456321")
    spec = ActivationSpec("x", "order_id", {"external_id": "customer_id"},
                          {"ordered_at": "event_time", "kind": "event", "ref": "event_id", "page": "url"})
    batch = pa.record_batch({"order_id": [1], "customer_id": [" C-42 "], "ordered_at": [NOW - 60],
                             "kind": ["PlaceAnOrder"], "ref": ["order-1"], "page": ["https://shop.example/p"]})
    deliver(events(tiktok, event_source="offline", event_source_id="7321456987456321", test_event_code="TEST123"),
            spec, {"track": [batch]}, InMemoryJournal())

    (received,) = tiktok.events
    assert (received.event_source_id, received.test_event_code) == ("7321456987456321", "TEST123")
    assert received.event == {"event": "PlaceAnOrder", "event_time": NOW - 60, "event_id": "order-1",
                              "user": {"external_id": sha("C-42")}, "page": {"url": "https://shop.example/p"}}


def test_a_refused_event_is_rejected_alone_with_tiktoks_message_and_sent_again_next_sync(tiktok):
    tiktok.refuse_event("O3", "properties.currency: invalid currency code.")
    journal = InMemoryJournal()
    result = deliver(events(tiktok), ORDERS, {"track": [orders(range(1, 6))]}, journal)

    # TikTok refuses the whole request; the batch is split until the refused event is alone.
    assert (result.accepted, result.rejected) == (4, 1)
    assert journal.rejections == [
        ("O3", "track", "TikTok: data[0].properties.currency: invalid currency code. (code 40002)")]
    assert result.top_reasons() == [("TikTok code 40002", 1)]
    tiktok.accept_event("O3")
    result = deliver(events(tiktok), ORDERS, {"track": [orders([3])]}, InMemoryJournal())
    assert result.accepted == 1
    assert sorted(e["event_id"] for e in tiktok.counted_events()) == ["O1", "O2", "O3", "O4", "O5"]


def test_at_most_1000_events_per_request_and_the_fake_refuses_more(tiktok):
    deliver(events(tiktok), ORDERS, {"track": [orders(range(2500))]}, InMemoryJournal())
    assert sorted(len(r.json["data"]) for r in tiktok.requests) == [500, 1000, 1000]
    assert len(tiktok.counted_events()) == 2500

    too_big = {"event_source": "web", "event_source_id": PIXEL, "data": [{"event": "x", "event_time": NOW}] * 1001}
    answer = requests.post(f"{tiktok.url}{TRACK}", json=too_big, headers={"Access-Token": TOKEN}, timeout=10).json()
    assert (answer["code"], answer["message"]) == (40002, "data: between 1 and 1000 events are allowed.")


def test_a_storm_of_40100_answers_is_ridden_out(tiktok):
    tiktok.throttle(5)
    result = deliver(events(tiktok), ORDERS, {"track": [orders(range(1, 4))]}, InMemoryJournal(), retry=FAST)
    assert [code for _, _, code in tiktok.answers] == [40100] * 5 + [0]
    assert (result.retries, result.accepted, len(tiktok.counted_events())) == (5, 3, 3)


def test_a_revoked_token_stops_the_sync_and_the_token_never_shows(tiktok, caplog):
    caplog.set_level(logging.DEBUG)
    tiktok.revoke_token()
    with pytest.raises(PlatformAuthError) as refused:
        deliver(events(tiktok), ORDERS, {"track": [orders([1, 2])]}, InMemoryJournal())
    assert str(refused.value) == (
        "destination 'tiktok_orders' (tiktok_ads): the platform refused the credentials (HTTP 200): "
        "Access token is incorrect or has been revoked. (code 40105)")
    assert TOKEN not in caplog.text and tiktok.events == []


def test_preview_masks_identifiers_and_sends_nothing(tiktok):
    (track,) = preview(events(tiktok), ORDERS, {"track": [orders([1])]})
    assert tiktok.requests == []
    assert (track.method, track.url) == ("POST", f"{tiktok.url}{TRACK}")
    assert track.body["data"][0]["user"]["email"] == sha("customer1@example.com")[:8] + "…"
    assert TOKEN not in repr(track)


def test_validate_connect_checks_the_token_and_advertiser_when_given(tiktok):
    assert validate_connection(events(tiktok, advertiser_id=ADVERTISER), ORDERS) == []
    assert validate_connection(events(tiktok, advertiser_id=ADVERTISER, access_token="wrong"), ORDERS) == [
        ("destination 'tiktok_orders' (tiktok_ads): the platform refused the credentials (HTTP 200): "
        "Access token is incorrect or has been revoked. (code 40105)")]
    assert validate_connection(events(tiktok), ORDERS) == []
    assert tiktok.events == []


def test_settings_and_activation_problems_name_the_key_and_what_is_allowed(tiktok):
    with pytest.raises(PlatformConfigError) as wrong:
        build_platform("tiktok_ads", {"service": "events", "access_token": TOKEN, "audience": {"name": "VIP"}},
                       destination="tiktok_orders")
    assert str(wrong.value) == (
        "destinations.tiktok_orders: audience: not used by service events; allowed: service audiences; "
        "event_source: found nothing; allowed: web, offline; event_source_id: found nothing; allowed: the pixel "
        "code (web) or offline event set id")
    with pytest.raises(PlatformConfigError) as wrong:
        build_platform("tiktok_ads", {"service": "audiences", "access_token": TOKEN, "event": "Purchase"},
                       destination="tiktok_vip")
    assert str(wrong.value) == ("destinations.tiktok_vip.advertiser_id: found nothing; allowed: the advertiser's "
                                "numeric id, such as 7012345678901234567")
    assert events(tiktok, event=None).validate_activation({"email": "email", "madid": "m"}, {"amount": "value"}) == [
        "identifiers.madid: found 'madid'; allowed for events: email, phone, external_id, ip, user_agent, ttclid, ttp",
        "mapping: no column is mapped to event_time; allowed: the fact model's time column",
        "event: found nothing; allowed: the event setting or a column mapped to event",
    ]


# --------------------------------------------------------------------------------------------------
# A DuckDB fact model through the Dagster sync job, and a dinmo sync killed mid-delivery
# --------------------------------------------------------------------------------------------------


def events_destination(fake: TikTokAdsFake, extra: str = "") -> str:
    return (f"tiktok_events:\n  type: tiktok_ads\n  service: events\n  event_source: web\n"
            f"  event_source_id: {PIXEL}\n  event: CompletePayment\n  access_token: {{env: TIKTOK_TOKEN}}\n"
            f"  base_url: {fake.url}\n{extra}")  # fmt: skip


def test_orders_synced_through_dagster_are_each_counted_once(tmp_path, monkeypatch):
    monkeypatch.setenv("TIKTOK_TOKEN", TOKEN)
    with TikTokAdsFake(access_token=TOKEN, advertiser_id=ADVERTISER, event_sources=(PIXEL,)) as fake, \
            dg.DagsterInstance.ephemeral() as instance:  # fmt: skip
        (tmp_path / "dinmo.yaml").write_text(project_yaml(
            f"{{type: duckdb, path: {tmp_path / 'wh.duckdb'}}}",
            models="orders: {source: wh, kind: fact, time_column: ordered_at, table: raw.orders, "
                   "primary_key: order_id}\n",
            segments='all_orders: {model: orders, sql: "select * from {{ model }}"}\n',
            destinations=[events_destination(fake)],
            activations=textwrap.dedent("""
                conversions:
                  segment: all_orders
                  destination: tiktok_events
                  identifiers: {email: email}
                  mapping: {ordered_at: event_time}
                """)))  # fmt: skip
        with open_project(tmp_path) as (project, _resources, wh):
            create_customers(wh, SEED)
            run(wh, "create table raw.orders (order_id integer, email varchar, ordered_at timestamp)")
            run(wh, "insert into raw.orders values (10, 'ann@example.com', now()::timestamp - interval 3 hour)")
            defs = build_definitions(project)
            # A storm of 40100 on the first sync; a second sync sends the new order only.
            fake.throttle(3)
            assert run_sync_job(defs, instance, "conversions").success
            run(wh, "insert into raw.orders values (11, 'bob@example.com', now()::timestamp - interval 1 hour)")
            assert run_sync_job(defs, instance, "conversions").success
            assert [e["event_id"] for e in fake.counted_events()] == ["10", "11"]
            assert len(fake.events) == 2
            assert fake.counted_events()[1]["user"] == {"email": sha("bob@example.com")}
            assert no_raw_identifier(fake)
            for dagster_run in instance.get_runs():
                for entry in instance.all_logs(dagster_run.run_id):
                    assert TOKEN not in repr(entry)


def test_events_killed_mid_sync_are_counted_once_after_the_next_sync(tmp_path):
    dinmo = str(Path(sys.executable).with_name("dinmo"))
    project, home, tmp = tmp_path / "project", tmp_path / "dagster_home", tmp_path / "tmp"
    for d in (project, home, tmp):
        d.mkdir()
    with duckdb.connect(str(tmp_path / "wh.duckdb")) as con:
        con.execute("create schema raw")
        con.execute("create table raw.customers (customer_id integer, email varchar, first_name varchar, "
                    "ltv decimal(10, 2))")
        con.execute("create table raw.orders (order_id integer, email varchar, ordered_at timestamp)")
        con.execute("insert into raw.orders select i, 'c' || (i % 700) || '@example.com', "
                    "current_timestamp::timestamp - i * interval '1 second' from generate_series(1, 4000) t(i)")
    with TikTokAdsFake(access_token=TOKEN, advertiser_id=ADVERTISER, event_sources=(PIXEL,), latency=0.4) as fake:
        (project / "dinmo.yaml").write_text(project_yaml(
            f"{{type: duckdb, path: {tmp_path / 'wh.duckdb'}}}",
            models="orders: {source: wh, kind: fact, time_column: ordered_at, table: raw.orders, "
                   "primary_key: order_id}\n",
            segments='all_orders: {model: orders, sql: "select * from {{ model }}"}\n',
            destinations=[events_destination(fake, "  max_concurrency: 1\n")],
            activations="conversions:\n  segment: all_orders\n  destination: tiktok_events\n"
                        "  identifiers: {email: email}\n  mapping: {ordered_at: event_time}\n"))  # fmt: skip
        env = {**os.environ, "DAGSTER_HOME": str(home), "TMPDIR": str(tmp), "TIKTOK_TOKEN": TOKEN}
        argv = [dinmo, "--project", str(project), "sync", "conversions"]
        # 4,000 events go in 4 requests of 1,000, one at a time: killed once TikTok received some.
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 90
        while not fake.events and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        # The request in flight at the kill is answered (its events recorded) before what TikTok received is
        # read: wait until no event came in for a second, well over the fake's latency (a fixed second after
        # the kill was too short on a loaded machine).
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            seen = len(fake.events)
            time.sleep(1.0)
            if len(fake.events) == seen:
                break
        received_before = len(fake.events)
        assert 0 < received_before < 4000
        with duckdb.connect(str(tmp_path / "wh.duckdb"), read_only=True) as con:  # what the dead sync journalled
            journalled = {key for (key,) in con.execute(
                "select record_key from dinmo_delta_storage.dinmo_acknowledgements").fetchall()}  # fmt: skip

        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=180, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        assert sorted(int(e["event_id"]) for e in fake.counted_events()) == list(range(1, 4001))
        first = {e.event["event_id"] for e in fake.events[:received_before]}
        resent = [e.event["event_id"] for e in fake.events[received_before:] if e.event["event_id"] in first]
        assert len(fake.events) == 4000 + len(resent)  # only events received before the kill went twice
        assert journalled.isdisjoint(resent)  # and none the dead sync had journalled
        assert no_raw_identifier(fake)
    assert sorted(p.name for p in tmp.glob("dinmo-sync-*")) == []
    assert not any(TOKEN.encode() in p.read_bytes() for p in home.rglob("*") if p.is_file())


def test_the_readme_tiktok_events_example_loads(tmp_path: Path) -> None:
    """The events YAML example of the README's TikTok Ads paragraph (the second ``yaml`` block)."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme.split("**TikTok Ads (`type: tiktok_ads`).**", 1)[1].split("\n**", 1)[0]
    if "service: events" not in section:
        pytest.skip("the README's TikTok paragraph has no events example yet")
    example = section.split("service: events", 1)[0].rsplit("```yaml\n", 1)[1] + "service: events"
    example += section.split("service: events", 1)[1].split("```", 1)[0]
    (tmp_path / "dinmo.yaml").write_text("""
sources:
  warehouse: {type: duckdb, path: data/warehouse.duckdb}
models:
  orders: {source: warehouse, table: raw.orders, primary_key: order_id, kind: fact, time_column: ordered_at}
segments:
  all_orders: {model: orders, sql: "select * from {{ model }}"}
""" + example)
    project = load_project(tmp_path)
    activation = project.activations["orders_to_tiktok"]
    assert activation.platform_service == "events"
