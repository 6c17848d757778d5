"""dinmo-dagster: a composable CDP / reverse-ETL on Dagster (see README.md).

``import dinmo_dagster`` stays light: ``DinmoComponent`` (``component.py``, which imports Dagster) is
imported when it is first read, as ``dg`` does when a ``defs.yaml`` says ``type: dinmo_dagster.DinmoComponent``.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["DinmoComponent"]


def __getattr__(name: str) -> Any:
    if name == "DinmoComponent":  # loaded by name on first use, as the CLI loads its commands' modules
        return importlib.import_module("dinmo_dagster.component").DinmoComponent
    raise AttributeError(f"module 'dinmo_dagster' has no attribute {name!r}")


def __dir__() -> list[str]:
    """What ``dg`` lists from this registry module (``dagster_dg_cli.registry_modules``): the component."""
    return sorted([*globals(), "DinmoComponent"])
