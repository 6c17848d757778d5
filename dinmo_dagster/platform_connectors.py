"""API platforms as connectors: each registered platform is a ``destinations:`` type.

For every platform of the delivery SDK (``dinmo_dagster.platforms``: hubspot, braze, meta_ads,
firestore) :func:`register_platforms` registers a :class:`ConnectorConfig` built from the platform's
settings model (the connector registry calls it the first time a project names a platform type):
the same keys, except that a secret (``access_token``, ``api_key``, ``service_account_json``) is
written ``{env: VAR}`` in the YAML and read only when the platform is built for a sync
(:meth:`PlatformDestination.build`). The project loader asks :meth:`PlatformDestination.problems` for
what the platform's own validators refuse (an unknown HubSpot object, a Meta ad account that is not
``act_<digits>``...), with each key path.

Plain Python: no Dagster import.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import pydantic
from pydantic import SecretStr

from dinmo_dagster import platforms, secrets
from dinmo_dagster.connectors import ConnectorConfig, ConnectorKind, register
from dinmo_dagster.platforms import Platform, PlatformConfigError, PlatformSettings

__all__ = ["PlatformDestination", "audience_platforms", "platform_destination_model", "register_platforms"]

# A stand-in for a secret while the project is validated: the variable is read only at sync time.
_PLACEHOLDER = "dinmo-placeholder-secret"


class PlatformDestination(ConnectorConfig):
    """The settings of a ``destinations:`` entry whose ``type`` is an API platform."""

    platform: ClassVar[str] = ""
    settings_model: ClassVar[type[PlatformSettings]] = PlatformSettings
    secret_keys: ClassVar[tuple[str, ...]] = ()

    def _raw(self, resolve: bool, extra: Mapping[str, Any] | None = None,
             optional_secrets: bool = False) -> dict[str, Any]:
        raw: dict[str, Any] = {}
        for name in self.model_fields_set:
            if name == "type":
                continue
            value = getattr(self, name)
            if name in self.secret_keys:
                required = self.settings_model.model_fields[name].is_required()
                if value is None or not (resolve or required or optional_secrets):
                    continue  # an optional secret is left out while validating: its checks need the value
                value = secrets.resolve(value, key=name) if resolve else _PLACEHOLDER
            elif isinstance(value, pydantic.BaseModel):
                value = value.model_dump(exclude_unset=True)
            raw[name] = value
        raw.update(extra or {})
        return raw

    def problems(self, extra: Mapping[str, Any] | None = None) -> list[str]:
        """What the platform's settings model refuses, one ``key: message`` line each (secrets unread)."""
        try:
            platforms.build_settings(self.platform, self._raw(False, extra))
        except PlatformConfigError as exc:
            return [line for line in str(exc).splitlines() if not line.split(":")[0] in self.secret_keys]
        return []

    def checked_platform(self, extra: Mapping[str, Any] | None = None) -> Platform | None:
        """The adapter as these settings make it, built without reading a secret (a placeholder stands in),
        for the checks made without connecting; None when the settings are invalid (problems() says why)."""
        try:
            return platforms.build_platform(self.platform, self._raw(False, extra))
        except PlatformConfigError:
            # An optional secret the YAML sets may be needed by the settings (an OAuth refresh_token):
            # stand in for it; settings that are really invalid are reported by problems().
            try:
                return platforms.build_platform(self.platform, self._raw(False, extra, optional_secrets=True))
            except PlatformConfigError:
                return None

    def activation_problems(self, match: Mapping[str, str], mapping: Mapping[str, str],
                            extra: Mapping[str, Any] | None = None) -> list[str]:
        """What the platform refuses in an activation's ``match`` / ``identifiers`` and ``mapping``, checked
        without connecting (``key: message`` lines); none when the settings themselves are invalid."""
        platform = self.checked_platform(extra)
        return platform.validate_activation(match, mapping) if platform is not None else []

    def operations(self, extra: Mapping[str, Any] | None = None) -> tuple[str, ...]:
        """The operations this destination offers: its adapter's as the settings narrow them (an Intercom
        ``object: companies`` offers upsert and delete only), else those of its service."""
        platform = self.checked_platform(extra)
        if platform is not None:
            return tuple(platform.operations)
        adapter = platforms.get_platform(self.platform).adapter
        return tuple(adapter.services.get(getattr(self, "service", ""), ()))

    def build(self, destination: str, extra: Mapping[str, Any] | None = None) -> Platform:
        """The platform adapter, secrets read from the environment now (MissingSecret when unset).

        ``extra`` holds settings the activation brings (its ``audience``).
        """
        return platforms.build_platform(self.platform, self._raw(True, extra), destination=destination)


    def audience_setting(self, audience: Mapping[str, Any]) -> Any:
        """An activation's ``audience`` (``name`` or ``id``, maybe ``description``) as this platform's settings
        take it: the mapping where the ``audience`` setting is a model (a list found by name or used by id),
        else the name or id alone."""
        annotation = self.settings_model.model_fields["audience"].annotation
        takes_model = any(isinstance(t, type) and issubclass(t, pydantic.BaseModel)
                          for t in (annotation, *getattr(annotation, "__args__", ())))
        return dict(audience) if takes_model else audience.get("name") or audience.get("id")


def audience_platforms() -> list[str]:
    """The platform types whose destinations take an activation's ``audience`` (every platform loaded:
    for an error message)."""
    return [n for n in platforms.platform_names()
            if "audience" in platforms.get_platform(n).settings_model.model_fields]


def _holds_secret_str(annotation: Any) -> bool:
    return annotation is SecretStr or SecretStr in getattr(annotation, "__args__", ())


def platform_destination_model(name: str, settings_model: type[PlatformSettings]) -> type[PlatformDestination]:
    """The destination settings model of platform ``name``: its settings, secrets as ``{env: VAR}``."""
    fields: dict[str, Any] = {"type": (Literal[name], ...)}  # type: ignore[valid-type]
    secret_keys = []
    for field_name, info in settings_model.model_fields.items():
        annotation = info.annotation
        copied = pydantic.fields.FieldInfo.merge_field_infos(info)
        if _holds_secret_str(annotation):
            secret_keys.append(field_name)
            annotation = secrets.Secret if info.is_required() else secrets.Secret | None
        fields[field_name] = (annotation, copied)
    model = pydantic.create_model(  # type: ignore[call-overload]
        f"{settings_model.__name__.removesuffix('Settings')}Destination",
        __base__=PlatformDestination,
        __module__=__name__,
        **fields,
    )
    model.platform = name
    model.settings_model = settings_model
    model.secret_keys = tuple(secret_keys)
    return model


def register_platforms() -> None:
    """Register every platform of ``dinmo_dagster.platforms`` as a ``destinations:`` type.

    Called by the connector registry when a project names a platform type (or a message lists every
    type), not on import: the project loader imports this module's classes, and a project with file
    destinations only builds no platform model and imports no platform module.
    """
    for name in platforms.platform_names():
        entry = platforms.get_platform(name)
        register(ConnectorKind.PLATFORM, name, platform_destination_model(name, entry.settings_model), entry.adapter)
