"""The ``identity:`` section of a project: identity spaces, their validation and their built-in models.

An identity space (``identity.people``) unifies the records of several models into profiles::

    identity:
      people:
        sources:
          - model: crm_contacts
            identifiers: {email: email, phone: phone, customer_id: id}   # kind -> column of the model
            attributes: {first_name: fname, last_name: lname, zip: zip, ltv: ltv}  # name -> column
            updated_at: updated_at
          - {model: web_signups, identifiers: {email: email_address, anonymous_id: anon_id},
             updated_at: created_at}
        rules:                    # in priority order; a rule links two records when all its keys match
          - [customer_id]
          - [email]
          - [phone, last_name]
          - fuzzy: {first_name: 0.92, last_name: 0.92, zip: exact}
        limits: {email: 3}        # a value shared by more records than this links none
        survivorship: {email: most_recent, ltv: max}

A source names its identifiers (``identifiers``: kind -> column) and its other attributes (``attributes``:
name -> column); the same kind or name in two sources means the same thing, so ``email`` of
``crm_contacts`` and ``email`` of ``web_signups`` are compared by the rules and survive into one profile
column ``email``. A rule's keys are identifier kinds or attribute names.

The space adds two models every segment and activation can use: ``identity.<space>`` (one row per
profile: ``profile_id`` and the survived identifiers and attributes) and ``identity.<space>_graph`` (one row
per record: ``record_id``, ``source_model``, ``record_key``, ``profile_id``).

Plain Python (pydantic), no Dagster and no import of ``dinmo_dagster.config`` at module level: the
configuration loader imports this module.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlglot import exp

from dinmo_dagster.warehouses import dialect_of

__all__ = [
    "EXACT",
    "IdentitySource",
    "IdentitySpace",
    "Rule",
    "add_identity_models",
    "graph_model_name",
    "identity_model",
    "profiles_model_name",
    "space_problems",
]

EXACT = "exact"
MODEL_PREFIX = "identity."
# Columns of the profiles and graph tables that a kind or attribute name cannot take.
RESERVED = ("profile_id", "record_id", "record_key", "source_model", "source_rank", "updated_at", "n")
# Warehouses whose SQL the identity resolution is written and tested for.
SUPPORTED_WAREHOUSES = ("duckdb", "postgres", "snowflake", "bigquery", "redshift", "databricks")
# Where fuzzy rules run, and with which similarity (Redshift has neither Levenshtein nor Jaro-Winkler).
FUZZY_FUNCTIONS = {
    "duckdb": "jaro_winkler_similarity",
    "snowflake": "JAROWINKLER_SIMILARITY (0-100, divided by 100)",
    "postgres": "1 - levenshtein(a, b) / greatest(length(a), length(b)) (extension fuzzystrmatch)",
    "bigquery": "1 - EDIT_DISTANCE(a, b) / greatest(length(a), length(b))",
    "databricks": "1 - levenshtein(a, b) / greatest(length(a), length(b))",
}
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")

Strategy = Literal["most_recent", "most_frequent", "first_seen", "source_priority", "max", "min", "sum"]
STRATEGIES: tuple[str, ...] = (
    "most_recent",
    "most_frequent",
    "first_seen",
    "source_priority",
    "max",
    "min",
    "sum",
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class IdentitySource(_Strict):
    """One model whose records take part in the space."""

    model: str
    identifiers: dict[str, str]
    """identifier kind -> column of the model (``email``/``*_email``: e-mail, ``phone``/``*_phone``: phone)."""
    attributes: dict[str, str] = {}
    """attribute name -> column of the model (names, zip, ltv...)."""
    updated_at: str | None = None
    """the column telling when the record last changed (survivorship ``most_recent`` and ``first_seen``)."""


class IdentitySpace(_Strict):
    """An ``identity.<name>`` entry: sources, matching rules, limits and survivorship."""

    description: str | None = None
    sources: Annotated[list[IdentitySource], Field(min_length=1)]
    rules: Annotated[list[Any], Field(min_length=1)]
    """Each rule: a list of keys (all equal), or ``{fuzzy: {key: threshold | exact}}``; checked at load time."""
    limits: dict[str, Annotated[int, Field(ge=1)]] = {}
    survivorship: dict[str, Strategy] = {}
    phone_country: Annotated[str, Field(pattern=r"^[A-Z]{2}$")] | None = None
    """the country (ISO 3166 alpha-2) of phone numbers written without one, for E.164 normalization."""
    max_profile_size: Annotated[int, Field(ge=2)] = 1000
    """the check ``profile_size`` fails (and blocks downstream syncs) above this many records per profile."""
    max_iterations: Annotated[int, Field(ge=1, le=10_000)] = 100
    """label propagation stops with an error after this many iterations without converging."""
    incremental: bool = True
    """a run recomputes only the profiles of records added, removed or whose rule keys changed since the last
    run (a full run when there is no last run, or the configuration changed); ``false``: always a full run."""

    # -- derived views of the configuration ---------------------------------------------------------

    def identifier_kinds(self) -> list[str]:
        """Every identifier kind, in order of first appearance."""
        return list(dict.fromkeys(k for s in self.sources for k in s.identifiers))

    def attribute_names(self) -> list[str]:
        """Every attribute name, in order of first appearance (identifier kinds excluded)."""
        kinds = set(self.identifier_kinds())
        return [a for a in dict.fromkeys(a for s in self.sources for a in s.attributes) if a not in kinds]

    def columns(self) -> list[str]:
        """The profile's columns after ``profile_id``: identifier kinds, then attributes."""
        return [*self.identifier_kinds(), *self.attribute_names()]

    def parsed_rules(self) -> list[Rule]:
        """The rules as ``Rule`` objects (the configuration has been validated by ``space_problems``)."""
        out = []
        for i, raw in enumerate(self.rules):
            if isinstance(raw, list):
                out.append(Rule(i + 1, tuple(raw), ()))
            else:
                fuzzy = raw["fuzzy"]
                out.append(
                    Rule(
                        i + 1,
                        tuple(k for k, v in fuzzy.items() if v == EXACT),
                        tuple((k, float(v)) for k, v in fuzzy.items() if v != EXACT),
                    )
                )
        return out

    def rule_keys(self) -> list[str]:
        """Every key some rule compares, in order of first use."""
        return list(dict.fromkeys(k for r in self.parsed_rules() for k in r.keys))

    def strategy(self, column: str) -> str:
        """The survivorship strategy of a profile column (default ``most_recent``)."""
        return self.survivorship.get(column, "most_recent")


@dataclass(frozen=True)
class Rule:
    """A matching rule: ``exact`` keys that must be equal and ``fuzzy`` (key, threshold) pairs."""

    number: int  # 1-based priority: lower wins when a merge is attributed to a rule
    exact: tuple[str, ...]
    fuzzy: tuple[tuple[str, float], ...]

    @property
    def keys(self) -> tuple[str, ...]:
        return (*self.exact, *(k for k, _ in self.fuzzy))

    @property
    def label(self) -> str:
        """How merges name the rule: ``email``, ``phone+last_name``, ``fuzzy(first_name~0.92+zip)``."""
        if not self.fuzzy:
            return "+".join(self.exact)
        return "fuzzy(" + "+".join([*(f"{k}~{t:g}" for k, t in self.fuzzy), *self.exact]) + ")"


def profiles_model_name(space: str) -> str:
    """The built-in model of a space's profiles: ``identity.<space>``."""
    return f"{MODEL_PREFIX}{space}"


def graph_model_name(space: str) -> str:
    """The built-in model of a space's record graph: ``identity.<space>_graph``."""
    return f"{MODEL_PREFIX}{space}_graph"


def identity_model(project: Any, model: str) -> tuple[str, str] | None:
    """``(space, "profiles" | "graph")`` when ``model`` is a built-in identity model of ``project``."""
    if not model.startswith(MODEL_PREFIX):
        return None
    for space in getattr(project, "identity", {}):
        if model == profiles_model_name(space):
            return space, "profiles"
        if model == graph_model_name(space):
            return space, "graph"
    return None


def space_source(project: Any, space: IdentitySpace) -> str | None:
    """The warehouse source of a space: that of its first model (all must share it)."""
    first = project.models.get(space.sources[0].model)
    return first.source if first is not None else None


def _did_you_mean(found: str, allowed: list[str]) -> str:
    close = difflib.get_close_matches(found, allowed, n=1)
    return f"; did you mean {close[0]!r}?" if close else ";"


def space_problems(project: Any, name: str, space: IdentitySpace, file: str) -> list[str]:
    """What is wrong with ``identity.<name>`` beyond its types: unknown models, keys, strategies, warehouses.

    One line each, naming the file, the key path, what was found and what is allowed.
    """
    out: list[str] = []
    k = f"identity.{name}"
    models = sorted(m for m in project.models if not m.startswith(MODEL_PREFIX))
    warehouses: dict[str, str] = {}
    for i, src in enumerate(space.sources):
        where = f"{k}.sources[{i}]"
        m = project.models.get(src.model)
        if m is None:
            out.append(
                f"{file}: {where}.model: unknown model '{src.model}'{_did_you_mean(src.model, models)} "
                f"allowed: {', '.join(models) or '(none defined)'}"
            )
        else:
            warehouses.setdefault(m.source, src.model)
        if not src.identifiers:
            out.append(
                f"{file}: {where}.identifiers: found no identifier; allowed: at least one "
                "{kind: column}, e.g. {email: email}"
            )
        for section, names in (("identifiers", src.identifiers), ("attributes", src.attributes)):
            for key in names:
                if not _NAME_RE.match(key) or key in RESERVED:
                    out.append(
                        f"{file}: {where}.{section}.{key}: invalid name '{key}'; allowed: lowercase letters, "
                        "digits and '_', starting with a letter, other than " + ", ".join(RESERVED)
                    )
        both = set(src.identifiers) & set(src.attributes)
        for key in sorted(both):
            out.append(
                f"{file}: {where}.attributes.{key}: '{key}' is already an identifier of this source; "
                "allowed: a name given once, in identifiers or in attributes"
            )
    kinds = set(space.identifier_kinds())
    for i, src in enumerate(space.sources):
        for key in sorted(set(src.attributes) & kinds - set(src.identifiers)):
            out.append(
                f"{file}: {k}.sources[{i}].attributes.{key}: '{key}' is an identifier kind of another "
                "source; allowed: the same name under identifiers in every source"
            )
    if len(warehouses) > 1:
        listed = ", ".join(f"{m} (source '{s}')" for s, m in warehouses.items())
        out.append(
            f"{file}: {k}.sources: the models are in different sources: {listed}; allowed: models of "
            "one source (identity resolution runs inside one warehouse)"
        )
    source = next(iter(warehouses), None)
    wtype = getattr(project.sources.get(source), "type", None) if source else None
    if wtype is not None and wtype not in SUPPORTED_WAREHOUSES:
        out.append(
            f"{file}: {k}.sources: source '{source}' is a {wtype} warehouse; identity resolution runs on "
            f"{', '.join(SUPPORTED_WAREHOUSES)}"
        )
    keys = sorted({*kinds, *space.attribute_names()})
    allowed_keys = ", ".join(keys) or "(none declared)"

    def check_key(path: str, key: Any) -> None:
        if not isinstance(key, str) or key not in keys:
            out.append(
                f"{file}: {path}: unknown identifier or attribute {key!r}"
                f"{_did_you_mean(key, keys) if isinstance(key, str) else ';'} allowed: {allowed_keys}"
            )

    for i, rule in enumerate(space.rules):
        path = f"{k}.rules[{i}]"
        if isinstance(rule, list):
            if not rule:
                out.append(f"{file}: {path}: found an empty rule; allowed: a list of keys, e.g. [email]")
            for j, key in enumerate(rule):
                check_key(f"{path}[{j}]", key)
            if len(set(map(str, rule))) != len(rule):
                out.append(f"{file}: {path}: a key appears twice; allowed: each key once")
            continue
        if not isinstance(rule, dict) or set(rule) != {"fuzzy"} or not isinstance(rule["fuzzy"], dict):
            out.append(
                f"{file}: {path}: found {str(rule)[:80]!r}; allowed: a list of keys ([email]) or "
                "{fuzzy: {key: threshold between 0 and 1 | exact}}"
            )
            continue
        fuzzy = rule["fuzzy"]
        for key, value in fuzzy.items():
            check_key(f"{path}.fuzzy.{key}", key)
            ok = value == EXACT or (
                isinstance(value, int | float) and not isinstance(value, bool) and 0 < value <= 1
            )
            if not ok:
                out.append(
                    f"{file}: {path}.fuzzy.{key}: found {value!r}; allowed: a similarity threshold "
                    "above 0 and at most 1 (0.92), or 'exact'"
                )
        if not any(v != EXACT for v in fuzzy.values()):
            out.append(
                f"{file}: {path}.fuzzy: found no similarity threshold; allowed: at least one key with a "
                "threshold (an all-exact rule is written as a list: [zip, last_name])"
            )
        if wtype is not None and wtype not in FUZZY_FUNCTIONS:
            out.append(
                f"{file}: {path}.fuzzy: fuzzy rules are not supported on {wtype} (source '{source}'); "
                f"allowed on: {', '.join(FUZZY_FUNCTIONS)}"
            )
    rule_keys = {
        key
        for r in space.rules
        for key in (r if isinstance(r, list) else (r.get("fuzzy") or {}) if isinstance(r, dict) else [])
    }
    for key in space.limits:
        if key not in rule_keys:
            out.append(
                f"{file}: {k}.limits.{key}: '{key}' is not used by any rule{_did_you_mean(key, sorted(rule_keys))}"
                f" allowed: {', '.join(sorted(map(str, rule_keys))) or '(none)'}"
            )
    for key, strategy in space.survivorship.items():
        if key not in keys:
            out.append(
                f"{file}: {k}.survivorship.{key}: unknown identifier or attribute '{key}'"
                f"{_did_you_mean(key, keys)} allowed: {allowed_keys}"
            )
        elif strategy == "sum" and key in kinds:
            out.append(
                f"{file}: {k}.survivorship.{key}: 'sum' adds numbers and '{key}' is an identifier; "
                "allowed for identifiers: most_recent, most_frequent, first_seen, source_priority, max, min"
            )
    return out


def _relation_sql(schema: str, table: str, dialect: str) -> str:
    return exp.select(exp.Star()).from_(exp.table_(table, db=schema)).sql(dialect=dialect)


def add_identity_models(
    project: Any, model_cls: Any, defined: dict[str, set[str]] | None = None
) -> list[str]:
    """Validate every identity space and add its built-in models to ``project.models``.

    ``identity.<space>`` reads the profiles table and ``identity.<space>_graph`` the graph table (both in
    the source's ``helper_schemas.identity``). Returns the problems (one line each); a space with problems
    adds no model. ``model_cls``: the loader's ``Model`` (the loader imports this module, not the reverse).
    """
    out: list[str] = []
    for name, space in project.identity.items():
        file = project.origins.get(f"identity.{name}", "?")
        problems = space_problems(project, name, space, file)
        out.extend(problems)
        if problems:
            continue
        source = space_source(project, space)
        if source is None or source not in project.sources:
            continue
        src = project.sources[source]
        schema = src.helper_schemas.identity
        dialect = dialect_of(src)
        described = ", ".join(s.model for s in space.sources)
        for model, table, pk, desc, cols in (
            (
                profiles_model_name(name),
                f"{name}_profiles",
                "profile_id",
                f"Profiles of identity space '{name}' (one row per person, unified from {described})",
                space.columns(),
            ),
            (
                graph_model_name(name),
                f"{name}_graph",
                "record_id",
                f"Identity graph of '{name}': each record of {described} and its profile",
                ["source_model", "record_key", "profile_id"],
            ),
        ):
            project.models[model] = model_cls.model_validate(
                {
                    "source": source,
                    "sql": _relation_sql(schema, table, dialect),
                    "primary_key": pk,
                    "description": desc,
                    "identifiers": [c for c in cols if c in space.identifier_kinds()],
                    "attributes": [c for c in cols if c not in space.identifier_kinds()],
                }
            )
            project.origins[f"models.{model}"] = file
            if defined is not None:
                defined.setdefault("models", set()).add(model)
    return out
