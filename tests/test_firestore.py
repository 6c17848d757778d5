"""The Firestore adapter against the real Firestore emulator (gcloud), through a recording gRPC
proxy (tests/fakes/firestore_emulator.py): what the emulator holds afterwards (read back with
Google's own ``google-cloud-firestore`` client), what went over the wire, and that the service
account's key never shows anywhere."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import logging
import math
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
import pyarrow as pa
import pytest
from fakes.firestore_emulator import FirestoreEmulator, FirestoreProxy, terminate_as_interrupt

from dinmo_dagster.platforms import (
    ActivationSpec,
    InMemoryJournal,
    PlatformAuthError,
    PlatformConfigError,
    RetryPolicy,
    build_platform,
    deliver,
    preview,
    validate_connection,
)
from dinmo_dagster.platforms.firestore import Firestore, ramp_up_rate

firestore = pytest.importorskip("google.cloud.firestore", reason="needs google-cloud-firestore (pip)")

FAST = RetryPolicy(
    max_attempts=5, max_rate_limited_attempts=10, initial_wait_seconds=0.01, max_wait_seconds=0.05
)
UTC = dt.timezone.utc
CUSTOMERS = ActivationSpec(
    "app",
    "customer_id",
    match={},
    mapping={"first_name": "first_name", "ltv": "lifetime_value", "is_vip": "vip", "country": "country"},
)


@dataclass
class Env:
    """The emulator, the proxy the adapter talks to, and Google's client reading the emulator."""

    emulator: FirestoreEmulator
    proxy: FirestoreProxy
    client: Any

    def documents(self, collection: str) -> dict[str, dict[str, Any]]:
        """Every document of ``collection`` as Google's client decodes it: {id: fields}."""
        return {d.id: d.to_dict() for d in self.client.collection(collection).stream()}

    def writes(self) -> list[Any]:
        """Every write of every BatchWrite the emulator was sent, in arrival order."""
        return [w for r in self.proxy.requests("BatchWrite") for w in r.writes]


@pytest.fixture
def fs(firestore_env: FirestoreEmulator, firestore_proxy: FirestoreProxy) -> Iterator[Env]:
    client = firestore.Client(project=firestore_env.project)
    try:
        yield Env(firestore_env, firestore_proxy, client)
    finally:
        client.close()


def app(env: Env, service: str = "attributes", **settings: Any) -> Firestore:
    raw = {
        "service": service,
        "project": env.emulator.project,
        "collection": "customers" if service == "attributes" else "audiences",
        "base_url": env.proxy.url,
        **settings,
    }
    platform = build_platform("firestore", raw, destination="app")
    assert isinstance(platform, Firestore)
    return platform


def customers(n: int, start: int = 1, **overrides: Any) -> pa.RecordBatch:
    ids = list(range(start, start + n))
    columns: dict[str, Any] = {
        "customer_id": ids,
        "email": [f"customer{i}@example.com" for i in ids],
        "first_name": [f"Name{i}" for i in ids],
        "ltv": pa.array([decimal.Decimal(f"{i}.50") for i in ids], pa.decimal128(10, 2)),
        "is_vip": [i % 2 == 0 for i in ids],
        "country": ["FR" if i % 3 else "DE" for i in ids],
    }
    columns.update(overrides)
    return pa.record_batch(columns)


def expected(i: int, **changes: Any) -> dict[str, Any]:
    return {
        "first_name": f"Name{i}",
        "lifetime_value": i + 0.5,
        "vip": i % 2 == 0,
        "country": "FR" if i % 3 else "DE",
        **changes,
    }


# --------------------------------------------------------------------------------------------------
# attributes: upsert, update, insert, mirror
# --------------------------------------------------------------------------------------------------


def test_a_first_sync_writes_one_document_per_record_with_firestores_types(fs):
    batch = pa.record_batch(
        {
            "id": pa.array([7, 8], pa.int64()),
            "name": ["Ann", "Bob"],
            "age": pa.array([42, None], pa.int64()),
            "big": pa.array([2**63 - 1, -(2**63)], pa.int64()),
            "score": [0.25, math.inf],
            "ltv": pa.array([decimal.Decimal("1234.56"), decimal.Decimal("-0.01")], pa.decimal128(12, 2)),
            "vip": [True, False],
            "seen": pa.array(
                [dt.datetime(2025, 4, 14, 9, 5, 7, 123456, tzinfo=UTC), None], pa.timestamp("us", tz="UTC")
            ),
            "local": pa.array(
                [dt.datetime(2025, 1, 2, 3, 4, 5), dt.datetime(1999, 12, 31)], pa.timestamp("ns")
            ),
            "born": pa.array([dt.date(1990, 5, 17), dt.date(2001, 1, 1)], pa.date32()),
            "tags": [["a", "b"], []],
            "address": [{"city": "Paris", "zip": "75001"}, {"city": None, "zip": "10115"}],
            "counts": pa.array([[("web", 3), ("store", 1)], None], pa.map_(pa.string(), pa.int64())),
            "photo": pa.array([b"\x00\x01", None], pa.binary()),
        }
    )
    columns = [c for c in batch.schema.names if c != "id"]
    mapping = {c: c for c in columns} | {"name": "first-name"}
    spec = ActivationSpec("app", "id", {}, mapping)
    journal = InMemoryJournal()
    result = deliver(app(fs), spec, {"upsert": [batch]}, journal)

    assert result.accepted == 2 and result.rejected == 0 and result.requests == 1
    assert fs.documents("customers") == {
        "7": {
            "first-name": "Ann",
            "age": 42,
            "big": 2**63 - 1,
            "score": 0.25,
            "ltv": 1234.56,
            "vip": True,
            "seen": dt.datetime(2025, 4, 14, 9, 5, 7, 123456, tzinfo=UTC),
            "local": dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC),
            "born": "1990-05-17",
            "tags": ["a", "b"],
            "address": {"city": "Paris", "zip": "75001"},
            "counts": {"web": 3, "store": 1},
            "photo": b"\x00\x01",
        },
        "8": {
            "first-name": "Bob",
            "age": None,
            "big": -(2**63),
            "score": math.inf,
            "ltv": -0.01,
            "vip": False,
            "seen": None,
            "local": dt.datetime(1999, 12, 31, tzinfo=UTC),
            "born": "2001-01-01",
            "tags": [],
            "address": {"city": None, "zip": "10115"},
            "counts": None,
            "photo": None,
        },
    }
    (write, _) = fs.writes()
    assert write.update.name == f"projects/{fs.emulator.project}/databases/(default)/documents/customers/7"
    assert list(write.update_mask.field_paths) == ["`first-name`", *columns[1:]]
    assert sorted(journal.acknowledged_keys["upsert"]) == ["7", "8"]


def test_a_delta_changes_the_mapped_fields_and_leaves_every_other_field(fs):
    fs.client.document("customers/1").set({"first_name": "Old", "app_score": 99, "address": {"zip": "75001"}})
    deliver(app(fs), CUSTOMERS, {"upsert": [customers(3)]}, InMemoryJournal())
    assert fs.documents("customers") == {
        "1": expected(1, app_score=99, address={"zip": "75001"}),
        "2": expected(2),
        "3": expected(3),
    }

    changed = pa.record_batch(
        {"customer_id": [1, 3], "first_name": ["Ann", "Cid"], "city": ["Paris", "Lyon"]}
    )
    spec = ActivationSpec("app", "customer_id", {}, {"first_name": "first_name", "city": "address.city"})
    result = deliver(app(fs), spec, {"upsert": [changed]}, InMemoryJournal())

    assert result.accepted == 2
    assert fs.documents("customers") == {
        "1": expected(1, first_name="Ann", app_score=99, address={"zip": "75001", "city": "Paris"}),
        "2": expected(2),
        "3": expected(3, first_name="Cid", address={"city": "Lyon"}),
    }
    assert [list(w.update_mask.field_paths) for w in fs.writes()[-2:]] == [["first_name", "address.city"]] * 2


def test_update_touches_existing_documents_only_and_insert_never_overwrites(fs):
    fs.client.document("customers/1").set({"first_name": "Old", "kept": True})
    result = deliver(app(fs), CUSTOMERS, {"update": [customers(2)]}, InMemoryJournal())
    assert fs.documents("customers") == {"1": expected(1, kept=True)}
    assert result.accepted == 2 and result.rejected == 0  # 2 is not in Firestore: nothing to update

    fresh = customers(2, first_name=["New1", "New2"])
    result = deliver(app(fs), CUSTOMERS, {"insert": [fresh]}, InMemoryJournal())
    assert fs.documents("customers") == {
        "1": expected(1, kept=True),  # already there: left alone
        "2": expected(2, first_name="New2"),
    }
    assert result.accepted == 2 and result.rejected == 0
    update_1, update_2, insert_1, insert_2 = fs.writes()
    assert update_1.current_document.exists is True and insert_1.current_document.exists is False
    assert "update_mask" not in insert_2 and list(update_2.update_mask.field_paths) == list(
        CUSTOMERS.mapping.values()
    )


def test_mirror_deletes_the_documents_of_the_records_that_left(fs):
    deliver(app(fs), CUSTOMERS, {"upsert": [customers(5)]}, InMemoryJournal())
    gone = pa.record_batch({"customer_id": [4, 5, 99]})
    journal = InMemoryJournal()
    result = deliver(app(fs), CUSTOMERS, {"delete": [gone]}, journal)

    assert sorted(fs.documents("customers")) == ["1", "2", "3"]
    assert sorted(journal.acknowledged_keys["delete"]) == ["4", "5", "99"]  # 99 was never there: done
    assert result.accepted == 3 and result.requests == 1
    assert [w.delete.rsplit("/", 1)[1] for w in fs.writes()[-3:]] == ["4", "5", "99"]


def test_null_values_skip_keeps_what_firestore_holds_and_sync_writes_null(fs):
    fs.client.document("customers/1").set({"first_name": "Known", "lifetime_value": 7})
    blank = customers(1, first_name=[None], ltv=pa.array([None], pa.decimal128(10, 2)))
    skip = ActivationSpec("app", "customer_id", {}, CUSTOMERS.mapping, null_values="skip")
    deliver(app(fs), skip, {"upsert": [blank]}, InMemoryJournal())
    assert fs.documents("customers")["1"] == expected(1, first_name="Known", lifetime_value=7)
    assert list(fs.writes()[-1].update_mask.field_paths) == ["vip", "country"]

    deliver(app(fs), CUSTOMERS, {"upsert": [blank]}, InMemoryJournal())
    assert fs.documents("customers")["1"] == expected(1, first_name=None, lifetime_value=None)


def test_a_match_column_names_the_documents_and_decimals_can_keep_every_digit(fs):
    batch = customers(2, ltv=pa.array([decimal.Decimal("12345678901234567.89"), None], pa.decimal128(38, 2)))
    spec = ActivationSpec("app", "customer_id", {"document_id": "email"}, {"ltv": "lifetime_value"})
    deliver(app(fs, decimals="string"), spec, {"upsert": [batch]}, InMemoryJournal())
    assert fs.documents("customers") == {
        "customer1@example.com": {"lifetime_value": "12345678901234567.89"},
        "customer2@example.com": {"lifetime_value": None},
    }


def test_a_named_database_and_a_nested_collection(fs):
    platform = app(fs, database="crm-eu", collection="tenants/acme/customers")
    try:
        deliver(platform, CUSTOMERS, {"upsert": [customers(2)]}, InMemoryJournal())
        named = firestore.Client(project=fs.emulator.project, database="crm-eu")
        stored = {d.id: d.to_dict() for d in named.collection("tenants/acme/customers").stream()}
        named.close()
        assert stored == {"1": expected(1), "2": expected(2)}
        assert fs.documents("customers") == {}
        assert fs.writes()[0].update.name.startswith(
            f"projects/{fs.emulator.project}/databases/crm-eu/documents/tenants/acme/customers/"
        )
    finally:
        fs.emulator.reset(database="crm-eu")


def test_firestore_emulator_host_is_honoured_without_a_base_url(fs, monkeypatch):
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", fs.proxy.host)
    platform = build_platform(
        "firestore",
        {"service": "attributes", "project": fs.emulator.project, "collection": "customers"},
        destination="app",
    )
    deliver(platform, CUSTOMERS, {"upsert": [customers(1)]}, InMemoryJournal())
    assert fs.documents("customers") == {"1": expected(1)}
    assert [c.method for c in fs.proxy.calls] == ["BatchWrite"]


# --------------------------------------------------------------------------------------------------
# Rejections
# --------------------------------------------------------------------------------------------------


def test_records_firestore_cannot_hold_are_rejected_with_the_reason_before_sending(fs):
    keys = ["ok-1", "a/b", "__id__", "..", "ok-2", "too-big-int", "nested", "ok-3"]
    batch = pa.record_batch(
        {
            "key": keys,
            "count": pa.array([2**64 - 1 if k == "too-big-int" else 1 for k in keys], pa.uint64()),
            "matrix": [[[1, 2]] if k == "nested" else [] for k in keys],
        }
    )
    spec = ActivationSpec("app", "key", {}, {"count": "count", "matrix": "matrix"})
    journal = InMemoryJournal()
    result = deliver(app(fs), spec, {"upsert": [batch]}, journal)

    assert fs.documents("customers") == {k: {"count": 1, "matrix": []} for k in ("ok-1", "ok-2", "ok-3")}
    assert sorted(journal.rejections) == [
        ("..", "upsert", "the document id (record key) is '.' or '..'"),
        ("__id__", "upsert", "the document id (record key) matches __.*__ (reserved by Firestore)"),
        ("a/b", "upsert", "the document id (record key) contains '/'"),
        ("nested", "upsert", "field matrix: an array inside an array (Firestore arrays cannot hold arrays)"),
        ("too-big-int", "upsert", "field count: integer outside Firestore's 64-bit range"),
    ]
    assert sorted(journal.acknowledged_keys["upsert"]) == ["ok-1", "ok-2", "ok-3"]
    assert dict(result.reasons) == {"invalid document id": 3, "unsupported value": 2}
    assert result.as_metadata()["top_rejection_reasons"] == "invalid document id (3); unsupported value (2)"
    # One request, with the writable documents only (Firestore refuses a whole request for one bad id).
    assert [w.update.name.rsplit("/", 1)[1] for w in fs.writes()] == ["ok-1", "ok-2", "ok-3"]


def test_a_write_firestore_refuses_is_isolated_and_rejected_with_firestores_message(fs):
    batch = pa.record_batch({"key": ["ok-1", "huge"], "note": ["a", "x" * 1_100_000]})
    spec = ActivationSpec("app", "key", {}, {"note": "note"})
    journal = InMemoryJournal()
    result = deliver(app(fs), spec, {"upsert": [batch]}, journal)

    assert fs.documents("customers") == {"ok-1": {"note": "a"}}
    assert journal.rejections == [
        ("huge", "upsert", 'INVALID_ARGUMENT: The value of property "note" is longer than 1048487 bytes.')
    ]
    assert result.accepted == 1 and result.top_reasons() == [("INVALID_ARGUMENT", 1)]
    # Refused whole, then each half alone.
    calls = [(len(c.request.writes), c.status) for c in fs.proxy.calls]
    assert calls[0] == (2, "INVALID_ARGUMENT") and sorted(calls[1:]) == [(1, "INVALID_ARGUMENT"), (1, "OK")]


def test_document_ids_from_a_match_column_are_checked_and_empty_ones_rejected(fs):
    batch = pa.record_batch({"id": [1, 2, 3], "code": ["A-1", None, "x/y"]})
    spec = ActivationSpec("app", "id", {"document_id": "code"}, {})
    journal = InMemoryJournal()
    deliver(app(fs), spec, {"upsert": [batch]}, journal)
    assert fs.documents("customers") == {"A-1": {}}
    assert sorted(journal.rejections) == [
        ("2", "upsert", "identifier document_id (column code) is empty"),
        ("3", "upsert", "the document id (document_id) contains '/'"),
    ]


# --------------------------------------------------------------------------------------------------
# Limits, retries, credentials
# --------------------------------------------------------------------------------------------------


def test_no_request_holds_more_than_500_writes_or_10_mib(fs):
    result = deliver(
        app(fs), CUSTOMERS, {"upsert": [customers(700), customers(501, start=701)]}, InMemoryJournal()
    )
    assert sorted(len(r.writes) for r in fs.proxy.requests("BatchWrite")) == [201, 500, 500]
    assert len(fs.documents("customers")) == 1201 and result.accepted == 1201

    wide = customers(12, start=2000, first_name=["é" * 450_000] * 12)  # 900 kB of UTF-8 each
    shown = preview(app(fs), CUSTOMERS, {"upsert": [wide]})
    assert [p.records for p in shown] == [11, 1]  # 11 writes fit in 10 MiB, 12 do not


def test_a_request_over_the_servers_size_limit_goes_again_in_halves(fs):
    fs.proxy.calls.clear()
    wide = customers(7, first_name=["é" * 450_000] * 7)  # 900 kB of UTF-8 each: 6.3 MB together
    result = deliver(app(fs), CUSTOMERS, {"upsert": [wide]}, InMemoryJournal())
    calls = fs.proxy.calls
    # The emulator takes 4 MiB at most (Firestore 10 MiB): it refused the batch, then took its halves.
    answers = [(len(c.request.writes), c.status) for c in calls]
    assert answers[0] == (7, "RESOURCE_EXHAUSTED") and sorted(answers[1:]) == [(3, "OK"), (4, "OK")]
    assert 4 * 1024 * 1024 < len(calls[0].raw) <= 10 * 1024 * 1024
    assert len(fs.documents("customers")) == 7
    assert result.accepted == 7 and result.rejected == 0 and result.retries == 0


def test_a_resource_exhausted_storm_is_ridden_out(fs):
    fs.proxy.fail("BatchWrite", grpc.StatusCode.RESOURCE_EXHAUSTED, "Quota exceeded.", times=3)
    result = deliver(app(fs), CUSTOMERS, {"upsert": [customers(300)]}, InMemoryJournal(), retry=FAST)

    assert len(fs.documents("customers")) == 300 and result.accepted == 300
    assert [c.status for c in fs.proxy.calls] == ["RESOURCE_EXHAUSTED"] * 3 + ["OK"]
    assert result.retries == 3 and result.requests == 4
    assert result.rate_limit_wait_seconds > 0 and result.retry_wait_seconds == 0


def test_transient_grpc_errors_are_retried_with_backoff(fs):
    fs.proxy.fail("BatchWrite", grpc.StatusCode.UNAVAILABLE, "The service is currently unavailable.")
    fs.proxy.fail("BatchWrite", grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline exceeded.")
    fs.proxy.fail("BatchWrite", grpc.StatusCode.ABORTED, "Too much contention on these documents.")
    result = deliver(app(fs), CUSTOMERS, {"upsert": [customers(300)]}, InMemoryJournal(), retry=FAST)

    assert len(fs.documents("customers")) == 300 and result.accepted == 300
    assert [c.status for c in fs.proxy.calls] == ["UNAVAILABLE", "DEADLINE_EXCEEDED", "ABORTED", "OK"]
    assert result.retries == 3 and result.retry_wait_seconds > 0


def test_permission_denied_stops_the_sync_at_once_with_firestores_message(fs):
    fs.proxy.strip_auth = True  # the emulator refuses writes from a caller that is not an admin
    with pytest.raises(PlatformAuthError) as refused:
        deliver(app(fs), CUSTOMERS, {"upsert": [customers(2000)]}, InMemoryJournal(), retry=FAST)
    assert str(refused.value) == (
        "destination 'app' (firestore): the platform refused the credentials (HTTP 403): PERMISSION_DENIED: "
        "Batch writes require admin authentication."
    )
    statuses = [c.status for c in fs.proxy.calls]
    assert 1 <= len(statuses) <= 4 and set(statuses) == {"PERMISSION_DENIED"}  # no retry
    assert fs.documents("customers") == {}

    fs.proxy.strip_auth = False
    fs.proxy.fail(
        "BatchWrite", grpc.StatusCode.UNAUTHENTICATED, "Request had invalid authentication credentials."
    )
    with pytest.raises(PlatformAuthError, match=r"\(HTTP 401\): UNAUTHENTICATED: Request had invalid"):
        deliver(
            app(fs, max_concurrency=1), CUSTOMERS, {"upsert": [customers(3)]}, InMemoryJournal(), retry=FAST
        )


@pytest.fixture
def rsa_key() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode("ascii")


@pytest.fixture
def token_endpoint() -> Iterator[tuple[str, list[bytes]]]:
    """An OAuth token endpoint that refuses every assertion as Google's does for a revoked key."""
    bodies: list[bytes] = []

    class Refuse(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
            answer = json.dumps({"error": "invalid_grant", "error_description": "Invalid JWT Signature."})
            self.send_response(400)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(answer.encode())

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/token", bodies
    finally:
        server.shutdown()
        server.server_close()


def service_account(rsa_key: str, token_uri: str) -> str:
    return json.dumps(
        {
            "type": "service_account",
            "project_id": "dinmo-test",
            "private_key_id": "5d1f3c2b9a8e7d6c5b4a39281706f5e4d3c2b1a0",
            "private_key": rsa_key,
            "client_email": "dinmo-sync@dinmo-test.iam.gserviceaccount.com",
            "client_id": "104892317650123456789",
            "token_uri": token_uri,
        }
    )


def test_a_refused_service_account_fails_at_once_and_the_key_never_shows(fs, rsa_key, token_endpoint, caplog):
    caplog.set_level(logging.DEBUG)
    token_uri, assertions = token_endpoint
    key_json = service_account(rsa_key, token_uri)
    body_line = rsa_key.splitlines()[3]
    platform = app(fs, service_account_json=key_json, base_url="https://127.0.0.1:9")
    with pytest.raises(PlatformAuthError) as refused:
        deliver(platform, CUSTOMERS, {"upsert": [customers(600)]}, InMemoryJournal(), retry=FAST)
    assert str(refused.value) == (
        "destination 'app' (firestore): the platform refused the credentials (HTTP 401): UNAUTHENTICATED: no "
        "access token for the credentials: invalid_grant: Invalid JWT Signature."
    )
    assert len(assertions) == 1  # refused once: not retried
    assert b"grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer" in assertions[0]

    # Through the emulator the key is not used at all; nothing carries it either way.
    platform = app(fs, service_account_json=key_json)
    result = deliver(platform, CUSTOMERS, {"upsert": [customers(3)]}, InMemoryJournal())
    shown = preview(platform, CUSTOMERS, {"upsert": [customers(2)]})
    assert result.accepted == 3
    assert {c.metadata["authorization"] for c in fs.proxy.calls} == {"Bearer owner"}
    texts = [
        str(refused.value),
        repr(refused.value),
        caplog.text,
        repr(result),
        str(result.as_metadata()),
        repr(shown),
        repr(platform.settings),
        *(assertion.decode() for assertion in assertions),
        *(c.raw.decode("latin-1") + str(c.metadata) for c in fs.proxy.calls),
    ]
    secrets = ("PRIVATE KEY", body_line, "5d1f3c2b9a8e7d6c5b4a39281706f5e4d3c2b1a0")
    assert not [secret for secret in secrets for text in texts if secret in text]


def test_a_key_that_is_not_json_is_refused_without_quoting_it():
    with pytest.raises(PlatformConfigError) as bad:
        build_platform(
            "firestore",
            {
                "service": "attributes",
                "project": "dinmo-test",
                "collection": "c",
                "service_account_json": "s3cr3t-v4lue",
            },
            destination="app",
        )
    assert str(bad.value) == (
        "destinations.app.service_account_json: found text that is not JSON; allowed: the JSON of a service "
        "account key file"
    )
    with pytest.raises(PlatformConfigError) as wrong:
        build_platform(
            "firestore",
            {
                "service": "attributes",
                "project": "dinmo-test",
                "collection": "c",
                "service_account_json": json.dumps(
                    {"type": "authorized_user", "refresh_token": "s3cr3t-v4lue"}
                ),
            },
            destination="app",
        )
    assert "s3cr3t-v4lue" not in str(wrong.value)
    assert str(wrong.value) == (
        "destinations.app.service_account_json: found JSON without client_email, private_key, token_uri; "
        "allowed: the JSON of a service account key file (type service_account)"
    )


# --------------------------------------------------------------------------------------------------
# audiences
# --------------------------------------------------------------------------------------------------


def members(env: Env, audience: str = "vip") -> dict[str, dict[str, Any]]:
    return env.documents(f"audiences/{audience}/members")


def test_audience_members_are_added_removed_and_replaced_by_a_full_sync(fs):
    vip = app(fs, "audiences", audience="vip")
    spec = ActivationSpec("app", "customer_id", {}, {"first_name": "first_name"})
    deliver(vip, spec, {"add": [customers(5)]}, InMemoryJournal())
    assert members(fs) == {str(i): {"first_name": f"Name{i}"} for i in range(1, 6)}
    stamped = fs.documents("audiences")["vip"]["synced_at"]
    assert isinstance(stamped, dt.datetime)

    result = deliver(vip, spec, {"remove": [pa.record_batch({"customer_id": [2, 9]})]}, InMemoryJournal())
    assert sorted(members(fs)) == ["1", "3", "4", "5"] and result.accepted == 2

    fs.client.document("audiences/vip/members/by-hand").set({"note": "added in the console"})
    fs.client.document("audiences/other/members/1").set({})
    segment = customers(3, start=4)  # 4, 5, 6
    result = deliver(vip, spec, {"replace": [segment]}, InMemoryJournal())
    assert members(fs) == {str(i): {"first_name": f"Name{i}"} for i in (4, 5, 6)}
    assert members(fs, "other") == {"1": {}}  # another audience is left alone
    assert result.accepted == 3
    assert fs.documents("audiences")["vip"]["synced_at"] > stamped
    methods = [c.method for c in fs.proxy.calls[-4:]]
    assert methods == ["BatchWrite", "ListDocuments", "BatchWrite", "BatchWrite"]  # write, list, sweep, stamp
    assert sorted(w.delete.rsplit("/", 1)[1] for w in fs.writes() if w.delete) == [
        "1",
        "2",
        "3",
        "9",
        "by-hand",
    ]


def test_an_empty_segment_empties_the_audience_on_a_full_sync(fs):
    vip = app(fs, "audiences", audience="vip")
    spec = ActivationSpec("app", "customer_id", {}, {})
    deliver(vip, spec, {"add": [customers(3)]}, InMemoryJournal())
    assert members(fs) == {"1": {}, "2": {}, "3": {}}
    deliver(vip, spec, {"replace": [customers(0)]}, InMemoryJournal())
    assert members(fs) == {}


def test_a_replace_re_run_after_a_crash_resends_every_member_and_removes_only_those_that_left(fs):
    vip = app(fs, "audiences", audience="vip")
    spec = ActivationSpec("app", "customer_id", {}, {})
    deliver(vip, spec, {"add": [customers(10)]}, InMemoryJournal())
    # The first attempt of this full sync had 1..5 acknowledged when its process died.
    journal = InMemoryJournal()
    journal.acknowledged("replace", [str(i) for i in range(1, 6)])
    result = deliver(app(fs, "audiences", audience="vip"), spec, {"replace": [customers(8)]}, journal)

    assert sorted(members(fs), key=int) == [str(i) for i in range(1, 9)]
    assert result.accepted == 8 and result.counts("replace").already_acknowledged == 0


# --------------------------------------------------------------------------------------------------
# preview, validate --connect, settings, limits as data
# --------------------------------------------------------------------------------------------------


def test_preview_shows_the_batch_write_with_document_ids_masked_and_sends_nothing(fs):
    spec = ActivationSpec("app", "customer_id", {"document_id": "email"}, {"first_name": "first_name"})
    shown = preview(app(fs), spec, {"upsert": [customers(2)], "delete": [customers(1, start=9)]})
    assert fs.proxy.calls == []
    upsert, delete = shown
    root = f"projects/{fs.emulator.project}/databases/(default)/documents"
    assert (
        upsert.url
        == f"{fs.proxy.url}/v1/projects/{fs.emulator.project}/databases/(default)/documents:batchWrite"
    )
    assert upsert.body["writes"][0] == {
        "update": {"name": f"{root}/customers/c***@e***", "fields": {"first_name": {"stringValue": "Name1"}}},
        "updateMask": {"fieldPaths": ["first_name"]},
    }
    assert delete.body == {"writes": [{"delete": f"{root}/customers/c***@e***"}]}
    assert "customer1@example.com" not in repr(shown)


def test_validate_connect_checks_the_database_and_the_activation(fs):
    assert validate_connection(app(fs), CUSTOMERS) == []
    bad = ActivationSpec(
        "app", "id", {"email": "email"}, {"a": "address", "b": "address.city", "c": "__name__", "d": "x..y"}
    )
    assert validate_connection(app(fs), bad) == [
        "match: found email; allowed: nothing (the document id is the record's key) or {document_id: column}",
        (
            "mapping.b: field 'address.city' overlaps field 'address' (mapping.a); allowed: fields that do not "
            "contain one another"
        ),
        (
            "mapping.c: found '__name__'; allowed: a field name other than '__name__' (names matching __.*__ are "
            "reserved by Firestore)"
        ),
        "mapping.d: found 'x..y'; allowed: field names separated by single dots, none empty",
    ]
    fs.proxy.fail("ListDocuments", grpc.StatusCode.PERMISSION_DENIED, "Missing or insufficient permissions.")
    assert validate_connection(app(fs), CUSTOMERS, retry=FAST) == [
        (
            "destination 'app' (firestore): the platform refused the credentials (HTTP 403): PERMISSION_DENIED: "
            "Missing or insufficient permissions."
        )
    ]
    fs.proxy.fail(
        "ListDocuments",
        grpc.StatusCode.NOT_FOUND,
        "The database (default) does not exist for project dinmo-test",
    )
    assert validate_connection(app(fs, "audiences", audience="vip"), CUSTOMERS) == [
        (
            "destination 'app' (firestore): reading Firestore audience 'vip' (audiences/vip/members, database "
            "(default) of project dinmo-test) failed with NOT_FOUND (HTTP 404): NOT_FOUND: The database (default) "
            "does not exist for project dinmo-test"
        )
    ]
    assert fs.proxy.requests("ListDocuments")[-1].parent == (
        f"projects/{fs.emulator.project}/databases/(default)/documents/audiences/vip"
    )


def test_settings_errors_name_the_key_and_what_is_allowed(monkeypatch):
    monkeypatch.delenv("FIRESTORE_EMULATOR_HOST", raising=False)
    with pytest.raises(PlatformConfigError) as bad:
        build_platform(
            "firestore",
            {
                "service": "events",
                "project": "My Project",
                "database": "EU",
                "collection": "customers/42",
                "base_url": "https://firestore.googleapis.com/v1",
            },
            destination="app",
        )
    assert str(bad.value).splitlines() == [
        "destinations.app.service: Input should be 'attributes' or 'audiences' (found 'events')",
        (
            "destinations.app.base_url: found 'https://firestore.googleapis.com/v1'; allowed: https://host[:port] "
            "(an endpoint) or http://host:port (the Firestore emulator), without a path"
        ),
        (
            "destinations.app.project: found 'My Project'; allowed: a Google Cloud project id (6 to 30 lower-case "
            "letters, digits and hyphens, starting with a letter)"
        ),
        (
            "destinations.app.database: found 'EU'; allowed: (default), or a database id of 4 to 63 lower-case "
            "letters, digits and hyphens starting with a letter and ending with a letter or digit"
        ),
        (
            "destinations.app.collection: found 'customers/42', a document path; allowed: a collection id, or a "
            "path collection/document/collection... (an odd number of segments)"
        ),
    ]
    with pytest.raises(PlatformConfigError) as missing:
        build_platform(
            "firestore",
            {"service": "audiences", "project": "dinmo-test", "collection": "audiences"},
            destination="app",
        )
    assert str(missing.value) == (
        "destinations.app: audience: missing; allowed: the audience's document id (service audiences needs one)"
    )
    platform = build_platform(
        "firestore",
        {"service": "attributes", "project": "dinmo-test", "collection": "customers"},
        destination="app",
    )
    assert platform.base_url == "https://firestore.googleapis.com"


def test_limits_are_firestores_and_the_rate_ramps_up_by_the_500_50_5_rule():
    platform = build_platform(
        "firestore",
        {"service": "attributes", "project": "dinmo-test", "collection": "customers"},
        destination="app",
    )
    limits = platform.effective_limits()
    assert (limits.max_records_per_batch, limits.max_bytes_per_batch) == (500, 10 * 1024 * 1024)
    assert (limits.requests_per_window, limits.window_seconds, limits.max_requests_per_window) == (4, 4.0, 80)
    assert [ramp_up_rate(minutes * 60) for minutes in (0, 4.9, 5, 10, 15, 60)] == [
        500,
        500,
        750,
        1125,
        1687.5,
        10_000,
    ]
    slower = build_platform(
        "firestore",
        {"service": "attributes", "project": "dinmo-test", "collection": "c", "rate_limit": 0.5},
        destination="app",
    )
    assert slower.effective_limits().requests_per_window / slower.effective_limits().window_seconds == 0.5


def test_without_credentials_validate_connect_names_what_is_missing(monkeypatch, tmp_path):
    monkeypatch.delenv("FIRESTORE_EMULATOR_HOST", raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    platform = build_platform(
        "firestore",
        {"service": "attributes", "project": "dinmo-test", "collection": "customers"},
        destination="app",
    )
    assert validate_connection(platform, CUSTOMERS, retry=FAST) == [
        (
            "destination 'app' (firestore): the platform refused the credentials (HTTP 401): UNAUTHENTICATED: no "
            f"access token for the credentials: File {tmp_path / 'missing.json'} was not found."
        )
    ]


def test_sigterm_interrupts_the_session_like_ctrl_c_so_the_emulator_is_stopped():
    # The emulator runs in a session of its own: a test process killed by SIGTERM (timeout, CI)
    # would leave it running, unless SIGTERM interrupts pytest, which then tears fixtures down.
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        with terminate_as_interrupt():
            handler = signal.getsignal(signal.SIGTERM)
            assert callable(handler)
            with pytest.raises(KeyboardInterrupt, match="signal 15"):
                handler(signal.SIGTERM, None)
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGTERM, previous)
