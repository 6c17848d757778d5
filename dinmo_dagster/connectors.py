"""The connector registry: every warehouse and destination type a project's YAML can name.

A connector is one module holding its settings model (a :class:`ConnectorConfig` subclass whose
``type`` is a ``Literal`` of its name), its adapter (a ``Warehouse``, a ``FileDestination``, or later
a ``Platform``) and, last, one registration line::

    register_warehouse("duckdb", DuckDBSource, DuckDBWarehouse)

The project loader validates a ``sources:`` / ``destinations:`` entry with the settings model its
``type`` names here (the discriminated union of every registered model), and the Dagster resources hand
out the adapter built from those settings. Nothing else lists connector types.

The built-in connectors are loaded by type name (``_BUILTIN_MODULES``: each type and the module that
registers it): looking up ``duckdb`` imports ``dinmo_dagster.warehouses.duckdb`` and no other connector,
so a project pays only for the connectors it names. Listing every connector of a kind (messages that
name the allowed types) imports them all. This module imports none of them and each of them imports
this one. A connector of your own registers itself when its module is imported, before the project is
loaded.

API platforms (``dinmo_dagster.platforms``, with their own ``register_platform``) are the third kind,
:attr:`ConnectorKind.PLATFORM`, and share the ``destinations:`` section with file destinations:
``dinmo_dagster.platform_connectors`` registers each of them here, its settings model with secrets
written ``{env: VAR}``.

Plain Python: no Dagster import.
"""

from __future__ import annotations

import enum
import importlib
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict
from typing_extensions import Self

from dinmo_dagster.platform_names import BUILTIN_PLATFORMS

__all__ = [
    "Connector",
    "ConnectorConfig",
    "ConnectorKind",
    "connectors",
    "find_connector",
    "register",
    "register_file_destination",
    "register_warehouse",
]


class ConnectorKind(str, enum.Enum):
    """What a connector connects: the project section it belongs to follows from it."""

    WAREHOUSE = "warehouse"
    FILE_DESTINATION = "file destination"
    PLATFORM = "platform"

    @property
    def section(self) -> str:
        """The project YAML section whose entries name connectors of this kind."""
        return "sources" if self is ConnectorKind.WAREHOUSE else "destinations"


class ConnectorConfig(BaseModel):
    """The settings of one ``sources:`` or ``destinations:`` entry: what the YAML holds, secrets unresolved.

    Subclasses declare ``type: Literal["name"]`` and their own settings; unknown keys are errors.
    """

    # a setting's docstring is its description (shown by tools that document the YAML)
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True, use_attribute_docstrings=True)

    type: str

    path_fields: ClassVar[tuple[str, ...]] = ()
    """Settings holding a local path; relative ones are relative to the project directory."""

    def with_paths_resolved(self, directory: Path) -> Self:
        """These settings with every relative path in ``path_fields`` made absolute against ``directory``."""
        update: dict[str, Any] = {}
        for name in self.path_fields:
            value = getattr(self, name)
            if isinstance(value, str):
                path = Path(value).expanduser()
                update[name] = str(path if path.is_absolute() else directory / path)
        return self.model_copy(update=update) if update else self


@dataclass(frozen=True)
class Connector:
    """A registered connector: its kind, ``type`` name (and older spellings), settings model and adapter."""

    kind: ConnectorKind
    type: str
    config_model: type[ConnectorConfig]
    adapter: type
    aliases: tuple[str, ...] = ()


# The connectors shipped with the package: each type name (and older spelling) -> the module whose
# import registers it, in the order messages list the types. ``module:function``: the module's import
# registers nothing (the project loader imports its classes), calling ``function()`` does.
_BUILTIN_MODULES: dict[ConnectorKind, dict[str, str]] = {
    ConnectorKind.WAREHOUSE: {
        **{name: f"dinmo_dagster.warehouses.{name}"
           for name in ("duckdb", "postgres", "snowflake", "bigquery", "redshift", "databricks")},
        "postgresql": "dinmo_dagster.warehouses.postgres",
    },
    ConnectorKind.FILE_DESTINATION: {name: f"dinmo_dagster.destinations.{name}" for name in ("gcs", "local")},
    # one call registers every platform of dinmo_dagster.platforms
    ConnectorKind.PLATFORM: {name: "dinmo_dagster.platform_connectors:register_platforms"
                             for name in BUILTIN_PLATFORMS},
}

_registry: dict[ConnectorKind, dict[str, Connector]] = {kind: {} for kind in ConnectorKind}
_lock = threading.RLock()
_loaded: set[str] = set()  # entries of _BUILTIN_MODULES already imported (or called)


def register(
    kind: ConnectorKind,
    type_name: str,
    config_model: type[ConnectorConfig],
    adapter: type,
    *,
    aliases: tuple[str, ...] = (),
) -> Connector:
    """Make ``type: type_name`` in the ``kind.section`` section mean ``config_model`` and ``adapter``.

    ``config_model.type`` must be ``Literal[type_name]``. Registering a name again with other classes is
    an error (two modules claiming one type); the same registration again (a module reloaded) is not.
    """
    if not type_name or type_name != type_name.lower() or not type_name.replace("_", "").isalnum():
        raise ValueError(f"connector type: found {type_name!r}; allowed: snake_case letters and digits")
    if not (isinstance(config_model, type) and issubclass(config_model, ConnectorConfig)):
        raise TypeError(f"connector {type_name!r}: the settings model must subclass ConnectorConfig")
    literal = getattr(config_model.model_fields["type"].annotation, "__args__", ())
    if tuple(literal) != (type_name,):
        raise TypeError(f"connector {type_name!r}: {config_model.__name__}.type must be Literal[{type_name!r}]")
    entry = Connector(kind, type_name, config_model, adapter, tuple(aliases))
    with _lock:
        for name in (type_name, *aliases):
            existing = _find(kind, name)
            if existing is not None and existing != entry:
                raise ValueError(
                    f"{kind.value} type {name!r} is already registered by "
                    f"{existing.adapter.__module__}.{existing.adapter.__qualname__}"
                )
        _registry[kind][type_name] = entry
    return entry


def register_warehouse(
    type_name: str, config_model: type[ConnectorConfig], adapter: type, *, aliases: tuple[str, ...] = ()
) -> Connector:
    """Register a warehouse (a ``sources:`` type); see :func:`register`."""
    return register(ConnectorKind.WAREHOUSE, type_name, config_model, adapter, aliases=aliases)


def register_file_destination(type_name: str, config_model: type[ConnectorConfig], adapter: type) -> Connector:
    """Register a file destination (a ``destinations:`` type that receives files); see :func:`register`."""
    return register(ConnectorKind.FILE_DESTINATION, type_name, config_model, adapter)


def _load_builtin(entry: str) -> None:
    """Import one ``_BUILTIN_MODULES`` entry (and call its function), once per process."""
    if entry in _loaded:
        return
    with _lock:
        if entry in _loaded:
            return
        module, _, function = entry.partition(":")
        loaded = importlib.import_module(module)  # a module registers its connectors on import...
        if function:
            getattr(loaded, function)()  # ...or when this function of it is called
        _loaded.add(entry)


def _find(kind: ConnectorKind, name: str) -> Connector | None:
    found = _registry[kind].get(name)
    if found is None:
        found = next((c for c in _registry[kind].values() if name in c.aliases), None)
    return found


def connectors(kind: ConnectorKind) -> list[Connector]:
    """The connectors of ``kind``: the built-in ones in their documented order, then the others."""
    for entry in dict.fromkeys(_BUILTIN_MODULES.get(kind, {}).values()):
        _load_builtin(entry)
    builtin = list(dict.fromkeys(_BUILTIN_MODULES.get(kind, {}).values()))
    found = list(_registry[kind].values())
    # the built-ins in their listed order whatever the import order was; then the others as registered
    return sorted(found, key=lambda c: builtin.index(c.adapter.__module__) if c.adapter.__module__ in builtin
                  else len(builtin) + found.index(c))


def find_connector(kind: ConnectorKind, type_name: Any) -> Connector | None:
    """The connector of ``kind`` named ``type_name`` (or one of its aliases); None for anything else.

    A built-in type is imported now if it was not (only its own module); an unknown name imports
    nothing and is looked up among the connectors registered so far.
    """
    if not isinstance(type_name, str):
        return None
    entry = _BUILTIN_MODULES.get(kind, {}).get(type_name)
    if entry is not None:
        _load_builtin(entry)
    return _find(kind, type_name)
