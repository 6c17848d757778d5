"""Default activation settings per destination: ``destinations.X.defaults``.

A destination may hold the settings its activations share (``file_name``, ``format``, ``mapping``,
``sync_mode``, ``schedule``, ``identifiers``...). An activation to that destination inherits each default
it does not write itself; what it writes wins, key by key at the top level, so a mapping, a schedule or
an ``identifiers`` map written in the activation replaces the default as a whole (two mappings are never
merged: a column the activation leaves out must not be exported because a default names it).

Which keys a destination's defaults take follows from its kind: every activation key except
``segment``, ``model``, ``destination`` and ``description`` (what the activation is) and ``audience``
(two activations filling one platform audience would overwrite each other), less the keys of the other
kind (file options for an API platform, ``match``/``identifiers``/... for a file destination).

The loader (``config.load_project``) takes ``defaults`` out of each destination's entry before the
destination's own settings model reads it, validates them once (problems name
``destinations.X.defaults.K``; a key with a problem is not inherited, so it is not reported again for
every activation), and merges them into each activation's YAML before that is parsed: an inherited key
counts as written (``model_fields_set``). ``Project.inherited`` records where each inherited key came
from, and ``resolved_lines`` shows every activation's effective settings (``dinmo validate --verbose``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from dinmo_dagster.connectors import ConnectorKind, find_connector
from dinmo_dagster.filters import did_you_mean
from dinmo_dagster.platform_connectors import PlatformDestination

__all__ = ["DestinationDefaults", "allowed_keys", "apply_defaults", "resolved_lines", "take_defaults"]

# What an activation is, never a shared setting.
NOT_DEFAULTS = ("segment", "model", "destination", "description", "audience")


@dataclass
class DestinationDefaults:
    """The valid defaults of one destination, and the file that declares them."""

    destination: str
    file: str
    values: dict[str, Any] = field(default_factory=dict)


def _names(model: type[BaseModel]) -> list[str]:
    return [f.alias or n for n, f in model.model_fields.items()]


def allowed_keys(
    activation_model: type[BaseModel], platform: bool, file_keys: Iterable[str], platform_keys: Iterable[str]
) -> list[str]:
    """The keys ``destinations.X.defaults`` takes for a file destination, or an API platform's."""
    other = {"json" if k == "json_" else k for k in (file_keys if platform else platform_keys)}
    return [k for k in _names(activation_model) if k not in NOT_DEFAULTS and k not in other]


def _is_platform(raw: dict[str, Any]) -> bool | None:
    """Whether a destination entry names an API platform (None: its type is unknown, reported elsewhere)."""
    for kind in (ConnectorKind.FILE_DESTINATION, ConnectorKind.PLATFORM):
        found = find_connector(kind, raw.get("type"))
        if found is not None:
            return issubclass(found.config_model, PlatformDestination)
    return None


def take_defaults(
    docs: Iterable[tuple[str, Any]],
    activation_model: type[BaseModel],
    file_keys: Iterable[str],
    platform_keys: Iterable[str],
    format_error: Callable[[str, str, dict[str, Any], Any], str],
) -> tuple[dict[str, DestinationDefaults], list[str]]:
    """Take ``defaults`` out of every destination entry of the project's YAML documents (``(file, doc)``),
    in place, and validate them: ``({destination: its valid defaults}, problems)``.

    ``format_error(file, key prefix, pydantic error, model)`` words a pydantic error as the loader does.
    """
    found: dict[str, DestinationDefaults] = {}
    problems: list[str] = []
    file_keys, platform_keys = list(file_keys), list(platform_keys)
    for fname, doc in docs:
        section = doc.get("destinations") if isinstance(doc, dict) else None
        if not isinstance(section, dict):
            continue
        for name, raw in section.items():
            if not isinstance(raw, dict) or "defaults" not in raw:
                continue
            section[name] = {k: v for k, v in raw.items() if k != "defaults"}
            prefix = f"destinations.{name}.defaults"
            given = raw["defaults"]
            if given is None:
                continue
            if not isinstance(given, dict):
                shown = repr(given) if len(repr(given)) <= 80 else repr(given)[:77] + "..."
                problems.append(
                    f"{fname}: {prefix}: expected a mapping of activation settings, found {shown}"
                )
                continue
            platform = _is_platform(raw)
            if platform is None:
                continue  # an unknown destination type: reported once, under destinations.<name>.type
            allowed = allowed_keys(activation_model, platform, file_keys, platform_keys)
            kind = f"the API platform destination '{name}'" if platform else f"the file destination '{name}'"
            values: dict[str, Any] = {}
            for key, value in given.items():
                if key in allowed:
                    values[key] = value
                    continue
                if key in NOT_DEFAULTS:
                    why = "what an activation is, not a shared setting"
                elif key in _names(activation_model):
                    why = f"not an option of {kind}"
                else:
                    hint = did_you_mean(key, allowed)
                    problems.append(
                        f"{fname}: {prefix}: unknown key '{key}'{hint or ';'} allowed: " + ", ".join(allowed)
                    )
                    continue
                problems.append(f"{fname}: {prefix}.{key}: {why}; allowed in defaults: {', '.join(allowed)}")
            # Parsed as an activation would parse them (placeholders for what defaults cannot hold).
            try:
                activation_model.model_validate({**values, "segment": "_", "destination": name})
            except ValidationError as exc:
                for err in exc.errors():
                    if err["loc"] and err["loc"][0] in values:
                        values.pop(str(err["loc"][0]), None)  # not inherited: reported once, here
                        problems.append(format_error(fname, prefix, err, activation_model))
            found[str(name)] = DestinationDefaults(str(name), fname, values)
    return found, problems


def apply_defaults(raw: Any, defaults: dict[str, DestinationDefaults]) -> tuple[Any, dict[str, str]]:
    """An activation's YAML with its destination's defaults added where it has no value of its own, and
    ``{inherited key: "destinations.X.defaults"}``."""
    if not isinstance(raw, dict) or not isinstance(raw.get("destination"), str):
        return raw, {}
    found = defaults.get(raw["destination"])
    if found is None:
        return raw, {}
    inherited = {k: v for k, v in found.values.items() if k not in raw}
    return {**inherited, **raw}, {k: f"destinations.{found.destination}.defaults" for k in inherited}


def _shown(value: Any) -> str:
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json", by_alias=True, exclude_none=True)
    return json.dumps(value, ensure_ascii=False, default=str)


def resolved_lines(
    project: Any, activation_model: type[BaseModel], file_keys: Iterable[str], platform_keys: Iterable[str]
) -> list[str]:
    """Every activation's effective settings and where each comes from: ``activation`` (written there),
    ``destinations.X.defaults`` (inherited) or ``default`` (the tool's own), one line per setting."""
    out: list[str] = []
    file_keys, platform_keys = list(file_keys), list(platform_keys)
    for name, a in project.activations.items():
        dest = project.destinations.get(a.destination)
        platform = isinstance(dest, PlatformDestination)
        kind = f"{dest.type} platform" if platform else f"{getattr(dest, 'type', '?')} files"
        out.append(f"activations.{name}: {a.reads} -> destination '{a.destination}' ({kind})")
        inherited = project.inherited.get(name, {})
        by_alias = {f.alias or n: n for n, f in type(a).model_fields.items()}
        for key in allowed_keys(activation_model, platform, file_keys, platform_keys):
            attr = by_alias[key]
            origin = inherited.get(key) or ("activation" if attr in a.model_fields_set else "default")
            value = getattr(a, attr)
            if key == "sync_mode" and platform:
                value = a.platform_mode
            elif key == "run_type" and value is None:
                value = a.effective_run_type
            if value is None and origin == "default":
                continue
            out.append(f"  {key}: {_shown(value)}  ({origin})")
    return out
