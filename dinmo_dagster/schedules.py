"""The Dagster schedules of a project: one per activation with a ``schedule``, one per scheduled
materialized model.

The schedule options and their cron strings are in ``recurrence.py``. Each tick of an activation's
schedule adds one sync partition, named after the tick's time, and requests the sync job on it.
"""

import dagster as dg

from dinmo_dagster import sync
from dinmo_dagster.assets.activations import sync_run_request
from dinmo_dagster.config import Project
from dinmo_dagster.names import (
    ACTIVATION_TAG,
    TRIGGER_TAG,
    job_name,
    model_schedule_name,
    refresh_job_name,
    schedule_name,
)
from dinmo_dagster.recurrence import Schedule, describe, to_cron


def _default_status(s: Schedule) -> dg.DefaultScheduleStatus:
    return dg.DefaultScheduleStatus.RUNNING if s.enabled else dg.DefaultScheduleStatus.STOPPED


def activation_schedule(name: str, s: Schedule) -> dg.ScheduleDefinition:
    """The schedule of activation ``name``: each tick requests one sync, on a partition of its own."""

    @dg.schedule(
        name=schedule_name(name),
        job_name=job_name(name),
        cron_schedule=to_cron(s),
        execution_timezone=s.timezone,
        default_status=_default_status(s),
        description=f"Sync activation '{name}' ({describe(s)})",
        tags={ACTIVATION_TAG: name, TRIGGER_TAG: "schedule"},
    )
    def _tick(context):  # type: ignore[no-untyped-def]  # dagster inspects the context annotation
        # One partition per tick, named after the tick's time: a retried tick reuses the run key
        # and Dagster does not start a second sync.
        return sync_run_request(context.instance, name, sync.new_partition_key(context.scheduled_execution_time))

    return _tick


def model_schedule(name: str, s: Schedule) -> dg.ScheduleDefinition:
    """The schedule refreshing materialized model ``name``."""
    return dg.ScheduleDefinition(
        name=model_schedule_name(name), job_name=refresh_job_name(name), cron_schedule=to_cron(s),
        execution_timezone=s.timezone, description=f"Refresh model '{name}' ({describe(s)})",
        default_status=_default_status(s),
    )


def defs(project: Project) -> dg.Definitions:
    """A Dagster schedule for every activation that has one, and for every scheduled materialized model."""
    return dg.Definitions(schedules=[
        *(activation_schedule(name, a.schedule) for name, a in project.activations.items() if a.schedule),
        *(model_schedule(name, m.schedule) for name, m in project.models.items() if m.materialized and m.schedule),
    ])
