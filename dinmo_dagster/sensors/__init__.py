"""Sensors that make the project run itself.

- ``<A>_source_change`` (activations with ``trigger: {on_source_change: true}`` or a
  ``watermark_column``): fingerprints the model's source in the warehouse (``fingerprint.py``) on each
  evaluation and starts a sync when the fingerprint changed. The first evaluation (no cursor) only
  records the fingerprint: turning the sensor on never starts a sync by itself.
- ``dinmo_validation``: at each tick of ``settings.validation_cron`` (UTC; nightly by default) it runs
  ``validation.check_project``; it pauses the schedule and source-change sensor of every activation a
  problem breaks (only those that are running) and names the culprit in its tick log, its skip
  message and an observation on the ``activations/A`` asset. It remembers in its cursor what *it*
  paused and resumes exactly those once their activation validates again; an activation a user
  paused is never touched.
- ``dinmo_pause_after_failures``: a run-failure sensor; when the last
  ``settings.consecutive_failures_to_pause`` finished syncs of an activation (since its schedule or
  sensor was last started) all failed, it pauses the activation and logs the last error.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

import dagster as dg
from dagster._core.remote_origin import RemoteRepositoryOrigin
from dagster._core.scheduler.instigation import InstigatorStatus
from dagster._utils.schedules import get_latest_completed_cron_tick

from dinmo_dagster import secrets, sync
from dinmo_dagster.assets.activations import step_failure_text, sync_run_request
from dinmo_dagster.config import Project
from dinmo_dagster.names import (
    ACTIVATION_TAG,
    FAILURE_SENSOR,
    PAUSED_TAG,
    TRIGGER_TAG,
    VALIDATION_SENSOR,
    job_name,
    partitions_name,
    source_sensor_name,
)
from dinmo_dagster.resources import destination_key, source_key, warehouse_of
from dinmo_dagster.sensors import alerts as sensor_alerts
from dinmo_dagster.sensors import control
from dinmo_dagster.sensors.fingerprint import fingerprint
from dinmo_dagster.translator import DinmoEntity, DinmoTranslator
from dinmo_dagster.validation import Problem, affected_activations, check_project

__all__ = ["FAILURE_SENSOR", "VALIDATION_SENSOR", "defs", "pause_after_failures", "reconcile", "short_error"]

VALIDATION_INTERVAL_S = 60


# ---------------------------------------------------------------------------------------------------------
# source change
# ---------------------------------------------------------------------------------------------------------


def source_change_sensor(project: Project, name: str) -> dg.SensorDefinition:
    """Syncs activation ``name`` when the fingerprint of its model's source changes."""
    seg, model = project.model_of(name)
    key = source_key(model.source)
    parts = dg.DynamicPartitionsDefinition(name=partitions_name(name))

    @dg.sensor(
        name=source_sensor_name(name), job_name=job_name(name),
        minimum_interval_seconds=control.SOURCE_SENSOR_INTERVAL_S, default_status=dg.DefaultSensorStatus.RUNNING,
        required_resource_keys={key},
        description=f"Sync activation '{name}' when the source of model "
                    f"'{seg.model}' changes",
    )
    def _sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
        fp = fingerprint(warehouse_of(context.resources, model.source), project, name)
        if context.cursor is None:
            return dg.SensorResult(skip_reason=f"first fingerprint recorded: {fp}", cursor=fp)
        if fp == context.cursor:
            return dg.SkipReason(f"source unchanged: {fp}")
        pk = sync.new_partition_key()
        # The partition is added by sync_run_request as well as requested below: the run request is
        # resolved against the instance's partitions.
        request = sync_run_request(context.instance, name, pk,
                                   tags={ACTIVATION_TAG: name, TRIGGER_TAG: "source_change"})
        context.log.info(f"source changed: {context.cursor} -> {fp}; syncing '{name}' as partition {pk}")
        return dg.SensorResult(
            run_requests=[request],
            dynamic_partitions_requests=[parts.build_add_request([pk])],
            cursor=fp,
        )

    return _sensor


# ---------------------------------------------------------------------------------------------------------
# validation: pause and resume
# ---------------------------------------------------------------------------------------------------------


def reconcile(instance: Any, project: Project, problems: list[Problem], paused: dict[str, Any],
              origin: Any = None, log: Any = None) -> tuple[dict[str, Any], list[str]]:
    """Pause what ``problems`` break, resume what this sensor paused and is fixed.

    ``paused`` is ``{activation: {"culprit": ..., "instigators": {name: previous status}}}`` (the
    sensor's memory of what it paused); returns the new memory and one line per action.
    """
    affected = affected_activations(project, problems)
    paused = {a: v for a, v in paused.items() if a in project.activations}
    lines: list[str] = []
    for name, culprit in sorted(affected.items()):
        if name in paused:
            paused[name]["culprit"] = culprit
            lines.append(f"activation '{name}' stays paused: {culprit}")
            continue
        stopped: dict[str, str] = {}
        for t in control.instigators(project, name):
            previous = control.pause(instance, t, origin)
            if previous is not None:
                stopped[t.name] = previous
        if stopped:
            paused[name] = {"culprit": culprit, "instigators": stopped}
            lines.append(f"paused activation '{name}' ({', '.join(sorted(stopped))}): {culprit}")
        else:
            lines.append(f"activation '{name}' is broken but was not running (left as is): {culprit}")
    for name in sorted(set(paused) - set(affected)):
        by_name = {t.name: t for t in control.instigators(project, name)}
        resumed = [n for n, prev in paused[name]["instigators"].items()
                   if n in by_name and control.resume(instance, by_name[n], origin, prev)]
        lines.append(f"resumed activation '{name}' ({', '.join(sorted(resumed)) or 'nothing left to resume'}): "
                     f"validation passes again")
        del paused[name]
    for line in lines:
        if log is not None:
            (log.warning if line.startswith("paused") else log.info)(line)
    return paused, lines


def _origin(context: Any) -> RemoteRepositoryOrigin | None:
    """The code location the daemon evaluates this sensor in, when it says."""
    loc = getattr(context, "code_location_origin", None)
    if loc is None or not context.repository_name:
        return None
    return RemoteRepositoryOrigin(loc, context.repository_name)


def _utc(d: datetime) -> datetime:
    return d if d.tzinfo else d.replace(tzinfo=timezone.utc)


def validation_sensor(project: Project, translator: DinmoTranslator) -> dg.SensorDefinition:
    """Validates the project at each tick of ``settings.validation_cron``; pauses what breaks, resumes
    what it paused once fixed, and records both as observations of the ``activations/A`` assets."""
    cron = project.settings.validation_cron

    def activation_key(name: str) -> dg.AssetKey:
        return translator.get_asset_key(DinmoEntity.activation(project, name))

    keys = {source_key(n) for n in project.sources} | {destination_key(n) for n in project.destinations}

    @dg.sensor(
        name=VALIDATION_SENSOR, minimum_interval_seconds=VALIDATION_INTERVAL_S,
        default_status=dg.DefaultSensorStatus.RUNNING, required_resource_keys=keys,
        description=f"Validate every connection and entity at '{cron}' (UTC); pause the activations a "
                    "problem breaks and resume them when it is fixed",
    )
    def _sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        memory = json.loads(context.cursor) if context.cursor else {}
        now = datetime.now(timezone.utc)
        due = get_latest_completed_cron_tick(cron, now, "UTC")
        last = memory.get("last_check")
        if last and _utc(datetime.fromisoformat(last)) >= due:
            return dg.SensorResult(skip_reason=f"validated at {last}; next at the tick of '{cron}' after it")
        problems = check_project(project, context.resources)
        for p in problems:
            context.log.warning(f"validation: {p}")
        before = set(memory.get("paused", {}))
        origin = _origin(context) or control.guess_origin(context.instance, project,
                                                          (FAILURE_SENSOR, VALIDATION_SENSOR))
        paused, lines = reconcile(context.instance, project, problems, memory.get("paused", {}),
                                  origin=origin, log=context.log)
        sensor_alerts.pause_alerts(project, memory.get("paused", {}), paused, context.log.warning)
        events = [dg.AssetObservation(asset_key=activation_key(a), metadata={
            "dinmo/paused_by": "validation", "dinmo/culprit": v["culprit"]}) for a, v in paused.items()
            if a not in before]
        events += [dg.AssetObservation(asset_key=activation_key(a), metadata={
            "dinmo/resumed_by": "validation"}) for a in sorted(before - set(paused))]
        summary = (f"{len(problems)} problem(s): " + "; ".join(str(p) for p in problems)) if problems \
            else "validation passed"
        if lines:
            summary += " | " + " | ".join(lines)
        return dg.SensorResult(skip_reason=summary[:2000], asset_events=events,
                               cursor=json.dumps({"last_check": now.isoformat(), "paused": paused}))

    return _sensor


# ---------------------------------------------------------------------------------------------------------
# consecutive failures
# ---------------------------------------------------------------------------------------------------------


def _secrets(project: Project) -> list[str]:
    """Every value the project's sources and destinations read from the environment, longest first."""
    found = {s for cfg in [*project.sources.values(), *project.destinations.values()]
             for s in secrets.secret_values(cfg, every_env_ref=True)}
    return sorted(found, key=len, reverse=True)


def short_error(project: Project, text: str) -> str:
    """First line of an error, at most 300 characters, with the project's secrets removed."""
    line = next((ln.strip() for ln in (text or "").splitlines() if ln.strip()), "") or "unknown error"
    for s in _secrets(project):
        line = line.replace(s, "***")
    return line[:300]


def _failure_text(context: dg.RunFailureSensorContext) -> str:
    for event in context.get_step_failure_events():
        text = step_failure_text(event)
        if text:
            return text
    return context.failure_event.message or ""


def pause_after_failures(instance: Any, project: Project, activation: str, last_error: str,
                         origin: Any = None) -> str | None:
    """Pause ``activation`` when its last N finished syncs all failed; returns what was done."""
    n = project.settings.consecutive_failures_to_pause
    states = [(t, control.find_state(instance, t, origin)) for t in control.instigators(project, activation)]
    running = [(t, st) for t, st in states if control.status_of(st, t) != InstigatorStatus.STOPPED.value]
    if not running:
        return None
    starts = [s for s in (control.start_timestamp(st) for _, st in running) if s]
    since = datetime.fromtimestamp(max(starts), timezone.utc) if starts else None
    records = instance.get_run_records(
        filters=dg.RunsFilter(job_name=job_name(activation), created_after=since,
                              statuses=[dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE]),
        limit=n)
    if len(records) < n or any(r.dagster_run.status != dg.DagsterRunStatus.FAILURE for r in records):
        return None
    for t, st in running:
        control.pause(instance, t, origin, st)
    return (f"paused activation '{activation}' ({', '.join(t.name for t, _ in running)}) after {n} consecutive "
            f"failed syncs; last error: {short_error(project, last_error)}")


def failure_sensor(project: Project) -> dg.SensorDefinition:
    """Pauses an activation after ``settings.consecutive_failures_to_pause`` failed syncs in a row."""
    jobs = {job_name(a): a for a in project.activations}

    @dg.run_failure_sensor(
        name=FAILURE_SENSOR, default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Pause an activation after {project.settings.consecutive_failures_to_pause} consecutive "
                    "failed syncs",
    )
    def _sensor(context: dg.RunFailureSensorContext) -> None:
        run = context.dagster_run
        activation = jobs.get(run.job_name)
        if activation is None:
            return
        origin = run.remote_job_origin.repository_origin if run.remote_job_origin else \
            control.guess_origin(context.instance, project, (FAILURE_SENSOR, VALIDATION_SENSOR))
        done = pause_after_failures(context.instance, project, activation, _failure_text(context), origin)
        if done:
            context.log.warning(done)
            context.instance.add_run_tags(run.run_id, {PAUSED_TAG: done[:1000]})
            sensor_alerts.alert_pause(project, activation, done, run.run_id, context.log.warning)

    return _sensor


def defs(project: Project, translator: DinmoTranslator | None = None) -> dg.Definitions:
    """Source-change sensors, the validation sensor and the consecutive-failure sensor."""
    sensors = [source_change_sensor(project, a) for a in project.activations if control.has_source_trigger(project, a)]
    sensors.append(validation_sensor(project, translator or DinmoTranslator()))
    if project.activations:
        sensors.append(failure_sensor(project))
    return dg.Definitions(sensors=sensors)
