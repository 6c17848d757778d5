"""Identity resolution benchmark: synthetic populations with known truth, resolved in DuckDB.

    .venv/bin/python benchmarks/identity.py [--sizes 100000 1000000] [--seed 7] [--out results.json]

For each size (number of records) it generates people with one to six records across two sources, a CRM
(``crm_contacts``: customer id, e-mail, phone, names, zip) and web sign-ups (``web_signups``: anonymous id,
e-mail, sometimes the customer id, names, zip), with the noise resolution meets in practice:

- missing identifiers (e-mail on 30% of CRM records and 5% of sign-ups, phone on 40% of CRM records,
  customer id on 40% of CRM and 80% of web records);
- e-mail typos (3%), e-mails in other cases or with spaces (30%);
- one phone number in several formats (``+33 6 12 ...``, ``06.12...``, ``0033...``, ``0612...``);
- name typos (8% of first and of last names, one letter replaced), swapped first and last names (2%),
  missing first names (5%), missing zips (5%);
- households (2% of people, 4 to 6 people of one name and zip) using one family e-mail on their records.

It then resolves the population twice through the product's own code (``identity.engine``, the SQL the
``identity/people/*`` assets run), each in a child process measured by ``measure.py`` (wall time and peak
memory of the resolution alone; data generation not included):

- exact: ``[customer_id]``, ``[email]``, ``[phone]``; limits: e-mail 5 records, phone 3 (a household's
  e-mail links no one);
- fuzzy: the same plus ``fuzzy: {first_name: 0.85, last_name: 0.85, zip: exact}`` (names, within a zip) and
  ``fuzzy: {email: 0.9, zip: exact}`` (mistyped e-mails, within a zip).

and scores each against the truth: pairwise precision, recall and F1 (pairs of records put in one profile),
and the share of people fully resolved (all their records in one profile holding no one else's).
Goals: precision >= 0.99 and recall >= 0.95 with fuzzy rules; 1M records under 60 s.
The DuckDB source has the product's default settings (``memory_limit: auto``: 128 MB, raised when a statement
runs out of it); ``--memory-limit 2GB`` sets one instead.

``--changed 0.01`` then changes 1% of the records (a third removed, a third with a new e-mail, a third new
records of existing people) and resolves the changed data twice: incrementally (the graph's default after
a run) and from scratch (``mode="full"``, on a copy of the database taken before), reporting both wall times,
the records the incremental run found changed, and how many records the two graphs put in different
profiles (0: the incremental run is exact).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

RULES = {
    "exact": "[[customer_id], [email], [phone]]",
    "fuzzy": "[[customer_id], [email], [phone], {fuzzy: {first_name: 0.85, last_name: 0.85, zip: exact}}, "
    "{fuzzy: {email: 0.9, zip: exact}}]",
}

PROJECT = """
sources:
  wh: {{type: duckdb, path: {db},{memory_limit}
       helper_schemas: {{identity: identity_{mode}, segments: segments_{mode}}}}}
models:
  crm_contacts: {{source: wh, table: raw.crm, primary_key: id}}
  web_signups: {{source: wh, table: raw.web, primary_key: anon_id}}
identity:
  people:
    sources:
      - {{model: crm_contacts, identifiers: {{email: email, phone: phone, customer_id: customer_id}},
         attributes: {{first_name: first_name, last_name: last_name, zip: zip}}, updated_at: updated_at}}
      - {{model: web_signups, identifiers: {{email: email, anonymous_id: anon_id, customer_id: customer_id}},
         attributes: {{first_name: first_name, last_name: last_name, zip: zip}}, updated_at: created_at}}
    rules: {rules}
    limits: {{email: 5, phone: 3}}
    phone_country: FR
    max_profile_size: 100000
"""

SYLLABLES = [c + v for c in "bcdfghjklmnprstvz" for v in "aeiou"] + ["an", "el", "or", "is", "ar", "en"]


def _names(rng: np.random.Generator, count: int, syllables: tuple[int, int]) -> np.ndarray:
    """``count`` distinct made-up names of 2-4 syllables."""
    out: set[str] = set()
    while len(out) < count:
        k = int(rng.integers(*syllables))
        out.add("".join(rng.choice(SYLLABLES, size=k)).capitalize())
    return np.array(sorted(out))


def _zipf_choice(rng: np.random.Generator, pool: np.ndarray, size: int, a: float) -> np.ndarray:
    """Names drawn with a skewed (Zipf-like, exponent ``a``) frequency, as real names are."""
    p = 1.0 / np.arange(1, len(pool) + 1) ** a
    return pool[rng.choice(len(pool), size=size, p=p / p.sum())]


def _typo(rng: np.random.Generator, values: np.ndarray, rate: float) -> np.ndarray:
    """Replace one letter (not the first: few typos hit it) in ``rate`` of the values."""
    out = values.astype(object)
    for i in np.nonzero(rng.random(len(values)) < rate)[0]:
        v = out[i]
        if v is None or len(v) < 3:
            continue
        j = int(rng.integers(1, len(v)))
        out[i] = v[:j] + "abcdefghijklmnopqrstuvwxyz"[int(rng.integers(26))] + v[j + 1 :]
    return out


def generate(n_records: int, seed: int) -> tuple[pa.Table, pa.Table, pa.Table]:
    """(crm, web, truth): the two sources and ``record_id -> person``."""
    rng = np.random.default_rng(seed)
    per_person = np.minimum(1 + rng.poisson(1.2, size=n_records), 6)
    cum = np.cumsum(per_person)
    n_people = int(np.searchsorted(cum, n_records)) + 1
    per_person = per_person[:n_people]
    per_person[-1] -= int(cum[n_people - 1] - n_records)
    firsts_pool, lasts_pool = _names(rng, 3000, (2, 4)), _names(rng, 20000, (2, 5))
    first = _zipf_choice(rng, firsts_pool, n_people, 0.6)
    last = _zipf_choice(rng, lasts_pool, n_people, 0.6)
    zips = np.char.zfill(rng.integers(1000, 96000, size=n_people).astype(str), 5)
    people = np.arange(n_people)
    email = np.char.add(
        np.char.add(np.char.add(np.char.lower(first), "."), np.char.lower(last)),
        np.char.add(people.astype(str), "@mail.example"),
    )
    phone_digits = np.char.zfill((600000000 + people * 7 % 300000000).astype(str), 9)
    # households: 2% of people in families of 4-6 sharing one name, zip and e-mail
    family = rng.random(n_people) < 0.02
    idx = np.nonzero(family)[0]
    start = 0
    while start < len(idx):
        size = int(rng.integers(4, 7))
        members = idx[start : start + size]
        head = members[0]
        last[members], zips[members] = last[head], zips[head]
        email[members] = f"family.{str(last[head]).lower()}.{head}@mail.example"
        start += size
    # records
    person = np.repeat(people, per_person)
    n = len(person)
    is_crm = rng.random(n) < 0.55
    rec_first, rec_last = first[person].astype(object), last[person].astype(object)
    swap = rng.random(n) < 0.02
    rec_first[swap], rec_last[swap] = rec_last[swap], rec_first[swap]
    rec_first = _typo(rng, rec_first, 0.08)
    rec_last = _typo(rng, rec_last, 0.08)
    rec_first[rng.random(n) < 0.05] = None
    rec_zip = zips[person].astype(object)
    rec_zip[rng.random(n) < 0.05] = None
    rec_email = _typo(rng, email[person], 0.03)
    styled = rng.random(n) < 0.3
    rec_email[styled] = np.char.add(" ", np.char.upper(rec_email[styled].astype(str))).astype(object)
    rec_email[rng.random(n) < np.where(is_crm, 0.3, 0.05)] = (
        None  # a sign-up needs an e-mail; a CRM record not
    )
    d = phone_digits[person]
    fmt = rng.integers(0, 4, size=n)

    def pairs(x: str, sep: str) -> str:
        return sep.join([x[0], *(x[i : i + 2] for i in range(1, 9, 2))])

    formats = (
        lambda x: "+33 " + pairs(x, " "),
        lambda x: "0" + x,
        lambda x: "0033" + x,
        lambda x: "0" + pairs(x, "."),
    )
    rec_phone = np.array([formats[f](x) for f, x in zip(fmt, d, strict=True)], dtype=object)
    rec_phone[rng.random(n) < 0.4] = None
    customer = np.char.add("C", person.astype(str)).astype(object)
    has_customer = np.where(is_crm, rng.random(n) < 0.6, rng.random(n) < 0.2)
    customer[~has_customer] = None
    updated = np.datetime64("2023-01-01") + rng.integers(0, 700 * 86400, size=n).astype("timedelta64[s]")
    record_no = np.arange(n)
    crm, web = np.nonzero(is_crm)[0], np.nonzero(~is_crm)[0]
    crm_t = pa.table(
        {
            "id": record_no[crm],
            "customer_id": customer[crm],
            "email": rec_email[crm],
            "phone": rec_phone[crm],
            "first_name": rec_first[crm],
            "last_name": rec_last[crm],
            "zip": rec_zip[crm],
            "updated_at": updated[crm],
        }
    )
    web_t = pa.table(
        {
            "anon_id": np.char.add("w", record_no[web].astype(str)),
            "customer_id": customer[web],
            "email": rec_email[web],
            "first_name": rec_first[web],
            "last_name": rec_last[web],
            "zip": rec_zip[web],
            "created_at": updated[web],
        }
    )
    record_id = np.where(
        is_crm,
        np.char.add("crm_contacts:", record_no.astype(str)),
        np.char.add("web_signups:w", record_no.astype(str)),
    )
    truth = pa.table({"record_id": record_id, "person": person})
    return crm_t, web_t, truth


def load(db: Path, crm: pa.Table, web: pa.Table, truth: pa.Table) -> None:
    import duckdb

    with duckdb.connect(str(db)) as con:
        con.execute("create schema raw")
        for name, table in (("crm", crm), ("web", web), ("truth", truth)):
            con.register("src", table)
            con.execute(f"create table raw.{name} as select * from src")
            con.unregister("src")


def resolve(project_dir: str, timings_path: str, mode: str = "auto") -> None:
    """The child process: what the identity assets run (model views, graph, profiles), timed per step."""
    from dinmo_dagster.compile import refresh_model
    from dinmo_dagster.config import load_project
    from dinmo_dagster.identity.engine import build_graph, build_profiles
    from dinmo_dagster.warehouses import warehouse_from_config

    project = load_project(project_dir)
    wh = warehouse_from_config("wh", project.sources["wh"].model_dump(by_alias=True, exclude_none=True))
    steps: dict[str, float] = {}
    with wh.session():
        t0 = time.perf_counter()
        for m in ("crm_contacts", "web_signups"):
            refresh_model(wh, project, m)
        t1 = time.perf_counter()
        result = build_graph(wh, project, "people", mode=mode)
        t2 = time.perf_counter()
        build_profiles(wh, project, "people")
        t3 = time.perf_counter()
    steps = {"views_s": t1 - t0, "graph_s": t2 - t1, "profiles_s": t3 - t2}
    Path(timings_path).write_text(
        json.dumps(
            {
                **steps,
                "iterations": result.iterations,
                "links": result.links,
                "profiles": result.profiles,
                "largest": result.largest_profile,
                "graph_mode": result.mode,
                "records_changed": result.records_changed,
            }
        )
    )


def score(db: Path, mode: str) -> dict[str, float]:
    """Pairwise precision, recall, F1 and the share of people fully resolved, against raw.truth."""
    import duckdb

    with duckdb.connect() as con:
        con.execute(f"attach '{db}' as wh (read_only)")
        con.execute(
            f"create temp table j as select g.profile_id, t.person from wh.identity_{mode}.people_graph g "
            "join wh.raw.truth t on t.record_id = g.record_id"
        )
        con.execute("create temp table pc as select profile_id, count(*) as c from j group by 1")
        con.execute("create temp table tc as select person, count(*) as c from j group by 1")
        con.execute(
            "create temp table both_ as select profile_id, person, count(*) as c from j group by 1, 2"
        )
        row = con.execute("""
            select (select sum(c * (c - 1) / 2) from pc), (select sum(c * (c - 1) / 2) from tc),
                   (select sum(c * (c - 1) / 2) from both_),
                   (select count(*) from both_ b join pc on pc.profile_id = b.profile_id
                    join tc on tc.person = b.person where b.c = pc.c and b.c = tc.c),
                   (select count(*) from tc)""").fetchone()
    predicted, true, tp, full, people = (float(x or 0) for x in row)
    precision = tp / predicted if predicted else 1.0
    recall = tp / true if true else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "precision": round(precision, 4),
        "recall": round(recall, 4),
        "f1": round(f1, 4),
        "people_fully_resolved": round(full / people, 4),
        "people": int(people),
    }


def mutate(db: Path, fraction: float) -> None:
    """Changes ``fraction`` of the records: a third of it removed (CRM), a third given a new e-mail (sign-ups),
    a third added (copies of sign-ups of the same people, new ids, a day later). Deterministic (hashes)."""
    import duckdb

    crm_part, web_part = (int(fraction / 3 / share * 1_000_000) for share in (0.55, 0.45))  # of the records
    with duckdb.connect(str(db)) as con:
        con.execute(f"delete from raw.crm where hash(id::varchar || 'rm') % 1000000 < {crm_part}")
        con.execute(
            "update raw.web set email = 'moved.' || anon_id || '@mail.example' "
            f"where hash(anon_id || 'em') % 1000000 < {web_part}"
        )
        pick = f"hash(anon_id || 'add') % 1000000 < {web_part}"
        con.execute(
            "insert into raw.truth select 'web_signups:n' || w.anon_id, t.person from raw.web w join raw.truth t "
            f"on t.record_id = 'web_signups:' || w.anon_id where {pick}"
        )
        con.execute(
            "insert into raw.web select 'n' || anon_id, customer_id, email, first_name, last_name, zip, "
            f"created_at + interval 1 day from raw.web where {pick}"
        )


def _resolve_measured(work: Path, project: Path, name: str, mode: str) -> tuple[dict, dict]:
    measured, timings = work / f"{name}.json", work / f"{name}_steps.json"
    subprocess.run(
        [sys.executable, str(HERE / "measure.py"), str(measured), sys.executable, __file__, "_resolve",
         str(project), str(timings), mode],
        check=True,
    )  # fmt: skip
    m = json.loads(measured.read_text())
    if m["rc"] != 0:
        raise SystemExit(f"resolution failed ({name})")
    return m, json.loads(timings.read_text())


def _graph_differences(a: Path, b: Path, rules: str) -> int:
    """Records whose profile differs between the graphs of two databases."""
    import duckdb

    with duckdb.connect() as con:
        con.execute(f"attach '{a}' as a (read_only)")
        con.execute(f"attach '{b}' as b (read_only)")
        return int(
            con.execute(
                f"select count(*) from a.identity_{rules}.people_graph x full join b.identity_{rules}.people_graph "
                "y on x.record_id = y.record_id where x.profile_id is distinct from y.profile_id"
            ).fetchone()[0]
        )


def run(
    sizes: list[int], seed: int, memory_limit: str | None, changed: float | None
) -> list[dict[str, object]]:
    results: list[dict[str, object]] = []
    setting = f" memory_limit: {memory_limit}," if memory_limit else ""
    for size in sizes:
        work = Path(tempfile.mkdtemp(prefix="dinmo-identity-bench-"))
        try:
            db = work / "wh.duckdb"
            started = time.perf_counter()
            crm, web, truth = generate(size, seed)
            load(db, crm, web, truth)
            generated = time.perf_counter() - started
            for rules in ("exact", "fuzzy"):
                for copy, path in (("", db), ("_full", work / "full.duckdb")):
                    (work / f"{rules}{copy}").mkdir()
                    (work / f"{rules}{copy}" / "dinmo.yaml").write_text(
                        PROJECT.format(db=path, mode=rules, rules=RULES[rules], memory_limit=setting)
                    )
                m, steps = _resolve_measured(work, work / rules, rules, "auto")
                row = {
                    "records": size,
                    "mode": rules,
                    "wall_s": round(m["wall_s"], 2),
                    "peak_rss_mb": round(m["maxrss_kb"] / 1024),
                    **steps,
                    **score(db, rules),
                    "generate_s": round(generated, 1),
                    "load_avg_1m": round(os.getloadavg()[0], 2),
                }
                results.append(row)
                print(json.dumps(row), flush=True)
            if not changed:
                continue
            mutate(db, changed)
            shutil.copy(db, work / "full.duckdb")
            for rules in ("exact", "fuzzy"):
                row = {"records": size, "mode": rules, "changed_fraction": changed}
                for run_mode, project, name in (("auto", rules, "inc"), ("full", f"{rules}_full", "full")):
                    m, steps = _resolve_measured(work, work / project, f"{rules}_{name}", run_mode)
                    row |= {
                        f"{name}_wall_s": round(m["wall_s"], 2),
                        f"{name}_peak_rss_mb": round(m["maxrss_kb"] / 1024),
                        f"{name}_graph_s": round(steps["graph_s"], 2),
                        f"{name}_graph_mode": steps["graph_mode"],
                    }
                    if name == "inc":
                        row |= {"records_changed": steps["records_changed"], "inc_links": steps["links"]}
                row["records_in_other_profiles"] = _graph_differences(db, work / "full.duckdb", rules)
                row |= {f"inc_{k}": v for k, v in score(db, rules).items() if k != "people"}
                row["load_avg_1m"] = round(os.getloadavg()[0], 2)
                results.append(row)
                print(json.dumps(row), flush=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return results


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "_resolve":
        resolve(sys.argv[2], sys.argv[3], *sys.argv[4:5])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path)
    parser.add_argument(
        "--memory-limit", help="the DuckDB source's memory_limit (default: the product's, auto)"
    )
    parser.add_argument("--changed", type=float, help="then change this fraction of the records (0.01) and "
                        "compare an incremental run with a full one")  # fmt: skip
    args = parser.parse_args()
    results = run(args.sizes, args.seed, args.memory_limit, args.changed)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
