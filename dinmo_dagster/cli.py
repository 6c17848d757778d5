"""The ``dinmo`` command: validate, preview, sync, demo.

``dinmo sync`` and ``dinmo demo`` run in a real Dagster instance: ``$DAGSTER_HOME`` when set, else
``./.dagster_home`` (created), so ``dagster dev`` on the same ``DAGSTER_HOME`` shows their runs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from dinmo_dagster.config import QUICKSTART_DIR, Project, ProjectError, load_project, project_dir_from_env

DEMO_DIR_NAME = "dinmo-quickstart"

# Written into a new DAGSTER_HOME: each activation's pool runs one step at a time, and queued runs
# (UI, schedules, sensors) of one activation run one at a time.
INSTANCE_YAML = """telemetry:
  enabled: false
run_monitoring:
  enabled: true
concurrency:
  pools:
    default_limit: 1
  runs:
    tag_concurrency_limits:
      - key: dinmo/activation
        value: {applyLimitPerUniqueValue: true}
        limit: 1
"""


def _print(msg: str = "") -> None:
    print(msg, flush=True)


def _instance() -> Any:
    import dagster as dg

    home = os.environ.get("DAGSTER_HOME")
    if not home:
        home = str(Path.cwd() / ".dagster_home")
        os.environ["DAGSTER_HOME"] = home
    Path(home).mkdir(parents=True, exist_ok=True)
    config = Path(home) / "dagster.yaml"
    if not config.exists():
        config.write_text(INSTANCE_YAML)
    return dg.DagsterInstance.get()


def _load(args: argparse.Namespace) -> Project:
    return load_project(args.project or project_dir_from_env())


# ---------------------------------------------------------------------------------------------------------
# validate
# ---------------------------------------------------------------------------------------------------------


def cmd_validate(args: argparse.Namespace) -> int:
    path = args.project or project_dir_from_env()
    try:
        project = load_project(path)
    except ProjectError as exc:
        _print(f"{len(exc.problems)} problem(s) in {path}:")
        for p in exc.problems:
            _print(f"  {p}")
        return 1
    _print(f"{path}: {len(project.sources)} source(s), {len(project.models)} model(s), "
           f"{len(project.segments)} segment(s), {len(project.destinations)} destination(s), "
           f"{len(project.activations)} activation(s): valid")
    if args.connect:
        from dinmo_dagster.validation import validate_connections

        problems = validate_connections(project)
        for p in problems:
            _print(f"  {p}")
        if problems:
            return 1
        _print("connections and entities: ok")
    return 0


# ---------------------------------------------------------------------------------------------------------
# sync
# ---------------------------------------------------------------------------------------------------------


def run_sync(project: Project, activation: str, full_refresh: bool = False) -> tuple[bool, dict[str, Any], str]:
    """Add the sync's partition and run models, segments, snapshot and activation in one Dagster run.

    Returns (success, the activation's materialization metadata, an error message).
    """
    import dagster as dg

    from dinmo_dagster import sync
    from dinmo_dagster.assets.activations import (
        OWNER_TAG,
        activation_key,
        job_name,
        partitions_name,
        reap_dead_syncs,
        step_failure_text,
        sync_ops_config,
    )
    from dinmo_dagster.definitions import build_definitions

    defs = build_definitions(project)
    instance = _instance()
    for run_id in reap_dead_syncs(instance, activation):
        _print(f"sync {activation}: run {run_id} had died (its process is gone): marked it failed")
    key = sync.new_partition_key()
    instance.add_dynamic_partitions(partitions_name(activation), [key])
    op = activation_key(activation).to_python_identifier()
    run_config = {"ops": sync_ops_config(activation, full_refresh),
                  # The CLI prints its own summary; keep Dagster's console to warnings and errors.
                  "loggers": {"console": {"config": {"log_level": "WARNING"}}}}
    result = defs.resolve_job_def(job_name(activation)).execute_in_process(
        instance=instance, partition_key=key, run_config=run_config, raise_on_error=False,
        tags={"dinmo/trigger": "cli", OWNER_TAG: sync.OWNER},
    )
    metadata: dict[str, Any] = {}
    if result.success:
        for mat in result.asset_materializations_for_node(op):
            if mat.asset_key == activation_key(activation):
                metadata = {k: v.value for k, v in mat.metadata.items()}
    error = ""
    warnings: list[str] = []
    for ev in result.get_asset_check_evaluations():
        if not ev.passed:
            line = f"{'/'.join(ev.asset_key.path)} {ev.check_name}: {ev.description}"
            if ev.severity == dg.AssetCheckSeverity.ERROR:
                error = error or line
            else:
                warnings.append(line)
    metadata["warnings"] = warnings
    if not result.success and not error:
        for event in result.all_events:
            if event.is_step_failure:
                text = step_failure_text(event)
                error = text if text is not None else event.message or ""
                break
        if not error:
            error = "the sync run failed; see the run's logs in the Dagster UI"
    return result.success, metadata, error


def _print_sync(activation: str, ok: bool, md: dict[str, Any], error: str) -> None:
    for w in md.get("warnings", []):
        _print(f"warning: {w}")
    if not ok:
        _print(f"sync {activation}: FAILED: {error}")
        return
    _print(f"sync {activation}: {md.get('sync_type')} sync ({md.get('sync_mode')}, {md.get('run_type')}): "
           f"{md.get('rows_added')} added, {md.get('rows_updated')} updated, {md.get('rows_removed')} removed, "
           f"{md.get('rows_unchanged')} unchanged; {md.get('dagster/row_count')} rows written in "
           f"{md.get('files_written')} file(s), {md.get('bytes_written')} bytes")
    files = [v for k, v in sorted(md.items())
             if k.startswith("file_") and k != "files_written" and not k.endswith("_console")]
    for uri in sorted(files):
        _print(f"  {uri}")
    if md.get("files_written") == 0:
        _print("  (no file: nothing to write)")


def cmd_sync(args: argparse.Namespace) -> int:
    project = _load(args)
    if args.activation not in project.activations:
        _print(f"unknown activation '{args.activation}'; allowed: {', '.join(sorted(project.activations))}")
        return 2
    ok, md, error = run_sync(project, args.activation, full_refresh=args.full_refresh)
    _print_sync(args.activation, ok, md, error)
    return 0 if ok else 1


# ---------------------------------------------------------------------------------------------------------
# preview
# ---------------------------------------------------------------------------------------------------------


def cmd_preview(args: argparse.Namespace) -> int:
    import dagster as dg

    from dinmo_dagster import sync
    from dinmo_dagster.assets.activations import sync_target
    from dinmo_dagster.assets.models import refresh_upstream
    from dinmo_dagster.resources import build_resources

    project = _load(args)
    if args.activation not in project.activations:
        _print(f"unknown activation '{args.activation}'; allowed: {', '.join(sorted(project.activations))}")
        return 2
    with dg.build_resources(build_resources(project)) as resources:
        t = sync_target(project, args.activation, resources)
        compiled = refresh_upstream(project, args.activation, resources)
        key = "preview_" + sync.new_partition_key()
        try:
            sync.take_snapshot(t, key)
            pv = sync.preview(t, key, sample_rows=args.rows)
        except sync.SyncError as exc:
            _print(f"preview {args.activation}: {exc}")
            return 1
        finally:
            sync.drop_snapshot(t, key)
    _print(f"segment SQL ({t.dialect}):\n  {compiled}")
    c = pv.counts
    _print(f"preview {args.activation}: {pv.sync_type} sync: {c.added} added, {c.updated} updated, "
           f"{c.removed} removed, {c.unchanged} unchanged (nothing written, baseline unchanged)")
    for name in pv.files:
        _print(f"  would write {name}")
    for stem, rows in pv.samples.items():
        _print(f"  sample of {stem}:")
        for row in rows:
            _print(f"    {row}")
    return 0


# ---------------------------------------------------------------------------------------------------------
# demo
# ---------------------------------------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    from dinmo_dagster import demo

    target = Path(args.dir or DEMO_DIR_NAME).resolve()
    if not (target / "dinmo.yaml").exists():
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(QUICKSTART_DIR / "dinmo.yaml", target / "dinmo.yaml")
        _print(f"copied the quickstart project to {target}")
    os.environ.setdefault("DAGSTER_HOME", str(target / ".dagster_home"))
    project = load_project(target)
    changed = demo.prepare_warehouse(project)
    _print(changed)
    emulator = None
    if not (os.environ.get("STORAGE_EMULATOR_HOST") or os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
            or os.environ.get("GCS_SERVICE_ACCOUNT_JSON")):
        from dinmo_dagster.emulator import start_emulator

        buckets = sorted({d.bucket for d in project.destinations.values() if d.type == "gcs"})
        emulator = start_emulator(default_bucket=buckets[0] if buckets else None, data_dir=target / ".gcs")
        os.environ["STORAGE_EMULATOR_HOST"] = emulator.url
        _print(f"no GCS credentials found: started the local GCS emulator at {emulator.url} "
               f"(objects kept under {target / '.gcs'})")
        if len(buckets) > 1:
            from dinmo_dagster.emulator import create_bucket

            for b in buckets[1:]:
                create_bucket(emulator, b)
    failures = 0
    try:
        for name in project.activations:
            ok, md, error = run_sync(project, name)
            _print_sync(name, ok, md, error)
            failures += not ok
        _print()
        _print("what landed where:")
        for line in demo.list_destinations(project):
            _print(f"  {line}")
    finally:
        if emulator is not None:
            emulator.stop()
    _print()
    _print("open the Dagster UI on this project:")
    _print(f"  DINMO_PROJECT_DIR={target} DAGSTER_HOME={os.environ['DAGSTER_HOME']} "
           "dagster dev -w workspace.yaml")
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dinmo", description="Composable CDP / reverse-ETL on Dagster")
    parser.add_argument("--project", help="project directory or YAML file (default: $DINMO_PROJECT_DIR, "
                                          "else the bundled quickstart)")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("validate", help="check the project's YAML (and, with --connect, every connection)")
    p.add_argument("--connect", action="store_true", help="also connect to sources and destinations")
    p.set_defaults(func=cmd_validate)
    p = sub.add_parser("sync", help="sync one activation now")
    p.add_argument("activation")
    p.add_argument("--full-refresh", action="store_true", help="ignore the baseline and export everything")
    p.set_defaults(func=cmd_sync)
    p = sub.add_parser("preview", help="change counts and sample rows of a sync, without writing anything")
    p.add_argument("activation")
    p.add_argument("--rows", type=int, default=5, help="sample rows per file (default 5)")
    p.set_defaults(func=cmd_preview)
    p = sub.add_parser("demo", help="create the quickstart warehouse and run every quickstart activation")
    p.add_argument("--dir", help=f"where the demo project and its data go (default ./{DEMO_DIR_NAME})")
    p.set_defaults(func=cmd_demo)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ProjectError as exc:
        _print(str(exc))
        return 1


if __name__ == "__main__":
    sys.exit(main())
