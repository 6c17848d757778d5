"""Schedule options: DinMo's recurrences, their validation, and the cron strings Dagster runs them by.

A ``schedule:`` (of an activation, or of a materialized model) is one of

- an interval: ``every: 15 minutes`` (N divides 60), ``every: 4 hours`` (N divides 24), ``every: 1 day``
  (at midnight, or at a time of day: ``{every: 1 day, at: "06:30"}``);
- a custom recurrence: ``at: "09:00"`` or a list of times, with optional ``days: [mon, wed]``;
- several recurrences: ``recurrences: [{at: "09:00", days: [mon, wed]}, {at: "20:00", days: [sat, sun]}]``,
  each an interval or a custom recurrence, sharing the schedule's ``timezone`` and ``enabled``: one Dagster
  schedule ticks at the union of their times (its ``cron_schedule`` is the list of their cron strings);
- a ``cron`` expression (five fields: minute hour day month weekday).

Times are in ``timezone`` (an IANA name, default UTC); ``enabled: false`` declares the schedule stopped.
Plain Python: the Dagster schedules are built from ``to_cron`` in ``schedules.py``.
"""

from __future__ import annotations

import re
import zoneinfo
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["Recurrence", "Schedule", "cron_problem", "describe", "schedule_problem", "to_cron"]

_EVERY_RE = re.compile(r"^\s*(\d+)\s*(minute|minutes|hour|hours|day|days)\s*$")
_AT_RE = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
_DAY_NUM = {"sun": 0, "mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6}
Day = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


class Recurrence(BaseModel):
    """One recurrence of a schedule's ``recurrences``: an interval (``every``, with ``at`` for
    ``every: 1 day``) or times of day (``at``) on some days (``days``)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    every: str | None = None
    at: str | list[str] | None = None
    days: list[Day] | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Recurrence:
        if self.every is None and self.at is None:
            raise ValueError("give 'every' or 'at'")
        if self.days is not None and (self.at is None or self.every is not None):
            raise ValueError("'days' goes with 'at' (without 'every')")
        return self


class Schedule(BaseModel):
    """DinMo's schedule options: an interval, a custom recurrence (times and days), several recurrences or a
    cron."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    cron: str | None = None
    every: str | None = None
    at: str | list[str] | None = None
    days: list[Day] | None = None
    recurrences: Annotated[list[Recurrence], Field(min_length=1)] | None = None
    timezone: str = "UTC"
    enabled: bool = True

    @model_validator(mode="after")
    def _one_kind(self) -> Schedule:
        kinds = [k for k in ("cron", "every", "at", "recurrences") if getattr(self, k) is not None]
        if len(kinds) != 1 and kinds != ["every", "at"]:  # every: 1 day may take its time of day
            raise ValueError("give exactly one of 'cron', 'every', 'at' or 'recurrences'")
        if self.days is not None and (self.at is None or self.every is not None):
            raise ValueError("'days' goes with 'at' (without 'every')")
        return self

    def parts(self) -> list[Recurrence]:
        """The recurrences of an interval or custom-recurrence schedule (one, or ``recurrences``)."""
        if self.recurrences is not None:
            return list(self.recurrences)
        return [Recurrence(every=self.every, at=self.at, days=self.days)]


def schedule_problem(s: Schedule) -> str | None:
    """Why this schedule is invalid (``key: what was found; what is allowed``), or None."""
    try:
        zoneinfo.ZoneInfo(s.timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return f"timezone: unknown time zone '{s.timezone}'; allowed: IANA names such as UTC, Europe/Paris"
    if s.cron is not None:
        problem = cron_problem(s.cron)
        if problem:
            return f"cron: {problem}"
    else:
        for i, r in enumerate(s.parts()):
            problem = _recurrence_problem(r)
            if problem:
                return f"recurrences[{i}].{problem}" if s.recurrences is not None else problem
    return None


def _recurrence_problem(r: Recurrence) -> str | None:
    """Why one recurrence is invalid (``key: what was found; what is allowed``), or None."""
    if r.every is not None:
        m = _EVERY_RE.match(r.every)
        if not m:
            return (f"every: found '{r.every}'; allowed: 'N minutes' (N divides 60), 'N hours' (N divides 24) "
                    "or '1 day'")
        n, unit = int(m.group(1)), m.group(2).rstrip("s")
        limits = {"minute": 60, "hour": 24, "day": 1}
        if n < 1 or (unit == "day" and n != 1) or (unit != "day" and limits[unit] % n):
            return f"every: '{r.every}' is not a regular interval; N must divide {limits[unit]}"
        if r.at is not None and unit != "day":
            return (f"at: a time of day goes with 'every: 1 day' only; found every: '{r.every}'; allowed: "
                    "'every: 1 day' with 'at', or 'at' alone (with 'days')")
    if r.at is not None:
        for t in [r.at] if isinstance(r.at, str) else r.at:
            if not _AT_RE.match(t):
                return f"at: found '{t}'; allowed: times as 'HH:MM' (24-hour)"
    return None


def to_cron(s: Schedule) -> str | list[str]:
    """The cron string(s) of a valid schedule: ``every: 15 minutes`` -> ``*/15 * * * *``,
    ``at: "09:00", days: [mon, wed]`` -> ``0 9 * * 1,3``, ``{every: 1 day, at: "06:30"}`` -> ``30 6 * * *``;
    several times or recurrences give one cron each (duplicates once), which Dagster's ``cron_schedule``
    takes as a list."""
    if s.cron is not None:
        return s.cron
    crons = list(dict.fromkeys(c for r in s.parts() for c in _recurrence_crons(r)))
    return crons[0] if len(crons) == 1 else crons


def _recurrence_crons(r: Recurrence) -> list[str]:
    times = [r.at] if isinstance(r.at, str) else list(r.at or [])
    if r.every is not None:
        m = _EVERY_RE.match(r.every)
        assert m, f"to_cron of an invalid schedule: every: {r.every!r}"
        n, unit = int(m.group(1)), m.group(2).rstrip("s")
        if unit == "minute":
            return [f"*/{n} * * * *" if n > 1 else "* * * * *"]
        if unit == "hour":
            return [f"0 */{n} * * *" if n > 1 else "0 * * * *"]
        times = times or ["00:00"]  # every 1 day: at midnight unless a time is given
    days = ",".join(str(_DAY_NUM[d]) for d in r.days) if r.days else "*"
    return [f"{int(t[3:5])} {int(t[0:2])} * * {days}" for t in times]


def describe(s: Schedule) -> str:
    """A readable summary, e.g. 'every 15 minutes, UTC', 'at 09:00 on mon, wed, Europe/Paris' or
    'at 09:00 on mon, wed; at 20:00 on sat, sun, Europe/Paris'."""
    if s.cron is not None:
        what = f"cron '{s.cron}'"
    else:
        what = "; ".join(_describe_recurrence(r) for r in s.parts())
    return f"{what}, {s.timezone}"


def _describe_recurrence(r: Recurrence) -> str:
    times = ", ".join([r.at] if isinstance(r.at, str) else list(r.at or []))
    if r.every is not None:
        return f"every {r.every}" + (f" at {times}" if times else "")
    return f"at {times}" + (f" on {', '.join(r.days)}" if r.days else "")


# (name, lowest, highest, names) of the five cron fields, as Dagster's cron parser reads them.
_CRON_FIELDS: tuple[tuple[str, int, int, tuple[str, ...]], ...] = (
    ("minute", 0, 59, ()),
    ("hour", 0, 23, ()),
    ("day", 1, 31, ()),
    ("month", 1, 12, ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")),
    ("weekday", 0, 7, ("sun", "mon", "tue", "wed", "thu", "fri", "sat")),
)
_CRON_SYNTAX = "allowed: *, a number, a range a-b, a step */n or a-b/n, or a list of these separated by ','"


_CRON_ITEM_RE = re.compile(r"^(\*|\?|[0-9]+|[A-Za-z]{3})(?:-([0-9]+|[A-Za-z]{3}))?(?:/([0-9]+))?$")


def cron_problem(expr: str) -> str | None:
    """Why Dagster's schedules would refuse a cron expression, naming the field and its allowed range, or
    None when they accept it.

    For example ``'0 25 * * *'`` gives "hour '25' is out of range in '0 25 * * *'; allowed: 0-23".
    """
    if _plainly_valid(expr):
        return None
    # Anything else goes to Dagster's own parser, which decides what its schedules accept (L, W, #,
    # ranges that wrap ...). Imported here, on this rare path: loading a project needs no Dagster.
    from dagster._utils.schedules import is_valid_cron_string

    return None if is_valid_cron_string(expr) else _explain_cron(expr)


def _plainly_valid(expr: str) -> bool:
    """Whether ``expr`` is five fields of ``*``, numbers and month or day names, ascending ranges, steps of
    at least 1 and lists of these, each within its field's range (``?`` alone as the day or weekday),
    without a 30th or 31st that a month field could put in February: a cron every parser accepts.
    False means "not plainly": the expression may still be valid."""
    fields = expr.split()
    if len(fields) != 5:
        return False
    for (name, low, high, words), text in zip(_CRON_FIELDS, fields):
        for item in text.split(","):
            m = _CRON_ITEM_RE.match(item)
            if m is None:
                return False
            start, end, step = m.groups()
            if start == "?" and (text != "?" or name not in ("day", "weekday")):
                return False
            if start in ("*", "?"):
                if end is not None:
                    return False
                ends = []
            else:
                ends = [_cron_number(start, name, words), *([_cron_number(end, name, words)] if end else [])]
            if any(n is None or not low <= n <= high for n in ends) or ends != sorted(ends):
                return False
            if step is not None and int(step) < 1:
                return False
            if name == "day" and step is None and end is None and ends and ends[0] >= 30 and fields[3] != "*":
                return False
    return True


def _cron_number(text: str, field: str, words: tuple[str, ...]) -> int | None:
    """A cron value as a number: digits, or a month or day name (``jan`` is 1, ``sun`` is 0)."""
    if text.isdigit():
        return int(text)
    word = text.lower()
    return words.index(word) + (1 if field == "month" else 0) if word in words else None


def _explain_cron(expr: str) -> str:
    """Why a cron expression that Dagster rejects is invalid.

    Ranges are checked before syntax, so a value out of range is named even next to a field written in
    a syntax this explanation does not know (Dagster's cron parser also accepts L, W and #).
    """
    shown = _clip(expr, 80)
    fields = expr.split()
    if len(fields) != 5:
        return (f"invalid cron expression {shown!r}: found {len(fields)} field(s); "
                "allowed: five fields 'minute hour day month weekday'")
    syntax: str | None = None
    values: dict[str, set[int]] = {}
    for (name, low, high, words), text in zip(_CRON_FIELDS, fields):
        allowed = f"{low}-{high}" + (f" or {words[0]}-{words[-1]}" if words else "")
        if name == "weekday":
            allowed += " (0 and 7 are Sunday)"
        values[name] = set()
        for item in text.split(","):
            base, slash, step = item.partition("/")
            if slash and not (step.isdigit() and int(step) > 0):
                syntax = syntax or (f"{name} step '{_clip(step, 20)}' is not valid in {shown!r}; "
                                    "allowed: a whole number of at least 1 after '/'")
                continue
            if base in ("*", "?"):
                continue
            ends = base.split("-")
            for end in ends:
                word = end.lower()
                if end.isdigit():
                    number = int(end)
                elif word in words:
                    number = words.index(word) + (1 if name == "month" else 0)
                else:
                    syntax = syntax or f"{name} '{_clip(item, 20)}' is not valid in {shown!r}; {_CRON_SYNTAX}"
                    continue
                if not low <= number <= high:
                    return f"{name} '{_clip(end, 20)}' is out of range in {shown!r}; allowed: {allowed}"
                if len(ends) == 1:
                    values[name].add(number)
            if len(ends) > 2:
                syntax = syntax or f"{name} '{_clip(item, 20)}' is not valid in {shown!r}; {_CRON_SYNTAX}"
    if syntax:
        return syntax
    if values["month"] == {2} and values["day"] and values["day"] <= {30, 31}:
        return f"day {min(values['day'])} never occurs in February, in {shown!r}; allowed: 1-29 in February"
    return f"invalid cron expression {shown!r}; allowed: five fields 'minute hour day month weekday'"


def _clip(text: str, limit: int) -> str:
    """The start of a long text, so that one message stays on one line."""
    return text if len(text) <= limit else text[: limit - 3] + "..."
