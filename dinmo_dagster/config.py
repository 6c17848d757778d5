"""Project configuration: the YAML schema (pydantic models) and the loader.

A project is one YAML file (``dinmo.yaml``) or a directory of YAML files, found through
``DINMO_PROJECT_DIR`` (default: the bundled quickstart). Every error names the file, the key path,
what was found and what is allowed; unknown keys are errors, with the closest allowed key suggested.

A ``sources:`` or ``destinations:`` entry is validated with the settings model of the connector its
``type`` names (``dinmo_dagster.connectors``: one module per warehouse or destination); secrets must be
written ``{env: NAME}`` (``dinmo_dagster.secrets``) and are read only when a connection opens.

Malformed or hostile files fail fast with one line each, never a traceback: a file must be UTF-8 and
at most ``MAX_FILE_BYTES``; its mappings and lists nest at most ``MAX_YAML_DEPTH`` levels; it holds at
most ``MAX_YAML_VALUES`` values, of which at most ``MAX_ALIAS_VALUES`` come from YAML aliases (so an
alias bomb, a few lines that expand to billions of values, is refused before anything reads it).
These limits are checked on the YAML events in one pass without recursion, before the loader builds
anything.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from dinmo_dagster import defaults as activation_defaults
from dinmo_dagster import filters, naming, secrets, unload, writers
from dinmo_dagster.alerts import AlertsConfig, config_problems
from dinmo_dagster.connectors import ConnectorConfig, ConnectorKind, connectors, find_connector
from dinmo_dagster.filters import did_you_mean
from dinmo_dagster.identity.spec import IdentitySpace, add_identity_models
from dinmo_dagster.platform_connectors import PlatformDestination, audience_platforms
from dinmo_dagster.predictions.spec import PredictionSet, add_prediction_models
from dinmo_dagster.recurrence import Schedule, cron_problem, schedule_problem
from dinmo_dagster.warehouses import SourceConfig

QUICKSTART_DIR = Path(__file__).resolve().parent.parent / "examples" / "quickstart"
NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
SECTIONS = ("sources", "models", "segments", "destinations", "activations", "identity", "predictions", "settings",
            "alerts")

# Limits on one project file: a project's configuration is far below them, and hostile or broken
# input (alias bombs, 100k nested brackets, megabytes of values) is refused in seconds.
MAX_FILE_BYTES = 2_000_000
MAX_YAML_DEPTH = 64
MAX_YAML_VALUES = 200_000
MAX_ALIAS_VALUES = 10_000
# `dinmo validate` lists at most this many problems, so that its output stays readable.
MAX_PROBLEMS = 50
# Sync modes whose files are change sets: a later sync must never overwrite an earlier one's file.
CHANGE_SET_MODES = ("upsert", "insert", "difference")


class ProjectError(Exception):
    """The project configuration is invalid; ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid dinmo project:\n" + "\n".join(f"  - {p}" for p in problems))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


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


class Trigger(_Strict):
    on_source_change: bool = False
    watermark_column: str | None = None


class AudienceRef(_Strict):
    """The platform audience (list, custom audience) an audience activation fills: ``{name}`` or ``{id}``."""

    name: str | None = None
    id: str | None = None
    description: str | None = None

    @model_validator(mode="after")
    def _name_or_id(self) -> AudienceRef:
        if (self.name is None) == (self.id is None):
            raise ValueError("give exactly one of name and id")
        return self


# Keys of an activation to a file destination only, and of an activation to an API platform only.
FILE_KEYS = ("folder", "file_name", "format", "csv", "json_", "xml", "parquet", "compression", "max_file_size_mb",
             "unload")
PLATFORM_KEYS = ("match", "identifiers", "audience", "null_values", "max_rejected_pct", "retry_rejected_days",
                 "default_country")
# sync_mode of a platform activation per service (the first is the default).
PLATFORM_SYNC_MODES = {"attributes": ("upsert", "update", "insert", "mirror"), "audiences": ("mirror",),
                       "events": ("insert",), "subscriptions": ("upsert", "mirror")}
# The platform operations a sync of each mode may send, of those its destination offers (platform_sync:
# mirror upserts and deletes the records that left, or adds, removes or replaces audience members).
MODE_OPERATIONS = {"upsert": ("upsert",), "update": ("update",), "insert": ("insert", "track"),
                   "mirror": ("upsert", "delete", "add", "remove", "replace")}


class Activation(_Strict):
    segment: str | None = None
    """The segment synced; or ``model``: the whole model, without a segment (exactly one of the two)."""
    model: str | None = None
    """The model synced as a whole: every row of its view, lineage from the model's asset."""
    destination: str
    description: str | None = None
    folder: str = ""
    file_name: str | None = None
    format: Literal["csv", "json", "xml", "parquet"] = "csv"
    csv: CsvOptions = CsvOptions()
    json_: JsonOptions = Field(JsonOptions(), alias="json")
    xml: XmlOptions = XmlOptions()
    parquet: ParquetOptions = ParquetOptions()
    compression: Literal["none", "gzip"] = "none"
    mapping: dict[str, str] | None = None
    run_type: Literal["full_only", "full_then_delta"] | None = None
    sync_mode: Literal["snapshot", "upsert", "insert", "difference", "update", "mirror"] = "snapshot"
    max_file_size_mb: Annotated[float, Field(gt=0)] | None = None
    unload: Literal["auto", "never", "always"] = "auto"
    """gcs destinations: whether the warehouse writes the files itself (``dinmo_dagster.unload``)."""
    max_removed_pct: Annotated[float, Field(ge=0, le=100)] = 50.0
    keep_snapshots: Annotated[int, Field(ge=1)] = 3
    lookback: Annotated[str, Field(pattern=r"^\s*\d+\s*(minute|hour|day)s?\s*$")] = "0 minutes"
    schedule: Schedule | None = None
    trigger: Trigger | None = None
    # API platform activations (destination type hubspot, braze, meta_ads, firestore...)
    match: dict[str, str] | None = None
    """attributes: destination identifier -> segment column ({email: email})."""
    identifiers: dict[str, str] | None = None
    """audiences and events: destination identifier -> segment column ({email: email, phone: phone})."""
    audience: AudienceRef | None = None
    """audiences: {name: ...} (created when missing) or {id: ...}."""
    null_values: Literal["sync", "skip"] = "sync"
    """skip: a NULL never overwrites a value the platform holds."""
    max_rejected_pct: Annotated[float, Field(ge=0, le=100)] = 10.0
    """A sync whose records are rejected above this percentage fails (the baseline does not move)."""
    retry_rejected_days: Annotated[float, Field(gt=0)] = 14.0
    """A rejected record is sent again by the following syncs for this many days."""
    default_country: Annotated[str, Field(pattern=r"^[A-Z]{2}$")] | None = None
    """The country (ISO 3166 alpha-2) of phone numbers written without one, for E.164 normalization."""
    alerts: AlertsConfig | None = None
    """This activation's alerts: its ``on`` and ``to`` replace the project's ``alerts:`` (``alerts.py``)."""
    max_size_change_pct: Annotated[float, Field(ge=0)] = 50.0
    """A sync whose segment size moved more than this since the last sync warns (``size_change``)."""
    warnings_block: list[Literal["empty_segment", "size_change"]] = []
    """Warnings that fail the sync before anything is written: empty_segment, size_change."""
    _platform_service: str | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _segment_or_model(self) -> Activation:
        if (self.segment is None) == (self.model is None):
            raise ValueError("give exactly one of 'segment' (a segment of a model) or 'model' (the whole model)")
        return self

    @property
    def reads(self) -> str:
        """What the activation syncs, for messages: ``segment 'vip'`` or ``model 'customers'``."""
        return f"segment '{self.segment}'" if self.segment is not None else f"model '{self.model}'"

    @property
    def platform_service(self) -> str | None:
        """The service of the API platform this activation delivers to; None for a file destination."""
        return self._platform_service

    @property
    def platform_mode(self) -> str:
        """The sync mode of a platform activation: as written, or its service's default."""
        written = "sync_mode" in self.model_fields_set
        if written:
            return self.sync_mode
        return PLATFORM_SYNC_MODES.get(self.platform_service or "", ("upsert",))[0]

    @property
    def platform_match(self) -> dict[str, str]:
        """Destination identifier -> segment column: ``match``, or ``identifiers``."""
        return dict(self.match or self.identifiers or {})

    @property
    def effective_run_type(self) -> str:
        """``run_type`` as written, or the mode's natural default (snapshot: full_only, else full_then_delta)."""
        if self.run_type is not None:
            return self.run_type
        if self.platform_service is not None:
            return "full_then_delta"
        return "full_only" if self.sync_mode == "snapshot" else "full_then_delta"


class Settings(_Strict):
    """Project-wide settings."""

    consecutive_failures_to_pause: Annotated[int, Field(ge=1)] = 3
    validation_cron: str = "0 2 * * *"


@dataclass
class Project:
    """A loaded, validated project: the YAML sections plus where each entry came from."""

    directory: Path
    sources: dict[str, SourceConfig] = field(default_factory=dict)
    models: dict[str, Model] = field(default_factory=dict)
    segments: dict[str, Segment] = field(default_factory=dict)
    destinations: dict[str, ConnectorConfig] = field(default_factory=dict)
    activations: dict[str, Activation] = field(default_factory=dict)
    settings: Settings = field(default_factory=Settings)
    alerts: AlertsConfig | None = None  # the project's alerts: (alerts.py); activations may override
    # identity spaces; each adds the models identity.<name> and identity.<name>_graph (identity/spec.py)
    identity: dict[str, IdentitySpace] = field(default_factory=dict)
    # prediction sets; each adds the models predictions.<name>[_recommendations] (predictions/spec.py)
    predictions: dict[str, PredictionSet] = field(default_factory=dict)
    origins: dict[str, str] = field(default_factory=dict)  # "activations.x" -> file name
    # activation -> {key it inherits: "destinations.X.defaults"} (defaults.py)
    inherited: dict[str, dict[str, str]] = field(default_factory=dict)
    # Advice that does not make the project invalid, one line each (file, key path, why, what to do).
    warnings: list[str] = field(default_factory=list)

    def resolve_path(self, path: str) -> Path:
        """Relative paths in the YAML are relative to the project directory."""
        p = Path(os.path.expanduser(path))
        return p if p.is_absolute() else (self.directory / p)

    def model_of(self, activation: str) -> tuple[Segment, Model]:
        """The activation's segment and model; an activation of a whole ``model`` gets the segment of all
        its rows (``select * from {{ model }}``), which no view or asset stands for."""
        a = self.activations[activation]
        if a.segment is None:
            return Segment(model=str(a.model), sql="select * from {{ model }}"), self.models[str(a.model)]
        seg = self.segments[a.segment]
        return seg, self.models[seg.model]


Model.model_rebuild()

SECTION_MODELS: dict[str, Any] = {
    "models": Model,
    "segments": Segment,
    "activations": Activation,
    "identity": IdentitySpace,
    "predictions": PredictionSet,
}


# libyaml's parser when PyYAML was built with it: several times faster than the pure-Python one.
_SafeLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_SafeLoader):  # type: ignore[misc,valid-type]
    """YAML 1.2 booleans: only true/false. YAML 1.1 reads an ``on:`` key (alerts) as True."""


_Loader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:bool"]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.copy().items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


class _FileProblem(Exception):
    """A project file that cannot be read as YAML: one line, without the file name."""


@dataclass
class _Frame:
    """An open mapping or list while scanning YAML events."""

    is_map: bool
    anchor: str | None
    values: int = 1  # values inside, aliases expanded, this one included
    height: int = 1  # levels of nesting inside, aliases expanded, this one included
    children: int = 0
    key: str = "?"  # the current key of a mapping
    keys: set[str] = field(default_factory=set)  # the scalar keys of a mapping seen so far


def _clip(text: str, limit: int = 60) -> str:
    """The start of a long text, so that one message stays on one line."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _path_of(frames: list[_Frame]) -> str:
    """The key path of the next value, e.g. ``segments.bomb.filter.any[3]`` (long paths shortened)."""
    parts: list[str] = []
    for f in frames:
        if f.is_map:
            if f.children % 2 == 0:  # at a key: the path ends with the mapping itself
                break
            parts.append(_clip(f.key, 40))
        else:
            parts.append(f"[{f.children}]")
    if len(parts) > 12:
        parts = [*parts[:8], f"({len(parts) - 11} more)", *parts[-3:]]
    return "".join(p if p.startswith("[") or i == 0 else f".{p}" for i, p in enumerate(parts))


def _scan_yaml(text: str) -> None:
    """Check a YAML text against the size limits from its event stream, without building it.

    One pass over the events, no recursion: nesting depth and the number of values are counted with
    aliases expanded (each anchor remembers its size and height), so an alias bomb or a self-referencing
    alias is refused at the alias that crosses the limit. Raises _FileProblem naming line, column and
    key path.
    """
    frames: list[_Frame] = []
    anchors: dict[str, tuple[int, int]] = {}  # anchor -> (values, height)
    total = aliased = 0

    too_deep = (f"nested deeper than {MAX_YAML_DEPTH} levels; allowed: at most {MAX_YAML_DEPTH} levels of "
                "mappings and lists (aliases included)")

    def fail(event: Any, message: str) -> None:
        mark, path = event.start_mark, _path_of(frames)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " + (f"{path}: " if path else "")
        raise _FileProblem(where + message)

    def add(event: Any, values: int, height: int, key: str, counted: bool = False) -> None:
        """Put a finished value (``values`` values, ``height`` levels) into the open collection."""
        nonlocal total
        total += 0 if counted else values
        if total > MAX_YAML_VALUES:
            fail(event, f"more than {MAX_YAML_VALUES} values in one file; allowed: at most {MAX_YAML_VALUES} "
                        "(keep long lists of values in a warehouse table and select them with a SQL segment)")
        if len(frames) + height > MAX_YAML_DEPTH:
            fail(event, too_deep)
        if frames:
            parent = frames[-1]
            parent.values += values
            parent.height = max(parent.height, height + 1)
            if parent.is_map and parent.children % 2 == 0:
                if isinstance(event, yaml.ScalarEvent) and key in parent.keys:
                    # PyYAML keeps the last of two equal keys: a pasted entry would replace another silently
                    fail(event, f"the key '{_clip(key, 60)}' appears twice in this mapping; allowed: each key "
                                "once (the second would silently replace the first)")
                parent.keys.add(key)
                parent.key = key
            parent.children += 1

    for event in yaml.parse(text, Loader=_Loader):
        if isinstance(event, yaml.AliasEvent):
            name = event.anchor
            if any(f.anchor == name for f in frames):
                fail(event, f"the alias *{_clip(name, 40)} is inside the value it refers to; "
                            "allowed: aliases of values defined before and outside them")
            values, height = anchors.get(name, (1, 0))  # an undefined alias: the loader says so
            aliased += values
            if aliased > MAX_ALIAS_VALUES:
                fail(event, f"the aliases of this file stand for more than {MAX_ALIAS_VALUES} values "
                            f"(at alias *{_clip(name, 40)}); allowed: at most {MAX_ALIAS_VALUES} values "
                            "repeated through aliases per file")
            add(event, values, height, "?")
        elif isinstance(event, yaml.ScalarEvent):
            if event.anchor:
                anchors[event.anchor] = (1, 0)
            add(event, 1, 0, event.value)
        elif isinstance(event, yaml.CollectionStartEvent):
            if len(frames) + 1 > MAX_YAML_DEPTH:
                fail(event, too_deep)
            frames.append(_Frame(isinstance(event, yaml.MappingStartEvent), event.anchor))
            total += 1
        elif isinstance(event, yaml.CollectionEndEvent):
            done = frames.pop()
            if done.anchor:
                anchors[done.anchor] = (done.values, done.height)
            add(event, done.values, done.height, "?", counted=True)


def _read_yaml(path: Path) -> Any:
    """The YAML document of one project file; raises _FileProblem (one line) when it cannot be read."""
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise _FileProblem(f"the file has {size} bytes; allowed: at most {MAX_FILE_BYTES} bytes per "
                           "project file")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        start = exc.start
        line = data.count(b"\n", 0, start) + 1
        column = start - (data.rfind(b"\n", 0, start) + 1) + 1
        raise _FileProblem(f"line {line}, column {column}: found byte 0x{data[start]:02x}, which is not "
                           "UTF-8; allowed: UTF-8 text (save the file as UTF-8)") from None
    try:
        _scan_yaml(text)
        return yaml.load(text, Loader=_Loader)
    except yaml.reader.ReaderError as exc:
        # A character YAML does not allow (a NUL, a control character): say where, by line and column.
        position = exc.position if isinstance(exc.position, int) else 0
        if exc.encoding != "unicode":  # libyaml counts UTF-8 bytes, the pure-Python reader characters
            position = len(text.encode("utf-8")[:position].decode("utf-8", "ignore"))
        before = text[:position]
        line, column = before.count("\n") + 1, len(before) - (before.rfind("\n") + 1) + 1
        char = exc.character if isinstance(exc.character, str) else chr(exc.character or 0)
        raise _FileProblem(f"line {line}, column {column}: found the character #x{ord(char):04x}, which YAML "
                           "does not allow; allowed: printable characters, tabs and line breaks") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        if "maximum nesting depth" in str(exc.problem):  # libyaml's own limit (1000) met while reading ahead
            raise _FileProblem(f"{where}nested deeper than {MAX_YAML_DEPTH} levels; allowed: at most "
                               f"{MAX_YAML_DEPTH} levels of mappings and lists (aliases included)") from None
        first = str(exc.problem or exc).splitlines()[0]
        raise _FileProblem(f"{where}malformed YAML: {_clip(first, 200)}") from None
    except yaml.YAMLError as exc:
        raise _FileProblem(f"malformed YAML: {_clip(str(exc).splitlines()[0], 200)}") from None


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


def _clean_loc(err: dict[str, Any]) -> list[str]:
    # Drop discriminator tags pydantic inserts ("duckdb", "function-after[...]") from the path.
    return [_clip(str(p)) for p in err["loc"]
            if not str(p).startswith("function-") and not _is_union_tag(str(p))]


def _typo_fixes(errors: list[dict[str, Any]], model_cls: Any) -> dict[tuple[str, ...], str]:
    """Unknown keys that are typos of a missing required key: {path of the missing key: the typo}.

    ``primary_kye`` gives "unknown key 'primary_kye'; did you mean 'primary_key'?" and no second line
    saying that primary_key is missing.
    """
    missing = {tuple(_clean_loc(e)) for e in errors if e["type"] == "missing"}
    out: dict[tuple[str, ...], str] = {}
    for e in errors:
        if e["type"] != "extra_forbidden":
            continue
        loc = _clean_loc(e)
        parent = _resolve_model(model_cls, loc[:-1])
        close = difflib.get_close_matches(loc[-1], _field_names(parent), n=1) if parent else []
        if close and (*loc[:-1], close[0]) in missing:
            out[(*loc[:-1], close[0])] = loc[-1]
    return out


def _format_error(file: str, prefix: str, err: dict[str, Any], model_cls: Any) -> str:
    clean = _clean_loc(err)
    key = _key_path(prefix, clean)
    etype = err["type"]
    if etype == "extra_forbidden":
        parent = _resolve_model(model_cls, clean[:-1])
        names = sorted(_field_names(parent)) if parent else []
        hint = did_you_mean(clean[-1], names) or ";"
        return (f"{file}: {_key_path(prefix, clean[:-1])}: unknown key '{clean[-1]}'{hint} "
                f"allowed: {', '.join(names)}")
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


# Tags pydantic inserts in the path of an error inside a union (which member failed), besides connector types.
_UNION_TAGS = {"str", "EnvRef", "SecretStr", "list[str]", "float", "constrained-float", "none"}


def _is_union_tag(part: str) -> bool:
    return part in _UNION_TAGS or any(part == c.type for kind in ConnectorKind for c in connectors(kind))


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


def connector_models(section: str) -> dict[str, type[ConnectorConfig]]:
    """The settings model of every ``type`` the ``sources`` or ``destinations`` section accepts, in the
    registry's order: the discriminated union of that section, its ``type`` being the discriminator."""
    kinds = [kind for kind in ConnectorKind if kind.section == section]
    return {c.type: c.config_model for kind in kinds for c in connectors(kind)}


def _type_of(raw: Any) -> Any:
    """The ``type`` of an entry when it is text (a list or mapping there is reported, not hashed)."""
    found = raw.get("type") if isinstance(raw, dict) else None
    return found if isinstance(found, str) else None


def _parse_entry(section: str, name: str, raw: Any, file: str, problems: list[str]) -> Any:
    prefix = f"{section}.{name}"
    if section in ("sources", "destinations"):
        # only the named type's connector is imported; every type is loaded only to list them in the error
        found = [c for kind in ConnectorKind if kind.section == section
                 if (c := find_connector(kind, _type_of(raw))) is not None and c.type == _type_of(raw)]
        cls = found[0].config_model if found else None
        if cls is None:
            models = connector_models(section)
            if isinstance(raw, dict):
                problems.append(f"{file}: {prefix}.type: found {_describe(raw.get('type'))}; allowed: "
                                + ", ".join(models))
            else:
                problems.append(f"{file}: {prefix}: expected a mapping, found {_describe(raw)}")
            return None
    else:
        cls = SECTION_MODELS[section]
    inline: list[str] = []
    if isinstance(raw, dict):
        for key in (inline := secrets.inline_secrets(cls, raw)):
            problems.append(f"{file}: {prefix}.{key}: secrets must not be written in the YAML; "
                            f"found an inline value; allowed: {{env: VARIABLE_NAME}}")
            raw = {k: v for k, v in raw.items() if k != key}
    try:
        parsed = cls.model_validate(raw)
        if isinstance(parsed, PlatformDestination):
            problems.extend(f"{file}: {prefix}.{problem}" for problem in parsed.problems())
        return parsed
    except ValidationError as exc:
        errors = exc.errors()
        fixed = _typo_fixes(errors, cls)
        for err in errors:
            if err["type"] == "missing" and tuple(_clean_loc(err)) in fixed:
                continue  # the unknown key next to it is this key misspelled: one line says both
            if err["type"] == "missing" and _clean_loc(err)[:1] in ([k] for k in inline):
                continue  # an inline secret, reported above and taken out
            if any("SecretStr" in str(part) for part in err["loc"]):
                continue  # a secret's plain-value form is for Python callers: the YAML takes {env: NAME} only
            problems.append(_format_error(file, prefix, err, cls))
        return None


def load_project(path: str | os.PathLike[str] | None = None) -> Project:
    """Load and validate a project (a YAML file or a directory of them). Raises ProjectError.

    Problems come one per line, at most MAX_PROBLEMS of them. Advice that does not make the project
    invalid (a change-set file name that two syncs could render alike) goes to ``Project.warnings``.
    """
    root = Path(path).resolve() if path is not None else project_dir_from_env()
    files = _yaml_files(root)
    project = Project(directory=root if root.is_dir() else root.parent)
    problems: list[str] = []
    # Every name written in the YAML, parsed or not: a model that fails to parse is still defined, so
    # references to it are not reported a second time.
    defined: dict[str, set[str]] = {section: set() for section in SECTIONS}
    settings_file = ""
    docs: dict[str, Any] = {}  # file name -> its YAML document: every file is read before any is parsed
    for f in files:
        try:
            docs[f.name] = _read_yaml(f)
        except _FileProblem as exc:
            problems.append(f"{f.name}: {exc}")
    # destinations.X.defaults (defaults.py), taken out before the destinations' settings models read them
    dest_defaults, default_problems = activation_defaults.take_defaults(
        docs.items(), Activation, FILE_KEYS, PLATFORM_KEYS, _format_error)
    problems.extend(default_problems)
    for fname, doc in docs.items():
        if doc is None:
            continue
        if not isinstance(doc, dict):
            problems.append(f"{fname}: expected a mapping of sections ({', '.join(SECTIONS)}), "
                            f"found {_describe(doc)}")
            continue
        for section, entries in doc.items():
            if section not in SECTIONS:
                hint = did_you_mean(section, SECTIONS)
                shown = _clip(str(section))
                problems.append(f"{fname}: {shown}: unknown key '{shown}'{hint or ';'} "
                                f"allowed: {', '.join(SECTIONS)}")
                if hint and isinstance(entries, dict):  # a misspelt section still defines its names
                    defined[difflib.get_close_matches(section, SECTIONS, n=1)[0]].update(map(str, entries))
                continue
            if section == "alerts":
                project.origins["alerts"] = fname
                try:
                    project.alerts = AlertsConfig.model_validate(entries or {})
                except ValidationError as exc:
                    problems.extend(_format_error(fname, "alerts", e, AlertsConfig) for e in exc.errors())
                continue
            if section == "settings":
                settings_file = fname
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
                defined[section].add(str(name))
                if not isinstance(name, str) or not NAME_RE.match(name):
                    problems.append(f"{fname}: {section}.{_clip(str(name))}: invalid name; allowed: lowercase "
                                    "letters, digits and '_', starting with a letter, at most 63 characters")
                    continue
                if key in project.origins:
                    problems.append(f"{fname}: {key}: already defined in {project.origins[key]}")
                    continue
                project.origins[key] = fname
                if section == "activations":
                    raw, project.inherited[name] = activation_defaults.apply_defaults(raw, dest_defaults)
                parsed = _parse_entry(section, name, raw, fname, problems)
                if parsed is not None:
                    target[name] = parsed
    problems.extend(add_identity_models(project, Model, defined))  # its models, before references to them
    problems.extend(add_prediction_models(project, defined))  # score models, related to the customer model
    problems.extend(_check_references(project, defined, settings_file))
    problems.extend(config_problems(project))
    if problems:
        if len(problems) > MAX_PROBLEMS:
            more = len(problems) - MAX_PROBLEMS
            problems = [*problems[:MAX_PROBLEMS], f"... and {more} more problem(s); fix these first"]
        raise ProjectError(problems)
    project.warnings = _warnings(project)
    return project


def _check_references(p: Project, defined: dict[str, set[str]] | None = None,
                      settings_file: str = "") -> list[str]:
    """Cross-entry rules: references exist, options agree, templates are valid.

    ``defined`` holds every name written in the YAML, including entries that failed to parse: a
    reference to one of those is not a second problem.
    """
    names = defined or {"sources": set(p.sources), "models": set(p.models), "segments": set(p.segments),
                        "destinations": set(p.destinations)}
    out: list[str] = []

    def check_schedule(key: str, s: Schedule) -> None:
        problem = schedule_problem(s)
        if problem:
            out.append(f"{where(key)}: {key}.schedule: {problem}")

    def where(key: str) -> str:
        return p.origins.get(key.split(".")[0] + "." + key.split(".")[1], "?")

    def ref(key: str, found: str, section: str, what: str) -> None:
        pool = names.get(section, set())
        if found not in pool:
            allowed = ", ".join(sorted(pool)) or "(none defined)"
            hint = did_you_mean(found, sorted(pool)) or ";"
            out.append(f"{where(key)}: {key}: unknown {what} '{_clip(found)}'{hint} allowed: {allowed}")

    def check_depth(key: str, tree: Any) -> None:
        problem = filters.filter_depth_problem(tree, key)
        if problem:
            out.append(f"{where(key)}: {problem}")

    for name, m in p.models.items():
        ref(f"models.{name}.source", m.source, "sources", "source")
        if m.schedule is not None:
            if not m.materialized:
                out.append(f"{where(f'models.{name}')}: models.{name}.schedule: only a materialized model "
                           "(materialized: true) is refreshed on a schedule; a view is always live")
            check_schedule(f"models.{name}", m.schedule)
        for i, rel in enumerate(m.relationships):
            ref(f"models.{name}.relationships[{i}].model", rel.model, "models", "model")
        for i, calc in enumerate(m.calculated_fields):
            if calc.where is not None:
                check_depth(f"models.{name}.calculated_fields[{i}].where", calc.where)
        if m.kind == "fact" and not m.time_column:
            out.append(f"{where(f'models.{name}')}: models.{name}.time_column: required for kind 'fact' "
                       f"(the event-time column used for incremental syncs)")
    for name, s in p.segments.items():
        ref(f"segments.{name}.model", s.model, "models", "model")
        if s.sql is not None and "{{ model }}" not in s.sql and "{{model}}" not in s.sql:
            out.append(f"{where(f'segments.{name}')}: segments.{name}.sql: must select from "
                       "'{{ model }}' (the model's view)")
        if s.filter is not None:
            check_depth(f"segments.{name}.filter", s.filter)
    for name, a in p.activations.items():
        k = f"activations.{name}"
        if a.segment is not None:
            ref(f"{k}.segment", a.segment, "segments", "segment")
        else:
            ref(f"{k}.model", str(a.model), "models", "model")
        ref(f"{k}.destination", a.destination, "destinations", "destination")
        dest = p.destinations.get(a.destination)
        if isinstance(dest, PlatformDestination):
            out.extend(f"{where(k)}: {problem}" for problem in _platform_activation_problems(k, a, dest))
        elif dest is not None:  # a destination that failed to parse has its own problems
            given = [key for key in PLATFORM_KEYS if key in a.model_fields_set]
            for key in given:
                out.append(f"{where(k)}: {k}.{key}: applies to API platform destinations only; destination "
                           f"'{a.destination}' is a {getattr(dest, 'type', 'file')} file destination; remove it")
            if a.sync_mode in ("update", "mirror"):
                out.append(f"{where(k)}: {k}.sync_mode: found {a.sync_mode!r}, an API platform mode; allowed for "
                           "a file destination: snapshot, upsert, insert, difference")
        if a.run_type == "full_then_delta" and a.sync_mode == "snapshot":
            out.append(f"{where(k)}: {k}.run_type: 'full_then_delta' cannot be used with sync_mode 'snapshot' "
                       "(a snapshot always exports the full segment); allowed with snapshot: full_only")
        if a.file_name is None and dest is not None and not isinstance(dest, PlatformDestination):
            out.append(f"{where(k)}: {k}.file_name: required key is missing")
        elif a.file_name is not None:
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
                if not dst.strip():
                    out.append(f"{where(k)}: {k}.mapping.{_clip(src)}: found the destination name {dst!r}; "
                               "allowed: a column name with at least one visible character")
                elif dst in seen:
                    out.append(f"{where(k)}: {k}.mapping: columns '{_clip(seen[dst])}' and '{_clip(src)}' are "
                               f"both mapped to '{_clip(dst)}'; destination names must be unique")
                seen[dst] = src
        if a.format == "xml":
            for label, value in (("xml.root", a.xml.root), ("xml.record", a.xml.record),
                                 *((f"mapping.{s}", d) for s, d in (a.mapping or {}).items() if d.strip())):
                problem = writers.xml_name_problem(value)
                if problem:
                    out.append(f"{where(k)}: {k}.{label}: {problem}")
        if a.unload == "always" and dest is not None and not isinstance(dest, PlatformDestination):
            model = (p.models.get(p.segments[a.segment].model) if a.segment in p.segments
                     else p.models.get(str(a.model)) if a.segment is None else None)
            source = p.sources.get(model.source) if model is not None else None
            reason = unload.activation_problem(source.type, source, getattr(dest, "type", None), a) if source else None
            if reason:
                out.append(f"{where(k)}: {k}.unload: 'always' cannot unload: {reason}; allowed here: auto, never")
        if a.compression == "gzip" and a.format == "parquet":
            out.append(f"{where(k)}: {k}.compression: 'gzip' applies to csv, json and xml; "
                       "for parquet use parquet.compression")
        if a.schedule is not None:
            check_schedule(k, a.schedule)
    cron_text = cron_problem(p.settings.validation_cron)
    if cron_text:
        out.append(f"{settings_file or '?'}: settings.validation_cron: {cron_text}")
    out.extend(f"{where(key)}: {problem}" for key, problem in dependency_cycles(p).items())
    return out


def _platform_activation_problems(k: str, a: Activation, dest: PlatformDestination) -> list[str]:
    """What is wrong with activation ``k`` to an API platform: file keys, sync_mode, match, audience."""
    out: list[str] = []
    service = str(getattr(dest, "service", ""))
    a._platform_service = service  # the activation now knows it delivers to a platform
    kind = f"destination '{a.destination}' is a {dest.type} platform destination"
    for key in FILE_KEYS:
        if key in a.model_fields_set:
            shown = "json" if key == "json_" else key
            out.append(f"{k}.{shown}: a file option; {kind}; remove it (allowed: segment, destination, match, "
                       "identifiers, audience, mapping, sync_mode, null_values, max_rejected_pct, "
                       "retry_rejected_days, default_country, run_type, schedule, trigger)")
    extra = platform_extra(a, dest)
    # The adapter as the settings make it: some narrow their service's operations (Intercom companies).
    platform = dest.checked_platform(extra)
    operations = tuple(platform.operations) if platform is not None else dest.operations(extra)
    modes = [m for m in PLATFORM_SYNC_MODES.get(service, ())
             if (m == "mirror" and ("delete" in operations or "remove" in operations)) or m in operations
             or (m == "insert" and "track" in operations)]
    written = "sync_mode" in a.model_fields_set
    if written and a.sync_mode not in modes:
        narrowed = platform is not None and operations != tuple(type(platform).services.get(service, ()))
        target = f" ({platform.target_label()})" if platform is not None and narrowed else ""
        out.append(f"{k}.sync_mode: found {a.sync_mode!r}; allowed for {dest.type} {service}{target}: "
                   + (", ".join(modes) or "none"))
    elif platform is not None:  # rules of the adapter on the operations the mode sends (and the match)
        mode = a.platform_mode
        shown = repr(mode) if written else f"{mode!r} (the default for {dest.type} {service})"
        asked = [o for o in MODE_OPERATIONS.get(mode, ()) if o in operations]
        out.extend(f"{k}.sync_mode: found {shown}; {problem}"
                   for problem in platform.operation_problems(asked, a.platform_match))
    if service == "attributes" and a.identifiers:
        out.append(f"{k}.identifiers: found identifiers; {dest.type} attributes match records with match; "
                   "allowed: match")
    elif service != "attributes" and a.match:
        out.append(f"{k}.match: found match; {dest.type} {service} take identifiers; allowed: identifiers")
    has_audience = "audience" in dest.settings_model.model_fields
    if a.audience is not None and (service != "audiences" or not has_audience):
        out.append(f"{k}.audience: found an audience; {kind} with service {service}, which takes none; "
                   "allowed: audience only with service audiences of " + ", ".join(audience_platforms()))
    if a.run_type == "full_only":
        out.append(f"{k}.run_type: found 'full_only'; {kind}, synced by its changes; allowed: full_then_delta")
    for problem in dest.activation_problems(a.platform_match, a.mapping or {}, extra):
        key, _, text = problem.partition(": ")
        if key == "match" and service != "attributes":
            key = "identifiers"  # the adapter's name for them on an attributes destination
        out.append(f"{k}.{key}: {text}")
    if extra:  # the destination's own problems are reported once, under destinations.<name>
        known = set(dest.problems())
        out.extend(f"{k}.{problem}" for problem in dest.problems(extra) if problem not in known)
    return out


def platform_extra(a: Activation, dest: PlatformDestination) -> dict[str, Any]:
    """Settings an activation adds to its platform destination's: its audience, as the platform takes it."""
    if a.audience is None or "audience" not in dest.settings_model.model_fields:
        return {}
    return {"audience": dest.audience_setting(a.audience.model_dump(exclude_none=True))}


# ---------------------------------------------------------------------------------------------------------
# which views read which: models through aggregate calculated fields, segments through their filters
# ---------------------------------------------------------------------------------------------------------


def referenced_segments(node: Any) -> list[str]:
    """The segments a filter names (``{segment: S, op: in | not_in}``) at any depth, in order."""
    found: list[str] = []
    if isinstance(node, dict):
        if isinstance(node.get("segment"), str):
            found.append(node["segment"])
        for v in node.values():
            found += referenced_segments(v)
    elif isinstance(node, list):
        for v in node:
            found += referenced_segments(v)
    return found


def model_reads(p: Project, name: str) -> list[str]:
    """The models whose views model ``name``'s view reads: those of its aggregate calculated fields
    (itself excluded: a self-relationship reads the model's own base rows)."""
    m = p.models[name]
    used = {f.relation for f in m.calculated_fields if f.type == "aggregate"}
    return list(dict.fromkeys(r.model for r in m.relationships
                              if r.name in used and r.model != name and r.model in p.models))


def segment_reads(p: Project, name: str) -> list[str]:
    """The segments whose views segment ``name``'s filter reads."""
    return list(dict.fromkeys(n for n in referenced_segments(p.segments[name].filter or {}) if n in p.segments))


def reads_without_cycles(p: Project, section: Literal["models", "segments"], name: str) -> list[str]:
    """What ``name`` reads (``model_reads`` or ``segment_reads``) without the entries that lead back to it:
    a cycle of asset dependencies would stop Dagster from loading the whole project."""
    edges = model_reads if section == "models" else segment_reads
    return [t for t in edges(p, name) if t != name and name not in _reachable(t, lambda n: edges(p, n))]


def dependency_cycles(p: Project) -> dict[str, str]:
    """Models and segments whose views would read themselves: ``{"models.M" | "segments.S": problem}``.

    A cycle there cannot be built in any warehouse. ``load_project`` reports these problems; definitions
    built from such a project anyway leave those dependencies out, and the entities in a cycle fail when
    they run, with this message.
    """
    out: dict[str, str] = {}
    for name in p.models:
        cycle = _cycle_from(name, lambda n: model_reads(p, n))
        if cycle:
            members = ", ".join(sorted(set(cycle)))
            out[f"models.{name}"] = (
                f"models.{name}.calculated_fields: the aggregate calculated fields of models {members} read each "
                f"other's views in a cycle ({' -> '.join(cycle)}); allowed: aggregates over models that do not "
                "aggregate back")
    for name in p.segments:
        cycle = _cycle_from(name, lambda n: segment_reads(p, n))
        if cycle:
            what = f"segment '{name}' refers to itself" if len(cycle) == 2 else \
                f"segments {', '.join(sorted(set(cycle)))} refer to each other in a cycle"
            out[f"segments.{name}"] = (f"segments.{name}.filter: {what} ({' -> '.join(cycle)}); allowed: "
                                       "conditions on other segments that do not refer back to this one")
    return out


def _cycle_from(start: str, edges: Callable[[str], list[str]]) -> list[str] | None:
    """The shortest path ``start -> ... -> start`` through ``edges(node)``, or None."""
    paths: list[list[str]] = [[start]]
    seen: set[str] = set()
    while paths:
        path = paths.pop(0)
        for nxt in edges(path[-1]):
            if nxt == start:
                return [*path, start]
            if nxt not in seen:
                seen.add(nxt)
                paths.append([*path, nxt])
    return None


def _reachable(start: str, edges: Callable[[str], list[str]]) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for nxt in edges(todo.pop()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def _warnings(p: Project) -> list[str]:
    """Advice on a valid project: change-set file names that two syncs could render alike.

    A change-set sync (upsert, insert, difference) never overwrites a file an earlier sync wrote under
    the same name; it fails instead. A template without {ss}, {ms}, {X} or {x} renders the same name
    for two syncs in the same minute (or hour, or day...), so the second one would fail.
    """
    out: list[str] = []
    periods = (("mm", "minute", "{ss}"), ("HH", "hour", "{mm}{ss}"), ("DD", "day", "{HH}{mm}{ss}"),
               ("MM", "month", "{DD}_{HH}{mm}{ss}"), ("YYYY", "year", "{MM}{DD}_{HH}{mm}{ss}"),
               ("YY", "year", "{MM}{DD}_{HH}{mm}{ss}"))
    for name, a in p.activations.items():
        if a.sync_mode not in CHANGE_SET_MODES or a.file_name is None:
            continue
        used = naming.template_variables(a.file_name)
        if used & {"ss", "ms", "X", "x"}:
            continue
        period, add = next(((per, add) for var, per, add in periods if var in used),
                           (None, "{YYYY}{MM}{DD}_{HH}{mm}{ss}"))
        when = f"two {a.sync_mode} syncs in the same {period}" if period else f"every {a.sync_mode} sync"
        out.append(f"{p.origins.get(f'activations.{name}', '?')}: activations.{name}.file_name: "
                   f"{_clip(a.file_name, 80)!r} has no seconds or finer variable ({{ss}}, {{ms}}, {{X}} or "
                   f"{{x}}), so {when} would render the same name and the later sync would refuse to overwrite "
                   f"the earlier file; add {add} (or {{X}})")
    return out
