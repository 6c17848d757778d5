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
* ``firestore_proxy``: a :class:`FirestoreProxy` in front of the session's emulator for one test.

:class:`FirestoreProxy` is a gRPC proxy on loopback that forwards every call to the emulator as it
came (bytes in, bytes out) and keeps what a test needs to see of the wire: each call's method, its
decoded request (``BatchWriteRequest``...) and its metadata (the ``authorization`` header). It can
answer chosen calls itself with a gRPC error (``fail("BatchWrite", RESOURCE_EXHAUSTED, ...)``), the
way Firestore signals overload, or forward them without their ``authorization`` metadata so that
the emulator itself refuses them (``PERMISSION_DENIED``, as Firestore refuses a caller without the
right role). Everything else is the real emulator's answer.

Where the emulator differs from Firestore (checked with the emulator of Google Cloud SDK 528.0.0):
it takes gRPC messages of 4 MiB at most (``RESOURCE_EXHAUSTED: gRPC message exceeds maximum size
4194304``) where Firestore documents 10 MiB requests; a BatchWrite whose writes all succeed answers
an empty ``status`` list; and the message of a per-write ``NOT_FOUND`` is a dump of its internal
entity key, not Firestore's ``No document to update``.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from typing_extensions import Self

from dinmo_dagster.emulator import free_port

__all__ = [
    "FIRESTORE_EMULATOR_ENV_VAR",
    "FirestoreEmulator",
    "FirestoreEmulatorUnavailable",
    "FirestoreProxy",
    "ProxiedCall",
    "firestore_emulator",
    "firestore_env",
    "firestore_proxy",
    "start_firestore_emulator",
    "terminate_as_interrupt",
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

    def reset(self, database: str = "(default)", project: str | None = None) -> None:
        """Delete every document of ``database`` in ``project`` (default: the emulator's project)."""
        database_path = f"projects/{project or self.project}/databases/{database}/documents"
        path = urllib.parse.quote(database_path, safe="/()")
        request = urllib.request.Request(f"{self.url}/emulator/v1/{path}", method="DELETE")
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


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM (``timeout``, a CI runner) raises KeyboardInterrupt in the main
    thread, as Ctrl-C does: pytest then tears its fixtures down and the emulator, which runs in a
    session of its own and would outlive the test process, is stopped. Nothing changes when SIGTERM
    already has a handler or this is not the main thread."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) not in (
        signal.SIG_DFL,
        None,
    ):
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@pytest.fixture(scope="session")
def firestore_emulator() -> Iterator[FirestoreEmulator]:
    """The Firestore emulator for the test session (skips, naming what to install, when it is missing)."""
    try:
        with start_firestore_emulator() as emulator, terminate_as_interrupt():
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



# --------------------------------------------------------------------------------------------------
# A recording, fault-injecting gRPC proxy in front of the emulator
# --------------------------------------------------------------------------------------------------

# Firestore's methods that answer with a stream, or take one (the rest are unary).
_SERVER_STREAMING = frozenset(
    {"BatchGetDocuments", "RunQuery", "RunAggregationQuery", "PartitionQuery", "ExecutePipeline"}
)
_BIDI_STREAMING = frozenset({"Write", "Listen"})
# Metadata gRPC sets on each hop itself: forwarding it would duplicate it.
_HOP_METADATA = frozenset({"user-agent", "te", "content-type", "grpc-accept-encoding", "grpc-encoding"})


@dataclass
class ProxiedCall:
    """One call that reached the proxy: ``method`` (``BatchWrite``), its ``request`` decoded as
    Firestore's message (raw bytes for methods without one), its ``metadata`` (lower-case keys) and
    the ``status`` it got (``OK``, or the gRPC status name from the emulator or the proxy)."""

    method: str
    request: Any
    metadata: dict[str, str]
    raw: bytes
    arrived: float
    status: str = "pending"
    injected: bool = False


@dataclass
class _Failure:
    code: Any  # grpc.StatusCode
    message: str
    times: int


class FirestoreProxy:
    """A gRPC proxy on a free loopback port that forwards every call to ``target`` (the emulator).

    ``host`` is what a client takes as its emulator host (``http://{host}`` as a ``base_url``).
    ``calls`` lists every call in arrival order. :meth:`fail` answers the next calls of a method
    with an error status instead of forwarding them; ``strip_auth = True`` forwards calls without
    their ``authorization`` metadata (the emulator then refuses administrative calls).
    """

    def __init__(self, target: str) -> None:
        import grpc

        self.target = target
        self.calls: list[ProxiedCall] = []
        self.strip_auth = False
        self._failures: dict[str, list[_Failure]] = {}
        self._lock = threading.Lock()
        # No size limit of its own: the emulator's (4 MiB) is the one a test meets.
        unlimited = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
        self._channel = grpc.insecure_channel(target, options=unlimited)
        self._server = grpc.server(
            ThreadPoolExecutor(max_workers=16, thread_name_prefix="firestore-proxy"), options=unlimited
        )
        self._server.add_generic_rpc_handlers((_ProxyHandler(self),))
        port = self._server.add_insecure_port("127.0.0.1:0")
        self.host = f"127.0.0.1:{port}"
        self._server.start()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``: the proxy as a plain-text (emulator) endpoint."""
        return f"http://{self.host}"

    def close(self) -> None:
        """Stop serving and close the channel to the emulator."""
        self._server.stop(grace=None).wait(10)
        self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def fail(self, method: str, code: Any, message: str, *, times: int = 1) -> None:
        """Answer the next ``times`` calls of ``method`` (``BatchWrite``) with ``code`` (a
        ``grpc.StatusCode``) and ``message`` instead of forwarding them."""
        with self._lock:
            self._failures.setdefault(method, []).append(_Failure(code, message, times))

    def requests(self, method: str) -> list[Any]:
        """The decoded requests of every call of ``method`` that reached the proxy."""
        with self._lock:
            return [c.request for c in self.calls if c.method == method]

    # -- serving --------------------------------------------------------------------------------------

    def _arrive(self, method: str, raw: bytes, context: Any) -> tuple[ProxiedCall, _Failure | None, list]:
        name = method.rsplit("/", 1)[-1]
        metadata = {key.lower(): value for key, value in context.invocation_metadata()}
        call = ProxiedCall(name, _decode(name, raw), metadata, raw, time.monotonic())
        with self._lock:
            self.calls.append(call)
            queue = self._failures.get(name) or []
            failure = queue[0] if queue else None
            if failure is not None:
                failure.times -= 1
                if failure.times <= 0:
                    queue.pop(0)
        forward = [
            (key, value)
            for key, value in metadata.items()
            if key not in _HOP_METADATA
            and not key.startswith((":", "grpc-"))
            and not (self.strip_auth and key == "authorization")
        ]
        return call, failure, forward

    def _abort(self, call: ProxiedCall, context: Any, code: Any, message: str) -> None:
        call.status = code.name
        context.abort(code, message)

    def unary_unary(self, method: str, raw: bytes, context: Any) -> bytes:
        import grpc

        call, failure, forward = self._arrive(method, raw, context)
        if failure is not None:
            call.injected = True
            self._abort(call, context, failure.code, failure.message)
        try:
            answer = self._channel.unary_unary(method)(raw, metadata=forward, timeout=60)
        except grpc.RpcError as exc:
            self._abort(call, context, exc.code(), exc.details() or "")
        call.status = "OK"
        return answer

    def unary_stream(self, method: str, raw: bytes, context: Any) -> Iterator[bytes]:
        import grpc

        call, failure, forward = self._arrive(method, raw, context)
        if failure is not None:
            call.injected = True
            self._abort(call, context, failure.code, failure.message)
        try:
            yield from self._channel.unary_stream(method)(raw, metadata=forward, timeout=60)
        except grpc.RpcError as exc:
            self._abort(call, context, exc.code(), exc.details() or "")
        call.status = "OK"

    def stream_stream(self, method: str, requests: Iterable[bytes], context: Any) -> Iterator[bytes]:
        import grpc

        call, failure, forward = self._arrive(method, b"", context)
        if failure is not None:
            call.injected = True
            self._abort(call, context, failure.code, failure.message)
        try:
            yield from self._channel.stream_stream(method)(iter(requests), metadata=forward)
        except grpc.RpcError as exc:
            self._abort(call, context, exc.code(), exc.details() or "")
        call.status = "OK"


def _decode(method: str, raw: bytes) -> Any:
    """``raw`` as Firestore's ``{method}Request`` message, or the bytes when there is none."""
    from google.cloud.firestore_v1.types import firestore as firestore_types

    message = getattr(firestore_types, f"{method}Request", None)
    if message is None or not raw:
        return raw
    return message.deserialize(raw)


class _ProxyHandler:
    """Routes every method to the proxy, streaming or not, with bytes in and out."""

    def __init__(self, proxy: FirestoreProxy) -> None:
        self.proxy = proxy

    def service(self, details: Any) -> Any:
        import grpc

        method = details.method
        name = method.rsplit("/", 1)[-1]
        if name in _SERVER_STREAMING:
            return grpc.unary_stream_rpc_method_handler(functools.partial(self.proxy.unary_stream, method))
        if name in _BIDI_STREAMING:
            return grpc.stream_stream_rpc_method_handler(functools.partial(self.proxy.stream_stream, method))
        return grpc.unary_unary_rpc_method_handler(functools.partial(self.proxy.unary_unary, method))


@pytest.fixture
def firestore_proxy(firestore_emulator: FirestoreEmulator) -> Iterator[FirestoreProxy]:
    """A :class:`FirestoreProxy` in front of the session's emulator, closed after the test."""
    pytest.importorskip("grpc", reason="needs grpcio (installed with google-cloud-firestore)")
    with FirestoreProxy(firestore_emulator.host) as proxy:
        yield proxy
