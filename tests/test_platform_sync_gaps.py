"""Platform syncs (``platform_sync``) on DuckDB and on the real PostgreSQL server: the change set streamed
while the journal writes, the last-sent values of records a full refresh could not deliver, the clean-up
of acknowledgements, record keys of every common type matched as the warehouse spells them, and a full
audience sync to Braze (remove who left, then add everyone).

Each sync here is the two steps a Dagster sync runs (snapshot, then delivery), called directly against
the local fakes of the platforms."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import sqlglot
from fakes.braze import BrazeFake
from platform_scenarios import (
    SEED,
    braze_audience,
    create_customers,
    destination,
    open_project,
    project_yaml,
    run,
    seed_braze,
    sync_steps,
    warehouse_source,
)

from dinmo_dagster import delta, platform_sync, sync
from dinmo_dagster.assets.activations import sync_target
from dinmo_dagster.fakes.hubspot import FakeHubSpot
from dinmo_dagster.state import ACKNOWLEDGEMENTS, SyncStateStore
from dinmo_dagster.warehouses import WarehouseError

HUBSPOT_TOKEN = "pat-na1-5d3c2b1a-0f9e-4d8c-b7a6-9e8d7c6b5a4f"
BRAZE_KEY = "braze-rest-1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d"
# Primary key types, each with values whose text differs between Python and a warehouse somewhere.
KEY_TYPES = {
    "integer": ["7", "-3"],
    "bigint": ["9007199254740993", "1"],
    "decimal(10,2)": ["12.50", "5"],
    "double": ["100.0", "0.1"],
    "text": ["'A b'", "'007'"],
    "uuid": ["'0E37F5B1-8C3A-4B6E-9D2F-5A1B2C3D4E5F'", "'00000000-0000-0000-0000-000000000001'"],
    "date": ["'2024-01-05'", "'1999-12-31'"],
    "timestamp": ["'2024-01-05 10:00:00.123'", "'2024-01-05 10:00:00'"],
}


def _keyed_yaml() -> str:
    """A second project file (its sections merge with dinmo.yaml's): one model and activation per key type."""
    keyed = "\n".join(
        f"  keyed_{i}: {{source: wh, table: raw.keyed_{i}, primary_key: k}}" for i in range(len(KEY_TYPES)))
    keyed_segments = "\n".join(
        f"  keyed_{i}: {{model: keyed_{i}, sql: \"select * from {{{{ model }}}}\"}}" for i in range(len(KEY_TYPES)))
    keyed_activations = "\n".join(
        f"  to_crm_keyed_{i}: {{segment: keyed_{i}, destination: crm, match: {{email: email}}, "
        f"mapping: {{first_name: firstname}}}}" for i in range(len(KEY_TYPES)))
    return f"models:\n{keyed}\nsegments:\n{keyed_segments}\nactivations:\n{keyed_activations}\n"


@contextlib.contextmanager
def project(kind: str, request, tmp_path: Path, monkeypatch) -> Iterator[SimpleNamespace]:
    """The project above on a ``kind`` warehouse (duckdb or postgres), the fakes serving."""
    monkeypatch.setenv("HUBSPOT_TOKEN", HUBSPOT_TOKEN)
    monkeypatch.setenv("BRAZE_API_KEY", BRAZE_KEY)
    with warehouse_source(kind, request, tmp_path, monkeypatch) as source, \
            FakeHubSpot(HUBSPOT_TOKEN) as hubspot, BrazeFake(BRAZE_KEY) as braze:
        (tmp_path / "dinmo.yaml").write_text(project_yaml(source, destinations=[
            destination("crm", "hubspot", "attributes", hubspot.url, object="contacts"),
            destination("braze_vip", "braze", "audiences", braze.url, audience="vip"),
        ], activations="""
            to_crm:
              segment: big
              destination: crm
              match: {email: email}
              mapping: {first_name: firstname, ltv: lifetime_value}
              sync_mode: mirror
              max_rejected_pct: 50
            to_braze_vip:
              segment: big
              destination: braze_vip
              identifiers: {email: email}
            """))
        (tmp_path / "keyed.yaml").write_text(_keyed_yaml())
        with open_project(tmp_path) as (loaded, resources, wh):
            create_customers(wh, SEED)
            yield SimpleNamespace(project=loaded, resources=resources, wh=wh, hubspot=hubspot, braze=braze)


def contacts(fake: FakeHubSpot) -> dict[str, str]:
    return {email: props.get("firstname") for email, props in fake.records("contacts").items()}


def archived(fake: FakeHubSpot) -> set[str]:
    return {r["properties"]["email"] for r in fake.archived["contacts"].values()}


# ------------------------------------------------------------------------------------------------------------
# 1. The change set is streamed while the journal writes
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["duckdb", "postgres"])
def test_the_change_set_streams_batch_by_batch_while_the_journal_writes_to_the_same_warehouse(
        kind, request, tmp_path: Path, monkeypatch) -> None:
    with project(kind, request, tmp_path, monkeypatch) as env:
        t = sync_target(env.project, "to_crm", env.resources)
        store = SyncStateStore(env.wh, "to_crm")
        store.ensure()
        key = sync.new_partition_key()
        # 1,000,000 rows whose 900,001st fails in the warehouse: a stream hands the first rows long before
        # that row is computed; a read of the whole result fails before handing any.
        numbers = "range(1, 1000001) t(n)" if kind == "duckdb" else "generate_series(1, 1000000) t(n)"
        select = sqlglot.parse_one(
            f"select cast(n as text) as k, cast(case when n = 900001 then 'x' else '1' end as integer) as v "
            f"from {numbers}", read=t.dialect)
        with env.wh.session(), store.platform_journal(key) as journal:
            batches = platform_sync._batches(t, select, ["k", "v"])
            first = next(batches)
            assert first.schema.names == ["k", "v"]
            assert first.num_rows == platform_sync.STREAM_BATCH_ROWS
            keys = first.column("k").to_pylist()
            assert len(set(keys)) == len(keys) and all(1 <= int(k) <= 1_000_000 for k in keys)
            # the journal writes (its own transaction, committed) while the stream is open, and reads back
            journal.acknowledged("upsert", keys[:5])
            journal.flush()
            assert store.acknowledged_keys(key, "upsert") == set(keys[:5])
            rows = first.num_rows
            with pytest.raises(WarehouseError) as failure:
                for batch in batches:
                    rows += batch.num_rows
            assert str(failure.value).startswith(
                f"source 'wh' ({kind}): streaming the result failed: ")
            assert 0 < rows <= 900_000
            # the warehouse is usable again once the stream ended
            journal.acknowledged("upsert", ["1000001"])
            journal.flush()
        assert store.acknowledged_keys(key, "upsert") == {*keys[:5], "1000001"}


@pytest.mark.parametrize("kind", ["duckdb", "postgres"])
def test_a_full_refresh_cut_by_the_quota_mid_stream_closes_its_stream_and_keeps_what_landed(
        kind, request, tmp_path: Path, monkeypatch) -> None:
    with project(kind, request, tmp_path, monkeypatch) as env:
        assert sync_steps(env, "to_crm").platform["accepted_upsert"] == 3  # Bob, Cle and Dan
        run(env.wh, "insert into raw.customers select i, 'c' || i || '@example.com', 'N' || i, 600 "
                    "from range(5, 12005) t(i)")
        env.hubspot.daily_limit = 21  # 20 more requests of 100 contacts today
        # a full refresh with a baseline: its change table is dropped at the end, which a stream still
        # open on it would block (PostgreSQL)
        result = sync_steps(env, "to_crm", full_refresh=True)
        accepted = result.platform["accepted_upsert"]
        assert result.platform["quota_exhausted"] is True
        # HubSpot says the quota is gone in a header of its last answer, or with a DAILY 429
        assert 0 < accepted <= 2_000 and accepted % 100 == 0
        # the sync stopped inside the first batch read from the warehouse; the rest was never read
        assert result.platform["records_upsert"] == platform_sync.STREAM_BATCH_ROWS
        # the baseline holds what HubSpot holds: the contacts accepted now, and Bob, Cle and Dan from before
        assert SyncStateStore(env.wh, "to_crm").baseline().row_count == len(env.hubspot.records("contacts"))
        assert accepted <= len(env.hubspot.records("contacts")) <= accepted + 3
        if kind == "postgres":  # no session of ours is left inside a transaction (an open stream)
            assert env.wh.query("select count(*) from pg_stat_activity where application_name = 'dinmo-dagster' "
                                "and state like 'idle in transaction%'") == [(0,)]


# ------------------------------------------------------------------------------------------------------------
# 2. A full refresh keeps the last delivered values of the records it could not deliver
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["duckdb", "postgres"])
def test_a_record_rejected_by_a_full_refresh_keeps_the_identifiers_the_platform_holds(
        kind, request, tmp_path: Path, monkeypatch) -> None:
    with project(kind, request, tmp_path, monkeypatch) as env:
        assert sync_steps(env, "to_crm").platform["accepted_upsert"] == 3
        assert contacts(env.hubspot) == {"bob@example.com": "Bob", "cle@example.com": "Cle",
                                         "dan@example.com": "Dan"}
        # Bob's e-mail becomes invalid: the full refresh rejects him, so HubSpot still holds bob@example.com
        run(env.wh, "update raw.customers set email = 'not-an-email', first_name = 'Robert' where customer_id = 2")
        result = sync_steps(env, "to_crm", full_refresh=True)
        assert (result.platform["accepted_upsert"], result.platform["rejected_upsert"]) == (2, 1)
        t = sync_target(env.project, "to_crm", env.resources)
        values = env.wh.query(delta.render(sqlglot.parse_one(
            f"select customer_id, email, first_name, ltv from {t.values_table().sql(dialect=t.dialect)} "
            "order by customer_id", read=t.dialect), t.dialect))
        assert [(int(r[0]), r[1], r[2], str(r[3])) for r in values] == [
            (2, "bob@example.com", "Bob", "900.00"), (3, "cle@example.com", "Cle", "600.10"),
            (4, "dan@example.com", "Dan", "700.00")]
        # Bob leaves the segment: the mirror deletes the contact HubSpot holds, bob@example.com
        run(env.wh, "update raw.customers set ltv = 10 where customer_id = 2")
        result = sync_steps(env, "to_crm")
        assert (result.counts.removed, result.platform["accepted_delete"]) == (1, 1)
        assert contacts(env.hubspot) == {"cle@example.com": "Cle", "dan@example.com": "Dan"}
        assert archived(env.hubspot) == {"bob@example.com"}


# ------------------------------------------------------------------------------------------------------------
# 3. Acknowledgements of failed syncs are removed when a later sync is promoted
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["duckdb", "postgres"])
def test_the_acknowledgements_of_a_failed_sync_go_when_a_later_sync_is_promoted(
        kind, request, tmp_path: Path, monkeypatch) -> None:
    with project(kind, request, tmp_path, monkeypatch) as env:
        store = SyncStateStore(env.wh, "to_crm")
        ack = store.table(ACKNOWLEDGEMENTS).sql(dialect=env.wh.dialect)

        def acknowledgements() -> list[tuple[str, str, str]]:
            return sorted((r[0], r[1], r[2]) for r in env.wh.query(
                f"select activation, partition_key, record_key from {ack}"))

        # three of four rejected (50 % is the limit): Ann accepted, then the sync fails
        run(env.wh, "update raw.customers set email = 'bad' where customer_id in (2, 3, 4)")
        run(env.wh, "update raw.customers set ltv = 600 where customer_id = 1")
        failed = "20250101T000000.000000Z"
        with pytest.raises(sync.SyncError):
            sync_steps(env, "to_crm", key=failed)
        assert acknowledgements() == [("to_crm", failed, "1")]
        # a later partition still running (never overlapping, but its journal may be written first) and
        # another activation's acknowledgements stay
        later = "20990101T000000.000000Z"
        with store.platform_journal(later) as journal:
            journal.acknowledged("upsert", ["9"])
        with SyncStateStore(env.wh, "to_braze_vip").platform_journal(failed) as journal:
            journal.acknowledged("add", ["1"])
        run(env.wh, "update raw.customers set email = 'n' || customer_id || '@example.com'")
        # a full refresh sends everything again: it takes over no acknowledgement of the failed sync
        sync_steps(env, "to_crm", full_refresh=True, key="20250102T000000.000000Z")
        assert store.baseline().partition_key == "20250102T000000.000000Z"
        assert acknowledgements() == [("to_braze_vip", failed, "1"), ("to_crm", later, "9")]


# ------------------------------------------------------------------------------------------------------------
# 4. Record keys of every common type: an acknowledged record is never sent again
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["duckdb", "postgres"])
def test_acknowledged_records_move_the_baseline_whatever_the_type_of_their_key(
        kind, request, tmp_path: Path, monkeypatch) -> None:
    with project(kind, request, tmp_path, monkeypatch) as env:
        for i, (type_, values) in enumerate(KEY_TYPES.items()):
            sql_type = "double precision" if type_ == "double" and kind == "postgres" else type_
            run(env.wh, f"create table raw.keyed_{i} (k {type_}, email varchar, first_name varchar)")
            env.wh.execute(f"insert into raw.keyed_{i} values " + ", ".join(
                f"(cast({v} as {sql_type}), 'k{i}_{n}@example.com', 'N{n}')" for n, v in enumerate(values)))
        sent: dict[str, tuple[int, int, int]] = {}
        again: dict[str, tuple[int, int]] = {}
        for i, type_ in enumerate(KEY_TYPES):
            activation = f"to_crm_keyed_{i}"
            first = sync_steps(env, activation)
            sent[type_] = (first.platform["accepted_upsert"], first.platform["records_rejected"],
                           SyncStateStore(env.wh, activation).baseline().row_count)
            second = sync_steps(env, activation)
            again[type_] = (second.counts.added + second.counts.updated, second.platform.get("records_upsert", 0))
        assert sent == dict.fromkeys(KEY_TYPES, (2, 0, 2))
        assert again == dict.fromkeys(KEY_TYPES, (0, 0))
        assert len(env.hubspot.records("contacts")) == 2 * len(KEY_TYPES)


# ------------------------------------------------------------------------------------------------------------
# 5. Braze audiences: a full sync removes who left, then adds everyone
# ------------------------------------------------------------------------------------------------------------


def test_a_full_braze_audience_sync_removes_who_left_and_old_identifiers_then_adds_everyone(
        request, tmp_path: Path, monkeypatch) -> None:
    with project("duckdb", request, tmp_path, monkeypatch) as env:
        # the users exist in Braze (an audience add creates no profile)
        seed_braze(env.braze.url, BRAZE_KEY, [*(email for _, email, _, _ in SEED), "cleo@example.com"])
        sync_steps(env, "to_braze_vip")
        assert braze_audience(env.braze, "vip") == {"bob@example.com", "cle@example.com", "dan@example.com"}
        # Dan leaves, Cle's e-mail changes (a user Braze also holds): a forced full sync removes Dan and
        # Cle's old address, then adds every member
        run(env.wh, "update raw.customers set ltv = 10 where customer_id = 4")
        run(env.wh, "update raw.customers set email = 'cleo@example.com' where customer_id = 3")
        result = sync_steps(env, "to_braze_vip", full_refresh=True)
        assert (result.platform["records_remove"], result.platform["records_add"]) == (2, 2)
        assert braze_audience(env.braze, "vip") == {"bob@example.com", "cleo@example.com"}
