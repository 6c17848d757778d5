"""Which destinations the CLI serves from a local fake, and how it starts one.

The rule (``dinmo demo``, ``dinmo ui``, ``dinmo emulator``): a ``hubspot`` destination is served by
the local HubSpot fake only when both hold:

- its ``base_url`` is ``http://127.0.0.1:<port>`` or ``http://localhost:<port>`` (a loopback URL
  with an explicit port; the fake listens on 127.0.0.1 on that port);
- its ``access_token`` is ``{env: VAR}`` and ``VAR`` is not set.

A destination without ``base_url`` talks to HubSpot's real URL and is never diverted, and a set
token means a real account (or a proxy of one) is meant. The CLI then sets ``VAR`` to
:data:`DEMO_TOKEN` for its own process (and the ``dagster dev`` it starts), the only token the fake
accepts.
"""

from __future__ import annotations

import errno
import os
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from dinmo_dagster.fakes.hubspot import FakeHubSpot
from dinmo_dagster.secrets import EnvRef

if TYPE_CHECKING:
    from dinmo_dagster.config import Project

__all__ = ["DEMO_TOKEN", "HubSpotStandIn", "StandInError", "faked_hubspot_destinations", "serve_hubspot"]

DEMO_TOKEN = "dinmo-demo-hubspot-token"
"""The token the local fake accepts: not a secret (anyone can read it here), and useless elsewhere."""

_LOOPBACK_HOSTS = ("127.0.0.1", "localhost")


class StandInError(RuntimeError):
    """A local stand-in could not start; the message is one line naming the destination, URL and file."""


@dataclass(frozen=True)
class HubSpotStandIn:
    """A hubspot destination the CLI serves from the local fake."""

    destination: str
    object: str
    port: int
    token_env: str
    origin: str  # the YAML file that declares the destination

    @property
    def url(self) -> str:
        """The fake's base URL (the destination's ``base_url``, on 127.0.0.1)."""
        return f"http://127.0.0.1:{self.port}"


def _loopback_port(base_url: str | None) -> int | None:
    """The port of an ``http://127.0.0.1:<port>`` or ``http://localhost:<port>`` URL, else None."""
    if not base_url:
        return None
    parts = urllib.parse.urlsplit(base_url)
    try:
        port = parts.port
    except ValueError:
        return None
    if parts.scheme != "http" or parts.hostname not in _LOOPBACK_HOSTS or not port:
        return None
    return port


def faked_hubspot_destinations(project: Project) -> list[HubSpotStandIn]:
    """The project's hubspot destinations that the rule of the module docstring sends to the fake."""
    found = []
    for name, dest in sorted(project.destinations.items()):
        if dest.type != "hubspot":
            continue
        port = _loopback_port(getattr(dest, "base_url", None))
        token = getattr(dest, "access_token", None)
        if port is None or not isinstance(token, EnvRef) or token.env in os.environ:
            continue
        origin = project.origins.get(f"destinations.{name}", "dinmo.yaml")
        found.append(HubSpotStandIn(name, getattr(dest, "object", "contacts"), port, token.env,
                                    str(project.directory / origin)))
    return found


def serve_hubspot(stand_in: HubSpotStandIn, data_dir: Path | None) -> FakeHubSpot:
    """Start the fake for ``stand_in`` on its port, its records kept in ``data_dir/<destination>.json``
    (in memory when ``data_dir`` is None). The caller stops it (``fake.server.stop()``)."""
    data_file = data_dir / f"{stand_in.destination}.json" if data_dir is not None else None
    try:
        fake = FakeHubSpot(DEMO_TOKEN, port=stand_in.port, data_file=data_file)
    except OSError as exc:
        why = (f"port {stand_in.port} is already in use; stop what uses it, or set another port in base_url"
               if exc.errno == errno.EADDRINUSE else f"{exc.strerror or exc}")
        raise StandInError(f"cannot start the local HubSpot fake for destination '{stand_in.destination}' "
                           f"at {stand_in.url} (base_url in {stand_in.origin}): {why}") from None
    except ValueError as exc:  # an unreadable data file
        raise StandInError(f"cannot start the local HubSpot fake for destination '{stand_in.destination}': "
                           f"{data_file} is not the fake's JSON ({exc})") from None
    return fake.__enter__()
