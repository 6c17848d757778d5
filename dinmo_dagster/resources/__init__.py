"""Dagster resources: one per source (``source_<name>``) and one per destination (``destination_<name>``).

Thin wrappers, as ``dagster-duckdb``'s ``DuckDBResource`` is: a resource holds one connector's
settings (the YAML entry, its ``type`` included) and hands out the connector's adapter,
``WarehouseResource.get_warehouse()`` or ``DestinationResource.get_destination()``. The adapters
(``dinmo_dagster.warehouses``, ``dinmo_dagster.destinations``) do the work, and run without Dagster.

Secrets stay ``{env: NAME}`` in the resource config, so the Dagster UI and run records show the
variable's name only; the adapter reads the variable when it opens a connection
(``dinmo_dagster.secrets``). A resource built with an inline secret is refused.
"""

from __future__ import annotations

from typing import Any

import dagster as dg
from pydantic import Field, PrivateAttr

from dinmo_dagster import secrets
from dinmo_dagster.config import Project
from dinmo_dagster.connectors import ConnectorConfig, ConnectorKind, find_connector
from dinmo_dagster.destinations import FileDestination, destination_from_config
from dinmo_dagster.platform_connectors import PlatformDestination
from dinmo_dagster.warehouses import Warehouse, warehouse_from_config

__all__ = [
    "DestinationResource",
    "WarehouseResource",
    "build_resources",
    "destination_key",
    "destination_of",
    "platform_of",
    "source_key",
    "warehouse_of",
]


def source_key(name: str) -> str:
    """The resource key of source `name`."""
    return f"source_{name}"


def destination_key(name: str) -> str:
    """The resource key of destination `name`."""
    return f"destination_{name}"


def _refuse_inline_secrets(kind: ConnectorKind, name: Any, settings: Any) -> None:
    """A resource's settings are shown in the Dagster UI: a secret must be there as {env: NAME}.

    Checked before pydantic validates the resource: a pydantic error would quote the input, secret included.
    """
    if not isinstance(settings, dict):
        return
    connector = find_connector(kind, settings.get("type"))
    if connector is None:
        return  # an unknown type is reported, with the known ones, when the adapter is built
    inline = secrets.inline_secrets(connector.config_model, settings)
    if inline:
        what = "source" if kind is ConnectorKind.WAREHOUSE else "destination"
        raise ValueError(
            f"{what} '{name}': {', '.join(inline)}: secrets must not be written in resource config; found an "
            "inline value; allowed: {env: VARIABLE_NAME}"
        )


class WarehouseResource(dg.ConfigurableResource):
    """A ``sources:`` entry: holds its settings and hands out its `Warehouse` (``get_warehouse()``)."""

    source_name: str = Field(description="Name of the source in the project YAML; messages quote it.")
    settings: dict = Field(
        description=(
            "The source's settings as in the project YAML, `type` included (duckdb, postgres, snowflake,"
            " bigquery, redshift, databricks or a registered connector). Secrets are {env: NAME}, read from"
            " the environment when a connection opens."
        )
    )

    _warehouse: Warehouse | None = PrivateAttr(default=None)

    def __init__(self, **data: Any) -> None:
        _refuse_inline_secrets(ConnectorKind.WAREHOUSE, data.get("source_name"), data.get("settings"))
        super().__init__(**data)

    def get_warehouse(self) -> Warehouse:
        """The source's `Warehouse` (built once per resource; it opens a connection per operation).

        Raises WarehouseError naming the source and the key when the settings are invalid.
        """
        if self._warehouse is None:
            self._warehouse = warehouse_from_config(self.source_name, self.settings)
        return self._warehouse


class DestinationResource(dg.ConfigurableResource):
    """A ``destinations:`` entry: holds its settings and hands out its `FileDestination` (``get_destination()``)."""

    destination_name: str = Field(description="Name of the destination in the project YAML; messages quote it.")
    settings: dict = Field(
        description=(
            "The destination's settings as in the project YAML, `type` included (gcs, local or a registered"
            " connector). Secrets are {env: NAME}, read from the environment when a client is made."
        )
    )

    _destination: FileDestination | None = PrivateAttr(default=None)

    def __init__(self, **data: Any) -> None:
        for kind in (ConnectorKind.FILE_DESTINATION, ConnectorKind.PLATFORM):
            _refuse_inline_secrets(kind, data.get("destination_name"), data.get("settings"))
        super().__init__(**data)

    def get_destination(self) -> FileDestination:
        """The destination's `FileDestination` (built once per resource, with its client).

        Raises DestinationError naming the destination and the key when the settings are invalid.
        """
        if self._destination is None:
            self._destination = destination_from_config(self.destination_name, self.settings)
        return self._destination


def resource_settings(project: Project, config: ConnectorConfig) -> dict[str, Any]:
    """A ``sources:`` / ``destinations:`` entry as resource settings: the keys the YAML sets (an explicit
    null included), relative paths made absolute against the project directory, ``{env: NAME}`` kept."""
    resolved = config.with_paths_resolved(project.directory)
    return resolved.model_dump(mode="json", by_alias=True, exclude_unset=True) | {"type": config.type}


def build_resources(project: Project) -> dict[str, Any]:
    """One resource per source and per destination of the project."""
    resources: dict[str, Any] = {}
    for name, source in project.sources.items():
        resources[source_key(name)] = WarehouseResource(source_name=name, settings=resource_settings(project, source))
    for name, destination in project.destinations.items():
        resources[destination_key(name)] = DestinationResource(
            destination_name=name, settings=resource_settings(project, destination)
        )
    return resources


def warehouse_of(resources: Any, source: str) -> Warehouse:
    """The `Warehouse` of source `source` among initialized resources (``context.resources``)."""
    return getattr(resources, source_key(source)).get_warehouse()


def destination_of(resources: Any, destination: str) -> FileDestination | None:
    """The `FileDestination` of `destination` among initialized resources; None when it has none there
    (a step that does not deliver does not require it) or when it is an API platform (``platform_of``)."""
    resource = getattr(resources, destination_key(destination), None)
    if resource is None or platform_of(resources, destination) is not None:
        return None
    return resource.get_destination()


def platform_of(resources: Any, destination: str) -> PlatformDestination | None:
    """The settings of API platform destination `destination` among initialized resources (secrets still
    ``{env: NAME}``: read when the platform is built for a sync); None for a file destination."""
    resource = getattr(resources, destination_key(destination), None)
    settings = getattr(resource, "settings", None)
    connector = find_connector(ConnectorKind.PLATFORM, settings.get("type")) if isinstance(settings, dict) else None
    if connector is None:
        return None
    config = connector.config_model.model_validate(settings)
    assert isinstance(config, PlatformDestination)
    return config
