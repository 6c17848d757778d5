"""The delivery SDK for API destinations (dinmo_dagster.platforms), through a small test platform
("echo") whose local fake server answers as a real platform would: the requests it received are
what these tests assert. Identifier normalization and hashing are checked on exact values."""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import pyarrow as pa
import pytest
from fakes.server import FakeRequest, FakeResponse, FakeServer
from pydantic import SecretStr

from dinmo_dagster import platforms
from dinmo_dagster.platforms import (
    ActivationSpec,
    BatchOutcome,
    HttpResponse,
    IdentifierSpec,
    InMemoryJournal,
    JobHandle,
    Limits,
    Platform,
    PlatformAuthError,
    PlatformConfigError,
    PlatformRequestError,
    PlatformSettings,
    PreparedRequest,
    Record,
    RecordResult,
    RejectionRateExceeded,
    RetryPolicy,
    check_rejection_rate,
    deliver,
    preview,
)
from dinmo_dagster.platforms.identifiers import (
    IdentifierError,
    normalize_email,
    normalize_phone,
    prepare_identifier,
    sha256_hex,
)
from dinmo_dagster.platforms.ratelimit import RateLimiter

API_KEY = "echo-key-9f8e7d6c5b4a"
FAST = RetryPolicy(
    max_attempts=3, max_rate_limited_attempts=10, initial_wait_seconds=0.01, max_wait_seconds=0.05
)

JOHN_SHA = "836f82db99121b3481011f16b49dfa5fbc714a0d1b1b9f784a1ebbbf5b39577f"  # john.doe@example.com
PHONE_FR_SHA = "42d573cfc315801d4cd8eddd5416b416a0bf298b9b9e12d6b07442c91db42bd8"  # +33612345678


# --------------------------------------------------------------------------------------------------
# The test platform and its fake server
# --------------------------------------------------------------------------------------------------


class EchoSettings(PlatformSettings):
    service: Literal["audiences", "attributes"] = "audiences"
    api_key: SecretStr


class Echo(Platform):
    """A platform that hashes e-mails and phones (like an ads platform) and answers per member."""

    name = "echo"
    settings_model = EchoSettings
    services: ClassVar = {"audiences": ("add", "remove"), "attributes": ("upsert",)}
    default_base_url = "https://echo.invalid"
    limits = Limits(
        max_records_per_batch=100, requests_per_window=1000, window_seconds=1.0, max_concurrency=2
    )
    poll_interval_seconds = 0.02
    _IDS: ClassVar = {
        "email": IdentifierSpec("email", hashed=True),
        "phone": IdentifierSpec("phone", hashed=True),
        "external_id": IdentifierSpec("id"),
    }

    def identifier_spec(self, name: str) -> IdentifierSpec | None:
        return self._IDS.get(name)

    def auth_headers(self) -> dict[str, str]:
        return {"X-Api-Key": self.settings.api_key.get_secret_value()}

    def record_input(self, operation: str, record: Record) -> dict[str, Any]:
        return {"key": record.key, "ids": record.identifiers, "fields": record.fields}

    def build_request(
        self, operation: str, inputs: Sequence[Any], records: Sequence[Record]
    ) -> PreparedRequest:
        return PreparedRequest("POST", f"/v1/{operation}", json={"members": list(inputs)})

    def parse_response(
        self, operation: str, records: Sequence[Record], response: HttpResponse
    ) -> BatchOutcome:
        body = response.json() or {}
        if response.status == 202:
            return BatchOutcome(job=JobHandle(body["job_id"]))
        if response.status == 400 and body.get("whole_batch"):
            if len(records) > 1:
                return BatchOutcome(split=True)
            return BatchOutcome.reject_all(records, body["message"], "BAD_MEMBER")
        if response.status != 200:
            raise self.request_error(response, operation)
        return self._verdicts(records, body)

    @staticmethod
    def _verdicts(records: Sequence[Record], body: dict[str, Any]) -> BatchOutcome:
        rejected = body.get("rejected") or {}
        retry = set(body.get("retry") or ())
        return BatchOutcome(
            [
                RecordResult(r.key, "rejected", rejected[r.key], rejected[r.key].split(":")[0])
                if r.key in rejected
                else RecordResult(r.key, "retry" if r.key in retry else "accepted")
                for r in records
            ]
        )

    def poll_job(
        self, operation: str, records: Sequence[Record], job: JobHandle, transport: Any
    ) -> BatchOutcome:
        response = transport.send(PreparedRequest("GET", f"/v1/jobs/{job.id}"))
        body = response.json()
        if body["state"] != "done":
            return BatchOutcome(job=job)
        return self._verdicts(records, body)


class EchoApi:
    """The echo platform's server: scripted answers first, then a verdict per member."""

    def __init__(self) -> None:
        self.script: deque[FakeResponse | float] = deque()  # a float: sleep that long, then go on
        self.reject_when: dict[float, str] = {}  # value of the member's "value" field -> reason
        self.whole_batch_when: float | None = None  # refuse a batch holding this value, whole
        self.retry_once: set[str] = set()
        self.async_jobs = False
        self.jobs: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()
        self.server = FakeServer(self)

    def __call__(self, request: FakeRequest) -> FakeResponse:
        with self.lock:
            step = self.script.popleft() if self.script else None
        if isinstance(step, float):
            time.sleep(step)
        elif step is not None:
            return step
        if request.path.startswith("/v1/jobs/"):
            job = self.jobs[request.path.rsplit("/", 1)[1]]
            job["polls"] += 1
            if job["polls"] < 3:
                return FakeResponse(200, {"state": "running"})
            return FakeResponse(200, {"state": "done", **job["verdicts"]})
        values = {m["key"]: m["fields"].get("value") for m in request.json["members"]}
        if self.whole_batch_when is not None and self.whole_batch_when in values.values():
            return FakeResponse(400, {"whole_batch": True, "message": "one member is malformed"})
        rejected = {
            key: f"{self.reject_when[v]}: member refused"
            for key, v in values.items()
            if v in self.reject_when
        }
        with self.lock:
            retry = [k for k in values if k in self.retry_once]
            self.retry_once -= set(retry)
        verdicts = {"rejected": rejected, "retry": retry}
        if self.async_jobs:
            job_id = f"job-{len(self.jobs) + 1}"
            self.jobs[job_id] = {"polls": 0, "verdicts": verdicts}
            return FakeResponse(202, {"job_id": job_id})
        return FakeResponse(200, verdicts)

    @property
    def requests(self) -> list[FakeRequest]:
        return self.server.requests

    def members(self, path: str = "/v1/add") -> list[dict[str, Any]]:
        return [m for r in self.requests if r.path == path for m in r.json["members"]]


@pytest.fixture
def echo():
    api = EchoApi()
    with api.server:
        yield api


def echo_platform(api: EchoApi, platform_cls: type[Echo] = Echo, **settings: Any) -> Echo:
    raw = {"api_key": API_KEY, "base_url": api.server.url, **settings}
    return platform_cls(EchoSettings(**raw), destination="vip_audience")


def people(n: int, **overrides: list[Any]) -> pa.RecordBatch:
    columns: dict[str, list[Any]] = {
        "customer_id": list(range(1, n + 1)),
        "email": [f"Person{i}@Example.com" for i in range(1, n + 1)],
        "phone": [None] * n,
        "ltv": [float(i) for i in range(1, n + 1)],
    }
    columns.update(overrides)
    return pa.record_batch(columns)


EMAIL_ONLY = ActivationSpec("vip_audience", "customer_id", {"email": "email"}, {"ltv": "value"})


# --------------------------------------------------------------------------------------------------
# Identifiers: normalization and hashing, exact values
# --------------------------------------------------------------------------------------------------


def test_email_is_trimmed_and_lower_cased_then_sha256_hex():
    assert normalize_email("  John.Doe@Example.COM ") == "john.doe@example.com"
    hashed = prepare_identifier(IdentifierSpec("email", hashed=True), "  John.Doe@Example.COM ")
    assert hashed == JOHN_SHA == hashlib.sha256(b"john.doe@example.com").hexdigest()


def test_phone_goes_to_e164_with_the_default_country_then_sha256():
    assert normalize_phone("06 12 34 56 78", "FR") == "+33612345678"
    assert normalize_phone("+44 20 7946 0958", "FR") == "+442079460958"  # its own prefix wins
    assert prepare_identifier(
        IdentifierSpec("phone", hashed=True), "06.12.34.56.78", default_country="fr"
    ) == (PHONE_FR_SHA)
    assert sha256_hex("+33612345678") == PHONE_FR_SHA


def test_an_existing_sha256_digest_passes_unchanged():
    spec = IdentifierSpec("email", hashed=True)
    assert prepare_identifier(spec, JOHN_SHA) == JOHN_SHA
    assert prepare_identifier(IdentifierSpec("phone", hashed=True), PHONE_FR_SHA.upper()) == PHONE_FR_SHA


def test_invalid_identifiers_raise_without_quoting_the_value():
    with pytest.raises(IdentifierError) as bad_email:
        prepare_identifier(IdentifierSpec("email", hashed=True), "jane.at.example.com")
    with pytest.raises(IdentifierError) as national:
        normalize_phone("06 12 34 56 78")
    with pytest.raises(IdentifierError) as bad_phone:
        normalize_phone("12", "FR")
    assert str(bad_email.value) == "not an e-mail address"
    assert str(national.value) == "not a phone number (no default_country for national numbers)"
    assert str(bad_phone.value) == "not a valid phone number"


def test_a_hashing_platform_never_receives_raw_identifiers(echo):
    batch = people(
        3,
        email=[" John.Doe@Example.COM", "not-an-email", "jane@example.com"],
        phone=["06 12 34 56 78", "+33 6 12 34 56 78", "0000"],
    )
    spec = ActivationSpec(
        "vip_audience", "customer_id", {"email": "email", "phone": "phone"}, default_country="FR"
    )
    journal = InMemoryJournal()
    result = deliver(echo_platform(echo), spec, {"add": [batch]}, journal)

    assert [m["ids"] for m in echo.members()] == [{"email": JOHN_SHA, "phone": PHONE_FR_SHA}]
    sent = b"".join(r.raw_body for r in echo.requests)
    for raw in (b"John", b"john", b"jane", b"not-an-email", b"06 12", b"+336", b"0000"):
        assert raw not in sent
    assert journal.rejections == [
        ("2", "add", "identifier email (column email) is not an e-mail address"),
        ("3", "add", "identifier phone (column phone) is not a valid phone number"),
    ]
    assert result.top_reasons() == [("invalid identifier email", 1), ("invalid identifier phone", 1)]


def test_a_null_identifier_is_rejected_as_empty_and_never_sent_as_the_text_none(echo):
    batch = people(2).append_column("ext", pa.array(["A-1", None]))
    spec = ActivationSpec("vip_audience", "customer_id", {"external_id": "ext"})
    journal = InMemoryJournal()
    deliver(echo_platform(echo), spec, {"add": [batch]}, journal)

    assert [m["ids"] for m in echo.members()] == [{"external_id": "A-1"}]
    assert journal.rejections == [("2", "add", "identifier external_id (column ext) is empty")]


# --------------------------------------------------------------------------------------------------
# Mapping, NULLs, batching
# --------------------------------------------------------------------------------------------------


def test_null_values_skip_leaves_nulls_out_and_sync_sends_them(echo):
    batch = people(2, ltv=[None, 5.5])
    deliver(echo_platform(echo), EMAIL_ONLY, {"add": [batch]}, InMemoryJournal())
    skip = ActivationSpec(
        "vip_audience", "customer_id", {"email": "email"}, {"ltv": "value"}, null_values="skip"
    )
    deliver(echo_platform(echo), skip, {"add": [batch]}, InMemoryJournal())

    synced, skipped = echo.members()[:2], echo.members()[2:]
    assert [m["fields"] for m in synced] == [{"value": None}, {"value": 5.5}]
    assert [m["fields"] for m in skipped] == [{}, {"value": 5.5}]


def test_batches_are_cut_at_the_platforms_record_count(echo):
    journal = InMemoryJournal()
    result = deliver(echo_platform(echo), EMAIL_ONLY, {"add": [people(120), people(130)]}, journal)
    assert sorted(len(r.json["members"]) for r in echo.requests) == [50, 100, 100]
    assert result.batches == 3 and result.accepted == 250
    expected = sorted([*range(1, 121), *range(1, 131)])
    assert sorted(journal.acknowledged_keys["add"], key=int) == [str(i) for i in expected]


class SmallBodies(Echo):
    limits = Limits(
        max_records_per_batch=100,
        max_bytes_per_batch=600,
        envelope_bytes=32,
        requests_per_window=1000,
        window_seconds=1.0,
        max_concurrency=2,
    )


def test_batches_are_cut_at_the_platforms_byte_size_and_an_oversized_record_is_rejected(echo):
    batch = people(20, ltv=[1.0] * 19 + [None])
    extra = pa.record_batch(
        {"customer_id": [99], "email": ["big@example.com"], "phone": [None], "ltv": [2.0]}
    )
    spec = ActivationSpec(
        "vip_audience", "customer_id", {"email": "email", "external_id": "note"}, {"ltv": "value"}
    )
    batch = batch.append_column("note", pa.array(["n"] * 20))
    extra = extra.append_column("note", pa.array(["x" * 700]))
    journal = InMemoryJournal()
    result = deliver(echo_platform(echo, SmallBodies), spec, {"add": [batch, extra]}, journal)

    assert all(len(r.raw_body) <= 600 for r in echo.requests)
    assert len(echo.requests) > 1
    assert sorted(int(m["key"]) for m in echo.members()) == list(range(1, 21))
    member = {
        "key": "99",
        "ids": {"email": sha256_hex("big@example.com"), "external_id": "x" * 700},
        "fields": {"value": 2.0},
    }
    size = len(json.dumps(member, separators=(",", ":")))
    assert size == 835
    assert journal.rejections == [
        ("99", "add", f"record is {size} bytes, over echo's limit of 600 bytes per request")
    ]
    assert result.top_reasons() == [("record too large", 1)]


def test_missing_columns_and_unsupported_operations_are_config_errors(echo):
    with pytest.raises(PlatformConfigError) as missing:
        deliver(
            echo_platform(echo), EMAIL_ONLY, {"add": [people(1).drop_columns(["ltv"])]}, InMemoryJournal()
        )
    assert str(missing.value) == (
        "destination 'vip_audience' (echo): the add records lack column(s) ltv; found: customer_id, email, phone"
    )
    with pytest.raises(PlatformConfigError) as unsupported:
        deliver(echo_platform(echo), EMAIL_ONLY, {"upsert": [people(1)]}, InMemoryJournal())
    assert str(unsupported.value) == (
        "destination 'vip_audience' (echo): service 'audiences' does not support operation 'upsert'; "
        "allowed: add, remove"
    )
    assert echo.requests == []


# --------------------------------------------------------------------------------------------------
# Rate limits, retries, auth, quotas
# --------------------------------------------------------------------------------------------------


def test_retry_after_pauses_sending_for_the_time_the_platform_asked(echo):
    echo.script.append(FakeResponse(429, {"message": "slow down"}, {"Retry-After": "1"}))
    result = deliver(echo_platform(echo), EMAIL_ONLY, {"add": [people(10)]}, InMemoryJournal(), retry=FAST)

    first, second = echo.requests
    assert second.arrived - first.arrived >= 1.0
    assert result.accepted == 10 and result.retries == 1
    assert result.rate_limit_wait_seconds >= 0.95


def test_x_ratelimit_remaining_zero_holds_every_request_until_the_reset(echo):
    echo.script.append(
        FakeResponse(200, {"rejected": {}}, {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "1"})
    )
    result = deliver(
        echo_platform(echo, max_concurrency=1), EMAIL_ONLY, {"add": [people(200)]}, InMemoryJournal()
    )
    first, second = echo.requests
    assert second.arrived - first.arrived >= 1.0
    assert result.retries == 0 and result.rate_limit_wait_seconds >= 0.95 and result.accepted == 200


def test_a_429_without_retry_after_waits_until_x_ratelimit_reset(echo):
    reset = int(time.time()) + 2  # a Unix time, as Braze sends it
    echo.script.append(FakeResponse(429, {"message": "limit"}, {"X-RateLimit-Reset": str(reset)}))
    result = deliver(echo_platform(echo), EMAIL_ONLY, {"add": [people(5)]}, InMemoryJournal(), retry=FAST)
    first, second = echo.requests
    assert time.time() >= reset - 0.05
    assert second.arrived - first.arrived >= 0.9
    assert result.accepted == 5 and result.retries == 1


def test_the_rate_limiter_allows_at_most_n_starts_per_window():
    limiter = RateLimiter(3, 0.4)
    starts = []
    for _ in range(7):
        limiter.acquire()
        starts.append(time.monotonic())
    assert starts[3] - starts[0] >= 0.4
    assert starts[6] - starts[3] >= 0.4
    assert starts[2] - starts[0] < 0.2  # the first three go at once


def test_rate_limit_setting_lowers_the_documented_limit(echo):
    platform = echo_platform(echo, rate_limit={"requests": 2, "per_seconds": 0.5})
    assert platform.effective_limits().requests_per_window == 2  # documented: 1000 per second
    deliver(platform, EMAIL_ONLY, {"add": [people(600)]}, InMemoryJournal())

    arrivals = [r.arrived for r in echo.requests]
    assert len(arrivals) == 6
    for i in range(len(arrivals) - 2):
        assert arrivals[i + 2] - arrivals[i] >= 0.4  # never 3 requests within half a second


def test_transient_errors_are_retried_then_succeed(echo):
    echo.script.extend([FakeResponse(503, {"message": "unavailable"}), FakeResponse(502, None)])
    result = deliver(echo_platform(echo), EMAIL_ONLY, {"add": [people(5)]}, InMemoryJournal(), retry=FAST)
    assert len(echo.requests) == 3
    assert result.accepted == 5 and result.retries == 2


def test_a_timeout_is_retried(echo):
    echo.script.append(1.0)  # the first answer comes after the client gave up
    result = deliver(
        echo_platform(echo, timeout_seconds=0.3),
        EMAIL_ONLY,
        {"add": [people(3)]},
        InMemoryJournal(),
        retry=FAST,
    )
    assert result.accepted == 3 and result.retries == 1


def test_retries_are_bounded_and_nothing_is_acknowledged(echo):
    echo.script.extend([FakeResponse(503, {"message": "down for maintenance"})] * 5)
    journal = InMemoryJournal()
    with pytest.raises(PlatformRequestError) as failed:
        deliver(echo_platform(echo), EMAIL_ONLY, {"add": [people(5)]}, journal, retry=FAST)
    assert len(echo.requests) == 3
    assert str(failed.value) == (
        "destination 'vip_audience' (echo): POST /v1/add failed after 3 attempts: HTTP 503: down for maintenance"
    )
    assert journal.acknowledged_keys == {}


def test_an_auth_error_fails_at_once_with_the_platforms_message_and_never_the_key(echo):
    echo.script.append(FakeResponse(401, {"message": f"invalid api key {API_KEY}"}))
    with pytest.raises(PlatformAuthError) as refused:
        deliver(echo_platform(echo), EMAIL_ONLY, {"add": [people(150)]}, InMemoryJournal(), retry=FAST)
    assert len(echo.requests) <= 2  # the two workers' first requests, and nothing after
    assert str(refused.value) == (
        "destination 'vip_audience' (echo): the platform refused the credentials (HTTP 401): invalid api key ***"
    )
    assert API_KEY not in repr(refused.value)


def test_a_quota_that_runs_out_ends_the_delivery_early_as_a_partial_success(echo):
    platform = echo_platform(echo, max_concurrency=1)
    journal = InMemoryJournal()

    def app(request: FakeRequest) -> FakeResponse:
        if len(echo.requests) > 2:
            return FakeResponse(429, {"message": "hourly quota reached"}, {"Retry-After": "3600"})
        return EchoApi.__call__(echo, request)

    echo.server.app = app
    result = deliver(
        platform, EMAIL_ONLY, {"add": [people(450)], "remove": [people(10)]}, journal, retry=FAST
    )

    assert result.quota is not None
    assert result.quota.message == (
        "destination 'vip_audience' (echo): the platform asked to wait 3600s (HTTP 429: hourly quota reached), "
        "longer than a sync waits (900s)"
    )
    assert len(echo.requests) == 3  # nothing is sent once the quota is known to be used up
    assert len(journal.acknowledged_keys["add"]) == 200
    assert result.accepted == 200 and result.counts("add").not_sent == 200  # the 3rd and the queued 4th
    assert "remove" not in journal.acknowledged_keys
    assert result.as_metadata()["quota_exhausted"] is True


# --------------------------------------------------------------------------------------------------
# Journal, splits, retries of single records, async jobs
# --------------------------------------------------------------------------------------------------


class KilledAfter(InMemoryJournal):
    """A journal whose process dies after ``batches`` acknowledged batches."""

    def __init__(self, batches: int) -> None:
        super().__init__()
        self.left = batches

    def acknowledged(self, operation: str, keys: Sequence[str]) -> None:
        if self.left == 0:
            raise SystemExit("killed")
        super().acknowledged(operation, keys)
        self.left -= 1


def test_a_killed_sync_re_sends_only_what_was_not_acknowledged(echo):
    journal = KilledAfter(2)
    with pytest.raises(SystemExit):
        deliver(echo_platform(echo, max_concurrency=1), EMAIL_ONLY, {"add": [people(500)]}, journal)
    first_run = {m["key"] for m in echo.members()}
    done = set(journal.acknowledged_keys["add"])
    assert len(done) == 200

    journal.left = -1  # the next sync's process lives
    before = len(echo.requests)
    result = deliver(echo_platform(echo), EMAIL_ONLY, {"add": [people(500)]}, journal)
    resent = {m["key"] for r in echo.requests[before:] for m in r.json["members"]}

    assert resent == {str(i) for i in range(1, 501)} - done
    assert first_run & resent == first_run - done  # only the unacknowledged batch went twice
    assert result.counts("add").already_acknowledged == 200 and result.accepted == 300


def test_a_batch_refused_whole_is_split_until_the_bad_record_is_alone(echo):
    echo.whole_batch_when = 13.0
    journal = InMemoryJournal()
    result = deliver(echo_platform(echo), EMAIL_ONLY, {"add": [people(16)]}, journal)
    assert journal.rejections == [("13", "add", "one member is malformed")]
    assert result.accepted == 15 and result.rejected == 1
    assert len(echo.requests) == 1 + 2 + 2 + 2 + 2  # 16 -> 8+8 -> 4+4 -> 2+2 -> 1+1 on the bad side


def test_records_the_platform_asks_to_retry_are_sent_again(echo):
    echo.retry_once = {"2", "4"}
    journal = InMemoryJournal()
    result = deliver(echo_platform(echo), EMAIL_ONLY, {"add": [people(5)]}, journal)
    assert [len(r.json["members"]) for r in echo.requests] == [5, 2]
    assert sorted(journal.acknowledged_keys["add"]) == ["1", "2", "3", "4", "5"]
    assert result.accepted == 5


def test_async_jobs_are_polled_to_completion_and_their_errors_become_rejections(echo):
    echo.async_jobs = True
    echo.reject_when = {3.0: "BAD_VALUE"}
    journal = InMemoryJournal()
    result = deliver(echo_platform(echo), EMAIL_ONLY, {"add": [people(4)]}, journal)
    assert [r.path for r in echo.requests] == [
        "/v1/add",
        "/v1/jobs/job-1",
        "/v1/jobs/job-1",
        "/v1/jobs/job-1",
    ]
    assert journal.rejections == [("3", "add", "BAD_VALUE: member refused")]
    assert sorted(journal.acknowledged_keys["add"]) == ["1", "2", "4"]
    assert result.top_reasons() == [("BAD_VALUE", 1)]


# --------------------------------------------------------------------------------------------------
# Rejection rate, preview, registry, settings
# --------------------------------------------------------------------------------------------------


def test_a_rejection_rate_above_max_rejected_pct_fails_with_counts_and_reasons(echo):
    echo.reject_when = {1.0: "INVALID_LTV", 2.0: "INVALID_LTV", 3.0: "BLOCKED"}
    result = deliver(echo_platform(echo), EMAIL_ONLY, {"add": [people(20)]}, InMemoryJournal())
    check_rejection_rate(result, max_rejected_pct=20)  # 15% passes
    with pytest.raises(RejectionRateExceeded) as too_many:
        check_rejection_rate(result)
    assert str(too_many.value) == (
        "destination 'vip_audience' (echo): 3 of 20 records (15.0%) were rejected, above max_rejected_pct 10; "
        "top reasons: INVALID_LTV (2); BLOCKED (1)"
    )


def test_preview_builds_the_first_requests_masked_and_sends_nothing(echo):
    spec = ActivationSpec(
        "vip_audience", "customer_id", {"email": "email", "external_id": "crm_id"}, {"ltv": "value"}
    )
    batch = people(250).append_column("crm_id", pa.array([f"CRM-{i:05d}" for i in range(250)]))
    shown = preview(echo_platform(echo), spec, {"add": [batch]}, max_requests=2)
    assert echo.requests == []
    assert [p.records for p in shown] == [100, 100]
    first = shown[0].body["members"][0]
    masked_email = sha256_hex("person1@example.com")[:8] + "…"
    assert first == {
        "key": "1",
        "ids": {"email": masked_email, "external_id": "CRM-***"},
        "fields": {"value": 1.0},
    }
    assert shown[0].url == echo.server.url + "/v1/add"


def test_the_registry_names_known_platforms_and_refuses_a_second_claim():
    assert "hubspot" in platforms.platform_names()
    with pytest.raises(PlatformConfigError) as unknown:
        platforms.get_platform("hubspots")
    assert (
        str(unknown.value)
        == f"type: found 'hubspots'; allowed platforms: {', '.join(platforms.platform_names())}"
    )
    platforms.register_platform("echo_test", EchoSettings, Echo)
    platforms.register_platform("echo_test", EchoSettings, Echo)  # the same claim again is harmless
    with pytest.raises(ValueError, match="already registered by test_platform_sdk.Echo"):
        platforms.register_platform("echo_test", EchoSettings, SmallBodies)
    built = platforms.build_platform("echo_test", {"api_key": API_KEY}, destination="aud")
    assert isinstance(built, Echo) and built.label == "destination 'aud' (echo)"


def test_settings_errors_name_the_key_path_and_never_quote_a_secret():
    platforms.register_platform("echo_test", EchoSettings, Echo)
    with pytest.raises(PlatformConfigError) as bad:
        platforms.build_settings(
            "echo_test",
            {"api_key": 12345678, "service": "events", "rate_limit": {"requests": 0}, "colour": "red"},
            where="destinations.aud",
        )
    assert str(bad.value).splitlines() == [
        "destinations.aud.service: Input should be 'audiences' or 'attributes' (found 'events')",
        "destinations.aud.rate_limit.requests: Input should be greater than 0 (found 0)",
        "destinations.aud.api_key: Input should be a valid string",
        "destinations.aud.colour: Extra inputs are not permitted",
    ]
    assert "12345678" not in str(bad.value)
    assert repr(platforms.build_settings("echo_test", {"api_key": API_KEY})).count(API_KEY) == 0


# --------------------------------------------------------------------------------------------------
# Journals that buffer (group commits), and the transport's direct path
# --------------------------------------------------------------------------------------------------


class BufferingJournal(InMemoryJournal):
    """A journal that holds what it is told until ``flush()`` (as the warehouse's does); ``writes``
    lists the keys of each flush and ``flush_threads`` the threads that ran them."""

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()
        self.buffer: list[tuple[str, list[str]]] = []
        self.writes: list[list[str]] = []
        self.flush_threads: set[str] = set()

    def acknowledged(self, operation: str, keys: Sequence[str]) -> None:
        with self.lock:
            self.buffer.append((operation, list(keys)))

    def flush(self) -> None:
        with self.lock:
            taken, self.buffer = self.buffer, []
        self.flush_threads.add(threading.current_thread().name)
        if taken:
            self.writes.append([k for _, keys in taken for k in keys])
            for operation, keys in taken:
                super().acknowledged(operation, keys)


def test_a_buffering_journal_is_flushed_while_batches_go_out_and_before_an_error(echo):
    journal = BufferingJournal()
    echo.script.extend([0.02] * 10)  # the first answers take a while: later batches come back meanwhile
    result = deliver(echo_platform(echo, max_concurrency=2), EMAIL_ONLY, {"add": [people(2000)]}, journal)
    assert result.accepted == 2000
    assert sorted(journal.acknowledged_keys["add"], key=int) == [str(i) for i in range(1, 2001)]
    # Written in several writes during the delivery (not once at its end), on the engine's journal thread.
    assert 1 < len(journal.writes) <= 20
    assert any(name.startswith("dinmo-journal") for name in journal.flush_threads)

    # An auth error after 5 answered batches: those 500 records are journalled before the error is raised.
    journal = BufferingJournal()
    platform = echo_platform(echo, max_concurrency=1)
    sent_before = len(echo.requests)
    answered = 0
    original = echo.server.app

    def app(request: FakeRequest) -> FakeResponse:
        nonlocal answered
        answered += 1
        if answered > 5:
            return FakeResponse(401, {"message": "key revoked"})
        return original(request)

    echo.server.app = app
    with pytest.raises(PlatformAuthError):
        deliver(platform, EMAIL_ONLY, {"add": [people(1000)]}, journal, retry=FAST)
    assert len(echo.requests) - sent_before == 6
    assert sorted(journal.acknowledged_keys["add"], key=int) == [str(i) for i in range(1, 501)]


class ProxyApp:
    """A forward proxy that answers as the echo platform (it records what went through it)."""

    def __init__(self, api: EchoApi) -> None:
        self.api = api
        self.server = FakeServer(self)

    def __call__(self, request: FakeRequest) -> FakeResponse:
        return self.api(request)


def test_requests_go_through_the_environments_proxy_and_carry_requests_headers(echo, monkeypatch):
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY",
                 "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    # Without a proxy: straight to the platform, with the headers requests would send and exact params.
    platform = echo_platform(echo)
    echo.script.append(FakeResponse(200, {"ok": True}))
    with platforms.http.Transport(platform) as transport:
        answer = transport.send(PreparedRequest("GET", "/v1/status", params={"q": "a b&c", "n": "é"}))
    assert answer.status == 200
    got = echo.requests[-1]
    assert got.path == "/v1/status" and got.query == {"q": "a b&c", "n": "é"}
    assert got.headers["x-api-key"] == API_KEY
    assert got.headers["user-agent"].startswith("python-requests/")
    assert "gzip" in got.headers["accept-encoding"]

    # With HTTP_PROXY set, the request goes through the proxy (the platform's host does not even resolve).
    proxy = ProxyApp(echo)
    with proxy.server:
        monkeypatch.setenv("HTTP_PROXY", proxy.server.url)
        unreachable = echo_platform(echo, base_url="http://echo-platform.invalid")
        result = deliver(unreachable, EMAIL_ONLY, {"add": [people(3)]}, InMemoryJournal(), retry=FAST)
    assert result.accepted == 3
    assert [r.path for r in proxy.server.requests] == ["/v1/add"]
    assert proxy.server.requests[0].headers["host"] == "echo-platform.invalid"


def test_a_redirect_is_followed_and_a_refused_connection_is_retried_then_reported(echo):
    echo.script.append(FakeResponse(307, None, {"Location": echo.server.url + "/v1/add"}))
    result = deliver(echo_platform(echo), EMAIL_ONLY, {"add": [people(3)]}, InMemoryJournal(), retry=FAST)
    assert result.accepted == 3
    assert [r.path for r in echo.requests][-1] == "/v1/add"

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}"
    with pytest.raises(PlatformRequestError) as failed:
        deliver(echo_platform(echo, base_url=url), EMAIL_ONLY, {"add": [people(3)]}, InMemoryJournal(), retry=FAST)
    assert str(failed.value) == (
        "destination 'vip_audience' (echo): POST /v1/add failed after 3 attempts: a connection error (ConnectionError)"
    )
