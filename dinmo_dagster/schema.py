"""The JSON Schema of ``dinmo.yaml``, generated from the pydantic models the loader validates with.

Editors that read JSON Schema (VS Code's YAML extension, JetBrains IDEs, anything on the
yaml-language-server) then complete keys and flag mistakes as you type: put this first line in the file::

    # yaml-language-server: $schema=<path or URL of dinmo.schema.json>

The package ships the schema as ``dinmo_dagster/dinmo.schema.json`` (``dinmo schema`` prints it; a test
fails when the file is stale). It holds every section (``sources``/``destinations`` as unions of every
connector's settings model, told apart by ``type``; ``models``, ``segments``, ``activations``, ``identity``,
``settings``...), secrets as ``{env: NAME}`` only (the plain-text form is for Python callers, and the loader
refuses it in the YAML), and each destination's ``defaults`` (the activation keys its kind takes,
``defaults.py``).

The schema checks the shape of one file; ``dinmo validate`` also checks what spans entries and files
(references, cross-key rules, templates, cron ranges) and reports every problem with its file and key.
Plain Python: no Dagster import.
"""

from __future__ import annotations

import json
import typing
from pathlib import Path
from typing import Annotated, Any, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, create_model

from dinmo_dagster import config
from dinmo_dagster.defaults import allowed_keys
from dinmo_dagster.platform_connectors import PlatformDestination

__all__ = ["SCHEMA_FILE", "project_schema", "schema_text"]

SCHEMA_FILE = Path(__file__).resolve().with_name("dinmo.schema.json")
_DRAFT = "https://json-schema.org/draft/2020-12/schema"
# The JSON Schema of pydantic's SecretStr: a plain secret, which the YAML never takes.
_PLAIN_SECRET = {"format": "password", "type": "string", "writeOnly": True}

Name = Annotated[str, Field(pattern=config.NAME_RE.pattern)]


def _union(models: dict[str, type[BaseModel]]) -> Any:
    """The settings models of one section, told apart by their ``type``."""
    members = tuple(dict.fromkeys(models.values()))
    return Annotated[Union[members], Field(discriminator="type")] if len(members) > 1 else members[0]  # noqa: UP007


def _project_model() -> type[BaseModel]:
    """A pydantic model of one project file: every section optional (a project may span several files)."""
    hints = typing.get_type_hints(config.Project)
    fields: dict[str, Any] = {}
    for section in config.SECTIONS:
        if section in ("sources", "destinations"):
            value: Any = dict[Name, _union(config.connector_models(section))]  # type: ignore[valid-type]
        elif section in config.SECTION_MODELS:
            value = dict[Name, config.SECTION_MODELS[section]]  # type: ignore[valid-type]
        else:  # settings, and the sections the loader reads whole (their type is the Project attribute's)
            value = hints[section]
        fields[section] = (value | None, None)
    return create_model("DinmoProject", __config__=ConfigDict(extra="forbid", title="dinmo.yaml"), **fields)


def _without_plain_secrets(node: Any) -> Any:
    """The schema with every ``anyOf`` member that is a plain secret removed: secrets are ``{env: NAME}``."""
    if isinstance(node, list):
        return [_without_plain_secrets(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: _without_plain_secrets(v) for k, v in node.items()}
    if isinstance(out.get("anyOf"), list) and _PLAIN_SECRET in out["anyOf"]:
        rest = [m for m in out["anyOf"] if m != _PLAIN_SECRET]
        del out["anyOf"]
        if len(rest) == 1:
            out.update(rest[0])
        else:
            out["anyOf"] = rest
    return out


def _add_defaults(schema: dict[str, Any]) -> None:
    """Give every destination's settings ``defaults``: the activation keys its kind takes (``defaults.py``)."""
    defs = schema["$defs"]
    activation = defs["Activation"]
    for platform, title in ((False, "FileActivationDefaults"), (True, "PlatformActivationDefaults")):
        keys = allowed_keys(config.Activation, platform, config.FILE_KEYS, config.PLATFORM_KEYS)
        defs[title] = {
            "additionalProperties": False,
            "type": "object",
            "title": title,
            "description": "Settings the activations to this destination inherit unless they write their own "
            "(each key replaced as a whole: a mapping is never merged).",
            "properties": {k: v for k, v in activation["properties"].items() if k in keys},
        }
    for model in dict.fromkeys(config.connector_models("destinations").values()):
        title = (
            "PlatformActivationDefaults"
            if issubclass(model, PlatformDestination)
            else "FileActivationDefaults"
        )
        defs[model.__name__].setdefault("properties", {})["defaults"] = {"$ref": f"#/$defs/{title}"}


def project_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a project file."""
    schema = TypeAdapter(_project_model()).json_schema(mode="validation")
    schema = _without_plain_secrets(schema)
    _add_defaults(schema)
    schema["description"] = (
        "A dinmo-dagster project file (dinmo.yaml). `dinmo validate` also checks "
        "references between entries and files."
    )
    return {"$schema": _DRAFT, **schema}


def schema_text() -> str:
    """The schema as the shipped file holds it: indented JSON, keys in a stable order, a final newline."""
    return json.dumps(project_schema(), indent=2, ensure_ascii=False) + "\n"
