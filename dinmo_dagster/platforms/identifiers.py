"""Identifier normalization and hashing, as advertising and CRM platforms document them.

- e-mail: trimmed and lower-cased, then SHA-256 (lower-case hex);
- phone: parsed with Google's ``phonenumbers`` library (the record's own ``+CC`` prefix, or the
  activation's ``default_country`` for national numbers), formatted E.164 (``+33612345678``), then
  SHA-256;
- text: trimmed and lower-cased, then SHA-256 (names, cities...);
- id: sent as the warehouse holds it (external ids, CRM unique properties); hashed only if asked.

A value that already is a SHA-256 hex digest (64 hexadecimal characters) is taken as hashed upstream
and passes unchanged (lower-cased). When a platform asks for hashes, only the digest leaves: the raw
value is never put in a request, a log line or a rejection reason.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "IdentifierError",
    "IdentifierSpec",
    "is_sha256_hex",
    "normalize_email",
    "normalize_phone",
    "prepare_identifier",
    "sha256_hex",
]

IdentifierKind = Literal["email", "phone", "text", "id"]

_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")
# Deliberately loose: one '@' with text on both sides and a dot in the domain. Platforms run their
# own checks; this one only keeps obvious garbage from being hashed and counted as a match attempt.
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")


class IdentifierError(ValueError):
    """An identifier value that cannot be normalized. The message never contains the value."""


@dataclass(frozen=True)
class IdentifierSpec:
    """How a platform wants one identifier: its kind and whether it must be hashed.

    ``optional``: a record may lack it (platforms that match on any of several keys): an empty
    value leaves it out instead of rejecting the record. ``normalize(value, default_country)``: the
    platform's own normalization, used instead of the kind's (it raises IdentifierError).
    """

    kind: IdentifierKind
    hashed: bool = False
    optional: bool = False
    normalize: Callable[[str, str | None], str] | None = None


def sha256_hex(text: str) -> str:
    """Lower-case hex SHA-256 of ``text`` encoded as UTF-8."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def is_sha256_hex(value: str) -> bool:
    """True when ``value`` (surrounding spaces ignored) is 64 hexadecimal characters."""
    return bool(_SHA256_HEX.fullmatch(value.strip()))


def normalize_email(value: str) -> str:
    """Trim and lower-case an e-mail address; raise IdentifierError when it is not one."""
    email = value.strip().lower()
    if not _EMAIL.fullmatch(email):
        raise IdentifierError("not an e-mail address")
    return email


def normalize_phone(value: str, default_country: str | None = None) -> str:
    """A phone number in E.164 form (``+33612345678``).

    ``default_country`` (ISO 3166 alpha-2, e.g. ``FR``) is used for numbers written without their
    international prefix; raise IdentifierError when the number is not a valid one.
    """
    import phonenumbers  # imported on use: only activations that send phone numbers need it

    region = default_country.upper() if default_country else None
    try:
        parsed = phonenumbers.parse(value.strip(), region)
    except phonenumbers.NumberParseException as exc:
        hint = "" if region or value.strip().startswith("+") else " (no default_country for national numbers)"
        raise IdentifierError(f"not a phone number{hint}") from exc
    if not phonenumbers.is_valid_number(parsed):
        raise IdentifierError("not a valid phone number")
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def prepare_identifier(spec: IdentifierSpec, value: Any, *, default_country: str | None = None) -> str:
    """The text a platform receives for one identifier value (normalized and hashed per ``spec``).

    Raise IdentifierError for an empty or invalid value. Identifiers that are not hashed go as the
    warehouse holds them (as text): the platform matches them with its own rules.
    """
    if value is None:
        raise IdentifierError("empty")  # a NULL, never the text "None"
    text = value if isinstance(value, str) else str(value)
    if not text.strip():
        raise IdentifierError("empty")
    if spec.normalize is not None:
        if spec.hashed and is_sha256_hex(text):
            return text.strip().lower()
        normalized = spec.normalize(text, default_country)
        return sha256_hex(normalized) if spec.hashed else normalized
    if not spec.hashed:
        return text
    if is_sha256_hex(text):
        return text.strip().lower()
    if spec.kind == "email":
        return sha256_hex(normalize_email(text))
    if spec.kind == "phone":
        return sha256_hex(normalize_phone(text, default_country))
    if spec.kind == "text":
        return sha256_hex(text.strip().lower())
    return sha256_hex(text.strip())
