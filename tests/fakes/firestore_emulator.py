"""The real Cloud Firestore emulator (gcloud) on a free loopback port, as a context manager and fixtures.

``start_firestore_emulator()`` runs ``gcloud emulators firestore start --host-port=127.0.0.1:PORT``
in its own process group, waits until the emulator answers ``GET /`` with ``Ok``, yields a
:class:`FirestoreEmulator` whose ``host`` is what ``FIRESTORE_EMULATOR_HOST`` takes, and on exit
stops the whole group (gcloud, its shell wrapper and the Java server) and waits until none of it is
left. The emulator keeps data in memory only; :meth:`FirestoreEmulator.reset` deletes every document
through the emulator's ``DELETE /emulator/v1/projects/{project}/databases/(default)/documents``.

``google-cloud-firestore`` (pip) honours ``FIRESTORE_EMULATOR_HOST`` and then needs no credentials;
any project id works. https://cloud.google.com/firestore/docs/emulator ,
https://cloud.google.com/sdk/gcloud/reference/emulators/firestore/start

Fixtures (import them into a test module, or list this module in ``pytest_plugins``):

* ``firestore_emulator`` (session): the running emulator; the test is **skipped** with a reason that
  names what to install when gcloud, Java or the emulator component is missing.
* ``firestore_env``: sets ``FIRESTORE_EMULATOR_HOST`` (and ``GOOGLE_CLOUD_PROJECT``) for one test
  and deletes every document afterwards.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

from dinmo_dagster.emulator import free_port

__all__ = [
    "FIRESTORE_EMULATOR_ENV_VAR",
    "FirestoreEmulator",
    "FirestoreEmulatorUnavailable",
    "firestore_emulator",
    "firestore_env",
    "start_firestore_emulator",
]

FIRESTORE_EMULATOR_ENV_VAR = "FIRESTORE_EMULATOR_HOST"
INSTALL_HINT = (
    "install the Google Cloud CLI with its Firestore emulator and a Java 17+ runtime "
    "(Debian/Ubuntu, from Google's apt repository: apt-get install google-cloud-cli "
    "google-cloud-cli-firestore-emulator openjdk-17-jre-headless; or, with a gcloud from the "
    "tarball: gcloud components install cloud-firestore-emulator)"
)


class FirestoreEmulatorUnavailable(RuntimeError):
    """gcloud, Java or the Firestore emulator component is not installed on this machine."""


class FirestoreEmulatorError(RuntimeError):
    """The emulator is installed but did not start or stop as expected."""


@dataclass(frozen=True)
class FirestoreEmulator:
    """A running emulator: ``host`` ("127.0.0.1:PORT") for ``FIRESTORE_EMULATOR_HOST``."""

    host: str
    project: str
    pid: int

    @property
    def url(self) -> str:
        """The emulator's REST base URL."""
        return f"http://{self.host}"

    def reset(self) -> None:
        """Delete every document of ``project`` in the emulator."""
        request = urllib.request.Request(
            f"{self.url}/emulator/v1/projects/{self.project}/databases/(default)/documents", method="DELETE"
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()


def _missing_tools() -> str | None:
    if shutil.which("gcloud") is None:
        return "gcloud not found on PATH"
    if shutil.which("java") is None and not os.environ.get("JAVA"):
        return "java not found on PATH"
    return None


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _stop_group(process: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """SIGTERM the emulator's process group, SIGKILL what is left, and wait until the group is gone."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if process.poll() is None:
        process.kill()
        process.wait(timeout=timeout)


@contextmanager
def start_firestore_emulator(project: str = "dinmo-test", *, timeout: float = 90.0) -> Iterator[FirestoreEmulator]:
    """Run the Firestore emulator on a free loopback port for the block.

    Raises :class:`FirestoreEmulatorUnavailable` (with what to install) when gcloud, Java or the
    emulator component is missing, and :class:`FirestoreEmulatorError` when it fails otherwise.
    """
    missing = _missing_tools()
    if missing is not None:
        raise FirestoreEmulatorUnavailable(f"Firestore emulator unavailable: {missing}; {INSTALL_HINT}")
    port = free_port("127.0.0.1")
    host = f"127.0.0.1:{port}"
    with tempfile.TemporaryFile() as log:
        # Its own session, so stopping the group also stops the shell wrapper and the Java server.
        process = subprocess.Popen(
            ["gcloud", "emulators", "firestore", "start", f"--host-port={host}", "--quiet"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        try:
            deadline = time.monotonic() + timeout
            while not _answers(f"http://{host}/"):
                if process.poll() is not None:
                    log.seek(0)
                    output = log.read().decode("utf-8", "replace").strip()
                    lowered = output.lower()
                    if "not installed" in lowered or ("install" in lowered and "component" in lowered):
                        raise FirestoreEmulatorUnavailable(
                            f"Firestore emulator unavailable: {output.splitlines()[-1]}; {INSTALL_HINT}"
                        )
                    raise FirestoreEmulatorError(
                        f"`gcloud emulators firestore start --host-port={host}` exited with code "
                        f"{process.returncode} before answering: {output[-2000:]}"
                    )
                if time.monotonic() > deadline:
                    raise FirestoreEmulatorError(f"the Firestore emulator did not answer on {host} within {timeout:.0f} s")
                time.sleep(0.25)
            yield FirestoreEmulator(host=host, project=project, pid=process.pid)
        finally:
            _stop_group(process)


@pytest.fixture(scope="session")
def firestore_emulator() -> Iterator[FirestoreEmulator]:
    """The Firestore emulator for the test session (skips, naming what to install, when it is missing)."""
    try:
        with start_firestore_emulator() as emulator:
            yield emulator
    except FirestoreEmulatorUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture
def firestore_env(firestore_emulator: FirestoreEmulator, monkeypatch: pytest.MonkeyPatch) -> Iterator[FirestoreEmulator]:
    """Point google-cloud-firestore at the emulator for one test, then delete every document."""
    monkeypatch.setenv(FIRESTORE_EMULATOR_ENV_VAR, firestore_emulator.host)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", firestore_emulator.project)
    try:
        yield firestore_emulator
    finally:
        firestore_emulator.reset()

