"""The real dagster-webserver on a tmp project: add a partition and launch a sync through GraphQL, as the UI does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import duckdb
import pytest

from dinmo_dagster.emulator import free_port

WEBSERVER = Path(sys.executable).parent / "dagster-webserver"

PROJECT = """
sources:
  warehouse: {type: duckdb, path: warehouse.duckdb}
models:
  customers: {source: warehouse, table: raw.customers, primary_key: customer_id}
  events: {source: warehouse, table: 'raw."web-events"', primary_key: event_id}
segments:
  vip: {model: customers, sql: "select * from {{ model }} where ltv > 100"}
destinations:
  out: {type: local, path: out}
activations:
  vip_files: {segment: vip, destination: out, file_name: vip, format: csv, description: "VIPs for the CRM team"}
"""


def _gql(url: str, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    req = urllib.request.Request(f"{url}/graphql", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        out = json.loads(resp.read())
    assert "errors" not in out, out
    return out["data"]


@pytest.fixture
def webserver(tmp_path: Path) -> Any:
    project = tmp_path / "project"
    (project / "out").mkdir(parents=True)
    (project / "dinmo.yaml").write_text(PROJECT)
    with duckdb.connect(str(project / "warehouse.duckdb")) as con:
        con.execute("create schema raw; create table raw.customers as select * from (values "
                    "(1, 'a@x.io', 500.0), (2, 'b@x.io', 50.0), (3, 'c@x.io', 900.0)) t(customer_id, email, ltv)")
        con.execute('create table raw."web-events" (event_id bigint, kind varchar)')
    home = tmp_path / "dagster_home"
    home.mkdir()
    # Runs launched from the UI are queued; without a daemon, launch them directly.
    (home / "dagster.yaml").write_text(
        "telemetry:\n  enabled: false\n"
        "run_coordinator:\n  module: dagster.core.run_coordinator\n  class: DefaultRunCoordinator\n"
        "concurrency:\n  pools:\n    default_limit: 1\n")
    (tmp_path / "workspace.yaml").write_text("load_from:\n  - python_module: dinmo_dagster.definitions\n")
    port = free_port()
    env = {**os.environ, "DAGSTER_HOME": str(home), "DINMO_PROJECT_DIR": str(project)}
    log = open(tmp_path / "webserver.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([str(WEBSERVER), "-w", str(tmp_path / "workspace.yaml"), "-h", "127.0.0.1",
                             "-p", str(port)], cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 40
        while True:
            try:
                urllib.request.urlopen(f"{url}/server_info", timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise AssertionError((tmp_path / "webserver.log").read_text()[-3000:]) from None
                time.sleep(0.3)
        yield url, project
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_sync_launched_through_graphql_delivers_and_reports_counts(webserver: Any) -> None:
    url, project = webserver
    repos = _gql(url, "{ repositoriesOrError { ... on RepositoryConnection { nodes { name location { name } } } } }")
    [repo] = repos["repositoriesOrError"]["nodes"]
    selector = {"repositoryLocationName": repo["location"]["name"], "repositoryName": repo["name"]}

    nodes = _gql(url, "{ assetNodes { assetKey { path } dependencyKeys { path } } }")["assetNodes"]
    deps = {"/".join(n["assetKey"]["path"]): {"/".join(d["path"]) for d in n["dependencyKeys"]} for n in nodes}
    assert "models/customers" in deps["segments/vip"]
    assert "segments/vip" in deps["snapshots/vip_files"]
    assert deps["activations/vip_files"] == {"snapshots/vip_files"}

    key = "20250414T090000.000000Z"
    added = _gql(url, """mutation($sel: RepositorySelector!, $k: String!) {
        addDynamicPartition(repositorySelector: $sel, partitionsDefName: "sync_vip_files", partitionKey: $k) {
          __typename ... on PythonError { message } } }""", {"sel": selector, "k": key})
    assert added["addDynamicPartition"]["__typename"] == "AddDynamicPartitionSuccess", added

    launched = _gql(url, """mutation($p: ExecutionParams!) { launchRun(executionParams: $p) {
        __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message }
        ... on RunConfigValidationInvalid { errors { message } } } }""", {"p": {
        "selector": {**selector, "jobName": "sync_vip_files"},
        "executionMetadata": {"tags": [{"key": "dagster/partition", "value": key}]},
        "runConfigData": {},
    }})
    assert launched["launchRun"]["__typename"] == "LaunchRunSuccess", launched
    run_id = launched["launchRun"]["run"]["runId"]

    deadline = time.time() + 120  # a shared 2-core machine can be slow to start the run's process
    status = None
    while time.time() < deadline:
        status = _gql(url, 'query($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }',
                      {"id": run_id})["runOrError"]["status"]
        if status in ("SUCCESS", "FAILURE", "CANCELED"):
            break
        time.sleep(0.5)
    assert status == "SUCCESS", status

    asset = _gql(url, """{ assetOrError(assetKey: {path: ["activations", "vip_files"]}) { ... on Asset {
        assetMaterializations(limit: 1) { partition metadataEntries { label
          ... on IntMetadataEntry { intValue } } } } } }""")
    [mat] = asset["assetOrError"]["assetMaterializations"]
    md = {e["label"]: e.get("intValue") for e in mat["metadataEntries"]}
    assert mat["partition"] == key
    assert md["rows_added"] == 2 and md["rows_removed"] == 0 and md["files_written"] == 1
    assert list((project / "out").rglob("vip*"))

    # The segment's column table shows each column's type as the warehouse reports it, and its role.
    seg = _gql(url, """{ assetOrError(assetKey: {path: ["segments", "vip"]}) { ... on Asset {
        assetMaterializations(limit: 1) { metadataEntries { label ... on TableSchemaMetadataEntry {
          schema { columns { name type description } } } } } } } }""")
    [seg_mat] = seg["assetOrError"]["assetMaterializations"]
    [schema] = [e["schema"] for e in seg_mat["metadataEntries"] if e["label"] == "dagster/column_schema"]
    assert schema["columns"] == [
        {"name": "customer_id", "type": "INTEGER", "description": "primary key"},
        {"name": "email", "type": "VARCHAR", "description": None},
        {"name": "ltv", "type": "DECIMAL(4,1)", "description": None},
    ]


def test_graph_labels_tell_the_snapshot_from_the_delivery(webserver: Any) -> None:
    url, _project = webserver
    nodes = _gql(url, """{ assetNodes { assetKey { path } description kinds dependencyKeys { path }
        metadataEntries { label ... on TextMetadataEntry { text } } } }""")["assetNodes"]
    by_key = {"/".join(n["assetKey"]["path"]): n for n in nodes}
    snapshot, delivery = by_key["snapshots/vip_files"], by_key["activations/vip_files"]
    # The graph labels each node with its key's last part, the activation's name for both; the first line
    # of the description (shown under the label with the Description facet) and the kinds tell them apart.
    assert snapshot["assetKey"]["path"][-1] == delivery["assetKey"]["path"][-1] == "vip_files"
    assert snapshot["description"].splitlines()[0] == "vip_files: snapshot (delta storage)"
    assert delivery["description"].split("\n\n")[:2] == ["vip_files: delivery to out", "VIPs for the CRM team"]
    assert "`dinmo_delta_storage`" in snapshot["description"]
    assert sorted(snapshot["kinds"]) == ["duckdb", "snapshot"]
    assert sorted(delivery["kinds"]) == ["csv", "delivery", "local"]
    steps = {k: {e["label"]: e.get("text") for e in by_key[k]["metadataEntries"]}["dinmo/step"]
             for k in ("snapshots/vip_files", "activations/vip_files")}
    assert steps == {"snapshots/vip_files": "1 of 2: snapshot (delta storage)",
                     "activations/vip_files": "2 of 2: delivery to out"}
    # A quoted table name with a character Dagster names refuse still gives a valid source asset.
    source = by_key["sources/warehouse/raw/web_events_e8c52cff"]
    assert source["description"] == 'Table raw."web-events" in source \'warehouse\''
    assert {"/".join(d["path"]) for d in by_key["models/events"]["dependencyKeys"]} == {
        "sources/warehouse/raw/web_events_e8c52cff"}
