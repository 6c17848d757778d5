"""Snapshot and activation assets, one dynamic partition per sync, and each activation's sync job.

``snapshots/A`` stores, in ``dinmo_delta_storage``, each record's key and row hash and the rows the sync
will deliver (every row for a full sync, the changes for a delta sync: ``sync.take_snapshot``);
``activations/A`` computes the change set against A's last successful snapshot, writes the files, and
only then promotes the snapshot to A's baseline. The plain-Python work is in ``dinmo_dagster.sync``;
keys, groups and descriptions come from the translator, names from ``names.py``.
"""

# No `from __future__ import annotations`: Dagster reads the steps' `config: SyncConfig` annotation.
from collections.abc import Iterable
from typing import Any

import dagster as dg
from pydantic import Field

from dinmo_dagster import alerts, platform_sync, sync
from dinmo_dagster.config import Project
from dinmo_dagster.names import (
    ACTIVATION_TAG,
    OWNER_TAG,
    activation_key,
    job_name,
    op_name,
    partitions_name,
    pool_name,
    snapshot_key,
)
from dinmo_dagster.resources import destination_key, destination_of, platform_of, source_key, warehouse_of
from dinmo_dagster.translator import DinmoEntity, DinmoTranslator


class SyncConfig(dg.Config):
    """Run options of one sync."""

    full_refresh: bool = Field(
        default=False, description="Ignore the baseline and export every record (the baseline is replaced).")


def sync_target(project: Project, name: str, resources: Any) -> sync.SyncTarget:
    """What ``sync`` needs of activation ``name``, with its warehouse and destination from ``resources``."""
    a = project.activations[name]
    seg, model = project.model_of(name)  # an activation of a whole model reads the model's view
    return sync.SyncTarget(
        name=name, activation=a, model_name=seg.model, model=model, segment_name=a.segment or seg.model,
        warehouse=warehouse_of(resources, model.source),
        # A snapshot step has no destination resource: it takes snapshots and writes no file.
        destination=destination_of(resources, a.destination),
        schemas=project.sources[model.source].helper_schemas,
        platform=platform_of(resources, a.destination),
    )


def reap_dead_syncs(instance: dg.DagsterInstance, activation: str) -> list[str]:
    """Mark failed the runs of an activation's sync job whose process died, and free their pool slots.

    A sync killed outright (SIGKILL, a lost machine) leaves its run STARTED and holding the
    activation's pool slot, and the next sync would wait for that slot forever. Runs started by
    ``dinmo sync`` carry the host and pid that run them (the ``dinmo/owner`` tag); a run whose process
    is gone is reaped. Runs launched by the daemon are watched by Dagster's run monitoring. Returns the
    reaped run ids.
    """
    reaped = []
    in_progress = [dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.CANCELING]
    for run in instance.get_runs(filters=dg.RunsFilter(job_name=job_name(activation), statuses=in_progress)):
        if sync.process_alive(run.tags.get(OWNER_TAG, "")) is False:
            fail_dead_run(instance, run, f"the process of this sync of activation '{activation}' died; "
                                                "marked failed by the next sync")
            reaped.append(run.run_id)
    return reaped


def fail_dead_run(instance: dg.DagsterInstance, run: dg.DagsterRun, message: str) -> None:
    """Mark a dead run failed (when Dagster still thinks it runs) and free the pool slots it held."""
    if not run.is_finished:
        instance.report_run_failed(run, message=message)
    instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)


def sync_ops_config(activation: str, full_refresh: bool = False) -> dict[str, Any]:
    """The ``ops`` run config of a sync: both steps take ``full_refresh`` (a full refresh's snapshot
    stores every row)."""
    return {op_name(key(activation)): {"config": {"full_refresh": full_refresh}}
            for key in (snapshot_key, activation_key)}


def sync_run_request(instance: dg.DagsterInstance, activation: str, key: str,
                     tags: dict[str, str] | None = None) -> dg.RunRequest:
    """A run of the activation's sync job for partition ``key``, the partition added first (a retried
    evaluation finds it), after reaping dead syncs (a killed CLI sync must not hold the pool slot).
    The run key is the partition key: a retried tick does not start a second sync."""
    reap_dead_syncs(instance, activation)
    if not instance.has_dynamic_partition(partitions_name(activation), key):
        instance.add_dynamic_partitions(partitions_name(activation), [key])
    return dg.RunRequest(run_key=key, partition_key=key, tags=tags)


def step_failure_text(event: dg.DagsterEvent) -> str | None:
    """What a failed step reports: its dg.Failure description, else the message at the root of its
    error's cause chain; None when the event carries neither."""
    data = event.step_failure_data
    if data is None:
        return None
    if data.user_failure_data and data.user_failure_data.description:
        return data.user_failure_data.description
    err = data.error
    if err is None:
        return None
    while err.cause is not None:
        err = err.cause
    return (err.message or "").strip()


def _metadata(a: Any, r: sync.SyncResult) -> dict[str, Any]:
    md: dict[str, Any] = {
        "dagster/row_count": dg.MetadataValue.int(r.rows_written),
        "sync_type": r.sync_type,
        "run_type": a.effective_run_type,
        "sync_mode": a.sync_mode,
        "rows_added": dg.MetadataValue.int(r.counts.added),
        "rows_updated": dg.MetadataValue.int(r.counts.updated),
        "rows_removed": dg.MetadataValue.int(r.counts.removed),
        "rows_unchanged": dg.MetadataValue.int(r.counts.unchanged),
        "files_written": dg.MetadataValue.int(len(r.files)),
        "bytes_written": dg.MetadataValue.int(r.bytes),
        "duration_s": dg.MetadataValue.float(round(r.duration_s, 3)),
        "files": dg.MetadataValue.md("\n".join(f"- {u}" for u in r.files) or "(no file: nothing to write)"),
    }
    if r.export_path:  # the warehouse's own unload to GCS, or streaming and why
        md["dinmo/export_path"] = r.export_path
    if r.writer:  # duckdb_copy (DuckDB's own COPY) or arrow (the shared writer), and why not COPY
        md["writer"] = r.writer
        if r.writer_reason:
            md["writer_reason"] = r.writer_reason
    for i, uri in enumerate(r.files[:20]):
        md[f"file_{i + 1}"] = dg.MetadataValue.path(uri)
        if uri.startswith("gs://"):  # a clickable link to the object in the Cloud console
            md[f"file_{i + 1}_console"] = dg.MetadataValue.url(
                "https://console.cloud.google.com/storage/browser/_details/" + uri.removeprefix("gs://"))
    if r.timings:  # seconds per step of the delivery (recover, plan, write, promote, retention)
        md["timings"] = dg.MetadataValue.json(r.timings)
    if r.recovered:
        md["recovered"] = "\n".join(r.recovered)
    if r.recovered_partitions:  # dead syncs whose files had all landed, completed by this run
        md["recovered_partition"] = ", ".join(r.recovered_partitions)
        md["recovered_files"] = dg.MetadataValue.md("\n".join(f"- {u}" for u in r.recovered_files) or "(no file)")
    return md


def _platform_metadata(a: Any, r: sync.SyncResult) -> dict[str, Any]:
    """A platform sync's metadata: change counts, then records per operation, accepted, rejected, top
    reasons, batches, retries and rate-limit waits (numbers and reason codes only: no value, no secret)."""
    md: dict[str, Any] = {
        "dagster/row_count": dg.MetadataValue.int(r.rows_written),
        "sync_type": r.sync_type,
        "sync_mode": a.platform_mode,
        "service": a.platform_service,
        "rows_added": dg.MetadataValue.int(r.counts.added),
        "rows_updated": dg.MetadataValue.int(r.counts.updated),
        "rows_removed": dg.MetadataValue.int(r.counts.removed),
        "rows_unchanged": dg.MetadataValue.int(r.counts.unchanged),
        "duration_s": dg.MetadataValue.float(round(r.duration_s, 3)),
    }
    for key, value in r.platform.items():
        md[key] = value
    if r.recovered:
        md["recovered"] = "\n".join(r.recovered)
    return md


def _activation_assets(project: Project, name: str, translator: DinmoTranslator) -> list[Any]:
    a = project.activations[name]
    _, model = project.model_of(name)
    parts = dg.DynamicPartitionsDefinition(name=partitions_name(name))
    snapshot_spec = translator.get_asset_spec(DinmoEntity.snapshot(project, name))
    delivery_spec = translator.get_asset_spec(DinmoEntity.activation(project, name))

    @dg.multi_asset(
        specs=[snapshot_spec], name=op_name(snapshot_key(name)), partitions_def=parts, pool=pool_name(name),
        required_resource_keys={source_key(model.source)},
    )
    def _snapshot(context: dg.AssetExecutionContext, config: SyncConfig) -> dg.MaterializeResult:
        t = sync_target(project, name, context.resources)
        snap = sync.take_snapshot(t, context.partition_key, full=config.full_refresh)
        if snap.null_keys:
            context.log.warning(f"{snap.null_keys} row(s) of {a.reads} have a NULL "
                                f"'{model.primary_key}' and are not synced")
        if snap.duplicates_dropped:
            context.log.warning(f"{snap.duplicates_dropped} duplicate row(s) on '{model.primary_key}' dropped "
                                "(one row kept per key)")
        if snap.rows == 0:
            context.log.warning(f"{a.reads} is empty")
        if snap.window_start is not None:
            context.log.info(f"event sync: events from {snap.window_start.isoformat()} (last delivered event "
                             f"time minus lookback {a.lookback})")
        return dg.MaterializeResult(metadata={
            "dagster/row_count": dg.MetadataValue.int(snap.rows),
            "null_keys_excluded": dg.MetadataValue.int(snap.null_keys),
            "duplicates_dropped": dg.MetadataValue.int(snap.duplicates_dropped),
            "dagster/relation_identifier": snap.table,
            "columns": ", ".join(snap.columns),
            **({"event_window_start": snap.window_start.isoformat()} if snap.window_start else {}),
            # seconds per step of the snapshot (key statistics, snapshot tables, change counts)
            **({"timings": dg.MetadataValue.json(snap.timings)} if snap.timings else {}),
        })

    @dg.multi_asset(
        specs=[delivery_spec], name=op_name(activation_key(name)), partitions_def=parts, pool=pool_name(name),
        required_resource_keys={source_key(model.source), destination_key(a.destination)},
    )
    def _activation(context: dg.AssetExecutionContext, config: SyncConfig) -> dg.MaterializeResult:
        t = sync_target(project, name, context.resources)
        instance = context.instance

        def run_alive(run_id: str, _owner: str) -> bool | None:
            run = instance.get_run_by_id(run_id) if run_id else None
            return None if run is None else not run.is_finished

        def mark_dead(run_id: str, completed: bool) -> None:
            run = instance.get_run_by_id(run_id)
            if run is not None:
                what = "died after all its files had landed; completed" if completed else "died; cleaned up"
                message = f"sync of activation '{name}' {what} by run {context.run.run_id}"
                if run.is_finished:  # already marked failed (e.g. reaped): say it in its log instead
                    instance.report_engine_event(message, run)
                fail_dead_run(instance, run, message)

        def on_log(text: str) -> None:
            # a platform's quota running out is a warning: the sync is a partial success
            (context.log.warning if text.startswith("WARNING: ") else context.log.info)(text.removeprefix("WARNING: "))

        deliver = platform_sync.deliver if t.platform is not None else sync.deliver
        run_id = context.run.run_id
        try:
            with t.warehouse.session():  # (the warnings and the delivery share the step's one connection)
                # warnings before anything is written: logged, alerted from this run, or (warnings_block) a failure
                warned = sync.check_warnings(t, context.partition_key, run_id)
                for event, text in warned:
                    if event != "empty_segment":  # (the snapshot step has logged it)
                        context.log.warning(text)
                    alerts.send(project, alerts.Alert(name, event, text, run_id), context.log.warning)
                result = deliver(t, context.partition_key, run_id=run_id, force_full=config.full_refresh,
                                 on_log=on_log, is_alive=run_alive, on_dead=mark_dead)
        except sync.SyncError as exc:  # its event (removal_guard, rejections...) is the failure alert's
            raise dg.Failure(str(exc), metadata={alerts.EVENT_METADATA: exc.event}) from exc
        rejected = alerts.rejection_warning(a, result.platform) if t.platform is not None else None
        if rejected:
            warned.append(("rejections", rejected))
            context.log.info(rejected)  # (dinmo sync prints the rejections in its summary)
            alerts.send(project, alerts.Alert(name, "rejections", rejected, run_id), context.log.warning)
        shown = {alerts.WARNINGS_METADATA: dg.MetadataValue.json([{"event": e, "message": m} for e, m in warned])} \
            if warned else {}
        for key in result.dropped_partitions:
            if context.instance.has_dynamic_partition(partitions_name(name), key):
                context.instance.delete_dynamic_partition(partitions_name(name), key)
        if t.platform is not None:
            return dg.MaterializeResult(metadata={**_platform_metadata(a, result), **shown})
        if not result.files:
            context.log.info("nothing to write: no file")
        return dg.MaterializeResult(metadata={**_metadata(a, result), **shown})

    return [_snapshot, _activation]


def sync_job(project: Project, name: str, translator: DinmoTranslator | None = None) -> Any:
    """Models, segments (with their blocking checks), snapshot and activation, in one run."""
    a = project.activations[name]
    key = (translator or DinmoTranslator()).get_asset_key(DinmoEntity.activation(project, name))
    return dg.define_asset_job(
        # predictions are trained on their own schedule, not by every sync that reads their scores
        job_name(name), selection=dg.AssetSelection.assets(key).upstream().materializable()
        - dg.AssetSelection.tag("dinmo/own_schedule", "predictions"),
        description=f"Sync activation '{name}': refresh {a.reads}, snapshot it, deliver the changes",
        tags={ACTIVATION_TAG: name},
        # Its steps depend on one another (model, check, segment, check, snapshot, delivery) and do their
        # work in the warehouse: a process per step would only add an import of Dagster and the project
        # to each (about 4 s of CPU apiece; a 10-row chain took 47 s instead of 8 s).
        executor_def=dg.in_process_executor,
    )


def defs(project: Project, translator: DinmoTranslator | None = None,
         only: Iterable[str] | None = None) -> dg.Definitions:
    """Each activation's snapshot and delivery assets, and its sync job (those of the activations
    ``only`` names, when given)."""
    translator = translator or DinmoTranslator()
    assets: list[Any] = []
    jobs = []
    for name in project.activations if only is None else only:
        assets += _activation_assets(project, name, translator)
        jobs.append(sync_job(project, name, translator))
    return dg.Definitions(assets=assets, jobs=jobs)


# Names callers have always imported from here; they live in names.py.
__all__ = ["OWNER_TAG", "SyncConfig", "activation_key", "defs", "job_name", "partitions_name", "pool_name",
           "reap_dead_syncs", "step_failure_text", "sync_job", "sync_ops_config", "sync_run_request", "sync_target"]
