"""End-to-end scenarios of the delta engine: run types, sync modes, and a baseline that never loses a change.

Every sync goes through the real Dagster path (the activation's sync job: models, segments and their
blocking checks, snapshot, activation) against a DuckDB warehouse file and a GCS emulator on loopback.
Files are read back with the official ``google-cloud-storage`` client and parsed with independent
parsers (``csv``, ``json``, ``pyarrow.parquet``); expected rows are computed here, in Python, from the
rows the test inserted and changed, never from the product's own SQL.

Partition keys (and so the file names, which render from the sync's start time) are chosen by the
tests: sync ``n`` of a scenario starts at 2025-04-14 09:05:07.042 UTC plus ``n`` minutes.
"""

from __future__ import annotations

import csv
import io
import json
import re
import signal
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, ClassVar

import dagster as dg
import duckdb
import pyarrow.parquet as pq
import pytest
import yaml
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from dinmo_dagster import sync
from dinmo_dagster.assets import activations as activation_assets
from dinmo_dagster.assets import models as model_assets
from dinmo_dagster.cli import run_sync
from dinmo_dagster.config import ProjectError, load_project
from dinmo_dagster.destinations import DestinationError, FileDestination
from dinmo_dagster.destinations.gcs import GCSConfig, GCSDestination
from dinmo_dagster.emulator import create_bucket
from dinmo_dagster.resources import DestinationResource, build_resources, destination_key

try:  # pytest puts either the repository root or tests/ on sys.path, depending on the import mode
    from tests.gcs_emulator import EmulatorHandle, start_gcs_emulator
except ImportError:  # pragma: no cover - depends on the pytest import mode
    from gcs_emulator import EmulatorHandle, start_gcs_emulator

# --------------------------------------------------------------------------------------------------
# The data: 20 customers; the mapping exports 4 of their columns (country and score are not exported)
# --------------------------------------------------------------------------------------------------

MAPPING = {"customer_id": "id", "email": "email", "ltv": "ltv", "note": "note"}
HEADER = list(MAPPING.values())
N_BASE = 20
T0 = datetime(2025, 4, 14, 9, 5, 7, 42000, tzinfo=timezone.utc)


def base_rows(n: int = N_BASE) -> dict[int, dict[str, Any]]:
    """id -> warehouse row. Customer 3 has a NULL note, the others a text one."""
    return {
        i: {
            "customer_id": i, "email": f"c{i}@example.com", "country": "FR" if i % 2 else "DE",
            "ltv": i * 100, "note": None if i == 3 else f"n{i}", "score": i,
            "updated_at": datetime(2025, 1, 1) + timedelta(hours=i),
        }
        for i in range(1, n + 1)
    }


def exported(rows: dict[int, dict[str, Any]], ids: Any = None) -> list[dict[str, Any]]:
    """The exported records (mapped and renamed) of ``ids`` (default: all), sorted by id."""
    ids = sorted(rows) if ids is None else sorted(ids)
    return [{dst: rows[i][src] for src, dst in MAPPING.items()} for i in ids]


def as_csv(records: list[dict[str, Any]]) -> list[dict[str, str]]:
    """What a CSV reader gives back for ``records``: text, NULL as an empty field."""
    return [{k: "" if v is None else str(v) for k, v in r.items()} for r in records]


# The change applied between sync 1 and sync 2 of the mode scenarios, in SQL and in Python.
CHANGE_SQL = [
    ("insert into raw.customers values (21, 'c21@example.com', 'FR', 2100, 'n21', 21, '2025-02-01'),"
     " (22, 'c22@example.com', 'DE', 2200, NULL, 22, '2025-02-01')"),
    "update raw.customers set email = 'new2@example.com' where customer_id = 2",  # value to value
    "update raw.customers set note = 'now set' where customer_id = 3",  # NULL to value
    "update raw.customers set note = NULL where customer_id = 4",  # value to NULL
    "update raw.customers set score = 999 where customer_id = 5",  # a column that is not exported
    "delete from raw.customers where customer_id in (6, 7)",
]
ADDED, UPDATED, REMOVED = {21, 22}, {2, 3, 4}, {6, 7}


def changed_rows(rows: dict[int, dict[str, Any]]) -> dict[int, dict[str, Any]]:
    new = {i: dict(r) for i, r in rows.items()}
    new[21] = {"customer_id": 21, "email": "c21@example.com", "country": "FR", "ltv": 2100, "note": "n21",
               "score": 21, "updated_at": datetime(2025, 2, 1)}
    new[22] = {"customer_id": 22, "email": "c22@example.com", "country": "DE", "ltv": 2200, "note": None,
               "score": 22, "updated_at": datetime(2025, 2, 1)}
    new[2]["email"] = "new2@example.com"
    new[3]["note"] = "now set"
    new[4]["note"] = None
    new[5]["score"] = 999
    del new[6], new[7]
    return new


# --------------------------------------------------------------------------------------------------
# Fixtures: one emulator per module, a bucket, a warehouse and a project per test
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorHandle]:
    handle = start_gcs_emulator("dinmo-delta-default")
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture
def gcs(emulator: EmulatorHandle, monkeypatch: pytest.MonkeyPatch) -> storage.Client:
    """The real storage client, pointed at the emulator (and so is the product, through the env var)."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", emulator.url)
    return storage.Client(project="test", credentials=AnonymousCredentials())


@pytest.fixture(autouse=True)
def sync_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The temporary directory of this test's syncs (and of the syncs it kills, through TMPDIR): no sync
    may leave its part files (customer rows) behind there."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    monkeypatch.setenv("TMPDIR", str(tmp))
    yield tmp
    assert sorted(p.name for p in tmp.iterdir() if p.name.startswith("dinmo-sync-")) == []


_bucket_counter = iter(range(1, 10_000))


@dataclass
class Outcome:
    """One sync: its partition key, success, the activation's metadata, the failure text, new files."""

    key: str
    success: bool
    metadata: dict[str, Any]
    error: str
    new_files: dict[str, bytes]
    result: Any = None


@dataclass
class Scenario:
    """A project in tmp_path: DuckDB warehouse, one model, segments, a GCS destination with its own bucket."""

    root: Path
    emulator: EmulatorHandle
    client: storage.Client
    bucket: str
    activations: dict[str, dict[str, Any]]
    segments: dict[str, str]
    model_extra: dict[str, Any]
    dest: str = "gcs"  # or "local": the folder ``out`` in root
    instance: dg.DagsterInstance = field(default_factory=dg.DagsterInstance.ephemeral)
    n_syncs: int = 0
    seen: set[str] = field(default_factory=set)
    con: Any = None

    @property
    def db(self) -> Path:
        return self.root / "warehouse.duckdb"

    def write_project(self) -> None:
        doc = {
            "sources": {"wh": {"type": "duckdb", "path": "warehouse.duckdb"}},
            "models": {"customers": {"source": "wh", "table": "raw.customers", "primary_key": "customer_id",
                                     **self.model_extra}},
            "segments": {name: {"model": "customers", "sql": sql} for name, sql in self.segments.items()},
            "destinations": {"out": {"type": "gcs", "bucket": self.bucket, "project": "test"} if self.dest == "gcs"
                             else {"type": "local", "path": "out"}},
            "activations": self.activations,
        }
        (self.root / "dinmo.yaml").write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")

    def project(self) -> Any:
        return load_project(self.root)

    def open(self) -> None:
        """Keep the database open in this process for the scenario's lifetime.

        The warehouse resource opens a connection per statement; with the file already open here,
        DuckDB reuses the open database instead of re-reading the file each time (a sync takes a
        fifth of the time). Close it before another process needs the file.
        """
        self.con = duckdb.connect(str(self.db))

    def close(self) -> None:
        if self.con is not None:
            self.con.close()
            self.con = None

    def sql(self, *statements: str) -> list[tuple]:
        assert self.con is not None
        out: list[tuple] = []
        for s in statements:
            out = self.con.execute(s).fetchall()
        return out

    def load(self, rows: dict[int, dict[str, Any]]) -> None:
        self.sql("create schema if not exists raw",
                 "create or replace table raw.customers (customer_id integer, email varchar, country varchar,"
                 " ltv integer, note varchar, score integer, updated_at timestamp)")
        assert self.con is not None
        self.con.executemany("insert into raw.customers values (?, ?, ?, ?, ?, ?, ?)",
                             [tuple(r.values()) for r in rows.values()])

    def objects(self) -> dict[str, bytes]:
        if self.dest == "local":
            out = self.root / "out"
            return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
        return {b.name: b.download_as_bytes() for b in self.client.list_blobs(self.bucket)}

    def uri(self, name: str) -> str:
        """The URI of object ``name``, as the metadata shows it."""
        return (self.root / "out" / name).as_uri() if self.dest == "local" else f"gs://{self.bucket}/{name}"

    def next_key(self) -> str:
        self.n_syncs += 1
        return sync.new_partition_key(T0 + timedelta(minutes=self.n_syncs))

    def defs(self, destination: Any = None) -> dg.Definitions:
        project = self.project()
        resources = build_resources(project)
        if destination is not None:
            resources[destination_key("out")] = destination
        return dg.Definitions.merge(model_assets.defs(project), activation_assets.defs(project),
                                    dg.Definitions(resources=resources))

    def run(self, activation: str, full_refresh: bool = False, destination: Any = None,
            key: str | None = None) -> Outcome:
        """Run the activation's sync job for a new partition (the job `dinmo sync` runs)."""
        key = key or self.next_key()
        self.instance.add_dynamic_partitions(activation_assets.partitions_name(activation), [key])
        op = activation_assets.activation_key(activation).to_python_identifier()
        result = self.defs(destination).resolve_job_def(activation_assets.job_name(activation)).execute_in_process(
            instance=self.instance, partition_key=key, raise_on_error=False,
            run_config={"ops": activation_assets.sync_ops_config(activation, full_refresh),
                        "loggers": {"console": {"config": {"log_level": "ERROR"}}}})
        metadata: dict[str, Any] = {}
        for mat in result.asset_materializations_for_node(op):
            metadata = {k: v.value for k, v in mat.metadata.items()}
        errors = []
        for event in result.all_events:
            if event.is_step_failure and event.step_failure_data:
                data = event.step_failure_data
                if data.user_failure_data and data.user_failure_data.description:
                    errors.append(data.user_failure_data.description)
                err = data.error
                while err is not None:
                    errors.append(err.message)
                    err = err.cause
        return Outcome(key, result.success, metadata, "\n".join(errors), self.new_files(), result)

    def new_files(self) -> dict[str, bytes]:
        now = self.objects()
        new = {k: v for k, v in now.items() if k not in self.seen}
        self.seen |= set(now)
        return new

    def baseline_key(self, activation: str) -> str | None:
        try:
            rows = self.sql(f"select partition_key from dinmo_delta_storage.dinmo_baselines "
                            f"where activation = '{activation}'")
        except duckdb.CatalogException:  # no sync ever reached the delta storage
            return None
        assert len(rows) <= 1
        return rows[0][0] if rows else None


@pytest.fixture
def scenario(tmp_path: Path, emulator: EmulatorHandle, gcs: storage.Client, request: pytest.FixtureRequest):
    """Build a Scenario: ``scenario(activations, segments=..., rows=..., **model_extra)``."""

    def make(activations: dict[str, dict[str, Any]], segments: dict[str, str] | None = None,
             rows: dict[int, dict[str, Any]] | None = None, dest: str = "gcs", **model_extra: Any) -> Scenario:
        slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")
        bucket = f"t{next(_bucket_counter):04d}-{slug}"[:62].rstrip("-")
        create_bucket(emulator, bucket)
        s = Scenario(root=tmp_path, emulator=emulator, client=gcs, bucket=bucket, activations=activations,
                     segments=segments or {"everyone": "select * from {{ model }} where country <> 'ZZ'"},
                     model_extra=model_extra, dest=dest)
        s.open()
        request.addfinalizer(s.close)
        s.load(base_rows() if rows is None else rows)
        s.write_project()
        return s

    return make


def activation(**overrides: Any) -> dict[str, Any]:
    """An activation of segment 'everyone' to 'out' in folder 'exports', CSV, with the 4-column mapping."""
    a: dict[str, Any] = {"segment": "everyone", "destination": "out", "folder": "exports",
                         "file_name": "customers_{YYYY}{MM}{DD}_{HH}{mm}{ss}_{ms}", "format": "csv",
                         "mapping": dict(MAPPING)}
    a.update(overrides)
    return a


def stem(key: str, prefix: str = "customers", folder: str = "exports") -> str:
    """The object path (without extension) a sync of partition ``key`` writes, computed independently."""
    t = datetime.strptime(key, "%Y%m%dT%H%M%S.%fZ")
    return f"{folder}/{prefix}_{t:%Y%m%d_%H%M%S}_{t.microsecond // 1000:03d}"


def read_csv(data: bytes) -> tuple[list[str], list[dict[str, str]]]:
    rows = list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))
    assert rows, "a CSV file with a header has at least its header row"
    return rows[0], [dict(zip(rows[0], r, strict=True)) for r in rows[1:]]


def by_id(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(rows, key=lambda r: int(r["id"]))


def csv_files(files: dict[str, bytes]) -> dict[str, list[dict[str, str]]]:
    """Object path -> rows sorted by id; every file has exactly the mapped header."""
    out = {}
    for name, data in files.items():
        header, rows = read_csv(data)
        assert header == HEADER, name
        out[name] = by_id(rows)
    return out


def assert_metadata(md: dict[str, Any], *, sync_type: str, mode: str, run_type: str, counts: tuple[int, ...],
                    files: dict[str, bytes], bucket: str, rows_written: int) -> None:
    assert md["sync_type"] == sync_type
    assert md["sync_mode"] == mode
    assert md["run_type"] == run_type
    assert (md["rows_added"], md["rows_updated"], md["rows_removed"], md["rows_unchanged"]) == counts, md
    assert md["files_written"] == len(files)
    assert md["bytes_written"] == sum(len(v) for v in files.values())
    assert md["dagster/row_count"] == rows_written
    uris = sorted(v for k, v in md.items() if re.fullmatch(r"file_\d+", k))
    assert uris == sorted(f"gs://{bucket}/{name}" for name in files)
    if files:
        assert all(f"gs://{bucket}/{name}" in md["files"] for name in files)
    else:
        assert md["files"] == "(no file: nothing to write)"


# --------------------------------------------------------------------------------------------------
# Sync modes x run types: sync 1 (full), insert/update/delete, sync 2, sync 3 with no change
# --------------------------------------------------------------------------------------------------

MODES = [
    ("snapshot", "full_only"),
    ("upsert", "full_then_delta"),
    ("insert", "full_then_delta"),
    ("difference", "full_then_delta"),
    ("upsert", "full_only"),
    ("insert", "full_only"),
    ("difference", "full_only"),
]


def expected_files(mode: str, run_type: str, n: int, key: str, v1: dict, v2: dict) -> dict[str, list[dict]]:
    """What sync ``n`` (1, 2 or 3) of the mode scenario writes: object path -> CSV rows sorted by id."""
    current = v1 if n == 1 else v2
    s = stem(key)
    full = n == 1 or run_type == "full_only"
    if mode == "difference":
        if full:
            return {f"{s}_added.csv": as_csv(exported(current)), f"{s}_updated.csv": [], f"{s}_removed.csv": []}
        if n == 2:
            return {f"{s}_added.csv": as_csv(exported(v2, ADDED)),
                    f"{s}_updated.csv": as_csv(exported(v2, UPDATED)),
                    # removed rows carry the values delivered by the previous sync
                    f"{s}_removed.csv": as_csv(exported(v1, REMOVED))}
        return {f"{s}_added.csv": [], f"{s}_updated.csv": [], f"{s}_removed.csv": []}
    if full or mode == "snapshot":
        return {f"{s}.csv": as_csv(exported(current))}
    if n == 3:
        return {}  # nothing changed: no file
    ids = ADDED | UPDATED if mode == "upsert" else ADDED
    return {f"{s}.csv": as_csv(exported(v2, ids))}


@pytest.mark.parametrize(("mode", "run_type"), MODES, ids=[f"{m}-{r}" for m, r in MODES])
def test_each_sync_mode_and_run_type_delivers_the_documented_rows(scenario, mode: str, run_type: str) -> None:
    s = scenario({"a": activation(sync_mode=mode, run_type=run_type)})
    v1 = base_rows()
    v2 = changed_rows(v1)
    counts = {1: (N_BASE, 0, 0, 0),
              2: (len(ADDED), len(UPDATED), len(REMOVED), len(v2) - len(ADDED) - len(UPDATED)),
              3: (0, 0, 0, len(v2))}
    for n in (1, 2, 3):
        if n == 2:
            s.sql(*CHANGE_SQL)
        out = s.run("a")
        assert out.success, out.error
        want = expected_files(mode, run_type, n, out.key, v1, v2)
        got = csv_files(out.new_files)
        assert got == want, f"sync {n}"
        full = n == 1 or run_type == "full_only"
        assert_metadata(out.metadata, sync_type="full" if full else "delta", mode=mode, run_type=run_type,
                        counts=counts[n], files=out.new_files, bucket=s.bucket,
                        rows_written=sum(len(r) for r in want.values()))
        assert s.baseline_key("a") == out.key


def test_snapshot_of_an_empty_segment_still_writes_a_header_only_csv(scenario) -> None:
    s = scenario({"a": activation(sync_mode="snapshot")}, segments={"everyone": "select * from {{ model }} "
                                                                                "where country = 'ZZ'"})
    for _ in range(2):  # the first (full) sync and a later one both write the (empty) file
        out = s.run("a")
        assert out.success, out.error
        assert list(out.new_files) == [f"{stem(out.key)}.csv"]
        data = out.new_files[f"{stem(out.key)}.csv"]
        assert read_csv(data) == (HEADER, [])
        assert data.decode().strip() == "id,email,ltv,note"
        assert out.metadata["files_written"] == 1 and out.metadata["dagster/row_count"] == 0


@pytest.mark.parametrize("fmt", ["json", "parquet"])
def test_difference_mode_writes_all_three_files_even_when_empty_in_every_format(scenario, fmt: str) -> None:
    s = scenario({"a": activation(sync_mode="difference", format=fmt)})
    out = s.run("a")
    assert out.success, out.error
    st = stem(out.key)
    assert sorted(out.new_files) == sorted(f"{st}_{k}.{fmt}" for k in ("added", "removed", "updated"))
    if fmt == "json":
        parsed = {k: json.loads(v) for k, v in out.new_files.items()}
        assert sorted(parsed[f"{st}_added.json"], key=lambda r: r["id"]) == exported(base_rows())
    else:
        tables = {k: pq.read_table(io.BytesIO(v)) for k, v in out.new_files.items()}
        assert all(t.column_names == HEADER for t in tables.values())
        parsed = {k: t.to_pylist() for k, t in tables.items()}
        assert sorted(parsed[f"{st}_added.parquet"], key=lambda r: r["id"]) == exported(base_rows())
    assert parsed[f"{st}_updated.{fmt}"] == [] and parsed[f"{st}_removed.{fmt}"] == []


def test_full_then_delta_with_snapshot_is_a_validation_error_that_says_why(scenario) -> None:
    s = scenario({"a": activation(sync_mode="snapshot", run_type="full_then_delta")})
    with pytest.raises(ProjectError) as info:
        s.project()
    message = str(info.value)
    assert "activations.a.run_type" in message
    assert "'full_then_delta' cannot be used with sync_mode 'snapshot'" in message
    assert "always exports the full segment" in message and "full_only" in message


# --------------------------------------------------------------------------------------------------
# What counts as a change
# --------------------------------------------------------------------------------------------------


def test_null_empty_string_and_text_null_are_different_values_and_unmapped_columns_never_update(
        scenario) -> None:
    notes_before = {1: None, 2: "", 3: "NULL", 4: None, 5: "", 6: "x", 7: None, 8: "same", 9: None, 10: ""}
    notes_after = {1: "", 2: None, 3: None, 4: "NULL", 5: "NULL", 6: None, 7: "x", 8: "same", 9: None, 10: ""}
    rows = base_rows(10)
    for i, note in notes_before.items():
        rows[i]["note"] = note
    s = scenario({"a": activation(sync_mode="upsert", format="json")}, rows=rows)
    first = s.run("a")
    assert first.success, first.error
    [(name, data)] = first.new_files.items()
    assert name == f"{stem(first.key)}.json"
    assert sorted(json.loads(data), key=lambda r: r["id"]) == exported(rows)  # null, "" and "NULL" kept apart

    for i, note in notes_after.items():
        if note != notes_before[i]:
            s.sql(f"update raw.customers set note = {'NULL' if note is None else repr(note)} where customer_id = {i}")
            rows[i]["note"] = note
    # columns outside the mapping change on 8, 9 and 10: no update for them
    s.sql("update raw.customers set score = score + 1000, country = 'DE', updated_at = now() "
          "where customer_id in (8, 9, 10)")
    second = s.run("a")
    assert second.success, second.error
    [(name, data)] = second.new_files.items()
    assert name == f"{stem(second.key)}.json"
    assert sorted(json.loads(data), key=lambda r: r["id"]) == exported(rows, range(1, 8))
    md = second.metadata
    assert (md["rows_added"], md["rows_updated"], md["rows_removed"], md["rows_unchanged"]) == (0, 7, 0, 3)


# --------------------------------------------------------------------------------------------------
# Failures: an upload error, a killed process; the baseline never loses a change
# --------------------------------------------------------------------------------------------------


class FailingGCSDestination(GCSDestination):
    """The real GCS destination whose ``fail_on``-th upload raises (a stand-in for a real upload error)."""

    fail_on: ClassVar[int] = 2
    calls: ClassVar[list[str]] = []

    def upload(self, local_path: Path, object_path: str) -> int:
        FailingGCSDestination.calls.append(object_path)
        if len(FailingGCSDestination.calls) == self.fail_on:
            raise DestinationError(f"destination 'out': injected upload failure on {object_path}")
        return super().upload(local_path, object_path)


class FailingGCSResource(DestinationResource):
    """The destination resource handing out a FailingGCSDestination (same settings as a `gcs` one)."""

    def get_destination(self) -> FileDestination:
        return FailingGCSDestination(GCSConfig.model_validate(self.settings), name=self.destination_name)


# About 300 bytes per file: the 20-row exports split into several parts.
SMALL_FILES_MB = 0.0003


def parts_of(files: dict[str, bytes], base: str, ext: str = "csv") -> list[dict[str, str]]:
    """Rows of one logical file, whether it was written plain or split in parts (names checked exactly)."""
    names = sorted(n for n in files if n == f"{base}.{ext}" or n.startswith(f"{base}_part-"))
    if names != [f"{base}.{ext}"]:
        assert names == [f"{base}_part-{i:05d}.{ext}" for i in range(1, len(names) + 1)], names
        assert all(len(files[n]) <= SMALL_FILES_MB * 1024 * 1024 for n in names)
    rows: list[dict[str, str]] = []
    for n in names:
        header, part = read_csv(files[n])
        assert header == HEADER
        rows += part
    return by_id(rows)


def test_an_upload_error_mid_sync_leaves_no_file_and_the_next_sync_delivers_every_change(scenario) -> None:
    s = scenario({"a": activation(sync_mode="difference", max_file_size_mb=SMALL_FILES_MB)})
    v1 = base_rows()
    first = s.run("a")
    assert first.success, first.error
    assert parts_of(first.new_files, f"{stem(first.key)}_added") == as_csv(exported(v1))
    assert len(first.new_files) > 3  # _added was split

    # a large change, so that the failed sync writes several parts too
    s.sql("update raw.customers set ltv = ltv + 1 where customer_id <= 15",
          "insert into raw.customers select i, 'c' || i || '@example.com', 'FR', i * 100, 'n' || i, i, "
          "TIMESTAMP '2025-03-01' from range(30, 40) t(i)")
    FailingGCSDestination.calls.clear()
    failing = FailingGCSResource(destination_name="out", settings={"type": "gcs", "bucket": s.bucket, "project": "test"})
    failed = s.run("a", destination=failing)
    assert not failed.success
    assert "injected upload failure" in failed.error
    assert len(FailingGCSDestination.calls) == 2  # the first part landed, the second failed
    assert failed.new_files == {}  # nothing of the failed sync remains under its final name
    assert not [n for n in s.objects() if n.startswith(stem(failed.key))]
    assert s.baseline_key("a") == first.key
    assert s.sql(f"select status from dinmo_stats.sync_history where partition_key = '{failed.key}'") == [
        ("failed",)]

    # more changes after the failure; row 8 was updated before the failed sync and is deleted now
    s.sql("update raw.customers set note = 'later' where customer_id = 1",
          "delete from raw.customers where customer_id in (8, 9)")
    v3 = {i: dict(r) for i, r in v1.items()}
    for i in range(1, 16):
        v3[i]["ltv"] += 1
    for i in range(30, 40):
        v3[i] = {"customer_id": i, "email": f"c{i}@example.com", "ltv": i * 100, "note": f"n{i}"}
    v3[1]["note"] = "later"
    del v3[8], v3[9]

    clean = s.run("a")
    assert clean.success, clean.error
    st = stem(clean.key)
    assert parts_of(clean.new_files, f"{st}_added") == as_csv(exported(v3, range(30, 40)))
    assert parts_of(clean.new_files, f"{st}_updated") == as_csv(exported(v3, set(range(1, 16)) - {8, 9}))
    # removed rows carry the values of the last successful sync, not those the failed one saw
    assert parts_of(clean.new_files, f"{st}_removed") == as_csv(exported(v1, {8, 9}))
    assert s.baseline_key("a") == clean.key


KILLED_SYNC = textwrap.dedent('''
    """A sync of activation 'a' that dies by SIGKILL: after its first upload, or just before promotion."""
    import os, signal, sys
    from pathlib import Path

    import dagster as dg

    from dinmo_dagster import sync
    from dinmo_dagster.assets.activations import sync_target
    from dinmo_dagster.config import load_project
    from dinmo_dagster.destinations.gcs import GCSConfig, GCSDestination
    from dinmo_dagster.resources import DestinationResource, build_resources, destination_key

    root, key, when, run_id = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]

    class KillAfterFirstUpload(GCSDestination):
        upload_concurrency = 1  # one file at a time: exactly one has landed when the process dies

        def upload(self, local_path: Path, object_path: str) -> int:
            size = super().upload(local_path, object_path)
            os.kill(os.getpid(), signal.SIGKILL)
            return size

    class KillingResource(DestinationResource):
        def get_destination(self):
            return KillAfterFirstUpload(GCSConfig.model_validate(self.settings), name=self.destination_name)

    project = load_project(root)
    resources = build_resources(project)
    if when == "after_first_upload":
        bucket = project.destinations["out"].bucket
        resources[destination_key("out")] = KillingResource(
            destination_name="out", settings={"type": "gcs", "bucket": bucket, "project": "test"})
    else:  # every file landed; the machine dies before the baseline moves
        sync._promote = lambda *args: os.kill(os.getpid(), signal.SIGKILL)
    with dg.build_resources(resources) as r:
        t = sync_target(project, "a", r)
        sync.take_snapshot(t, key)
        sync.deliver(t, key, run_id=run_id)
    sys.exit("the sync was not killed")
''')


def run_killed_sync(s: Scenario, when: str, run_id: str = "killed-run") -> str:
    """Run a sync of 'a' in a child process (its TMPDIR is the test's) that dies by SIGKILL ``when``."""
    script = s.root / "killed_sync.py"
    script.write_text(KILLED_SYNC, encoding="utf-8")
    key = s.next_key()
    s.close()  # the other process needs the database file
    try:
        proc = subprocess.run([sys.executable, str(script), str(s.root), key, when, run_id], check=False,
                              capture_output=True, text=True, timeout=120)
    finally:
        s.open()
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    return key


def sync_dirs(tmp: Path) -> dict[str, list[str]]:
    """The syncs' working directories in ``tmp`` and the files in each."""
    return {d.name: sorted(p.name for p in d.iterdir()) for d in sorted(tmp.glob("dinmo-sync-*"))}


def test_a_sync_killed_mid_upload_is_cleaned_up_and_the_next_sync_delivers_everything(
        scenario, sync_tmp: Path) -> None:
    s = scenario({"a": activation(sync_mode="upsert", max_file_size_mb=SMALL_FILES_MB)})
    first = s.run("a")
    assert first.success, first.error
    s.sql(*CHANGE_SQL, "update raw.customers set ltv = ltv + 1 where customer_id between 10 and 20")
    v2 = changed_rows(base_rows())
    for i in range(10, 21):
        v2[i]["ltv"] += 1

    killed = run_killed_sync(s, "after_first_upload")
    left = s.new_files()
    assert list(left) == [f"{stem(killed)}_part-00001.csv"]  # the dead sync left one part behind
    [(_dir, parts)] = sync_dirs(sync_tmp).items()  # and, on this machine, its working directory
    assert f"{Path(stem(killed)).name}_part-00001.csv" in parts
    journal = s.sql(f"select state, files from dinmo_delta_storage.dinmo_sync_journal where partition_key = '{killed}'")
    assert journal == [("writing", json.dumps([f"{stem(killed)}_part-00001.csv"]))]
    assert s.baseline_key("a") == first.key

    nxt = s.run("a")
    assert nxt.success, nxt.error
    assert not [n for n in s.objects() if n.startswith(stem(killed))]  # the left-over part was removed
    assert "removed 1 file(s) left by the dead sync" in nxt.metadata["recovered"]
    assert parts_of(nxt.new_files, stem(nxt.key)) == as_csv(exported(v2, ADDED | UPDATED | set(range(10, 21))))
    assert s.baseline_key("a") == nxt.key
    assert sync_dirs(sync_tmp) == {}  # no customer rows left on this machine
    # The dead sync has its history row: failed, with what became of its files.
    assert s.sql("select run_id, status, sync_type, rows_added, rows_updated, rows_removed, files, error "
                 f"from dinmo_stats.sync_history where partition_key = '{killed}'") == [
        ("killed-run", "failed", "delta", 2, 14, 2, 0, ("the sync's process died before all its files landed; "
         f"its 1 file(s) were removed by run {nxt.result.run_id}"))]


def test_a_killed_sync_s_part_files_are_removed_by_a_sync_of_another_activation(scenario, sync_tmp: Path) -> None:
    """The dead process's working directory is recognised by any later sync on the machine, not only by
    the next sync of its own activation (which may never come)."""
    s = scenario({"a": activation(sync_mode="upsert", max_file_size_mb=SMALL_FILES_MB),
                  "b": activation(sync_mode="upsert", folder="b")})
    assert s.run("a").success
    s.sql(*CHANGE_SQL, "update raw.customers set ltv = ltv + 1 where customer_id between 10 and 20")
    run_killed_sync(s, "after_first_upload")
    assert len(sync_dirs(sync_tmp)) == 1
    other = s.run("b")
    assert other.success, other.error
    assert sync_dirs(sync_tmp) == {}


def test_a_sync_killed_after_all_its_files_landed_is_completed_without_sending_them_again(
        scenario, sync_tmp: Path) -> None:
    s = scenario({"a": activation(sync_mode="upsert")})
    first = s.run("a")
    assert first.success, first.error
    s.sql(*CHANGE_SQL)
    v2 = changed_rows(base_rows())
    # The killed sync's Dagster run: STARTED, as a run whose process died stays.
    job = s.defs().resolve_job_def(activation_assets.job_name("a"))
    dead_run = s.instance.create_run_for_job(job_def=job, status=dg.DagsterRunStatus.STARTED)

    killed = run_killed_sync(s, "before_promotion", run_id=dead_run.run_id)
    landed = s.new_files()
    assert csv_files(landed) == {f"{stem(killed)}.csv": as_csv(exported(v2, ADDED | UPDATED))}
    assert s.baseline_key("a") == first.key
    assert s.sql("select state from dinmo_delta_storage.dinmo_sync_journal where partition_key = "
                 f"'{killed}'") == [("written",)]

    nxt = s.run("a")
    assert nxt.success, nxt.error
    assert "promoted its snapshot to baseline" in nxt.metadata["recovered"]
    assert nxt.new_files == {}  # the killed sync's changes are not sent twice
    assert (nxt.metadata["rows_added"], nxt.metadata["rows_updated"], nxt.metadata["files_written"]) == (0, 0, 0)
    assert f"{stem(killed)}.csv" in s.objects()  # its complete file stays
    assert s.baseline_key("a") == nxt.key
    assert sync_dirs(sync_tmp) == {}

    # The run that completed it says so in its metadata ...
    assert nxt.metadata["recovered_partition"] == killed
    assert nxt.metadata["recovered_files"] == f"- gs://{s.bucket}/{stem(killed)}.csv"
    # ... the dead run is marked failed, saying which run completed it ...
    assert s.instance.get_run_by_id(dead_run.run_id).status == dg.DagsterRunStatus.FAILURE
    [failure] = s.instance.all_logs(dead_run.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
    assert failure.dagster_event.message == (
        f"sync of activation 'a' died after all its files had landed; completed by run {nxt.result.run_id}")
    # ... and the recovered sync has its history row, with its counts and files.
    history = s.sql("select partition_key, run_id, status, sync_type, rows_added, rows_updated, rows_removed, "
                    "rows_unchanged, rows_written, files, completed_by from dinmo_stats.sync_history "
                    "where activation = 'a' order by partition_key")
    assert history == [
        (first.key, first.result.run_id, "success", "full", 20, 0, 0, 0, 20, 1, None),
        (killed, dead_run.run_id, "recovered", "delta", 2, 3, 2, 15, 5, 1, nxt.result.run_id),
        (nxt.key, nxt.result.run_id, "success", "delta", 0, 0, 0, 20, 0, 0, None),
    ]


# --------------------------------------------------------------------------------------------------
# Baselines, guard, full refresh, retention, history
# --------------------------------------------------------------------------------------------------


def test_two_activations_on_one_segment_keep_their_own_baselines(scenario) -> None:
    s = scenario({"a": activation(sync_mode="upsert", folder="a"), "b": activation(sync_mode="upsert", folder="b")})
    v1 = base_rows()
    v2 = changed_rows(v1)
    a1 = s.run("a")
    assert csv_files(a1.new_files) == {f"{stem(a1.key, folder='a')}.csv": as_csv(exported(v1))}
    s.sql(*CHANGE_SQL)
    a2 = s.run("a")
    assert csv_files(a2.new_files) == {f"{stem(a2.key, folder='a')}.csv": as_csv(exported(v2, ADDED | UPDATED))}
    b1 = s.run("b")  # b never synced: its first sync is full, whatever a did
    assert b1.success, b1.error
    assert b1.metadata["sync_type"] == "full"
    assert csv_files(b1.new_files) == {f"{stem(b1.key, folder='b')}.csv": as_csv(exported(v2))}
    assert (s.baseline_key("a"), s.baseline_key("b")) == (a2.key, b1.key)


def test_the_removal_guard_refuses_a_delta_that_removes_too_many_records(scenario) -> None:
    s = scenario({"a": activation(sync_mode="difference")})
    v1 = base_rows()
    first = s.run("a")
    assert first.success, first.error
    s.sql("delete from raw.customers where customer_id <= 11")  # 11 of 20: 55%

    refused = s.run("a")
    assert not refused.success
    assert "would remove 11 of 20 records" in refused.error and "max_removed_pct" in refused.error
    assert refused.new_files == {}
    assert s.baseline_key("a") == first.key
    assert s.sql(f"select status, rows_removed, files, error like '%would remove%' from dinmo_stats.sync_history "
                 f"where partition_key = '{refused.key}'") == [("failed", 11, 0, True)]

    s.activations["a"]["max_removed_pct"] = 100
    s.write_project()
    allowed = s.run("a")
    assert allowed.success, allowed.error
    st = stem(allowed.key)
    assert csv_files(allowed.new_files) == {
        f"{st}_added.csv": [], f"{st}_updated.csv": [], f"{st}_removed.csv": as_csv(exported(v1, range(1, 12)))}


def test_a_full_difference_sync_removes_nothing_so_the_removal_guard_lets_it_through(scenario) -> None:
    s = scenario({"a": activation(sync_mode="difference", run_type="full_only")})
    first = s.run("a")
    assert first.success, first.error
    s.sql("delete from raw.customers where customer_id <= 11")
    second = s.run("a")
    assert second.success, second.error
    st = stem(second.key)
    assert csv_files(second.new_files) == {f"{st}_added.csv": as_csv(exported(base_rows(), range(12, 21))),
                                           f"{st}_updated.csv": [], f"{st}_removed.csv": []}
    assert second.metadata["rows_removed"] == 11


def test_full_refresh_is_the_way_out_of_the_removal_guard_and_still_delivers_the_removals(scenario) -> None:
    """The guard's way out, a full refresh, sends every current record in _added and the records that
    left the segment in _removed, with the values they were last sent with: a consumer replaying the
    files learns of every removal."""
    s = scenario({"a": activation(sync_mode="difference")})
    first = s.run("a")
    assert first.success, first.error
    s.sql("update raw.customers set email = 'new2@example.com' where customer_id = 2")
    second = s.run("a")  # customer 2 is sent again, with its new email
    assert second.success, second.error
    s.sql("update raw.customers set email = 'never-sent@example.com' where customer_id = 3",
          "delete from raw.customers where customer_id <= 11")
    refused = s.run("a")
    assert not refused.success
    assert "--full-refresh" in refused.error  # the message offers a full refresh as the way out ...
    forced = s.run("a", full_refresh=True)  # ... and it works
    assert forced.success, forced.error
    last_sent = base_rows()
    last_sent[2]["email"] = "new2@example.com"
    st = stem(forced.key)
    assert csv_files(forced.new_files) == {f"{st}_added.csv": as_csv(exported(base_rows(), range(12, 21))),
                                           f"{st}_updated.csv": [],
                                           f"{st}_removed.csv": as_csv(exported(last_sent, range(1, 12)))}
    md = forced.metadata
    # The counts compare with the baseline: 11 records left, 9 did not change; the files hold 9 + 11 rows.
    assert (md["sync_type"], md["rows_added"], md["rows_updated"], md["rows_removed"], md["rows_unchanged"],
            md["dagster/row_count"]) == ("full", 0, 0, 11, 9, 20)
    assert s.baseline_key("a") == forced.key
    # The next delta starts from what the full refresh sent.
    s.sql("delete from raw.customers where customer_id = 12")
    nxt = s.run("a")
    assert nxt.success, nxt.error
    assert csv_files(nxt.new_files)[f"{stem(nxt.key)}_removed.csv"] == as_csv(exported(base_rows(), {12}))


def test_full_refresh_from_the_cli_exports_everything_again(scenario, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    s = scenario({"a": activation(sync_mode="upsert")})
    project = s.project()
    all_rows = as_csv(exported(base_rows()))
    pattern = re.compile(r"exports/customers_(\d{8})_(\d{6})_(\d{3})\.csv")

    def history_key() -> str:
        return s.sql("select partition_key from dinmo_stats.sync_history order by partition_key desc limit 1")[0][0]

    ok, md, error = run_sync(project, "a")
    assert ok, error
    files = s.new_files()
    [name] = files
    assert pattern.fullmatch(name) and name == f"{stem(history_key())}.csv"
    assert csv_files(files) == {name: all_rows} and md["sync_type"] == "full"

    ok, md, error = run_sync(project, "a")
    assert ok, error
    assert s.new_files() == {} and md["files_written"] == 0 and md["sync_type"] == "delta"

    ok, md, error = run_sync(project, "a", full_refresh=True)
    assert ok, error
    files = s.new_files()
    assert csv_files(files) == {f"{stem(history_key())}.csv": all_rows}
    assert md["sync_type"] == "full" and md["dagster/row_count"] == N_BASE


def test_retention_keeps_the_baseline_and_the_newest_snapshots_and_drops_their_partitions(scenario) -> None:
    s = scenario({"a": activation(sync_mode="upsert", keep_snapshots=2)})
    keys = []
    for n in range(5):
        s.sql(f"update raw.customers set ltv = ltv + 1 where customer_id = {n + 1}")
        out = s.run("a")
        assert out.success, out.error
        keys.append(out.key)
    suffix = [k.lower().replace(".", "_") for k in keys]
    tables = {r[0] for r in s.sql("select table_name from information_schema.tables "
                                  "where table_schema = 'dinmo_delta_storage'")}
    # Each kept sync keeps its snapshot (keys and hashes) and its rows (what it delivered).
    assert {t for t in tables if not t.startswith("dinmo_")} == {f"{kind}__a__{x}" for x in suffix[-2:]
                                                                 for kind in ("snap", "rows")}
    assert s.baseline_key("a") == keys[-1]
    assert sorted(s.instance.get_dynamic_partitions("sync_a")) == keys[-2:]
    # one history row per sync, in order, with its counts
    history = s.sql("select partition_key, status, sync_type, rows_added, rows_updated, rows_removed, "
                    "rows_unchanged, files from dinmo_stats.sync_history where activation = 'a' order by started_at")
    assert history == [(keys[0], "success", "full", 20, 0, 0, 0, 1)] + [
        (k, "success", "delta", 0, 1, 0, 19, 1) for k in keys[1:]]


# --------------------------------------------------------------------------------------------------
# Duplicate and NULL primary keys
# --------------------------------------------------------------------------------------------------


def test_duplicate_keys_below_the_threshold_keep_the_row_with_the_highest_order_by(scenario) -> None:
    s = scenario({"a": activation(sync_mode="upsert")}, order_by="updated_at", max_duplicate_pct=10)
    # 2 duplicates in 22 keyed rows (9.1% <= 10%): a newer row for customer 5 (it wins), an older one
    # for customer 6 (it loses); and a row without a key (never synced)
    s.sql("insert into raw.customers values (5, 'newer5@example.com', 'FR', 555, 'dup', 5, '2025-06-01'),"
          " (6, 'older6@example.com', 'FR', 666, 'dup', 6, '2024-06-01'),"
          " (NULL, 'nokey@example.com', 'FR', 1, NULL, 0, '2025-06-01')")
    out = s.run("a")
    assert out.success, out.error
    rows = base_rows()
    rows[5].update(email="newer5@example.com", ltv=555, note="dup")
    assert csv_files(out.new_files) == {f"{stem(out.key)}.csv": as_csv(exported(rows))}
    checks = {e.asset_key.to_user_string(): e for e in out.result.get_asset_check_evaluations()}
    for asset in ("models/customers", "segments/everyone"):
        assert not checks[asset].passed and checks[asset].severity == dg.AssetCheckSeverity.WARN
    snap = next(m for m in out.result.asset_materializations_for_node("snapshots__a"))
    assert snap.metadata["duplicates_dropped"].value == 2 and snap.metadata["null_keys_excluded"].value == 1


def test_duplicate_keys_above_the_threshold_block_the_sync_and_write_nothing(scenario) -> None:
    s = scenario({"a": activation(sync_mode="upsert")}, order_by="updated_at")
    s.sql("insert into raw.customers select customer_id, email, country, ltv, note, score, updated_at "
          "from raw.customers where customer_id <= 2")  # 2 of 22 keyed rows: 9.1% > 5%
    out = s.run("a")
    assert not out.success
    checks = {e.asset_key.to_user_string(): e for e in out.result.get_asset_check_evaluations()}
    assert not checks["models/customers"].passed
    assert checks["models/customers"].severity == dg.AssetCheckSeverity.ERROR
    assert "above max_duplicate_pct" in checks["models/customers"].description
    assert out.result.asset_materializations_for_node("activations__a") == []
    assert out.new_files == {}
    assert s.baseline_key("a") is None



def test_re_running_a_partition_whose_files_landed_is_refused_and_loses_no_change(scenario) -> None:
    """A killed sync's files all landed; its run is then re-executed for the same partition (a Dagster
    re-execution) after the data changed. It must not re-snapshot that partition: recovery would then
    promote rows that were never sent, and the change made after the kill would be lost."""
    s = scenario({"a": activation(sync_mode="upsert")})
    first = s.run("a")
    assert first.success, first.error
    s.sql(*CHANGE_SQL)
    killed = run_killed_sync(s, "before_promotion")
    s.new_files()
    s.sql("update raw.customers set email = 'after-kill@example.com' where customer_id = 1")

    rerun = s.run("a", key=killed)
    assert not rerun.success
    assert f"partition '{killed}' of activation 'a' was already delivered" in rerun.error
    assert rerun.new_files == {}

    nxt = s.run("a")
    assert nxt.success, nxt.error
    assert "promoted its snapshot to baseline" in nxt.metadata["recovered"]
    rows = changed_rows(base_rows())
    rows[1]["email"] = "after-kill@example.com"
    assert csv_files(nxt.new_files) == {f"{stem(nxt.key)}.csv": as_csv(exported(rows, {1}))}


def test_a_column_added_to_the_mapping_is_sent_for_every_record_and_is_empty_on_removed_ones(scenario) -> None:
    s = scenario({"a": activation(sync_mode="difference", mapping={"customer_id": "id", "email": "email"})})
    first = s.run("a")
    assert first.success, first.error
    s.activations["a"]["mapping"] = {"customer_id": "id", "email": "email", "ltv": "ltv"}
    s.write_project()
    s.sql("delete from raw.customers where customer_id = 1")

    nxt = s.run("a")
    assert nxt.success, nxt.error
    st = stem(nxt.key)
    parsed = {name: read_csv(data) for name, data in nxt.new_files.items()}
    rows = base_rows()
    assert parsed == {
        f"{st}_added.csv": (["id", "email", "ltv"], []),
        f"{st}_updated.csv": (["id", "email", "ltv"], [
            {"id": str(i), "email": r["email"], "ltv": str(r["ltv"])} for i, r in rows.items() if i != 1]),
        # customer 1 was delivered without ltv: it is removed with the values it was sent with
        f"{st}_removed.csv": (["id", "email", "ltv"], [{"id": "1", "email": "c1@example.com", "ltv": ""}]),
    }
    md = nxt.metadata
    assert (md["rows_added"], md["rows_updated"], md["rows_removed"], md["rows_unchanged"]) == (0, 19, 1, 0)
    # From now on removed records carry ltv too: it was sent with every record above.
    s.sql("delete from raw.customers where customer_id = 2")
    last = s.run("a")
    assert last.success, last.error
    assert read_csv(last.new_files[f"{stem(last.key)}_removed.csv"]) == (
        ["id", "email", "ltv"], [{"id": "2", "email": "c2@example.com", "ltv": "200"}])


def test_a_record_updated_then_removed_is_removed_with_the_values_it_was_last_sent_with(scenario) -> None:
    s = scenario({"a": activation(sync_mode="difference", mapping={"customer_id": "id", "email": "email"})})
    assert s.run("a").success
    s.sql("update raw.customers set email = 'new3@example.com' where customer_id = 3")
    second = s.run("a")
    assert second.success, second.error
    assert read_csv(second.new_files[f"{stem(second.key)}_updated.csv"]) == (
        ["id", "email"], [{"id": "3", "email": "new3@example.com"}])
    # Changed again, then deleted, with no sync in between: the destination only ever had the second email.
    s.sql("update raw.customers set email = 'never-sent@example.com' where customer_id = 3",
          "delete from raw.customers where customer_id = 3")
    third = s.run("a")
    assert third.success, third.error
    assert {name: read_csv(data) for name, data in third.new_files.items()} == {
        f"{stem(third.key)}_added.csv": (["id", "email"], []),
        f"{stem(third.key)}_updated.csv": (["id", "email"], []),
        f"{stem(third.key)}_removed.csv": (["id", "email"], [{"id": "3", "email": "new3@example.com"}]),
    }


def test_an_activation_switched_to_difference_keeps_values_from_its_next_sync_on(scenario) -> None:
    s = scenario({"a": activation(sync_mode="upsert", mapping={"customer_id": "id", "email": "email"})})
    assert s.run("a").success
    s.activations["a"]["sync_mode"] = "difference"
    s.write_project()
    s.sql("update raw.customers set email = 'new4@example.com' where customer_id = 4",
          "delete from raw.customers where customer_id = 5")
    second = s.run("a")
    assert second.success, second.error
    # Upsert kept no values: customer 5 goes with its key only. Customer 4's new email was sent here.
    assert read_csv(second.new_files[f"{stem(second.key)}_removed.csv"]) == (
        ["id", "email"], [{"id": "5", "email": ""}])
    s.sql("delete from raw.customers where customer_id in (4, 6)")
    third = s.run("a")
    assert third.success, third.error
    header, removed = read_csv(third.new_files[f"{stem(third.key)}_removed.csv"])
    assert (header, sorted(removed, key=lambda r: int(r["id"]))) == (
        ["id", "email"], [{"id": "4", "email": "new4@example.com"}, {"id": "6", "email": ""}])


# --------------------------------------------------------------------------------------------------
# A delivered file is never overwritten by a later sync whose name renders the same
# --------------------------------------------------------------------------------------------------

MINUTE_TEMPLATE = "customers_{YYYY}{MM}{DD}_{HH}{mm}"


def minute_stem(key: str) -> str:
    """The object path (without extension) MINUTE_TEMPLATE gives a sync of partition ``key``."""
    return f"exports/customers_{datetime.strptime(key, '%Y%m%dT%H%M%S.%fZ'):%Y%m%d_%H%M}"


@pytest.mark.parametrize(("dest", "mode"), [("gcs", "upsert"), ("local", "upsert"), ("gcs", "insert"),
                                            ("local", "difference"), ("gcs", "difference")])
def test_a_sync_whose_file_name_renders_like_an_earlier_delivery_fails_before_writing(
        scenario, dest: str, mode: str) -> None:
    """Two syncs in one minute with a {HH}{mm} template: the second would overwrite the first's export
    with its delta. It refuses before writing anything; the baseline stays, so the next sync (a minute
    later) delivers every change."""
    s = scenario({"a": activation(sync_mode=mode, file_name=MINUTE_TEMPLATE)}, dest=dest)
    v1 = base_rows()
    k1 = sync.new_partition_key(T0)
    first = s.run("a", key=k1)
    assert first.success, first.error
    delivered = s.objects()
    ext_name = f"{minute_stem(k1)}_added.csv" if mode == "difference" else f"{minute_stem(k1)}.csv"
    assert ext_name in delivered

    s.sql(*CHANGE_SQL)
    k2 = sync.new_partition_key(T0 + timedelta(seconds=30))
    refused = s.run("a", key=k2)
    assert not refused.success
    assert refused.error.splitlines()[0] == (
        f"activation 'a': the sync {k2} would overwrite {s.uri(ext_name)}, which the sync {k1} delivered "
        f"({mode}); nothing was written. The file name template '{MINUTE_TEMPLATE}' renders the same name for "
        "both: add {ss} to activations.a.file_name (or use {X}, Unix seconds) so that each sync's files get "
        "their own names")
    assert s.objects() == delivered  # every file of the first sync, byte for byte
    assert s.baseline_key("a") == k1
    assert s.sql(f"select status, files from dinmo_stats.sync_history where partition_key = '{k2}'") == [
        ("failed", 0)]

    k3 = sync.new_partition_key(T0 + timedelta(minutes=1))
    nxt = s.run("a", key=k3)
    assert nxt.success, nxt.error
    want = {name.replace(stem(k3), minute_stem(k3)): rows
            for name, rows in expected_files(mode, "full_then_delta", 2, k3, v1, changed_rows(v1)).items()}
    assert csv_files(nxt.new_files) == want
    assert s.baseline_key("a") == k3


def test_a_snapshot_sync_replaces_its_own_snapshot_but_never_a_file_it_did_not_deliver(scenario) -> None:
    """snapshot mode sends the whole segment each time: a later snapshot of the same name replaces the
    earlier one (a fixed name always holds the latest segment). A file the activation did not deliver
    (put there by hand, or by another activation) is never overwritten, in any mode."""
    s = scenario({"a": activation(sync_mode="snapshot", file_name=MINUTE_TEMPLATE)}, dest="local")
    k1 = sync.new_partition_key(T0)
    assert s.run("a", key=k1).success
    s.sql(*CHANGE_SQL)
    k2 = sync.new_partition_key(T0 + timedelta(seconds=30))
    second = s.run("a", key=k2)
    assert second.success, second.error
    assert csv_files(s.objects()) == {f"{minute_stem(k2)}.csv": as_csv(exported(changed_rows(base_rows())))}

    k3 = sync.new_partition_key(T0 + timedelta(minutes=5))
    foreign = s.root / "out" / f"{minute_stem(k3)}_part-00001.csv"
    foreign.write_text("somebody else's file\n", encoding="utf-8")
    refused = s.run("a", key=k3)
    assert not refused.success
    assert refused.error.splitlines()[0] == (
        f"activation 'a': the sync {k3} would overwrite {foreign.as_uri()}, which activation 'a' did not "
        "deliver; nothing was written. Change activations.a.file_name or activations.a.folder so that its "
        "files get names of their own, or remove that file")
    assert foreign.read_text(encoding="utf-8") == "somebody else's file\n"
    assert s.baseline_key("a") == k2


def test_the_retry_of_a_killed_sync_writes_its_own_file_names_again(scenario) -> None:
    """Completing the same partition is not a collision: the dead attempt's part is removed first."""
    s = scenario({"a": activation(sync_mode="upsert", max_file_size_mb=SMALL_FILES_MB)})
    first = s.run("a")
    assert first.success, first.error
    s.sql(*CHANGE_SQL, "update raw.customers set ltv = ltv + 1 where customer_id between 10 and 20")
    v2 = changed_rows(base_rows())
    for i in range(10, 21):
        v2[i]["ltv"] += 1
    killed = run_killed_sync(s, "after_first_upload")
    assert list(s.new_files()) == [f"{stem(killed)}_part-00001.csv"]
    retry = s.run("a", key=killed)
    assert retry.success, retry.error
    assert parts_of(s.objects(), stem(killed)) == as_csv(exported(v2, ADDED | UPDATED | set(range(10, 21))))
    assert s.baseline_key("a") == killed
