"""Test helper around :mod:`dinmo_dagster.emulator`: a GCS emulator on a free loopback port.

Import it from a test module (``from gcs_emulator import ...`` or ``from tests.gcs_emulator import ...``
depending on how pytest puts ``tests`` on ``sys.path``) and build fixtures from it, e.g.::

    @pytest.fixture(scope="session")
    def emulator():
        with start_gcs_emulator("test-bucket") as handle:
            yield handle

    @pytest.fixture
    def gcs_env(emulator, monkeypatch):
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", emulator.url)
"""

import contextlib
import os
from collections.abc import Iterator

from dinmo_dagster.emulator import (
    STORAGE_EMULATOR_ENV_VAR,
    EmulatorHandle,
    create_bucket,
    start_emulator,
)

__all__ = ["EmulatorHandle", "create_bucket", "emulator_env", "start_gcs_emulator"]


def start_gcs_emulator(default_bucket: str = "test-bucket") -> EmulatorHandle:
    """Start an in-memory emulator on 127.0.0.1 with ``default_bucket``; call ``.stop()`` when done."""
    return start_emulator(default_bucket=default_bucket, host="127.0.0.1")


@contextlib.contextmanager
def emulator_env(url: str) -> Iterator[None]:
    """Point google-cloud-storage at ``url`` (``STORAGE_EMULATOR_HOST``) for the block, then restore."""
    previous = os.environ.get(STORAGE_EMULATOR_ENV_VAR)
    os.environ[STORAGE_EMULATOR_ENV_VAR] = url
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(STORAGE_EMULATOR_ENV_VAR, None)
        else:
            os.environ[STORAGE_EMULATOR_ENV_VAR] = previous
