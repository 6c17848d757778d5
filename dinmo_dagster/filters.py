"""No-code segment filters and calculated fields, compiled to warehouse SQL with sqlglot.

Plain Python: no Dagster imports, no connection to a warehouse. Every user value becomes a sqlglot
literal and every identifier is quoted, so nothing a user types is ever pasted into SQL text.

Filter syntax (a tree of nodes)::

    {all: [node, ...]} | {any: [node, ...]} | {not: node}
    {attribute: ltv, op: gt, value: 100}
    {segment: churn_risk, op: in | not_in}
    {relation: orders, exists: true | count: {op, value} | sum|avg|min|max: {attribute, op, value},
     where: node}

Semantics (what a marketer expects; also written in the README):

* Every condition is two-valued: a row is either in or out, never "unknown". ``not`` is the exact
  complement of its node (rows whose inner condition is NULL are *in* ``not``).
* ``neq`` / ``not_in`` / ``not_within_last`` are the complements of ``eq`` / ``in`` /
  ``within_last``: rows whose attribute is NULL match them ("country is not FR" includes customers
  with no country). ``eq``, ``in``, ``gt``..., ``contains``, ``starts_with``, ``within_last`` never
  match NULL. Use ``is_null`` / ``is_not_null`` to test for NULL.
* ``contains`` / ``starts_with`` are case-sensitive substring tests done with a position function
  (``STRPOS``/``POSITION``/``CHARINDEX``/``INSTR``/``LOCATE`` depending on the dialect), not ``LIKE``,
  so ``%`` and ``_`` in the value are literal characters. The attribute is cast to text first.
* ``within_last: "N unit"`` (units minutes, hours, days, weeks, months, years; singular accepted)
  means ``CURRENT_TIMESTAMP - N unit <= value <= CURRENT_TIMESTAMP``, evaluated by the warehouse at
  query time, so a live view stays correct. Future times are not "within the last N days". Weeks are
  7 days; months and years are calendar months.
* Relationship aggregates are correlated subqueries. ``count`` and ``sum`` over no related rows are 0
  ("count < 1" includes customers without orders); ``avg``/``min``/``max`` over no rows are NULL,
  so only ``neq``/``not_in``/``is_null``... match them.
* Validation collects every problem it can find and raises one :class:`FilterError` whose message
  has one line per problem (``FilterError.errors`` holds the lines). An unknown key names the closest
  allowed key ("did you mean 'attribute'?").
* Conditions nest at most ``MAX_FILTER_DEPTH`` (12) levels: the condition at the top is level 1, and
  each ``all``, ``any``, ``not`` and relation ``where`` adds one. Deeper filters compile to SQL that
  sqlglot cannot parse back (about 35 Python frames per ``not``), so they are refused up front.
"""

from __future__ import annotations

import collections
import datetime
import decimal
import difflib
import math
import re
from dataclasses import dataclass, field
from typing import Any, Literal

import sqlglot
from sqlglot import exp

__all__ = [
    "AGGREGATE_FUNCTIONS",
    "OPERATORS",
    "TIME_UNITS",
    "FilterError",
    "ModelInfo",
    "Relationship",
    "compile_calculated_fields",
    "compile_model_select",
    "compile_segment_filter",
    "did_you_mean",
    "filter_depth_problem",
    "model_columns",
    "validate_filter",
]

OPERATORS: tuple[str, ...] = (
    "eq",
    "neq",
    "gt",
    "gte",
    "lt",
    "lte",
    "in",
    "not_in",
    "between",
    "is_null",
    "is_not_null",
    "contains",
    "starts_with",
    "within_last",
    "not_within_last",
)
COUNT_OPERATORS: tuple[str, ...] = ("eq", "neq", "gt", "gte", "lt", "lte", "in", "not_in", "between")
RELATION_MEASURES: tuple[str, ...] = ("exists", "count", "sum", "avg", "min", "max")
AGGREGATE_FUNCTIONS: tuple[str, ...] = ("sum", "count", "avg", "min", "max")
TIME_UNITS: tuple[str, ...] = ("minutes", "hours", "days", "weeks", "months", "years")
GROUP_KEYS: tuple[str, ...] = ("all", "any", "not")
# Deeper filters compile to SQL that sqlglot's recursive parser cannot read back within Python's
# default recursion limit (a `not` costs about 35 frames to parse).
MAX_FILTER_DEPTH = 12
_TOO_DEEP = (
    f"conditions nested deeper than {MAX_FILTER_DEPTH} levels; allowed: at most {MAX_FILTER_DEPTH} "
    "levels of all, any, not and relation where"
)

_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DURATION_RE = re.compile(r"^\s*(\d+)\s+([A-Za-z]+)\s*$")
_COMPARISONS: dict[str, type[exp.Expression]] = {
    "eq": exp.EQ,
    "gt": exp.GT,
    "gte": exp.GTE,
    "lt": exp.LT,
    "lte": exp.LTE,
}
_SCALAR_TYPES = (str, int, float, decimal.Decimal, datetime.date, datetime.datetime)


@dataclass(frozen=True)
class Relationship:
    """A relationship from one model to another; ``on`` maps parent columns to child columns."""

    name: str
    model: str
    type: Literal["one_to_many", "many_to_one", "one_to_one"]
    on: dict[str, str]


@dataclass(frozen=True)
class ModelInfo:
    """What the compiler needs to know about a model's view."""

    name: str
    relation: exp.Table
    primary_key: str
    columns: tuple[str, ...]
    relationships: dict[str, Relationship] = field(default_factory=dict)
    time_column: str | None = None


class FilterError(ValueError):
    """A filter or calculated field is invalid; one line per problem: key path, found, allowed."""

    def __init__(self, errors: list[str] | str):
        self.errors = [errors] if isinstance(errors, str) else list(errors)
        super().__init__("\n".join(self.errors))


# --------------------------------------------------------------------------------------------------
# helpers


def _show(value: Any) -> str:
    """A value as a user wrote it in YAML, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_show(v)}" for k, v in value.items()) + "}"
    return str(value)


def did_you_mean(found: Any, allowed: Any) -> str:
    """``"; did you mean 'x'?"`` for the allowed name closest to ``found``, or ``""`` when none is close.

    Shared by the filter compiler and the project loader (unknown keys, sections and references).
    """
    if not isinstance(found, str):
        return ""
    close = difflib.get_close_matches(found, [a for a in allowed if isinstance(a, str)], n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _unknown_key(key: Any, allowed: Any, suffix: str = "") -> str:
    """The message for an unknown key: what was found, the closest allowed key, every allowed key."""
    hint = did_you_mean(key, allowed) or ";"
    return f"unknown key {_clip(_show(key))}{suffix}{hint} allowed: {', '.join(allowed)}"


def filter_depth_problem(filter: Any, path: str = "filter") -> str | None:
    """``"<key path>: ..."`` for the first condition nested deeper than MAX_FILTER_DEPTH levels, or None.

    Walks the tree breadth-first without recursion, so any depth is measured safely, and stops at the
    first level past the limit (aliases in YAML can make a small file a deep tree).
    """
    queue: collections.deque[tuple[Any, str, int]] = collections.deque([(filter, path, 1)])
    while queue:
        node, where, level = queue.popleft()
        if not isinstance(node, dict):
            continue
        if level > MAX_FILTER_DEPTH:
            return f"{where}: {_TOO_DEEP}"
        for kind in ("all", "any"):
            if isinstance(node.get(kind), list):
                queue.extend((child, f"{where}.{kind}[{i}]", level + 1) for i, child in enumerate(node[kind]))
        for kind in ("not", "where"):
            if kind in node:
                queue.append((node[kind], f"{where}.{kind}", level + 1))
    return None


def _clip(text: str, limit: int = 60) -> str:
    """The start of a long text, so that one message stays on one line."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _valid(names: Any) -> str:
    names = sorted(names)
    return ", ".join(names) if names else "(none)"


def _is_scalar(value: Any) -> bool:
    if isinstance(value, float) and not math.isfinite(value):
        return False
    return isinstance(value, _SCALAR_TYPES)  # bool is an int


def _is_number(value: Any) -> bool:
    return (
        isinstance(value, int | float | decimal.Decimal)
        and not isinstance(value, bool)
        and (not isinstance(value, float) or math.isfinite(value))
    )


def _col(name: str, table: str) -> exp.Column:
    # Column names are quoted (exact, as the model lists them); our table aliases are plain lowercase
    # words left unquoted, so that Snowflake's upper-casing treats declaration and use alike.
    return exp.Column(this=exp.to_identifier(name, quoted=True), table=exp.to_identifier(table))


def _aliased(relation: exp.Table, alias: str) -> exp.Table:
    table = relation.copy()
    table.set("alias", exp.TableAlias(this=exp.to_identifier(alias)))
    return table


def _and(conditions: list[exp.Expression]) -> exp.Expression:
    if not conditions:
        return exp.true()
    return exp.and_(*conditions) if len(conditions) > 1 else conditions[0]


def _paren_or(*conditions: exp.Expression) -> exp.Expression:
    return exp.Paren(this=exp.or_(*conditions))


def _parse_duration(text: Any) -> tuple[int, str] | str:
    """``"30 days"`` -> ``(30, "DAY")`` in the unit used for SQL, or an error message."""
    if not isinstance(text, str):
        return f"expected a duration '<number> <unit>' such as '30 days'; found {_show(text)}"
    match = _DURATION_RE.match(text)
    if not match:
        return f"expected a duration '<number> <unit>' such as '30 days'; found {_show(text)}"
    number, unit = int(match.group(1)), match.group(2).lower()
    plural = unit if unit.endswith("s") else unit + "s"
    if plural not in TIME_UNITS:
        return f"unknown time unit {match.group(2)!r} in {text!r}; allowed: {', '.join(TIME_UNITS)}"
    if number <= 0:
        return f"the duration must be a positive number of {plural}; found {_show(text)}"
    if plural == "weeks":
        return number * 7, "DAY"
    if plural == "years":
        return number * 12, "MONTH"
    return number, plural[:-1].upper()


def _now(dialect: str) -> exp.Expression:
    return exp.CurrentTimestamp()


def _ago(number: int, unit: str, dialect: str) -> exp.Expression:
    """``CURRENT_TIMESTAMP - INTERVAL number unit`` as the warehouse computes it at query time."""
    if dialect == "bigquery" and unit == "MONTH":
        # BigQuery cannot subtract months from a TIMESTAMP; go through DATETIME (UTC) and back.
        shifted = exp.DatetimeSub(
            this=exp.CurrentDatetime(), expression=exp.Literal.number(number), unit=exp.var(unit)
        )
        return exp.Anonymous(this="TIMESTAMP", expressions=[shifted])
    return exp.Sub(
        this=_now(dialect), expression=exp.Interval(this=exp.Literal.number(number), unit=exp.var(unit))
    )


def _lit(value: Any) -> exp.Expression:
    return exp.convert(value)


# --------------------------------------------------------------------------------------------------
# the filter compiler


class _FilterCompiler:
    """Walks a filter tree, collecting every error, and builds a sqlglot condition."""

    def __init__(
        self,
        models: dict[str, ModelInfo],
        dialect: str,
        segments: dict[str, str] | None,
        segment_relations: dict[str, exp.Table] | None,
    ):
        self.models = models
        self.dialect = dialect
        self.segments = segments
        self.segment_relations = segment_relations
        self.errors: list[str] = []
        self._aliases = 0
        self._depth = 0
        self._too_deep = False

    # -- bookkeeping

    def error(self, path: str, message: str) -> None:
        self.errors.append(f"{path}: {message}")

    def alias(self, prefix: str) -> str:
        self._aliases += 1
        return f"{prefix}{self._aliases}"

    def check_keys(self, node: dict, path: str, allowed: tuple[str, ...]) -> None:
        for key in node:
            if key not in allowed:
                self.error(f"{path}.{key}", _unknown_key(key, allowed))

    # -- nodes

    def node(self, node: Any, model: ModelInfo, alias: str, path: str) -> exp.Expression | None:
        self._depth += 1
        try:
            if self._depth > MAX_FILTER_DEPTH:
                if not self._too_deep:  # one line for the whole filter, however deep it goes
                    self._too_deep = True
                    self.error(path, _TOO_DEEP)
                return None
            return self._node(node, model, alias, path)
        finally:
            self._depth -= 1

    def _node(self, node: Any, model: ModelInfo, alias: str, path: str) -> exp.Expression | None:
        if not isinstance(node, dict) or not node:
            self.error(
                path,
                f"expected a mapping with one of all, any, not, attribute, segment, relation; "
                f"found {_show(node)}",
            )
            return None
        groups = [k for k in GROUP_KEYS if k in node]
        if groups:
            if len(node) != 1:
                self.error(
                    path,
                    f"a group takes exactly one key (all, any or not); found keys: "
                    f"{', '.join(map(str, node))}",
                )
                return None
            return self.group(groups[0], node[groups[0]], model, alias, f"{path}.{groups[0]}")
        if "attribute" in node:
            return self.attribute(node, model, alias, path)
        if "segment" in node:
            return self.segment(node, model, alias, path)
        if "relation" in node:
            return self.relation(node, model, alias, path)
        kinds = (*GROUP_KEYS, "attribute", "segment", "relation")
        hint = next((h for h in (did_you_mean(k, kinds) for k in node) if h), "")
        self.error(
            path,
            f"expected one of all, any, not, attribute, segment, relation; found keys: "
            f"{', '.join(_clip(str(k)) for k in node)}{hint}",
        )
        return None

    def group(self, kind: str, body: Any, model: ModelInfo, alias: str, path: str) -> exp.Expression | None:
        if kind == "not":
            inner = self.node(body, model, alias, path)
            if inner is None:
                return None
            # Exact complement: a row whose inner condition is NULL (unknown) belongs to `not`.
            return exp.not_(exp.Coalesce(this=inner, expressions=[exp.false()]))
        if not isinstance(body, list):
            self.error(path, f"expected a list of conditions; found {_show(body)}")
            return None
        if not body and kind == "any":
            self.error(path, "expected a non-empty list of conditions (an empty `any` matches nobody)")
            return None
        parts = [self.node(child, model, alias, f"{path}[{i}]") for i, child in enumerate(body)]
        if any(p is None for p in parts):
            return None
        if not parts:
            return exp.true()  # `all: []` is everyone
        if len(parts) == 1:
            return parts[0]
        combined = exp.and_(*parts) if kind == "all" else exp.or_(*parts)
        return exp.Paren(this=combined)

    def attribute(self, node: dict, model: ModelInfo, alias: str, path: str) -> exp.Expression | None:
        self.check_keys(node, path, ("attribute", "op", "value"))
        name = node["attribute"]
        ok = True
        related = self.related_attribute(name, model, alias) if isinstance(name, str) else None
        if related is not None:  # <relationship>.<attribute>: predictions.value.churn_probability
            return self.operator(node, path, lambda: related.copy(), OPERATORS)
        via = next((r for r in model.relationships.values() if isinstance(name, str) and name not in model.columns
                    and name.startswith(r.name + ".") and r.model in self.models), None)
        if via is not None and isinstance(name, str):
            child = self.models[via.model]
            text = (f"relationship {via.name!r} is {via.type}; an attribute path needs one_to_one or many_to_one "
                    "(use a relation condition)" if via.type == "one_to_many" else
                    f"unknown attribute {_show(name[len(via.name) + 1:])} of model {child.name!r} (through relationship "
                    f"{via.name!r}); valid: {_valid(child.columns)}")
            self.error(f"{path}.attribute", text)
            return None
        if not isinstance(name, str) or name not in model.columns:
            self.error(
                f"{path}.attribute",
                f"unknown attribute {_show(name)} of model {model.name!r}; valid: {_valid(model.columns)}",
            )
            ok = False
        condition = self.operator(node, path, lambda: _col(name, alias), OPERATORS)
        return condition if ok else None

    def related_attribute(self, name: str, model: ModelInfo, alias: str) -> exp.Expression | None:
        """``<relationship>.<attribute>`` of a one_to_one or many_to_one relationship (the relationship's name may
        hold dots: ``predictions.value.churn_probability``): the related row's value, as a scalar subquery (NULL
        without a related row). None when ``name`` is a column of the model or names no such attribute."""
        if name in model.columns or "." not in name:
            return None
        for rel in sorted(model.relationships.values(), key=lambda r: -len(r.name)):
            child = self.models.get(rel.model)
            attr = name[len(rel.name) + 1:]
            if (not name.startswith(rel.name + ".") or rel.type == "one_to_many" or child is None
                    or attr not in child.columns):
                continue
            child_alias = self.alias("r")
            on = [exp.EQ(this=_col(c, child_alias), expression=_col(pc, alias)) for pc, c in rel.on.items()]
            return exp.Subquery(this=exp.select(_col(attr, child_alias))
                                .from_(_aliased(child.relation, child_alias)).where(_and(on)).limit(1))
        return None

    def operator(
        self, node: dict, path: str, target: Any, allowed: tuple[str, ...], numbers_only: bool = False
    ) -> exp.Expression | None:
        """``{op, value}`` applied to ``target()`` (an attribute or an aggregate)."""
        op = node.get("op")
        if "op" not in node:
            self.error(f"{path}.op", f"missing operator; allowed: {', '.join(allowed)}")
            return None
        if not isinstance(op, str) or op not in allowed:
            self.error(f"{path}.op", f"unknown operator {_show(op)}; allowed: {', '.join(allowed)}")
            return None
        vpath = f"{path}.value"
        has_value = "value" in node
        value = node.get("value")
        if op in ("is_null", "is_not_null"):
            if has_value:
                self.error(vpath, f"operator {op!r} takes no value; found {_show(value)}")
                return None
            null = exp.Is(this=target(), expression=exp.null())
            return null if op == "is_null" else exp.not_(null)
        if not has_value:
            self.error(vpath, f"operator {op!r} needs a value")
            return None
        scalar_ok = _is_number if numbers_only else _is_scalar
        kind = "a number" if numbers_only else "a single value (text, number, boolean or date)"
        if op in _COMPARISONS or op == "neq":
            if not scalar_ok(value):
                hint = " (use is_null / is_not_null to test for missing values)" if value is None else ""
                self.error(vpath, f"operator {op!r} needs {kind}; found {_show(value)}{hint}")
                return None
            if op == "neq":
                col = target()
                return _paren_or(
                    exp.NEQ(this=col, expression=_lit(value)), exp.Is(this=col.copy(), expression=exp.null())
                )
            return _COMPARISONS[op](this=target(), expression=_lit(value))
        if op in ("in", "not_in"):
            if not isinstance(value, list) or not value or not all(scalar_ok(v) for v in value):
                self.error(
                    vpath,
                    f"operator {op!r} needs a non-empty list of values "
                    f"(each {kind.removeprefix('a ')}, no nulls); found {_show(value)}",
                )
                return None
            col = target()
            condition = exp.In(this=col, expressions=[_lit(v) for v in value])
            if op == "in":
                return condition
            return _paren_or(exp.not_(condition), exp.Is(this=col.copy(), expression=exp.null()))
        if op == "between":
            if not isinstance(value, list) or len(value) != 2 or not all(scalar_ok(v) for v in value):
                self.error(
                    vpath, f"operator 'between' needs a list [low, high] of two values; found {_show(value)}"
                )
                return None
            return exp.Between(this=target(), low=_lit(value[0]), high=_lit(value[1]))
        if op in ("contains", "starts_with"):
            if not isinstance(value, str) or not value:
                self.error(vpath, f"operator {op!r} needs a non-empty text value; found {_show(value)}")
                return None
            position = exp.StrPosition(this=exp.cast(target(), exp.DataType.Type.VARCHAR), substr=_lit(value))
            if op == "contains":
                return exp.GT(this=position, expression=exp.Literal.number(0))
            return exp.EQ(this=position, expression=exp.Literal.number(1))
        # within_last / not_within_last
        duration = _parse_duration(value)
        if isinstance(duration, str):
            self.error(vpath, duration)
            return None
        col = target()
        within = exp.Between(this=col, low=_ago(*duration, self.dialect), high=_now(self.dialect))
        if op == "within_last":
            return within
        return exp.not_(exp.Coalesce(this=within, expressions=[exp.false()]))

    def segment(self, node: dict, model: ModelInfo, alias: str, path: str) -> exp.Expression | None:
        self.check_keys(node, path, ("segment", "op"))
        name = node["segment"]
        op = node.get("op")
        ok = True
        if op not in ("in", "not_in"):
            self.error(
                f"{path}.op", f"unknown operator {_show(op)} for a segment condition; allowed: in, not_in"
            )
            ok = False
        relation: exp.Table | None = None
        if self.segments is not None:
            same_model = sorted(s for s, m in self.segments.items() if m == model.name)
            if not isinstance(name, str) or name not in self.segments:
                self.error(
                    f"{path}.segment",
                    f"unknown segment {_show(name)}; valid segments of model "
                    f"{model.name!r}: {_valid(same_model)}",
                )
                ok = False
            elif self.segments[name] != model.name:
                self.error(
                    f"{path}.segment",
                    f"segment {name!r} is a segment of model {self.segments[name]!r}, "
                    f"not of {model.name!r}; valid: {_valid(same_model)}",
                )
                ok = False
            else:
                relation = exp.to_table("segment_placeholder")
        if self.segment_relations is not None:
            if not isinstance(name, str) or name not in self.segment_relations:
                self.error(
                    f"{path}.segment",
                    f"unknown segment {_show(name)}; valid: {_valid(self.segment_relations)}",
                )
                ok = False
            else:
                relation = self.segment_relations[name]
        if not ok or relation is None:
            return None
        seg_alias = self.alias("s")
        key = model.primary_key
        members = exp.Exists(
            this=exp.select(exp.Literal.number(1))
            .from_(_aliased(relation, seg_alias))
            .where(exp.EQ(this=_col(key, seg_alias), expression=_col(key, alias)))
        )
        return members if op == "in" else exp.not_(members)

    def relation(self, node: dict, model: ModelInfo, alias: str, path: str) -> exp.Expression | None:
        self.check_keys(node, path, ("relation",) + RELATION_MEASURES + ("where",))
        rel_name = node["relation"]
        measures = [k for k in RELATION_MEASURES if k in node]
        rel = model.relationships.get(rel_name) if isinstance(rel_name, str) else None
        if rel is None:
            self.error(
                f"{path}.relation",
                f"unknown relationship {_show(rel_name)} of model {model.name!r}; "
                f"valid: {_valid(model.relationships)}",
            )
            return None
        child = self.models.get(rel.model)
        if child is None:
            self.error(
                f"{path}.relation",
                f"relationship {rel_name!r} points to unknown model {rel.model!r}; "
                f"valid: {_valid(self.models)}",
            )
            return None
        if len(measures) != 1:
            self.error(
                path,
                f"a relation condition takes exactly one of {', '.join(RELATION_MEASURES)}; "
                f"found {', '.join(measures) if measures else 'none'}",
            )
            return None
        child_alias = self.alias("r")
        conditions: list[exp.Expression] = [
            exp.EQ(this=_col(child_col, child_alias), expression=_col(parent_col, alias))
            for parent_col, child_col in rel.on.items()
        ]
        if "where" in node:
            where = self.node(node["where"], child, child_alias, f"{path}.where")
            if where is None:
                return None
            conditions.append(where)
        source = _aliased(child.relation, child_alias)
        measure = measures[0]
        mpath = f"{path}.{measure}"
        spec = node[measure]
        if measure == "exists":
            if not isinstance(spec, bool):
                self.error(mpath, f"expected true or false; found {_show(spec)}")
                return None
            found = exp.Exists(this=exp.select(exp.Literal.number(1)).from_(source).where(_and(conditions)))
            return found if spec else exp.not_(found)
        if not isinstance(spec, dict):
            expected = "{op, value}" if measure == "count" else "{attribute, op, value}"
            self.error(mpath, f"expected a mapping {expected}; found {_show(spec)}")
            return None
        if measure == "count":
            self.check_keys(spec, mpath, ("op", "value"))
            aggregate: exp.Expression = exp.Count(this=exp.Star())
            allowed, numbers_only = COUNT_OPERATORS, True
        else:
            self.check_keys(spec, mpath, ("attribute", "op", "value"))
            attr = spec.get("attribute")
            if not isinstance(attr, str) or attr not in child.columns:
                self.error(
                    f"{mpath}.attribute",
                    f"unknown attribute {_show(attr)} of model {child.name!r}; "
                    f"valid: {_valid(child.columns)}",
                )
                return None
            func = {"sum": exp.Sum, "avg": exp.Avg, "min": exp.Min, "max": exp.Max}[measure]
            aggregate = func(this=_col(attr, child_alias))
            allowed, numbers_only = OPERATORS, False
        value_expr: exp.Expression = exp.Subquery(
            this=exp.select(aggregate).from_(source).where(_and(conditions))
        )
        if measure in ("count", "sum"):
            # No related rows: count and sum are 0, so "count < 1" includes customers without orders.
            value_expr = exp.Coalesce(this=value_expr, expressions=[exp.Literal.number(0)])
        return self.operator(spec, mpath, lambda: value_expr.copy(), allowed, numbers_only)


def validate_filter(
    filter: dict,
    model: str,
    models: dict[str, ModelInfo],
    segments: dict[str, str],
    *,
    path: str = "filter",
) -> None:
    """Check a no-code filter against the models; raise :class:`FilterError` listing every problem.

    ``segments`` maps each segment name to its model's name (for ``{segment: x, op: in}``).
    ``path`` prefixes the key paths in messages (e.g. ``segments.shoe_fans.filter``).
    """
    compiler = _FilterCompiler(models, "duckdb", segments, None)
    root = models.get(model)
    if root is None:
        raise FilterError(f"{path}: unknown model {model!r}; valid: {_valid(models)}")
    compiler.node(filter, root, "m", path)
    if compiler.errors:
        raise FilterError(compiler.errors)


def compile_segment_filter(
    filter: dict,
    model: str,
    models: dict[str, ModelInfo],
    segment_relations: dict[str, exp.Table],
    dialect: str,
    *,
    path: str = "filter",
) -> str:
    """``SELECT * FROM <model view> AS m WHERE <filter>`` rendered for a sqlglot dialect.

    ``segment_relations`` maps segment names to their views (for segment conditions).
    Raises :class:`FilterError` like :func:`validate_filter`.
    """
    root = models.get(model)
    if root is None:
        raise FilterError(f"{path}: unknown model {model!r}; valid: {_valid(models)}")
    compiler = _FilterCompiler(models, dialect, None, segment_relations)
    condition = compiler.node(filter, root, "m", path)
    if compiler.errors or condition is None:
        raise FilterError(compiler.errors or [f"{path}: invalid filter"])
    query = exp.select(exp.Star()).from_(_aliased(root.relation, "m")).where(condition)
    return query.sql(dialect=dialect)


# --------------------------------------------------------------------------------------------------
# calculated fields and custom attributes


_CALCULATED_KEYS = {
    "aggregate": (
        "name",
        "type",
        "description",
        "relation",
        "function",
        "attribute",
        "where",
        "within_last",
        "time_attribute",
    ),
    "formula": ("name", "type", "description", "sql"),
}
_CUSTOM_KEYS = ("name", "description", "sql")
_KEY_COLUMN, _VALUE_COLUMN = "__dinmo_key", "__dinmo_value"


@dataclass
class _Field:
    name: str
    expression: exp.Expression
    layer: int


def model_columns(model: ModelInfo, calculated: list[dict], custom_attributes: list[dict]) -> tuple[str, ...]:
    """The columns of the view :func:`compile_model_select` builds (base, custom, calculated)."""
    names = [c.get("name") for c in custom_attributes] + [c.get("name") for c in calculated]
    return tuple(model.columns) + tuple(n for n in names if isinstance(n, str))


def _parse_sql(sql: Any, dialect: str, path: str, errors: list[str]) -> exp.Expression | None:
    if not isinstance(sql, str) or not sql.strip():
        errors.append(f"{path}: expected an SQL text; found {_show(sql)}")
        return None
    try:
        statements = [s for s in sqlglot.parse(sql, read=dialect) if s is not None]
    except sqlglot.errors.SqlglotError as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        errors.append(f"{path}: does not parse as {dialect} SQL: {first}")
        return None
    if len(statements) != 1:
        errors.append(f"{path}: expected one SQL expression; found {len(statements)} statements")
        return None
    return statements[0]


def _formula(
    spec: dict, available: dict[str, str], dialect: str, path: str, errors: list[str]
) -> tuple[exp.Expression, set[str]] | None:
    """Parse a formula, check it references only known columns, qualify them with ``m``."""
    tree = _parse_sql(spec.get("sql"), dialect, f"{path}.sql", errors)
    if tree is None:
        return None
    problems: list[str] = []
    if isinstance(tree, exp.Alias):
        problems.append("must be a single expression without an alias (the field's name is its alias)")
    if isinstance(tree, exp.Query | exp.DDL | exp.DML | exp.Command) or tree.find(exp.Query, exp.Subquery):
        errors.append(
            f"{path}.sql: must be an expression over the model's columns; subqueries and "
            "statements are not allowed (use an aggregate field or a custom attribute)"
        )
        return None
    if tree.find(exp.Placeholder, exp.Parameter):
        problems.append("must not contain parameters")
    for agg in tree.find_all(exp.AggFunc):
        if not agg.find_ancestor(exp.Window):
            problems.append(
                f"aggregate function {agg.sql(dialect)!r} is not allowed (use an aggregate field)"
            )
            break
    used: set[str] = set()
    lowered = {name.lower(): name for name in available}
    for column in list(tree.find_all(exp.Column)):
        if column.table:
            problems.append(f"qualified column {column.sql(dialect)!r} is not allowed; use the column name")
            continue
        if isinstance(column.this, exp.Star):
            problems.append("'*' is not allowed")
            continue
        ident = column.this
        name = ident.name
        exact = name if ident.quoted else lowered.get(name.lower(), name)
        if exact not in available:
            problems.append(f"unknown column {name!r}; valid: {_valid(available)}")
            continue
        used.add(exact)
        column.replace(_col(exact, "m"))
    if problems:
        errors.extend(f"{path}.sql: {p}" for p in problems)
        return None
    return tree, used


def compile_model_select(
    base: exp.Expression | str,
    model: ModelInfo,
    calculated: list[dict],
    custom_attributes: list[dict],
    models: dict[str, ModelInfo],
    dialect: str,
    *,
    path: str | None = None,
) -> str:
    """The SQL of a model's view: its base plus custom attributes and calculated fields.

    ``base`` is the model's table (``exp.Table``), its query (an expression or SQL text in the
    dialect). ``model.columns`` are the base columns. The result is
    ``SELECT m.*, <fields> FROM <base> AS m LEFT JOIN (<custom attribute>) AS ca_0 ON ...``; formula
    fields that use other calculated fields are computed in an outer ``SELECT m.*, ...`` layer.
    Raises :class:`FilterError` with key paths under ``path`` (default ``models.<name>``).
    """
    prefix = path or f"models.{model.name}"
    errors: list[str] = []
    if isinstance(base, str):
        parsed = _parse_sql(base, dialect, f"{prefix}.sql", errors)
        if parsed is None:
            raise FilterError(errors)
        base = parsed
    if isinstance(base, exp.Table):
        source: exp.Expression = _aliased(base, "m")
    else:
        inner = base.this if isinstance(base, exp.Subquery) else base
        source = exp.Subquery(this=inner.copy(), alias=exp.TableAlias(this=exp.to_identifier("m")))

    taken: dict[str, str] = {c: "a column of the model" for c in model.columns}
    joins: list[tuple[exp.Expression, exp.Expression]] = []
    fields: list[_Field] = []
    layers: dict[str, int] = {c: -1 for c in model.columns}  # base columns: layer -1 (in the base)

    def claim(name: Any, where: str) -> bool:
        if not isinstance(name, str) or not _NAME_RE.match(name):
            errors.append(
                f"{where}.name: expected a name of letters, digits and underscores; found {_show(name)}"
            )
            return False
        if name in taken:
            errors.append(f"{where}.name: {name!r} is already {taken[name]}")
            return False
        taken[name] = f"defined at {where}"
        return True

    for i, spec in enumerate(custom_attributes):
        where = f"{prefix}.custom_attributes[{i}]"
        if not isinstance(spec, dict):
            errors.append(f"{where}: expected a mapping {{name, sql}}; found {_show(spec)}")
            continue
        for key in spec:
            if key not in _CUSTOM_KEYS:
                errors.append(f"{where}.{key}: {_unknown_key(key, _CUSTOM_KEYS)}")
        named = claim(spec.get("name"), where)
        query = _parse_sql(spec.get("sql"), dialect, f"{where}.sql", errors)
        if query is None or not named:
            continue
        if not isinstance(query, exp.Query):
            errors.append(
                f"{where}.sql: expected a query returning (key, value) rows; found {query.key.upper()}"
            )
            continue
        selects = query.selects
        idents = [s.args["alias"].this if isinstance(s, exp.Alias) else s.this for s in selects]
        if len(selects) != 2 or not all(isinstance(i, exp.Identifier) and i.name for i in idents):
            errors.append(
                f"{where}.sql: the query must return exactly two named columns (key, value); "
                f"found {', '.join(s.sql(dialect) for s in selects)}"
            )
            continue
        alias = f"ca_{i}"
        key_col = exp.Column(this=idents[0].copy(), table=exp.to_identifier("ca"))
        value_col = exp.Column(this=idents[1].copy(), table=exp.to_identifier("ca"))
        # Several rows for a key: keep the highest value, deterministically.
        grouped = (
            exp.select(
                exp.alias_(key_col, _KEY_COLUMN, quoted=True),
                exp.alias_(exp.Max(this=value_col), _VALUE_COLUMN, quoted=True),
            )
            .from_(exp.Subquery(this=query, alias=exp.TableAlias(this=exp.to_identifier("ca"))))
            .group_by(key_col.copy())
        )
        joined = exp.Subquery(this=grouped, alias=exp.TableAlias(this=exp.to_identifier(alias)))
        on = exp.EQ(this=_col(_KEY_COLUMN, alias), expression=_col(model.primary_key, "m"))
        joins.append((joined, on))
        fields.append(_Field(spec["name"], _col(_VALUE_COLUMN, alias), 0))
        layers[spec["name"]] = 0

    formulas: list[tuple[int, str, dict]] = []
    for i, spec in enumerate(calculated):
        where = f"{prefix}.calculated_fields[{i}]"
        if not isinstance(spec, dict):
            errors.append(f"{where}: expected a mapping; found {_show(spec)}")
            continue
        kind = spec.get("type")
        if kind not in _CALCULATED_KEYS:
            errors.append(f"{where}.type: unknown type {_show(kind)}; allowed: aggregate, formula")
            claim(spec.get("name"), where)
            continue
        for key in spec:
            if key not in _CALCULATED_KEYS[kind]:
                errors.append(
                    f"{where}.{key}: {_unknown_key(key, _CALCULATED_KEYS[kind], f' for a {kind} field')}"
                )
        if not claim(spec.get("name"), where):
            continue
        if kind == "formula":
            formulas.append((i, where, spec))
            continue
        expression = _aggregate_field(spec, model, models, dialect, where, errors)
        if expression is not None:
            fields.append(_Field(spec["name"], expression, 0))
            layers[spec["name"]] = 0

    # Formulas may use base columns, custom attributes, aggregates and other formulas: each one goes
    # one SELECT layer above the fields it uses (layer 0 when it uses base columns only).
    parsed_formulas: dict[str, tuple[str, exp.Expression, set[str]]] = {}
    formula_names = {spec["name"] for _, _, spec in formulas}
    available = {name: name for name in list(layers) + list(formula_names)}
    for _, where, spec in formulas:
        result = _formula(spec, available, dialect, where, errors)
        if result is not None:
            parsed_formulas[spec["name"]] = (where, *result)
    pending = dict(parsed_formulas)
    while pending:
        progressed = False
        for name, (where, tree, used) in list(pending.items()):
            if any(u in pending or (u in formula_names and u not in layers) for u in used):
                continue
            deps = [layers[u] for u in used]
            layer = max(deps, default=-1) + 1  # base columns only: layer 0, next to the aggregates
            layers[name] = layer
            fields.append(_Field(name, tree, layer))
            del pending[name]
            progressed = True
        if not progressed:
            for name, (where, _, used) in pending.items():
                errors.append(
                    f"{where}.sql: formula {name!r} depends on itself through "
                    f"{', '.join(sorted(u for u in used if u in pending))}"
                )
            break
    # A formula that depends on a formula which failed to parse is already reported; nothing to add.

    if errors:
        raise FilterError(errors)

    star = exp.Column(this=exp.Star(), table=exp.to_identifier("m"))
    max_layer = max((f.layer for f in fields), default=0)
    query: exp.Select | None = None
    for layer in range(max_layer + 1):
        projections = [star.copy()] + [
            exp.alias_(f.expression, f.name, quoted=True) for f in fields if f.layer == layer
        ]
        if query is None:
            query = exp.select(*projections).from_(source)
            for joined, on in joins:
                query = query.join(joined, on=on, join_type="LEFT")
        else:
            query = exp.select(*projections).from_(
                exp.Subquery(this=query, alias=exp.TableAlias(this=exp.to_identifier("m")))
            )
    assert query is not None
    return query.sql(dialect=dialect)


def _aggregate_field(
    spec: dict, model: ModelInfo, models: dict[str, ModelInfo], dialect: str, where: str, errors: list[str]
) -> exp.Expression | None:
    """``(SELECT SUM(r.amount) FROM orders r WHERE r.customer_id = m.customer_id AND ...)``."""
    rel_name = spec.get("relation")
    rel = model.relationships.get(rel_name) if isinstance(rel_name, str) else None
    if rel is None:
        errors.append(
            f"{where}.relation: unknown relationship {_show(rel_name)} of model {model.name!r}; "
            f"valid: {_valid(model.relationships)}"
        )
        return None
    child = models.get(rel.model)
    if child is None:
        errors.append(
            f"{where}.relation: relationship {rel_name!r} points to unknown model {rel.model!r}; "
            f"valid: {_valid(models)}"
        )
        return None
    function = spec.get("function")
    if function not in AGGREGATE_FUNCTIONS:
        errors.append(
            f"{where}.function: unknown function {_show(function)}; allowed: {', '.join(AGGREGATE_FUNCTIONS)}"
        )
        return None
    attribute = spec.get("attribute")
    ok = True
    if function == "count":
        if "attribute" in spec:
            errors.append(
                f"{where}.attribute: 'count' counts related rows and takes no attribute; "
                f"found {_show(attribute)}"
            )
            ok = False
    elif not isinstance(attribute, str) or attribute not in child.columns:
        errors.append(
            f"{where}.attribute: unknown attribute {_show(attribute)} of model {child.name!r}; "
            f"valid: {_valid(child.columns)}"
        )
        ok = False
    alias = "r0"
    conditions: list[exp.Expression] = [
        exp.EQ(this=_col(child_col, alias), expression=_col(parent_col, "m"))
        for parent_col, child_col in rel.on.items()
    ]
    if "within_last" in spec:
        time_attribute = spec.get("time_attribute", child.time_column)
        duration = _parse_duration(spec["within_last"])
        if isinstance(duration, str):
            errors.append(f"{where}.within_last: {duration}")
            ok = False
        if time_attribute is None:
            errors.append(
                f"{where}.within_last: model {child.name!r} has no time column; set time_attribute "
                f"to one of: {_valid(child.columns)}"
            )
            ok = False
        elif not isinstance(time_attribute, str) or time_attribute not in child.columns:
            errors.append(
                f"{where}.time_attribute: unknown attribute {_show(time_attribute)} of model "
                f"{child.name!r}; valid: {_valid(child.columns)}"
            )
            ok = False
        elif not isinstance(duration, str):
            conditions.append(
                exp.Between(
                    this=_col(time_attribute, alias), low=_ago(*duration, dialect), high=_now(dialect)
                )
            )
    elif "time_attribute" in spec:
        errors.append(f"{where}.time_attribute: only meaningful with within_last")
        ok = False
    if "where" in spec:
        compiler = _FilterCompiler(models, dialect, None, {})
        condition = compiler.node(spec["where"], child, alias, f"{where}.where")
        errors.extend(compiler.errors)
        if condition is None:
            ok = False
        else:
            conditions.append(condition)
    if not ok:
        return None
    source = _aliased(child.relation, alias)
    if function == "count":
        aggregate: exp.Expression = exp.Count(this=exp.Star())
    else:
        func = {"sum": exp.Sum, "avg": exp.Avg, "min": exp.Min, "max": exp.Max}[function]
        aggregate = func(this=_col(attribute, alias))
    value: exp.Expression = exp.Subquery(this=exp.select(aggregate).from_(source).where(_and(conditions)))
    if function == "sum":
        value = exp.Coalesce(this=value, expressions=[exp.Literal.number(0)])  # no related rows: 0
    return value


def compile_calculated_fields(
    model: ModelInfo,
    calculated: list[dict],
    custom_attributes: list[dict],
    models: dict[str, ModelInfo],
    dialect: str,
    *,
    path: str | None = None,
) -> str:
    """:func:`compile_model_select` over the model's own ``relation`` as base."""
    return compile_model_select(
        model.relation, model, calculated, custom_attributes, models, dialect, path=path
    )
