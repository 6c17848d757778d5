"""A small threaded HTTP server on loopback that hands every request to a Python function.

Each fake platform is an ``app(request) -> Response``; the server records every request it got
(method, path, query, headers, JSON body, arrival time) so tests can assert what was sent.
``dinmo demo`` runs the HubSpot fake on it (a fixed port); tests run fakes on a port the OS picks.
Standard library only: the package ships it, so it imports neither pytest nor werkzeug.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from typing_extensions import Self


@dataclass
class FakeRequest:
    """One request as the fake server received it."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-cased names
    raw_body: bytes
    arrived: float  # time.monotonic() at arrival

    @property
    def json(self) -> Any:
        """The body parsed as JSON (None when empty or invalid)."""
        try:
            return json.loads(self.raw_body) if self.raw_body else None
        except ValueError:
            return None


@dataclass
class FakeResponse:
    """What the fake answers: status, JSON body (or raw bytes) and headers."""

    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


App = Callable[[FakeRequest], FakeResponse]


class FakeServer:
    """Run ``app`` on ``http://127.0.0.1:<port>`` in a background thread (a context manager).

    ``port`` 0 lets the OS pick a free one. The port is bound here, so a taken port raises
    ``OSError`` (``errno.EADDRINUSE``) from the constructor, before anything starts.
    """

    def __init__(self, app: App, port: int = 0) -> None:
        self.app = app
        self.requests: list[FakeRequest] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out separately: no 40 ms delayed-ACK wait

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                parsed = urllib.parse.urlsplit(self.path)
                request = FakeRequest(
                    method=self.command,
                    path=parsed.path,
                    query=dict(urllib.parse.parse_qsl(parsed.query)),
                    headers={k.lower(): v for k, v in self.headers.items()},
                    raw_body=raw,
                    arrived=time.monotonic(),
                )
                with server._lock:
                    server.requests.append(request)
                response = server.app(request)
                if response.body is None:
                    payload = b""
                elif isinstance(response.body, bytes):
                    payload = response.body
                else:
                    payload = json.dumps(response.body).encode()
                self.send_response(response.status)
                if payload:
                    self.send_header("Content-Type", "application/json;charset=utf-8")
                for name, value in response.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

            def log_message(self, format: str, *args: Any) -> None:
                pass  # request lines would clutter the demo's and the tests' output

        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-server", daemon=True
        )

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop serving and free the port (also when the server never started)."""
        if self._thread.is_alive():
            self._httpd.shutdown()
            self._thread.join(timeout=5)
        self._httpd.server_close()


class _FakeHandler(BaseHTTPRequestHandler):
    """Hands every request to ``server.fake._serve(handler)``: the fake reads and answers it itself."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out separately: no 40 ms delayed-ACK wait

    def _serve(self) -> None:
        self.server.fake._serve(self)  # type: ignore[attr-defined]

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:
        """Stay silent: request lines would only clutter the test output."""


class ServedFake:
    """The life cycle of a fake that answers raw requests itself (``_serve(handler)``): a threaded
    server on a free loopback port, started and stopped as a context manager."""

    thread_name = "fake"
    content_type = "application/json"
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None
    # set by each fake: the lock its state is kept under, the latency of every answer, the in-flight count
    _lock: Any
    latency: float
    _in_flight: int
    max_in_flight: int

    def _answer(self, method: str, url: urllib.parse.SplitResult, headers: Any, raw: bytes,
                arrived: float) -> tuple[int, Any, dict[str, str]]:  # pragma: no cover - each fake defines it
        """The fake's (status, JSON body, headers) for one request; called under ``_lock``."""
        raise NotImplementedError

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        """Read one request, wait ``latency`` outside the lock (so requests overlap and
        ``max_in_flight`` counts them), answer it under the lock, write the JSON answer."""
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        arrived = time.monotonic()
        with self._lock:
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
        try:
            if self.latency:
                time.sleep(self.latency)
            with self._lock:
                status, body, headers = self._answer(handler.command, urllib.parse.urlsplit(handler.path),
                                                     handler.headers, raw, arrived)
        finally:
            with self._lock:
                self._in_flight -= 1
        payload = json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", self.content_type)
        handler.send_header("Content-Length", str(len(payload)))
        for name, value in headers.items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(payload)

    def start(self) -> Self:
        """Start serving on a free loopback port; returns ``self``."""
        server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeHandler)
        server.daemon_threads = True
        server.fake = self  # type: ignore[attr-defined]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name=self.thread_name, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the server and free its port."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """The base URL to configure as the destination's ``base_url``."""
        if self._server is None:
            raise RuntimeError(f"{type(self).__name__} is not started: use it as a context manager or call .start()")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"
