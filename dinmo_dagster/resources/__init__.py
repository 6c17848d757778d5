"""Warehouse and destination resources, built from the project's YAML.

Each source becomes the resource ``source_<name>`` and each destination ``destination_<name>``.
Secrets written as ``{env: NAME}`` become Dagster ``EnvVar``s, read at run time.
"""

from __future__ import annotations

from typing import Any

import dagster as dg

from dinmo_dagster.config import EnvRef, Project


def source_key(name: str) -> str:
    """The resource key of source `name`."""
    return f"source_{name}"


def destination_key(name: str) -> str:
    """The resource key of destination `name`."""
    return f"destination_{name}"


def _plain(project: Project, cfg: Any, path_keys: tuple[str, ...], keep_null: bool = False) -> dict[str, Any]:
    """The config model as a dict for a resource: EnvRef -> EnvVar, relative paths resolved.

    Unset settings are left out, so the resource's defaults apply. With `keep_null`, a setting the YAML
    sets to null explicitly is kept as None (a DuckDB source's `memory_limit: null`: DuckDB's own default).
    """
    out: dict[str, Any] = {}
    for name, info in type(cfg).model_fields.items():
        if name == "helper_schemas":
            continue
        value = getattr(cfg, name)
        key = info.alias or name
        if isinstance(value, EnvRef):
            value = dg.EnvVar(value.env)
        elif key in path_keys and isinstance(value, str):
            value = str(project.resolve_path(value))
        if value is not None or (keep_null and name in cfg.model_fields_set):
            out[key] = value
    return out


def source_config(project: Project, name: str) -> dict[str, Any]:
    """The settings of source `name` for `warehouse_from_config` (with its `type`)."""
    return _plain(
        project, project.sources[name], ("path", "private_key_path", "service_account_file"), keep_null=True
    )


def destination_config(project: Project, name: str) -> dict[str, Any]:
    """The settings of destination `name` for `destination_from_config` (with its `type`)."""
    return _plain(project, project.destinations[name], ("path", "service_account_file"))


def build_resources(project: Project) -> dict[str, Any]:
    """One resource per source and per destination of the project."""
    from dinmo_dagster.resources.destinations import destination_from_config
    from dinmo_dagster.resources.warehouses import warehouse_from_config

    resources: dict[str, Any] = {}
    for name in project.sources:
        resources[source_key(name)] = warehouse_from_config(name, source_config(project, name))
    for name in project.destinations:
        resources[destination_key(name)] = destination_from_config(name, destination_config(project, name))
    return resources
