"""Errors raised by the platform delivery SDK.

Every message names the destination (its name in the project YAML) and the platform, and never
contains a secret: texts that come from a platform's response pass through :func:`redact` with the
destination's secret values before they are put in a message.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "PlatformAuthError",
    "PlatformConfigError",
    "PlatformError",
    "PlatformRequestError",
    "QuotaExhaustedError",
    "RejectionRateExceeded",
    "redact",
]

# Texts quoted from a platform (error bodies can be long) are cut to this many characters.
MAX_QUOTED_CHARS = 300


class PlatformError(Exception):
    """Base class of the SDK's errors; the message is safe to show and to log."""


class PlatformConfigError(PlatformError):
    """Settings or an activation that cannot work with the platform (found vs allowed)."""


class PlatformAuthError(PlatformError):
    """The platform refused the credentials (HTTP 401) or their permissions (HTTP 403).

    Raised at the first such answer, without retries: the sync stops and names the destination and
    the platform's own message, never the token.
    """


class PlatformRequestError(PlatformError):
    """A request failed for good: retries of a transient error ran out, or the platform answered
    something that no retry can fix (unknown object type, malformed request)."""


class QuotaExhaustedError(PlatformError):
    """The platform says a daily (or hourly) quota ran out. The engine turns it into a
    :class:`~dinmo_dagster.platforms.base.QuotaExhausted` outcome: a partial success."""


class RejectionRateExceeded(PlatformError):
    """More than ``max_rejected_pct`` of the records sent were rejected by the platform."""


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every secret value replaced by ``***`` and cut to a readable length."""
    for secret in secrets:
        # Short values would mask ordinary words; no real token is that short.
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    text = " ".join(text.split())
    if len(text) > MAX_QUOTED_CHARS:
        text = text[: MAX_QUOTED_CHARS - 3] + "..."
    return text
