"""DinMo's schedule options turned into cron strings that Dagster schedules understand.

Options: an interval (``every: 15 minutes``, ``every: 4 hours``, ``every: 1 day``), a custom recurrence
(``at: "09:00"`` or a list of times, with optional ``days: [mon, wed]``), or a ``cron``. Times are in
``timezone`` (default UTC).
"""


from __future__ import annotations

import re
import zoneinfo
from typing import TYPE_CHECKING

import dagster as dg
from dagster._utils.schedules import is_valid_cron_string

if TYPE_CHECKING:
    from dinmo_dagster.config import Project, Schedule

_EVERY_RE = re.compile(r"^\s*(\d+)\s*(minute|minutes|hour|hours|day|days)\s*$")
_AT_RE = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
_DAY_NUM = {"sun": 0, "mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6}


def schedule_problem(s: Schedule) -> str | None:
    """Why this schedule is invalid, or None."""
    try:
        zoneinfo.ZoneInfo(s.timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return f"timezone: unknown time zone '{s.timezone}'; allowed: IANA names such as UTC, Europe/Paris"
    if s.cron is not None and not is_valid_cron_string(s.cron):
        return f"cron: invalid cron expression '{s.cron}'; allowed: five fields 'minute hour day month weekday'"
    if s.every is not None:
        m = _EVERY_RE.match(s.every)
        if not m:
            return (f"every: found '{s.every}'; allowed: 'N minutes' (N divides 60), 'N hours' (N divides 24) "
                    "or '1 day'")
        n, unit = int(m.group(1)), m.group(2).rstrip("s")
        limits = {"minute": 60, "hour": 24, "day": 1}
        if n < 1 or (unit == "day" and n != 1) or (unit != "day" and limits[unit] % n):
            return f"every: '{s.every}' is not a regular interval; N must divide {limits[unit]}"
    if s.at is not None:
        for t in [s.at] if isinstance(s.at, str) else s.at:
            if not _AT_RE.match(t):
                return f"at: found '{t}'; allowed: times as 'HH:MM' (24-hour)"
    return None


def to_cron(s: Schedule) -> str | list[str]:
    """The cron string(s) for a valid schedule."""
    if s.cron is not None:
        return s.cron
    if s.every is not None:
        m = _EVERY_RE.match(s.every)
        assert m
        n, unit = int(m.group(1)), m.group(2).rstrip("s")
        if unit == "minute":
            return f"*/{n} * * * *" if n > 1 else "* * * * *"
        if unit == "hour":
            return f"0 */{n} * * *" if n > 1 else "0 * * * *"
        return "0 0 * * *"
    times = [s.at] if isinstance(s.at, str) else list(s.at or [])
    days = ",".join(str(_DAY_NUM[d]) for d in s.days) if s.days else "*"
    crons = [f"{int(t[3:5])} {int(t[0:2])} * * {days}" for t in times]
    return crons[0] if len(crons) == 1 else crons


def _schedule_definition(name: str, s: Schedule) -> dg.ScheduleDefinition:
    from dinmo_dagster import sync
    from dinmo_dagster.assets.activations import job_name, sync_run_request
    from dinmo_dagster.sensors.control import schedule_name

    @dg.schedule(
        name=schedule_name(name),
        job_name=job_name(name),
        cron_schedule=to_cron(s),
        execution_timezone=s.timezone,
        default_status=dg.DefaultScheduleStatus.RUNNING if s.enabled else dg.DefaultScheduleStatus.STOPPED,
        description=f"Sync activation '{name}' ({describe(s)})",
        tags={"dinmo/activation": name, "dinmo/trigger": "schedule"},
    )
    def _tick(context):  # type: ignore[no-untyped-def]  # dagster inspects the context annotation
        # One partition per tick, named after the tick's time: a retried tick reuses the run key
        # and Dagster does not start a second sync.
        return sync_run_request(context.instance, name, sync.new_partition_key(context.scheduled_execution_time))

    return _tick


def describe(s: Schedule) -> str:
    """A readable summary, e.g. 'every 15 minutes, UTC' or 'at 09:00 on mon, wed, Europe/Paris'."""
    if s.cron is not None:
        what = f"cron '{s.cron}'"
    elif s.every is not None:
        what = f"every {s.every}"
    else:
        times = ", ".join([s.at] if isinstance(s.at, str) else list(s.at or []))
        what = f"at {times}" + (f" on {', '.join(s.days)}" if s.days else "")
    return f"{what}, {s.timezone}"


def defs(project: Project) -> dg.Definitions:
    """A Dagster schedule for every activation that has one, and for every scheduled materialized model."""
    from dinmo_dagster.assets.models import refresh_job_name

    model_schedules = [
        dg.ScheduleDefinition(
            name=f"model_{name}_refresh", job_name=refresh_job_name(name), cron_schedule=to_cron(m.schedule),
            execution_timezone=m.schedule.timezone, description=f"Refresh model '{name}' ({describe(m.schedule)})",
            default_status=dg.DefaultScheduleStatus.RUNNING if m.schedule.enabled else dg.DefaultScheduleStatus.STOPPED,
        )
        for name, m in project.models.items() if m.materialized and m.schedule
    ]
    return dg.Definitions(schedules=[
        *(_schedule_definition(name, a.schedule) for name, a in project.activations.items() if a.schedule),
        *model_schedules,
    ])
