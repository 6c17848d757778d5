"""From the quickstart YAML to files in a (local emulator) GCS bucket, through the real CLI and Dagster."""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import duckdb
import pyarrow.parquet as pq
import pytest
from google.cloud import storage

from dinmo_dagster import demo
from dinmo_dagster.config import QUICKSTART_DIR, load_project
from dinmo_dagster.definitions import build_definitions
from dinmo_dagster.emulator import start_emulator

BUCKET = "dinmo-quickstart"


@pytest.fixture(scope="module")
def emulator():
    handle = start_emulator(default_bucket=BUCKET)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STORAGE_EMULATOR_HOST", handle.url)  # the test's own client reads the bucket
        yield handle
    handle.stop()


@pytest.fixture
def project_dir(tmp_path: Path) -> Path:
    target = tmp_path / "project"
    target.mkdir()
    shutil.copy(QUICKSTART_DIR / "dinmo.yaml", target / "dinmo.yaml")
    demo.prepare_warehouse(load_project(target))
    return target


def dinmo(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items()
                if k not in ("STORAGE_EMULATOR_HOST", "DAGSTER_HOME", "HUBSPOT_TOKEN")}
    full_env.update(env)
    return subprocess.run([sys.executable, "-m", "dinmo_dagster.cli", *args], check=False, capture_output=True, text=True,
                          cwd=cwd, env=full_env, timeout=300)


def test_quickstart_definitions_load_with_lineage() -> None:
    defs = build_definitions(load_project(QUICKSTART_DIR))
    dg.Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert {"models/customers", "models/orders", "segments/vip_europe", "segments/active_subscribers",
            "snapshots/vip_europe_daily", "activations/vip_europe_daily", "sources/warehouse/raw/customers"} <= keys
    parents = {k.to_user_string() for k in graph.get(dg.AssetKey(["activations", "vip_europe_daily"])).parent_keys}
    assert parents == {"snapshots/vip_europe_daily"}
    parents = {k.to_user_string() for k in graph.get(dg.AssetKey(["snapshots", "vip_europe_daily"])).parent_keys}
    assert parents == {"segments/vip_europe"}
    parents = {k.to_user_string() for k in graph.get(dg.AssetKey(["models", "customers"])).parent_keys}
    assert parents == {"sources/warehouse/raw/customers"}
    checks = {(c.asset_key.to_user_string(), c.name) for c in graph.asset_check_keys}
    assert ("segments/vip_europe", "primary_key_unique") in checks
    assert ("models/customers", "primary_key_unique") in checks


def test_dinmo_sync_delivers_the_segment_to_the_bucket(project_dir: Path, tmp_path: Path, emulator) -> None:
    env = {"STORAGE_EMULATOR_HOST": emulator.url, "DAGSTER_HOME": str(tmp_path / "dh")}
    proc = dinmo("--project", str(project_dir), "sync", "vip_europe_daily", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    summary = [ln for ln in lines if ln.startswith("sync vip_europe_daily: ")]
    with duckdb.connect(str(project_dir / "data/warehouse.duckdb"), read_only=True) as con:
        expected = sorted(
            (str(i), e, f"{ltv:.2f}", c) for i, e, ltv, c in con.execute(
                "select customer_id, email, ltv, country from raw.customers "
                "where ltv > 500 and country in ('FR', 'DE')").fetchall())
    assert summary == [f"sync vip_europe_daily: full sync (difference, full_then_delta): {len(expected)} added, "
                       f"0 updated, 0 removed, 0 unchanged; {len(expected)} rows written in 3 file(s), "
                       + summary[0].split("3 file(s), ")[1]]
    uris = [ln.strip() for ln in lines if ln.startswith("  gs://")]
    stem = r"gs://dinmo-quickstart/crm/vip/\d{4}-\d{2}-\d{2}_\d{6}_vip"
    assert [re.sub(stem, "<stem>", u) for u in uris] == ["<stem>_added.csv", "<stem>_removed.csv",
                                                          "<stem>_updated.csv"]
    client = storage.Client(project="test")
    bucket = client.bucket(BUCKET)
    names = sorted(b.name for b in client.list_blobs(BUCKET, prefix="crm/vip/"))
    assert names == sorted(u.removeprefix(f"gs://{BUCKET}/") for u in uris)
    added = next(u for u in uris if u.endswith("_added.csv")).removeprefix(f"gs://{BUCKET}/")
    rows = list(csv.reader(io.StringIO(bucket.blob(added).download_as_bytes().decode("utf-8")), delimiter=";"))
    assert rows[0] == ["id", "Email", "lifetime_value", "country"]
    assert sorted(tuple(r) for r in rows[1:]) == expected
    for empty in ("_updated.csv", "_removed.csv"):
        path = next(u for u in uris if u.endswith(empty)).removeprefix(f"gs://{BUCKET}/")
        assert bucket.blob(path).download_as_bytes().decode() == "id;Email;lifetime_value;country\n"

    # The run is in the Dagster instance of DAGSTER_HOME, as `dagster dev` would show it.
    with dg.DagsterInstance.from_config(str(tmp_path / "dh")) as instance:
        runs = instance.get_runs()
        assert [r.job_name for r in runs] == ["sync_vip_europe_daily"]
        assert runs[0].status == dg.DagsterRunStatus.SUCCESS


def test_snapshot_activation_writes_parquet_matching_the_segment(project_dir: Path, tmp_path: Path,
                                                                  emulator) -> None:
    env = {"STORAGE_EMULATOR_HOST": emulator.url, "DAGSTER_HOME": str(tmp_path / "dh")}
    proc = dinmo("--project", str(project_dir), "sync", "subscribers_snapshot", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    uri = [ln.strip() for ln in proc.stdout.splitlines() if ln.startswith("  gs://")]
    assert len(uri) == 1 and re.fullmatch(
        r"gs://dinmo-quickstart/ads/subscribers/subscribers_\d{8}T\d{6}\.parquet", uri[0])
    data = storage.Client(project="t").bucket(BUCKET).blob(uri[0].removeprefix(f"gs://{BUCKET}/"))
    table = pq.read_table(io.BytesIO(data.download_as_bytes()))
    assert table.column_names == ["customer_id", "email", "plan", "ltv", "signup_at"]
    with duckdb.connect(str(project_dir / "data/warehouse.duckdb"), read_only=True) as con:
        expected = con.execute("select customer_id, email, plan, ltv, signup_at from raw.customers "
                               "where plan in ('pro', 'enterprise') and churned = false order by 1").fetchall()
    got = sorted(tuple(r.values()) for r in table.to_pylist())
    assert got == expected


def test_duplicate_keys_above_threshold_stop_the_sync(project_dir: Path, tmp_path: Path, emulator) -> None:
    with duckdb.connect(str(project_dir / "data/warehouse.duckdb")) as con:
        # 10% of the VIP rows duplicated: above the default 5%.
        con.execute("insert into raw.customers select * from raw.customers "
                    "where ltv > 500 and country in ('FR','DE') and customer_id % 10 = 0")
    env = {"STORAGE_EMULATOR_HOST": emulator.url, "DAGSTER_HOME": str(tmp_path / "dh")}
    client = storage.Client(project="t")
    before = sorted(b.name for b in client.list_blobs(BUCKET))
    proc = dinmo("--project", str(project_dir), "sync", "vip_europe_daily", cwd=tmp_path, env=env)
    assert proc.returncode == 1
    assert "sync vip_europe_daily: FAILED: " in proc.stdout
    assert "duplicate row(s) on primary key 'customer_id' of model 'customers'" in proc.stdout
    assert "above max_duplicate_pct 5%: syncs are blocked" in proc.stdout
    assert sorted(b.name for b in client.list_blobs(BUCKET)) == before


def test_demo_runs_twice_from_an_empty_directory(tmp_path: Path) -> None:
    first = dinmo("demo", cwd=tmp_path, env={"DAGSTER_HOME": str(tmp_path / "dh")})
    assert first.returncode == 0, first.stdout + first.stderr
    out = first.stdout
    assert "created the quickstart warehouse" in out
    assert "no GCS credentials found: started the local GCS emulator at http://127.0.0.1:" in out
    assert re.search(r"sync vip_europe_daily: full sync \(difference, full_then_delta\): \d+ added", out)
    landed = out.split("what landed where:")[1]
    assert landed.count("<- vip_europe_daily") == 3 and landed.count("<- subscribers_snapshot") == 1
    # The quickstart's HubSpot activation, served by the fake on the quickstart's own port.
    assert "HUBSPOT_TOKEN is not set: started the local HubSpot fake at http://127.0.0.1:9024 for the demo" in out
    assert re.search(r"^  hubspot crm \(local fake at http://127\.0\.0\.1:9024\): \d+ contacts  <- vip_to_crm$",
                     landed, re.MULTILINE)
    assert (tmp_path / "dinmo-quickstart" / "data" / "warehouse.duckdb").exists()
    second = dinmo("demo", cwd=tmp_path, env={"DAGSTER_HOME": str(tmp_path / "dh")})
    assert second.returncode == 0, second.stdout + second.stderr
    assert "applied sample changes" in second.stdout
    m = re.search(r"sync vip_europe_daily: delta sync \(difference, full_then_delta\): (\d+) added, "
                  r"(\d+) updated, (\d+) removed", second.stdout)
    assert m and int(m.group(1)) > 0 and int(m.group(2)) > 0
    # The first run's full export is still there, untouched, next to the second run's delta files.
    first_vip = [ln for ln in landed.splitlines() if ln.endswith("<- vip_europe_daily")]
    landed_again = second.stdout.split("what landed where:")[1].splitlines()
    assert set(first_vip) <= set(landed_again)
    assert sum(ln.endswith("<- vip_europe_daily") for ln in landed_again) == 6
    # Nothing is written inside the package.
    assert not (QUICKSTART_DIR / "data").exists()


def test_quickstart_file_names_differ_for_syncs_a_second_apart() -> None:
    """Two `dinmo demo` runs within a minute must not render one file name twice."""
    from datetime import datetime, timezone

    from dinmo_dagster.naming import render_template

    project = load_project(QUICKSTART_DIR)
    when = datetime(2025, 4, 14, 9, 5, 7, tzinfo=timezone.utc)
    files = {name: a for name, a in project.activations.items() if a.platform_service is None}
    assert sorted(files) == ["subscribers_snapshot", "vip_europe_daily"]  # vip_to_crm goes to HubSpot
    for name, a in files.items():
        first, second = (render_template(a.file_name, when.replace(second=s)) for s in (7, 8))
        assert first != second, name
