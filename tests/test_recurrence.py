"""Schedule options: cron verdicts without Dagster that agree with Dagster's own parser."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

from dagster._utils.schedules import is_valid_cron_string

from dinmo_dagster.recurrence import Schedule, cron_problem, describe, schedule_problem, to_cron

_FIELDS = ((0, 59, ()), (0, 23, ()), (1, 31, ()),
           (1, 12, ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")),
           (0, 7, ("sun", "mon", "tue", "wed", "thu", "fri", "sat")))


def _usual(rng: random.Random, low: int, high: int) -> str:
    """A field as people write them: *, a number, a step, an ascending range or a list."""
    r = rng.random()
    if r < 0.4:
        return "*"
    if r < 0.6:
        return str(rng.randint(low, high))
    if r < 0.75:
        return f"*/{rng.randint(1, high)}"
    if r < 0.9:
        a = rng.randint(low, high)
        return f"{a}-{rng.randint(a, high)}"
    return ",".join(str(rng.randint(low, high)) for _ in range(3))


def _odd(rng: random.Random, low: int, high: int, words: tuple[str, ...]) -> str:
    """A field with the edges: out-of-range values, names, '?', reversed ranges, steps of 0, lists."""
    items = []
    for _ in range(rng.choice([1, 1, 2, 3])):
        r = rng.random()
        value = (lambda: rng.choice(words + tuple(w.upper() for w in words[:2])) if words and rng.random() < 0.25
                 else str(rng.randint(max(0, low - 2), high + 3)))
        base = "*" if r < 0.2 else "?" if r < 0.25 else value() if r < 0.6 else f"{value()}-{value()}"
        if rng.random() < 0.3:
            base += f"/{rng.randint(0, 70)}"
        items.append(base)
    return ",".join(items)


def test_cron_verdicts_agree_with_dagsters_parser() -> None:
    """Plain crons are judged without Dagster; every verdict is the one Dagster's schedules give."""
    rng = random.Random(20261130)
    corpus = {" ".join(_usual(rng, low, high) for low, high, _ in _FIELDS) for _ in range(3000)}
    corpus |= {" ".join(_odd(rng, *f) for f in _FIELDS) for _ in range(3000)}
    corpus |= {"0 2 * * *", "0 0 L * *", "0 0 1W * *", "0 0 * * 5#2", "0 0 30 2 *", "0 0 31 feb *", "0 0 30 * *",
               "0 9 * * mon-fri", "0 0 * * fri-mon", "0 24 * * *", "0 6 * *", "0 0 6 * * *"}
    verdicts = {e: cron_problem(e) is None for e in corpus}
    assert [e for e, ok in verdicts.items() if ok != is_valid_cron_string(e)] == []
    assert 1000 < sum(verdicts.values()) < len(corpus) - 1000  # both verdicts are well represented


def test_schedule_options_in_words_and_cron() -> None:
    weekly = Schedule(at=["08:00", "18:45"], days=["mon", "wed"], timezone="Europe/Paris")
    assert (to_cron(weekly), describe(weekly)) == (["0 8 * * 1,3", "45 18 * * 1,3"],
                                                   "at 08:00, 18:45 on mon, wed, Europe/Paris")
    assert schedule_problem(Schedule(every="7 minutes")) == \
        "every: '7 minutes' is not a regular interval; N must divide 60"
    assert schedule_problem(Schedule(cron="0 0 31 2 *")) == \
        "cron: day 31 never occurs in February, in '0 0 31 2 *'; allowed: 1-29 in February"
    assert schedule_problem(Schedule(at="9:00", timezone="Mars/Olympus")) == \
        "timezone: unknown time zone 'Mars/Olympus'; allowed: IANA names such as UTC, Europe/Paris"


def test_loading_a_scheduled_project_does_not_import_dagster(tmp_path: Path) -> None:
    (tmp_path / "dinmo.yaml").write_text("""
sources:
  wh: {type: duckdb, path: wh.duckdb}
models:
  people: {source: wh, table: raw.people, primary_key: id, materialized: true, schedule: {cron: "30 1 * * *"}}
segments:
  everyone: {model: people, sql: "select * from {{ model }}"}
destinations:
  out: {type: local, path: out}
activations:
  hourly: {segment: everyone, destination: out, file_name: a, schedule: {every: 1 hour}}
  weekly: {segment: everyone, destination: out, file_name: b, schedule: {at: "09:00", days: [mon], timezone: Europe/Paris}}
  nightly: {segment: everyone, destination: out, file_name: c, schedule: {cron: "0 2 * * mon-fri"}}
settings:
  validation_cron: "15 3 * * *"
""")
    code = ("import sys\nfrom dinmo_dagster.config import load_project\n"
            f"p = load_project({str(tmp_path)!r})\n"
            "print(sorted(p.activations), sorted(m for m in sys.modules if m.split('.')[0] == 'dagster'))\n")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "['hourly', 'nightly', 'weekly'] []"
