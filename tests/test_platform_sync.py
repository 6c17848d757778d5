"""Activations to API platforms synced end to end through the real Dagster sync job, on DuckDB and on
the real PostgreSQL server: HubSpot contacts (tests/fakes/hubspot.py) and a Meta custom audience
(tests/fakes/meta_ads.py). What the platform holds after each sync, what the warehouse keeps for
rejected records, and that the tokens never reach Dagster's event log or metadata."""

from __future__ import annotations

import contextlib
import hashlib
import json
import textwrap
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import dagster as dg
import platform_scenarios
import pytest
from fakes.braze import BrazeFake
from fakes.hubspot import FakeHubSpot
from fakes.meta_ads import MetaAdsFake
from google.cloud import firestore
from platform_scenarios import (
    create_customers,
    destination,
    open_project,
    project_yaml,
    run,
    run_sync_job,
    warehouse_source,
)

from dinmo_dagster.cli import main
from dinmo_dagster.config import load_project
from dinmo_dagster.definitions import build_definitions
from dinmo_dagster.names import activation_key
from dinmo_dagster.state import SyncStateStore

HUBSPOT_TOKEN = "pat-na1-0f4e2d9c-1b7a-4c3e-8d5f-6a9b0c1d2e3f"
META_TOKEN = "EAAGm0PX4ZCpsBAKZB9e8d7c6b5a4f3e2d1c0b9a8f7e6"
BRAZE_KEY = "braze-rest-7c1e9a2b-3d4f-4a5b-8c6d-0e1f2a3b4c5d"
SEED = [*platform_scenarios.SEED, (5, "not-an-email", "Eve", "510.00")]  # Eve: HubSpot rejects her


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@contextlib.contextmanager
def platform_project(kind: str, request, tmp_path: Path, monkeypatch, max_rejected_pct: int = 50
                     ) -> Iterator[SimpleNamespace]:
    """The project on a `kind` warehouse (duckdb or postgres), with its customers table, the fakes serving."""
    monkeypatch.setenv("HUBSPOT_TOKEN", HUBSPOT_TOKEN)
    monkeypatch.setenv("META_TOKEN", META_TOKEN)
    monkeypatch.setenv("BRAZE_API_KEY", BRAZE_KEY)
    with warehouse_source(kind, request, tmp_path, monkeypatch) as source, \
            FakeHubSpot(HUBSPOT_TOKEN) as hubspot, MetaAdsFake(META_TOKEN, ad_account_id="act_1234") as meta, \
            BrazeFake(BRAZE_KEY) as braze, dg.DagsterInstance.ephemeral() as instance:
        (tmp_path / "dinmo.yaml").write_text(project_yaml(source, destinations=[
            destination("crm", "hubspot", "attributes", hubspot.url, object="contacts"),
            destination("meta_vip", "meta_ads", "audiences", meta.url, ad_account_id="act_1234"),
            destination("braze_users", "braze", "attributes", braze.url),
        ], activations=f"""
            to_crm:
              segment: big
              destination: crm
              match: {{email: email}}
              mapping: {{first_name: firstname, ltv: lifetime_value}}
              sync_mode: mirror
              max_rejected_pct: {max_rejected_pct}
            to_meta:
              segment: big
              destination: meta_vip
              audience: {{name: "VIP Europe"}}
              identifiers: {{email: email}}
            to_braze:
              segment: big
              destination: braze_users
              match: {{external_id: customer_id}}
              mapping: {{first_name: first_name}}
              sync_mode: mirror
            """))
        with open_project(tmp_path) as (project, _, wh):
            create_customers(wh, SEED, note=True)
            yield SimpleNamespace(project=project, wh=wh, hubspot=hubspot, meta=meta, braze=braze, instance=instance,
                                  defs=build_definitions(project))


def do_sync(env: SimpleNamespace, activation: str) -> tuple[dg.ExecuteInProcessResult, dict]:
    """One run of the activation's sync job; its result and the activation's materialization metadata."""
    result = run_sync_job(env.defs, env.instance, activation)
    metadata: dict = {}
    for mat in result.asset_materializations_for_node(f"activations__{activation}"):
        if mat.asset_key == activation_key(activation):
            metadata = {k: v.value for k, v in mat.metadata.items()}
    return result, metadata


def contacts(fake: FakeHubSpot) -> dict[str, dict[str, str]]:
    return {k: {p: v for p, v in props.items() if p in ("firstname", "lifetime_value")}
            for k, props in fake.records("contacts").items()}


def assert_no_token_in_dagster(env: SimpleNamespace, *tokens: str) -> None:
    """Neither token in any event of any run: messages, materialization metadata, errors."""
    runs = env.instance.get_runs()
    assert runs
    for dagster_run in runs:
        for entry in env.instance.all_logs(dagster_run.run_id):
            text = repr(entry)
            assert not any(t in text for t in tokens)


@pytest.mark.parametrize("kind", ["duckdb", "postgres"])
def test_hubspot_mirror_first_sync_delta_leaving_records_and_a_rejected_record_retried(
        kind, request, tmp_path: Path, monkeypatch) -> None:
    with platform_project(kind, request, tmp_path, monkeypatch) as env:
        store = SyncStateStore(env.wh, "to_crm")
        # 1. First sync: the invalid e-mail is rejected by HubSpot, the other three are created.
        result, md = do_sync(env, "to_crm")
        assert result.success
        assert contacts(env.hubspot) == {
            "bob@example.com": {"firstname": "Bob", "lifetime_value": "900.00"},
            "cle@example.com": {"firstname": "Cle", "lifetime_value": "600.10"},
            "dan@example.com": {"firstname": "Dan", "lifetime_value": "700.00"},
        }
        assert (md["sync_type"], md["rows_added"], md["records_upsert"], md["accepted_upsert"],
                md["rejected_upsert"]) == ("full", 4, 4, 3, 1)
        # the metadata names the reason codes only, never a value
        assert (md["records_rejected"], md["top_rejection_reasons"]) == (1, "VALIDATION_ERROR INVALID_EMAIL (email) (1)")
        [rejection] = store.rejections()
        assert (rejection.record_key, rejection.operation, rejection.attempts) == ("5", "upsert", 1)
        assert rejection.reason.startswith("VALIDATION_ERROR: Property values were not valid: ")

        # 2. A mapped change (Bob's name), an unmapped one (Cle's note), Dan leaves the segment; Eve's
        # e-mail is still wrong: she is sent again, with her latest name, and rejected again.
        run(env.wh, "update raw.customers set first_name = 'Robert' where customer_id = 2")
        run(env.wh, "update raw.customers set note = 'changed' where customer_id = 3")
        run(env.wh, "update raw.customers set ltv = 10 where customer_id = 4")
        run(env.wh, "update raw.customers set first_name = 'Eva' where customer_id = 5")
        result, md = do_sync(env, "to_crm")
        assert result.success
        # Eve is new again (the baseline never took her), Bob updated, Cle unchanged (unmapped column), Dan removed
        assert (md["sync_type"], md["rows_added"], md["rows_updated"], md["rows_removed"]) == ("delta", 1, 1, 1)
        assert (md["records_upsert"], md["accepted_upsert"], md["rejected_upsert"]) == (2, 1, 1)
        assert (md["records_delete"], md["accepted_delete"]) == (1, 1)
        assert contacts(env.hubspot) == {
            "bob@example.com": {"firstname": "Robert", "lifetime_value": "900.00"},
            "cle@example.com": {"firstname": "Cle", "lifetime_value": "600.10"},
        }
        assert "dan@example.com" in {r["properties"]["email"] for r in env.hubspot.archived["contacts"].values()}
        [rejection] = store.rejections()
        assert (rejection.record_key, rejection.attempts) == ("5", 2)

        # 3. The e-mail is fixed in the warehouse: the next sync creates the contact and forgets the rejection.
        run(env.wh, "update raw.customers set email = 'eve@example.com' where customer_id = 5")
        result, md = do_sync(env, "to_crm")
        assert result.success
        assert (md["records_upsert"], md["accepted_upsert"], md["records_rejected"]) == (1, 1, 0)
        assert contacts(env.hubspot)["eve@example.com"] == {"firstname": "Eva", "lifetime_value": "510.00"}
        assert store.rejections() == []

        # 4. Nothing changed: nothing is sent.
        requests_before = len(env.hubspot.requests)
        result, md = do_sync(env, "to_crm")
        assert result.success and md["rows_added"] + md["rows_updated"] + md["rows_removed"] == 0
        assert len(env.hubspot.requests) == requests_before
        assert_no_token_in_dagster(env, HUBSPOT_TOKEN, META_TOKEN)


def test_a_rejection_rate_above_the_limit_fails_the_sync_and_keeps_the_baseline(
        request, tmp_path: Path, monkeypatch) -> None:
    with platform_project("duckdb", request, tmp_path, monkeypatch, max_rejected_pct=10) as env:
        result, _ = do_sync(env, "to_crm")
        assert not result.success
        failure = next(e for e in result.all_events if e.is_step_failure)
        assert ("destination 'crm' (hubspot): 1 of 4 records (25.0%) were rejected, above max_rejected_pct 10"
                in failure.step_failure_data.user_failure_data.description)
        store = SyncStateStore(env.wh, "to_crm")
        assert store.baseline() is None
        assert [(r.record_key, r.operation) for r in store.rejections()] == [("5", "upsert")]
        assert_no_token_in_dagster(env, HUBSPOT_TOKEN)


@pytest.mark.parametrize("kind", ["duckdb", "postgres"])
def test_meta_audience_follows_the_segment_with_hashed_identifiers_only(
        kind, request, tmp_path: Path, monkeypatch) -> None:
    with platform_project(kind, request, tmp_path, monkeypatch) as env:
        run(env.wh, "update raw.customers set email = 'eve@example.com' where customer_id = 5")
        result, md = do_sync(env, "to_meta")
        assert result.success
        audience = env.meta.audience_named("VIP Europe")
        assert audience is not None
        members = env.meta.member_hashes(audience.id)
        assert members == {sha(e) for e in ("bob@example.com", "cle@example.com", "dan@example.com",
                                             "eve@example.com")}
        assert md["records_replace"] == 4 and md["accepted_replace"] == 4

        # Dan leaves; Bob's e-mail changes: removed under the old hash, added under the new one.
        run(env.wh, "update raw.customers set ltv = 10 where customer_id = 4")
        run(env.wh, "update raw.customers set email = 'Robert@Example.com ' where customer_id = 2")
        run(env.wh, "update raw.customers set note = 'changed' where customer_id = 3")
        result, md = do_sync(env, "to_meta")
        assert result.success
        assert (md["rows_updated"], md["rows_removed"]) == (1, 1)
        assert (md["records_remove"], md["records_add"]) == (2, 1)
        assert env.meta.member_hashes(audience.id) == {
            sha(e) for e in ("robert@example.com", "cle@example.com", "eve@example.com")}
        # Raw e-mails never reached Meta: every request's parameters hold hashes only.
        sent = json.dumps([r.params for r in env.meta.requests])
        assert "@example.com" not in sent and "example.com" not in sent.lower()
        assert_no_token_in_dagster(env, HUBSPOT_TOKEN, META_TOKEN)


def test_dinmo_preview_prints_operation_counts_and_masked_request_bodies_sending_nothing(
        request, tmp_path: Path, monkeypatch, capsys) -> None:
    with platform_project("duckdb", request, tmp_path, monkeypatch) as env:
        run(env.wh, "update raw.customers set email = 'eve@example.com' where customer_id = 5")
        assert main(["--project", str(tmp_path), "preview", "to_crm"]) == 0
        out = capsys.readouterr().out
        assert ("preview to_crm: full sync to crm (attributes, mirror): 4 added, 0 updated, 0 removed, "
                "0 unchanged (nothing sent, baseline unchanged)") in out
        assert "  would upsert 4 record(s)\n" in out
        assert (f"  first upsert request (4 record(s)): POST {env.hubspot.url}/crm/v3/objects/contacts/batch/upsert"
                in out)
        assert ('          "idProperty": "email",\n          "id": "b***@e***",\n          "properties": {\n'
                '            "firstname": "Bob",\n            "lifetime_value": "900.00"\n') in out and "b***@e***" in out
        assert "bob@example.com" not in out and HUBSPOT_TOKEN not in out
        assert env.hubspot.requests == []  # nothing sent
        assert SyncStateStore(env.wh, "to_crm").baseline() is None


def test_dinmo_validate_connect_checks_the_platform_credentials_and_fields(
        request, tmp_path: Path, monkeypatch, capsys) -> None:
    with platform_project("duckdb", request, tmp_path, monkeypatch):
        assert main(["--project", str(tmp_path), "validate", "--connect"]) == 0
        assert "(connections and entities checked): valid" in capsys.readouterr().out
        # A mapped field HubSpot does not have, and a wrong token.
        text = (tmp_path / "dinmo.yaml").read_text().replace("ltv: lifetime_value", "ltv: lifetime_valu")
        (tmp_path / "dinmo.yaml").write_text(text)
        monkeypatch.setenv("META_TOKEN", "wrong-token")
        assert main(["--project", str(tmp_path), "validate", "--connect"]) == 1
        out = capsys.readouterr().out
        assert out.splitlines()[1:] == [
            ("  activations.to_crm: mapping.ltv: no field 'lifetime_valu' in HubSpot contacts; did you mean "
            "'lifetime_value'?"),
            ("  activations.to_meta: destination 'meta_vip' (meta_ads): the platform refused the credentials "
            "(HTTP 400): Invalid OAuth access token - Cannot parse access token (code 190)"),
        ]
        assert "activations.to_crm: mapping.ltv: " in out and "lifetime_valu" in out
        assert "activations.to_meta: " in out and "wrong-token" not in out


def test_a_quota_used_up_mid_sync_is_a_partial_success_and_the_rest_goes_next_time(
        request, tmp_path: Path, monkeypatch) -> None:
    with platform_project("duckdb", request, tmp_path, monkeypatch) as env:
        run(env.wh, "update raw.customers set email = 'eve@example.com' where customer_id = 5")
        run(env.wh, "insert into raw.customers select i, 'c' || i || '@example.com', 'N' || i, 600, 'x' "
                    "from range(6, 152) t(i)")
        env.hubspot.daily_limit = 1  # one request today: the first batch of 100 or the one of 50
        result, md = do_sync(env, "to_crm")
        assert result.success
        assert md["quota_exhausted"] is True
        accepted = md["accepted_upsert"]
        assert accepted in (50, 100) and accepted + md["not_sent_upsert"] == 150
        assert len(env.hubspot.records("contacts")) == accepted
        warnings = [e.user_message for e in env.instance.all_logs(result.run_id) if e.level == 30]
        # HubSpot says so in a header of the last answer it gave, or with a DAILY 429, whichever comes first
        assert any(w.startswith("destination 'crm' (hubspot): HubSpot's daily API limit")
                   and w.endswith("; the sync ends early as a partial success: what the platform acknowledged "
                                  "moves the baseline, the rest goes with the next sync") for w in warnings)
        assert SyncStateStore(env.wh, "to_crm").baseline().row_count == accepted

        env.hubspot.daily_limit = None  # the next day
        result, md = do_sync(env, "to_crm")
        assert result.success
        assert (md["rows_added"], md["accepted_upsert"]) == (150 - accepted, 150 - accepted)
        assert len(env.hubspot.records("contacts")) == 150


def test_a_record_rejected_for_retry_rejected_days_is_reported_and_no_longer_sent(
        request, tmp_path: Path, monkeypatch) -> None:
    with platform_project("duckdb", request, tmp_path, monkeypatch) as env:
        store = SyncStateStore(env.wh, "to_crm")
        assert do_sync(env, "to_crm")[0].success
        assert [r.record_key for r in store.rejections()] == ["5"]
        # Eve was first rejected 15 days ago (more than the default 14)
        run(env.wh, "update dinmo_delta_storage.dinmo_rejections set first_seen = first_seen - interval 15 day")
        requests_before = len(env.hubspot.requests)
        result, md = do_sync(env, "to_crm")
        assert result.success
        assert (md["rejections_expired"], md["records_upsert"], md["already_acknowledged_upsert"]) == (1, 1, 1)
        assert len(env.hubspot.requests) == requests_before  # nothing sent
        warnings = [e.user_message for e in env.instance.all_logs(result.run_id) if e.level == 30]
        assert ("1 record(s) rejected for 14 days or more are no longer retried (their reasons stay in "
                "dinmo_rejections until now): key 5 (upsert)") in warnings
        assert not any("not-an-email" in w for w in warnings)
        assert store.rejections() == []
        result, md = do_sync(env, "to_crm")  # she is in the baseline now: not sent again
        assert result.success and md["rows_added"] == 0


def test_braze_mirror_updates_users_and_clears_the_attributes_of_users_who_left(
        request, tmp_path: Path, monkeypatch) -> None:
    with platform_project("duckdb", request, tmp_path, monkeypatch) as env:
        result, md = do_sync(env, "to_braze")
        assert result.success and (md["records_upsert"], md["accepted_upsert"]) == (4, 4)
        assert {u.external_id: u.attributes for u in env.braze.users} == {
            "2": {"first_name": "Bob"}, "3": {"first_name": "Cle"}, "4": {"first_name": "Dan"},
            "5": {"first_name": "Eve"}}

        run(env.wh, "update raw.customers set first_name = 'Robert' where customer_id = 2")
        run(env.wh, "update raw.customers set ltv = 10 where customer_id = 4")
        result, md = do_sync(env, "to_braze")
        assert result.success
        assert (md["records_upsert"], md["records_delete"], md["accepted_delete"]) == (1, 1, 1)
        # Dan left: his profile stays, the mapped attributes are cleared
        assert {u.external_id: u.attributes for u in env.braze.users} == {
            "2": {"first_name": "Robert"}, "3": {"first_name": "Cle"}, "4": {}, "5": {"first_name": "Eve"}}
        assert_no_token_in_dagster(env, BRAZE_KEY)


def test_firestore_documents_follow_the_segment_on_the_real_emulator(
        request, tmp_path: Path, monkeypatch, firestore_env) -> None:
    # a second project file: its sections merge with dinmo.yaml's
    (tmp_path / "firestore.yaml").write_text(textwrap.dedent(f"""
        destinations:
          docs:
            type: firestore
            service: attributes
            project: {firestore_env.project}
            collection: customers
            base_url: {firestore_env.url}
        activations:
          to_docs:
            segment: big
            destination: docs
            mapping: {{first_name: first_name, ltv: ltv}}
            sync_mode: mirror
        """))
    with platform_project("duckdb", request, tmp_path, monkeypatch) as env:
        client = firestore.Client(project=firestore_env.project)
        try:
            def documents() -> dict[str, dict]:
                return {d.id: d.to_dict() for d in client.collection("customers").stream()}

            result, md = do_sync(env, "to_docs")
            assert result.success and md["accepted_upsert"] == 4
            assert documents() == {"2": {"first_name": "Bob", "ltv": 900.0}, "3": {"first_name": "Cle", "ltv": 600.1},
                                   "4": {"first_name": "Dan", "ltv": 700.0}, "5": {"first_name": "Eve", "ltv": 510.0}}
            run(env.wh, "update raw.customers set first_name = 'Robert' where customer_id = 2")
            run(env.wh, "update raw.customers set ltv = 10 where customer_id = 4")
            result, md = do_sync(env, "to_docs")
            assert result.success and (md["accepted_upsert"], md["accepted_delete"]) == (1, 1)
            assert documents() == {"2": {"first_name": "Robert", "ltv": 900.0}, "3": {"first_name": "Cle", "ltv": 600.1},
                                   "5": {"first_name": "Eve", "ltv": 510.0}}
        finally:
            client.close()


def test_dinmo_sync_prints_what_the_platform_accepted_and_rejected(
        request, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dh"))
    with platform_project("duckdb", request, tmp_path, monkeypatch):
        assert main(["--project", str(tmp_path), "sync", "to_crm"]) == 0
        out = capsys.readouterr().out.splitlines()
        assert out[0].startswith("sync to_crm: full sync to hubspot (attributes, mirror): 4 added, 0 updated, "
                                 "0 removed, 0 unchanged; 3 record(s) accepted, 1 rejected in 1 batch(es), 0 retries, ")
        assert out[1:] == ["  top rejection reasons: VALIDATION_ERROR INVALID_EMAIL (email) (1)"]


def test_meta_conversions_go_by_the_event_time_cursor_with_the_order_key_as_event_id(
        request, tmp_path: Path, monkeypatch) -> None:
    with platform_project("duckdb", request, tmp_path, monkeypatch) as env:
        # a second project file (its sections merge with dinmo.yaml's): a fact model and its conversions
        (tmp_path / "events.yaml").write_text(textwrap.dedent(f"""
            models:
              orders: {{source: wh, kind: fact, time_column: ordered_at, table: raw.orders, primary_key: order_id}}
            segments:
              all_orders: {{model: orders, sql: "select * from {{{{ model }}}}"}}
            destinations:
              meta_events:
                type: meta_ads
                service: events
                pixel_id: "1234567890"
                event_name: Purchase
                action_source: system_generated
                access_token: {{env: META_TOKEN}}
                base_url: {env.meta.url}
            activations:
              conversions:
                segment: all_orders
                destination: meta_events
                identifiers: {{email: email}}
                mapping: {{ordered_at: event_time}}
            """))
        env.project = load_project(tmp_path)
        env.defs = build_definitions(env.project)
        run(env.wh, "create table raw.orders (order_id integer, email varchar, ordered_at timestamp)")
        run(env.wh, "insert into raw.orders values (10, 'ann@example.com', now()::timestamp - interval 3 hour), "
                    "(11, 'bob@example.com', now()::timestamp - interval 2 hour)")
        result, md = do_sync(env, "conversions")
        assert result.success and (md["records_track"], md["accepted_track"]) == (2, 2)
        run(env.wh, "insert into raw.orders values (12, 'cle@example.com', now()::timestamp - interval 1 hour)")
        result, md = do_sync(env, "conversions")
        assert result.success and (md["records_track"], md["accepted_track"]) == (1, 1)
        events = env.meta.counted_events("1234567890")
        assert sorted((e.event_id, e.event_name) for e in events) == [("10", "Purchase"), ("11", "Purchase"),
                                                                      ("12", "Purchase")]
        # the e-mails went as SHA-256 digests only
        assert sorted(e.user_data["em"] for e in events) == sorted(sha(f"{n}@example.com") for n in ("ann", "bob", "cle"))


def test_a_mirror_that_would_remove_most_records_refuses_to_run(request, tmp_path: Path, monkeypatch) -> None:
    with platform_project("duckdb", request, tmp_path, monkeypatch) as env:
        assert do_sync(env, "to_crm")[0].success  # Bob, Cle and Dan are in HubSpot (Eve was rejected)
        run(env.wh, "update raw.customers set ltv = 10 where customer_id in (2, 3)")
        requests_before = len(env.hubspot.requests)
        result, _ = do_sync(env, "to_crm")
        assert not result.success
        failure = next(e for e in result.all_events if e.is_step_failure)
        assert failure.step_failure_data.user_failure_data.description == (
            "activation 'to_crm' would remove 2 of 3 records (66.7%) from destination 'crm', more than "
            "max_removed_pct 50%; nothing was sent. If this is expected, raise activations.to_crm.max_removed_pct "
            "or run `dinmo sync to_crm --full-refresh`")
        assert len(env.hubspot.requests) == requests_before
        assert len(env.hubspot.records("contacts")) == 3
