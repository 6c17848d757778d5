"""Alerts: what the project's ``alerts:`` section and an activation's ``alerts:`` say, and the sending.

Plain Python, no Dagster import at module level (``dinmo validate`` loads these models): the Dagster
sensors that send failure, pause and resume alerts are in ``sensors/alerts.py``; a sync's run sends its
own warnings (``assets/activations.py``) and ``dinmo sync`` the failure of its run (``cli.py``).

Events (``on:``): ``failure`` (any failed sync), ``pause`` and ``resume`` (automatic, by the validation
sensor or after consecutive failures), ``warning`` (any sync warning), and the narrower
``removal_guard`` (a sync refused by ``max_removed_pct``), ``rejections`` (a platform sync with rejected
records: a warning under ``max_rejected_pct``, a failure above), ``size_change`` (the segment's size
moved more than ``max_size_change_pct`` since the last sync) and ``empty_segment``. A failed sync
matches ``failure`` and its own event; a warning matches ``warning`` and its own event; a warning that
``warnings_block`` turns into a failure matches all three.

Channels (``to:``), each through its service's documented format:

- ``slack``: an incoming webhook, ``{"text": ...}``, through Slack's own ``slack_sdk`` WebhookClient
  (its retry handlers: connection errors, and 429 with ``Retry-After``); any answer but 200 is an error
  carrying Slack's error string (``invalid_payload``, ``channel_not_found``, ``channel_is_archived``...).
  https://api.slack.com/messaging/webhooks,
  https://api.slack.com/changelog/2016-05-17-changes-to-errors-for-incoming-webhooks
- ``teams``: an incoming webhook (a Workflows webhook, or a legacy ``*.webhook.office.com`` connector),
  through Dagster's own ``dagster_msteams.TeamsClient``, with the card it picks: an Adaptive Card
  (``{"type": "message", "attachments": [{"contentType": "application/vnd.microsoft.card.adaptive",
  ...}]}``) for Workflows, a card for a legacy connector (whose success is the body ``1``).
  https://learn.microsoft.com/en-us/microsoftteams/platform/webhooks-and-connectors/how-to/add-incoming-webhook
- ``pagerduty``: the Events API v2 (``POST https://events.pagerduty.com/v2/enqueue``, or ``url:`` for
  the EU service ``https://events.eu.pagerduty.com/v2/enqueue``), ``{"routing_key", "event_action":
  "trigger", "dedup_key", "payload": {"summary", "source", "severity", ...}}``; 202 is success, 400
  ``invalid event`` with its ``errors`` fails at once, 429 and 5xx are retried. A pause triggers an
  incident under the key ``dinmo/<activation>/paused`` and the resume resolves it
  (``event_action: resolve``). https://developer.pagerduty.com/docs/events-api-v2/trigger-events/
  (Dagster's ``dagster-pagerduty`` posts through ``pypd`` to a fixed URL, so plain HTTP is used here.)
- ``webhook``: ``POST`` of ``{"activation", "event", "run_id", "message", "severity"}`` as JSON; any 2xx
  is success, 429 and 5xx are retried.
- ``email``: SMTP (``smtplib``): STARTTLS when the server offers it (port 465: TLS from the start);
  ``username``/``password`` are sent only over TLS, or to a relay on this machine (a loopback host).

HTTP channels are retried through tenacity (3 attempts, 0.5 s to 4 s) on connection errors, timeouts,
429 and 5xx. A channel that fails is logged (``on_log``) and never fails the sync, and every message
(and every logged error) has the project's and the channels' secret values replaced by ``***``.
"""

from __future__ import annotations

import importlib
import ipaddress
import os
import smtplib
import ssl
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import requests
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler
from slack_sdk.webhook import WebhookClient
from tenacity import retry, retry_if_exception, stop_after_attempt, wait_exponential

from dinmo_dagster import secrets
from dinmo_dagster.secrets import EnvRef

__all__ = ["EVENTS", "Alert", "AlertsConfig", "Channel", "config_problems", "send", "subscription"]

EVENTS = (
    "failure",
    "pause",
    "resume",
    "warning",
    "removal_guard",
    "rejections",
    "size_change",
    "empty_segment",
)
Event = Literal[
    "failure", "pause", "resume", "warning", "removal_guard", "rejections", "size_change", "empty_segment"
]
DEFAULT_ON: tuple[str, ...] = ("failure", "pause", "resume", "warning")
"""The events a channel hears when ``on:`` is not given."""
WARNINGS = ("empty_segment", "size_change", "rejections")
BLOCKABLE = ("empty_segment", "size_change")
"""The warnings ``warnings_block`` may turn into failures: both are known before anything is written."""

EVENT_METADATA = "dinmo/event"
"""Metadata key of a failed sync step's ``dg.Failure``: its alert event (removal_guard, rejections...)."""
WARNINGS_METADATA = "dinmo/warnings"
"""Metadata key of an activation's materialization: the sync's warnings, ``[{event, message}]``."""
PAGERDUTY_EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"
TIMEOUT_S = 10.0
ATTEMPTS = 3
MAX_CAUSE = 500  # characters of the cause in one alert line
CHANNELS = ("slack", "webhook", "email", "teams", "pagerduty")


# ---------------------------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


def _env_only(value: Any) -> Any:
    """A secret of an alert channel is ``{env: NAME}``; an inline value is refused without quoting it."""
    if isinstance(value, str):
        raise ValueError(  # noqa: TRY004 - pydantic reports a ValueError as a validation error
            "secrets must not be written in the YAML; found an inline value; allowed: {env: VARIABLE_NAME}"
        )
    return value


class SlackTarget(_Strict):
    webhook_url: EnvRef
    _env = field_validator("webhook_url", mode="before")(_env_only)


class TeamsTarget(_Strict):
    webhook_url: EnvRef
    _env = field_validator("webhook_url", mode="before")(_env_only)


class WebhookTarget(_Strict):
    url: EnvRef
    _env = field_validator("url", mode="before")(_env_only)


class PagerDutyTarget(_Strict):
    routing_key: EnvRef
    url: Annotated[str, Field(pattern=r"^https?://")] = PAGERDUTY_EVENTS_URL
    _env = field_validator("routing_key", mode="before")(_env_only)


class EmailTarget(_Strict):
    smtp_host: str
    smtp_port: Annotated[int, Field(ge=1, le=65535)] = 587
    from_: Annotated[str, Field(alias="from", pattern=r"^[^@\s]+@[^@\s]+$")]
    to: Annotated[list[Annotated[str, Field(pattern=r"^[^@\s]+@[^@\s]+$")]], Field(min_length=1)]
    username: EnvRef | None = None
    password: EnvRef | None = None
    _env = field_validator("username", "password", mode="before")(_env_only)


class Channel(_Strict):
    """One entry of ``to:``: exactly one of slack, webhook, email, teams, pagerduty."""

    slack: SlackTarget | None = None
    webhook: WebhookTarget | None = None
    email: EmailTarget | None = None
    teams: TeamsTarget | None = None
    pagerduty: PagerDutyTarget | None = None

    @model_validator(mode="after")
    def _one(self) -> Channel:
        given = [c for c in CHANNELS if getattr(self, c) is not None]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one channel per entry, found {len(given)}"
                + (f" ({', '.join(given)})" if given else "")
                + f"; allowed: {', '.join(CHANNELS)}"
            )
        return self

    @property
    def kind(self) -> str:
        return next(c for c in CHANNELS if getattr(self, c) is not None)

    @property
    def target(self) -> Any:
        return getattr(self, self.kind)


class AlertsConfig(_Strict):
    """``alerts:`` of the project (the default) or of an activation (its ``on`` and ``to`` override)."""

    on: list[Event] | None = None
    to: list[Channel] | None = None


def subscription(project: Any, activation: str) -> tuple[set[str], list[Channel]]:
    """The events an activation alerts on and its channels: its own ``on``/``to``, else the project's."""
    base: AlertsConfig | None = getattr(project, "alerts", None)
    a = project.activations.get(activation)
    own: AlertsConfig | None = getattr(a, "alerts", None) if a is not None else None
    on = (
        own.on
        if own is not None and own.on is not None
        else (base.on if base is not None and base.on is not None else list(DEFAULT_ON))
    )
    to = (
        own.to
        if own is not None and own.to is not None
        else (base.to if base is not None and base.to else [])
    )
    return set(on), list(to)


def config_problems(project: Any) -> list[str]:
    """``alerts:`` that cannot alert: events without a channel, here or in the project's section."""
    out: list[str] = []
    base: AlertsConfig | None = getattr(project, "alerts", None)
    if base is not None and base.on and base.to is None:
        out.append(
            f"{project.origins.get('alerts', '?')}: alerts.to: required key is missing (the channels of alerts.on)"
        )
    for name, a in project.activations.items():
        own: AlertsConfig | None = getattr(a, "alerts", None)
        if own is not None and not subscription(project, name)[1]:
            where = project.origins.get(f"activations.{name}", "?")
            out.append(
                f"{where}: activations.{name}.alerts.to: no channel to alert; allowed: a list of slack, "
                "webhook, email, teams or pagerduty channels, here or in the project's alerts section"
            )
    return out


def rejection_warning(activation: Any, platform: dict[str, Any]) -> str | None:
    """The ``rejections`` warning of a platform sync that succeeded with rejected records (counts and the
    platform's reason codes only: never a record value), or None."""
    rejected = int(platform.get("records_rejected") or 0)
    if not rejected:
        return None
    decided = rejected + int(platform.get("records_accepted") or 0)
    reasons = platform.get("top_rejection_reasons")
    return (
        f"destination '{activation.destination}' ({platform.get('platform')}) rejected {rejected} of {decided} "
        f"records ({platform.get('rejected_pct')}%), within max_rejected_pct {activation.max_rejected_pct:g}%; "
        "they are sent again by the next syncs" + (f"; top reasons: {reasons}" if reasons else "")
    )


# ---------------------------------------------------------------------------------------------------------
# alerts
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Alert:
    """One thing to tell: ``event`` (one of EVENTS but ``warning``), the activation, the run and the cause.

    ``failed``: the sync failed (a failure, a removal-guard stop, a rejection rate above the limit, a
    blocked warning); else a warning, a pause or a resume.
    """

    activation: str
    event: str
    cause: str
    run_id: str = ""
    failed: bool = False

    @property
    def matches(self) -> set[str]:
        """The ``on:`` names that hear this alert."""
        names = {self.event}
        if self.failed:
            names.add("failure")
        if self.event in WARNINGS:
            names.add("warning")
        return names

    @property
    def severity(self) -> str:
        """PagerDuty's severity (critical, error, warning, info)."""
        if self.failed or self.event == "pause":
            return "error"
        return "info" if self.event == "resume" else "warning"

    def line(self) -> str:
        """The alert in one line: event, activation, run and cause."""
        what = self.event if not self.failed or self.event == "failure" else f"failure ({self.event})"
        cause = " ".join(self.cause.split()) or "no cause given"
        if len(cause) > MAX_CAUSE:
            cause = cause[: MAX_CAUSE - 3] + "..."
        return f"[dinmo] {what}: activation '{self.activation}', run {self.run_id or 'none'}: {cause}"


def project_secrets(project: Any) -> list[str]:
    """Every value the project's sources, destinations and alert channels read from the environment,
    with the parts of a URL a message could quote alone (its path and query), longest first."""
    found: set[str] = set()
    for cfg in [*project.sources.values(), *project.destinations.values()]:
        found.update(secrets.secret_values(cfg, every_env_ref=True))
    channels: list[Channel] = list((getattr(project, "alerts", None) or AlertsConfig()).to or [])
    for a in project.activations.values():
        channels += list((getattr(a, "alerts", None) or AlertsConfig()).to or [])
    for ch in channels:
        for ref in _env_refs(ch.target):
            value = os.environ.get(ref.env)
            if value:
                found.update(_url_parts(value))
    return sorted((s for s in found if len(s) >= 3), key=len, reverse=True)


def _env_refs(target: BaseModel) -> list[EnvRef]:
    return [v for v in (getattr(target, n) for n in type(target).model_fields) if isinstance(v, EnvRef)]


def _url_parts(value: str) -> list[str]:
    """A value and, when it is a URL, its path and query: an HTTP library's error quotes the path alone."""
    parts = [value]
    u = urlsplit(value)
    if u.scheme and u.netloc:
        parts += [p for p in (u.path, f"{u.path}?{u.query}" if u.query else "", u.query) if p and p != "/"]
    return parts


def send(project: Any, alert: Alert, on_log: Callable[[str], None]) -> list[str]:
    """Send ``alert`` to the activation's channels that listen to its event; returns the channels that
    took it (``slack``, ``email``...). A channel that fails is logged through ``on_log``, never raised."""
    on, channels = subscription(project, alert.activation)
    if not channels or not (alert.matches & on):
        return []
    hidden = project_secrets(project)
    text = secrets.scrub(alert.line(), hidden)
    clean = Alert(
        alert.activation, alert.event, secrets.scrub(alert.cause, hidden), alert.run_id, alert.failed
    )
    sent = []
    for ch in channels:
        try:
            _SENDERS[ch.kind](ch.target, clean, text)
            sent.append(ch.kind)
        except Exception as exc:  # noqa: BLE001 - an alert channel never fails the sync
            reason = secrets.scrub(" ".join(str(exc).split()) or type(exc).__name__, hidden)
            on_log(
                f"alert '{alert.event}' of activation '{alert.activation}' to {ch.kind} failed: {reason[:300]}"
            )
    return sent


# ---------------------------------------------------------------------------------------------------------
# channels
# ---------------------------------------------------------------------------------------------------------


class ChannelError(Exception):
    """A channel answered with an error; ``retryable`` for 429 and 5xx."""

    def __init__(self, message: str, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, ChannelError):
        return exc.retryable
    return isinstance(exc, (requests.ConnectionError, requests.Timeout))


_retried = retry(
    retry=retry_if_exception(_transient),
    stop=stop_after_attempt(ATTEMPTS),
    wait=wait_exponential(multiplier=0.5, min=0.5, max=4),
    reraise=True,
)


def _value(ref: EnvRef, key: str) -> str:
    return str(secrets.resolve(ref, key=key))


def _check(response: requests.Response, service: str, ok: Iterable[int]) -> None:
    if response.status_code in ok:
        return
    body = " ".join(response.text.split())[:200]
    retryable = response.status_code == 429 or response.status_code >= 500
    raise ChannelError(f"{service} answered HTTP {response.status_code}: {body}", retryable)


def _slack(target: SlackTarget, alert: Alert, text: str) -> None:
    client = WebhookClient(
        _value(target.webhook_url, "webhook_url"),
        timeout=int(TIMEOUT_S),
        retry_handlers=[RateLimitErrorRetryHandler(max_retry_count=ATTEMPTS - 1)],
    )
    _send_slack(client, text)


@_retried
def _send_slack(client: WebhookClient, text: str) -> None:
    try:
        response = client.send(text=text)
    except OSError as exc:  # urllib's connection errors
        raise ChannelError(f"slack: {exc}", retryable=True) from None
    if response.status_code != 200:
        raise ChannelError(
            f"slack answered HTTP {response.status_code}: {str(response.body)[:200]}",
            retryable=response.status_code >= 500,
        )


def _teams(target: TeamsTarget, alert: Alert, text: str) -> None:
    # Dagster's Teams client, imported here: loading the project (dinmo validate) must not import Dagster.
    client_module = importlib.import_module("dagster_msteams.client")
    client = client_module.TeamsClient(hook_url=_value(target.webhook_url, "webhook_url"), timeout=TIMEOUT_S)
    card = (
        importlib.import_module("dagster_msteams.card").Card()
        if client.is_legacy_webhook()
        else importlib.import_module("dagster_msteams.adaptive_card").AdaptiveCard()
    )
    card.add_attachment(text_message=text)
    _send_teams(client, card.payload)


@_retried
def _send_teams(client: Any, payload: dict[str, Any]) -> None:
    try:
        client.post_message(payload=payload)
    except (requests.ConnectionError, requests.Timeout):
        raise
    except requests.RequestException as exc:  # the client's own: the answer's body
        raise ChannelError(f"teams refused the message: {' '.join(str(exc).split())[:200]}") from None


def _webhook(target: WebhookTarget, alert: Alert, text: str) -> None:
    body = {
        "activation": alert.activation,
        "event": alert.event,
        "run_id": alert.run_id,
        "message": text,
        "severity": alert.severity,
    }
    _post(_value(target.url, "url"), body, "webhook", range(200, 300))


def _pagerduty(target: PagerDutyTarget, alert: Alert, text: str) -> None:
    paused_key = f"dinmo/{alert.activation}/paused"
    body: dict[str, Any] = {"routing_key": _value(target.routing_key, "routing_key")}
    if alert.event == "resume":
        body.update(event_action="resolve", dedup_key=paused_key)
    else:
        body.update(
            event_action="trigger",
            dedup_key=paused_key
            if alert.event == "pause"
            else f"dinmo/{alert.activation}/{alert.event}/{alert.run_id or 'none'}",
            payload={
                "summary": text[:1024],
                "source": "dinmo-dagster",
                "severity": alert.severity,
                "component": alert.activation,
                "group": "dinmo",
                "class": alert.event,
                "custom_details": {
                    "activation": alert.activation,
                    "event": alert.event,
                    "run_id": alert.run_id,
                    "cause": alert.cause,
                },
            },
        )
    _post(target.url, body, "pagerduty", (202,))


@_retried
def _post(url: str, body: dict[str, Any], service: str, ok: Iterable[int]) -> None:
    response = requests.post(url, json=body, timeout=TIMEOUT_S)
    _check(response, service, ok)


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _email(target: EmailTarget, alert: Alert, text: str) -> None:
    msg = EmailMessage()
    msg["Subject"] = f"[dinmo] {alert.event}: activation '{alert.activation}'"
    msg["From"] = target.from_
    msg["To"] = ", ".join(target.to)
    msg.set_content(text + "\n")
    context = ssl.create_default_context()
    smtp: smtplib.SMTP
    if target.smtp_port == 465:
        smtp = smtplib.SMTP_SSL(target.smtp_host, target.smtp_port, timeout=TIMEOUT_S, context=context)
    else:
        smtp = smtplib.SMTP(target.smtp_host, target.smtp_port, timeout=TIMEOUT_S)
    with smtp:
        smtp.ehlo()
        tls = target.smtp_port == 465
        if not tls and smtp.has_extn("starttls"):
            smtp.starttls(context=context)
            smtp.ehlo()
            tls = True
        if target.username is not None or target.password is not None:
            if not tls and not _loopback(target.smtp_host):
                raise ChannelError(
                    f"smtp server {target.smtp_host}:{target.smtp_port} offers no STARTTLS; the "
                    "credentials are sent only over TLS (or to a relay on this machine)"
                )
            smtp.login(
                _value(target.username, "username") if target.username else "",
                _value(target.password, "password") if target.password else "",
            )
        smtp.send_message(msg)


_SENDERS: dict[str, Callable[[Any, Alert, str], None]] = {
    "slack": _slack,
    "webhook": _webhook,
    "email": _email,
    "teams": _teams,
    "pagerduty": _pagerduty,
}
