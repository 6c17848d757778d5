"""Identity resolution in the warehouse: normalization, candidate links, connected components, stable profile
ids, merges and golden records. Every step is SQL run by the source's warehouse; only counts leave it.

Steps of ``build_graph`` (tables in the source's ``helper_schemas.identity`` schema, ``dinmo_identity``,
each named after the space, e.g. ``people_graph``):

1. ``<space>_records``: one row per record of the source models (``record_id`` = ``<model>:<key>``), its
   identifiers normalized (below), its attributes as the model holds them, and one match key ``k__<key>``
   per key a rule compares (identifiers as normalized; attributes trimmed and lower-cased). A key value
   shared by more records than ``limits`` allows is blanked in its match key only: it links nothing, and
   still survives into profiles.
2. Candidate links (``<space>_edges``, the lower-numbered rule per pair). An exact rule links every record
   of a block (equal match keys, none NULL) to the block's first record: a star, as many links as records
   however large the block, with the same connected components as all pairs. A fuzzy rule compares pairs
   inside blocks: equal ``exact`` keys plus the same first letter of one of its fuzzy keys (one pass per
   fuzzy key, so a typo in the first letter of one name still meets its pair through the other name).
3. Connected components by label propagation: each record takes the smallest label among itself and its
   neighbours, then the label of its label (pointer jumping); one ``CREATE TABLE ... AS`` per iteration,
   until no label changes, or ``max_iterations`` is reached (an error that says so).
4. Stable profile ids. A component holding records of earlier profiles keeps the oldest of those ids
   (first created; then the smallest id); each other earlier profile in it is merged into that one and
   the merge is recorded in ``<space>_merges`` (time, rule, kept id, merged id), the rule being the
   highest-priority rule of a link between the merged profile's records and the rest of the component.
   A new component takes ``p_`` + 20 hex digits of the MD5 of its smallest record id (of the smallest
   record id and the earlier profile it split from, when an earlier profile lost records to it).
   ``<space>_ids`` remembers when each id was created; ``<space>_graph`` is replaced.

Incremental runs (``build_graph``'s default once a run has finished with the same matching configuration):
``<space>_records`` keeps per record ``key_hash``, the MD5 of its match keys; the records added, removed or
whose hash changed, the records sharing a block with their old or new keys, and every record of those
records' last profiles form the subgraph (``_incremental_subgraph``). Steps 2-4 run over it only, and its
profiles' graph rows are replaced; the others keep theirs. The result is the one a full run gives (same ids,
merges and splits). A run is full on the first run, after a change of the matching configuration (hashed into
``<space>_state``), after a run that did not finish, or with ``incremental: false``.

``build_profiles`` then writes ``<space>_profiles``: one row per profile, each column by its survivorship
strategy over the non-NULL values of the profile's records:

- ``most_recent``: the record with the latest ``updated_at`` (records without one come last); ties go to
  the source listed first, then to the smallest record id.
- ``first_seen``: the earliest ``updated_at``; same ties.
- ``source_priority``: the source listed first; within it, the latest ``updated_at``, then the smallest
  record id.
- ``most_frequent``: the value held by the most records; ties go to the value seen most recently, then
  to the smallest value.
- ``max``, ``min``, ``sum``: over the values.

Normalization, the same SQL in every warehouse:

- e-mail (a kind ``email`` or ending in ``_email``): trimmed, lower-cased; a value without ``x@y`` is NULL.
- phone (``phone`` or ``*_phone``): digits only; ``+`` kept from the start, ``00`` read as ``+``; with
  ``phone_country`` a national number (leading trunk ``0``, or no country prefix) gets the country's calling
  code (``06 12 34 56 78`` -> ``+33612345678`` with FR). Without it national numbers stay as their digits
  (they match each other, not their international form). Fewer than 6 or more than 15 digits: NULL.
- other kinds: trimmed text, empty -> NULL (case kept: ids are compared as written).

Fuzzy similarity per warehouse (a value in [0, 1] compared with the rule's threshold):

- DuckDB: ``jaro_winkler_similarity`` (https://duckdb.org/docs/sql/functions/char).
- Snowflake: ``JAROWINKLER_SIMILARITY / 100``; Snowflake returns an integer percentage
  (https://docs.snowflake.com/sql-reference/functions/jarowinkler_similarity), so a pair at 0.8956 scores 0.90.
- PostgreSQL: no Jaro-Winkler; ``1 - levenshtein(a, b) / greater length`` from the fuzzystrmatch extension
  (https://www.postgresql.org/docs/current/fuzzystrmatch.html), a trusted extension the database owner may create.
- BigQuery: ``1 - EDIT_DISTANCE(a, b) / greater length``
  (https://cloud.google.com/bigquery/docs/reference/standard-sql/string_functions#edit_distance).
- Databricks (Spark SQL): ``1 - levenshtein(a, b) / greater length``
  (https://docs.databricks.com/spark/latest/spark-sql/language-manual/functions/levenshtein.html); no
  Jaro-Winkler there.
- Redshift: neither; fuzzy rules are refused when the project loads (``spec.FUZZY_FUNCTIONS``).

Dialect differences handled here: Redshift's ``VARCHAR`` is 256 bytes (texts are cast to ``VARCHAR(65535)``)
and its ``REGEXP_REPLACE`` replaces every match, like Snowflake's, BigQuery's and Spark's (DuckDB and
PostgreSQL need the flag ``'g'``, https://docs.aws.amazon.com/redshift/latest/dg/REGEXP_REPLACE.html);
BigQuery's ``MD5`` returns bytes (sqlglot writes ``TO_HEX(MD5(...))``) and its ``DELETE`` needs a ``WHERE``;
Spark's ``ROW_NUMBER`` needs an ordered window, and Spark refuses ``IN (subquery)`` and correlated scalar
subqueries in a SELECT list (joins instead).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone

import phonenumbers
import sqlglot
from sqlglot import exp
from sqlglot.dialects.dialect import Dialect

from dinmo_dagster import delta
from dinmo_dagster.compile import model_relation
from dinmo_dagster.config import Project
from dinmo_dagster.identity.spec import IdentitySpace, Rule, space_source
from dinmo_dagster.warehouses import Warehouse

__all__ = [
    "GraphResult",
    "IdentityError",
    "build_graph",
    "build_profiles",
    "membership_check",
    "profile_sizes",
    "tables",
]

GRAPH_COLUMNS = ("record_id", "source_model", "record_key", "profile_id")


class IdentityError(Exception):
    """Identity resolution cannot run as configured; the message starts with the space's key path."""


@dataclass(frozen=True)
class Tables:
    """The tables of one identity space."""

    records: exp.Table
    edges: exp.Table
    adjacency: exp.Table
    labels: tuple[exp.Table, exp.Table]
    components: exp.Table
    owners: exp.Table
    ids_next: exp.Table
    graph: exp.Table
    profiles: exp.Table
    merges: exp.Table
    ids: exp.Table
    state: exp.Table
    previous: exp.Table
    changed: exp.Table
    seeds: exp.Table
    touched: exp.Table
    subgraph: exp.Table

    def work(self) -> list[exp.Table]:
        """The tables only a run uses (dropped at its end)."""
        return [
            self.edges,
            self.adjacency,
            *self.labels,
            self.components,
            self.owners,
            self.ids_next,
            self.previous,
            self.changed,
            self.seeds,
            self.touched,
            self.subgraph,
        ]


def tables(wh: Warehouse, project: Project, space: str) -> Tables:
    """The tables of ``space`` in its source's identity schema."""
    source = space_source(project, project.identity[space])
    schema = project.sources[source or ""].helper_schemas.identity

    def t(suffix: str) -> exp.Table:
        return wh.qualify(schema, f"{space}_{suffix}")

    return Tables(
        records=t("records"),
        edges=t("edges"),
        adjacency=t("adjacency"),
        labels=(t("labels_a"), t("labels_b")),
        components=t("components"),
        owners=t("owners"),
        ids_next=t("ids_next"),
        graph=t("graph"),
        profiles=t("profiles"),
        merges=t("merges"),
        ids=t("ids"),
        state=t("state"),
        previous=t("records_previous"),
        changed=t("changed"),
        seeds=t("seeds"),
        touched=t("touched"),
        subgraph=t("subgraph"),
    )


@dataclass
class GraphResult:
    """What one ``build_graph`` did, for the asset's metadata."""

    records: int
    profiles: int
    largest_profile: int
    links: int
    iterations: int
    merges: list[tuple[str, str, str]]  # (rule, kept id, merged id) recorded by this run
    records_per_source: dict[str, int] = field(default_factory=dict)
    new_profiles: int = 0
    mode: str = "full"  # "incremental" or "full"
    records_changed: int = 0  # records added, removed or with changed match keys since the last run
    reason: str = ""  # why the run is full, when it is


class _Sql:
    """SQL text of one warehouse: written in DuckDB's syntax with quoted names, rendered by sqlglot."""

    def __init__(self, wh: Warehouse) -> None:
        self.wh = wh
        self.dialect = wh.dialect

    def name(self, column: str) -> str:
        """A column we create: quoted, in the warehouse's case for unquoted names (upper on Snowflake)."""
        ident = Dialect.get_or_raise(self.dialect).normalize_identifier(exp.to_identifier(column))
        return exp.to_identifier(ident.name, quoted=True).sql("duckdb")

    @staticmethod
    def quoted(column: str) -> str:
        """A column as the warehouse spells it (already resolved against the relation's columns)."""
        return exp.to_identifier(column, quoted=True).sql("duckdb")

    @staticmethod
    def table(table: exp.Table | exp.Expression) -> str:
        return table.sql("duckdb")

    @staticmethod
    def lit(value: object) -> str:
        return exp.convert(value).sql("duckdb")

    def render(self, sql: str) -> str:
        if self.dialect == "duckdb":
            return sql
        if self.dialect != "redshift":
            return sqlglot.transpile(sql, read="duckdb", write=self.dialect)[0]
        # Redshift's VARCHAR without a length is VARCHAR(256): texts are cast to its longest, 65535 bytes
        # (sqlglot would write VARCHAR(MAX), which Redshift reads the same way and PostgreSQL refuses)
        tree = sqlglot.parse_one(sql, read="duckdb")
        for node in tree.find_all(exp.DataType):
            if node.this in (exp.DataType.Type.VARCHAR, exp.DataType.Type.TEXT) and not node.expressions:
                node.replace(exp.DataType.build("VARCHAR(65535)"))
        return tree.sql(dialect="redshift")

    def digits(self, text: str) -> str:
        if self.dialect in ("duckdb", "postgres"):  # these replace the first match only, without 'g'
            return f"REGEXP_REPLACE({text}, '[^0-9]', '', 'g')"
        # Snowflake, BigQuery, Redshift and Spark replace every match (a 4th argument is a position)
        return f"REGEXP_REPLACE({text}, '[^0-9]', '')"

    def similarity(self, a: str, b: str) -> str:
        """A similarity in [0, 1] of two texts: Jaro-Winkler on DuckDB and Snowflake; elsewhere
        1 - Levenshtein distance / the longer length (PostgreSQL's ``levenshtein``, BigQuery's
        ``EDIT_DISTANCE``, Spark's and Databricks' ``levenshtein``)."""
        if self.dialect == "snowflake":
            return f"(JAROWINKLER_SIMILARITY({a}, {b}) / 100.0)"
        if self.dialect in ("postgres", "bigquery", "databricks"):
            return f"(1.0 - LEVENSHTEIN({a}, {b}) / CAST(GREATEST(LENGTH({a}), LENGTH({b}), 1) AS DOUBLE))"
        if self.dialect == "duckdb":
            return f"JARO_WINKLER_SIMILARITY({a}, {b})"
        raise IdentityError(f"fuzzy rules do not run on {self.dialect}")

    def numbered(self) -> str:
        """``ROW_NUMBER() OVER (...)`` numbering records: any order on DuckDB (no sort); Spark and others
        require an ordered window, by record id."""
        return (
            "ROW_NUMBER() OVER ()" if self.dialect == "duckdb" else "ROW_NUMBER() OVER (ORDER BY record_id)"
        )

    def timestamp(self, when: datetime) -> str:
        return f"CAST({self.lit(when.strftime('%Y-%m-%d %H:%M:%S.%f'))} AS TIMESTAMP)"


def kind_of(identifier: str) -> str:
    """How an identifier kind is normalized: ``email``, ``phone`` or ``text``."""
    for kind in ("email", "phone"):
        if identifier == kind or identifier.endswith(f"_{kind}"):
            return kind
    return "text"


def _prepared(s: _Sql, column: str, kind: str) -> dict[str, str]:
    """The expressions a kind's normalization reads more than once, computed once per record in an inner
    SELECT (``t``: trimmed text; ``l``: lower-cased; ``d``: the digits of a phone)."""
    text = f"TRIM(CAST({column} AS VARCHAR))"
    if kind == "email":
        return {"l": f"LOWER({text})"}
    if kind == "phone":
        return {"t": text, "d": s.digits(text)}
    return {"t": text}


def _normalized(kind: str, ref: dict[str, str], country: str | None) -> str:
    """The normalized identifier from its ``_prepared`` columns (``ref``: part -> column name)."""
    if kind == "email":
        low = ref["l"]
        return f"CASE WHEN {low} LIKE '%_@_%.%_' THEN {low} END"
    if kind == "phone":
        text, d = ref["t"], ref["d"]
        cc = str(phonenumbers.country_code_for_region(country)) if country else ""
        branches = [
            f"WHEN {text} LIKE '+%' THEN '+' || {d}",
            f"WHEN {d} LIKE '00%' THEN '+' || SUBSTR({d}, 3)",
        ]
        if cc:
            branches += [
                f"WHEN {d} LIKE '0%' THEN '+{cc}' || SUBSTR({d}, 2)",
                f"WHEN {d} LIKE '{cc}%' AND LENGTH({d}) >= 11 THEN '+' || {d}",
                f"ELSE '+{cc}' || {d}",
            ]
        else:
            branches.append(f"ELSE {d}")
        return f"CASE WHEN LENGTH({d}) BETWEEN 6 AND 15 THEN CASE {' '.join(branches)} END END"
    return f"NULLIF({ref['t']}, '')"


def _run_id_time() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def _exists(wh: Warehouse, table: exp.Table) -> list[str] | None:
    try:
        return wh.relation_columns(table)
    except Exception:  # noqa: BLE001 - does not exist (yet)
        return None


def _records_sql(wh: Warehouse, project: Project, name: str, space: IdentitySpace, t: Tables) -> str:
    """``CREATE TABLE <space>_records AS ...``: step 1."""
    s = _Sql(wh)
    kinds, attrs = space.identifier_kinds(), space.attribute_names()
    rule_keys = space.rule_keys()
    branches = []
    for rank, src in enumerate(space.sources):
        m = project.models[src.model]
        view = model_relation(wh, project, src.model)
        cols = _exists(wh, view)
        if cols is None:
            raise IdentityError(
                f"identity.{name}.sources[{rank}]: the view of model '{src.model}' "
                f"({view.sql(wh.dialect)}) does not exist; materialize models/{src.model} first"
            )

        def column(c: str, key: str, cols: list[str] = cols, rank: int = rank, model: str = src.model) -> str:
            found = delta.resolve_column(c, cols)
            if found not in cols:
                raise IdentityError(
                    f"identity.{name}.sources[{rank}].{key}: model '{model}' has no column "
                    f"'{c}'; columns: {', '.join(cols)}"
                )
            return s.quoted(found)

        pk = column(m.primary_key, "model primary_key")
        select = [
            f"{s.lit(src.model + ':')} || CAST({pk} AS VARCHAR) AS record_id",
            f"{s.lit(src.model)} AS source_model",
            f"CAST({pk} AS VARCHAR) AS record_key",
            f"{rank} AS source_rank",
            (
                f"CAST({column(src.updated_at, 'updated_at')} AS TIMESTAMP)"
                if src.updated_at
                else "CAST(NULL AS TIMESTAMP)"
            )
            + " AS updated_at",
        ]
        inner = []  # each normalization's parts, computed once per record
        for i, k in enumerate(kinds):
            if k not in src.identifiers:
                select.append(f"CAST(NULL AS VARCHAR) AS {s.name(k)}")
                continue
            parts = _prepared(s, column(src.identifiers[k], f"identifiers.{k}"), kind_of(k))
            ref = {part: s.quoted(f"__dinmo_{part}{i}") for part in parts}
            inner += [f"{expr} AS {ref[part]}" for part, expr in parts.items()]
            select.append(f"{_normalized(kind_of(k), ref, space.phone_country)} AS {s.name(k)}")
        for a in attrs:
            value = column(src.attributes[a], f"attributes.{a}") if a in src.attributes else "NULL"
            select.append(f"{value} AS {s.name(a)}")
        extra = "".join(f", {x}" for x in inner)
        branches.append(
            f"SELECT {', '.join(select)} FROM (SELECT *{extra} FROM {s.table(view)} WHERE {pk} IS NOT NULL) AS src"
        )
    plain = [
        "record_id",
        "source_model",
        "record_key",
        "source_rank",
        "updated_at",
        *map(s.name, kinds),
        *map(s.name, attrs),
    ]
    keyed, limited, over, joins = [], [], [], []
    for i, k in enumerate(rule_keys):
        key = s.name(f"k__{k}")
        value = s.name(k) if k in kinds else f"NULLIF(LOWER(TRIM(CAST({s.name(k)} AS VARCHAR))), '')"
        keyed.append(f"{value} AS {key}")
        if k in space.limits:  # the values above the limit, by a hash aggregate (no window sort)
            over.append(
                f"o{i} AS (SELECT {key} AS v FROM k WHERE {key} IS NOT NULL GROUP BY {key} "
                f"HAVING COUNT(*) > {int(space.limits[k])})"
            )
            joins.append(f"LEFT JOIN o{i} ON o{i}.v = k.{key}")
            limited.append(f"CASE WHEN o{i}.v IS NULL THEN k.{key} END AS {key}")
        else:
            limited.append(f"k.{key}")
    # n: a record's number for the links and labels (any unique number: ids come from record ids).
    # key_hash: the MD5 of the record's match keys (limits applied), each written as its length, ':' and
    # its value, or '-' when NULL (unambiguous): an incremental run compares it with the last run's.
    hashed = " || ".join(
        f"COALESCE(CAST(LENGTH(x.{s.name(f'k__{k}')}) AS VARCHAR) || ':' || x.{s.name(f'k__{k}')}, '-') || '|'"
        for k in rule_keys
    )
    return s.render(
        f"CREATE TABLE {s.table(t.records)} AS SELECT x.*, MD5({hashed}) AS key_hash FROM ("
        f"WITH u AS ({' UNION ALL '.join(branches)}), "
        f"d AS (SELECT u.*, ROW_NUMBER() OVER (PARTITION BY record_id ORDER BY updated_at DESC NULLS LAST, "
        f"source_rank) AS dup FROM u), "
        f"k AS (SELECT {', '.join(plain)}{''.join(', ' + x for x in keyed)} FROM d WHERE dup = 1)"
        f"{''.join(', ' + x for x in over)} "
        f"SELECT {s.numbered()} AS n, {', '.join('k.' + c for c in plain)}"
        f"{''.join(', ' + x for x in limited)} FROM k {' '.join(joins)}) AS x"
    )


def _rule_edges(s: _Sql, recs: str, rule: Rule) -> list[str]:
    """SELECTs of ``(a, b, rule_no)`` links of one rule between the records of ``recs``."""
    k = {key: s.name(f"k__{key}") for key in rule.keys}
    if not rule.fuzzy:
        keys = ", ".join(k[e] for e in rule.exact)
        present = " AND ".join(f"{k[e]} IS NOT NULL" for e in rule.exact)
        # each record to its block's first record, by a hash aggregate and a join (no window sort)
        on = " AND ".join(f"g.{k[e]} = r.{k[e]}" for e in rule.exact)
        return [
            (
                f"SELECT r.n AS a, g.b, {rule.number} AS rule_no FROM {recs} AS r JOIN (SELECT {keys}, MIN(n) AS b "
                f"FROM {recs} WHERE {present} GROUP BY {keys}) AS g ON {on}"
            )
        ]
    out = []
    present = " AND ".join(f"x.{k[key]} IS NOT NULL AND y.{k[key]} IS NOT NULL" for key in rule.keys)
    similar = " AND ".join(
        f"{s.similarity(f'x.{k[key]}', f'y.{k[key]}')} >= {threshold!r}" for key, threshold in rule.fuzzy
    )
    for blocking, _ in rule.fuzzy:
        on = [f"x.{k[e]} = y.{k[e]}" for e in rule.exact]
        on.append(f"LEFT(x.{k[blocking]}, 1) = LEFT(y.{k[blocking]}, 1)")
        out.append(
            f"SELECT x.n AS a, y.n AS b, {rule.number} AS rule_no FROM {recs} AS x JOIN {recs} AS y "
            f"ON {' AND '.join(on)} AND x.n < y.n WHERE {present} AND {similar}"
        )
    return out


def _ensure_fuzzy(wh: Warehouse, name: str, space: IdentitySpace) -> None:
    """PostgreSQL compares names with the ``levenshtein`` of the fuzzystrmatch extension: create it when
    missing (a trusted extension: the database owner may), or say why fuzzy rules cannot run."""
    fuzzy = [i for i, r in enumerate(space.parsed_rules()) if r.fuzzy]
    if wh.dialect != "postgres" or not fuzzy:
        return
    if wh.query("SELECT 1 FROM pg_extension WHERE extname = 'fuzzystrmatch'"):
        return
    try:
        wh.execute("CREATE EXTENSION IF NOT EXISTS fuzzystrmatch")
    except Exception as exc:  # noqa: BLE001 - the reason is in the message
        reason = str(exc).splitlines()[0]
        raise IdentityError(
            f"identity.{name}.rules[{fuzzy[0]}].fuzzy: fuzzy rules on PostgreSQL need the extension fuzzystrmatch, "
            f"which is not installed and could not be created ({reason}); ask an administrator to run "
            "CREATE EXTENSION fuzzystrmatch in this database, or remove the fuzzy rule"
        ) from None


def _drop(s: _Sql, tables: Sequence[exp.Table]) -> list[str]:
    return [delta.drop_table_sql(x, s.dialect) for x in tables]


def _replace_sql(wh: Warehouse, table: exp.Table, columns: Sequence[str], select: str) -> list[str]:
    """Statements that make ``table`` hold the rows of ``select`` (whose columns are ``columns``).

    An existing table with the same columns is emptied and refilled in the same transaction, so the views
    on it (the models ``identity.*`` and the segments on them) stay valid; otherwise it is dropped (with
    those views on PostgreSQL, which the next sync re-creates) and created.
    """
    s = _Sql(wh)
    existing = _exists(wh, table)
    if existing is not None and [c.lower() for c in existing] == [c.lower() for c in columns]:
        names = ", ".join(s.name(c) for c in columns)
        return [
            s.render(f"DELETE FROM {s.table(table)} WHERE TRUE"),  # BigQuery's DELETE needs a WHERE
            s.render(f"INSERT INTO {s.table(table)} ({names}) {select}"),
        ]
    drop = delta.drop_table_sql(table, wh.dialect) + (
        " CASCADE" if wh.dialect in ("postgres", "redshift") else ""
    )
    return [drop, s.render(f"CREATE TABLE {s.table(table)} AS {select}")]


def _state_tables(s: _Sql, t: Tables) -> list[str]:
    return [
        s.render(
            f"CREATE TABLE IF NOT EXISTS {s.table(t.graph)} ({s.name('record_id')} VARCHAR, "
            f"{s.name('source_model')} VARCHAR, {s.name('record_key')} VARCHAR, {s.name('profile_id')} VARCHAR)"
        ),
        s.render(
            f"CREATE TABLE IF NOT EXISTS {s.table(t.ids)} ({s.name('profile_id')} VARCHAR, "
            f"{s.name('created_at')} TIMESTAMP)"
        ),
        s.render(
            f"CREATE TABLE IF NOT EXISTS {s.table(t.merges)} ({s.name('merged_at')} TIMESTAMP, "
            f"{s.name('rule')} VARCHAR, {s.name('kept_id')} VARCHAR, {s.name('merged_id')} VARCHAR)"
        ),
        s.render(
            f"CREATE TABLE IF NOT EXISTS {s.table(t.state)} ({s.name('config_hash')} VARCHAR, "
            f"{s.name('finished_at')} TIMESTAMP)"
        ),
    ]


ENGINE_VERSION = "2"
"""Changes when the records table or the graph's meaning changes: the next run is then a full one."""


def config_hash(space: IdentitySpace) -> str:
    """The hash of a space's matching configuration (sources, rules, limits, phone country) and of the
    engine's version: an incremental run needs the last run to have used the same."""
    # what the graph depends on: not survivorship (profiles only), max_profile_size or max_iterations
    matching = space.model_dump(mode="json", include={"sources", "rules", "limits", "phone_country"})
    text = json.dumps([ENGINE_VERSION, matching], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _mode(wh: Warehouse, space: IdentitySpace, t: Tables, wanted: str) -> tuple[str, str]:
    """``("incremental" | "full", why full)``: incremental when asked and the last run left records with key
    hashes, a state row with the same configuration hash, and a graph."""
    if not space.incremental:
        return "full", "incremental: false"
    s = _Sql(wh)
    columns = _exists(wh, t.records)
    if columns is None or "key_hash" not in [c.lower() for c in columns] or _exists(wh, t.state) is None:
        return "full", "first run"
    rows = wh.query(s.render(f"SELECT config_hash FROM {s.table(t.state)}"))
    if not rows:
        return "full", "the last run did not finish"
    if rows[0][0] != wanted:
        return "full", "the configuration changed"
    return "incremental", ""


def _incremental_subgraph(wh: Warehouse, s: _Sql, t: Tables, rules: Sequence[Rule]) -> int:
    """Builds ``<space>_subgraph``: the records whose profiles an incremental run recomputes; returns the
    number of changed records.

    Changed records: added, removed, or whose key hash differs from the last run's. Touched blocks: the
    values (old and new) of each rule's blocking keys held by a changed record; seeds: the changed records
    and every record of a touched block. Touched profiles: the last run's profiles of the seeds. The
    subgraph: the seeds and every record of a touched profile. No link of the new graph joins a record of
    the subgraph to one outside it (an unchanged pair was linked last run too, so both were in one profile),
    so its components are those a full run finds, and the profiles outside it are unchanged.
    """
    recs, prev, changed = s.table(t.records), s.table(t.previous), s.table(t.changed)
    side = ", ".join(f"{{0}}.{s.name(f'k__{k}')}" for k in dict.fromkeys(k for r in rules for k in r.keys))
    # the changed records with their new keys and (when they had some) their old ones: one small table
    wh.execute(
        s.render(
            f"CREATE TABLE {changed} AS SELECT r.record_id, {side.format('r')} FROM {recs} AS r LEFT JOIN "
            f"{prev} AS p ON p.record_id = r.record_id WHERE p.record_id IS NULL OR p.key_hash <> r.key_hash "
            f"UNION ALL SELECT p.record_id, {side.format('p')} FROM {prev} AS p LEFT JOIN {recs} AS r ON "
            f"r.record_id = p.record_id WHERE r.record_id IS NULL OR p.key_hash <> r.key_hash"
        )
    )
    count = int(wh.query(s.render(f"SELECT COUNT(DISTINCT record_id) FROM {changed}"))[0][0])
    blocks = []  # the blocking keys of each exact rule and each fuzzy pass: expressions of a table alias
    for rule in rules:
        exact = [lambda a, e=e: f"{a}.{s.name('k__' + e)}" for e in rule.exact]
        if not rule.fuzzy:
            blocks.append(exact)
        for blocking, _ in rule.fuzzy:
            blocks.append([*exact, lambda a, f=blocking: f"LEFT({a}.{s.name('k__' + f)}, 1)"])
    seeds = [f"SELECT record_id FROM {changed}"]
    for keys in blocks:
        cols = ", ".join(f"{e('c')} AS b{j}" for j, e in enumerate(keys))
        present = " AND ".join(f"{e('c')} IS NOT NULL" for e in keys)
        on = " AND ".join(f"tb.b{j} = {e('r')}" for j, e in enumerate(keys))
        seeds.append(
            f"SELECT r.record_id FROM {recs} AS r JOIN (SELECT DISTINCT {cols} FROM {changed} AS c WHERE "
            f"{present}) AS tb ON {on}"
        )
    graph, seeds_t, touched_t = s.table(t.graph), s.table(t.seeds), s.table(t.touched)
    wh.execute(
        [
            s.render(
                f"CREATE TABLE {seeds_t} AS SELECT DISTINCT record_id FROM ({' UNION ALL '.join(seeds)}) AS x"
            ),
            s.render(
                f"CREATE TABLE {touched_t} AS SELECT DISTINCT g.profile_id FROM {graph} AS g JOIN {seeds_t} AS x "
                f"ON x.record_id = g.record_id"
            ),
            s.render(
                f"CREATE TABLE {s.table(t.subgraph)} AS SELECT r.* FROM {recs} AS r JOIN (SELECT DISTINCT "
                f"record_id FROM (SELECT record_id FROM {seeds_t} UNION ALL SELECT g.record_id FROM {graph} AS g "
                f"JOIN {touched_t} AS tp ON tp.profile_id = g.profile_id) AS y) AS i ON i.record_id = r.record_id"
            ),
        ]
    )
    return count


def build_graph(
    wh: Warehouse, project: Project, name: str, now: datetime | None = None, mode: str = "auto"
) -> GraphResult:
    """Steps 1-4: records, links, components, stable ids and merges; updates ``<space>_graph``.

    ``mode``: ``auto`` (incremental when the last run allows it, see ``_mode``), or ``full``. An incremental
    run recomputes the links, components and ids of the subgraph of changed records only
    (``_incremental_subgraph``) and replaces the graph rows of its profiles; the others keep their rows.
    """
    space = project.identity[name]
    s = _Sql(wh)
    t = tables(wh, project, name)
    now = now or _run_id_time()
    stamp = s.timestamp(now)
    source = space_source(project, space)
    wh.ensure_schema(project.sources[source or ""].helper_schemas.identity)
    _ensure_fuzzy(wh, name, space)
    wanted = config_hash(space)
    run_mode, reason = ("full", "asked") if mode == "full" else _mode(wh, space, t, wanted)
    wh.execute(
        [
            *_state_tables(s, t),
            *_drop(s, t.work()),
            s.render(f"DELETE FROM {s.table(t.state)} WHERE TRUE"),  # a run that fails leaves a full one next
        ]
    )
    if run_mode == "incremental":
        wh.execute(
            [
                s.render(
                    f"CREATE TABLE {s.table(t.previous)} AS SELECT record_id, key_hash, "
                    + ", ".join(s.name(f"k__{k}") for k in space.rule_keys())
                    + f" FROM {s.table(t.records)}"
                ),
                *_drop(s, [t.records]),
            ]
        )
    else:
        wh.execute(_drop(s, [t.records]))
    wh.execute(_records_sql(wh, project, name, space, t))
    rules = space.parsed_rules()
    changed = 0
    recs = s.table(t.records)
    if run_mode == "incremental":
        changed = _incremental_subgraph(wh, s, t, rules)
        recs = s.table(t.subgraph)

    links = " UNION ALL ".join(q for r in rules for q in _rule_edges(s, recs, r))
    wh.execute(
        s.render(
            f"CREATE TABLE {s.table(t.edges)} AS SELECT LEAST(a, b) AS a, GREATEST(a, b) AS b, MIN(rule_no) AS rule_no "
            f"FROM ({links}) AS e WHERE a <> b GROUP BY LEAST(a, b), GREATEST(a, b)"
        )
    )
    wh.execute(
        [
            s.render(
                f"CREATE TABLE {s.table(t.adjacency)} AS SELECT a AS n, b AS m FROM {s.table(t.edges)} "
                f"UNION ALL SELECT b AS n, a AS m FROM {s.table(t.edges)}"
            ),
            s.render(
                f"CREATE TABLE {s.table(t.labels[0])} AS SELECT n, LEAST(n, MIN(m)) AS label "
                f"FROM {s.table(t.adjacency)} GROUP BY n"
            ),
        ]
    )
    iterations = _propagate(wh, s, t, name, space.max_iterations)
    final = t.labels[iterations % 2]
    graph = s.table(t.graph)
    wh.execute(
        s.render(
            f"CREATE TABLE {s.table(t.components)} AS SELECT r.n, r.record_id, r.source_model, r.record_key, "
            f"COALESCE(l.label, r.n) AS comp FROM {recs} AS r LEFT JOIN {s.table(final)} AS l ON l.n = r.n"
        )
    )
    comps = s.table(t.components)
    # Earlier profiles per component: each belongs to the component holding most of its records; the oldest
    # of a component's earlier profiles is kept (rk = 1), the others are merged into it.
    wh.execute(
        s.render(
            f"CREATE TABLE {s.table(t.owners)} AS WITH old AS (SELECT c.comp, g.profile_id, COUNT(*) AS cnt, "
            f"MIN(c.record_id) AS min_rid FROM {comps} AS c JOIN {graph} AS g ON g.record_id = c.record_id "
            f"GROUP BY c.comp, g.profile_id), own AS (SELECT comp, profile_id, ROW_NUMBER() OVER (PARTITION BY "
            f"profile_id ORDER BY cnt DESC, min_rid) AS rn FROM old) SELECT o.comp, o.profile_id, ROW_NUMBER() "
            f"OVER (PARTITION BY o.comp ORDER BY i.created_at NULLS LAST, o.profile_id) AS rk FROM own AS o "
            f"LEFT JOIN {s.table(t.ids)} AS i ON i.profile_id = o.profile_id WHERE o.rn = 1"
        )
    )
    owners = s.table(t.owners)

    def new_id(text: str) -> str:
        return f"'p_' || LEFT(MD5({text}), 20)"

    split_seed = "CASE WHEN p.was IS NULL THEN f.min_rid ELSE f.min_rid || '|split of ' || p.was END"
    wh.execute(
        s.render(
            f"CREATE TABLE {s.table(t.ids_next)} AS WITH firsts AS (SELECT comp, MIN(record_id) AS min_rid FROM "
            f"{comps} GROUP BY comp), kept AS (SELECT comp, profile_id FROM {owners} WHERE rk = 1), prev AS ("
            f"SELECT c.comp, MIN(g.profile_id) AS was FROM {comps} AS c JOIN {graph} AS g ON g.record_id = "
            f"c.record_id GROUP BY c.comp), cand AS (SELECT f.comp, f.min_rid, k.profile_id AS kept, "
            f"{new_id(split_seed)} AS fresh "
            f"FROM firsts AS f LEFT JOIN kept AS k ON k.comp = f.comp LEFT JOIN prev AS p ON p.comp = f.comp) "
            f"SELECT cand.comp, COALESCE(cand.kept, CASE WHEN used.profile_id IS NOT NULL THEN "
            f"{new_id('cand.min_rid || ' + s.lit('|' + now.isoformat()))} ELSE cand.fresh END) AS profile_id, "
            f"cand.kept IS NULL AS is_new FROM cand LEFT JOIN (SELECT DISTINCT profile_id FROM {s.table(t.ids)}) "
            f"AS used ON used.profile_id = cand.fresh"
        )
    )
    rule_case = (
        "CASE why.rule_no " + " ".join(f"WHEN {r.number} THEN {s.lit(r.label)}" for r in rules) + " END"
    )
    edges = s.table(t.edges)
    new_rows = (
        f"SELECT c.record_id, c.source_model, c.record_key, p.profile_id FROM {comps} AS c "
        f"JOIN {s.table(t.ids_next)} AS p ON p.comp = c.comp"
    )
    if run_mode == "incremental":
        names = ", ".join(s.name(c) for c in GRAPH_COLUMNS)
        update_graph = [
            s.render(
                f"DELETE FROM {graph} WHERE profile_id IN (SELECT profile_id FROM {s.table(t.touched)})"
            ),
            s.render(f"INSERT INTO {graph} ({names}) {new_rows}"),
        ]
    else:
        update_graph = _replace_sql(wh, t.graph, GRAPH_COLUMNS, new_rows)
    wh.execute(
        [
            s.render(
                f"INSERT INTO {s.table(t.merges)} ({s.name('merged_at')}, {s.name('rule')}, {s.name('kept_id')}, "
                f"{s.name('merged_id')}) WITH o AS (SELECT c.n, g.profile_id FROM {comps} AS c JOIN {graph} AS g ON "
                f"g.record_id = c.record_id), touching AS (SELECT oa.profile_id AS pid, e.rule_no FROM {edges} AS e "
                f"JOIN o AS oa ON oa.n = e.a LEFT JOIN o AS ob ON ob.n = e.b WHERE ob.profile_id IS NULL OR "
                f"ob.profile_id <> oa.profile_id UNION ALL SELECT ob.profile_id AS pid, e.rule_no FROM {edges} AS e "
                f"JOIN o AS ob ON ob.n = e.b LEFT JOIN o AS oa ON oa.n = e.a WHERE oa.profile_id IS NULL OR "
                f"oa.profile_id <> ob.profile_id), why AS (SELECT pid, MIN(rule_no) AS rule_no FROM touching "
                f"GROUP BY pid) SELECT {stamp}, {rule_case}, k.profile_id, m.profile_id FROM {owners} AS m "
                f"JOIN {owners} AS k ON k.comp = m.comp AND k.rk = 1 LEFT JOIN why ON why.pid = m.profile_id "
                f"WHERE m.rk > 1"
            ),
            s.render(
                f"INSERT INTO {s.table(t.ids)} ({s.name('profile_id')}, {s.name('created_at')}) SELECT DISTINCT "
                f"profile_id, {stamp} FROM {s.table(t.ids_next)} WHERE is_new"
            ),
            *update_graph,
        ]
    )
    new_profiles = int(wh.query(s.render(f"SELECT COUNT(*) FROM {s.table(t.ids_next)} WHERE is_new"))[0][0])
    merges = [
        (str(r), str(k), str(m))
        for r, k, m in wh.query(
            s.render(
                f"SELECT rule, kept_id, merged_id FROM {s.table(t.merges)} WHERE merged_at = {stamp} "
                f"ORDER BY kept_id, merged_id"
            )
        )
    ]
    link_count = int(wh.query(delta.count_sql(t.edges, wh.dialect))[0][0])
    wh.execute(
        [
            *_drop(s, t.work()),
            s.render(
                f"INSERT INTO {s.table(t.state)} ({s.name('config_hash')}, {s.name('finished_at')}) "
                f"VALUES ({s.lit(wanted)}, {stamp})"
            ),
        ]
    )
    sizes = profile_sizes(wh, project, name)
    per_source = {
        str(m): int(c)
        for m, c in wh.query(
            s.render(
                f"SELECT source_model, COUNT(*) FROM {graph} GROUP BY source_model ORDER BY source_model"
            )
        )
    }
    return GraphResult(
        records=sum(per_source.values()),
        profiles=sizes[0],
        largest_profile=sizes[1],
        links=link_count,
        iterations=iterations,
        merges=merges,
        records_per_source=per_source,
        new_profiles=new_profiles,
        mode=run_mode,
        records_changed=changed,
        reason=reason,
    )


def _propagate(wh: Warehouse, s: _Sql, t: Tables, name: str, max_iterations: int) -> int:
    """Label propagation with pointer jumping until no label changes; returns the iterations run."""
    adjacency = s.table(t.adjacency)
    for i in range(max_iterations):
        src, dst = (s.table(x) for x in (t.labels[i % 2], t.labels[(i + 1) % 2]))
        wh.execute(
            [
                delta.drop_table_sql(t.labels[(i + 1) % 2], wh.dialect),
                s.render(
                    f"CREATE TABLE {dst} AS WITH st AS (SELECT l.n, LEAST(l.label, MIN(nb.label)) AS label "
                    f"FROM {src} AS l JOIN {adjacency} AS adj ON adj.n = l.n JOIN {src} AS nb ON nb.n = adj.m "
                    f"GROUP BY l.n, l.label) SELECT st.n, LEAST(st.label, j.label) AS label FROM st "
                    f"JOIN st AS j ON j.n = st.label"
                ),
            ]
        )
        changed = int(
            wh.query(
                s.render(
                    f"SELECT COUNT(*) FROM {src} AS a JOIN {dst} AS b ON a.n = b.n WHERE a.label <> b.label"
                )
            )[0][0]
        )
        if changed == 0:
            return i + 1
    raise IdentityError(
        f"identity.{name}: the profiles did not converge after {max_iterations} iterations of label propagation "
        f"(labels still changed in the last one); raise identity.{name}.max_iterations, or add limits to "
        "identifiers that chain many records together"
    )


def profile_sizes(wh: Warehouse, project: Project, name: str) -> tuple[int, int, str | None]:
    """``(profiles, records in the largest profile, its id)`` from the graph table."""
    s = _Sql(wh)
    graph = s.table(tables(wh, project, name).graph)
    rows = wh.query(
        s.render(
            f"SELECT profile_id, COUNT(*) AS size FROM {graph} GROUP BY profile_id "
            "ORDER BY size DESC, profile_id LIMIT 1"
        )
    )
    count = int(wh.query(s.render(f"SELECT COUNT(DISTINCT profile_id) FROM {graph}"))[0][0])
    return (count, int(rows[0][1]), str(rows[0][0])) if rows else (0, 0, None)


def membership_check(wh: Warehouse, project: Project, name: str) -> dict[str, int]:
    """Counts proving every record is in exactly one profile: records, graph rows, distinct record ids in the
    graph, graph rows without a profile, records missing from the graph."""
    s = _Sql(wh)
    t = tables(wh, project, name)
    recs, graph = s.table(t.records), s.table(t.graph)
    row = wh.query(
        s.render(
            f"SELECT (SELECT COUNT(*) FROM {recs}), (SELECT COUNT(*) FROM {graph}), (SELECT COUNT(DISTINCT record_id) "
            f"FROM {graph}), (SELECT COUNT(*) FROM {graph} WHERE profile_id IS NULL), (SELECT COUNT(*) FROM {recs} AS r "
            f"LEFT JOIN {graph} AS g ON g.record_id = r.record_id WHERE g.record_id IS NULL)"
        )
    )[0]
    return dict(
        zip(("records", "graph_rows", "distinct_records", "without_profile", "missing"), map(int, row))
    )


def _survivor(s: _Sql, column: str, strategy: str) -> str:
    """SELECT profile_id, v: the surviving value of ``column`` per profile (from CTE ``r``)."""
    c = s.name(column)
    order = {
        "most_recent": "updated_at DESC NULLS LAST, source_rank, record_id",
        "first_seen": "updated_at ASC NULLS LAST, source_rank, record_id",
        "source_priority": "source_rank, updated_at DESC NULLS LAST, record_id",
    }
    if strategy in order:
        return (
            f"SELECT profile_id, v FROM (SELECT profile_id, {c} AS v, ROW_NUMBER() OVER (PARTITION BY profile_id "
            f"ORDER BY {order[strategy]}) AS rk FROM r WHERE {c} IS NOT NULL) AS x WHERE rk = 1"
        )
    if strategy == "most_frequent":
        return (
            f"SELECT profile_id, v FROM (SELECT profile_id, v, ROW_NUMBER() OVER (PARTITION BY profile_id ORDER BY "
            f"cnt DESC, last DESC NULLS LAST, v) AS rk FROM (SELECT profile_id, {c} AS v, COUNT(*) AS cnt, "
            f"MAX(updated_at) AS last FROM r WHERE {c} IS NOT NULL GROUP BY profile_id, {c}) AS y) AS x "
            "WHERE rk = 1"
        )
    return f"SELECT profile_id, {strategy.upper()}({c}) AS v FROM r GROUP BY profile_id"


def _survivors_duckdb(s: _Sql, space: IdentitySpace, columns: Sequence[str], records: str) -> str:
    """The profiles by one hash aggregate on DuckDB: ``arg_min(value, rank)`` per column over the non-NULL
    values, instead of a window sort per column. ``rank``: each record's place in the order of the strategy
    (``_survivor``'s orders), numbered once by one sort of all records; an integer keeps the aggregate's
    states small (a row of the order's parts as the key made 1M records spill under a 1 GB memory limit).
    ``most_frequent`` counts values per profile first."""
    orders = {
        "most_recent": "updated_at DESC NULLS LAST, source_rank, record_id",
        "first_seen": "updated_at ASC NULLS LAST, source_rank, record_id",
        "source_priority": "source_rank, updated_at DESC NULLS LAST, record_id",
    }
    used = [k for k in orders if any(space.strategy(c) == k for c in columns)]
    ranks = "".join(f", ROW_NUMBER() OVER (ORDER BY {orders[k]}) AS rk_{k}" for k in used)
    ctes = [f"{records.removesuffix(')')}), rr AS (SELECT *{ranks} FROM r)"]
    picks, joins = [], []
    for i, c in enumerate(columns):
        strategy, col = space.strategy(c), s.name(c)
        if strategy in orders:
            picks.append(f"ARG_MIN({col}, rk_{strategy}) FILTER (WHERE {col} IS NOT NULL) AS {col}")
        elif strategy == "most_frequent":
            ctes.append(
                f"f{i} AS (SELECT profile_id, ARG_MIN(v, ROW(-cnt, last IS NULL, -COALESCE(EPOCH_US(last), 0), v)) "
                f"AS v FROM (SELECT profile_id, {col} AS v, COUNT(*) AS cnt, MAX(updated_at) AS last FROM r WHERE "
                f"{col} IS NOT NULL GROUP BY profile_id, {col}) AS y GROUP BY profile_id)"
            )
            joins.append(f"LEFT JOIN f{i} ON f{i}.profile_id = a.profile_id")
            picks.append(f"NULL AS {col}")
        else:
            picks.append(f"{strategy.upper()}({col}) AS {col}")
    outer = [
        f"f{i}.v AS {s.name(c)}" if space.strategy(c) == "most_frequent" else f"a.{s.name(c)}"
        for i, c in enumerate(columns)
    ]
    return (
        f"WITH {', '.join(ctes)}, a AS (SELECT profile_id, {', '.join(picks)} FROM rr GROUP BY profile_id) "
        f"SELECT a.profile_id, {', '.join(outer)} FROM a {' '.join(joins)}"
    )


def build_profiles(wh: Warehouse, project: Project, name: str) -> int:
    """Writes ``<space>_profiles`` by survivorship over the graph; returns the number of profiles."""
    space = project.identity[name]
    s = _Sql(wh)
    t = tables(wh, project, name)
    if _exists(wh, t.records) is None or _exists(wh, t.graph) is None:
        raise IdentityError(
            f"identity.{name}: the graph has not been built yet; materialize identity/{name}/graph first"
        )
    columns = space.columns()
    ctes = [
        (
            f"r AS (SELECT g.profile_id, x.* FROM {s.table(t.records)} AS x JOIN {s.table(t.graph)} AS g "
            "ON g.record_id = x.record_id)"
        ),
        "p AS (SELECT DISTINCT profile_id FROM r)",
    ]
    if wh.dialect == "duckdb":
        select = _survivors_duckdb(s, space, columns, ctes[0])
        wh.execute(_replace_sql(wh, t.profiles, ["profile_id", *columns], select))
        return int(wh.query(delta.count_sql(t.profiles, wh.dialect))[0][0])
    joins, picks = [], []
    for i, c in enumerate(columns):
        ctes.append(f"s{i} AS ({_survivor(s, c, space.strategy(c))})")
        joins.append(f"LEFT JOIN s{i} ON s{i}.profile_id = p.profile_id")
        picks.append(f"s{i}.v AS {s.name(c)}")
    select = (
        f"WITH {', '.join(ctes)} SELECT p.profile_id{''.join(', ' + x for x in picks)} FROM p "
        f"{' '.join(joins)}"
    )
    wh.execute(_replace_sql(wh, t.profiles, ["profile_id", *columns], select))
    return int(wh.query(delta.count_sql(t.profiles, wh.dialect))[0][0])
