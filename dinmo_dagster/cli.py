"""The ``dinmo`` command: validate, preview, sync, partition, ui, emulator, demo.

``dinmo sync``, ``dinmo partition``, ``dinmo ui`` and ``dinmo demo`` use one Dagster instance:
``$DAGSTER_HOME`` when set, else ``./.dagster_home`` (created, with the ``dagster.yaml`` below), so
``dinmo ui`` and ``dagster`` commands run with the same ``DAGSTER_HOME`` see every run of the others.

A failed command prints its cause in a few lines and exits 1. Dagster's own log (with the stack trace)
stays in the run's log in the instance, and ``--verbose`` (before or after the command) prints it too.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dinmo_dagster import defaults as activation_defaults
from dinmo_dagster import init as project_init
from dinmo_dagster import schema as project_schema
from dinmo_dagster.config import (
    FILE_KEYS,
    PLATFORM_KEYS,
    QUICKSTART_DIR,
    Activation,
    Project,
    ProjectError,
    load_project,
    project_dir_from_env,
)
from dinmo_dagster.emulator import STORAGE_EMULATOR_ENV_VAR, emulated_buckets, start_for_buckets
from dinmo_dagster.fakes.hubspot import FakeHubSpot
from dinmo_dagster.fakes.local import (
    DEMO_TOKEN,
    HubSpotStandIn,
    StandInError,
    faked_hubspot_destinations,
    serve_hubspot,
)


class _OnFirstUse:
    """A module imported when one of its names is first read, not when the CLI starts.

    ``dinmo --help`` and ``dinmo validate`` need neither Dagster nor DuckDB: importing them costs
    about 1 s of CPU and 50 MB before anything else. The commands that run Dagster import it when
    they reach it. Module-level names, like an import: no module is imported inside a function.
    """

    def __init__(self, module: str) -> None:
        self._module = module

    def __getattr__(self, name: str) -> Any:
        return getattr(importlib.import_module(self._module), name)


dg: Any = _OnFirstUse("dagster")
activations: Any = _OnFirstUse("dinmo_dagster.assets.activations")
sensor_alerts: Any = _OnFirstUse("dinmo_dagster.sensors.alerts")
compile_sql: Any = _OnFirstUse("dinmo_dagster.compile")
definitions: Any = _OnFirstUse("dinmo_dagster.definitions")
demo: Any = _OnFirstUse("dinmo_dagster.demo")
dinmo_names: Any = _OnFirstUse("dinmo_dagster.names")
instance_ref: Any = _OnFirstUse("dagster._core.instance.ref")  # InstanceRef: not exported by `dagster`
platform_sync: Any = _OnFirstUse("dinmo_dagster.platform_sync")
dinmo_resources: Any = _OnFirstUse("dinmo_dagster.resources")
sync: Any = _OnFirstUse("dinmo_dagster.sync")
validation: Any = _OnFirstUse("dinmo_dagster.validation")
writers: Any = _OnFirstUse("dinmo_dagster.writers")

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

UI_DEFAULT_PORT = 3000  # dagster dev's own default
EMULATOR_DEFAULT_PORT = 9023  # gcp-storage-emulator's own default
_OUR_ERROR_PREFIX = re.compile(r"^dinmo_dagster(?:\.\w+)+: ")


def _print(msg: str = "", err: bool = False) -> None:
    print(msg, file=sys.stderr if err else sys.stdout, flush=True)


def instance_home() -> Path:
    """The CLI's Dagster instance directory (``$DAGSTER_HOME`` or ``./.dagster_home``), created with the
    CLI's ``dagster.yaml`` when it has none; ``DAGSTER_HOME`` is set to it for this process."""
    home = Path(os.environ.get("DAGSTER_HOME") or Path.cwd() / ".dagster_home").resolve()
    os.environ["DAGSTER_HOME"] = str(home)
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text(INSTANCE_YAML)
    return home


# A sync's own process prints to the terminal: its run does without Dagster's stdout/stderr capture,
# which mirrors the process's output through two `tail -F` processes and two Python watchers.
_NO_OUTPUT_CAPTURE = {"compute_logs": {"module": "dagster._core.storage.noop_compute_log_manager",
                                       "class": "NoOpComputeLogManager"}}


def _instance(capture_output: bool = True) -> dg.DagsterInstance:
    """The CLI's instance. ``capture_output=False``: the same storage (runs, events, partitions), but
    the runs this process executes keep no stdout/stderr files (Dagster's structured log stays)."""
    home = instance_home()
    if capture_output:
        return dg.DagsterInstance.get()
    return dg.DagsterInstance.from_ref(instance_ref.InstanceRef.from_dir(str(home), overrides=_NO_OUTPUT_CAPTURE))


def _project_path(args: argparse.Namespace) -> Path:
    return Path(args.project).resolve() if args.project else project_dir_from_env()


def _load(args: argparse.Namespace) -> Project:
    return load_project(_project_path(args))


def _dinmo(args: argparse.Namespace, *words: str, verbose: bool = False) -> str:
    """The command line a user would type to run ``words`` on the same project (``.venv/bin/dinmo``
    when that is how this one was started)."""
    argv0 = sys.argv[0] if sys.argv else ""
    parts = [argv0 if Path(argv0).name == "dinmo" else "dinmo"]
    if args.project:
        parts += ["--project", args.project]
    if verbose:
        parts.append("--verbose")
    return " ".join([*parts, *words])


def _print_problems(header: str, problems: list[str]) -> None:
    _print(f"{len(problems)} problem(s) in {header}:")
    for p in problems:
        _print(f"  {p}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return _OUR_ERROR_PREFIX.sub("", text.splitlines()[0]) if text else type(exc).__name__


# ---------------------------------------------------------------------------------------------------------
# validate
# ---------------------------------------------------------------------------------------------------------


def cmd_validate(args: argparse.Namespace) -> int:
    """Check the YAML (and with ``--connect`` every connection); "valid" only when nothing is wrong."""
    path = args.project or project_dir_from_env()
    project = load_project(path)  # a ProjectError is printed by main() as problems of `path`
    # Template warnings (a file name that a later sync would render again) do not fail validation.
    for warning in getattr(project, "warnings", []):
        _print(f"warning: {warning}")
    if args.connect:
        problems = validation.validate_connections(project)
        if problems:
            _print_problems(f"{path} (checked with --connect)", problems)
            return 1
    checked = " (connections and entities checked)" if args.connect else ""
    _print(f"{path}: {len(project.sources)} source(s), {len(project.models)} model(s), "
           f"{len(project.segments)} segment(s), {len(project.destinations)} destination(s), "
           f"{len(project.activations)} activation(s){checked}: valid")
    if args.verbose:  # each activation's effective settings, and where each comes from (defaults.py)
        for line in activation_defaults.resolved_lines(project, Activation, FILE_KEYS, PLATFORM_KEYS):
            _print(line)
    return 0


# ---------------------------------------------------------------------------------------------------------
# sync
# ---------------------------------------------------------------------------------------------------------


@dataclass
class SyncOutcome:
    """What one ``dinmo sync`` run did: its activation metadata, or where and why it failed."""

    success: bool
    metadata: dict[str, Any]
    error: str = ""
    run_id: str = ""
    failed_step: str = ""  # the asset (or asset check) whose step failed, e.g. "models/customers"
    warnings: list[str] = field(default_factory=list)
    alerted: list[str] = field(default_factory=list)  # the alert channels that took the failure alert


def _step_names(defs: Any) -> dict[str, str]:
    """Step key -> the asset or check a user knows it by (``models__customers`` -> ``models/customers``)."""
    graph = defs.resolve_asset_graph()
    names = {k.to_python_identifier(): k.to_user_string() for k in graph.get_all_asset_keys()}
    for check in graph.asset_check_keys:
        names[f"{check.asset_key.to_python_identifier()}_{check.name}"] = \
            f"{check.asset_key.to_user_string()} check {check.name}"
    return names


def sync_activation(project: Project, activation: str, full_refresh: bool = False,
                    verbose: bool = False) -> SyncOutcome:
    """Add the sync's partition and run models, segments, snapshot and activation in one Dagster run.

    Dagster's console log is silenced (``verbose`` keeps its warnings and errors, with stack traces);
    the run's warnings are read back from the instance and returned, so nothing is lost.
    """
    defs = definitions.sync_definitions(project, activation)
    instance = _instance(capture_output=False)
    for run_id in activations.reap_dead_syncs(instance, activation):
        _print(f"sync {activation}: run {run_id} had died (its process is gone): marked it failed")
    key = sync.new_partition_key()
    instance.add_dynamic_partitions(dinmo_names.partitions_name(activation), [key])
    op = dinmo_names.op_name(dinmo_names.activation_key(activation))
    # The CLI prints its own summary; Dagster's console shows the trace only with --verbose.
    level = "WARNING" if verbose else "CRITICAL"
    run_config = {"ops": activations.sync_ops_config(activation, full_refresh),
                  "loggers": {"console": {"config": {"log_level": level}}}}
    result = defs.resolve_job_def(dinmo_names.job_name(activation)).execute_in_process(
        instance=instance, partition_key=key, run_config=run_config, raise_on_error=False,
        tags={dinmo_names.TRIGGER_TAG: "cli", dinmo_names.OWNER_TAG: sync.OWNER},
    )
    out = SyncOutcome(success=result.success, metadata={}, run_id=result.run_id)
    if result.success:
        for mat in result.asset_materializations_for_node(op):
            if mat.asset_key == dinmo_names.activation_key(activation):
                out.metadata = {k: v.value for k, v in mat.metadata.items()}
    names = _step_names(defs)
    for ev in result.get_asset_check_evaluations():
        if not ev.passed:
            where = f"{ev.asset_key.to_user_string()} check {ev.check_name}"
            line = f"{'/'.join(ev.asset_key.path)} {ev.check_name}: {ev.description}"
            if ev.severity == dg.AssetCheckSeverity.ERROR:
                if not out.error:
                    out.error, out.failed_step = line, where
            else:
                out.warnings.append(line)
    # Warnings the steps logged (empty segment, NULL keys, duplicates dropped): the console is silent.
    # Only steps that ran: Dagster's own "not executing" notes of skipped steps are no news.
    ran = {e.step_key for e in result.all_events if e.is_step_start}
    for entry in instance.all_logs(result.run_id):
        if (entry.dagster_event is None and entry.level >= logging.WARNING and entry.user_message
                and entry.step_key in ran):
            step = names.get(entry.step_key or "", entry.step_key or "")
            out.warnings.append(f"{step}: {entry.user_message}" if step else entry.user_message)
    if not result.success and not out.error:
        for event in result.all_events:
            if event.is_step_failure:
                text = activations.step_failure_text(event)
                out.error = _OUR_ERROR_PREFIX.sub("", text if text is not None else event.message or "")
                out.failed_step = names.get(event.step_key or "", event.step_key or "")
                break
        if not out.error:
            out.error = "the sync run failed; see the run's log in the Dagster UI"
    if not result.success:  # no daemon may run: this process alerts the failure of its own run
        sent = sensor_alerts.alert_failed_run(project, instance, result.run_id, "cli",
                                              lambda text: out.warnings.append(text))
        if sent:
            out.alerted = sent
    return out


def run_sync(project: Project, activation: str, full_refresh: bool = False) -> tuple[bool, dict[str, Any], str]:
    """``sync_activation`` as (success, the activation's materialization metadata with its ``warnings``,
    an error message)."""
    out = sync_activation(project, activation, full_refresh)
    return out.success, {**out.metadata, "warnings": out.warnings}, out.error


def _print_sync(args: argparse.Namespace, activation: str, out: SyncOutcome) -> None:
    for w in out.warnings:
        _print(f"warning: {w}")
    md = out.metadata
    if not out.success:
        step = f" in {out.failed_step}" if out.failed_step else ""
        _print(f"sync {activation}: FAILED{step} (Dagster run {out.run_id})")
        if not args.verbose:
            _print(f"  full log: that run in `{_dinmo(args, 'ui')}`, or `{_dinmo(args, 'sync', activation, verbose=True)}`")
        _print(f"sync {activation}: FAILED: {out.error}")
        if out.alerted:
            _print(f"  alerted: {', '.join(out.alerted)}")
        return
    if "platform" in md:
        _print(f"sync {activation}: {md.get('sync_type')} sync to {md.get('platform')} ({md.get('service')}, "
               f"{md.get('sync_mode')}): {md.get('rows_added')} added, {md.get('rows_updated')} updated, "
               f"{md.get('rows_removed')} removed, {md.get('rows_unchanged')} unchanged; "
               f"{md.get('records_accepted')} record(s) accepted, {md.get('records_rejected')} rejected in "
               f"{md.get('batches')} batch(es), {md.get('retries')} retries, "
               f"{md.get('rate_limit_wait_seconds')}s waiting on rate limits")
        if md.get("top_rejection_reasons"):
            _print(f"  top rejection reasons: {md['top_rejection_reasons']}")
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


def _known_activation(project: Project, activation: str) -> bool:
    if activation in project.activations:
        return True
    _print(f"unknown activation '{activation}'; allowed: {', '.join(sorted(project.activations))}")
    return False


def cmd_sync(args: argparse.Namespace) -> int:
    project = _load(args)
    if not _known_activation(project, args.activation):
        return 2
    out = sync_activation(project, args.activation, full_refresh=args.full_refresh, verbose=args.verbose)
    _print_sync(args, args.activation, out)
    return 0 if out.success else 1


# ---------------------------------------------------------------------------------------------------------
# partition
# ---------------------------------------------------------------------------------------------------------


def cmd_partition(args: argparse.Namespace) -> int:
    """Add a new sync partition of an activation; print its key alone on stdout (for ``$(...)``)."""
    project = _load(args)
    if not _known_activation(project, args.activation):
        return 2
    instance = _instance()
    key = sync.new_partition_key()
    instance.add_dynamic_partitions(dinmo_names.partitions_name(args.activation), [key])
    a = args.activation
    _print(key)
    _print(f"added partition {key} of snapshots/{a} and activations/{a} to the Dagster instance "
           f"{os.environ['DAGSTER_HOME']}; deliver it with (same DAGSTER_HOME and DINMO_PROJECT_DIR):\n"
           f"  dagster asset materialize -m dinmo_dagster.definitions "
           f"--select 'snapshots/{a},activations/{a}' --partition {key}", err=True)
    return 0


# ---------------------------------------------------------------------------------------------------------
# preview
# ---------------------------------------------------------------------------------------------------------


def _sample_lines(table: Any, a: Any) -> list[str]:
    """Rows as the activation's file holds them (CSV with its delimiter and header, JSON objects, XML
    records). Parquet has no text: its rows are shown as CSV text of the same values."""
    if table.num_rows == 0:
        return ["(no rows)"]
    # The writers' own per-format renderers (private to writers.py: there is no public row renderer).
    if a.format == "json":
        options = writers.FormatOptions(format="json", json_lines=True)
        fmt: Any = writers._JsonFormat(table.schema, options)
    elif a.format == "xml":
        options = writers.FormatOptions(format="xml", xml_root=a.xml.root, xml_record=a.xml.record)
        fmt = writers._XmlFormat(table.schema, options)
    else:
        delimiter = a.csv.delimiter if a.format == "csv" else ","
        header = a.csv.header if a.format == "csv" else True
        fmt = writers._CsvFormat(table.schema, writers.FormatOptions(format="csv", csv_delimiter=delimiter,
                                                                     csv_header=header))
    lines = [fmt.header.decode().rstrip("\n")] if a.format == "csv" and fmt.header else []
    for batch in table.to_batches():
        rows = fmt.render(batch)
        for i in range(len(rows)):
            text = bytes(rows.data[rows.offsets[i]:rows.offsets[i + 1]]).decode()
            lines.append(text.rstrip("\n"))
    return lines


def _activation_problems(project: Project, activation: str) -> list[str]:
    """What ``dinmo validate --connect`` finds wrong with what a preview reads (its source, models,
    segments and mapping; not its destination, which a preview does not touch)."""
    seg, model = project.model_of(activation)
    entities = {f"sources.{model.source}", f"models.{seg.model}", f"segments.{project.activations[activation].segment}",
                f"activations.{activation}", *(f"models.{r.model}" for r in model.relationships)}
    with dg.build_resources(dinmo_resources.build_resources(project)) as resources:
        return [str(p) for p in validation.check_project(project, resources) if p.culprit in entities]


def _print_platform_preview(name: str, a: Any, pv: platform_sync.PlatformPreview) -> None:
    """Operation counts and the first request bodies, identifiers masked (the SDK's ``preview``)."""
    c = pv.counts
    _print(f"preview {name}: {pv.sync_type} sync to {a.destination} ({a.platform_service}, {a.platform_mode}): "
           f"{c.added} added, {c.updated} updated, {c.removed} removed, {c.unchanged} unchanged "
           "(nothing sent, baseline unchanged)")
    for operation, count in pv.records.items():
        _print(f"  would {operation} {count} record(s)")
    for request in pv.requests:
        _print(f"  first {request.operation} request ({request.records} record(s)): {request.method} {request.url}")
        body = json.dumps(request.body, indent=2, ensure_ascii=False, default=str)
        for line in body.splitlines()[:60]:
            _print(f"    {line}")


def cmd_preview(args: argparse.Namespace) -> int:
    """Compile the segment, count the changes and show the first rows, writing nothing."""
    project = _load(args)
    name = args.activation
    if not _known_activation(project, name):
        return 2
    try:
        with dg.build_resources(dinmo_resources.build_resources(project)) as resources:
            t = activations.sync_target(project, name, resources)
            compiled = compile_sql.refresh_views(t.warehouse, project, name)
            key = "preview_" + sync.new_partition_key()
            try:
                sync.take_snapshot(t, key)
                pv = (platform_sync.preview(t, key) if t.platform is not None
                      else sync.preview(t, key, sample_rows=args.rows))
            finally:
                sync.drop_snapshot(t, key)
    except sync.SyncError as exc:
        _print(f"preview {name}: {exc}")
        return 1
    except Exception as exc:
        if args.verbose:
            raise
        # Report it as `dinmo validate --connect` does; the raw error only when validation finds nothing.
        problems = _activation_problems(project, name)
        if problems:
            _print_problems(f"{args.project or project_dir_from_env()} (checked with --connect)", problems)
        else:
            _print(f"preview {name}: {_first_line(exc)}")
        return 1
    a = project.activations[name]
    _print(f"segment SQL ({t.dialect}):\n  {compiled}")
    if isinstance(pv, platform_sync.PlatformPreview):
        _print_platform_preview(name, a, pv)
        return 0
    c = pv.counts
    _print(f"preview {name}: {pv.sync_type} sync: {c.added} added, {c.updated} updated, "
           f"{c.removed} removed, {c.unchanged} unchanged (nothing written, baseline unchanged)")
    for file_name in pv.files:
        _print(f"  would write {file_name}")
    ext = pv.files[0].split(".", 1)[1] if pv.files else a.format
    for stem, table in pv.samples.items():
        shown = " (Parquet keeps the Arrow types; shown as CSV)" if a.format == "parquet" else ""
        _print(f"  first {table.num_rows} row(s) of {stem}.{ext}{shown}:")
        for line in _sample_lines(table, a):
            _print(f"    {line}")
    return 0


# ---------------------------------------------------------------------------------------------------------
# local stand-ins: the GCS emulator and the HubSpot fake
# ---------------------------------------------------------------------------------------------------------


def _emulator_dir(project: Project, folder: str = ".gcs") -> Path | None:
    """Where a stand-in keeps a project's data: ``<project>/.gcs`` (``.hubspot`` for the HubSpot fake);
    in memory for the bundled quickstart, which lives inside the installed package."""
    return None if project.directory.resolve() == QUICKSTART_DIR.resolve() else project.directory / folder


@dataclass
class StandIns:
    """What ``local_stand_ins`` started: the variables it set in this process (for a child process
    such as ``dagster dev``) and the HubSpot fakes by destination name."""

    env: dict[str, str] = field(default_factory=dict)
    hubspot: dict[str, tuple[HubSpotStandIn, FakeHubSpot]] = field(default_factory=dict)


def _start_hubspot_fakes(project: Project, what: str, stack: ExitStack, stand_ins: StandIns) -> None:
    """Serve the destinations of ``fakes.local.faked_hubspot_destinations`` and set their token
    variables to the fake's token in this process; ``stack`` stops them and unsets the variables."""
    data_dir = _emulator_dir(project, ".hubspot")
    for d in faked_hubspot_destinations(project):
        fake = serve_hubspot(d, data_dir)  # a StandInError stops the command before anything syncs
        stack.callback(fake.server.stop)
        stand_ins.hubspot[d.destination] = (d, fake)
        if d.token_env not in os.environ:  # two destinations may share one variable
            os.environ[d.token_env] = DEMO_TOKEN
            stack.callback(os.environ.pop, d.token_env, None)
            stand_ins.env[d.token_env] = DEMO_TOKEN
        kept = f"{d.object} kept in {fake.data_file}" if fake.data_file else f"{d.object} kept in memory"
        _print(f"{d.token_env} is not set: started the local HubSpot fake at {d.url} for {what} "
               f"(destination {d.destination}; {kept})")


@contextmanager
def local_stand_ins(project: Project, what: str) -> Iterator[StandIns]:
    """Start the project's local stand-ins and stop them on exit: the HubSpot fake for the hubspot
    destinations of ``fakes.local.faked_hubspot_destinations`` (a loopback ``base_url`` whose token
    variable is unset), then the GCS emulator when the gcs destinations have no credentials (see
    ``emulator.emulated_buckets``), with ``STORAGE_EMULATOR_HOST`` pointing at it."""
    stand_ins = StandIns()
    with ExitStack() as stack:
        _start_hubspot_fakes(project, what, stack, stand_ins)
        buckets = emulated_buckets(project)
        if buckets:
            data_dir = _emulator_dir(project)
            emulator = start_for_buckets(buckets, data_dir)
            stack.callback(emulator.stop)
            os.environ[STORAGE_EMULATOR_ENV_VAR] = emulator.url
            stack.callback(os.environ.pop, STORAGE_EMULATOR_ENV_VAR, None)
            stand_ins.env[STORAGE_EMULATOR_ENV_VAR] = emulator.url
            kept = f"objects kept under {data_dir}" if data_dir else "objects kept in memory"
            _print(f"no GCS credentials found: started the local GCS emulator at {emulator.url} for {what} "
                   f"(bucket(s) {', '.join(buckets)}; {kept})")
        yield stand_ins


@contextmanager
def _stop_on_sigterm() -> Iterator[None]:
    """SIGTERM and SIGINT raise KeyboardInterrupt, so a terminated ``dinmo ui`` still stops what it
    started. SIGINT too: a process started in the background by a script inherits it ignored, and so
    would the ``dagster dev`` it starts (a handler, unlike an ignore, is reset to the default by exec)."""

    def interrupt(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def cmd_emulator(args: argparse.Namespace) -> int:
    """Serve the project's GCS buckets from a local emulator, and its hubspot destinations with a loopback
    ``base_url`` from the local HubSpot fake (see ``fakes.local``), until interrupted."""
    project = _load(args)
    buckets = sorted({d.bucket for d in project.destinations.values() if d.type == "gcs"})
    hubspot = faked_hubspot_destinations(project)
    if not buckets and not hubspot:
        _print(f"{project.directory}: no gcs destination and no hubspot destination on a loopback base_url "
               "with its token variable unset: nothing to emulate")
        return 1
    try:
        with _stop_on_sigterm(), ExitStack() as stack:
            emulator = None
            if buckets:
                data_dir = _emulator_dir(project)
                emulator = stack.enter_context(start_for_buckets(buckets, data_dir, port=args.port or None))
                kept = f"objects kept under {data_dir}" if data_dir else "objects kept in memory"
                _print(f"GCS emulator at {emulator.url} with bucket(s) {', '.join(buckets)} ({kept}). "
                       "In another shell:")
                _print(f"  export STORAGE_EMULATOR_HOST={emulator.url}")
            for d in hubspot:
                fake = serve_hubspot(d, _emulator_dir(project, ".hubspot"))
                stack.callback(fake.server.stop)
                kept = f"{d.object} kept in {fake.data_file}" if fake.data_file else f"{d.object} kept in memory"
                _print(f"HubSpot fake at {d.url} for destination {d.destination} ({kept}). In another shell:")
                _print(f"  export {d.token_env}={DEMO_TOKEN}")  # the fake's own token: public, not a secret
            _print("Ctrl-C stops it.")
            try:
                while emulator is None or emulator.running:
                    time.sleep(0.5)
            except KeyboardInterrupt:
                return 0
    except StandInError as exc:
        _print(f"dinmo emulator: {exc}")
        return 1
    _print("the GCS emulator stopped by itself")
    return 1


# ---------------------------------------------------------------------------------------------------------
# ui
# ---------------------------------------------------------------------------------------------------------


def _wait_for_http(url: str, proc: subprocess.Popen, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                response.read()
            return True
        except OSError:
            time.sleep(0.5)
    return False


def _stop_process_group(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """Stop ``dagster dev`` as Ctrl-C does (it then stops its webserver, daemon and code server), and
    kill whatever of its process group is left after ``timeout``."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # its own session: only what `dagster dev` started
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def cmd_ui(args: argparse.Namespace) -> int:
    """``dagster dev`` (webserver, daemon, code server) on the project and the CLI's instance, with the
    project's local stand-ins; everything is stopped on Ctrl-C or SIGTERM."""
    project = _load(args)
    home = instance_home()
    env = {**os.environ, "DAGSTER_HOME": str(home), "DINMO_PROJECT_DIR": str(_project_path(args))}
    # `dagster dev` says it is superseded by `dg dev`, which needs a `dg` project: not for this layout.
    env["PYTHONWARNINGS"] = ",".join(filter(None, [os.environ.get("PYTHONWARNINGS"),
                                                   "ignore:Function `dev_command` is superseded"]))
    dagster = Path(sys.executable).parent / "dagster"
    command = [str(dagster) if dagster.exists() else "dagster", "dev", "-m", "dinmo_dagster.definitions",
               "-h", args.host, "-p", str(args.port)]
    with _stop_on_sigterm():
        try:
            with local_stand_ins(project, "the UI") as stand_ins:
                env.update(stand_ins.env)  # the emulator's URL, the fake's token: for the runs' processes
                # Its own session: Ctrl-C reaches dinmo only, which then stops dagster dev in order.
                proc = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, start_new_session=True)
                try:
                    url = f"http://{args.host}:{args.port}"
                    if _wait_for_http(f"{url}/server_info", proc, timeout=120):
                        _print(f"Dagster UI at {url} on project {project.directory} (DAGSTER_HOME={home}); "
                               "Ctrl-C stops it")
                    code = proc.wait()
                    _print(f"dagster dev exited with code {code}")
                    return 1
                finally:
                    _stop_process_group(proc)
        except KeyboardInterrupt:
            _print("stopped the Dagster UI")
            return 0
        except StandInError as exc:
            _print(f"dinmo ui: {exc}")
            return 1


# ---------------------------------------------------------------------------------------------------------
# demo
# ---------------------------------------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    """Copy the quickstart, build its warehouse and sync every activation, with the local stand-ins (a
    GCS emulator, a HubSpot fake); show what landed in the bucket and in the fake."""
    target = Path(args.dir or DEMO_DIR_NAME).resolve()
    if not (target / "dinmo.yaml").exists():
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(QUICKSTART_DIR / "dinmo.yaml", target / "dinmo.yaml")
        _print(f"copied the quickstart project to {target}")
    project = load_project(target)
    failures = 0
    shown = os.path.relpath(target) if target.is_relative_to(Path.cwd()) else str(target)
    ui_args = argparse.Namespace(project=shown, verbose=args.verbose)
    try:
        # The stand-ins first: a taken port stops the demo before its sample changes are applied.
        with local_stand_ins(project, "the demo") as stand_ins:
            _print(demo.prepare_warehouse(project))
            for name in project.activations:
                out = sync_activation(project, name, verbose=args.verbose)
                _print_sync(ui_args, name, out)
                failures += not out.success
            _print()
            _print("what landed where:")
            for line in demo.list_destinations(project):
                _print(f"  {line}")
            for destination, (stand_in, fake) in stand_ins.hubspot.items():
                for line in demo.list_fake_records(project, destination, stand_in.url, fake.records(stand_in.object)):
                    _print(f"  {line}")
    except StandInError as exc:
        _print(f"dinmo demo: {exc}")
        return 1
    _print()
    _print("open the Dagster UI on this project (from this directory; it restarts the emulator and the fake):")
    _print(f"  {_dinmo(ui_args, 'ui')}")
    return 1 if failures else 0


# ---------------------------------------------------------------------------------------------------------
# schema, init
# ---------------------------------------------------------------------------------------------------------


def cmd_schema(args: argparse.Namespace) -> int:
    """Print the JSON Schema of dinmo.yaml (the package ships it as dinmo_dagster/dinmo.schema.json)."""
    sys.stdout.write(project_schema.schema_text())
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    """Scaffold a project that passes `dinmo validate`; never overwrite a dinmo.yaml."""
    try:
        written = project_init.init_project(args.dir, args.source)
    except project_init.InitError as exc:
        _print(f"dinmo init: {exc}")
        return 1
    for path in written:
        _print(f"created {path}")
    where = written[0].parent
    shown = os.path.relpath(where) if where.is_relative_to(Path.cwd()) else str(where)
    _print(f"next: `dinmo --project {shown} validate`, then `dinmo --project {shown} sync high_value_files`")
    return 0


# ---------------------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dinmo", description="Composable CDP / reverse-ETL on Dagster")
    parser.add_argument("--project", help="project directory or YAML file (default: $DINMO_PROJECT_DIR, "
                                          "else the bundled quickstart)")
    parser.add_argument("--verbose", action="store_true",
                        help="on failure, also print Dagster's log and the stack trace")
    # --verbose after the command too; SUPPRESS keeps a global --verbose from being reset.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("validate", parents=[common],
                       help="check the project's YAML (and, with --connect, every connection)")
    p.add_argument("--connect", action="store_true", help="also connect to sources and destinations")
    p.set_defaults(func=cmd_validate)
    p = sub.add_parser("sync", parents=[common], help="sync one activation now")
    p.add_argument("activation")
    p.add_argument("--full-refresh", action="store_true", help="ignore the baseline and export everything")
    p.set_defaults(func=cmd_sync)
    p = sub.add_parser("preview", parents=[common],
                       help="change counts and sample rows of a sync, without writing anything")
    p.add_argument("activation")
    p.add_argument("--rows", type=int, default=5, help="sample rows per file (default 5)")
    p.set_defaults(func=cmd_preview)
    p = sub.add_parser("partition", parents=[common],
                       help="add a new sync partition of an activation and print its key "
                            "(for dagster asset materialize --partition)")
    p.add_argument("activation")
    p.set_defaults(func=cmd_partition)
    p = sub.add_parser("ui", parents=[common],
                       help="open the Dagster UI (webserver and daemon) on the project, with its local stand-ins")
    p.add_argument("--port", type=int, default=UI_DEFAULT_PORT, help=f"default {UI_DEFAULT_PORT}")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    p.set_defaults(func=cmd_ui)
    p = sub.add_parser("emulator", parents=[common],
                       help="serve the project's GCS buckets from a local emulator (and its loopback hubspot "
                            "destinations from the local HubSpot fake) until Ctrl-C")
    p.add_argument("--port", type=int, default=EMULATOR_DEFAULT_PORT,
                   help=f"default {EMULATOR_DEFAULT_PORT}; 0 picks a free one")
    p.set_defaults(func=cmd_emulator)
    p = sub.add_parser("demo", parents=[common],
                       help="create the quickstart warehouse and run every quickstart activation")
    p.add_argument("--dir", help=f"where the demo project and its data go (default ./{DEMO_DIR_NAME})")
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("schema", parents=[common], help="print the JSON Schema of dinmo.yaml (for editors)")
    p.set_defaults(func=cmd_schema)
    p = sub.add_parser("init", parents=[common], help="create a project (dinmo.yaml) with a source of your choice")
    p.add_argument("dir", nargs="?", default=".", help="where the project goes (default: the current directory)")
    p.add_argument("--source", choices=list(project_init.SOURCES), default="duckdb",
                   help="the warehouse type (default duckdb, with a small sample table)")
    p.set_defaults(func=cmd_init)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one ``dinmo`` command; returns its exit code (0 ok, 1 failed, 2 usage)."""
    args = _parser().parse_args(argv)
    try:
        return args.func(args)
    except ProjectError as exc:
        _print_problems(str(args.project or project_dir_from_env()), exc.problems)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if args.verbose:
            raise
        _print(f"dinmo {args.command}: {_first_line(exc)}")
        _print("  (run the command again with --verbose for the stack trace)")
        return 1


if __name__ == "__main__":
    sys.exit(main())
