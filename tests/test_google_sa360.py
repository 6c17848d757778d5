"""The Search Ads 360 adapter (offline Floodlight conversions) through a fake Search Ads 360 API v2 and
Google token endpoint built from the contract its docstring cites (tests/fakes/google_sa360.py): the
conversions the advertiser holds, de-duplicated by (conversion ID, timestamp) as Google does, what was
sent, and that no secret is ever sent or shown. Then a DuckDB project through the Dagster sync job, and
a ``dinmo sync`` killed mid-delivery."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import logging
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pyarrow as pa
import pytest
import requests
from attribute_scenarios import (
    CliSync,
    logged,
)
from fakes.google_sa360 import PATH, SA360Fake, classic_error
from platform_scenarios import SEED, create_customers, open_project, project_yaml, run, run_sync_job

from dinmo_dagster.cli import main
from dinmo_dagster.config import load_project
from dinmo_dagster.definitions import build_definitions
from dinmo_dagster.platforms import (
    ActivationSpec,
    InMemoryJournal,
    Limits,
    PlatformAuthError,
    PlatformConfigError,
    RetryPolicy,
    build_platform,
    deliver,
    preview,
    validate_connection,
)
from dinmo_dagster.platforms.google_sa360 import GoogleSA360

AGENCY, ADVERTISER = "20100000000000895", "21700000001406741"
CLIENT_ID = "sa360-client.apps.googleusercontent.com"
CLIENT_SECRET = "GOCSPX-sa360-secret-0o9i8u7y6t5r"
REFRESH_TOKEN = "1//sa360-refresh-a1b2c3d4e5f6g7"
FAST = RetryPolicy(
    max_attempts=3, max_rate_limited_attempts=20, initial_wait_seconds=0.01, max_wait_seconds=0.05
)
SPEC = ActivationSpec(
    "orders_to_sa360",
    "order_id",
    {"click_id": "gclid"},
    {"ordered_at": "conversion_timestamp", "amount": "revenue", "currency": "currency_code"},
)
T0 = dt.datetime(2026, 11, 30, 12, 0, 0, 250_000)  # naive: UTC
T0_MS = "1796040000250"


@pytest.fixture
def sa360() -> Iterator[SA360Fake]:
    with SA360Fake(
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        refresh_token=REFRESH_TOKEN,
        agency_id=AGENCY,
        advertiser_id=ADVERTISER,
    ) as fake:
        yield fake


def conversions(fake: SA360Fake, **settings: Any) -> GoogleSA360:
    raw = {
        "service": "events",
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "refresh_token": REFRESH_TOKEN,
        "agency_id": AGENCY,
        "advertiser_id": ADVERTISER,
        "floodlight_activity": "Offline purchase",
        "conversion_type": "TRANSACTION",
        "base_url": fake.url,
        "token_url": fake.token_url,
        **settings,
    }
    platform = build_platform("google_sa360", raw, destination="sa360_orders")
    assert isinstance(platform, GoogleSA360)
    return platform


def orders(ids: Any, **overrides: list[Any]) -> pa.RecordBatch:
    ids = list(ids)
    columns: dict[str, list[Any]] = {
        "order_id": ids, "gclid": [f"Cj0KCQiA{i:04d}" for i in ids],
        "ordered_at": [T0 + dt.timedelta(minutes=i) for i in ids],
        "amount": [decimal.Decimal("19.99") * i for i in ids], "currency": ["eur"] * len(ids)}  # fmt: skip
    columns.update(overrides)
    return pa.record_batch(columns)


def held(fake: SA360Fake) -> list[str]:
    return sorted(key[1] for key in fake.conversions)


# --------------------------------------------------------------------------------------------------
# Conversions
# --------------------------------------------------------------------------------------------------


def test_conversions_are_inserted_with_the_documented_fields(sa360):
    result = deliver(conversions(sa360), SPEC, {"track": [orders([1, 2])]}, InMemoryJournal())

    assert (result.accepted, result.rejected) == (2, 0)
    (request,) = sa360.requests
    assert (request.method, request.path) == ("POST", PATH)
    assert request.headers["authorization"].startswith("Bearer ya29.sa360-access-")
    assert request.json == {"kind": "doubleclicksearch#conversionList", "conversion": [
        {"agencyId": AGENCY, "advertiserId": ADVERTISER, "clickId": "Cj0KCQiA0001", "conversionId": "1",
         "conversionTimestamp": str(int(T0_MS) + 60_000), "segmentationType": "FLOODLIGHT", "type": "TRANSACTION",
         "segmentationName": "Offline purchase", "revenueMicros": "19990000", "currencyCode": "EUR"},
        {"agencyId": AGENCY, "advertiserId": ADVERTISER, "clickId": "Cj0KCQiA0002", "conversionId": "2",
         "conversionTimestamp": str(int(T0_MS) + 120_000), "segmentationType": "FLOODLIGHT", "type": "TRANSACTION",
         "segmentationName": "Offline purchase", "revenueMicros": "39980000", "currencyCode": "EUR"}]}  # fmt: skip
    assert held(sa360) == ["1", "2"]


def test_an_action_by_activity_id_with_quantity_and_custom_variables(sa360):
    spec = ActivationSpec("a", "order_id", {"gclid": "gclid"}, {
        "ordered_at": "conversion_timestamp", "qty": "quantity", "ref": "conversion_id",
        "store": "custom_dimension.store", "margin": "custom_metric.margin"})  # fmt: skip
    batch = orders(
        [7], qty=[decimal.Decimal("2.5")], ref=["ORD-7"], store=["Lyon"], margin=[decimal.Decimal("4.10")]
    )
    deliver(
        conversions(sa360, floodlight_activity=None, floodlight_activity_id="4321", conversion_type="ACTION"),
        spec,
        {"track": [batch]},
        InMemoryJournal(),
    )

    (sent,) = sa360.sent_conversions()
    assert {k: sent[k] for k in ("conversionId", "type", "segmentationId", "quantityMillis")} == {
        "conversionId": "ORD-7",
        "type": "ACTION",
        "segmentationId": "4321",
        "quantityMillis": "2500",
    }
    assert sent["customDimension"] == [{"name": "store", "value": "Lyon"}]
    assert sent["customMetric"] == [{"name": "margin", "value": "4.10"}]
    assert "revenueMicros" not in sent and "currencyCode" not in sent and held(sa360) == ["ORD-7"]


def test_a_batch_holds_at_most_200_conversions_and_the_fake_refuses_more(sa360):
    result = deliver(conversions(sa360), SPEC, {"track": [orders(range(1, 452))]}, InMemoryJournal())

    assert result.accepted == 451 and len(sa360.conversions) == 451
    assert sorted(len(r.json["conversion"]) for r in sa360.requests) == [51, 200, 200]
    body = {"kind": "doubleclicksearch#conversionList", "conversion": sa360.sent_conversions()[:201]}
    answer = requests.post(sa360.url + PATH, json=body, headers=conversions(sa360).auth_headers(), timeout=10)
    assert (answer.status_code, answer.json()["error"]["errors"][0]["reason"]) == (400, "requestValidation")
    assert answer.json()["error"]["message"] == (
        "The request was not valid. Details: [Too many conversions in one request: 201; at most 200]"
    )


def test_one_bad_conversion_fails_the_request_and_is_isolated_by_bisection_and_rejected_alone(sa360):
    sa360.known_clicks = {f"Cj0KCQiA{i:04d}" for i in range(1, 9)} - {"Cj0KCQiA0005"}
    journal = InMemoryJournal()
    result = deliver(conversions(sa360), SPEC, {"track": [orders(range(1, 9))]}, journal)

    assert (result.accepted, result.rejected) == (7, 1)
    assert held(sa360) == ["1", "2", "3", "4", "6", "7", "8"]
    assert journal.rejections == [
        ("5", "track", "Search Ads 360: The request was not valid. Details: [Conversion 0: invalid click ID]")
    ]
    assert result.top_reasons() == [("HTTP 400 requestValidation", 1)]
    # the next sync sends it again (the click became known)
    sa360.known_clicks.add("Cj0KCQiA0005")
    again = deliver(conversions(sa360), SPEC, {"track": [orders([5])]}, InMemoryJournal())
    assert again.accepted == 1 and len(held(sa360)) == 8


def test_conversions_sent_twice_are_held_once_and_count_as_delivered(sa360):
    deliver(conversions(sa360), SPEC, {"track": [orders([1, 2, 3])]}, InMemoryJournal())
    result = deliver(conversions(sa360), SPEC, {"track": [orders([2, 3, 4])]}, InMemoryJournal())

    assert (result.accepted, result.rejected) == (3, 0)
    assert held(sa360) == ["1", "2", "3", "4"] and len(sa360.inserted) == 4


def test_invalid_values_are_rejected_before_sending(sa360):
    batch = orders([1, 2, 3, 4], gclid=["ok1", None, "has space", "ok4"],
                   ordered_at=[None, T0, T0, T0], currency=["eur", "eur", "eur", "euro"])  # fmt: skip
    journal = InMemoryJournal()
    result = deliver(conversions(sa360), SPEC, {"track": [batch]}, journal)

    assert (result.accepted, result.rejected) == (0, 4) and sa360.requests == []
    reasons = {key: reason for key, _, reason in journal.rejections}
    assert reasons["1"] == "conversion_timestamp is empty or not a time"
    assert reasons["4"] == "currency_code is not an ISO 4217 code"
    assert "click_id" in reasons["2"] and "click_id" in reasons["3"] and "has space" not in reasons["3"]


# --------------------------------------------------------------------------------------------------
# Rate limits, quota, tokens
# --------------------------------------------------------------------------------------------------


def test_user_rate_limit_exceeded_is_ridden_out_and_a_daily_limit_ends_the_sync_early(sa360):
    sa360.throttle(4)
    result = deliver(conversions(sa360), SPEC, {"track": [orders([1, 2])]}, InMemoryJournal(), retry=FAST)
    assert (result.retries, result.accepted) == (4, 2)
    assert [s for _, p, s in sa360.answers if p == PATH] == [403] * 4 + [200]

    sa360.exhaust_daily_quota()
    stopped = deliver(conversions(sa360), SPEC, {"track": [orders([3, 4])]}, InMemoryJournal(), retry=FAST)
    assert stopped.quota is not None and "Daily Limit Exceeded" in stopped.quota.message
    assert stopped.accepted == 0 and stopped.counts("track").not_sent == 2 and held(sa360) == ["1", "2"]


def test_a_token_that_expires_mid_sync_is_renewed_once_and_secrets_never_logged(sa360, caplog):
    caplog.set_level(logging.DEBUG)
    sa360.expire_tokens_after(1)
    platform = conversions(sa360, max_concurrency=1)
    platform.limits = Limits(max_records_per_batch=1, requests_per_window=600, window_seconds=60.0)
    result = deliver(platform, SPEC, {"track": [orders([1, 2, 3])]}, InMemoryJournal())

    assert result.accepted == 3 and held(sa360) == ["1", "2", "3"]
    assert [s for _, p, s in sa360.answers if p == PATH] == [200, 401, 200, 200]
    assert len(sa360.token_requests) == 2
    assert not any(s in caplog.text for s in (CLIENT_SECRET, REFRESH_TOKEN, "ya29."))


def test_a_revoked_refresh_token_stops_the_sync_at_once(sa360):
    sa360.revoke_refresh_token()
    with pytest.raises(PlatformAuthError) as refused:
        deliver(conversions(sa360), SPEC, {"track": [orders([1])]}, InMemoryJournal())
    assert str(refused.value).startswith(
        "destination 'sa360_orders' (google_sa360): the token endpoint refused "
        "the refresh token (HTTP 400 invalid_grant"
    )
    assert sa360.requests == []


# --------------------------------------------------------------------------------------------------
# preview, validate --connect, settings
# --------------------------------------------------------------------------------------------------


def test_preview_shows_the_first_request_and_sends_nothing(sa360):
    (track,) = preview(conversions(sa360), SPEC, {"track": [orders([1])]})

    assert sa360.requests == [] and sa360.token_requests == []
    assert (track.method, track.url) == ("POST", sa360.url + PATH)
    assert track.body["conversion"][0]["clickId"] == "Cj0K***"  # masked as every identifier is
    assert track.body["conversion"][0]["revenueMicros"] == "19990000"


def test_validate_connect_checks_the_token_and_the_advertiser(sa360):
    assert validate_connection(conversions(sa360), SPEC) == []
    assert validate_connection(conversions(sa360, advertiser_id="99"), SPEC) == [
        (
            "destination 'sa360_orders' (google_sa360): the platform refused the credentials (HTTP 403): "
            "The user does not have access to advertiser 99"
        )
    ]
    assert validate_connection(conversions(sa360, client_secret="wrong"), SPEC) == [
        (
            "destination 'sa360_orders' (google_sa360): the token endpoint refused the client credentials (HTTP 401 "
            "invalid_client: Unauthorized); check client_id and client_secret"
        )
    ]


def test_settings_and_activation_problems_name_the_key_and_what_is_allowed(sa360):
    with pytest.raises(PlatformConfigError) as wrong:
        build_platform("google_sa360", {
            "service": "events", "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
            "refresh_token": REFRESH_TOKEN, "agency_id": "ag-1", "advertiser_id": ADVERTISER,
            "conversion_type": "SALE", "currency_code": "euro"}, destination="sa360_orders")  # fmt: skip
    assert str(wrong.value).splitlines() == [
        "destinations.sa360_orders.agency_id: found 'ag-1'; allowed: the agency's numeric id",
        "destinations.sa360_orders.conversion_type: Input should be 'ACTION' or 'TRANSACTION' (found 'SALE')",
        "destinations.sa360_orders.currency_code: found 'euro'; allowed: an ISO 4217 code such as EUR",
    ]
    with pytest.raises(PlatformConfigError) as neither:
        build_platform(
            "google_sa360",
            {
                "service": "events",
                "client_id": CLIENT_ID,
                "client_secret": CLIENT_SECRET,
                "refresh_token": REFRESH_TOKEN,
                "agency_id": AGENCY,
                "advertiser_id": ADVERTISER,
            },
            destination="x",
        )
    assert str(neither.value) == (
        "destinations.x: floodlight_activity: found neither of floodlight_activity and "
        "floodlight_activity_id; allowed: one of them"
    )
    assert conversions(sa360, conversion_type="ACTION").validate_activation(
        {"email": "e"}, {"amount": "revenue", "x": "colour"}
    ) == [
        "identifiers.email: found 'email'; allowed: click_id (or gclid)",
        "mapping: no column is mapped to conversion_timestamp; allowed: the fact model's time column",
        (
            "mapping.x: found 'colour'; allowed: conversion_timestamp, conversion_id, revenue, currency_code, "
            "quantity, custom_dimension.<name>, custom_metric.<name>"
        ),
        "mapping: revenue is mapped but conversion_type is ACTION; allowed: conversion_type TRANSACTION to send revenue",
    ]


# --------------------------------------------------------------------------------------------------
# DuckDB through Dagster, and a killed sync
# --------------------------------------------------------------------------------------------------


def destination_yaml(fake: SA360Fake, extra: str = "") -> str:
    return (
        f"sa360_orders:\n  type: google_sa360\n  service: events\n  agency_id: '{AGENCY}'\n"
        f"  advertiser_id: '{ADVERTISER}'\n  floodlight_activity: Offline purchase\n"
        f"  conversion_type: TRANSACTION\n  currency_code: EUR\n  client_id: {CLIENT_ID}\n"
        f"  client_secret: {{env: SA360_CLIENT_SECRET}}\n  refresh_token: {{env: SA360_REFRESH_TOKEN}}\n"
        f"  base_url: {fake.url}\n  token_url: {fake.token_url}\n{extra}"
    )


ORDERS_MODEL = (
    "orders: {source: wh, kind: fact, time_column: ordered_at, table: raw.orders, primary_key: order_id}\n"
)
ACTIVATION = """
    conversions:
      segment: all_orders
      destination: sa360_orders
      identifiers: {click_id: gclid}
      mapping: {ordered_at: conversion_timestamp, amount: revenue}
    """


def test_orders_synced_through_dagster_are_counted_once(tmp_path, monkeypatch):
    monkeypatch.setenv("SA360_CLIENT_SECRET", CLIENT_SECRET)
    monkeypatch.setenv("SA360_REFRESH_TOKEN", REFRESH_TOKEN)
    with (
        SA360Fake(
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            refresh_token=REFRESH_TOKEN,
            agency_id=AGENCY,
            advertiser_id=ADVERTISER,
        ) as fake,
        dg.DagsterInstance.ephemeral() as instance,
    ):
        (tmp_path / "dinmo.yaml").write_text(
            project_yaml(
                f"{{type: duckdb, path: {tmp_path / 'wh.duckdb'}}}",
                models=ORDERS_MODEL,
                segments='all_orders: {model: orders, sql: "select * from {{ model }}"}\n',
                destinations=[destination_yaml(fake)],
                activations=textwrap.dedent(ACTIVATION),
            )
        )
        with open_project(tmp_path) as (project, _resources, wh):
            create_customers(wh, SEED)
            run(
                wh,
                "create table raw.orders (order_id integer, gclid varchar, amount decimal(10, 2), "
                "ordered_at timestamp)",
            )
            run(
                wh,
                "insert into raw.orders values (10, 'Cj0KCQiA0010', 25.50, now()::timestamp - interval 3 hour)",
            )
            defs = build_definitions(project)
            fake.throttle(2)
            assert run_sync_job(defs, instance, "conversions").success
            run(
                wh,
                "insert into raw.orders values (11, 'Cj0KCQiA0011', 10.00, now()::timestamp - interval 1 hour)",
            )
            fake.expire_tokens_after(0)
            assert run_sync_job(defs, instance, "conversions").success
            assert held(fake) == ["10", "11"] and len(fake.inserted) == 2
            assert [c["revenueMicros"] for c in fake.inserted] == ["25500000", "10000000"]
            for entry in logged(instance):
                assert CLIENT_SECRET not in entry and "ya29." not in entry


def test_a_sync_killed_mid_delivery_recovers_with_nothing_lost_and_nothing_counted_twice(tmp_path):
    cli = CliSync(
        tmp_path, "conversions", {"SA360_CLIENT_SECRET": CLIENT_SECRET, "SA360_REFRESH_TOKEN": REFRESH_TOKEN}
    )
    cli.seed(0)
    cli.sql(
        "create table raw.orders (order_id integer, gclid varchar, amount decimal(10, 2), ordered_at timestamp)",
        "insert into raw.orders select i, 'Cj0KCQiA' || i, i / 100, "
        "current_timestamp::timestamp - i * interval '1 second' from generate_series(1, 100) t(i)",
    )
    with SA360Fake(
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        refresh_token=REFRESH_TOKEN,
        agency_id=AGENCY,
        advertiser_id=ADVERTISER,
        latency=0.4,
    ) as fake:
        cli.write(
            models=ORDERS_MODEL,
            segments='all_orders: {model: orders, sql: "select * from {{ model }}"}\n',
            destinations=[destination_yaml(fake, "  max_concurrency: 1\n  batch_size: 10\n")],
            activations=textwrap.dedent(ACTIVATION),
        )
        # 1. 100 conversions go in 10 requests of 10, one at a time: killed after the third arrived.
        # settle: the request in flight at the kill is answered
        cli.kill_when(lambda: len(fake.requests) >= 3, settle=1.0)
        held_before = len(fake.conversions)
        assert 0 < held_before < 100
        fake.latency = 0.0  # the recovery bisects the re-sent batch: 19 requests for 10 conversions

        # 2. The next sync recovers: every order held once; conversions already held are refused as
        # "already exists" and counted delivered, never inserted twice.
        cli.recover()
        assert sorted(int(k) for k in held(fake)) == list(range(1, 101))
        assert len(fake.inserted) == 100
        assert len(fake.sent_conversions()) > 100  # the batch in flight at the kill went again, held once
        sent = json.dumps([r.json for r in fake.requests])
        assert CLIENT_SECRET not in sent and REFRESH_TOKEN not in sent
    assert cli.leftovers() == []
    assert not cli.in_home(REFRESH_TOKEN)


def test_the_fake_answers_google_classic_errors(sa360):
    sa360.fail_next(PATH, classic_error(500, "backendError", "Backend Error"))
    result = deliver(conversions(sa360), SPEC, {"track": [orders([1])]}, InMemoryJournal(), retry=FAST)
    assert result.accepted == 1 and result.retries == 1


def load_and_validate_sa360_example(example: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "dinmo.yaml").write_text(
        """
sources:
  warehouse: {type: duckdb, path: data/warehouse.duckdb}
models:
  orders: {source: warehouse, kind: fact, table: raw.orders, primary_key: order_id, time_column: ordered_at}
segments:
  purchases: {model: orders, sql: "select * from {{ model }}"}
"""
        + example
    )
    project = load_project(tmp_path)
    (activation,) = project.activations.values()
    assert activation.platform_service == "events"
    monkeypatch.setenv("SA360_CLIENT_SECRET", CLIENT_SECRET)
    monkeypatch.setenv("SA360_REFRESH_TOKEN", REFRESH_TOKEN)
    assert main(["--project", str(tmp_path), "validate"]) == 0


def test_the_readme_sa360_example_loads_and_validates(tmp_path: Path, monkeypatch) -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    heading = "**Google Search Ads 360 (`type: google_sa360`).**"
    if heading not in readme:
        pytest.skip("the README has no Search Ads 360 paragraph yet")
    example = readme.split(heading, 1)[1].split("\n**", 1)[0].split("```yaml\n", 1)[1].split("```", 1)[0]
    load_and_validate_sa360_example(example, tmp_path, monkeypatch)
