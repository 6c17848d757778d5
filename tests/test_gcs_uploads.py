"""Parallel composite uploads to GCS and concurrent part uploads of a sync, against the GCS emulator.

A small proxy in front of the emulator stands in for the parts of real GCS the emulator does not check:
it refuses a compose of more than 32 sources with a 400, as GCS does ("You can compose between 1 and 32
source objects", https://cloud.google.com/storage/docs/composite-objects), answers chosen requests with
GCS's 503 error, and holds uploads at a barrier so a test can prove they were in flight together.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import dagster as dg
import duckdb
import pytest
from google.cloud import storage

from dinmo_dagster import sync
from dinmo_dagster.assets.activations import sync_target
from dinmo_dagster.assets.models import refresh_upstream
from dinmo_dagster.config import load_project
from dinmo_dagster.destinations import DestinationError, destination_from_config
from dinmo_dagster.destinations.gcs import TEMP_PREFIX, GCSDestination
from dinmo_dagster.resources import build_resources

try:  # pytest puts either the repository root or tests/ on sys.path, depending on tests/__init__.py
    from tests.gcs_emulator import EmulatorHandle, start_gcs_emulator
except ImportError:  # pragma: no cover - depends on the pytest import mode
    from gcs_emulator import EmulatorHandle, start_gcs_emulator

BUCKET = "uploads-bucket"
KIB = 1024
PIECE = 256 * KIB  # the smallest piece size (a multiple of 256 KiB, as for resumable chunks)
LOGGER = "dinmo_dagster.destinations"

# --------------------------------------------------------------------------------------------------
# The proxy
# --------------------------------------------------------------------------------------------------

Plan = Callable[[str, str, str, int], int | None]
"""(method, path with query, object name, how many earlier requests of that method had that object name)
-> status to answer (-1: stall, then 503), or None to forward."""


class GCSProxy:
    """Forwards to the emulator; enforces GCS's 32-source compose limit; injects faults from ``plan``;
    ``hold(n)`` makes the first ``n`` uploads wait until all ``n`` are in flight (5 s at most)."""

    def __init__(self, upstream: EmulatorHandle, plan: Plan | None = None) -> None:
        self.upstream = upstream
        self.plan = plan or (lambda method, path, name, seen: None)
        self.requests: list[tuple[str, str, str]] = []  # (method, path, object name)
        self.answered: list[tuple[str, int]] = []  # (object name, injected status)
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        self.barrier: threading.Barrier | None = None
        self.held = 0
        self.stalled = threading.Event()  # set: uploads planned as 'stall' are released
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                name = object_name(self.path, body)
                upload = self.path.startswith("/upload/")
                with proxy.lock:
                    seen = sum(1 for m, _, n in proxy.requests if n == name and m == self.command)
                    proxy.requests.append((self.command, self.path, name))
                    status = proxy.plan(self.command, self.path, name, seen)
                    if status is not None and status > 0:
                        proxy.answered.append((name, status))
                    if upload:
                        proxy.in_flight += 1
                        proxy.max_in_flight = max(proxy.max_in_flight, proxy.in_flight)
                    barrier = proxy.barrier if upload and proxy.held > 0 else None
                    if barrier is not None:
                        proxy.held -= 1
                try:
                    if barrier is not None:
                        try:
                            barrier.wait(timeout=5)
                        except threading.BrokenBarrierError:
                            pass  # the test sees max_in_flight below the barrier's size
                    if status == -1:  # stall until released (a process killed mid-upload)
                        proxy.stalled.wait(30)
                        status = 503
                    if status is None and is_compose(self.path):
                        sources = len(json.loads(body or b"{}").get("sourceObjects", []))
                        if not 1 <= sources <= 32:
                            self._error(
                                400,
                                f"The number of source components provided ({sources}) "
                                "exceeds the maximum (32)",
                            )
                            return
                    if status is not None:
                        self._error(status, {503: "Backend Error"}.get(status, "injected fault"))
                        return
                    self._forward(body)
                finally:
                    if upload:
                        with proxy.lock:
                            proxy.in_flight -= 1

            def _error(self, status: int, message: str) -> None:
                payload = json.dumps({"error": {"code": status, "message": message}}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def _forward(self, body: bytes) -> None:
                conn = http.client.HTTPConnection(proxy.upstream.host, proxy.upstream.port, timeout=60)
                # The client's Host header stays: the emulator builds resumable-session URLs from it.
                headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                conn.request(self.command, self.path, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                conn.close()

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def hold(self, n: int) -> None:
        self.barrier, self.held = threading.Barrier(n), n

    def uploads_of(self, pattern: str) -> list[str]:
        """Names of the uploaded objects matching ``pattern``, one per upload request that created one."""
        return [
            n
            for m, p, n in self.requests
            if m == "POST" and p.startswith("/upload/") and re.search(pattern, n)
        ]

    def composes(self) -> list[str]:
        return [n for m, p, n in self.requests if m == "POST" and is_compose(p)]

    def close(self) -> None:
        self.stalled.set()
        self.server.shutdown()
        self.server.server_close()


def is_compose(path: str) -> bool:
    return path.split("?", 1)[0].endswith("/compose")


def object_name(path: str, body: bytes) -> str:
    """The object a request is about: ``name=`` of an upload, or the object in the path."""
    from urllib.parse import parse_qs, unquote, urlsplit

    parts = urlsplit(path)
    query = parse_qs(parts.query)
    if "name" in query:
        return query["name"][0]
    if path.startswith("/upload/") and body:  # multipart upload: the name is in the JSON metadata part
        match = re.search(rb'"name":\s*"([^"]+)"', body[:4096])
        if match:
            return match.group(1).decode()
    match = re.search(r"/o/([^/?]+)", parts.path)
    return unquote(match.group(1)) if match else ""


# --------------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorHandle]:
    handle = start_gcs_emulator(BUCKET)
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture
def proxy(emulator: EmulatorHandle, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., GCSProxy]]:
    """Factory: a GCSProxy with a plan; the product and the test's client talk to GCS through it."""
    started: list[GCSProxy] = []

    def start(plan: Plan | None = None) -> GCSProxy:
        p = GCSProxy(emulator, plan)
        started.append(p)
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", p.url)
        return p

    yield start
    for p in started:
        p.close()


@pytest.fixture
def folder() -> str:
    return f"run-{uuid.uuid4().hex[:8]}"


def make_gcs(**settings: object) -> GCSDestination:
    """Tiny pieces so a test file of a few hundred KiB takes the composite path; fast retries."""
    defaults: dict[str, object] = {
        "type": "gcs",
        "bucket": BUCKET,
        "project": "test",
        "retry_initial_wait_seconds": 0.001,
        "retry_max_wait_seconds": 0.01,
        "parallel_upload_threshold_bytes": PIECE + 1,
        "parallel_upload_piece_bytes": PIECE,
    }
    dest = destination_from_config("exports", {**defaults, **settings})
    assert isinstance(dest, GCSDestination)
    return dest


def file_of(path: Path, size: int) -> bytes:
    """A deterministic, non-repeating file: a piece in the wrong place would not compare equal."""
    data = b"".join(f'{i:09d},row {i},"a, b"\n'.encode() for i in range(size // 20 + 1))[:size]
    path.write_bytes(data)
    return data


def bucket_objects(prefix: str = "") -> list[str]:
    client = storage.Client(project="test")
    return sorted(b.name for b in client.list_blobs(BUCKET, prefix=prefix or None))


# --------------------------------------------------------------------------------------------------
# Parallel composite uploads
# --------------------------------------------------------------------------------------------------


def test_large_file_goes_in_concurrent_pieces_and_lands_byte_identical(
    proxy: Callable[..., GCSProxy], folder: str, tmp_path: Path
) -> None:
    p = proxy()
    p.hold(4)  # the first four pieces must all be in flight at once, or the barrier breaks
    data = file_of(tmp_path / "big.csv", 9 * PIECE + 1234)  # 10 pieces, the last one short
    dest = make_gcs(upload_workers=4)

    assert dest.upload(tmp_path / "big.csv", f"{folder}/big.csv") == len(data)

    assert dest.read_bytes(f"{folder}/big.csv") == data
    assert p.max_in_flight == 4  # never more than upload_workers
    assert len(p.uploads_of(r"^\.dinmo-tmp/")) == 10
    assert p.composes() == [f"{folder}/big.csv"]  # 10 sources: one compose
    blob = storage.Client(project="test").bucket(BUCKET).get_blob(f"{folder}/big.csv")
    assert blob.content_type == "text/csv"
    assert bucket_objects(folder) == [f"{folder}/big.csv"]
    assert bucket_objects(TEMP_PREFIX) == []  # every temporary piece was deleted


def test_more_than_32_pieces_are_composed_in_a_tree(
    proxy: Callable[..., GCSProxy], folder: str, tmp_path: Path
) -> None:
    p = proxy()
    data = file_of(tmp_path / "huge.jsonl", 32 * PIECE + 100)  # 33 pieces: GCS refuses one compose of 33
    dest = make_gcs(upload_workers=8)

    dest.upload(tmp_path / "huge.jsonl", f"{folder}/huge.jsonl")

    assert dest.read_bytes(f"{folder}/huge.jsonl") == data
    composes = p.composes()
    assert len(composes) == 3 and composes[-1] == f"{folder}/huge.jsonl"
    assert all(
        re.fullmatch(rf"\.dinmo-tmp/{folder}/huge\.jsonl/[0-9a-f]{{32}}/c01-0000[01]", n)
        for n in composes[:2]
    )
    assert bucket_objects(TEMP_PREFIX) == []


def test_a_transient_503_on_one_piece_resends_that_piece_only(
    proxy: Callable[..., GCSProxy], folder: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def plan(method: str, path: str, name: str, seen: int) -> int | None:
        # the first upload of piece 4 fails with GCS's 503; its retry goes through
        return 503 if path.startswith("/upload/") and name.endswith("/p00003") and seen == 0 else None

    p = proxy(plan)
    data = file_of(tmp_path / "big.csv", 6 * PIECE)
    dest = make_gcs(upload_workers=3)

    with caplog.at_level(logging.WARNING, logger=LOGGER):
        dest.upload(tmp_path / "big.csv", f"{folder}/big.csv")

    assert dest.read_bytes(f"{folder}/big.csv") == data
    pieces = [n.rsplit("/", 1)[1] for n in p.uploads_of(r"^\.dinmo-tmp/")]
    assert sorted(pieces) == ["p00000", "p00001", "p00002", "p00003", "p00003", "p00004", "p00005"]
    assert [status for _, status in p.answered] == [503]
    warnings = [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].startswith(
        f"destination 'exports': GCS upload (piece 4 of 6) gs://{BUCKET}/{folder}/big.csv failed (attempt 1 of 5): "
        "HTTP 503: "
    )
    assert bucket_objects(TEMP_PREFIX) == []


def test_a_piece_that_keeps_failing_fails_the_upload_and_leaves_no_temporary(
    proxy: Callable[..., GCSProxy], folder: str, tmp_path: Path
) -> None:
    def plan(method: str, path: str, name: str, seen: int) -> int | None:
        return 503 if path.startswith("/upload/") and name.endswith("/p00002") else None

    p = proxy(plan)
    file_of(tmp_path / "big.csv", 5 * PIECE)
    dest = make_gcs(upload_workers=2, retry_attempts=2)

    with pytest.raises(DestinationError) as failure:
        dest.upload(tmp_path / "big.csv", f"{folder}/big.csv")

    assert str(failure.value) == (
        f"destination 'exports': GCS upload (piece 3 of 5) of gs://{BUCKET}/{folder}/big.csv failed after 2 "
        f"attempts: HTTP 503: POST {p.url}/upload/storage/v1/b/{BUCKET}/o?uploadType=multipart: "
        '{"error": {"code": 503, "message": "Backend Error"}}: '
        "('Request failed with status code', 503, 'Expected one of', <HTTPStatus.OK: 200>)"
    )
    assert p.composes() == []  # nothing was composed: the object never existed
    assert bucket_objects(folder) == []
    assert bucket_objects(TEMP_PREFIX) == []  # the pieces that had landed were deleted


CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from dinmo_dagster.destinations import destination_from_config

    settings = {"type": "gcs", "bucket": sys.argv[1], "project": "test", "upload_workers": 2,
                "parallel_upload_threshold_bytes": 262145, "parallel_upload_piece_bytes": 262144}
    destination_from_config("exports", settings).upload(Path(sys.argv[2]), sys.argv[3])
    """
)


def test_pieces_of_a_killed_upload_are_removed_by_the_next_delete_of_its_object(
    proxy: Callable[..., GCSProxy], folder: str, tmp_path: Path
) -> None:
    # A sync journals each object path before uploading it; the next sync deletes the journalled paths
    # of a dead one (sync.recover). Deleting the path must also remove the dead upload's pieces.
    def plan(method: str, path: str, name: str, seen: int) -> int | None:
        return -1 if path.startswith("/upload/") and name.endswith("/p00003") else None  # stall

    p = proxy(plan)
    file_of(tmp_path / "big.csv", 4 * PIECE + 10)
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, BUCKET, str(tmp_path / "big.csv"), f"{folder}/big.csv"],
        env={**os.environ, "STORAGE_EMULATOR_HOST": p.url},
    )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # pieces 1-3 and 5 landed, piece 4 hangs in the proxy
            with p.lock:
                if len(p.uploads_of(r"^\.dinmo-tmp/")) == 5 and p.in_flight == 1:
                    break
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(timeout=10)
    left = bucket_objects(TEMP_PREFIX)
    assert [n.rsplit("/", 1)[1] for n in left] == ["p00000", "p00001", "p00002", "p00004"]
    assert all(n.startswith(f"{TEMP_PREFIX}{folder}/big.csv/") for n in left)

    make_gcs().delete([f"{folder}/big.csv"])

    assert bucket_objects(TEMP_PREFIX) == []
    assert bucket_objects(folder) == []


# --------------------------------------------------------------------------------------------------
# A sync uploads its part files concurrently
# --------------------------------------------------------------------------------------------------

PROJECT = """\
sources:
  wh: {{type: duckdb, path: wh.duckdb}}
models:
  customers: {{source: wh, table: raw.customers, primary_key: customer_id}}
segments:
  everyone: {{model: customers, sql: "select * from {{{{ model }}}}"}}
destinations:
  out: {{type: gcs, bucket: {bucket}, project: test, upload_workers: 3, retry_initial_wait_seconds: 0.001}}
activations:
  parts:
    segment: everyone
    destination: out
    folder: {folder}
    file_name: customers
    format: csv
    run_type: full_only
    sync_mode: snapshot
    max_file_size_mb: 0.01
"""


def test_a_sync_uploads_its_part_files_concurrently_in_order(
    proxy: Callable[..., GCSProxy], folder: str, tmp_path: Path
) -> None:
    con = duckdb.connect(str(tmp_path / "wh.duckdb"))
    con.execute("create schema raw")
    con.execute(
        "create table raw.customers as select range as customer_id, 'user' || range || '@example.com' "
        "as email from range(1, 2001)"
    )
    con.close()
    (tmp_path / "dinmo.yaml").write_text(PROJECT.format(bucket=BUCKET, folder=folder))
    p = proxy()
    p.hold(3)  # three part files in flight at once, or the barrier breaks after 5 s
    project = load_project(tmp_path)
    with dg.build_resources(build_resources(project)) as resources:
        refresh_upstream(
            project, "parts", resources
        )  # the model and segment, as the Dagster assets build them
        t = sync_target(project, "parts", resources)
        key = sync.new_partition_key()
        sync.take_snapshot(t, key)
        result = sync.deliver(t, key)

    names = [f"{folder}/customers_part-{i:05d}.csv" for i in range(1, len(result.files) + 1)]
    assert len(names) >= 5
    assert result.files == [f"gs://{BUCKET}/{n}" for n in names]  # in the order they were written
    assert p.max_in_flight == 3
    assert bucket_objects(folder) == names
    client = storage.Client(project="test")
    rows: list[str] = []
    for n in names:
        header, *lines = client.bucket(BUCKET).blob(n).download_as_text().splitlines()
        assert header == "customer_id,email"
        rows += lines
    assert rows == [f"{i},user{i}@example.com" for i in range(1, 2001)]
    assert result.rows_written == 2000
