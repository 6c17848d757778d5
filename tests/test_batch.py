"""The Batch adapter through a fake Batch built from Batch's documentation (tests/fakes/batch.py): what the
profiles hold afterwards (attributes, consent, events), the MEP custom data, and that the REST API key never
shows anywhere but in its header."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow as pa
import pytest
from attribute_scenarios import (
    CliSync,
    built,
    crm_project,
    example_activations,
    load_example,
    logged,
    readme_examples,
)
from fakes.batch import BatchFake
from platform_scenarios import run, run_sync_job

from dinmo_dagster.config import ProjectError
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
from dinmo_dagster.platforms.batch import Batch

KEY = "batch-rest-5f0c9a2e81d74b6fa3e2c1d0b9a87f65"
FAST = RetryPolicy(max_attempts=5, initial_wait_seconds=0.01, max_wait_seconds=0.05)
PROFILES = ActivationSpec(
    "bt",
    "customer_id",
    match={"custom_id": "customer_id"},
    mapping={
        "first_name": "firstname",
        "email": "$email_address",
        "optin": "$email_marketing",
        "signed_up": "signed_up",
    },
)


@pytest.fixture
def batch():
    with BatchFake(KEY) as fake:
        yield fake


def destination(fake: BatchFake, service: str = "attributes", **settings) -> Batch:
    raw: dict = {"service": service, "rest_api_key": KEY, **settings}
    if raw.get("product") == "mep":
        raw.setdefault("app_api_key", fake.app_key)
        raw["base_url"] = f"{fake.url}/1.0"
    else:
        raw.setdefault("project_key", fake.project_key)
        raw["base_url"] = f"{fake.url}/2.11"
    return built("batch", Batch, raw, "bt")


def customers(ids: list[int], **overrides) -> pa.RecordBatch:
    columns = {
        "customer_id": [str(i) for i in ids],
        "first_name": [f"Name{i}" for i in ids],
        "email": [f"c{i}@example.com" for i in ids],
        "optin": [None] * len(ids),
        "signed_up": [dt.date(2024, 1, i % 28 + 1) for i in ids],
    }
    columns.update(overrides)
    return pa.record_batch(columns)


def key_only_in_header(fake: BatchFake) -> bool:
    for r in fake.requests:
        sent = r.headers.get("authorization") or r.headers.get("x-authorization")
        assert sent in (f"Bearer {KEY}", KEY)
        assert KEY not in r.raw_body.decode() and KEY not in r.path
    return True


def test_profiles_get_typed_attributes_and_consent_only_from_the_consent_column(batch):
    result = deliver(
        destination(batch),
        PROFILES,
        {"upsert": [customers([1, 2, 3], optin=[True, False, None], first_name=["Ann", None, "Cle"])]},
        InMemoryJournal(),
    )
    assert batch.requests[0].path == "/2.11/profiles/update"
    assert batch.requests[0].headers["x-batch-project"] == "project_shop"
    assert batch.requests[0].json[1] == {
        "identifiers": {"custom_id": "2"},
        "attributes": {
            "firstname": None,
            "$email_address": "c2@example.com",
            "$email_marketing": "unsubscribed",
            "date(signed_up)": "2024-01-03T00:00:00Z",
        },
    }
    assert batch.attributes() == {
        "1": {"firstname": "Ann", "$email_address": "c1@example.com", "$email_marketing": "subscribed",
              "signed_up": "2024-01-02T00:00:00Z"},
        "2": {"$email_address": "c2@example.com", "$email_marketing": "unsubscribed",
              "signed_up": "2024-01-03T00:00:00Z"},
        "3": {"firstname": "Cle", "$email_address": "c3@example.com", "signed_up": "2024-01-04T00:00:00Z"},
    }  # fmt: skip
    assert (result.accepted, result.rejected) == (3, 0)
    assert key_only_in_header(batch)


def test_batches_hold_at_most_200_operations(batch):
    result = deliver(
        destination(batch), PROFILES, {"upsert": [customers(list(range(1, 451)))]}, InMemoryJournal()
    )
    assert sorted(len(r.json) for r in batch.requests) == [50, 200, 200]
    assert result.accepted == 450 and len(batch.profiles) == 450


def test_a_partial_error_rejects_its_record_with_batchs_reason_and_the_next_sync_sends_it(batch):
    journal = InMemoryJournal()
    result = deliver(
        destination(batch),
        PROFILES,
        {"upsert": [customers([1, 2, 3], email=["c1@example.com", "not-an-email", "c3@example.com"])]},
        journal,
    )
    assert journal.rejections == [("2", "upsert", "$email_address must be a valid email address")]
    assert sorted(journal.acknowledged_keys["upsert"]) == ["1", "3"]
    assert result.reasons == {"partial error $email_address": 1}
    assert batch.attributes()["2"] == {"firstname": "Name2", "signed_up": "2024-01-03T00:00:00Z"}
    again = deliver(destination(batch), PROFILES, {"upsert": [customers([2])]}, InMemoryJournal())
    assert again.accepted == 1 and batch.attributes()["2"]["$email_address"] == "c2@example.com"


def test_a_consent_value_batch_does_not_take_is_rejected_before_sending(batch):
    journal = InMemoryJournal()
    deliver(
        destination(batch), PROFILES, {"upsert": [customers([1, 2], optin=["yes", "subscribed"])]}, journal
    )
    assert journal.rejections == [
        ("1", "upsert", "$email_marketing: found 'yes'; allowed: true/false, subscribed or unsubscribed")
    ]
    assert [op["identifiers"]["custom_id"] for op in batch.requests[0].json] == ["2"]
    assert batch.attributes()["2"]["$email_marketing"] == "subscribed"


def test_mirror_clears_the_mapped_attributes_but_never_consent(batch):
    deliver(destination(batch), PROFILES, {"upsert": [customers([1], optin=[True])]}, InMemoryJournal())
    deliver(destination(batch), PROFILES, {"delete": [customers([1])]}, InMemoryJournal())
    assert batch.requests[-1].json == [
        {
            "identifiers": {"custom_id": "1"},
            "attributes": {"firstname": None, "$email_address": None, "signed_up": None},
        }
    ]
    assert batch.attributes() == {"1": {"$email_marketing": "subscribed"}}


def test_a_429_storm_is_ridden_out(batch):
    batch.throttle(4)
    result = deliver(
        destination(batch), PROFILES, {"upsert": [customers([1])]}, InMemoryJournal(), retry=FAST
    )
    assert result.accepted == 1 and result.retries == 4
    assert [s for _, _, s in batch.answers] == [429, 429, 429, 429, 202]


def test_a_wrong_key_stops_at_once_with_batchs_message(batch):
    platform = build_platform(
        "batch",
        {"service": "attributes", "rest_api_key": "nope", "project_key": "project_shop",
         "base_url": f"{batch.url}/2.11"},
        destination="bt",
    )  # fmt: skip
    with pytest.raises(PlatformAuthError) as info:
        deliver(platform, PROFILES, {"upsert": [customers([1])]}, InMemoryJournal())
    assert str(info.value) == (
        "destination 'bt' (batch): the platform refused the credentials (HTTP 401): "
        "AUTHENTICATION_INVALID: Invalid REST API key"
    )


def test_events_carry_name_time_and_typed_attributes(batch):
    spec = ActivationSpec(
        "bt",
        "customer_id",
        match={"custom_id": "customer_id"},
        mapping={"ordered_at": "time", "total": "amount", "last_item": "item"},
    )
    rows = pa.record_batch(
        {
            "customer_id": ["1", "2"],
            "ordered_at": [dt.datetime(2024, 5, 1, 10, 0), None],
            "total": [12.5, 20.0],
            "last_item": ["shoe", None],
        }
    )
    platform = destination(batch, "events", event_name="order_placed")
    assert platform.deduplicates("track") is False
    result = deliver(platform, spec, {"track": [rows]}, InMemoryJournal())
    assert result.accepted == 2
    assert batch.profiles["1"].events == [
        {
            "name": "order_placed",
            "time": "2024-05-01T10:00:00Z",
            "attributes": {"amount": 12.5, "item": "shoe"},
        }
    ]
    assert batch.profiles["2"].events == [{"name": "order_placed", "attributes": {"amount": 20.0}}]


def test_mep_custom_data_goes_to_the_bulk_route_without_overwriting(batch):
    spec = ActivationSpec(
        "bt", "customer_id", match={"custom_id": "customer_id"}, mapping={"first_name": "nickname"}
    )
    platform = destination(batch, product="mep")
    deliver(platform, spec, {"upsert": [customers([1, 2], first_name=["Ann", None])]}, InMemoryJournal())
    assert batch.requests[0].path == "/1.0/APPKEY1/data/users"
    assert batch.requests[0].headers["x-authorization"] == KEY
    assert batch.requests[0].json == [
        {"id": "1", "update": {"overwrite": False, "values": {"nickname": "Ann"}}},
        {"id": "2", "update": {"overwrite": False, "values": {"nickname": None}}},
    ]
    assert {k: u.attributes for k, u in batch.mep_users.items()} == {"1": {"nickname": "Ann"}, "2": {}}
    assert key_only_in_header(batch)


def test_preview_sends_nothing(batch):
    shown = preview(destination(batch), PROFILES, {"upsert": [customers([1])]})
    assert batch.requests == []
    assert shown[0].url == f"{batch.url}/2.11/profiles/update"
    assert KEY not in repr(shown)


def test_settings_errors_name_the_key_and_what_is_allowed():
    cases = [
        ({"service": "attributes", "rest_api_key": KEY}, ("destinations.bt.project_key: is required with product: "
         "cep; allowed: the project key (project_...)")),
        ({"service": "attributes", "product": "mep", "rest_api_key": KEY}, ("destinations.bt.app_api_key: is "
         "required with product: mep; allowed: the app's Live or Dev API key")),
        ({"service": "events", "rest_api_key": KEY, "project_key": "p", "event_name": "Order Placed"},
         "destinations.bt.event_name: found 'Order Placed'; allowed: 1 to 30 lower-case letters, digits or _"),
        ({"service": "events", "product": "mep", "rest_api_key": KEY, "app_api_key": "A", "event_name": "x"},
         ("destinations.bt.event_name: found service events with product: mep; allowed: product: cep (MEP takes "
         "custom data only)")),
        ({"service": "audiences", "rest_api_key": KEY, "project_key": "p"},
         "destinations.bt.service: Input should be 'attributes' or 'events' (found 'audiences')"),
    ]  # fmt: skip
    for raw, message in cases:
        with pytest.raises(PlatformConfigError) as info:
            build_platform("batch", raw, destination="bt")
        assert str(info.value) == message
        assert KEY not in str(info.value)


def test_validate_connect_checks_the_keys_and_the_mapping(batch):
    assert validate_connection(destination(batch), PROFILES) == []
    spec = ActivationSpec(
        "bt", "customer_id", match={"email": "email"}, mapping={"first_name": "$first_name"}
    )
    assert validate_connection(destination(batch), spec) == [
        "match: found email; allowed: custom_id (Batch keys profiles by Custom ID)",
        (
            "mapping.first_name: found '$first_name'; allowed: $email_address, $phone_number, $language, $region, "
            "$timezone, $email_marketing, $sms_marketing or a custom attribute"
        ),
    ]
    wrong = destination(batch, project_key="project_other")
    problems = validate_connection(wrong, PROFILES)
    assert problems == []  # a 400 for the empty payload: the key itself was accepted
    bad = build_platform(
        "batch",
        {
            "service": "attributes",
            "rest_api_key": "nope",
            "project_key": "p",
            "base_url": f"{batch.url}/2.11",
        },
        destination="bt",
    )
    assert validate_connection(bad, PROFILES) == [
        (
            "destination 'bt' (batch): the platform refused the credentials (HTTP 401): "
            "AUTHENTICATION_INVALID: Invalid REST API key"
        )
    ]


def test_profiles_follow_the_segment_through_the_dagster_job(request, tmp_path: Path, monkeypatch):
    fake = BatchFake(KEY)
    destination_yaml = (
        f"bt:\n  type: batch\n  service: attributes\n  rest_api_key: {{env: BATCH_KEY}}\n"
        f"  project_key: project_shop\n  base_url: {fake.url}/2.11\n"
    )
    activations = (
        "to_bt:\n  segment: big\n  destination: bt\n  match: {custom_id: customer_id}\n"
        "  mapping: {first_name: firstname, email: $email_address}\n  sync_mode: mirror\n"
    )
    with crm_project(
        request, tmp_path, monkeypatch, fake, ("BATCH_KEY", KEY), destination_yaml, activations
    ) as env:
        fake.throttle(2)
        assert run_sync_job(env.defs, env.instance, "to_bt").success
        assert fake.attributes() == {
            "2": {"firstname": "Bob", "$email_address": "bob@example.com"},
            "3": {"firstname": "Cle", "$email_address": "cle@example.com"},
            "4": {"firstname": "Dan", "$email_address": "dan@example.com"},
        }
        sent = len(fake.requests)
        # Unmapped change (Dan's ltv), mapped change (Bob's name), Ann enters, Cle leaves.
        run(env.wh, "update raw.customers set ltv = 800 where customer_id = 4")
        run(env.wh, "update raw.customers set first_name = 'Robert' where customer_id = 2")
        run(env.wh, "update raw.customers set ltv = 650 where customer_id = 1")
        run(env.wh, "update raw.customers set ltv = 10 where customer_id = 3")
        assert run_sync_job(env.defs, env.instance, "to_bt").success
        ids = sorted(op["identifiers"]["custom_id"] for r in fake.requests[sent:] for op in r.json)
        assert ids == ["1", "2", "3"]
        assert fake.attributes() == {
            "1": {"firstname": "Ann", "$email_address": "ann@example.com"},
            "2": {"firstname": "Robert", "$email_address": "bob@example.com"},
            "3": {},
            "4": {"firstname": "Dan", "$email_address": "dan@example.com"},
        }
        for entry in logged(env.instance):
            assert KEY not in entry
        assert key_only_in_header(fake)


def test_a_killed_sync_is_recovered_by_the_next_with_nothing_lost(tmp_path: Path):
    cli = CliSync(tmp_path, "to_bt", {"BATCH_KEY": KEY})
    cli.seed(800, "'n' || i")
    with BatchFake(KEY, latency=0.1) as fake:
        cli.write(
            destinations=[(f"bt:\n  type: batch\n  service: attributes\n  max_concurrency: 1\n"
                           f"  rest_api_key: {{env: BATCH_KEY}}\n  project_key: project_shop\n"
                           f"  base_url: {fake.url}/2.11\n")],
            activations="to_bt:\n  segment: big\n  destination: bt\n  match: {custom_id: customer_id}\n"
                        "  mapping: {first_name: firstname}\n")  # fmt: skip
        # 4 calls of at most 200 operations, one at a time: killed when the second arrives.
        # settle: the call in flight at the kill is answered
        cli.kill_when(lambda: len(fake.requests) >= 2, settle=0.5)
        assert 0 < len(fake.profiles) < 800

        cli.recover()
        assert fake.attributes() == {str(i): {"firstname": f"n{i}"} for i in range(1, 801)}
        assert all(len(r.json) <= 200 for r in fake.requests)
        assert key_only_in_header(fake)
    assert cli.leftovers() == []
    assert not cli.in_home(KEY)


def test_sync_modes_batch_cannot_honour_are_refused_when_the_project_loads(
    tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("BATCH_REST_API_KEY", KEY)
    example = (
        "destinations:\n  bt: {type: batch, service: attributes, rest_api_key: {env: BATCH_REST_API_KEY}, "
        "project_key: project_shop}\n"
        "activations:\n  to_bt: {segment: vip_europe, destination: bt, match: {custom_id: customer_id}, "
        "mapping: {first_name: firstname}, sync_mode: insert}\n"
    )
    with pytest.raises(ProjectError) as info:
        load_example(tmp_path, example)
    assert str(info.value).splitlines()[1].strip() == (
        "- dinmo.yaml: activations.to_bt.sync_mode: found 'insert'; allowed for batch attributes: upsert, mirror"
    )


def test_the_readme_batch_examples_load(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("BATCH_REST_API_KEY", KEY)
    examples = readme_examples("**Batch (`type: batch`).**")
    assert len(examples) == 3
    for n, activation in enumerate(example_activations(tmp_path, examples)):
        assert activation.platform_service == ("attributes", "attributes", "events")[n]
