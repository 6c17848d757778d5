"""The `dinmo` command line as a new user meets it: short failures, honest `validate`, `dinmo partition`
with the real `dagster` CLI, and `dinmo ui` on the demo (real processes, real webserver)."""

from __future__ import annotations

import csv
import json
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
from cli_processes import clean_env, dinmo, emulator_serving, make_project, run

from dinmo_dagster.config import QUICKSTART_DIR, load_project
from dinmo_dagster.emulator import free_port
from dinmo_dagster.fakes.local import DEMO_TOKEN

DAGSTER = Path(sys.executable).parent / "dagster"

def test_a_failed_sync_prints_its_cause_in_a_few_lines(tmp_path: Path) -> None:
    project = make_project(tmp_path, with_table=False)
    env = clean_env(DAGSTER_HOME=str(tmp_path / "dh"))
    proc = dinmo("--project", str(project), "sync", "big_diff", cwd=tmp_path, env=env)
    assert proc.returncode == 1
    lines = (proc.stdout + proc.stderr).splitlines()
    assert len(lines) <= 6, proc.stdout + proc.stderr
    m = re.fullmatch(r"sync big_diff: FAILED in models/customers \(Dagster run ([0-9a-f-]{36})\)", lines[0])
    assert m, lines
    assert lines[1] == (f"  full log: that run in `dinmo --project {project} ui`, "
                        f"or `dinmo --project {project} --verbose sync big_diff`")
    assert lines[-1].startswith("sync big_diff: FAILED: source 'wh' (duckdb): statement failed: "
                                "Catalog Error: Table with name customers does not exist!")
    assert proc.stderr == ""
    # The full story stays in the run's log in the instance.
    with dg.DagsterInstance.from_config(str(tmp_path / "dh")) as instance:
        run_ = instance.get_run_by_id(m.group(1))
        assert run_ is not None and run_.status == dg.DagsterRunStatus.FAILURE
        failures = [e for e in instance.all_logs(m.group(1)) if e.dagster_event and e.dagster_event.is_step_failure]
        assert "Table with name customers does not exist" in failures[0].dagster_event.step_failure_data.error.to_string()

    verbose = dinmo("--project", str(project), "--verbose", "sync", "big_diff", cwd=tmp_path, env=env)
    assert verbose.returncode == 1
    assert "STEP_FAILURE" in verbose.stderr and 'File "' in verbose.stderr
    assert "DagsterExecutionStepExecutionError" in verbose.stderr
    assert verbose.stdout.splitlines()[-1] == lines[-1]


# `dinmo sync` in a child that counts DuckDB's file opens (a wrapper around the driver's own connect).
_COUNTING_SYNC = """
import sys, duckdb
opened = []
connect = duckdb.connect
def counting_connect(*args, **kwargs):
    opened.append(args[0] if args else kwargs["database"])
    return connect(*args, **kwargs)
duckdb.connect = counting_connect
from dinmo_dagster.cli import main
code = main(sys.argv[1:])
print("opened", len(opened), "modules", sorted({m.split(".")[0] for m in sys.modules}
                                            & {"google", "psycopg", "databricks", "dagster_gcp"}))
sys.exit(code)
"""


def test_a_sync_is_one_dagster_run_with_one_warehouse_open_per_step(tmp_path: Path) -> None:
    """The fixed cost of a small sync: one Dagster run in the CLI's instance, with its steps, events and
    metadata, that opens the DuckDB file once per step (not per statement), captures no output into
    files and imports no other connector's client."""
    project = make_project(tmp_path)
    env = clean_env(DAGSTER_HOME=str(tmp_path / "dh"))
    proc = run([sys.executable, "-c", _COUNTING_SYNC, "--project", str(project), "sync", "big_diff"], tmp_path, env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == ("sync big_diff: full sync (difference, full_then_delta): 5 added, 0 updated, 0 removed, "
                        "0 unchanged; 5 rows written in 3 file(s), 139 bytes")
    with dg.DagsterInstance.from_config(str(tmp_path / "dh")) as instance:
        [run_] = instance.get_runs()
        assert (run_.job_name, run_.status, run_.tags["dinmo/trigger"]) == (
            "sync_big_diff", dg.DagsterRunStatus.SUCCESS, "cli")
        events = [e.dagster_event for e in instance.all_logs(run_.run_id) if e.dagster_event]
        started = [e.step_key for e in events if e.is_step_start]
        assert started == ["models__customers", "models__customers_primary_key_unique", "segments__big",
                           "segments__big_primary_key_unique", "snapshots__big_diff", "activations__big_diff"]
        [delivered] = [e.event_specific_data.materialization for e in events if e.is_step_materialization
                       and e.asset_key == dg.AssetKey(["activations", "big_diff"])]
        assert (delivered.metadata["rows_added"].value, delivered.metadata["files_written"].value) == (5, 3)
    # The CLI prints to the terminal itself: no stdout/stderr capture files (nor its tail processes).
    assert not (tmp_path / "dh" / "storage" / run_.run_id).exists()
    assert lines[-1] == f"opened {len(started)} modules []"
    assert proc.stderr == ""


def test_validate_connect_says_valid_only_when_nothing_is_wrong(tmp_path: Path) -> None:
    project = make_project(tmp_path, with_table=False)
    env = clean_env(DAGSTER_HOME=str(tmp_path / "dh"))
    proc = dinmo("--project", str(project), "validate", "--connect", cwd=tmp_path, env=env)
    assert proc.returncode == 1
    assert proc.stdout.splitlines() == [f"1 problem(s) in {project} (checked with --connect):",
                                        "  models.customers: table raw.customers does not exist"]
    with duckdb.connect(str(project / "wh.duckdb")) as con:
        con.execute("create table raw.customers as select 1 as customer_id, 600 as ltv")
    ok = dinmo("--project", str(project), "validate", "--connect", cwd=tmp_path, env=env)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.splitlines()[-1] == (
        f"{project}: 1 source(s), 1 model(s), 1 segment(s), 1 destination(s), 1 activation(s) "
        "(connections and entities checked): valid")


def test_validate_prints_template_warnings_without_failing(tmp_path: Path) -> None:
    project = make_project(tmp_path)
    # A change-set activation whose file name renders the same on every sync: a warning, not a problem.
    text = (project / "dinmo.yaml").read_text().replace('"{YYYY}{MM}{DD}T{HH}{mm}{ss}_big"', "big")
    (project / "dinmo.yaml").write_text(text)
    warnings = list(getattr(load_project(project), "warnings", []))
    proc = dinmo("--project", str(project), "validate", cwd=tmp_path, env=clean_env())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines() == [*(f"warning: {w}" for w in warnings), (
        f"{project}: 1 source(s), 1 model(s), 1 segment(s), 1 destination(s), 1 activation(s): valid")]


def test_a_config_error_is_one_clean_report_for_every_command(tmp_path: Path) -> None:
    project = make_project(tmp_path)
    text = (project / "dinmo.yaml").read_text().replace("sync_mode: difference", "sync_mode: diff")
    (project / "dinmo.yaml").write_text(text)
    env = clean_env(DAGSTER_HOME=str(tmp_path / "dh"))
    expected = [f"1 problem(s) in {project}:",
                ("  dinmo.yaml: activations.big_diff.sync_mode: found 'diff'; allowed: 'snapshot', 'upsert', "
                 "'insert', 'difference', 'update' or 'mirror'")]
    for command in (["validate"], ["sync", "big_diff"], ["preview", "big_diff"], ["partition", "big_diff"]):
        proc = dinmo("--project", str(project), *command, cwd=tmp_path, env=env)
        assert (proc.returncode, proc.stdout.splitlines(), proc.stderr) == (1, expected, ""), command


def test_partition_then_the_dagster_cli_materializes_every_asset_kind(tmp_path: Path) -> None:
    """The README's route: `dinmo partition` (which also creates the CLI's instance), then
    `dagster asset materialize` for models and segments, and with `--partition` for snapshots and
    activations."""
    project = make_project(tmp_path)
    env = clean_env(DAGSTER_HOME=str(tmp_path / "dh"), DINMO_PROJECT_DIR=str(project))
    part = dinmo("partition", "big_diff", cwd=tmp_path, env=env)
    assert part.returncode == 0, part.stdout + part.stderr
    key = part.stdout.strip()
    assert re.fullmatch(r"\d{8}T\d{6}\.\d{6}Z", key) and part.stdout == key + "\n"
    assert f"--select 'snapshots/big_diff,activations/big_diff' --partition {key}" in part.stderr

    materialize = [str(DAGSTER), "asset", "materialize", "-m", "dinmo_dagster.definitions", "--select"]
    upstream = run([*materialize, "models/customers,segments/big"], tmp_path, env)
    assert upstream.returncode == 0, upstream.stderr[-3000:]
    first = run([*materialize, "snapshots/big_diff,activations/big_diff", "--partition", key], tmp_path, env)
    assert first.returncode == 0, first.stderr[-3000:]
    stem = key[:15]  # YYYYMMDDTHHMMSS, the template's rendering of the partition's time (UTC)
    assert sorted(p.name for p in (project / "out").iterdir()) == [
        f"{stem}_big_added.csv", f"{stem}_big_removed.csv", f"{stem}_big_updated.csv"]
    with open(project / "out" / f"{stem}_big_added.csv", newline="") as f:
        header, *rows = list(csv.reader(f))
    assert header == ["customer_id", "email", "ltv"]
    assert sorted(rows, key=lambda r: int(r[0])) == [[str(i), f"c{i}@x.io", str(i * 100)] for i in range(6, 11)]

    # The whole chain in one command, with a second partition: a delta sync.
    with duckdb.connect(str(project / "wh.duckdb")) as con:
        con.execute("update raw.customers set ltv = 1 where customer_id = 6")
    key2 = dinmo("partition", "big_diff", cwd=tmp_path, env=env).stdout.strip()
    assert key2 > key
    second = run([*materialize, "*activations/big_diff", "--partition", key2], tmp_path, env)
    assert second.returncode == 0, second.stderr[-3000:]
    with open(project / "out" / f"{key2[:15]}_big_removed.csv", newline="") as f:
        assert list(csv.reader(f)) == [["customer_id", "email", "ltv"], ["6", "c6@x.io", "600"]]
    with dg.DagsterInstance.from_config(str(tmp_path / "dh")) as instance:
        mats = instance.fetch_materializations(dg.AssetKey(["activations", "big_diff"]), limit=10).records
        assert sorted(r.partition_key for r in mats) == [key, key2]


# ---------------------------------------------------------------------------------------------------------
# dinmo ui
# ---------------------------------------------------------------------------------------------------------


def _gql(url: str, query: str) -> dict[str, Any]:
    req = urllib.request.Request(f"{url}/graphql", data=json.dumps({"query": query}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        out = json.loads(resp.read())
    assert "errors" not in out, out
    return out["data"]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            resp.read()
        return True
    except OSError:
        return False


def _descendants(pid: int) -> set[int]:
    """Every live process under ``pid``, from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; only its exit status is left


def test_dinmo_ui_on_the_demo_shows_its_runs_and_stops_everything(tmp_path: Path) -> None:
    env = clean_env()
    # The quickstart with its HubSpot fake on a free port: another test run may hold 9024.
    fake_port = free_port()
    fake_url = f"http://127.0.0.1:{fake_port}"
    (tmp_path / "dinmo-quickstart").mkdir()
    (tmp_path / "dinmo-quickstart" / "dinmo.yaml").write_text(
        (QUICKSTART_DIR / "dinmo.yaml").read_text().replace("http://127.0.0.1:9024", fake_url))
    demo = dinmo("demo", cwd=tmp_path, env=env)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert demo.stdout.splitlines()[-2:] == [
        "open the Dagster UI on this project (from this directory; it restarts the emulator and the fake):",
        "  dinmo --project dinmo-quickstart ui"]
    assert (tmp_path / ".dagster_home" / "dagster.yaml").exists()  # the CLI's instance: ./.dagster_home

    port = free_port()
    log_path = tmp_path / "ui.log"
    with open(log_path, "w") as log:
        ui = subprocess.Popen([sys.executable, "-m", "dinmo_dagster.cli", "--project", "dinmo-quickstart", "ui",
                               "--port", str(port)], cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    started: set[int] = set()
    try:
        deadline = time.time() + 120
        while "Dagster UI at" not in log_path.read_text():
            assert ui.poll() is None and time.time() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.5)
        assert _answers(f"{url}/server_info")
        text = log_path.read_text()
        emulator = re.search(r"started the local GCS emulator at (http://127\.0\.0\.1:\d+) for the UI", text)
        assert emulator, text[-3000:]
        assert (f"HUBSPOT_TOKEN is not set: started the local HubSpot fake at {fake_url} for the UI "
                f"(destination crm; contacts kept in {tmp_path / 'dinmo-quickstart' / '.hubspot' / 'crm.json'})"
                in text.splitlines()), text[-3000:]
        started = _descendants(ui.pid)
        # dagster dev's processes (which run the UI's syncs) get the fake's token; the fake serves the demo's contacts.
        environs = [Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") for pid in started if _alive(pid)]
        assert any(f"HUBSPOT_TOKEN={DEMO_TOKEN}".encode() in e for e in environs)
        held = json.loads((tmp_path / "dinmo-quickstart" / ".hubspot" / "crm.json").read_text())["store"]["contacts"]
        request = urllib.request.Request(f"{fake_url}/crm/v3/objects/contacts?limit=100000",
                                         headers={"Authorization": f"Bearer {DEMO_TOKEN}"})
        with urllib.request.urlopen(request, timeout=10) as resp:
            assert sorted(r["id"] for r in json.loads(resp.read())["results"]) == sorted(held)

        nodes = _gql(url, "{ assetNodes { assetKey { path } staleStatus } }")["assetNodes"]
        status = {"/".join(n["assetKey"]["path"]): n["staleStatus"] for n in nodes}
        assert {"models/customers", "models/orders", "segments/vip_europe", "segments/active_subscribers",
                "snapshots/vip_europe_daily", "activations/vip_europe_daily"} <= set(status)
        # Both demo syncs refreshed models/customers: neither segment is "Unsynced" for it.
        assert {k: v for k, v in status.items() if v != "FRESH"} == {}
        runs = _gql(url, "{ runsOrError { ... on Runs { results { jobName status } } } }")["runsOrError"]["results"]
        assert sorted((r["jobName"], r["status"]) for r in runs) == [
            ("sync_subscribers_snapshot", "SUCCESS"), ("sync_vip_europe_daily", "SUCCESS"),
            ("sync_vip_to_crm", "SUCCESS")]
        # The emulator serves the demo's files (kept under the project's .gcs folder).
        with urllib.request.urlopen(f"{emulator.group(1)}/storage/v1/b/dinmo-quickstart/o", timeout=10) as resp:
            names = sorted(o["name"] for o in json.loads(resp.read())["items"])
        assert len(names) == 4 and sum(n.startswith("crm/vip/") for n in names) == 3
        # The daemon runs too, as with `dagster dev`: it sends heartbeats.
        deadline = time.time() + 60
        query = "{ instance { daemonHealth { allDaemonStatuses { daemonType healthy } } } }"
        while True:
            daemons = _gql(url, query)["instance"]["daemonHealth"]["allDaemonStatuses"]
            if {d["daemonType"]: d["healthy"] for d in daemons}.get("SENSOR"):
                break
            assert time.time() < deadline, daemons
            time.sleep(1)
    finally:
        ui.send_signal(signal.SIGTERM)
        code = ui.wait(timeout=90)
    assert code == 0, log_path.read_text()[-3000:]
    assert log_path.read_text().rstrip().endswith("stopped the Dagster UI")
    assert started and not [pid for pid in started if _alive(pid)]
    assert not _answers(f"{url}/server_info") and not _answers(f"{emulator.group(1)}/storage/v1/b")
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", fake_port)) != 0  # the HubSpot fake stopped too
    assert not (QUICKSTART_DIR / "data").exists()


GCS_PROJECT = """
sources:
  wh: {type: duckdb, path: wh.duckdb}
models:
  customers: {source: wh, table: raw.customers, primary_key: customer_id}
segments:
  big: {model: customers, sql: "select * from {{ model }} where ltv > 500"}
destinations:
  bucket: {type: gcs, bucket: acme-exports, project: acme}
activations:
  big_files: {segment: big, destination: bucket, file_name: "big_{X}", sync_mode: snapshot}
"""


def test_dinmo_emulator_serves_a_project_without_gcs_credentials(tmp_path: Path) -> None:
    project = make_project(tmp_path)
    (project / "dinmo.yaml").write_text(textwrap.dedent(GCS_PROJECT))
    env = clean_env(DAGSTER_HOME=str(tmp_path / "dh"))
    failed = dinmo("--project", str(project), "sync", "big_files", cwd=tmp_path, env=env)
    assert failed.returncode == 1
    assert failed.stdout.splitlines()[-1].endswith(
        "no Google Cloud credentials: set service_account_json or service_account_file, or configure application "
        "default credentials (to try it without a Google Cloud account: `dinmo emulator`, then export "
        "STORAGE_EMULATOR_HOST as it prints)")

    with emulator_serving(project, tmp_path, env, tmp_path / "emulator.log") as lines:
        url = re.fullmatch(r"  export STORAGE_EMULATOR_HOST=(http://127\.0\.0\.1:\d+)", lines[1]).group(1)
        assert lines[0] == (f"GCS emulator at {url} with bucket(s) acme-exports (objects kept under "
                            f"{project / '.gcs'}). In another shell:")
        synced = dinmo("--project", str(project), "sync", "big_files", cwd=tmp_path,
                       env={**env, "STORAGE_EMULATOR_HOST": url})
        assert synced.returncode == 0, synced.stdout + synced.stderr
        [uri] = [ln.strip() for ln in synced.stdout.splitlines() if ln.startswith("  gs://")]
        with urllib.request.urlopen(f"{url}/storage/v1/b/acme-exports/o", timeout=10) as resp:
            assert [o["name"] for o in json.loads(resp.read())["items"]] == [uri.removeprefix("gs://acme-exports/")]
    assert not _answers(f"{url}/storage/v1/b")
    assert list((project / ".gcs").rglob("big_*.csv"))  # kept for the next start
