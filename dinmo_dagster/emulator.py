"""Start a local Google Cloud Storage emulator (``gcp-storage-emulator``) for tests and demos.

The emulator runs as a child process (``python -m gcp_storage_emulator start``) rather than a thread
in this process: it is a slow pure-Python server, and a separate process neither competes with the
caller for the GIL nor keeps the interpreter alive at exit, and it can be killed outright.

Typical use::

    with start_emulator(default_bucket="acme") as emulator:
        os.environ.update(emulator.env())        # STORAGE_EMULATOR_HOST=http://127.0.0.1:PORT
        ...                                        # google-cloud-storage now talks to the emulator

Without ``data_dir`` the emulator keeps everything in memory (lost on stop); with ``data_dir`` it
stores objects under that folder and a restart on the same folder keeps them (used by ``dinmo demo``,
``dinmo ui`` and ``dinmo emulator``, under the project's ``.gcs`` folder).

When the CLI starts one by itself: :func:`emulated_buckets` names the buckets of a project's ``gcs``
destinations that configure no key (``service_account_json`` / ``service_account_file``), when no
application default credentials may exist (``GOOGLE_APPLICATION_CREDENTIALS``, gcloud's
``application_default_credentials.json``, or a machine on Google Cloud) and ``STORAGE_EMULATOR_HOST``
is unset. A destination with
a key, even one whose variable is unset, never gets an emulator: its syncs must go to the real bucket
or fail, never land in a stand-in silently.
"""

import atexit
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from typing_extensions import Self

from dinmo_dagster.destinations.gcs import STORAGE_EMULATOR_ENV_VAR

if TYPE_CHECKING:
    from dinmo_dagster.config import Project

__all__ = ["STORAGE_EMULATOR_ENV_VAR", "EmulatorError", "EmulatorHandle", "create_bucket", "emulated_buckets",
           "free_port", "start_emulator", "start_for_buckets"]


class EmulatorError(RuntimeError):
    """The emulator could not be started (or a bucket could not be created in it)."""


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on ``host`` right now (the OS picks it).

    There is an unavoidable race between closing this probe socket and the emulator binding the
    port; :func:`start_emulator` retries with a new port when the child exits early.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@dataclass
class EmulatorHandle:
    """A running emulator. ``stop()`` is idempotent; the handle is also a context manager."""

    host: str
    port: int
    default_bucket: str | None
    data_dir: Path | None
    _process: subprocess.Popen = field(repr=False)
    _log_file: "tempfile._TemporaryFileWrapper[bytes]" = field(repr=False)

    @property
    def url(self) -> str:
        """Base URL, with scheme, as ``STORAGE_EMULATOR_HOST`` expects it."""
        return f"http://{self.host}:{self.port}"

    def env(self) -> dict[str, str]:
        """Environment variables that point google-cloud-storage at this emulator."""
        return {STORAGE_EMULATOR_ENV_VAR: self.url}

    @property
    def running(self) -> bool:
        return self._process.poll() is None

    def log_text(self) -> str:
        """What the emulator printed so far (useful when a test fails)."""
        self._log_file.flush()
        return Path(self._log_file.name).read_text(errors="replace")

    def stop(self, timeout: float = 5.0) -> None:
        """Terminate the emulator process (kill it if it does not exit within ``timeout``)."""
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=timeout)
        with contextlib.suppress(OSError):
            self._log_file.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _is_ready(url: str) -> bool:
    """True once the emulator answers its bucket listing endpoint."""
    try:
        with urllib.request.urlopen(f"{url}/storage/v1/b", timeout=1.0) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def start_emulator(
    default_bucket: str | None = None,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    data_dir: str | Path | None = None,
    startup_timeout: float = 30.0,
) -> EmulatorHandle:
    """Start ``gcp-storage-emulator`` and wait until it answers HTTP requests.

    Args:
        default_bucket: bucket created at start-up (``--default-bucket``), or None for none.
        host: interface to bind; loopback by default so nothing is exposed.
        port: fixed port, or None to pick a free one (retried a few times if the port is taken).
        data_dir: folder for persistent storage; None keeps everything in memory (``-M``).
        startup_timeout: seconds to wait for the server to answer before giving up.

    Returns:
        An :class:`EmulatorHandle` with ``host``, ``port``, ``url``, ``env()`` and ``stop()``.
        The process is also stopped at interpreter exit, in case the caller forgets.
    """
    attempts = 1 if port is not None else 3
    last_log = ""
    for _ in range(attempts):
        chosen_port = port if port is not None else free_port(host)
        # -d must come before the subcommand; the emulator otherwise stores under $STORAGE_BASE.
        cmd = [sys.executable, "-m", "gcp_storage_emulator"]
        if data_dir is not None:
            Path(data_dir).mkdir(parents=True, exist_ok=True)
            cmd += ["-d", str(Path(data_dir).resolve())]
        cmd += ["start", "--host", host, "--port", str(chosen_port)]
        if default_bucket:
            cmd += ["--default-bucket", default_bucket]
        if data_dir is None:
            cmd.append("-M")
        # Output goes to a file, not a pipe: nobody reads a pipe and a full one would block the server.
        # The handle owns the file (closed by stop()), so no `with` block here.
        log_file = tempfile.NamedTemporaryFile(prefix="gcs-emulator-", suffix=".log")  # noqa: SIM115
        process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT)
        handle = EmulatorHandle(
            host=host,
            port=chosen_port,
            default_bucket=default_bucket,
            data_dir=Path(data_dir).resolve() if data_dir is not None else None,
            _process=process,
            _log_file=log_file,
        )
        deadline = time.monotonic() + startup_timeout
        while time.monotonic() < deadline and handle.running:
            if _is_ready(handle.url):
                atexit.register(handle.stop)
                return handle
            time.sleep(0.1)
        last_log = handle.log_text()
        handle.stop()
    raise EmulatorError(
        f"gcp-storage-emulator did not start on {host} within {startup_timeout:.0f}s; output:\n{last_log[-2000:]}"
    )


def create_bucket(emulator: EmulatorHandle | str, name: str) -> None:
    """Create bucket ``name`` in a running emulator (``emulator`` is a handle or its base URL).

    Uses the plain JSON API so it works whether or not ``STORAGE_EMULATOR_HOST`` is set in this
    process. An existing bucket is fine.
    """
    url = emulator.url if isinstance(emulator, EmulatorHandle) else emulator.rstrip("/")
    request = urllib.request.Request(
        f"{url}/storage/v1/b?project=emulator",
        data=json.dumps({"name": name}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()
    except urllib.error.HTTPError as exc:
        if exc.code != 409:  # 409 Conflict: the bucket already exists
            raise EmulatorError(f"could not create bucket {name!r} in the emulator: HTTP {exc.code}") from exc


def _adc_available() -> bool:
    """True when application default credentials may exist here (no network call): a key file named by
    ``GOOGLE_APPLICATION_CREDENTIALS``, gcloud's ``application_default_credentials.json``, or a machine
    on Google Cloud, whose metadata server gives credentials (Compute Engine and GKE nodes report a
    "Google" product name; Cloud Run sets ``K_SERVICE``)."""
    if any(os.environ.get(v) for v in ("GOOGLE_APPLICATION_CREDENTIALS", "GCE_METADATA_HOST", "K_SERVICE")):
        return True
    config = os.environ.get("CLOUDSDK_CONFIG") or str(Path.home() / ".config" / "gcloud")
    if (Path(config) / "application_default_credentials.json").is_file():
        return True
    try:
        return Path("/sys/class/dmi/id/product_name").read_text().strip().startswith("Google")
    except OSError:
        return False


def emulated_buckets(project: "Project") -> list[str]:
    """The buckets the CLI serves from a local emulator: see the module docstring for the rule."""
    if os.environ.get(STORAGE_EMULATOR_ENV_VAR) or _adc_available():
        return []
    return sorted({d.bucket for d in project.destinations.values()
                   if d.type == "gcs" and d.service_account_json is None and d.service_account_file is None})


def start_for_buckets(buckets: list[str], data_dir: str | Path | None, port: int | None = None) -> EmulatorHandle:
    """Start an emulator holding ``buckets`` (created if missing; existing objects in ``data_dir`` kept)."""
    handle = start_emulator(default_bucket=buckets[0] if buckets else None, port=port, data_dir=data_dir)
    try:
        for bucket in buckets[1:]:
            create_bucket(handle, bucket)
    except BaseException:
        handle.stop()
        raise
    return handle
