"""Warehouses: one module per ``sources:`` type, each its settings model and its `Warehouse` adapter.

``base.py`` holds the `Warehouse` interface and what the connectors share (the DB-API cursor to Arrow
reader, errors, secret scrubbing); ``duckdb.py``, ``postgres.py``, ``redshift.py``, ``snowflake.py``,
``bigquery.py`` and ``databricks.py`` each end with their ``register_warehouse(...)`` line.
:func:`warehouse_from_config` builds the adapter of one source from its settings.

Plain Python: no Dagster import (the Dagster resource is ``dinmo_dagster.resources.WarehouseResource``).
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from typing import Any

import pydantic

from dinmo_dagster.connectors import ConnectorKind, connectors, find_connector
from dinmo_dagster.warehouses.base import HelperSchemas, SourceConfig, Warehouse, WarehouseError, one_line

__all__ = [
    "HelperSchemas",
    "SourceConfig",
    "Warehouse",
    "WarehouseError",
    "dialect_of",
    "warehouse_from_config",
]


def _accepts_none(annotation: Any) -> bool:
    return annotation is None or annotation is type(None) or (
        typing.get_origin(annotation) in (typing.Union, types.UnionType)
        and any(_accepts_none(arg) for arg in typing.get_args(annotation))
    )


def warehouse_from_config(source_name: str, settings: Mapping[str, Any]) -> Warehouse:
    """The `Warehouse` of one ``sources:`` entry: ``type`` plus that type's settings.

    A secret is ``{env: NAME}`` (read when a connection opens) or, from Python, a plain value. A null
    setting that cannot be None means "unset" (its default applies). Errors name the source and the
    key, never a value. No connection is opened.
    """
    raw = dict(settings)
    prefix = f"source '{source_name}'"
    connector = None if raw.get("type") is None else find_connector(ConnectorKind.WAREHOUSE, str(raw["type"]).lower())
    if connector is None:
        # listing the types imports every warehouse module: only for this message
        names = ", ".join(sorted(name for c in connectors(ConnectorKind.WAREHOUSE) for name in (c.type, *c.aliases)))
        if raw.get("type") is None:
            raise WarehouseError(f"{prefix}: missing `type` (one of {names})")
        raise WarehouseError(f"{prefix}: unknown type {raw['type']!r} (one of {names})")
    prefix = f"{prefix} ({connector.type})"
    model = connector.config_model
    fields = {info.alias or name: info for name, info in model.model_fields.items()}
    allowed = [key for key in fields if key != "type"]
    unknown = sorted(str(k) for k in raw if k not in fields)
    if unknown:
        raise WarehouseError(f"{prefix}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}")
    raw["type"] = connector.type
    for key, value in list(raw.items()):
        if value is None and not _accepts_none(fields[key].annotation):
            del raw[key]
    try:
        config = model.model_validate(raw)
    except pydantic.ValidationError as exc:
        problems = "; ".join(
            f"`{'.'.join(str(p) for p in err.get('loc', ())) or '?'}`: {one_line(err.get('msg', 'invalid'))}"
            for err in exc.errors(include_input=False, include_url=False)
        )
        raise WarehouseError(f"{prefix}: invalid configuration: {problems}") from None
    return connector.adapter(config, name=source_name)


def dialect_of(source: SourceConfig) -> str:
    """The sqlglot dialect of a source's warehouse."""
    connector = find_connector(ConnectorKind.WAREHOUSE, source.type)
    if connector is None:
        raise WarehouseError(f"unknown source type {source.type!r}")
    return connector.adapter.dialect
