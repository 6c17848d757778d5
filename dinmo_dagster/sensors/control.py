"""Pause and resume an activation's schedule and source-change sensor through the Dagster instance.

Dagster stores a schedule's or sensor's on/off state as an ``InstigatorState`` in the instance,
keyed by the instigator's remote origin id and selector id. The UI toggles write the same rows
(``instance.stop_schedule`` / ``instance.stop_sensor``). From inside a sensor there is no
``RemoteSchedule``; the origin is rebuilt from the code location the daemon evaluates the sensor in
(``context.code_location_origin``) or from a run's ``remote_job_origin``, or, failing both, found
among the stored states by name.

States: a stored ``RUNNING``/``STOPPED`` wins; no state or ``DECLARED_IN_CODE`` means the code's
``default_status``. Pausing writes ``STOPPED`` (``instance.stop_schedule``/``stop_sensor`` when a
state is stored, else a new ``STOPPED`` state, as Dagster's own ``stop_schedule`` does). Resuming
restores the status that was there before the pause with a fresh start timestamp (so the scheduler
does not catch up on the ticks missed while paused), and only if the instigator is still ``STOPPED``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from dagster._core.definitions.run_request import InstigatorType
from dagster._core.definitions.sensor_definition import SensorType
from dagster._core.remote_origin import RemoteInstigatorOrigin, RemoteRepositoryOrigin
from dagster._core.scheduler.instigation import (
    InstigatorState,
    InstigatorStatus,
    ScheduleInstigatorData,
    SensorInstigatorData,
)

from dinmo_dagster.config import Project
from dinmo_dagster.names import schedule_name, source_sensor_name
from dinmo_dagster.recurrence import to_cron

SOURCE_SENSOR_INTERVAL_S = 60


def has_source_trigger(project: Project, activation: str) -> bool:
    """Whether the activation has a source-change sensor (``on_source_change`` or a ``watermark_column``)."""
    t = project.activations[activation].trigger
    return bool(t and (t.on_source_change or t.watermark_column))


@dataclass(frozen=True)
class Instigator:
    """A schedule or sensor that can start syncs of one activation."""

    kind: str  # "schedule" | "sensor"
    name: str
    default_running: bool
    cron: str | list[str] | None = None
    min_interval: int | None = None

    @property
    def type(self) -> InstigatorType:
        return InstigatorType.SCHEDULE if self.kind == "schedule" else InstigatorType.SENSOR


def instigators(project: Project, activation: str) -> list[Instigator]:
    """The activation's schedule and source-change sensor (those it has)."""
    a = project.activations[activation]
    out: list[Instigator] = []
    if a.schedule is not None:
        out.append(Instigator("schedule", schedule_name(activation), a.schedule.enabled, cron=to_cron(a.schedule)))
    if has_source_trigger(project, activation):
        out.append(Instigator("sensor", source_sensor_name(activation), True, min_interval=SOURCE_SENSOR_INTERVAL_S))
    return out


def _new_state(origin: RemoteRepositoryOrigin, t: Instigator, status: InstigatorStatus) -> InstigatorState:
    data: Any
    if t.kind == "schedule":
        data = ScheduleInstigatorData(t.cron or "", start_timestamp=None)
    else:
        data = SensorInstigatorData(min_interval=t.min_interval, sensor_type=SensorType.STANDARD)
    return InstigatorState(RemoteInstigatorOrigin(origin, t.name), t.type, status, data)


def guess_origin(instance: Any, project: Project, extra_names: tuple[str, ...] = ()) -> RemoteRepositoryOrigin | None:
    """The code location of this project's instigators, from any of their states stored in the instance.

    The daemon stores a state for every running sensor (the validation and failure sensors
    included), so outside a daemon-evaluated context the origin is usually still found here.
    """
    names = set(extra_names)
    for a in project.activations:
        names.update(t.name for t in instigators(project, a))
    origins = {s.origin.repository_origin.get_id(): s.origin.repository_origin
               for s in instance.all_instigator_state() if s.name in names}
    return next(iter(origins.values())) if len(origins) == 1 else None


def find_state(instance: Any, t: Instigator, origin: RemoteRepositoryOrigin | None) -> InstigatorState | None:
    """The stored state of ``t``: by its exact ids when the origin is known, else by name."""
    if origin is not None:
        probe = _new_state(origin, t, InstigatorStatus.STOPPED)
        return instance.get_instigator_state(probe.instigator_origin_id, probe.selector_id)
    found = [s for s in instance.all_instigator_state(instigator_type=t.type) if s.name == t.name]
    return found[0] if len(found) == 1 else None


def status_of(state: InstigatorState | None, t: Instigator) -> str:
    """RUNNING, DECLARED_IN_CODE (running by default) or STOPPED, as Dagster computes it from the stored
    state of ``t`` (``find_state``)."""
    if state is None or state.status == InstigatorStatus.DECLARED_IN_CODE:
        return InstigatorStatus.DECLARED_IN_CODE.value if t.default_running else InstigatorStatus.STOPPED.value
    return InstigatorStatus.RUNNING.value if state.status == InstigatorStatus.RUNNING else \
        InstigatorStatus.STOPPED.value


def start_timestamp(state: InstigatorState | None) -> float | None:
    """When the instigator of this stored state was last started (None when unknown)."""
    data = state.instigator_data if state else None
    if isinstance(data, ScheduleInstigatorData):
        return data.start_timestamp
    if isinstance(data, SensorInstigatorData):
        return data.last_sensor_start_timestamp
    return None


def pause(instance: Any, t: Instigator, origin: RemoteRepositoryOrigin | None,
          state: InstigatorState | None = None) -> str | None:
    """Stop ``t`` if it runs; returns the status it had (to restore later), or None if untouched.

    ``state``: its stored state when the caller has just read it (else it is read here).
    """
    state = state if state is not None else find_state(instance, t, origin)
    previous = status_of(state, t)
    if previous == InstigatorStatus.STOPPED.value:
        return None
    if state is not None:
        if t.kind == "schedule":
            instance.stop_schedule(state.instigator_origin_id, state.selector_id, None)
        else:
            instance.stop_sensor(state.instigator_origin_id, state.selector_id, None)
    elif origin is not None:
        instance.add_instigator_state(_new_state(origin, t, InstigatorStatus.STOPPED))
    else:
        raise RuntimeError(f"cannot pause {t.kind} '{t.name}': its state is not in the instance and the code "
                           "location is unknown")
    return previous


def resume(instance: Any, t: Instigator, origin: RemoteRepositoryOrigin | None, previous: str) -> bool:
    """Restore the status ``t`` had before ``pause``, only if it is still stopped. True if resumed."""
    state = find_state(instance, t, origin)
    if state is None or state.status != InstigatorStatus.STOPPED:
        return False
    resumable = (InstigatorStatus.RUNNING.value, InstigatorStatus.DECLARED_IN_CODE.value)
    status = InstigatorStatus(previous) if previous in resumable else InstigatorStatus.RUNNING
    now = time.time()
    data = state.instigator_data
    if isinstance(data, ScheduleInstigatorData):
        data = ScheduleInstigatorData(t.cron or data.cron_schedule, start_timestamp=now)
    elif isinstance(data, SensorInstigatorData):
        data = data.with_sensor_start_timestamp(now)
    else:
        data = _new_state(state.origin.repository_origin, t, status).instigator_data
    instance.update_instigator_state(state.with_status(status).with_data(data))
    return True
