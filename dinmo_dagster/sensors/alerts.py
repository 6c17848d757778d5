"""The Dagster side of alerts (``dinmo_dagster.alerts``): failed syncs, automatic pauses and resumes.

- ``dinmo_alerts`` is a run-failure sensor: the daemon evaluates it for every failed run of a sync job,
  whatever started it (the UI, a schedule, a sensor, ``dagster asset materialize``), and sends the
  ``failure`` alert (or ``removal_guard``, ``rejections``, ``size_change``, ``empty_segment``: the event a
  failed step carries in its metadata) within a tick of the failure (30 s by default).
- ``dinmo sync`` runs in its own process, often with no daemon: it sends the failure alert of its run
  itself, right after the run fails (``alert_failed_run``). The sensor leaves a CLI run alone while the
  process that runs it lives, and once it is gone unless it was alerted: a ``dinmo sync`` killed before
  it could alert is alerted by the sensor when its run is marked failed.
- Each failed run is alerted once: whoever alerts first tags it ``dinmo/alerted`` (``cli`` or
  ``sensor``), and the other skips a tagged run.
- Pauses and resumes are sent by the sensors that make them (``dinmo_validation``,
  ``dinmo_pause_after_failures``) through ``pause_alerts`` and ``alert_pause``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import dagster as dg
from dagster._core.events import DagsterEventType

from dinmo_dagster import alerts, sync
from dinmo_dagster.assets.activations import step_failure_text
from dinmo_dagster.config import Project
from dinmo_dagster.names import OWNER_TAG, TRIGGER_TAG, job_name

ALERTS_SENSOR = "dinmo_alerts"
ALERTED_TAG = "dinmo/alerted"  # on a failed run once its failure was alerted: "cli" or "sensor"
_OUR_ERROR_PREFIX = re.compile(
    r"^dinmo_dagster(?:\.\w+)+: "
)  # the class of our own errors: no news to a user

__all__ = [
    "ALERTED_TAG",
    "ALERTS_SENSOR",
    "alert_failed_run",
    "alert_pause",
    "defs",
    "failure_alert",
    "pause_alerts",
]


def has_channels(project: Project) -> bool:
    """Whether any activation has a channel to alert."""
    return any(alerts.subscription(project, a)[1] for a in project.activations)


def _event_of(event: dg.DagsterEvent) -> str | None:
    data = event.step_failure_data
    found = (
        data.user_failure_data.metadata.get(alerts.EVENT_METADATA)
        if data and data.user_failure_data
        else None
    )
    return str(found.value) if found is not None else None


def failure_alert(instance: dg.DagsterInstance, run: dg.DagsterRun, activation: str) -> alerts.Alert:
    """The alert of a failed sync run: the first failed step's event and cause (its dg.Failure
    description, or the root of its error), else the run's own failure message."""
    for entry in instance.all_logs(run.run_id, of_type=DagsterEventType.STEP_FAILURE):
        event = entry.dagster_event
        text = step_failure_text(event) if event is not None else None
        if event is not None and text:
            return alerts.Alert(
                activation,
                _event_of(event) or "failure",
                _OUR_ERROR_PREFIX.sub("", text),
                run.run_id,
                failed=True,
            )
    for entry in instance.all_logs(run.run_id, of_type=DagsterEventType.RUN_FAILURE):
        if entry.dagster_event is not None and entry.dagster_event.message:
            return alerts.Alert(activation, "failure", entry.dagster_event.message, run.run_id, failed=True)
    return alerts.Alert(
        activation, "failure", "the sync run failed; see its log in the Dagster UI", run.run_id, failed=True
    )


def alert_failed_run(
    project: Project, instance: dg.DagsterInstance, run_id: str, by: str, log: Callable[[str], None]
) -> list[str] | None:
    """Send the failure alert of sync run ``run_id`` once: None when it is not ours to alert (not a sync,
    already alerted, or a ``dinmo sync`` run whose process lives and alerts it itself), else the channels
    that took it. ``by``: ``cli`` or ``sensor``, recorded in the run's ``dinmo/alerted`` tag."""
    run = instance.get_run_by_id(run_id)
    jobs = {job_name(a): a for a in project.activations}
    if run is None or run.job_name not in jobs or ALERTED_TAG in run.tags:
        return None
    if (
        by == "sensor"
        and run.tags.get(TRIGGER_TAG) == "cli"
        and sync.process_alive(run.tags.get(OWNER_TAG, "")) is not False
    ):
        return None
    instance.add_run_tags(run_id, {ALERTED_TAG: by})
    return alerts.send(project, failure_alert(instance, run, jobs[run.job_name]), log)


def alert_pause(
    project: Project, activation: str, cause: str, run_id: str, log: Callable[[str], None]
) -> list[str]:
    """The ``pause`` alert of an activation paused after consecutive failed syncs (``run_id``: the last)."""
    return alerts.send(project, alerts.Alert(activation, "pause", cause, run_id), log)


def pause_alerts(
    project: Project, before: Mapping[str, Any], after: Mapping[str, Any], log: Callable[[str], None]
) -> None:
    """The ``pause`` and ``resume`` alerts of a validation tick: ``before`` and ``after`` are the validation
    sensor's memory of what it paused (``{activation: {"culprit", "instigators"}}``)."""
    for name in sorted(set(after) - set(before)):
        stopped = ", ".join(sorted(after[name].get("instigators", {})))
        alerts.send(
            project,
            alerts.Alert(name, "pause", f"validation paused {stopped}: {after[name]['culprit']}"),
            log,
        )
    for name in sorted(set(before) - set(after)):
        if name in project.activations:
            alerts.send(
                project,
                alerts.Alert(name, "resume", "validation passes again; resumed what it had paused"),
                log,
            )


def failure_alert_sensor(project: Project) -> dg.SensorDefinition:
    """Alerts the failure of every sync run (see the module's docstring)."""

    @dg.run_failure_sensor(
        name=ALERTS_SENSOR,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Send the failure alert of each failed sync to the activation's alert channels",
    )
    def _sensor(context: dg.RunFailureSensorContext) -> None:
        sent = alert_failed_run(
            project, context.instance, context.dagster_run.run_id, "sensor", context.log.warning
        )
        if sent:
            context.log.info(f"alerted the failure of run {context.dagster_run.run_id} to {', '.join(sent)}")

    return _sensor


def defs(project: Project) -> dg.Definitions:
    """The failure alert sensor, when an activation has a channel."""
    return dg.Definitions(sensors=[failure_alert_sensor(project)] if has_channels(project) else [])
