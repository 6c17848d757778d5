"""File destinations: one module per ``destinations:`` type that receives files.

``base.py`` holds the `FileDestination` interface, `DestinationError` and the retry policy of network
destinations; ``gcs.py`` (Google Cloud Storage) and ``local.py`` (a local folder) each end with their
``register_file_destination(...)`` line. :func:`destination_from_config` builds the adapter of one
destination from its settings.

Plain Python: no Dagster import (the Dagster resource is ``dinmo_dagster.resources.DestinationResource``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pydantic

from dinmo_dagster.connectors import ConnectorKind, connectors, find_connector
from dinmo_dagster.destinations.base import (
    DestinationError,
    FileDestination,
    FileDestinationConfig,
)

__all__ = [
    "DestinationError",
    "FileDestination",
    "FileDestinationConfig",
    "destination_from_config",
]


def destination_from_config(name: str, settings: Mapping[str, Any]) -> FileDestination:
    """The `FileDestination` of one ``destinations:`` entry: ``type`` plus that type's settings.

    Unknown types, unknown keys, missing required keys and invalid values raise DestinationError naming
    the destination and the keys; values are never echoed (they may be secrets), except in the
    settings model's own checks (a bucket name). No network call is made.
    """
    prefix = f"destination '{name}'"
    if not isinstance(settings, Mapping):
        raise DestinationError(f"{prefix}: expected a mapping with a 'type' key")
    kind = settings.get("type")
    connector = find_connector(ConnectorKind.FILE_DESTINATION, kind)
    if connector is None:
        types = ", ".join(sorted(c.type for c in connectors(ConnectorKind.FILE_DESTINATION)))
        raise DestinationError(f"{prefix}: unknown type {kind!r}; expected one of {types}")
    model = connector.config_model
    fields = {info.alias or key: info for key, info in model.model_fields.items()}
    allowed = sorted(key for key in fields if key != "type")
    unknown = sorted(set(settings) - set(fields))
    if unknown:
        raise DestinationError(
            f"{prefix}: unknown key(s) {', '.join(unknown)} for type {kind}; allowed: {', '.join(allowed)}"
        )
    missing = sorted(key for key, info in fields.items() if info.is_required() and key not in settings)
    if missing:
        raise DestinationError(f"{prefix}: missing required key(s) {', '.join(missing)} for type {kind}")
    try:
        config = model.model_validate(dict(settings))
    except pydantic.ValidationError as exc:
        errors = exc.errors(include_input=False, include_url=False)
        # pydantic's own messages may quote the input (a key): name the settings only. The model's
        # checks (value_error) word their message themselves and quote no secret.
        typed = [err for err in errors if err["type"] != "value_error"]
        if typed:
            fields_named = sorted({str(err["loc"][0]) for err in typed if err.get("loc")})
            detail = f" ({', '.join(fields_named)})" if fields_named else ""
            raise DestinationError(f"{prefix}: invalid settings for type {kind}{detail}") from None
        own = "; ".join(str(err["msg"]).removeprefix("Value error, ") for err in errors)
        raise DestinationError(f"{prefix}: {own}") from None
    return connector.adapter(config, name=name)
