"""Project configuration: the YAML schema (pydantic models) and the loader.

A project is one YAML file (``dinmo.yaml``) or a directory of YAML files, found through
``DINMO_PROJECT_DIR`` (default: the bundled quickstart). Every error names the file, the key path,
what was found and what is allowed; unknown keys are errors.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

QUICKSTART_DIR = Path(__file__).resolve().parent.parent / "examples" / "quickstart"
NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
SECTIONS = ("sources", "models", "segments", "destinations", "activations", "settings")


class ProjectError(Exception):
    """The project configuration is invalid; ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid dinmo project:\n" + "\n".join(f"  - {p}" for p in problems))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class EnvRef(_Strict):
    """A secret read from an environment variable at run time: ``{env: NAME}``."""

    env: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]


# Fields that hold secrets: they must be given as {env: NAME}, never inline.
SECRET_FIELDS = {"password", "service_account_json", "access_token", "private_key", "private_key_passphrase"}


class HelperSchemas(_Strict):
    """Names of the helper schemas the tool creates in a source on first use."""

    segments: str = "dinmo_segments"
    stats: str = "dinmo_stats"
    delta_storage: str = "dinmo_delta_storage"
    predictions: str = "dinmo_predictions"


class _SourceBase(_Strict):
    helper_schemas: HelperSchemas = HelperSchemas()


class DuckDBSource(_SourceBase):
    type: Literal["duckdb"]
    path: str
    memory_limit: str | None = "64MB"
    preserve_insertion_order: bool = False


class PostgresSource(_SourceBase):
    type: Literal["postgres"]
    host: str
    port: int = 5432
    database: str
    user: str | EnvRef
    password: EnvRef | None = None
    schema_: str = Field("public", alias="schema")
    sslmode: str | None = None


class SnowflakeSource(_SourceBase):
    type: Literal["snowflake"]
    account: str | EnvRef
    user: str | EnvRef
    password: EnvRef | None = None
    private_key: EnvRef | None = None
    private_key_path: str | None = None
    private_key_passphrase: EnvRef | None = None
    database: str
    warehouse: str | None = None
    role: str | None = None
    schema_: str | None = Field(None, alias="schema")


class BigQuerySource(_SourceBase):
    type: Literal["bigquery"]
    project: str
    location: str | None = None
    service_account_json: EnvRef | None = None
    service_account_file: str | None = None
    dataset: str | None = None


class RedshiftSource(_SourceBase):
    type: Literal["redshift"]
    host: str
    port: int = 5439
    database: str
    user: str | EnvRef
    password: EnvRef | None = None
    schema_: str = Field("public", alias="schema")


class DatabricksSource(_SourceBase):
    type: Literal["databricks"]
    server_hostname: str
    http_path: str
    access_token: EnvRef
    catalog: str | None = None
    schema_: str | None = Field(None, alias="schema")


Source = Annotated[
    DuckDBSource | PostgresSource | SnowflakeSource | BigQuerySource | RedshiftSource | DatabricksSource,
    Field(discriminator="type"),
]


class Relationship(_Strict):
    name: str
    model: str
    type: Literal["one_to_many", "many_to_one", "one_to_one"]
    on: dict[str, str]


class CalculatedField(_Strict):
    """An aggregate over a related model, or a formula over the model's own columns."""

    name: str
    type: Literal["aggregate", "formula"]
    relation: str | None = None
    function: Literal["sum", "count", "avg", "min", "max"] | None = None
    attribute: str | None = None
    where: dict[str, Any] | None = None
    within_last: str | None = None
    time_attribute: str | None = None
    sql: str | None = None


class CustomAttribute(_Strict):
    name: str
    sql: str


class Model(_Strict):
    source: str
    kind: Literal["dimension", "fact"] = "dimension"
    class_: str | None = Field(None, alias="class")
    description: str | None = None
    table: str | None = None
    sql: str | None = None
    primary_key: str
    order_by: str | None = None
    identifiers: list[str] = []
    attributes: list[str] = []
    categorical: list[str] = []
    time_column: str | None = None
    relationships: list[Relationship] = []
    calculated_fields: list[CalculatedField] = []
    custom_attributes: list[CustomAttribute] = []
    materialized: bool = False
    schedule: Schedule | None = None
    max_duplicate_pct: Annotated[float, Field(ge=0, le=100)] = 5.0

    @model_validator(mode="after")
    def _table_or_sql(self) -> Model:
        if (self.table is None) == (self.sql is None):
            raise ValueError("give exactly one of 'table' or 'sql'")
        return self


class Segment(_Strict):
    model: str
    description: str | None = None
    sql: str | None = None
    filter: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _sql_or_filter(self) -> Segment:
        if (self.sql is None) == (self.filter is None):
            raise ValueError("give exactly one of 'sql' or 'filter'")
        return self


class GCSDestinationConfig(_Strict):
    type: Literal["gcs"]
    bucket: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")]
    project: str | None = None
    service_account_json: EnvRef | None = None
    service_account_file: str | None = None


class LocalDestinationConfig(_Strict):
    type: Literal["local"]
    path: str


DestinationConfig = Annotated[
    GCSDestinationConfig | LocalDestinationConfig, Field(discriminator="type")
]


class CsvOptions(_Strict):
    delimiter: Literal[",", ";", "|", "\t"] = ","
    header: bool = True


class JsonOptions(_Strict):
    lines: bool = False


class XmlOptions(_Strict):
    root: str = "records"
    record: str = "record"


class ParquetOptions(_Strict):
    compression: Literal["snappy", "gzip", "zstd", "none"] = "snappy"


class Schedule(_Strict):
    """DinMo's schedule options: an interval, a custom recurrence (times and days) or a cron."""

    cron: str | None = None
    every: str | None = None
    at: str | list[str] | None = None
    days: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]] | None = None
    timezone: str = "UTC"
    enabled: bool = True

    @model_validator(mode="after")
    def _one_kind(self) -> Schedule:
        kinds = [k for k in ("cron", "every", "at") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError("give exactly one of 'cron', 'every' or 'at'")
        if self.days is not None and self.at is None:
            raise ValueError("'days' goes with 'at'")
        return self


class Trigger(_Strict):
    on_source_change: bool = False
    watermark_column: str | None = None


class Activation(_Strict):
    segment: str
    destination: str
    description: str | None = None
    folder: str = ""
    file_name: str
    format: Literal["csv", "json", "xml", "parquet"] = "csv"
    csv: CsvOptions = CsvOptions()
    json_: JsonOptions = Field(JsonOptions(), alias="json")
    xml: XmlOptions = XmlOptions()
    parquet: ParquetOptions = ParquetOptions()
    compression: Literal["none", "gzip"] = "none"
    mapping: dict[str, str] | None = None
    run_type: Literal["full_only", "full_then_delta"] | None = None
    sync_mode: Literal["snapshot", "upsert", "insert", "difference"] = "snapshot"
    max_file_size_mb: Annotated[float, Field(gt=0)] | None = None
    max_removed_pct: Annotated[float, Field(ge=0, le=100)] = 50.0
    keep_snapshots: Annotated[int, Field(ge=1)] = 3
    lookback: Annotated[str, Field(pattern=r"^\s*\d+\s*(minute|hour|day)s?\s*$")] = "0 minutes"
    schedule: Schedule | None = None
    trigger: Trigger | None = None

    @property
    def effective_run_type(self) -> str:
        """``run_type`` as written, or the mode's natural default (snapshot: full_only, else full_then_delta)."""
        if self.run_type is not None:
            return self.run_type
        return "full_only" if self.sync_mode == "snapshot" else "full_then_delta"


class Settings(_Strict):
    """Project-wide settings."""

    consecutive_failures_to_pause: Annotated[int, Field(ge=1)] = 3
    validation_cron: str = "0 2 * * *"


@dataclass
class Project:
    """A loaded, validated project: the YAML sections plus where each entry came from."""

    directory: Path
    sources: dict[str, Any] = field(default_factory=dict)
    models: dict[str, Model] = field(default_factory=dict)
    segments: dict[str, Segment] = field(default_factory=dict)
    destinations: dict[str, Any] = field(default_factory=dict)
    activations: dict[str, Activation] = field(default_factory=dict)
    settings: Settings = field(default_factory=Settings)
    origins: dict[str, str] = field(default_factory=dict)  # "activations.x" -> file name

    def resolve_path(self, path: str) -> Path:
        """Relative paths in the YAML are relative to the project directory."""
        p = Path(os.path.expanduser(path))
        return p if p.is_absolute() else (self.directory / p)

    def model_of(self, activation: str) -> tuple[Segment, Model]:
        seg = self.segments[self.activations[activation].segment]
        return seg, self.models[seg.model]


Model.model_rebuild()

SECTION_MODELS: dict[str, Any] = {
    "models": Model,
    "segments": Segment,
    "activations": Activation,
}


class _Loader(yaml.SafeLoader):
    """YAML 1.2 booleans: only true/false. YAML 1.1 reads the SPEC's ``on:`` key as True."""


_Loader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:bool"]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.copy().items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def _key_path(prefix: str, parts: list[str]) -> str:
    out = prefix
    for p in parts:
        out += f"[{p}]" if p.isdigit() else f".{p}"
    return out


def project_dir_from_env() -> Path:
    """The project directory: ``DINMO_PROJECT_DIR`` or the bundled quickstart."""
    return Path(os.environ.get("DINMO_PROJECT_DIR") or QUICKSTART_DIR).resolve()


def _yaml_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise ProjectError([f"{path}: project directory does not exist"])
    files = sorted([*path.glob("*.yaml"), *path.glob("*.yml")])
    if not files:
        raise ProjectError([f"{path}: no .yaml files found"])
    return files


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _format_error(file: str, prefix: str, err: dict[str, Any], model_cls: Any) -> str:
    loc = [str(p) for p in err["loc"]]
    # Drop discriminator tags pydantic inserts ("duckdb", "function-after[...]") from the path.
    clean = [p for p in loc if not p.startswith("function-") and p not in _DISCRIMINATOR_TAGS]
    key = _key_path(prefix, clean)
    etype = err["type"]
    if etype == "extra_forbidden":
        parent = _resolve_model(model_cls, clean[:-1])
        allowed = ", ".join(sorted(_field_names(parent))) if parent else ""
        return f"{file}: {_key_path(prefix, clean[:-1])}: unknown key '{clean[-1]}'; allowed: {allowed}"
    if etype == "missing":
        return f"{file}: {key}: required key is missing"
    if etype == "union_tag_invalid":
        expected = err.get("ctx", {}).get("expected_tags", "")
        return f"{file}: {key}.type: found {_describe(err['input'].get('type'))}; allowed: {expected}"
    if etype == "union_tag_not_found":
        return f"{file}: {key}: required key 'type' is missing"
    msg = err["msg"].removeprefix("Value error, ")
    if etype in ("model_type", "dict_type"):
        return f"{file}: {key}: expected a mapping, found {_describe(err['input'])}"
    if etype in ("literal_error", "enum"):
        return f"{file}: {key}: found {_describe(err['input'])}; allowed: {msg.removeprefix('Input should be ')}"
    if etype.startswith("value_error") or etype == "assertion_error":
        return f"{file}: {key}: {msg}"
    return f"{file}: {key}: {msg}, found {_describe(err['input'])}"


_DISCRIMINATOR_TAGS = {"duckdb", "postgres", "snowflake", "bigquery", "redshift", "databricks", "gcs", "local",
                       "str", "EnvRef", "list[str]", "float", "constrained-float", "none"}


def _field_names(cls: Any) -> list[str]:
    return [f.alias or n for n, f in cls.model_fields.items()]


def _resolve_model(cls: Any, path: list[str]) -> Any:
    """Walk ``path`` through nested pydantic models to find the model that owns the last key."""
    for part in path:
        if cls is None or not hasattr(cls, "model_fields"):
            return None
        fields = {f.alias or n: f for n, f in cls.model_fields.items()}
        if part.isdigit() and cls is not None:
            continue
        if part not in fields:
            return None
        ann = fields[part].annotation
        cls = _first_model(ann)
    return cls


def _first_model(ann: Any) -> Any:
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    for arg in getattr(ann, "__args__", ()) or ():
        found = _first_model(arg)
        if found is not None:
            return found
    return None


_SOURCE_TYPES = {c.model_fields["type"].annotation.__args__[0]: c for c in
                 (DuckDBSource, PostgresSource, SnowflakeSource, BigQuerySource, RedshiftSource, DatabricksSource)}
_DEST_TYPES = {"gcs": GCSDestinationConfig, "local": LocalDestinationConfig}


def _parse_entry(section: str, name: str, raw: Any, file: str, problems: list[str]) -> Any:
    prefix = f"{section}.{name}"
    if section == "sources":
        cls = _SOURCE_TYPES.get(raw.get("type")) if isinstance(raw, dict) else None
        if cls is None:
            if isinstance(raw, dict):
                found = raw.get("type")
                problems.append(f"{file}: {prefix}.type: found {_describe(found)}; allowed: "
                                + ", ".join(_SOURCE_TYPES))
            else:
                problems.append(f"{file}: {prefix}: expected a mapping, found {_describe(raw)}")
            return None
    elif section == "destinations":
        cls = _DEST_TYPES.get(raw.get("type")) if isinstance(raw, dict) else None
        if cls is None:
            if isinstance(raw, dict):
                problems.append(f"{file}: {prefix}.type: found {_describe(raw.get('type'))}; allowed: gcs, local")
            else:
                problems.append(f"{file}: {prefix}: expected a mapping, found {_describe(raw)}")
            return None
    else:
        cls = SECTION_MODELS[section]
    if isinstance(raw, dict):
        for key in SECRET_FIELDS & set(raw):
            if isinstance(raw[key], str):
                problems.append(f"{file}: {prefix}.{key}: secrets must not be written in the YAML; "
                                f"found an inline value; allowed: {{env: VARIABLE_NAME}}")
                raw = {k: v for k, v in raw.items() if k != key}
    try:
        return cls.model_validate(raw)
    except ValidationError as exc:
        for err in exc.errors():
            problems.append(_format_error(file, prefix, err, cls))
        return None


def load_project(path: str | os.PathLike[str] | None = None) -> Project:
    """Load and validate a project (a YAML file or a directory of them). Raises ProjectError."""
    root = Path(path).resolve() if path is not None else project_dir_from_env()
    files = _yaml_files(root)
    project = Project(directory=root if root.is_dir() else root.parent)
    problems: list[str] = []
    for f in files:
        fname = f.name
        try:
            doc = yaml.load(f.read_text(encoding="utf-8"), Loader=_Loader)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problems.append(f"{fname}:{where}: malformed YAML: {getattr(exc, 'problem', None) or exc}")
            continue
        if doc is None:
            continue
        if not isinstance(doc, dict):
            problems.append(f"{fname}: expected a mapping of sections ({', '.join(SECTIONS)}), "
                            f"found {_describe(doc)}")
            continue
        for section, entries in doc.items():
            if section not in SECTIONS:
                problems.append(f"{fname}: {section}: unknown key '{section}'; allowed: {', '.join(SECTIONS)}")
                continue
            if section == "settings":
                try:
                    project.settings = Settings.model_validate(entries or {})
                except ValidationError as exc:
                    problems.extend(_format_error(fname, "settings", e, Settings) for e in exc.errors())
                continue
            if entries is None:
                continue
            if not isinstance(entries, dict):
                problems.append(f"{fname}: {section}: expected a mapping of names, found {_describe(entries)}")
                continue
            target: dict[str, Any] = getattr(project, section)
            for name, raw in entries.items():
                key = f"{section}.{name}"
                if not isinstance(name, str) or not NAME_RE.match(name):
                    problems.append(f"{fname}: {key}: invalid name; allowed: lowercase letters, digits and "
                                    f"'_', starting with a letter, at most 63 characters")
                    continue
                if key in project.origins:
                    problems.append(f"{fname}: {key}: already defined in {project.origins[key]}")
                    continue
                project.origins[key] = fname
                parsed = _parse_entry(section, name, raw, fname, problems)
                if parsed is not None:
                    target[name] = parsed
    problems.extend(_check_references(project))
    if problems:
        raise ProjectError(problems)
    return project


def _check_references(p: Project) -> list[str]:
    """Cross-entry rules: references exist, options agree, templates are valid."""
    from dinmo_dagster import naming, writers
    from dinmo_dagster.schedules import schedule_problem

    out: list[str] = []

    def check_schedule(key: str, s: Schedule) -> None:
        problem = schedule_problem(s)
        if problem:
            out.append(f"{where(key)}: {key}.schedule: {problem}")

    def where(key: str) -> str:
        return p.origins.get(key.split(".")[0] + "." + key.split(".")[1], "?")

    def ref(key: str, found: str, pool: dict[str, Any], what: str) -> None:
        if found not in pool:
            allowed = ", ".join(sorted(pool)) or "(none defined)"
            out.append(f"{where(key)}: {key}: unknown {what} '{found}'; allowed: {allowed}")

    for name, m in p.models.items():
        ref(f"models.{name}.source", m.source, p.sources, "source")
        if m.schedule is not None:
            if not m.materialized:
                out.append(f"{where(f'models.{name}')}: models.{name}.schedule: only a materialized model "
                           "(materialized: true) is refreshed on a schedule; a view is always live")
            check_schedule(f"models.{name}", m.schedule)
        for i, rel in enumerate(m.relationships):
            ref(f"models.{name}.relationships[{i}].model", rel.model, p.models, "model")
        if m.kind == "fact" and not m.time_column:
            out.append(f"{where(f'models.{name}')}: models.{name}.time_column: required for kind 'fact' "
                       f"(the event-time column used for incremental syncs)")
    for name, s in p.segments.items():
        ref(f"segments.{name}.model", s.model, p.models, "model")
        if s.sql is not None and "{{ model }}" not in s.sql and "{{model}}" not in s.sql:
            out.append(f"{where(f'segments.{name}')}: segments.{name}.sql: must select from "
                       "'{{ model }}' (the model's view)")
    for name, a in p.activations.items():
        k = f"activations.{name}"
        ref(f"{k}.segment", a.segment, p.segments, "segment")
        ref(f"{k}.destination", a.destination, p.destinations, "destination")
        if a.run_type == "full_then_delta" and a.sync_mode == "snapshot":
            out.append(f"{where(k)}: {k}.run_type: 'full_then_delta' cannot be used with sync_mode 'snapshot' "
                       "(a snapshot always exports the full segment); allowed with snapshot: full_only")
        try:
            naming.validate_template(a.file_name)
        except naming.TemplateError as exc:
            out.append(f"{where(k)}: {k}.file_name: {exc}")
        try:
            naming.validate_folder(a.folder)
        except naming.TemplateError as exc:
            out.append(f"{where(k)}: {k}.folder: {exc}")
        if a.mapping is not None:
            if not a.mapping:
                out.append(f"{where(k)}: {k}.mapping: must map at least one column")
            seen: dict[str, str] = {}
            for src, dst in a.mapping.items():
                if dst in seen:
                    out.append(f"{where(k)}: {k}.mapping: columns '{seen[dst]}' and '{src}' are both mapped "
                               f"to '{dst}'; destination names must be unique")
                seen[dst] = src
        if a.format == "xml":
            for label, value in (("xml.root", a.xml.root), ("xml.record", a.xml.record),
                                 *((f"mapping.{s}", d) for s, d in (a.mapping or {}).items())):
                problem = writers.xml_name_problem(value)
                if problem:
                    out.append(f"{where(k)}: {k}.{label}: {problem}")
        if a.compression == "gzip" and a.format == "parquet":
            out.append(f"{where(k)}: {k}.compression: 'gzip' applies to csv, json and xml; "
                       "for parquet use parquet.compression")
        if a.schedule is not None:
            check_schedule(k, a.schedule)
    return out
