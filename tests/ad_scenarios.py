"""What the ad-platform tests (tests/test_{snapchat_ads,criteo,reddit_ads,linkedin_ads,tiktok_ads}.py)
share: the SHA-256 digest they expect, the requests a fake got, the adapter built on a fake, and the
Dagster-job scenario's project (DuckDB warehouse seeded with Ann, Bob, Cle and Dan, the platform's fake,
an ephemeral Dagster instance, the project file of one ``audiences`` destination and its activation).

Imported as a top-level module, like ``platform_scenarios``: pytest puts tests/ on sys.path.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import dagster as dg
import pytest
from platform_scenarios import SEED, create_customers, open_project, project_yaml, run, warehouse_source

from dinmo_dagster.definitions import build_definitions
from dinmo_dagster.platforms import build_platform


def sha(text: str) -> str:
    """The lower-case SHA-256 hex digest of ``text`` (UTF-8)."""
    return hashlib.sha256(text.encode()).hexdigest()


def calls(fake: Any) -> list[tuple[str, str]]:
    """``(method, path)`` of every API request the fake got (token requests excluded)."""
    return [(r.method, r.path) for r in fake.requests]


def audiences_platform(type_: str, destination: str, cls: type, fake: Any, fields: dict[str, Any],
                       settings: dict[str, Any]) -> Any:
    """The ``type_`` adapter (an instance of ``cls``) of destination ``destination``, service ``audiences``,
    audience "VIP Europe", served by ``fake`` (its ``token_url`` too when it has one); ``settings`` win."""
    urls = {"base_url": fake.url, **({"token_url": fake.token_url} if hasattr(fake, "token_url") else {})}
    raw = {"service": "audiences", **fields, "audience": {"name": "VIP Europe"}, **urls, **settings}
    platform = build_platform(type_, raw, destination=destination)
    assert isinstance(platform, cls)
    return platform


def change_customers(wh: Any) -> None:
    """The scenario's delta in raw.customers: Dan leaves ``big``, Bob's e-mail becomes
    'Robert@Example.com ' (capitals, a trailing blank), Ann enters."""
    run(wh, "update raw.customers set ltv = 10 where customer_id = 4")
    run(wh, "update raw.customers set email = 'Robert@Example.com ' where customer_id = 2")
    run(wh, "update raw.customers set ltv = 800 where customer_id = 1")


@contextlib.contextmanager
def ad_project(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
               fake_factory: Callable[[], Any], *, attr: str, type_: str, destination: str, activation: str,
               fields: dict[str, str], secrets: dict[str, tuple[str, str]]) -> Iterator[SimpleNamespace]:
    """The Dagster-job scenario of one ad platform in ``tmp_path``: destination ``destination`` (``type_``,
    service ``audiences``, ``fields`` as YAML values, each ``secrets`` key read from the variable named
    first, set to the value second), activation ``activation`` of the ``big`` segment to the audience
    "VIP Europe" by e-mail, raw.customers seeded. Yields ``project``, ``resources``, ``wh``, ``instance``,
    ``defs`` and the fake (made by ``fake_factory``) as ``attr``."""
    for env, value in secrets.values():
        monkeypatch.setenv(env, value)
    with warehouse_source("duckdb", request, tmp_path, monkeypatch) as source, fake_factory() as fake, \
            dg.DagsterInstance.ephemeral() as instance:
        lines = [f"{destination}:", f"  type: {type_}", "  service: audiences",
                 *(f"  {key}: {value}" for key, value in fields.items()),
                 *(f"  {key}: {{env: {env}}}" for key, (env, _) in secrets.items()),
                 f"  base_url: {fake.url}",
                 *([f"  token_url: {fake.token_url}"] if hasattr(fake, "token_url") else [])]
        (tmp_path / "dinmo.yaml").write_text(project_yaml(
            source, destinations=["\n".join(lines) + "\n"], activations=f"""
            {activation}:
              segment: big
              destination: {destination}
              audience: {{name: "VIP Europe"}}
              identifiers: {{email: email}}
            """))
        with open_project(tmp_path) as (project, resources, wh):
            create_customers(wh, SEED)
            yield SimpleNamespace(project=project, resources=resources, wh=wh, instance=instance,
                                  defs=build_definitions(project), **{attr: fake})
