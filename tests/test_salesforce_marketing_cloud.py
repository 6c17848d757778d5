"""The Salesforce Marketing Cloud adapter through a fake Marketing Cloud built from its documentation
(tests/fakes/salesforce_marketing_cloud.py): the rows a data extension holds afterwards, the asynchronous
requests polled to completion and their failed rows mapped back to records, the JSON client-credentials
token (renewed when it expires), and that the client secret and the access token never show."""

from __future__ import annotations

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
from fakes.salesforce_marketing_cloud import Column, MarketingCloudFake
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
    InMemoryJournal,
    PlatformAuthError,
    PlatformConfigError,
    RetryPolicy,
    build_platform,
    deliver,
    preview,
    validate_connection,
)
from dinmo_dagster.platforms.salesforce_marketing_cloud import MarketingCloud

CLIENT_ID = "4x8rtz0mdq2kq9v3n1c7b6aw"
SECRET = "mcs_Qw3rTy8UiOp2AsDf5GhJkL9zXcVbNm0"
MID = "514009876"
FAST = RetryPolicy(max_attempts=3, initial_wait_seconds=0.01, max_wait_seconds=0.05)
ROWS = ActivationSpec(
    "mc",
    "customer_id",
    match={"SubscriberKey": "email"},
    mapping={"first_name": "FirstName", "ltv": "LifetimeValue"},
)
COLUMNS = (
    Column("SubscriberKey", "EmailAddress", primary_key=True, required=True),
    Column("FirstName", "Text", length=20),
    Column("LifetimeValue", "Decimal"),
)


@pytest.fixture
def mc():
    with MarketingCloudFake(client_id=CLIENT_ID, client_secret=SECRET, mid=MID, retry_after="0.05") as fake:
        fake.add_data_extension("Customers", *COLUMNS)
        yield fake


def destination(fake: MarketingCloudFake, **settings) -> MarketingCloud:
    raw = {
        "subdomain": "mc563885gzs27c5t9-63k636ttgm",
        "client_id": CLIENT_ID,
        "client_secret": SECRET,
        "account_id": MID,
        "data_extension_key": "Customers",
        "base_url": fake.url,
        "token_url": fake.token_url,
        "poll_interval_seconds": 0.01,
        **settings,
    }
    return built("salesforce_marketing_cloud", MarketingCloud, raw, "mc")


def customers(ids: list[int], **overrides) -> pa.RecordBatch:
    columns = {
        "customer_id": ids,
        "email": [f"customer{i}@example.com" for i in ids],
        "first_name": [f"Name{i}" for i in ids],
        "ltv": [f"{i}.50" for i in ids],
    }
    columns.update(overrides)
    return pa.record_batch(columns)


def no_secret(fake: MarketingCloudFake) -> bool:
    """The client secret only goes to the token endpoint; access tokens only in Authorization headers."""
    for r in fake.requests:
        text = r.raw_body.decode() + r.path + json.dumps(r.query)
        assert SECRET not in text and not any(t in text for t in fake.tokens)
    return True


def test_rows_are_upserted_asynchronously_and_polled_to_completion(mc):
    mc.data_extensions["Customers"].rows[("customer2@example.com",)] = {
        "SubscriberKey": "customer2@example.com",
        "FirstName": "Old",
        "LifetimeValue": "1",
    }
    result = deliver(
        destination(mc),
        ROWS,
        {"upsert": [customers([1, 2, 3], first_name=["Name1", None, "Name3"])]},
        InMemoryJournal(),
    )

    assert mc.rows("Customers") == {
        f"customer{i}@example.com": {
            "SubscriberKey": f"customer{i}@example.com",
            "FirstName": name,
            "LifetimeValue": f"{i}.50",
        }
        for i, name in ((1, "Name1"), (2, None), (3, "Name3"))  # a NULL empties the column
    }
    put = mc.requests[0]
    assert (put.method, put.path) == ("PUT", "/data/v1/async/dataextensions/key:Customers/rows")
    assert put.json["items"][0] == {
        "SubscriberKey": "customer1@example.com",
        "FirstName": "Name1",
        "LifetimeValue": "1.50",
    }
    request_id = put.json and next(iter(mc.async_requests))
    assert [r.path for r in mc.requests[1:]] == [f"/data/v1/async/{request_id}/status"] * 2
    (token,) = mc.token_requests
    assert token.json == {
        "grant_type": "client_credentials",
        "client_id": CLIENT_ID,
        "client_secret": SECRET,
        "account_id": MID,
    }
    assert (result.accepted, result.rejected) == (3, 0)
    assert no_secret(mc)


def test_failed_rows_are_isolated_rejected_with_marketing_clouds_message_and_sent_by_the_next_sync(mc):
    mc.fail_rows("The value for column 'FirstName' is not valid.", "customer2@example.com")
    journal = InMemoryJournal()
    batch = customers([1, 2, 3, 4], first_name=["Name1", "Name2", "Name3", "A very long first name indeed"])
    result = deliver(destination(mc), ROWS, {"upsert": [batch]}, journal)

    assert sorted(journal.rejections) == [
        ("2", "upsert", "The value for column 'FirstName' is not valid."),
        ("4", "upsert", "The value for column 'FirstName' exceeds its length of 20."),
    ]
    assert sorted(journal.acknowledged_keys["upsert"]) == ["1", "3"]
    assert set(mc.rows("Customers")) == {"customer1@example.com", "customer3@example.com"}
    assert result.reasons == {"UnexpectedError": 2}
    # the next sync sends them again (Marketing Cloud takes 2 now; 4's name fixed in the warehouse)
    mc.heal_rows()
    again = deliver(destination(mc), ROWS, {"upsert": [customers([2, 4])]}, InMemoryJournal())
    assert again.accepted == 2 and len(mc.rows("Customers")) == 4


def test_insert_creates_new_rows_and_leaves_existing_ones_alone(mc):
    mc.data_extensions["Customers"].rows[("customer2@example.com",)] = {
        "SubscriberKey": "customer2@example.com",
        "FirstName": "Kept",
        "LifetimeValue": "1",
    }
    result = deliver(destination(mc), ROWS, {"insert": [customers([1, 2, 3])]}, InMemoryJournal())
    assert mc.rows("Customers")["customer2@example.com"]["FirstName"] == "Kept"
    assert set(mc.rows("Customers")) == {f"customer{i}@example.com" for i in (1, 2, 3)}
    assert (result.accepted, result.rejected) == (3, 0)
    assert mc.requests[0].method == "POST"
    with pytest.raises(PlatformConfigError, match="allowed: upsert, insert"):
        deliver(destination(mc), ROWS, {"delete": [customers([1])]}, InMemoryJournal())


def test_a_429_storm_is_ridden_out_with_retry_after(mc):
    mc.throttle(5)
    result = deliver(destination(mc), ROWS, {"upsert": [customers([1, 2])]}, InMemoryJournal(), retry=FAST)
    assert result.accepted == 2 and result.retries == 5
    assert [s for m, p, s in mc.answers if p != "/v2/token"][:6] == [429] * 5 + [202]


def test_an_expired_token_is_renewed_mid_sync(mc):
    platform = destination(mc)
    platform.limits = platform.limits.__class__(**{**platform.limits.__dict__, "max_records_per_batch": 2})
    mc.expire_tokens_after(4)
    result = deliver(platform, ROWS, {"upsert": [customers([1, 2, 3, 4, 5, 6])]}, InMemoryJournal())
    assert result.accepted == 6 and len(mc.token_requests) == 2
    # the workers that used the expired token got one 401 each, and share the one new token
    assert 1 <= [s for _, _, s in mc.answers].count(401) <= 4
    assert no_secret(mc)


def test_a_refused_client_stops_at_once_and_the_secret_never_shows(mc):
    with pytest.raises(PlatformAuthError) as info:
        deliver(
            destination(mc, client_secret="wrong" + SECRET),
            ROWS,
            {"upsert": [customers([1])]},
            InMemoryJournal(),
        )
    assert str(info.value) == (
        "destination 'mc' (salesforce_marketing_cloud): the token endpoint refused the client credentials "
        "(HTTP 401 invalid_client: Client authentication failed.); check client_id and client_secret"
    )
    assert mc.requests == [] and SECRET not in str(info.value)


def test_settings_errors_name_the_key_and_what_is_allowed():
    with pytest.raises(PlatformConfigError) as info:
        build_platform(
            "salesforce_marketing_cloud",
            {
                "subdomain": "https://x.rest.marketingcloudapis.com",
                "client_id": CLIENT_ID,
                "client_secret": SECRET,
                "account_id": "BU-1",
                "data_extension_key": "a/b",
            },
            destination="mc",
        )
    assert str(info.value).splitlines() == [
        (
            "destinations.mc.subdomain: found 'https://x.rest.marketingcloudapis.com'; allowed: the tenant subdomain "
            "alone (mc563885gzs27c5t9-63k636ttgm for https://mc563885gzs27c5t9-63k636ttgm.rest.marketingcloudapis.com)"
        ),
        "destinations.mc.account_id: found 'BU-1'; allowed: the business unit's MID (digits)",
        "destinations.mc.data_extension_key: found 'a/b'; allowed: a data extension's external key (no / or ?)",
    ]
    with pytest.raises(PlatformConfigError) as info:
        build_platform(
            "salesforce_marketing_cloud", {"subdomain": "abc", "client_id": CLIENT_ID}, destination="mc"
        )
    assert str(info.value).splitlines() == [
        "destinations.mc.client_secret: Field required",
        "destinations.mc.data_extension_key: Field required",
    ]


def test_preview_masks_identifiers_and_sends_nothing(mc):
    shown = preview(destination(mc), ROWS, {"upsert": [customers([1, 2])]})
    assert mc.answers == []
    assert "customer1@example.com" not in json.dumps([p.body for p in shown])


def test_validate_connect_checks_the_data_extension_and_its_columns(mc):
    platform = destination(mc)
    deliver(platform, ROWS, {"upsert": [customers([1])]}, InMemoryJournal())
    assert validate_connection(platform, ROWS) == []
    typo = ActivationSpec("mc", "customer_id", match={"SubscriberKey": "email"}, mapping={"x": "Firstname_"})
    assert validate_connection(platform, typo) == [
        "mapping.x: no column 'Firstname_' in Marketing Cloud data extension 'Customers'; did you mean 'firstname'?"
    ]
    assert validate_connection(destination(mc, data_extension_key="Nope"), ROWS) == [
        (
            "destination 'mc' (salesforce_marketing_cloud): reading Marketing Cloud data extension 'Nope' failed with "
            "HTTP 404: Data extension not found or not accessible (errorcode 10000)"
        )
    ]


def test_rows_follow_the_segment_through_the_dagster_job(request, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("MC_SECRET", SECRET)
    fake = MarketingCloudFake(client_id=CLIENT_ID, client_secret=SECRET, mid=MID, retry_after="0.05")
    fake.add_data_extension(
        "Customers",
        Column("CustomerId", "Number", primary_key=True),
        Column("FirstName", "Text", length=4),
        Column("Email", "EmailAddress"),
    )
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
                        f"mc:\n  type: salesforce_marketing_cloud\n  subdomain: mc563885gzs27c5t9\n  client_id: {CLIENT_ID}\n"
                        f"  client_secret: {{env: MC_SECRET}}\n  account_id: '{MID}'\n  data_extension_key: Customers\n"
                        f"  poll_interval_seconds: 0.01\n  base_url: {fake.url}\n  token_url: {fake.token_url}\n"
                    )
                ],
                activations="to_mc:\n  segment: big\n  destination: mc\n  match: {CustomerId: customer_id}\n"
                "  mapping: {first_name: FirstName, email: Email}\n  max_rejected_pct: 50\n",
            )
        )
        with open_project(tmp_path) as (project, _resources, wh):
            create_customers(wh, SEED)
            run(wh, "update raw.customers set first_name = 'Cleopatra' where customer_id = 3")  # too long
            defs = build_definitions(project)
            fake.throttle(2)
            assert run_sync_job(defs, instance, "to_mc").success
            assert {k: r["FirstName"] for k, r in fake.rows("Customers").items()} == {"2": "Bob", "4": "Dan"}
            # Cle's name fixed, Bob's changes, Dan's unmapped ltv changes: the next request holds Cle and Bob
            run(wh, "update raw.customers set first_name = 'Cle' where customer_id = 3")
            run(wh, "update raw.customers set first_name = 'Rob' where customer_id = 2")
            run(wh, "update raw.customers set ltv = 650 where customer_id = 4")
            assert run_sync_job(defs, instance, "to_mc").success
            last = [r for r in fake.requests if r.method == "PUT"][-1]
            assert sorted(i["CustomerId"] for i in last.json["items"]) == ["2", "3"]
            assert {k: r["FirstName"] for k, r in fake.rows("Customers").items()} == {
                "2": "Rob",
                "3": "Cle",
                "4": "Dan",
            }
            for entry in logged(instance):
                assert SECRET not in entry and not any(t in entry for t in fake.tokens)
        assert main(["--project", str(tmp_path), "validate", "--connect"]) == 0
    assert no_secret(fake)


def test_a_killed_sync_is_recovered_by_the_next_with_nothing_lost(tmp_path: Path):
    cli = CliSync(tmp_path, "to_mc", {"MC_SECRET": SECRET})
    cli.seed(1500, "'n' || i")
    with MarketingCloudFake(client_id=CLIENT_ID, client_secret=SECRET) as fake:
        fake.add_data_extension(
            "Customers", Column("CustomerId", "Number", primary_key=True), Column("FirstName")
        )
        cli.write(
            destinations=[
                (
                    f"mc:\n  type: salesforce_marketing_cloud\n  subdomain: mc563885gzs27c5t9\n"
                    f"  client_id: {CLIENT_ID}\n  client_secret: {{env: MC_SECRET}}\n  max_concurrency: 1\n"
                    f"  data_extension_key: Customers\n  poll_interval_seconds: 0.2\n"
                    f"  base_url: {fake.url}\n  token_url: {fake.token_url}\n"
                )
            ],
            activations="to_mc:\n  segment: big\n  destination: mc\n  match: {CustomerId: customer_id}\n"
            "  mapping: {first_name: FirstName}\n",
        )
        # 3 requests of 500 rows: killed once the first one was applied.
        cli.kill_when(lambda: fake.data_extensions["Customers"].rows)
        assert 0 < len(fake.rows("Customers")) < 1500

        cli.recover()
        assert set(fake.rows("Customers")) == {str(i) for i in range(1, 1501)}
        assert all(len(r.json["items"]) <= 500 for r in fake.requests if r.method == "PUT")
        assert no_secret(fake)
    assert not cli.in_home(SECRET)


def test_the_readme_marketing_cloud_example_loads(tmp_path: Path, monkeypatch) -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    marker = "**Salesforce Marketing Cloud (`type: salesforce_marketing_cloud`).**"
    if marker not in readme:
        pytest.skip("the README has no Salesforce Marketing Cloud paragraph yet")
    monkeypatch.setenv("SFMC_CLIENT_SECRET", SECRET)
    section = readme.split(marker, 1)[1].split("\n**", 1)[0]
    (example,) = [part.split("```", 1)[0] for part in section.split("```yaml\n")[1:]]
    (tmp_path / "dinmo.yaml").write_text(
        "sources:\n  warehouse: {type: duckdb, path: data/warehouse.duckdb}\n"
        "models:\n  customers: {source: warehouse, table: raw.customers, primary_key: customer_id}\n"
        'segments:\n  vip_europe: {model: customers, sql: "select * from {{ model }}"}\n' + example
    )
    (activation,) = load_project(tmp_path).activations.values()
    assert activation.platform_service == "attributes"
