"""A team deployment (deploy/): the instance on PostgreSQL, the run queue, and the Helm values.

- deploy/dagster.yaml is loaded as a real instance on the test PostgreSQL server (a database of its own),
  and a real `dinmo sync` and real queued runs (`dagster job launch` + `dagster-daemon run` on
  deploy/workspace.yaml) go through it. What Dagster stored is read back from its tables with psycopg.
- deploy/helm/values.yaml is validated without a cluster: against the chart's values.schema.json with
  jsonschema, then rendered as the chart renders dagster.yaml and checked by Dagster's own instance
  schema and dagster-k8s's K8sRunLauncher config schema.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import jsonschema
import psycopg
import pytest
import yaml
from cli_processes import OUTSIDE, clean_env, make_project
from dagster._config import process_config  # the config check Dagster runs when an instance loads a class
from dagster._core.instance.config import dagster_instance_config
from dagster_k8s import K8sRunLauncher

from dinmo_dagster import sync
from dinmo_dagster.names import ACTIVATION_TAG

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
BIN = Path(sys.executable).parent

def read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


@pytest.fixture
def team_db(postgres_server: Any) -> Iterator[str]:
    """A fresh database for Dagster's tables, dropped afterwards (the session's database is shared)."""
    name = f"dagster_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_server.dsn, autocommit=True) as con:
        con.execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        with psycopg.connect(postgres_server.dsn, autocommit=True) as con:
            con.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # also ends leftover sessions


@pytest.fixture
def team_env(tmp_path: Path, postgres_server: Any, team_db: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """DAGSTER_HOME holding deploy/dagster.yaml as shipped, and the DAGSTER_PG_* variables it reads;
    set in this process (for ``DagsterInstance.get()``) and returned for child processes."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(DEPLOY / "dagster.yaml", home / "dagster.yaml")
    env = clean_env(
        DAGSTER_HOME=str(home),
        DAGSTER_PG_HOST=postgres_server.host,
        DAGSTER_PG_PORT=str(postgres_server.port),
        DAGSTER_PG_USERNAME=postgres_server.user,
        DAGSTER_PG_PASSWORD=postgres_server.password,
        DAGSTER_PG_DB=team_db,
    )
    for key in OUTSIDE:
        monkeypatch.delenv(key, raising=False)
    for key in ("DAGSTER_HOME", "DAGSTER_PG_HOST", "DAGSTER_PG_PORT", "DAGSTER_PG_USERNAME",
                "DAGSTER_PG_PASSWORD", "DAGSTER_PG_DB"):
        monkeypatch.setenv(key, env[key])
    return env


def team_dsn(postgres_server: Any, db: str) -> str:
    return (f"host={postgres_server.host} port={postgres_server.port} dbname={db} "
            f"user={postgres_server.user} password={postgres_server.password}")


# ---------------------------------------------------------------------------------------------------------
# deploy/dagster.yaml on PostgreSQL
# ---------------------------------------------------------------------------------------------------------


def test_the_instance_file_names_no_secret_and_loads_on_postgresql(team_env: dict[str, str]) -> None:
    text = (DEPLOY / "dagster.yaml").read_text()
    assert team_env["DAGSTER_PG_PASSWORD"] not in text
    assert yaml.safe_load(text)["storage"]["postgres"]["postgres_db"]["password"] == {"env": "DAGSTER_PG_PASSWORD"}

    with dg.DagsterInstance.get() as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        assert type(instance.schedule_storage).__name__ == "PostgresScheduleStorage"
        assert isinstance(instance.run_coordinator, dg.QueuedRunCoordinator)
        # The run queue's limits as the instance (and so the daemon) reads them.
        queue = instance.get_concurrency_config().run_queue_config
        assert queue is not None and queue.max_concurrent_runs == 10
        assert queue.tag_concurrency_limits == [
            {"key": ACTIVATION_TAG, "value": {"applyLimitPerUniqueValue": True}, "limit": 1}]
        assert instance.get_concurrency_config().pool_config.default_pool_limit == 1
        assert instance.run_monitoring_enabled


def test_a_sync_through_the_team_instance_is_stored_in_postgresql(
        tmp_path: Path, team_env: dict[str, str], postgres_server: Any) -> None:
    project = make_project(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "dinmo_dagster.cli", "--project", str(project), "sync", "big_diff"],
                          check=False, capture_output=True, text=True, cwd=tmp_path, env=team_env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("sync big_diff: full sync (difference, full_then_delta): 5 added, 0 updated, "
                                  "0 removed, 0 unchanged"), proc.stdout
    files = sorted(p.name for p in (project / "out").iterdir())
    assert [f[15:] for f in files] == ["_big_added.csv", "_big_removed.csv", "_big_updated.csv"]
    added = read_csv(project / "out" / files[0])
    assert added[0] == ["customer_id", "email", "ltv"]
    assert sorted(added[1:], key=lambda r: int(r[0])) == [[str(i), f"c{i}@x.io", str(i * 100)] for i in range(6, 11)]

    with psycopg.connect(team_dsn(postgres_server, team_env["DAGSTER_PG_DB"])) as con:
        runs = con.execute("select run_id, pipeline_name, status from runs").fetchall()
        assert [(name, status) for _, name, status in runs] == [("sync_big_diff", "SUCCESS")]
        run_id = runs[0][0]
        tags = dict(con.execute("select key, value from run_tags where run_id = %s", (run_id,)).fetchall())
        assert tags[ACTIVATION_TAG] == "big_diff"
        assert tags["dinmo/trigger"] == "cli"
        partition = tags["dagster/partition"]
        assert files[0].startswith(partition[:15])  # the files are named after the sync's partition
        events = [r[0] for r in con.execute(
            "select dagster_event_type from event_logs where run_id = %s and dagster_event_type is not null "
            "order by id", (run_id,)).fetchall()]
        # Dagster stores a run's start and success under their historical names.
        assert {"PIPELINE_START", "STEP_START", "STEP_SUCCESS", "ASSET_MATERIALIZATION",
                "ASSET_CHECK_EVALUATION"} <= set(events)
        assert events[-1] == dg.DagsterEventType.RUN_SUCCESS.value == "PIPELINE_SUCCESS"
        mats = [json.loads(r[0]) for r in con.execute(
            "select asset_key from event_logs where run_id = %s and dagster_event_type = 'ASSET_MATERIALIZATION'",
            (run_id,)).fetchall()]
        assert sorted(mats) == [["activations", "big_diff"], ["models", "customers"], ["segments", "big"],
                                ["snapshots", "big_diff"]]
        partitions = [r[0] for r in con.execute(
            "select partition from dynamic_partitions where partitions_def_name = 'sync_big_diff'").fetchall()]
        assert partitions == [partition]
        # Dagster's tables hold no secret: not the storage password, not the sync's.
        leaks = con.execute("select count(*) from event_logs where event like %s",
                            (f"%{postgres_server.password}%",)).fetchone()
        assert leaks == (0,)

    with dg.DagsterInstance.get() as instance:  # the same, through Dagster's API on the same file
        record = instance.get_run_record_by_id(run_id)
        assert record is not None and record.dagster_run.status == dg.DagsterRunStatus.SUCCESS
        assert record.dagster_run.tags[ACTIVATION_TAG] == "big_diff"


def _wait_for_runs(run_ids: list[str], deadline: float) -> list[Any]:
    with dg.DagsterInstance.get() as instance:
        while True:
            records = [instance.get_run_record_by_id(r) for r in run_ids]
            if all(r is not None and r.dagster_run.is_finished for r in records):
                return records
            if time.monotonic() > deadline:
                return records
            time.sleep(1)


def test_the_daemon_runs_one_queued_sync_per_activation_at_a_time(
        tmp_path: Path, team_env: dict[str, str]) -> None:
    """Two runs of one activation are queued together; the daemon (as deployed: `dagster-daemon run` on
    deploy/workspace.yaml) starts the second only once the first has finished."""
    project = make_project(tmp_path)
    env = {**team_env, "DINMO_PROJECT_DIR": str(project)}
    keys = [sync.new_partition_key()]
    time.sleep(1.1)  # the project's file names have a resolution of one second
    keys.append(sync.new_partition_key())
    with dg.DagsterInstance.get() as instance:
        instance.add_dynamic_partitions("sync_big_diff", keys)

    run_ids = [str(uuid.uuid4()) for _ in keys]
    # Both runs are submitted as the UI would: `dagster job launch` goes through the run coordinator, which
    # queues them. (Both at once: each command loads the code location, which takes a while.)
    launches = [subprocess.Popen(
        [str(BIN / "dagster"), "job", "launch", "-w", str(DEPLOY / "workspace.yaml"), "-j", "sync_big_diff",
         "--run-id", run_id, "--tags", json.dumps({"dagster/partition": key})],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        for run_id, key in zip(run_ids, keys)]
    errors = [launch.communicate(timeout=300)[1] for launch in launches]
    for launch in launches:  # the code server each command started, should it linger
        with contextlib.suppress(ProcessLookupError):
            os.killpg(launch.pid, signal.SIGKILL)
    assert [launch.returncode for launch in launches] == [0, 0], "\n".join(e[-3000:] for e in errors)
    with dg.DagsterInstance.get() as instance:
        for run_id in run_ids:
            run = instance.get_run_by_id(run_id)
            assert run is not None and run.status == dg.DagsterRunStatus.QUEUED
            assert run.tags[ACTIVATION_TAG] == "big_diff"

    with open(tmp_path / "daemon.log", "w") as log:
        daemon = subprocess.Popen([str(BIN / "dagster-daemon"), "run", "-w", str(DEPLOY / "workspace.yaml")],
                                  cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            records = _wait_for_runs(run_ids, time.monotonic() + 300)
        finally:
            os.killpg(daemon.pid, signal.SIGTERM)  # the daemon, and the code server and run workers it started
            try:
                daemon.wait(timeout=30)
            finally:
                # A code server interrupted while loading the definitions can linger: end the whole group.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(daemon.pid, signal.SIGKILL)
                daemon.wait()
    daemon_log = (tmp_path / "daemon.log").read_text()[-3000:]
    assert [r.dagster_run.status if r else None for r in records] == [dg.DagsterRunStatus.SUCCESS] * 2, daemon_log
    first, second = sorted(records, key=lambda r: r.start_time)
    assert first.end_time <= second.start_time, (first.start_time, first.end_time, second.start_time)
    # Both syncs delivered: the one that ran first a full sync, the other a delta with nothing changed.
    names = sorted(p.name for p in (project / "out").iterdir())
    assert sorted({n[:15] for n in names}) == sorted(k[:15] for k in keys)
    full, delta = (r.dagster_run.tags["dagster/partition"][:15] for r in (first, second))
    assert len(read_csv(project / "out" / f"{full}_big_added.csv")) == 1 + 5
    assert read_csv(project / "out" / f"{delta}_big_added.csv") == [["customer_id", "email", "ltv"]]
    # Launched without run config, each sync ran its steps in its run's own process (no process per step).
    with dg.DagsterInstance.get() as instance:
        for record in records:
            engine = [e.message for e in instance.all_logs(record.dagster_run.run_id)
                      if e.dagster_event and e.dagster_event.event_type_value == "ENGINE_EVENT"]
            assert any(m.startswith("Executing steps in process") for m in engine), engine
            assert not any("subprocess" in m for m in engine), engine


# ---------------------------------------------------------------------------------------------------------
# deploy/helm/values.yaml, without a cluster
# ---------------------------------------------------------------------------------------------------------

HELM = DEPLOY / "helm"


def _values() -> dict[str, Any]:
    return yaml.safe_load((HELM / "values.yaml").read_text())


def _merged_schema() -> dict[str, Any]:
    """The chart's schema as it applies to values that helm merges onto the chart's own values.yaml.

    Helm validates the merged values. Maps merge, so a key the chart's defaults provide may be missing
    here: ``required`` is dropped wherever values are merged. Lists replace the defaults whole, so inside
    array items every ``required`` stays. Everything else (types, enums, unknown keys, conditionals) stays.
    Kubernetes objects (pod specs, resources, env sources: ``$ref`` to kubernetesjsonschema.dev) are not
    fetched, as there is no network here: they accept anything (kubectl would check them on a cluster). A
    ``$ref`` overrides its siblings in this schema's draft 7, so such a node becomes ``{}``.
    """
    schema = json.loads((HELM / "values.schema.json").read_text())

    def walk(node: Any, in_items: bool) -> Any:
        if isinstance(node, list):
            return [walk(n, in_items) for n in node]
        if not isinstance(node, dict):
            return node
        if str(node.get("$ref", "")).startswith("https://"):
            return {}
        out = {}
        for k, v in node.items():
            if k == "required" and not in_items and isinstance(v, list):
                continue
            if k == "$ref" and isinstance(v, str) and v.startswith("#/definitions/") and not in_items:
                out[k] = v + "__merged"
            elif k == "items":
                out[k] = walk(v, True)
            elif k == "definitions":
                continue
            else:
                out[k] = walk(v, in_items)
        return out

    result = walk(schema, False)
    result["definitions"] = {}
    for name, definition in schema["definitions"].items():
        result["definitions"][name] = walk(definition, True)
        result["definitions"][name + "__merged"] = walk(definition, False)
    return result


def helm_schema_errors(values: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft7Validator(_merged_schema())
    errors = [leaf for e in validator.iter_errors(values) for leaf in _leaves(e)]
    return sorted(f"{'.'.join(str(p) for p in e.absolute_path)}: {e.message}" for e in errors)


def _leaves(error: jsonschema.ValidationError) -> list[jsonschema.ValidationError]:
    """An error under ``anyOf`` (a setting that may also be null) as the errors of the one branch whose
    type the value has, as helm words them, rather than "is not valid under any of the given schemas"."""
    if error.validator in ("anyOf", "oneOf") and error.context:
        branches: dict[Any, list[jsonschema.ValidationError]] = {}
        for sub in error.context:
            branches.setdefault(sub.schema_path[0], []).append(sub)
        fitting = [errs for errs in branches.values()
                   if not any(sub.validator == "type" and not sub.path for sub in errs)]
        if len(fitting) == 1:
            return [leaf for sub in fitting[0] for leaf in _leaves(sub)]
    return [error]


def test_the_helm_values_validate_against_the_charts_schema() -> None:
    assert helm_schema_errors(_values()) == []


QUEUED = "dagsterDaemon.runCoordinator.config.queuedRunCoordinator"


def test_the_schema_check_catches_what_helm_would_refuse() -> None:
    """The check above has teeth: a misspelt key, a missing list field and a wrong type are refused."""
    values = _values()
    values["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]["maxConcurentRuns"] = 5
    del values["dagster-user-deployments"]["deployments"][0]["port"]
    values["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]["tagConcurrencyLimits"][0]["limit"] = "one"
    values["runLauncher"]["type"] = "K8sLauncher"
    assert helm_schema_errors(values) == [
        "dagster-user-deployments.deployments.0: 'port' is a required property",
        f"{QUEUED}.tagConcurrencyLimits.0.limit: 'one' is not of type 'integer'",
        f"{QUEUED}: Additional properties are not allowed ('maxConcurentRuns' was unexpected)",
        ("runLauncher.type: 'K8sLauncher' is not one of ['CeleryK8sRunLauncher', 'K8sRunLauncher', "
         "'CustomRunLauncher']"),
    ]


def render_instance(values: dict[str, Any], release_namespace: str = "dinmo") -> dict[str, Any]:
    """The dagster.yaml that the chart's ``configmap-instance.yaml`` writes from these values, for the parts
    our values set (K8sRunLauncher, QueuedRunCoordinator, PostgreSQL storage, run monitoring, telemetry,
    additionalInstanceConfig), following the chart's templates key by key. The chart's defaults fill the
    rest (dagster_home ``/opt/dagster/dagster_home``, the ``<release>-dagster-instance`` config map)."""
    pg = values["postgresql"]
    storage = {"postgres_db": {
        "username": pg["postgresqlUsername"], "password": {"env": "DAGSTER_PG_PASSWORD"},
        "hostname": pg["postgresqlHost"], "db_name": pg["postgresqlDatabase"], "port": pg["service"]["port"],
        "params": pg.get("postgresqlParams", {})}}
    if pg.get("postgresqlScheme"):
        storage["postgres_db"]["scheme"] = pg["postgresqlScheme"]
    k8s = values["runLauncher"]["config"]["k8sRunLauncher"]
    launcher: dict[str, Any] = {
        "load_incluster_config": k8s["loadInclusterConfig"],
        "job_namespace": k8s.get("jobNamespace") or release_namespace,
        "image_pull_policy": k8s["imagePullPolicy"],
        "service_account_name": "dinmo-dagster",
        "dagster_home": "/opt/dagster/dagster_home",
        "instance_config_map": "dinmo-dagster-instance",
        "postgres_password_secret": values["global"]["postgresqlSecretName"],
    }
    for src, dst in (("envVars", "env_vars"), ("volumeMounts", "volume_mounts"), ("volumes", "volumes"),
                     ("labels", "labels"), ("resources", "resources"), ("securityContext", "security_context")):
        if k8s.get(src):
            launcher[dst] = k8s[src]
    for src, dst in (("envConfigMaps", "env_config_maps"), ("envSecrets", "env_secrets")):
        if k8s.get(src):
            launcher[dst] = [item["name"] for item in k8s[src] if "name" in item]
    if k8s.get("failPodOnRunFailure"):
        launcher["fail_pod_on_run_failure"] = True
    queued = values["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]
    coordinator: dict[str, Any] = {"max_concurrent_runs": queued.get("maxConcurrentRuns", -1)}
    if queued.get("tagConcurrencyLimits"):
        coordinator["tag_concurrency_limits"] = queued["tagConcurrencyLimits"]
    if queued.get("dequeueIntervalSeconds"):
        coordinator["dequeue_interval_seconds"] = queued["dequeueIntervalSeconds"]
    return {
        "schedule_storage": {"module": "dagster_postgres.schedule_storage", "class": "PostgresScheduleStorage",
                             "config": storage},
        "run_launcher": {"module": "dagster_k8s", "class": "K8sRunLauncher", "config": launcher},
        "run_storage": {"module": "dagster_postgres.run_storage", "class": "PostgresRunStorage", "config": storage},
        "event_log_storage": {"module": "dagster_postgres.event_log", "class": "PostgresEventLogStorage",
                              "config": storage},
        "run_coordinator": {"module": "dagster.core.run_coordinator", "class": "QueuedRunCoordinator",
                            "config": coordinator},
        "run_monitoring": {"enabled": values["dagsterDaemon"]["runMonitoring"]["enabled"]},
        "telemetry": {"enabled": values["telemetry"]["enabled"]},
        **copy.deepcopy(values.get("additionalInstanceConfig", {})),
    }


def _config_errors(config_type: Any, config: dict[str, Any]) -> list[str]:
    result = process_config(config_type, config)
    return [] if result.success else [e.message for e in result.errors or []]


def test_the_rendered_instance_passes_dagsters_and_dagster_k8s_config_checks(tmp_path: Path) -> None:
    rendered = render_instance(_values())
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(rendered))
    # Dagster's own check of a dagster.yaml: every key, and limits that do not conflict with each other.
    config, _ = dagster_instance_config(str(tmp_path))
    assert config["run_launcher"]["class"] == "K8sRunLauncher"
    # Each class's own config schema, as the instance checks it when it loads the class (no cluster needed).
    assert _config_errors(K8sRunLauncher.config_type(), rendered["run_launcher"]["config"]) == []
    assert _config_errors(dg.QueuedRunCoordinator.config_type(), rendered["run_coordinator"]["config"]) == []
    assert rendered["run_launcher"]["config"]["env_secrets"] == ["dinmo-secrets"]

    # The Kubernetes deployment queues runs as deploy/dagster.yaml does.
    local = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())
    for key in ("max_concurrent_runs", "tag_concurrency_limits"):
        assert rendered["run_coordinator"]["config"][key] == local["run_coordinator"]["config"][key]
    assert rendered["concurrency"] == local["concurrency"]
    assert rendered["run_storage"]["config"]["postgres_db"]["scheme"] == \
        local["storage"]["postgres"]["postgres_db"]["scheme"] == "postgresql+psycopg2"
    # The code server serves the module deploy/workspace.yaml loads.
    deployment = _values()["dagster-user-deployments"]["deployments"][0]
    module = yaml.safe_load((DEPLOY / "workspace.yaml").read_text())["load_from"][0]["python_module"]["module_name"]
    assert deployment["codeServerArgs"] == ["-m", module]


def test_why_the_pool_limit_is_not_spelt_pools(tmp_path: Path) -> None:
    """`concurrency: pools:` next to the run coordinator's limits is refused by Dagster when the instance
    loads, hence `default_op_concurrency_limit` in both deploy/dagster.yaml and the Helm values."""
    values = _values()
    values["additionalInstanceConfig"] = {"concurrency": {"pools": {"default_limit": 1}}}
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(render_instance(values)))
    with pytest.raises(dg.DagsterInvalidConfigError) as info:
        dagster_instance_config(str(tmp_path))
    assert str(info.value).startswith("Found config value for `['max_concurrent_runs']` in `run_coordinator` "
                                      "which is incompatible with the `concurrency > runs` config")


def test_dagster_k8s_refuses_a_bad_launcher_config() -> None:
    """The K8sRunLauncher check above has teeth."""
    launcher = render_instance(_values())["run_launcher"]["config"]
    launcher["image_pull_policy"] = 3
    launcher["env_secret"] = ["dinmo-secrets"]
    errors = _config_errors(K8sRunLauncher.config_type(), launcher)
    assert any("env_secret" in e for e in errors), errors
    assert any("image_pull_policy" in e for e in errors), errors


def test_the_helm_values_hold_no_secret() -> None:
    values = _values()
    assert "postgresqlPassword" not in values["postgresql"]
    assert values["generatePostgresqlPasswordSecret"] is False

    def settings(node: Any) -> Iterator[tuple[str, Any]]:
        if isinstance(node, dict):
            for k, v in node.items():
                yield k, v
                yield from settings(v)
        elif isinstance(node, list):
            for v in node:
                yield from settings(v)

    # No setting whose name says password, token or private key holds a value (only secrets' names do).
    assert [k for k, v in settings(values) if isinstance(v, (str, int)) and not isinstance(v, bool)
            and any(w in k.lower() for w in ("password", "token", "private"))] == []
