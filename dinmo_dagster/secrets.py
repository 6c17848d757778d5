"""Secrets: the ``{env: NAME}`` reference and the one place that reads it.

A connector setting that holds a secret (a password, a token, a private key, a service account key)
is typed :data:`Secret`: in the project YAML it must be written ``{env: NAME}`` (an :class:`EnvRef`,
the loader refuses an inline value); built in Python it may also be a plain value, kept in a
:class:`pydantic.SecretStr` so that ``repr`` never shows it.

:func:`resolve` turns a setting into its plain value when a connection opens, and nowhere else: the
project, the Dagster resources' config, run metadata and logs only ever hold the variable's name, and
a variable changed between two runs is read anew. :func:`secret_values` and :func:`scrub` keep the
resolved values out of messages.

Plain Python: no Dagster import.
"""

from __future__ import annotations

import base64
import json
import os
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr

__all__ = [
    "EnvRef",
    "MissingSecret",
    "Secret",
    "decode_base64_text",
    "inline_secrets",
    "resolve",
    "scrub",
    "secret_fields",
    "secret_values",
]


class EnvRef(BaseModel):
    """A value read from an environment variable when it is used: ``{env: NAME}``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    env: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]


Secret = SecretStr | EnvRef
"""The type of a secret setting: ``{env: NAME}``, or (built in Python, never in the YAML) a plain value."""

# Resolved values shorter than this are not scrubbed: replacing "a" or "12" would garble messages.
_MIN_SCRUBBED = 3


class MissingSecret(LookupError):
    """An ``{env: NAME}`` setting whose variable is not set. The message names the variable and the key."""


def resolve(value: Any, *, key: str) -> Any:
    """The plain value of a setting: an EnvRef's variable, a SecretStr's text, anything else unchanged.

    Raises :class:`MissingSecret` ("environment variable 'NAME' (for `key`) is not set") when the
    variable is unset.
    """
    if isinstance(value, EnvRef):
        found = os.environ.get(value.env)
        if found is None:
            raise MissingSecret(f"environment variable {value.env!r} (for `{key}`) is not set")
        return found
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    return value


def _holds_secret(annotation: Any) -> bool:
    """Whether a field's annotation is, or is a union holding, SecretStr."""
    if annotation is SecretStr:
        return True
    if typing.get_origin(annotation) in (typing.Union, types.UnionType, Annotated):
        return any(_holds_secret(arg) for arg in typing.get_args(annotation))
    return False


def secret_fields(model: type[BaseModel]) -> tuple[str, ...]:
    """The YAML keys of ``model`` that hold secrets (fields typed :data:`Secret`)."""
    return tuple(
        info.alias or name for name, info in model.model_fields.items() if _holds_secret(info.annotation)
    )


def inline_secrets(model: type[BaseModel], raw: Mapping[str, Any]) -> list[str]:
    """The secret keys of ``raw`` (settings for ``model``) written as a plain value instead of ``{env: NAME}``."""
    return [key for key in secret_fields(model) if isinstance(raw.get(key), str)]


def _variants(value: str) -> list[str]:
    """``value`` and the parts of it a message could quote alone: a base64 key decoded, the private key
    inside a service account JSON and the lines of its PEM body."""
    found = [value]
    decoded = decode_base64_text(value)
    if decoded:
        found.append(decoded)
    for candidate in (value, decoded):
        if not candidate:
            continue
        try:
            info = json.loads(candidate)
        except (ValueError, TypeError):
            continue
        if isinstance(info, dict):
            for key in ("private_key", "private_key_id", "client_secret", "refresh_token"):
                if isinstance(info.get(key), str):
                    found.append(info[key])
                    found.extend(line for line in info[key].splitlines() if len(line) >= 16)
    return found


def decode_base64_text(value: str) -> str | None:
    """The UTF-8 text that ``value`` encodes in base64, or None when it is not such an encoding."""
    try:
        return base64.b64decode(value, validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None


def secret_values(config: BaseModel, *, every_env_ref: bool = False) -> list[str]:
    """The resolved secrets of ``config`` to scrub from messages, longest first.

    The secret fields' values (and their parts, see :func:`_variants`); with ``every_env_ref``, also
    the value of every other ``{env: NAME}`` setting (a user name or an account read from the
    environment). Unset variables are skipped.
    """
    values: list[str] = []
    secret = set(secret_fields(type(config)))
    for name, info in type(config).model_fields.items():
        value = getattr(config, name, None)
        if (info.alias or name) not in secret and not (every_env_ref and isinstance(value, EnvRef)):
            continue
        try:
            plain = resolve(value, key=info.alias or name)
        except MissingSecret:
            continue
        if plain:
            values.extend(_variants(str(plain)))
    return sorted({v for v in values if len(v) >= _MIN_SCRUBBED}, key=len, reverse=True)


def scrub(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every secret replaced by ``***`` (give them longest first, as secret_values does)."""
    for secret in secrets:
        text = text.replace(secret, "***")
    return text
