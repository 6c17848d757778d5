"""Destinations against a real GCS emulator on loopback (no mocks of our code).

Fault injection uses a small HTTP proxy in front of the emulator that answers chosen requests with
an error status and forwards everything else unchanged.
"""

import http.client
import json
import logging
import os
import stat
import threading
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import dagster as dg
import pytest
from google.auth.credentials import AnonymousCredentials

from dinmo_dagster.destinations import DestinationError, destination_from_config
from dinmo_dagster.destinations.gcs import GCSDestination
from dinmo_dagster.destinations.local import LocalDestination
from dinmo_dagster.emulator import free_port
from dinmo_dagster.resources import DestinationResource

try:  # pytest puts either the repository root or tests/ on sys.path, depending on tests/__init__.py
    from tests.gcs_emulator import EmulatorHandle, start_gcs_emulator
except ImportError:  # pragma: no cover - depends on the pytest import mode
    from gcs_emulator import EmulatorHandle, start_gcs_emulator

BUCKET = "test-bucket"
LOGGER = "dinmo_dagster.destinations"

# --------------------------------------------------------------------------------------------------
# Fixtures and helpers
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorHandle]:
    handle = start_gcs_emulator(BUCKET)
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture
def gcs_env(emulator: EmulatorHandle, monkeypatch: pytest.MonkeyPatch) -> EmulatorHandle:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", emulator.url)
    return emulator


@pytest.fixture
def folder() -> str:
    """A fresh folder per test so tests sharing the emulator never see each other's objects."""
    return f"run-{uuid.uuid4().hex[:8]}"


def make_gcs(bucket: str = BUCKET, **settings: object) -> GCSDestination:
    """A GCS destination with tiny retry waits (the policy is the same, only faster)."""
    defaults: dict[str, object] = {
        "type": "gcs",
        "retry_initial_wait_seconds": 0.001,
        "retry_max_wait_seconds": 0.01,
    }
    dest = destination_from_config("exports", {**defaults, "bucket": bucket, **settings})
    assert isinstance(dest, GCSDestination)
    return dest


def make_local(path: Path, name: str) -> LocalDestination:
    """A local-folder destination."""
    dest = destination_from_config(name, {"type": "local", "path": str(path)})
    assert isinstance(dest, LocalDestination)
    return dest


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def retry_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]


FaultPlan = Callable[[str, str, int], int | None]
"""(method, path with query, index of this request among matching ones) -> status to answer, or None
to forward the request to the emulator."""


class FaultProxy:
    """HTTP proxy to the emulator that answers some requests with an error instead of forwarding.

    ``plan`` is consulted for every request whose path starts with ``match_prefix`` (uploads by
    default); ``matched`` counts those requests, so tests can assert the number of attempts.
    """

    def __init__(self, upstream: EmulatorHandle, plan: FaultPlan, match_prefix: str = "/upload/") -> None:
        self.upstream = upstream
        self.plan = plan
        self.match_prefix = match_prefix
        self.matched: list[tuple[str, str]] = []
        self.answered: list[int] = []
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                status = None
                if self.path.startswith(proxy.match_prefix):
                    with proxy.lock:
                        index = len(proxy.matched)
                        proxy.matched.append((self.command, self.path))
                        status = proxy.plan(self.command, self.path, index)
                        if status is not None:
                            proxy.answered.append(status)
                if status is not None:
                    payload = json.dumps(
                        {"error": {"code": status, "message": FAULT_MESSAGES.get(status, "injected fault")}}
                    ).encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                conn = http.client.HTTPConnection(proxy.upstream.host, proxy.upstream.port, timeout=30)
                # Keep the client's Host header: the emulator builds resumable-session URLs from it,
                # so chunk uploads come back through the proxy too.
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
                pass  # keep test output clean

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


FAULT_MESSAGES = {
    403: "robot@acme.iam.gserviceaccount.com does not have storage.objects.create access to the "
    "Google Cloud Storage object.",
    429: "The rate of change requests to the object is too high.",
    503: "Backend Error",
}


@pytest.fixture
def fault_proxy(
    emulator: EmulatorHandle, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., FaultProxy]]:
    """Factory: start a FaultProxy with a plan and point STORAGE_EMULATOR_HOST at it."""
    proxies: list[FaultProxy] = []

    def start(plan: FaultPlan, match_prefix: str = "/upload/") -> FaultProxy:
        proxy = FaultProxy(emulator, plan, match_prefix)
        proxies.append(proxy)
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
        return proxy

    yield start
    for proxy in proxies:
        proxy.close()


# --------------------------------------------------------------------------------------------------
# Round trips
# --------------------------------------------------------------------------------------------------


def test_gcs_round_trip(gcs_env: EmulatorHandle, folder: str, tmp_path: Path) -> None:
    dest = make_gcs()
    dest.check()
    a = write(tmp_path / "a.csv", b"id,name\n1,Ann\n")
    b = write(tmp_path / "b.json", b'[{"id": 2}]')

    assert dest.upload(a, f"{folder}/export.csv") == a.stat().st_size
    assert dest.upload(b, f"{folder}/sub/export.json") == b.stat().st_size
    assert dest.uri(f"{folder}/export.csv") == f"gs://{BUCKET}/{folder}/export.csv"

    assert dest.list(f"{folder}/") == [f"{folder}/export.csv", f"{folder}/sub/export.json"]
    assert dest.list(f"{folder}/sub") == [f"{folder}/sub/export.json"]
    assert dest.list(f"{folder}/nothing-here") == []
    assert dest.exists(f"{folder}/export.csv")
    assert not dest.exists(f"{folder}/missing.csv")
    assert dest.read_bytes(f"{folder}/export.csv") == b"id,name\n1,Ann\n"

    # Uploading again replaces the object.
    write(a, b"id,name\n3,Bob\n")
    dest.upload(a, f"{folder}/export.csv")
    assert dest.read_bytes(f"{folder}/export.csv") == b"id,name\n3,Bob\n"

    blob = dest.get_client().bucket(BUCKET).get_blob(f"{folder}/export.csv")
    assert blob is not None and blob.content_type == "text/csv"

    dest.delete([f"{folder}/export.csv", f"{folder}/never-existed.csv"])
    assert not dest.exists(f"{folder}/export.csv")
    assert dest.list(f"{folder}/") == [f"{folder}/sub/export.json"]

    with pytest.raises(
        DestinationError, match=r"object '.*/export.csv' not found in GCS bucket 'test-bucket'"
    ):
        dest.read_bytes(f"{folder}/export.csv")


def test_gcs_client_uses_anonymous_credentials_and_project_with_emulator(gcs_env: EmulatorHandle) -> None:
    # A key is configured, but against the emulator it must not even be parsed or used.
    dest = make_gcs(project="demo-project", service_account_json="not used with the emulator")
    client = dest.get_client()
    assert type(client).__module__ == "google.cloud.storage.client"
    assert isinstance(client._credentials, AnonymousCredentials)
    assert client.project == "demo-project"
    assert dest.get_client() is client  # created once


def test_gcs_large_file_uses_resumable_upload_and_survives_a_failed_chunk(
    fault_proxy: Callable[..., FaultProxy], folder: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Files above 8 MiB go through a resumable session in chunks. The second chunk of the first
    # session fails with 503: the whole file is sent again in a new session, and the object is
    # complete (it never existed in a partial state: GCS finalises only after the last chunk).
    chunk = 1024 * 1024
    data = bytes(range(256)) * (9 * 1024 * 4 + 17)  # a little over 9 MiB
    local = write(tmp_path / "big.parquet", data)
    chunk_puts: list[int] = []

    def plan(method: str, path: str, index: int) -> int | None:
        if method == "PUT":
            chunk_puts.append(index)
            if len(chunk_puts) == 2:
                return 503
        return None

    proxy = fault_proxy(plan)
    dest = make_gcs(upload_chunk_size_bytes=chunk)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert dest.upload(local, f"{folder}/big.parquet") == len(data)

    sessions = [p for m, p in proxy.matched if m == "POST" and "uploadType=resumable" in p]
    assert len(sessions) == 2  # the retry started a new session
    assert len(chunk_puts) == 2 + 10  # 1 ok + 1 failed chunk, then 10 chunks of the full re-send
    assert len(retry_warnings(caplog)) == 1
    assert dest.read_bytes(f"{folder}/big.parquet") == data
    assert dest.list(f"{folder}/") == [f"{folder}/big.parquet"]


def test_local_round_trip(tmp_path: Path) -> None:
    root = tmp_path / "exports"
    dest = make_local(root, "local")
    dest.check()
    assert root.is_dir()
    a = write(tmp_path / "a.csv", b"id\n1\n")

    assert dest.upload(a, "folder/export.csv") == 5
    assert dest.upload(a, "folder/sub/export.csv") == 5
    assert dest.uri("folder/export.csv") == (root / "folder" / "export.csv").resolve().as_uri()
    assert dest.uri("folder/export.csv").startswith("file:///")
    assert dest.list("folder/") == ["folder/export.csv", "folder/sub/export.csv"]
    assert dest.list("folder/sub") == ["folder/sub/export.csv"]
    assert dest.list("") == ["folder/export.csv", "folder/sub/export.csv"]
    assert dest.list("nowhere/") == []
    assert dest.exists("folder/export.csv")
    assert not dest.exists("folder/missing.csv")
    assert dest.read_bytes("folder/export.csv") == b"id\n1\n"
    assert a.exists()  # upload copies: the caller's file is untouched

    dest.delete(["folder/export.csv", "folder/never-existed.csv"])
    assert dest.list("folder/") == ["folder/sub/export.csv"]
    with pytest.raises(DestinationError, match="object 'folder/export.csv' not found in local folder"):
        dest.read_bytes("folder/export.csv")
    # No temporary files are left behind.
    assert sorted(p.name for p in root.rglob("*") if p.is_file()) == ["export.csv"]


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)],
                         ids=["umask-022", "umask-077", "umask-002"])
def test_local_files_get_the_mode_the_process_umask_gives(tmp_path: Path, umask: int, mode: int) -> None:
    """Export files are for other tools and users: they get 0666 minus the umask, like any tool's files,
    whatever the mode of the private part file they come from (the writer's parts are 0600)."""
    root = tmp_path / "exports"
    dest = make_local(root, "local")
    part = write(tmp_path / "part.csv", b"id\n1\n")
    part.chmod(0o600)
    previous = os.umask(umask)
    try:
        dest.upload(part, "folder/export.csv")
        dest.upload(part, "folder/export.csv")  # replacing an existing file gives the same mode
    finally:
        os.umask(previous)
    assert stat.S_IMODE((root / "folder" / "export.csv").stat().st_mode) == mode


def test_local_failed_upload_leaves_nothing(tmp_path: Path) -> None:
    root = tmp_path / "exports"
    dest = make_local(root, "local")
    dest.check()
    (root / "blocked").write_text("a file where a folder is expected")
    with pytest.raises(DestinationError, match=r"destination 'local': could not write file:///"):
        dest.upload(write(tmp_path / "a.csv", b"x"), "blocked/export.csv")
    with pytest.raises(DestinationError, match="no such file"):
        dest.upload(tmp_path / "missing.csv", "folder/export.csv")
    assert dest.list("") == ["blocked"]
    assert [p.name for p in root.iterdir()] == ["blocked"]


def test_local_check_not_writable(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("x")
    dest = make_local(tmp_path / "a-file" / "exports", "local")
    with pytest.raises(DestinationError, match=r"destination 'local': local folder '.*' is not writable"):
        dest.check()


@pytest.mark.parametrize(
    "bad", ["", "/abs/file.csv", "../up.csv", "a/../b.csv", "a//b.csv", "a/./b.csv", "a/"]
)
def test_invalid_object_paths_are_rejected(gcs_env: EmulatorHandle, tmp_path: Path, bad: str) -> None:
    local = write(tmp_path / "a.csv", b"x")
    for dest in (make_gcs(), make_local(tmp_path / "out", "exports")):
        with pytest.raises(DestinationError, match="invalid object path"):
            dest.upload(local, bad)
    assert not (tmp_path / "up.csv").exists()


# --------------------------------------------------------------------------------------------------
# Permanent errors
# --------------------------------------------------------------------------------------------------


def test_missing_bucket_fails_at_once(
    fault_proxy: Callable[..., FaultProxy], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = fault_proxy(lambda method, path, index: None, match_prefix="/")  # count every request
    dest = make_gcs(bucket="no-such-bucket")
    with caplog.at_level(logging.WARNING, logger=LOGGER), pytest.raises(DestinationError) as info:
        dest.upload(write(tmp_path / "a.csv", b"x"), "folder/a.csv")
    assert str(info.value) == "destination 'exports': GCS bucket 'no-such-bucket' does not exist (404)"
    assert len(proxy.matched) == 1  # one attempt, no retry
    assert retry_warnings(caplog) == []

    with pytest.raises(DestinationError) as info:
        dest.check()
    assert str(info.value) == "destination 'exports': GCS bucket 'no-such-bucket' does not exist (404)"
    with pytest.raises(DestinationError, match="GCS bucket 'no-such-bucket' does not exist"):
        dest.list("folder/")


def test_forbidden_fails_at_once_naming_the_bucket(
    fault_proxy: Callable[..., FaultProxy], folder: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = fault_proxy(lambda method, path, index: 403)
    dest = make_gcs()
    with caplog.at_level(logging.WARNING, logger=LOGGER), pytest.raises(DestinationError) as info:
        dest.upload(write(tmp_path / "a.csv", b"x"), f"{folder}/a.csv")
    message = str(info.value)
    assert message.startswith("destination 'exports': access denied to GCS bucket 'test-bucket' (403): ")
    assert "does not have storage.objects.create access" in message
    assert len(proxy.matched) == 1
    assert retry_warnings(caplog) == []
    assert not dest.exists(f"{folder}/a.csv")


def test_bad_service_account_json_never_echoes_the_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    secret = "-----BEGIN PRIVATE KEY-----SUPERSECRET-----END PRIVATE KEY-----"
    keys = [
        f"not json at all {secret}",  # unparseable
        json.dumps({"type": "service_account", "private_key": secret}),  # fields missing
        json.dumps(  # complete, but the key material is garbage
            {
                "type": "service_account",
                "project_id": "p",
                "private_key_id": "k",
                "private_key": secret,
                "client_email": "robot@p.iam.gserviceaccount.com",
                "client_id": "1",
                "token_uri": "https://oauth2.googleapis.com/token",
            }
        ),
        json.dumps([secret]),  # JSON, but not an object
    ]
    for key in keys:
        dest = make_gcs(service_account_json=key)
        assert "SUPERSECRET" not in repr(dest) and "SUPERSECRET" not in str(dest)
        with pytest.raises(DestinationError) as info:
            dest.check()
        assert str(info.value) == (
            "destination 'exports': service_account_json is not a valid service account key"
        )
        # Nothing in the chain may hold the key either (JSONDecodeError.doc would).
        assert info.value.__cause__ is None and info.value.__context__ is None
        assert "SUPERSECRET" not in repr(info.value)


def test_both_key_settings_and_missing_key_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    with pytest.raises(DestinationError, match="not both"):
        make_gcs(service_account_json="{}", service_account_file="/x.json").check()
    with pytest.raises(DestinationError, match=r"service_account_file '.*nope.json' does not exist"):
        make_gcs(service_account_file=str(tmp_path / "nope.json")).check()
    bad = write(tmp_path / "bad.json", b'{"private_key": "SUPERSECRET"}')
    with pytest.raises(DestinationError, match="is not a valid service account key") as info:
        make_gcs(service_account_file=str(bad)).check()
    assert "SUPERSECRET" not in str(info.value)


# --------------------------------------------------------------------------------------------------
# Transient errors
# --------------------------------------------------------------------------------------------------


def test_transient_errors_are_retried_until_success(
    fault_proxy: Callable[..., FaultProxy], folder: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    statuses = [503, 429, 503]  # then the request goes through
    proxy = fault_proxy(lambda method, path, index: statuses[index] if index < len(statuses) else None)
    dest = make_gcs(retry_attempts=5)
    data = b"id,name\n1,Ann\n2,Bob\n"
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert dest.upload(write(tmp_path / "a.csv", data), f"{folder}/a.csv") == len(data)

    assert len(proxy.matched) == 4  # 3 failures + 1 success
    assert proxy.answered == [503, 429, 503]
    warnings = retry_warnings(caplog)
    assert len(warnings) == 3
    for record, status, attempt in zip(warnings, statuses, (1, 2, 3), strict=True):
        text = record.getMessage()
        assert f"HTTP {status}" in text
        assert f"(attempt {attempt} of 5)" in text
        assert f"gs://{BUCKET}/{folder}/a.csv" in text
    assert dest.read_bytes(f"{folder}/a.csv") == data


def test_persistent_503_fails_after_the_configured_attempts(
    fault_proxy: Callable[..., FaultProxy], folder: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = fault_proxy(lambda method, path, index: 503)
    dest = make_gcs(retry_attempts=3)
    with caplog.at_level(logging.WARNING, logger=LOGGER), pytest.raises(DestinationError) as info:
        dest.upload(write(tmp_path / "a.csv", b"x"), f"{folder}/a.csv")
    assert str(info.value).startswith(
        f"destination 'exports': GCS upload of gs://{BUCKET}/{folder}/a.csv failed after 3 attempts: HTTP 503"
    )
    assert len(proxy.matched) == 3
    assert len(retry_warnings(caplog)) == 2  # a warning before each retry, none after the last try
    assert not dest.exists(f"{folder}/a.csv")  # nothing left under the final name


def test_connection_refused_is_retried_then_fails(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{free_port()}")  # nobody listens
    dest = make_gcs(retry_attempts=2, timeout_seconds=5)
    expected = "failed after 2 attempts: ConnectionError"
    with caplog.at_level(logging.WARNING, logger=LOGGER), pytest.raises(DestinationError, match=expected):
        dest.upload(write(tmp_path / "a.csv", b"x"), "folder/a.csv")
    assert len(retry_warnings(caplog)) == 1


# --------------------------------------------------------------------------------------------------
# From the YAML
# --------------------------------------------------------------------------------------------------


def test_destination_from_config(tmp_path: Path) -> None:
    gcs = destination_from_config(
        "exports", {"type": "gcs", "bucket": "acme-exports", "project": "acme", "retry_attempts": 2}
    )
    assert isinstance(gcs, GCSDestination)
    assert (gcs.config.bucket, gcs.config.project, gcs.config.retry_attempts, gcs.destination_name) == (
        "acme-exports",
        "acme",
        2,
        "exports",
    )
    local = destination_from_config("dev", {"type": "local", "path": str(tmp_path)})
    assert isinstance(local, LocalDestination) and local.uri("a/b.csv") == (tmp_path / "a/b.csv").as_uri()

    cases = {
        "destination 'x': unknown type 's3'; expected one of gcs, local": {"type": "s3"},
        "destination 'x': unknown key(s) folder for type gcs": {"type": "gcs", "bucket": "b1", "folder": "f"},
        "destination 'x': missing required key(s) bucket for type gcs": {"type": "gcs"},
        "destination 'x': invalid GCS bucket name 'gs://acme'": {"type": "gcs", "bucket": "gs://acme"},
        "destination 'x': invalid settings for type gcs (retry_attempts)": {
            "type": "gcs",
            "bucket": "b1",
            "retry_attempts": "many",
        },
    }
    for expected, config in cases.items():
        with pytest.raises(DestinationError) as info:
            destination_from_config("x", config)
        assert str(info.value).startswith(expected), str(info.value)


def test_invalid_settings_echo_no_value() -> None:
    with pytest.raises(DestinationError) as info:
        destination_from_config(
            "x", {"type": "gcs", "bucket": "b1", "service_account_json": {"k": "SUPERSECRET"}}
        )
    assert "SUPERSECRET" not in str(info.value)
    assert "service_account_json" in str(info.value)


def test_uri_quoting_is_left_to_consumers(gcs_env: EmulatorHandle, folder: str, tmp_path: Path) -> None:
    # Object names are used verbatim (GCS allows spaces); the client URL-encodes them on the wire.
    dest = make_gcs()
    name = f"{folder}/25-04-14 export.csv"
    dest.upload(write(tmp_path / "a.csv", b"x"), name)
    assert dest.uri(name) == f"gs://{BUCKET}/{name}"
    assert dest.list(f"{folder}/") == [name]
    assert urllib.parse.quote(name) != name


# --------------------------------------------------------------------------------------------------
# Inside Dagster
# --------------------------------------------------------------------------------------------------


def test_usable_as_a_dagster_resource(
    gcs_env: EmulatorHandle, folder: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DINMO_TEST_PROJECT", "demo-project")
    local = write(tmp_path / "a.csv", b"id\n1\n")

    @dg.asset
    def exported(destination: DestinationResource) -> str:
        destination.get_destination().upload(local, f"{folder}/a.csv")
        return destination.get_destination().uri(f"{folder}/a.csv")

    resource = DestinationResource(
        destination_name="exports",
        settings={"type": "gcs", "bucket": BUCKET, "project": {"env": "DINMO_TEST_PROJECT"}},
    )
    result = dg.materialize(
        [exported], resources={"destination": resource}, instance=dg.DagsterInstance.ephemeral()
    )
    assert result.success
    assert result.output_for_node("exported") == f"gs://{BUCKET}/{folder}/a.csv"
    assert make_gcs().read_bytes(f"{folder}/a.csv") == b"id\n1\n"


def test_service_account_json_from_env_var_outside_a_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    monkeypatch.setenv("DINMO_TEST_KEY", '{"private_key": "SUPERSECRET"')
    dest = make_gcs(service_account_json={"env": "DINMO_TEST_KEY"})
    with pytest.raises(DestinationError) as info:
        dest.check()
    assert str(info.value) == "destination 'exports': service_account_json is not a valid service account key"
