"""Recovering unfinished platform syncs, on DuckDB and on the real PostgreSQL server.

A sync that failed after the platform acknowledged some batches (the fakes revoke the credential
mid-sync) never moved the baseline; the next sync first moves it over what the platform acknowledged
(``platform_sync.absorb``), then computes its change set against it. What a user must see: after the
next sync the platform holds exactly the segment, with its latest values, even for a record that was
acknowledged and then changed back, a member added and gone since, or a record deleted and back since;
what was acknowledged and did not change is not sent again.

Each sync here is the two steps a Dagster sync runs (snapshot, then delivery), called directly against
the local fakes of the platforms.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fakes.braze import BrazeFake
from fakes.hubspot import FakeHubSpot
from fakes.meta_ads import GraphError, MetaAdsFake
from fakes.server import FakeResponse
from platform_scenarios import (
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

from dinmo_dagster import platform_sync, sync
from dinmo_dagster.assets.activations import sync_target
from dinmo_dagster.state import ACKNOWLEDGEMENTS, SyncStateStore

HUBSPOT_TOKEN = "pat-na1-2b9d4e6f-8a1c-4d3e-9f5a-7c6b5a4d3e2f"
BRAZE_KEY = "braze-rest-9e8d7c6b-5a4f-4e3d-8c2b-1a0f9e8d7c6b"
META_TOKEN = "EAARecoveryZCpsBAKZB7f6e5d4c3b2a1f0e9d8c7b6a5"
PIXEL = "1234567890"
CUSTOMERS = 250


class RevokingHubSpot(FakeHubSpot):
    """The HubSpot fake, which revokes the token once it has answered ``revoke_after[1]`` batches whose
    path ends with ``revoke_after[0]`` (``/batch/upsert`` or ``/batch/archive``)."""

    def __init__(self, token: str) -> None:
        super().__init__(token, rate_limit=100_000)
        self.revoke_after: tuple[str, int] | None = None
        self.answered = 0

    def handle(self, request: Any) -> Any:
        if self.revoke_after is not None and request.path.endswith(self.revoke_after[0]):
            if self.answered >= self.revoke_after[1]:
                return FakeResponse(401, {"status": "error", "category": "INVALID_AUTHENTICATION", "message":
                                          "The OAuth token used to make this call expired or is not valid for "
                                          "this account.", "correlationId": "0b1d4e5f-8a9b-4c6d-9e4f-3a2b7c6d5e4f"})
            self.answered += 1
        return super().handle(request)


class RevokingBraze(BrazeFake):
    """The Braze fake, which refuses the API key once it has answered ``revoke_after`` ``/users/track``
    requests."""

    revoke_after: int | None = None
    answered = 0

    def _route(self, method: str, path: str, headers: Any, parsed: Any, raw: bytes) -> Any:
        if self.revoke_after is not None and path == "/users/track":
            if self.answered >= self.revoke_after:
                return 401, {"message": "Invalid API key"}, {}
            self.answered += 1
        return super()._route(method, path, headers, parsed, raw)


class RevokingMeta(MetaAdsFake):
    """The Meta fake, which invalidates the token once it has answered ``revoke_after`` requests to an
    edge ending with ``revoke_edge`` (``events``, ``usersreplace``)."""

    revoke_after: int | None = None
    revoke_edge = "events"
    answered = 0

    def _route(self, method: str, segments: list[str], params: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
        if self.revoke_after is not None and segments and segments[-1] == self.revoke_edge:
            if self.answered >= self.revoke_after:
                raise GraphError("Error validating access token: The session has been invalidated because the "
                                 "user changed their password.", 190, subcode=460)
            self.answered += 1
        return super()._route(method, segments, params)


@contextlib.contextmanager
def project(kind: str, request: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SimpleNamespace]:
    """A project on a ``kind`` warehouse (duckdb or postgres): 250 customers with ltv 600 (the segment is
    ltv > 500), mirrored to HubSpot contacts and added to a Braze audience, one request at a time."""
    monkeypatch.setenv("HUBSPOT_TOKEN", HUBSPOT_TOKEN)
    monkeypatch.setenv("BRAZE_API_KEY", BRAZE_KEY)
    monkeypatch.setenv("META_TOKEN", META_TOKEN)
    with warehouse_source(kind, request, tmp_path, monkeypatch) as source, \
            RevokingHubSpot(HUBSPOT_TOKEN) as hubspot, RevokingBraze(BRAZE_KEY) as braze, \
            RevokingMeta(META_TOKEN, ad_account_id="act_1234") as meta:
        (tmp_path / "dinmo.yaml").write_text(project_yaml(source, models="""
            orders: {source: wh, kind: fact, time_column: ordered_at, table: raw.orders, primary_key: order_id}
            """, segments="""
            all_orders: {model: orders, sql: "select * from {{ model }}"}
            """, destinations=[
            destination("meta_vip", "meta_ads", "audiences", meta.url, ad_account_id="act_1234"),
            destination("meta_events", "meta_ads", "events", meta.url, pixel_id=PIXEL, event_name="Purchase",
                        action_source="system_generated", max_concurrency=1),
            destination("crm", "hubspot", "attributes", hubspot.url, object="contacts", max_concurrency=1),
            destination("braze_vip", "braze", "audiences", braze.url, audience="vip", max_concurrency=1),
        ], activations="""
            to_crm:
              segment: big
              destination: crm
              match: {email: email}
              mapping: {first_name: firstname}
              sync_mode: mirror
              max_removed_pct: 100
            to_braze_vip:
              segment: big
              destination: braze_vip
              identifiers: {email: email}
              max_removed_pct: 100
            to_meta:
              segment: big
              destination: meta_vip
              audience: {name: "VIP"}
              identifiers: {email: email}
              max_removed_pct: 100
            conversions:
              segment: all_orders
              destination: meta_events
              identifiers: {email: email}
              mapping: {ordered_at: event_time}
            """))
        with open_project(tmp_path) as (loaded, resources, wh):
            create_customers(wh, "select i, 'c' || i || '@example.com', 'N' || i, 600 "
                                 f"from range(1, {CUSTOMERS + 1}) t(i)")
            run(wh, "create table raw.orders (order_id integer, email varchar, ordered_at timestamp)")
            yield SimpleNamespace(project=loaded, resources=resources, wh=wh, hubspot=hubspot, braze=braze,
                                  meta=meta)


def failed_sync(env: SimpleNamespace, activation: str, full_refresh: bool = False) -> tuple[str, dict[str, set[str]]]:
    """A sync that fails when the platform refuses the credential: its partition and the keys the platform
    acknowledged before, by operation."""
    store = SyncStateStore(env.wh, activation)
    before = set(store.snapshot_partitions())
    with pytest.raises(sync.SyncError, match="refused the credentials|401"):
        sync_steps(env, activation, full_refresh)
    [partition] = set(store.snapshot_partitions()) - before
    ack = store.table(ACKNOWLEDGEMENTS).sql(dialect=env.wh.dialect)
    found: dict[str, set[str]] = {}
    for operation, key in env.wh.query(f"select operation, record_key from {ack} where activation = '{activation}' "
                                       f"and partition_key = '{partition}'"):
        found.setdefault(operation, set()).add(key)
    env.hubspot.revoke_after, env.braze.revoke_after, env.meta.revoke_after = None, None, None
    return partition, found


def renamed_v1_then_a_failed_sync(env: SimpleNamespace) -> tuple[str, dict[str, set[str]]]:
    """A first sync of ``to_crm``; then every customer is renamed V1 and the next sync fails once HubSpot
    acknowledged one batch of upserts: that sync's partition and acknowledged keys, as ``failed_sync``."""
    sync_steps(env, "to_crm")
    run(env.wh, "update raw.customers set first_name = 'V1'")
    env.hubspot.revoke_after = ("/batch/upsert", 1)
    return failed_sync(env, "to_crm")


def contacts(env: SimpleNamespace) -> dict[int, str]:
    """HubSpot's contacts: customer id (from the e-mail) to first name."""
    return {int(email[1:].split("@")[0]): props.get("firstname")
            for email, props in env.hubspot.records("contacts").items()}


def sent(env: SimpleNamespace, start: int, action: str) -> list[int]:
    """The customer ids of every HubSpot ``/batch/<action>`` request since ``requests[start]``."""
    return sorted(int(i["id"][1:].split("@")[0]) for r in env.hubspot.requests[start:]
                  if r.path.endswith(f"/batch/{action}") and r.json is not None for i in r.json["inputs"])


def segment_names(env: SimpleNamespace) -> dict[int, str]:
    """The segment, as HubSpot must hold it: customer id to first name."""
    return {int(i): n for i, n in env.wh.query("select customer_id, first_name from raw.customers where ltv > 500")}


def acknowledgements_left(env: SimpleNamespace) -> int:
    ack = SyncStateStore(env.wh, "to_crm").table(ACKNOWLEDGEMENTS).sql(dialect=env.wh.dialect)
    return int(env.wh.query(f"select count(*) from {ack}")[0][0])


# ------------------------------------------------------------------------------------------------------------
# Attributes
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["duckdb", "postgres"])
def test_a_value_acknowledged_by_a_failed_sync_then_changed_back_is_sent_again(
        kind: str, request: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with project(kind, request, tmp_path, monkeypatch) as env:
        failed, acked = renamed_v1_then_a_failed_sync(env)  # 100 of 250 acknowledged, then a 401
        upserted = {int(k) for k in acked["upsert"]}
        assert len(upserted) == 100 and set(acked) == {"upsert"}
        # X goes back to the value the baseline holds: the platform holds V1
        x = min(upserted)
        run(env.wh, f"update raw.customers set first_name = 'N{x}' where customer_id = {x}")
        start, logged = len(env.hubspot.requests), []
        result = sync_steps(env, "to_crm", on_log=logged.append)
        assert contacts(env) == segment_names(env) == {
            i: f"N{x}" if i == x else "V1" for i in range(1, CUSTOMERS + 1)}
        # X goes again with its baseline value; the other 99 acknowledged are not sent again
        assert sent(env, start, "upsert") == sorted(set(range(1, CUSTOMERS + 1)) - upserted | {x})
        assert (result.sync_type, result.counts.updated) == ("delta", CUSTOMERS - 100 + 1)
        assert (f"recovered the unfinished sync {failed}: the 100 record(s) the platform acknowledged moved "
                "the baseline; they are sent again only if they changed since") in logged
        assert acknowledgements_left(env) == 0
        start = len(env.hubspot.requests)
        result = sync_steps(env, "to_crm")  # nothing changed: nothing is sent
        assert (result.counts.added, result.counts.updated, result.counts.removed) == (0, 0, 0)
        assert len(env.hubspot.requests) == start


@pytest.mark.parametrize("kind", ["duckdb", "postgres"])
def test_a_mirror_delete_acknowledged_by_a_failed_sync_whose_record_came_back_recreates_it(
        kind: str, request: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with project(kind, request, tmp_path, monkeypatch) as env:
        sync_steps(env, "to_crm")
        # 150 leave the segment (archives of 100 and 50): the token is revoked after the first archive
        run(env.wh, "update raw.customers set ltv = 10 where customer_id <= 150")
        env.hubspot.revoke_after = ("/batch/archive", 1)
        _, acked = failed_sync(env, "to_crm")
        deleted = {int(k) for k in acked["delete"]}
        assert len(deleted) == 100 and len(contacts(env)) == CUSTOMERS - 100
        # W, deleted, comes back as the baseline knew it; V, deleted too, is still out of the segment
        w, v = sorted(deleted)[:2]
        run(env.wh, f"update raw.customers set ltv = 600 where customer_id = {w}")
        start = len(env.hubspot.requests)
        result = sync_steps(env, "to_crm")
        assert contacts(env) == segment_names(env) == {
            i: f"N{i}" for i in [w, *range(151, CUSTOMERS + 1)]}
        assert v not in contacts(env)
        assert sent(env, start, "upsert") == [w]
        assert sorted(sent(env, start, "archive")) == sorted(set(range(1, 151)) - deleted)
        assert (result.counts.added, result.counts.removed) == (1, 50)


# ------------------------------------------------------------------------------------------------------------
# Audiences
# ------------------------------------------------------------------------------------------------------------


def _members(braze: BrazeFake) -> set[int]:
    return {int(email[1:].split("@")[0]) for email in braze_audience(braze, "vip")}


@pytest.mark.parametrize("kind", ["duckdb", "postgres"])
def test_an_audience_member_added_by_a_failed_sync_and_gone_since_is_removed(
        kind: str, request: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with project(kind, request, tmp_path, monkeypatch) as env:
        seed_braze(env.braze.url, BRAZE_KEY, [f"c{i}@example.com" for i in range(1, CUSTOMERS + 1)])
        run(env.wh, "update raw.customers set ltv = 10 where customer_id > 10")
        sync_steps(env, "to_braze_vip")
        assert _members(env.braze) == set(range(1, 11))
        # 1 leaves (one remove request), 11..160 enter (two add requests of 75): the key is refused on
        # the second add
        run(env.wh, "update raw.customers set ltv = 10 where customer_id = 1")
        run(env.wh, "update raw.customers set ltv = 600 where customer_id between 11 and 160")
        env.braze.revoke_after = env.braze.answered + 2
        _, acked = failed_sync(env, "to_braze_vip")
        added = {int(k) for k in acked["add"]}
        assert acked["remove"] == {"1"} and len(added) == 75
        assert _members(env.braze) == set(range(2, 11)) | added
        # P, added, leaves the segment; 1, removed, comes back as the baseline knew it
        p = min(added)
        run(env.wh, f"update raw.customers set ltv = 10 where customer_id = {p}")
        run(env.wh, "update raw.customers set ltv = 600 where customer_id = 1")
        start = len(env.braze.requests)
        result = sync_steps(env, "to_braze_vip")
        expected = set(range(1, 11)) | set(range(11, 161)) - {p}
        assert _members(env.braze) == expected == {
            int(i) for (i,) in env.wh.query("select customer_id from raw.customers where ltv > 500")}
        assert (result.platform["records_add"], result.platform["records_remove"]) == (1 + 150 - 75, 1)
        # the members acknowledged before are not sent again
        again = {int(a["email"][1:].split("@")[0]) for r in env.braze.requests[start:] if r.path == "/users/track"
                 for a in (r.body or {}).get("attributes", [])}
        assert again & (added - {p}) == set()


# ------------------------------------------------------------------------------------------------------------
# Several unfinished syncs in a row, a full refresh, a snapshot dropped by retention
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["duckdb", "postgres"])
def test_two_failed_syncs_in_a_row_then_one_that_succeeds_leave_the_platform_as_the_segment(
        kind: str, request: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with project(kind, request, tmp_path, monkeypatch) as env:
        _, first = renamed_v1_then_a_failed_sync(env)
        x = min(int(k) for k in first["upsert"])
        run(env.wh, f"update raw.customers set first_name = 'N{x}' where customer_id = {x}")
        # the second sync recovers the first, sends X and the 150 left, and fails after one batch again
        env.hubspot.answered = 0
        env.hubspot.revoke_after = ("/batch/upsert", 1)
        _, second = failed_sync(env, "to_crm")
        y = min(int(k) for k in second["upsert"] - first["upsert"])
        run(env.wh, f"update raw.customers set first_name = 'N{y}' where customer_id = {y}")
        start = len(env.hubspot.requests)
        sync_steps(env, "to_crm")
        assert contacts(env) == segment_names(env) == {
            i: f"N{i}" if i in (x, y) else "V1" for i in range(1, CUSTOMERS + 1)}
        # sent: what neither sync got acknowledged, Y, and X unless the second sync got it acknowledged
        acked = {int(k) for k in first["upsert"] | second["upsert"]}
        again = {y} | ({x} if str(x) not in second["upsert"] else set())
        assert sent(env, start, "upsert") == sorted(set(range(1, CUSTOMERS + 1)) - acked | again)


@pytest.mark.parametrize("kind", ["duckdb", "postgres"])
def test_a_failed_full_refresh_then_a_delta_leaves_the_platform_as_the_segment(
        kind: str, request: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with project(kind, request, tmp_path, monkeypatch) as env:
        sync_steps(env, "to_crm")
        run(env.wh, "update raw.customers set first_name = 'V1' where customer_id <= 200")
        run(env.wh, "update raw.customers set ltv = 10 where customer_id > 240")
        env.hubspot.revoke_after = ("/batch/upsert", 1)
        _, acked = failed_sync(env, "to_crm", full_refresh=True)
        upserted = {int(k) for k in acked["upsert"]}
        assert len(upserted) == 100
        x = min(i for i in upserted if i <= 200)
        run(env.wh, f"update raw.customers set first_name = 'N{x}' where customer_id = {x}")
        result = sync_steps(env, "to_crm")
        assert result.sync_type == "delta"
        assert contacts(env) == segment_names(env) == {
            i: f"N{i}" if i == x or i > 200 else "V1" for i in range(1, 241)}


@pytest.mark.parametrize("kind", ["duckdb", "postgres"])
def test_a_failed_sync_whose_snapshot_retention_dropped_has_its_acknowledged_records_sent_again(
        kind: str, request: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with project(kind, request, tmp_path, monkeypatch) as env:
        failed, acked = renamed_v1_then_a_failed_sync(env)
        upserted = {int(k) for k in acked["upsert"]}
        sync.drop_snapshot(sync_target(env.project, "to_crm", env.resources), failed)
        x = min(upserted)
        run(env.wh, f"update raw.customers set first_name = 'N{x}' where customer_id = {x}")
        start, logged = len(env.hubspot.requests), []
        sync_steps(env, "to_crm", on_log=logged.append)
        # what the platform acknowledged is unknown now: those records go again, with their latest values
        assert sent(env, start, "upsert") == list(range(1, CUSTOMERS + 1))
        assert contacts(env) == segment_names(env)
        assert (f"the unfinished sync {failed} has no snapshot left (retention): its 100 acknowledged record(s) "
                "the baseline holds are sent again by this sync") in logged
        assert acknowledgements_left(env) == 0


@pytest.mark.parametrize("kind", ["duckdb", "postgres"])
def test_re_running_a_failed_partition_sends_a_value_acknowledged_then_changed_back(
        kind: str, request: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The failed partition run again (Dagster's re-execution: its snapshot, then its delivery, under the
    same partition key) settles what its first attempt got acknowledged before it takes its snapshot."""
    with project(kind, request, tmp_path, monkeypatch) as env:
        failed, acked = renamed_v1_then_a_failed_sync(env)
        upserted = {int(k) for k in acked["upsert"]}
        x = min(upserted)
        run(env.wh, f"update raw.customers set first_name = 'N{x}' where customer_id = {x}")
        start = len(env.hubspot.requests)
        t = sync_target(env.project, "to_crm", env.resources)
        sync.take_snapshot(t, failed)
        platform_sync.deliver(t, failed)
        assert contacts(env) == segment_names(env) == {
            i: f"N{x}" if i == x else "V1" for i in range(1, CUSTOMERS + 1)}
        assert sent(env, start, "upsert") == sorted(set(range(1, CUSTOMERS + 1)) - upserted | {x})
        assert SyncStateStore(env.wh, "to_crm").baseline().partition_key == failed
        assert acknowledgements_left(env) == 0


# ------------------------------------------------------------------------------------------------------------
# Events, and a replace that never committed
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["duckdb", "postgres"])
def test_events_acknowledged_by_a_failed_sync_are_not_sent_again_and_none_is_skipped(
        kind: str, request: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with project(kind, request, tmp_path, monkeypatch) as env:
        run(env.wh, "insert into raw.orders values (1, 'c1@example.com', now()::timestamp - interval 5 day)")
        sync_steps(env, "conversions")
        # 2,500 orders, in no order of time: the sync fails after one request of 1,000 events
        run(env.wh, "insert into raw.orders select i, 'c' || (i % 250) || '@example.com', "
                    "now()::timestamp - (i * 7919 % 2500) * interval 1 minute from range(2, 2502) t(i)")
        env.meta.revoke_after = env.meta.answered + 1
        failed, acked = failed_sync(env, "conversions")
        assert len(acked["track"]) == 1000
        run(env.wh, "insert into raw.orders values (2502, 'c2@example.com', now()::timestamp)")
        start, logged = len(env.meta.capi_events), []
        sync_steps(env, "conversions", on_log=logged.append)
        again = [e.event_id for e in env.meta.capi_events[start:]]
        assert sorted(again, key=int) == sorted({str(i) for i in range(2, 2503)} - acked["track"], key=int)
        assert sorted(int(e.event_id) for e in env.meta.counted_events(PIXEL)) == list(range(1, 2503))
        assert (f"1000 event(s) the platform acknowledged during the unfinished sync {failed} are not sent "
                "again") in logged


@pytest.mark.parametrize("kind", ["duckdb", "postgres"])
def test_a_full_refresh_whose_replace_never_committed_leaves_the_audience_to_the_next_sync(
        kind: str, request: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Meta swaps an audience's members only when a replace session's last batch arrives: a full refresh
    that failed before replaced nothing, and the next sync adds and removes against the baseline."""
    with project(kind, request, tmp_path, monkeypatch) as env:
        sync_steps(env, "to_meta")
        [audience] = env.meta.audiences.values()
        assert len(env.meta.member_hashes(audience.id)) == CUSTOMERS
        # 10,200 customers enter: the replace takes two requests; the last one is refused
        run(env.wh, "insert into raw.customers select i, 'c' || i || '@example.com', 'N' || i, 600 "
                    f"from range({CUSTOMERS + 1}, {CUSTOMERS + 10201}) t(i)")
        env.meta.revoke_edge, env.meta.revoke_after = "usersreplace", env.meta.answered + 1
        _, acked = failed_sync(env, "to_meta", full_refresh=True)
        assert acked == {}
        assert len(env.meta.member_hashes(audience.id)) == CUSTOMERS
        run(env.wh, "update raw.customers set ltv = 10 where customer_id = 1")
        env.meta.replace_session_timeout = 0  # the next sync runs once the unfinished session expired
        result = sync_steps(env, "to_meta")
        assert (result.sync_type, result.platform["records_add"], result.platform["records_remove"]) == (
            "delta", 10_200, 1)
        assert env.meta.member_hashes(audience.id) == {
            hashlib.sha256(f"c{i}@example.com".encode()).hexdigest() for i in range(2, CUSTOMERS + 10201)}
