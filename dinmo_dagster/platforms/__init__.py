"""Delivery SDK for API destinations (business platforms): one engine for every platform.

Adding a platform is one module plus one registration: the module defines its settings model (a
:class:`PlatformSettings` subclass) and its adapter (a :class:`Platform` subclass) and ends with
``register_platform("name", Settings, Adapter)``; its name goes in ``dinmo_dagster/platform_names.py`` so
the registry imports it on first lookup (projects that use no platform import none of them).
Ad-platform audience adapters build on ``audiences.py`` (the ``{name:}``/``{id:}`` audience model,
find-or-create by name, bearer auth from ``oauth.py``, the identifier-only activation checks).

Pure engine code: no Dagster import. The sync layer resolves ``{env: VAR}`` secrets, builds the
platform with :func:`build_platform`, feeds :func:`deliver` Arrow batches per operation with a
:class:`Journal`, and turns the :class:`DeliveryResult` into run metadata.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pydantic

from dinmo_dagster.platform_names import BUILTIN_PLATFORMS
from dinmo_dagster.platforms.base import (
    ATTRIBUTE_OPERATIONS,
    AUDIENCE_OPERATIONS,
    EVENT_OPERATIONS,
    BatchOutcome,
    DeliveryResult,
    FieldInfo,
    HttpResponse,
    JobHandle,
    Journal,
    Limits,
    OperationCounts,
    Platform,
    PlatformSettings,
    PreparedRequest,
    QuotaExhausted,
    RateLimitSetting,
    Record,
    RecordResult,
    ResponseKind,
    Signal,
)
from dinmo_dagster.platforms.engine import (
    ActivationSpec,
    InMemoryJournal,
    PreviewRequest,
    batch_records,
    check_connection,
    check_rejection_rate,
    deliver,
    mask_identifier,
    prepare_records,
    preview,
    validate_connection,
)
from dinmo_dagster.platforms.errors import (
    PlatformAuthError,
    PlatformConfigError,
    PlatformError,
    PlatformRequestError,
    QuotaExhaustedError,
    RejectionRateExceeded,
)
from dinmo_dagster.platforms.http import RetryPolicy, Transport
from dinmo_dagster.platforms.identifiers import IdentifierError, IdentifierSpec

__all__ = [
    "ATTRIBUTE_OPERATIONS",
    "AUDIENCE_OPERATIONS",
    "EVENT_OPERATIONS",
    "ActivationSpec",
    "BatchOutcome",
    "DeliveryResult",
    "FieldInfo",
    "HttpResponse",
    "IdentifierError",
    "IdentifierSpec",
    "InMemoryJournal",
    "JobHandle",
    "Journal",
    "Limits",
    "OperationCounts",
    "Platform",
    "PlatformAuthError",
    "PlatformConfigError",
    "PlatformError",
    "PlatformRequestError",
    "PlatformSettings",
    "PreparedRequest",
    "PreviewRequest",
    "QuotaExhausted",
    "QuotaExhaustedError",
    "RateLimitSetting",
    "Record",
    "RecordResult",
    "RegisteredPlatform",
    "RejectionRateExceeded",
    "ResponseKind",
    "RetryPolicy",
    "Signal",
    "Transport",
    "batch_records",
    "build_platform",
    "build_settings",
    "check_connection",
    "check_rejection_rate",
    "deliver",
    "get_platform",
    "mask_identifier",
    "platform_names",
    "prepare_records",
    "preview",
    "register_platform",
    "validate_connection",
]

# Modules of the platforms shipped with the package (each registers itself when imported).
_BUILTIN_MODULES = BUILTIN_PLATFORMS


@dataclass(frozen=True)
class RegisteredPlatform:
    """A platform known to the registry: its ``type`` name, settings model and adapter class."""

    name: str
    settings_model: type[PlatformSettings]
    adapter: type[Platform]


_registry: dict[str, RegisteredPlatform] = {}
_lock = threading.Lock()
_builtins_loaded = False


def register_platform(name: str, settings_model: type[PlatformSettings], adapter: type[Platform]) -> None:
    """Make ``name`` (a destination ``type``, snake case) deliver through ``adapter``.

    Registering the same name twice with another class is an error (two modules claiming one type).
    """
    if not name or name != name.lower() or not name.replace("_", "").isalnum():
        raise ValueError(f"platform name: found {name!r}; allowed: snake_case letters and digits")
    if not (isinstance(settings_model, type) and issubclass(settings_model, PlatformSettings)):
        raise TypeError(f"platform {name!r}: settings model must subclass PlatformSettings")
    if not (isinstance(adapter, type) and issubclass(adapter, Platform)):
        raise TypeError(f"platform {name!r}: adapter must subclass Platform")
    entry = RegisteredPlatform(name, settings_model, adapter)
    with _lock:
        existing = _registry.get(name)
        if existing is not None and existing != entry:
            raise ValueError(
                f"platform {name!r} is already registered by {existing.adapter.__module__}."
                f"{existing.adapter.__qualname__}"
            )
        _registry[name] = entry


def _load_builtins() -> None:
    global _builtins_loaded
    if _builtins_loaded:
        return
    for module in _BUILTIN_MODULES:
        importlib.import_module(f"{__name__}.{module}")
    _builtins_loaded = True


def platform_names() -> list[str]:
    """Every registered platform name, sorted."""
    _load_builtins()
    return sorted(_registry)


def get_platform(name: str) -> RegisteredPlatform:
    """The registered platform ``name``; PlatformConfigError listing the known ones otherwise."""
    _load_builtins()
    entry = _registry.get(name)
    if entry is None:
        known = ", ".join(sorted(_registry)) or "none"
        raise PlatformConfigError(f"type: found {name!r}; allowed platforms: {known}")
    return entry


def build_settings(name: str, raw: Mapping[str, Any], *, where: str = "") -> PlatformSettings:
    """Validate a destination's settings (``type`` excluded, secrets already resolved).

    ``where`` prefixes key paths in messages (``destinations.crm``): one line per problem, each
    with the key, what was found and what is allowed. Secret values are never quoted.
    """
    entry = get_platform(name)
    try:
        return entry.settings_model.model_validate(dict(raw))
    except pydantic.ValidationError as exc:
        lines = []
        for error in exc.errors():
            path = ".".join(str(p) for p in error["loc"])
            key = f"{where}.{path}" if where and path else (where or path)
            message = str(error["msg"]).removeprefix("Value error, ")
            found = (
                ""
                if message.startswith("found") or error["type"] in ("missing", "extra_forbidden")
                else _found(error)
            )
            lines.append(f"{key}: {message}{found}")
        raise PlatformConfigError("\n".join(lines)) from None


def _found(error: Mapping[str, Any]) -> str:
    value = error.get("input")
    loc = [str(p) for p in error.get("loc", ())]
    if any("token" in p or "secret" in p or "password" in p or "key" in p for p in loc):
        return ""  # never quote what may be a secret
    if isinstance(value, (str, int, float, bool)) and len(repr(value)) <= 80:
        return f" (found {value!r})"
    return ""


def build_platform(name: str, raw: Mapping[str, Any], *, destination: str = "") -> Platform:
    """The adapter of platform ``name`` for one destination's settings."""
    settings = build_settings(name, raw, where=f"destinations.{destination}" if destination else "")
    return get_platform(name).adapter(settings, destination=destination)
