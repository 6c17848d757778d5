"""OAuth 2.0 access tokens for platforms that hand out short-lived ones (Snapchat, Pinterest...).

Public API (small on purpose; an adapter needs three things):

- :class:`OAuthSettings`: subclass it instead of ``PlatformSettings``. Adds ``client_id``,
  ``client_secret`` (secret), ``refresh_token`` (secret; required for the ``refresh_token`` grant),
  ``grant_type`` (``refresh_token``, the default, or ``client_credentials``), ``scope`` (optional)
  and ``token_url`` (the platform's token endpoint; default: the adapter's ``default_token_url``).
- :class:`OAuthToken`: one per adapter instance, built in its ``__init__`` (``client_auth="basic"``
  for a platform that wants the client credentials in an HTTP Basic header instead of the body)::

      self.oauth = OAuthToken(self, default_token_url="https://accounts.example.com/oauth2/token")

  ``self.oauth.headers()`` is the ``Authorization: Bearer <access token>`` header (return it from
  ``auth_headers()``); ``self.oauth.renew(sent)`` gets a new token after a 401 that says the token
  expired (return it from ``renew_auth()``: the transport then sends the request once more).
- :func:`token_expired`: whether a 401 says the access token expired or is invalid (the usual
  ``WWW-Authenticate: Bearer error="invalid_token"`` or a body that says so).

How tokens are obtained and kept: ``POST token_url`` with a form body ``grant_type=refresh_token``
(or ``client_credentials``), ``client_id``, ``client_secret``, ``refresh_token`` (RFC 6749 sections
4.4 and 6; the client credentials go in the body, as Snap documents, or with ``client_auth="basic"``
only in an HTTP Basic header, RFC 6749 section 2.3.1, never both). The
answer's ``access_token`` is kept in memory only (never written, logged or put in a message) and
renewed before its ``expires_in`` runs out: when less than a margin is left (a fifth of its
lifetime, at most 60 seconds), so a long sync never sends an expired token. An answer without
``expires_in`` is assumed to last one hour. A rotated ``refresh_token`` in the answer replaces the
configured one for the rest of the process (not persisted: platforms that rotate also accept the
previous one until it is used, and the project YAML reads it from the environment).

Thread safety: the engine's workers share one token; the first that finds it stale renews it while
the others wait for that one renewal (one token request, not one per worker). A 401 renews only
when the token that got it is still the current one (workers that used the same stale token get
the one new token).

A token endpoint that refuses the refresh token or the client (HTTP 400/401, ``invalid_grant``,
``invalid_client``...) fails at once with :class:`PlatformAuthError` naming the destination and the
endpoint's error code and description (secrets masked), and nothing more is tried; timeouts,
connection errors and 5xx answers are retried three times with a short backoff.

``token_url`` is its own setting rather than derived from ``base_url``: token endpoints live on
another host than the API (Snap: ``accounts.snapchat.com`` vs ``adsapi.snapchat.com``). Tests and
proxies set both.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal

import pydantic
import requests
import tenacity
from pydantic import Field, SecretStr

from dinmo_dagster.platforms.base import HttpResponse, PlatformSettings
from dinmo_dagster.platforms.errors import PlatformAuthError, PlatformRequestError, redact

if TYPE_CHECKING:
    from dinmo_dagster.platforms.base import Platform

__all__ = ["OAuthSettings", "OAuthToken", "token_expired"]

logger = logging.getLogger("dinmo_dagster.platforms")

DEFAULT_LIFETIME_SECONDS = 3600.0
MAX_MARGIN_SECONDS = 60.0
_TRANSIENT_TRIES = 3


class _Transient(Exception):
    """A token request that may succeed when tried again (timeout, reset, 408, 429, 5xx)."""


class OAuthSettings(PlatformSettings):
    """Settings of a platform authenticated with OAuth 2.0 client credentials and a refresh token."""

    client_id: str = Field(description="The OAuth app's client id.")
    client_secret: SecretStr = Field(description="The OAuth app's client secret (from {env: VAR}); secret.")
    grant_type: Literal["refresh_token", "client_credentials"] = Field(
        default="refresh_token", description="How access tokens are obtained."
    )
    # After grant_type (validators see the fields declared before theirs); checked even when absent.
    refresh_token: SecretStr | None = Field(
        default=None, validate_default=True, description="A long-lived refresh token (from {env: VAR}); secret."
    )
    scope: str | None = Field(default=None, description="Scopes asked for (client_credentials).")
    token_url: str | None = Field(
        default=None, description="The token endpoint; default: the platform's own."
    )

    @pydantic.field_validator("token_url")
    @classmethod
    def _check_token_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"found {value!r}; allowed: an http:// or https:// URL")
        return value

    @pydantic.field_validator("client_id")
    @classmethod
    def _check_client_id(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("is empty; allowed: the OAuth app's client id")
        return value.strip()

    @pydantic.field_validator("client_secret")
    @classmethod
    def _check_client_secret(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().strip():
            raise ValueError("is empty; allowed: the OAuth app's client secret")
        return value

    @pydantic.field_validator("refresh_token")
    @classmethod
    def _check_refresh_token(cls, value: SecretStr | None, info: pydantic.ValidationInfo) -> SecretStr | None:
        needed = info.data.get("grant_type", "refresh_token") == "refresh_token"
        if needed and (value is None or not value.get_secret_value().strip()):
            raise ValueError("found nothing; allowed: a refresh token (grant_type refresh_token)")
        return value


def token_expired(response: HttpResponse) -> bool:
    """True when a 401 says the access token expired or is invalid (worth one renewal)."""
    if response.status != 401:
        return False
    challenge = (response.header("WWW-Authenticate") or "").lower()
    if "invalid_token" in challenge or "expired" in challenge:
        return True
    text = response.text.lower()
    return "expired" in text or "invalid_token" in text or "invalid access token" in text


class OAuthToken:
    """The access token of one destination: obtained, kept in memory and renewed (thread-safe)."""

    def __init__(
        self,
        platform: Platform,
        *,
        default_token_url: str,
        client_auth: Literal["body", "basic"] = "body",
        body: Literal["form", "json"] = "form",
        extra: Mapping[str, str] | None = None,
        session: requests.Session | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        settings = platform.settings
        if not isinstance(settings, OAuthSettings):
            raise TypeError(f"{type(platform).__name__} needs OAuthSettings to use OAuthToken")
        self._platform = platform
        self._settings = settings
        self.token_url = settings.token_url or default_token_url
        self.client_auth = client_auth
        # A JSON token request (Salesforce Marketing Cloud's v2/token) and fields of the platform's own
        # (its account_id) for the platforms that document them; form-encoded otherwise (RFC 6749).
        self.body = body
        self.extra = dict(extra or {})
        self._session = session or requests.Session()
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._token: str | None = None
        self._renew_at = 0.0
        self._refresh_token = settings.refresh_token.get_secret_value() if settings.refresh_token else None
        self._failure: PlatformAuthError | None = None
        self.requests = 0  # token requests sent (for tests and metrics; no value)

    # -- what adapters call ---------------------------------------------------------------------------

    def headers(self) -> dict[str, str]:
        """``Authorization: Bearer <token>``, renewing the token first when it is about to expire."""
        return {"Authorization": f"Bearer {self.access_token()}"}

    def access_token(self) -> str:
        """The current access token, renewed when less than the margin of its lifetime is left."""
        with self._lock:
            if self._failure is not None:
                raise self._failure
            if self._token is None or self._clock() >= self._renew_at:
                self._fetch()
            assert self._token is not None
            return self._token

    @property
    def current(self) -> str | None:
        """The access token held now, without obtaining one (None before the first request): for
        masking it in messages (``Platform.runtime_secrets``), never for sending."""
        return self._token

    def renew(self, sent: Mapping[str, str]) -> bool:
        """After a 401 for the token in ``sent`` (the auth headers of the refused request): get a new
        token unless another worker already did. True when the request is worth sending again."""
        stale = (sent.get("Authorization") or "").removeprefix("Bearer ")
        with self._lock:
            if self._failure is not None:
                return False
            if self._token is not None and self._token != stale:
                return True  # renewed meanwhile by another worker
            self._fetch()
            return True

    # -- the token endpoint ---------------------------------------------------------------------------

    def _secrets(self) -> list[str]:
        values = self._settings.secret_values()
        return values + [v for v in (self._token, self._refresh_token) if v]

    def _redact(self, text: str) -> str:
        return redact(text, self._secrets())

    def _fetch(self) -> None:
        """One token request (called under the lock); retried on transient failures."""
        settings = self._settings
        form: dict[str, str] = {"grant_type": settings.grant_type}
        auth: tuple[str, str] | None = None
        if self.client_auth == "basic":
            auth = (str(settings.client_id), settings.client_secret.get_secret_value())
        else:
            form["client_id"] = str(settings.client_id)
            form["client_secret"] = settings.client_secret.get_secret_value()
        if settings.grant_type == "refresh_token":
            assert self._refresh_token is not None
            form["refresh_token"] = self._refresh_token
        if settings.scope:
            form["scope"] = settings.scope
        form.update(self.extra)
        payload = {"json": form} if self.body == "json" else {"data": form}
        label = self._platform.label

        def attempt() -> None:
            self.requests += 1
            started = self._clock()
            try:
                raw = self._session.post(
                    self.token_url,
                    **payload,
                    auth=auth,
                    headers={"Accept": "application/json"},
                    timeout=settings.timeout_seconds,
                )
            except (requests.Timeout, requests.ConnectionError) as exc:
                raise _Transient(f"a connection error ({type(exc).__name__})") from None
            body = _json(raw)
            if raw.status_code >= 500 or raw.status_code in (408, 429):
                raise _Transient(f"HTTP {raw.status_code}")
            if raw.status_code != 200 or not isinstance(body.get("access_token"), str):
                self._failure = PlatformAuthError(f"{label}: {self._refusal(raw.status_code, body, raw.text)}")
                raise self._failure
            self._accept(body, started)

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(_Transient),
            stop=tenacity.stop_after_attempt(_TRANSIENT_TRIES),
            wait=tenacity.wait_exponential(multiplier=0.5, max=2.0),
            sleep=self._sleep,
            reraise=True,
        )
        try:
            retrying(attempt)
        except _Transient as exc:
            raise PlatformRequestError(
                f"{label}: the token endpoint {self.token_url} failed after {_TRANSIENT_TRIES} attempts: {exc}"
            ) from None

    def _refusal(self, status: int, body: Mapping[str, Any], text: str) -> str:
        code = str(body.get("error") or "")
        description = str(body.get("error_description") or body.get("message") or "")
        if not code and not description:
            description = text[:200] if status != 200 else "no access_token in the answer"
        detail = self._redact(": ".join(p for p in (code, description) if p))
        if code in ("invalid_client", "unauthorized_client") or self._settings.grant_type == "client_credentials":
            what, fix = "client credentials", "check client_id and client_secret"
        elif code == "invalid_grant":
            what, fix = "refresh token", "create a new refresh token and set it in refresh_token"
        else:
            what, fix = "refresh token", "check client_id, client_secret, refresh_token and token_url"
        return f"the token endpoint refused the {what} (HTTP {status} {detail}); {fix}"

    def _accept(self, body: Mapping[str, Any], started: float) -> None:
        try:
            lifetime = float(body.get("expires_in") or DEFAULT_LIFETIME_SECONDS)
        except (TypeError, ValueError):
            lifetime = DEFAULT_LIFETIME_SECONDS
        margin = min(MAX_MARGIN_SECONDS, lifetime / 5)
        self._token = str(body["access_token"])
        # Counted from when the request left: the token's clock started no later than that.
        self._renew_at = started + max(0.0, lifetime - margin)
        rotated = body.get("refresh_token")
        if isinstance(rotated, str) and rotated:
            self._refresh_token = rotated
        logger.debug("%s: obtained an access token valid for %.1fs", self._platform.label, lifetime)


def _json(raw: requests.Response) -> dict[str, Any]:
    try:
        body = raw.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
