"""A small threaded HTTP server on loopback that hands every request to a Python function.

Each fake platform is an ``app(request) -> Response``; the server records every request it got
(method, path, query, headers, JSON body, arrival time) so tests can assert what was sent.
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
    """Run ``app`` on ``http://127.0.0.1:<free port>`` in a background thread (a context manager)."""

    def __init__(self, app: App) -> None:
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
                pass  # keep test output quiet

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-server", daemon=True
        )

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)
