"""The Zendesk adapter through a fake Zendesk built from Zendesk's documentation (tests/fakes/zendesk.py):
the users and custom object records Zendesk holds afterwards, its job results mapped back to records,
and that the API token never shows anywhere but in the Authorization header."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pytest
from attribute_scenarios import (
    CliSync,
    built,
    logged,
)
from fakes.zendesk import ZendeskFake
from platform_scenarios import (
    SEED,
    create_customers,
    open_project,
    project_yaml,
    run,
    run_sync_job,
    warehouse_source,
)

from dinmo_dagster.cli import main
from dinmo_dagster.config import load_project
from dinmo_dagster.definitions import build_definitions
from dinmo_dagster.platforms import (
    ActivationSpec,
    HttpResponse,
    InMemoryJournal,
    PlatformAuthError,
    PlatformConfigError,
    RetryPolicy,
    Transport,
    build_platform,
    deliver,
    preview,
    validate_connection,
)
from dinmo_dagster.platforms.zendesk import Zendesk

EMAIL = "sync@acme.example"
TOKEN = "zdt_6Hq2vK9pLm3Xw8RtY4bN1cF7sJ0aE5dG"
BASIC = base64.b64encode(f"{EMAIL}/token:{TOKEN}".encode()).decode()
FAST = RetryPolicy(max_attempts=3, initial_wait_seconds=0.01, max_wait_seconds=0.05)
USERS = ActivationSpec(
    "zd",
    "customer_id",
    match={"email": "email", "external_id": "crm_id"},
    mapping={"first_name": "name", "tier": "tier", "ltv": "user_fields.lifetime_value"},
)
CARS = ActivationSpec(
    "zd", "customer_id", match={"external_id": "crm_id"}, mapping={"first_name": "name", "ltv": "ltv"}
)


@pytest.fixture
def zendesk():
    with ZendeskFake(EMAIL, TOKEN, retry_after="0.05") as fake:
        fake.add_user_field("tier")
        fake.add_user_field("lifetime_value", "decimal")
        yield fake


def destination(fake: ZendeskFake, **settings) -> Zendesk:
    raw = {
        "subdomain": "acme",
        "email": EMAIL,
        "api_token": TOKEN,
        "base_url": fake.url,
        "poll_interval_seconds": 0.01,
        **settings,
    }
    return built("zendesk", Zendesk, raw, "zd")


def customers(ids: list[int], **overrides) -> pa.RecordBatch:
    columns = {
        "customer_id": ids,
        "email": [f"Customer{i}@Example.com " for i in ids],
        "crm_id": [f"crm-{i}" for i in ids],
        "first_name": [f"Name{i}" for i in ids],
        "tier": ["gold" for _ in ids],
        "ltv": [i + 0.5 for i in ids],
    }
    columns.update(overrides)
    return pa.record_batch(columns)


def no_token(fake: ZendeskFake) -> bool:
    """The token (and its base64 form) only ever travels in the Authorization header."""
    for r in fake.requests:
        text = r.raw_body.decode() + r.path + json.dumps(r.query)
        assert TOKEN not in text and BASIC not in text
    return True


# --------------------------------------------------------------------------------------------------
# users
# --------------------------------------------------------------------------------------------------


def test_users_are_upserted_by_a_job_polled_to_completion_with_their_properties_and_user_fields(zendesk):
    zendesk.add_user(
        email="customer2@example.com", properties={"name": "Old"}, user_fields={"tier": "silver"}
    )
    result = deliver(
        destination(zendesk),
        USERS,
        {"upsert": [customers([1, 2, 3], tier=["gold", None, "gold"])]},
        InMemoryJournal(),
    )

    held = {e: (u.external_id, u.properties, u.user_fields) for e, u in zendesk.live().items()}
    assert held == {
        "customer1@example.com": ("crm-1", {"name": "Name1"}, {"tier": "gold", "lifetime_value": 1.5}),
        # a NULL clears the field (null_values: sync)
        "customer2@example.com": ("crm-2", {"name": "Name2"}, {"tier": None, "lifetime_value": 2.5}),
        "customer3@example.com": ("crm-3", {"name": "Name3"}, {"tier": "gold", "lifetime_value": 3.5}),
    }
    assert zendesk.requests[0].json["users"][0] == {
        "email": "customer1@example.com",
        "external_id": "crm-1",
        "name": "Name1",
        "user_fields": {"tier": "gold", "lifetime_value": 1.5},
    }
    assert zendesk.requests[0].headers["authorization"] == f"Basic {BASIC}"
    assert [r.path for r in zendesk.requests[1:]] == [f"/api/v2/job_statuses/{next(iter(zendesk.jobs))}"] * 2
    assert (result.accepted, result.rejected) == (3, 0)
    assert no_token(zendesk)


def test_failed_results_reject_their_records_with_zendesks_details_and_the_next_sync_sends_them(zendesk):
    zendesk.fail(
        "UserUpdateError",
        "Email: customer2@example.com is already being used by another user",
        "customer2@example.com",
    )
    journal = InMemoryJournal()
    result = deliver(destination(zendesk), USERS, {"upsert": [customers([1, 2, 3])]}, journal)
    assert journal.rejections == [
        ("2", "upsert", "Email: customer2@example.com is already being used by another user")
    ]
    assert sorted(journal.acknowledged_keys["upsert"]) == ["1", "3"]
    assert result.reasons == {"UserUpdateError": 1}
    # a user Zendesk cannot create (no name) is rejected with Zendesk's reason, not lost
    journal = InMemoryJournal()
    deliver(destination(zendesk), USERS, {"upsert": [customers([2, 4], first_name=["Name2", None])]}, journal)
    assert journal.rejections == [("4", "upsert", "Name: is too short (minimum 1)")]
    assert set(zendesk.live()) == {f"customer{i}@example.com" for i in (1, 2, 3)}


def test_an_identifier_change_and_a_mirror_delete_soft_delete_by_external_id(zendesk):
    platform = destination(zendesk)
    deliver(platform, USERS, {"upsert": [customers([1, 2, 3])]}, InMemoryJournal())
    # 3 changes its e-mail (same external id: the user is updated), 1 leaves the segment
    deliver(platform, USERS, {"upsert": [customers([3], email=["new3@example.com"])]}, InMemoryJournal())
    result = deliver(platform, USERS, {"delete": [customers([1, 9])]}, InMemoryJournal())
    assert set(zendesk.live()) == {"customer2@example.com", "new3@example.com"}
    assert [u.email for u in zendesk.users.values() if u.deleted] == ["customer1@example.com"]
    # crm-9 was never in Zendesk: nothing left to delete, done
    assert (result.accepted, result.rejected) == (2, 0)
    assert zendesk.requests[-3].query == {"external_ids": "crm-1,crm-9"}

    by_email = ActivationSpec("zd", "customer_id", match={"email": "email"}, mapping={"first_name": "name"})
    with pytest.raises(PlatformConfigError, match="allowed: match with external_id"):
        deliver(platform, by_email, {"delete": [customers([2])]}, InMemoryJournal())


def test_batches_hold_at_most_100_users_and_the_fake_refuses_more(zendesk):
    deliver(destination(zendesk), USERS, {"upsert": [customers(list(range(1, 251)))]}, InMemoryJournal())
    sizes = sorted(len(r.json["users"]) for r in zendesk.requests if r.method == "POST")
    assert sizes == [50, 100, 100] and len(zendesk.live()) == 250
    import requests

    answer = requests.post(
        f"{zendesk.url}/api/v2/users/create_or_update_many",
        timeout=5,
        json={"users": [{"email": f"u{i}@x.io", "name": "u"} for i in range(101)]},
        headers={"Authorization": f"Basic {BASIC}"},
    )
    assert answer.status_code == 400 and answer.json()["error"] == "TooManyValues"


def test_a_429_storm_is_ridden_out_with_retry_after(zendesk):
    zendesk.throttle(5)
    platform = destination(zendesk)
    result = deliver(platform, USERS, {"upsert": [customers([1, 2])]}, InMemoryJournal(), retry=FAST)
    assert result.accepted == 2 and result.retries == 5
    assert [s for _, _, s in zendesk.answers][:6] == [429] * 5 + [200]


def test_the_accounts_rate_limit_from_x_rate_limit_is_followed_up_to_2500_a_minute(zendesk):
    def adopted(platform: Zendesk, limit: str) -> tuple[int, float]:
        transport = Transport(platform)
        platform.observe(HttpResponse(200, {"x-rate-limit": limit}, b""), transport.limiter)
        return transport.limiter.max_requests, transport.limiter.window_seconds

    assert destination(zendesk).effective_limits().requests_per_window == 10  # 200 a minute to start
    assert adopted(destination(zendesk), "700") == (35, 3.0)
    assert adopted(destination(zendesk), "10") == (10, 60.0)  # legacy Essential plan
    assert adopted(destination(zendesk), "9000") == (125, 3.0)  # never above 2,500 a minute


def test_wrong_credentials_stop_at_once_and_the_token_never_shows(zendesk):
    platform = build_platform(
        "zendesk",
        {"subdomain": "acme", "email": EMAIL, "api_token": "wrong" + TOKEN, "base_url": zendesk.url},
        destination="zd",
    )
    with pytest.raises(PlatformAuthError) as info:
        deliver(platform, USERS, {"upsert": [customers([1])]}, InMemoryJournal())
    assert str(info.value) == (
        "destination 'zd' (zendesk): the platform refused the credentials (HTTP 401): Couldn't authenticate you"
    )
    assert len(zendesk.requests) == 1 and TOKEN not in str(info.value)


def test_an_account_without_bulk_imports_stops_with_zendesks_message():
    with ZendeskFake(EMAIL, TOKEN, imports_enabled=False) as fake, pytest.raises(PlatformAuthError) as info:
        deliver(destination(fake), USERS, {"upsert": [customers([1])]}, InMemoryJournal())
    assert str(info.value) == (
        "destination 'zd' (zendesk): the platform refused the credentials (HTTP 403): Data imports are not enabled"
    )


def test_an_oauth_token_is_sent_as_bearer():
    with ZendeskFake(EMAIL, TOKEN, oauth_token="oa-123") as fake:
        platform = build_platform(
            "zendesk",
            {
                "subdomain": "acme",
                "oauth_token": "oa-123",
                "base_url": fake.url,
                "poll_interval_seconds": 0.01,
            },
            destination="zd",
        )
        spec = ActivationSpec("zd", "customer_id", match={"email": "email"}, mapping={"first_name": "name"})
        assert deliver(platform, spec, {"upsert": [customers([1])]}, InMemoryJournal()).accepted == 1
        assert {r.headers["authorization"] for r in fake.requests} == {"Bearer oa-123"}


# --------------------------------------------------------------------------------------------------
# custom objects
# --------------------------------------------------------------------------------------------------


def test_custom_object_records_are_upserted_and_deleted_by_external_id(zendesk):
    zendesk.add_custom_object("customer_value", "ltv")
    platform = destination(zendesk, object="custom_object", custom_object_key="customer_value")
    zendesk.fail("RecordInvalid", "Ltv: is invalid", "crm-2")
    journal = InMemoryJournal()
    deliver(platform, CARS, {"upsert": [customers([1, 2, 3])]}, journal)
    assert journal.rejections == [("2", "upsert", "Ltv: is invalid")]
    assert {k: (r.name, r.fields) for k, r in zendesk.records("customer_value").items()} == {
        "crm-1": ("Name1", {"ltv": 1.5}),
        "crm-3": ("Name3", {"ltv": 3.5}),
    }
    assert zendesk.requests[0].json == {
        "job": {
            "action": "create_or_update_by_external_id",
            "items": [
                {"external_id": f"crm-{i}", "name": f"Name{i}", "custom_object_fields": {"ltv": i + 0.5}}
                for i in (1, 2, 3)
            ],
        }
    }

    deliver(platform, CARS, {"upsert": [customers([2])]}, InMemoryJournal())  # the next sync: retried
    result = deliver(platform, CARS, {"delete": [customers([1, 7])]}, InMemoryJournal())
    assert set(zendesk.records("customer_value")) == {"crm-2", "crm-3"}
    assert result.accepted == 2


# --------------------------------------------------------------------------------------------------
# settings, preview, validate --connect
# --------------------------------------------------------------------------------------------------


def test_settings_errors_name_the_key_and_what_is_allowed():
    with pytest.raises(PlatformConfigError) as info:
        build_platform(
            "zendesk",
            {"subdomain": "acme.zendesk.com", "object": "users", "custom_object_key": "car", "email": EMAIL},
            destination="zd",
        )
    assert str(info.value).splitlines() == [
        (
            "destinations.zd.subdomain: found 'acme.zendesk.com'; allowed: the account's subdomain alone "
            "(acme for https://acme.zendesk.com)"
        ),
        "destinations.zd.custom_object_key: found 'car'; allowed only with object: custom_object",
        (
            "destinations.zd.oauth_token: found nothing; allowed: email and api_token (an API token), or "
            "oauth_token (an OAuth access token)"
        ),
    ]
    with pytest.raises(PlatformConfigError) as info:
        build_platform(
            "zendesk", {"subdomain": "acme", "object": "tickets", "oauth_token": "x"}, destination="zd"
        )
    assert str(info.value).startswith("destinations.zd.object: Input should be 'users' or 'custom_object'")


def test_preview_masks_identifiers_and_sends_nothing(zendesk):
    shown = preview(destination(zendesk), USERS, {"upsert": [customers([1])], "delete": [customers([2])]})
    assert zendesk.requests == []
    text = json.dumps([(p.body, p.params) for p in shown])
    assert "customer1@example.com" not in text and "crm-1" not in text and "crm-2" not in text
    assert shown[1].params == {"external_ids": "<external ids>"}


def test_validate_connect_checks_credentials_and_mapped_fields_against_the_schema(zendesk):
    assert validate_connection(destination(zendesk), USERS) == []
    bad = ActivationSpec(
        "zd", "customer_id", match={"phone": "phone"}, mapping={"a": "role", "b": "lifetime_valu"}
    )
    assert validate_connection(destination(zendesk), bad) == [
        "match.phone: Zendesk users have no identifier 'phone'; allowed: email, external_id",
        "mapping.a: found 'role'; not synced (a segment never makes agents or admins)",
        "mapping.b: no field 'lifetime_valu' in Zendesk users; did you mean 'lifetime_value'?",
    ]
    missing = destination(zendesk, object="custom_object", custom_object_key="nope")
    assert validate_connection(missing, CARS) == [
        (
            "destination 'zd' (zendesk): reading /api/v2/custom_objects/nope/fields failed with HTTP 404: "
            "Custom object nope not found"
        )
    ]


# --------------------------------------------------------------------------------------------------
# the Dagster job on DuckDB, and a killed sync
# --------------------------------------------------------------------------------------------------


def test_users_follow_the_segment_through_the_dagster_job(request, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("ZENDESK_TOKEN", TOKEN)
    fake = ZendeskFake(EMAIL, TOKEN, retry_after="0.05")
    fake.add_user_field("ltv", "decimal")
    with (
        warehouse_source("duckdb", request, tmp_path, monkeypatch) as source,
        fake,
        dg.DagsterInstance.ephemeral() as instance,
    ):
        (tmp_path / "dinmo.yaml").write_text(
            project_yaml(
                source,
                destinations=[
                    (
                        f"zd:\n  type: zendesk\n  subdomain: acme\n  email: {EMAIL}\n  api_token: {{env: ZENDESK_TOKEN}}\n"
                        f"  poll_interval_seconds: 0.01\n  base_url: {fake.url}\n"
                    )
                ],
                activations="to_zd:\n  segment: big\n  destination: zd\n  sync_mode: upsert\n  match: {email: email}\n"
                "  mapping: {first_name: name}\n  max_rejected_pct: 50\n",
            )
        )
        with open_project(tmp_path) as (project, _resources, wh):
            create_customers(wh, SEED)
            defs = build_definitions(project)
            fake.fail("UserUpdateError", "Phone: is invalid", "cle@example.com")
            fake.throttle(2)
            assert run_sync_job(defs, instance, "to_zd").success
            assert {e: u.properties for e, u in fake.live().items()} == {
                "bob@example.com": {"name": "Bob"},
                "dan@example.com": {"name": "Dan"},
            }
            # a mapped change (Bob's name) and an unmapped one (Dan's ltv): the next job holds Cle (rejected
            # last time) and Bob, not Dan
            run(wh, "update raw.customers set first_name = 'Robert' where customer_id = 2")
            run(wh, "update raw.customers set ltv = 650 where customer_id = 4")
            assert run_sync_job(defs, instance, "to_zd").success
            last = [r for r in fake.requests if r.method == "POST"][-1]
            assert {u["email"] for u in last.json["users"]} == {"bob@example.com", "cle@example.com"}
            assert {e: u.properties["name"] for e, u in fake.live().items()} == {
                "bob@example.com": "Robert",
                "cle@example.com": "Cle",
                "dan@example.com": "Dan",
            }
            for entry in logged(instance):
                assert TOKEN not in entry and BASIC not in entry
        assert main(["--project", str(tmp_path), "validate", "--connect"]) == 0
    assert no_token(fake)


def test_a_killed_sync_is_recovered_by_the_next_with_nothing_lost_or_duplicated(tmp_path: Path):
    cli = CliSync(tmp_path, "to_zd", {"ZENDESK_TOKEN": TOKEN})
    cli.seed(600, "'n' || i")
    with ZendeskFake(EMAIL, TOKEN, latency=0.05) as fake:
        cli.write(
            destinations=[
                (
                    f"zd:\n  type: zendesk\n  subdomain: acme\n  email: {EMAIL}\n  max_concurrency: 1\n"
                    f"  api_token: {{env: ZENDESK_TOKEN}}\n  poll_interval_seconds: 0.01\n  base_url: {fake.url}\n"
                )
            ],
            activations="to_zd:\n  segment: big\n  destination: zd\n  match: {email: email}\n"
            "  mapping: {first_name: name}\n",
        )
        # 6 jobs of 100 users: killed once two of them completed.
        cli.kill_when(lambda: fake.completed_jobs() >= 2, settle=0.3)
        assert 0 < len(fake.users) < 600

        cli.recover()
        # every user once: the upsert matched the users the dead sync had created
        assert len(fake.users) == 600
        assert {u.email for u in fake.users.values()} == {f"c{i}@example.com" for i in range(1, 601)}
        assert all(len(r.json["users"]) <= 100 for r in fake.requests if r.method == "POST")
        assert no_token(fake)
    assert not cli.in_home(TOKEN)


def test_the_readme_zendesk_examples_load(tmp_path: Path, monkeypatch) -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    marker = "**Zendesk (`type: zendesk`).**"
    if marker not in readme:
        pytest.skip("the README has no Zendesk paragraph yet")
    monkeypatch.setenv("ZENDESK_API_TOKEN", TOKEN)
    section = readme.split(marker, 1)[1].split("\n**", 1)[0]
    examples = [part.split("```", 1)[0] for part in section.split("```yaml\n")[1:]]
    assert len(examples) == 2
    for n, example in enumerate(examples):
        (tmp_path / str(n)).mkdir()
        (tmp_path / str(n) / "dinmo.yaml").write_text(
            "sources:\n  warehouse: {type: duckdb, path: data/warehouse.duckdb}\n"
            "models:\n  customers: {source: warehouse, table: raw.customers, primary_key: customer_id}\n"
            'segments:\n  vip_europe: {model: customers, sql: "select * from {{ model }}"}\n' + example
        )
        (activation,) = load_project(tmp_path / str(n)).activations.values()
        assert activation.platform_service == "attributes"
