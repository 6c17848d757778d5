"""OAuth 2.0 access tokens in the delivery SDK (dinmo_dagster/platforms/oauth.py), through the real
engine and transport, against a local token endpoint and API that refuse expired tokens.

The adapter here is the smallest one an OAuth platform can be (one endpoint, one token): what is
tested is the SDK's token handling, not a platform's payloads."""

from __future__ import annotations

import base64
import itertools
import logging
import threading
import time
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar, Literal

import pyarrow as pa
import pytest
from fakes.server import FakeRequest, FakeResponse, FakeServer

from dinmo_dagster.platforms import (
    ActivationSpec,
    BatchOutcome,
    HttpResponse,
    IdentifierSpec,
    InMemoryJournal,
    Limits,
    Platform,
    PlatformAuthError,
    PlatformConfigError,
    PlatformRequestError,
    PreparedRequest,
    Record,
    build_platform,
    deliver,
)
from dinmo_dagster.platforms.oauth import OAuthSettings, OAuthToken

CLIENT_ID = "demo-client"
CLIENT_SECRET = "cs-0f9e8d7c6b5a4f3e2d1c"
REFRESH_TOKEN = "rt-1a2b3c4d5e6f7a8b9c0d"
SPEC = ActivationSpec("demo", "customer_id", {"email": "email"})


class DemoSettings(OAuthSettings):
    service: Literal["audiences"] = "audiences"


class Demo(Platform):
    """One endpoint (``POST /members``), authenticated by an OAuth access token."""

    name = "oauth_demo"
    settings_model: ClassVar[type[DemoSettings]] = DemoSettings
    services: ClassVar[Mapping[str, tuple[str, ...]]] = {"audiences": ("add",)}
    limits = Limits(max_records_per_batch=1, requests_per_window=1000, window_seconds=1.0, max_concurrency=4)

    def __init__(self, settings: DemoSettings, *, destination: str = "", client_auth: Any = "body") -> None:
        super().__init__(settings, destination=destination)
        self.oauth = OAuthToken(self, default_token_url="https://accounts.example.invalid/token",
                                client_auth=client_auth)

    def auth_headers(self) -> dict[str, str]:
        return self.oauth.headers()

    def renew_auth(self, response: HttpResponse, sent: Mapping[str, str]) -> bool:
        return response.status == 401 and self.oauth.renew(sent)

    def identifier_spec(self, name: str) -> IdentifierSpec | None:
        return IdentifierSpec("email", hashed=True) if name == "email" else None

    def record_input(self, operation: str, record: Record) -> Any:
        return record.identifiers["email"]

    def build_request(self, operation: str, inputs: Sequence[Any], records: Sequence[Record]) -> PreparedRequest:
        return PreparedRequest("POST", "/members", json={"members": list(inputs)})

    def parse_response(self, operation: str, records: Sequence[Record], response: HttpResponse) -> BatchOutcome:
        return BatchOutcome.accept_all(records)


class TokenAndApi:
    """A token endpoint (``POST /token``, RFC 6749 refresh_token and client_credentials grants) and an
    API (``POST /members``) that answers 401 for a missing, unknown or expired token."""

    def __init__(self, *, lifetime: float = 1800.0, token_latency: float = 0.0, expire_after: int | None = None,
                 refuse_all: bool = False) -> None:
        self.lifetime = lifetime
        self.token_latency = token_latency
        self.expire_after = expire_after  # API calls after which every token expires (Snap's clock)
        self.refuse_all = refuse_all
        self.unavailable = 0  # token requests still to answer 503 (an outage of the token endpoint)
        self.refresh_token = REFRESH_TOKEN
        self.tokens: dict[str, float] = {}
        self.answers: list[tuple[str, int]] = []
        self.members: list[str] = []
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self.server = FakeServer(self._app)
        self.url = self.server.url

    def _app(self, request: FakeRequest) -> FakeResponse:
        response = self._token(request) if request.path == "/token" else self._api(request)
        with self._lock:
            self.answers.append((request.path, response.status))
        return response

    def _token(self, request: FakeRequest) -> FakeResponse:
        time.sleep(self.token_latency)
        with self._lock:
            if self.unavailable:
                self.unavailable -= 1
                return FakeResponse(503, {"error": "temporarily_unavailable"})
        form = dict(urllib.parse.parse_qsl(request.raw_body.decode()))
        basic = request.headers.get("authorization", "").removeprefix("Basic ")
        if basic and "client_id" not in form:  # RFC 6749 2.3.1: one client authentication method, not both
            form.update(zip(("client_id", "client_secret"), base64.b64decode(basic).decode().split(":", 1)))
        elif basic:
            return FakeResponse(400, {"error": "invalid_request", "error_description": "Two client authentications"})
        if (form.get("client_id"), form.get("client_secret")) != (CLIENT_ID, CLIENT_SECRET):
            return FakeResponse(401, {"error": "invalid_client", "error_description": "Unknown client"})
        if form.get("grant_type") == "refresh_token" and form.get("refresh_token") != self.refresh_token:
            return FakeResponse(400, {"error": "invalid_grant", "error_description": "Invalid refresh token"})
        with self._lock:
            token = f"at-{next(self._ids)}-{'z' * 20}"
            self.tokens[token] = time.monotonic() + self.lifetime
        return FakeResponse(200, {"access_token": token, "token_type": "Bearer", "expires_in": self.lifetime})

    def _api(self, request: FakeRequest) -> FakeResponse:
        token = request.headers.get("authorization", "").removeprefix("Bearer ")
        with self._lock:
            if self.refuse_all or self.tokens.get(token, 0.0) <= time.monotonic():
                return FakeResponse(401, {"message": "access token expired or invalid"},
                                    {"WWW-Authenticate": 'Bearer error="invalid_token"'})
            self.members += request.json["members"]
            if self.expire_after is not None and len(self.members) == self.expire_after:
                self.tokens = dict.fromkeys(self.tokens, 0.0)
        return FakeResponse(200, {"ok": True})

    def api_statuses(self) -> list[int]:
        return [status for path, status in self.answers if path == "/members"]

    def token_requests(self) -> int:
        return sum(1 for path, _ in self.answers if path == "/token")


@pytest.fixture
def fake() -> Iterator[TokenAndApi]:
    api = TokenAndApi()
    with api.server:
        yield api


def demo(fake: TokenAndApi, client_auth: str = "body", **settings: Any) -> Demo:
    raw = {
        "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "refresh_token": REFRESH_TOKEN,
        "base_url": fake.url, "token_url": f"{fake.url}/token", **settings,
    }  # fmt: skip
    return Demo(DemoSettings.model_validate(raw), destination="demo_dest", client_auth=client_auth)


def emails(n: int) -> dict[str, list[pa.RecordBatch]]:
    return {"add": [pa.record_batch({"customer_id": list(range(n)), "email": [f"c{i}@example.com" for i in range(n)]})]}


def test_a_long_delivery_renews_the_token_before_it_expires_and_never_sends_an_expired_one(caplog):
    caplog.set_level(logging.DEBUG)
    api = TokenAndApi(lifetime=0.3)
    with api.server:
        # 30 requests one per 50 ms: 1.5 s, five lifetimes of the token.
        result = deliver(demo(api, rate_limit={"requests": 1, "per_seconds": 0.05}), SPEC, emails(30), InMemoryJournal())

    assert result.accepted == 30
    assert api.api_statuses() == [200] * 30  # renewed before expiry: no 401 at all
    assert api.token_requests() >= 3
    assert all(secret not in caplog.text for secret in (CLIENT_SECRET, REFRESH_TOKEN, "at-1-"))


def test_concurrent_workers_share_one_token_request():
    api = TokenAndApi(token_latency=0.3)
    with api.server:
        result = deliver(demo(api), SPEC, emails(12), InMemoryJournal())

    assert result.accepted == 12
    assert api.token_requests() == 1
    assert api.api_statuses() == [200] * 12


def test_a_401_for_an_expired_token_renews_it_once_and_sends_the_request_again():
    api = TokenAndApi(expire_after=3)
    with api.server:
        result = deliver(demo(api, max_concurrency=1), SPEC, emails(6), InMemoryJournal())

    assert result.accepted == 6
    assert api.api_statuses() == [200, 200, 200, 401, 200, 200, 200]
    assert api.token_requests() == 2
    assert sorted(api.members) == sorted(set(api.members)) and len(api.members) == 6


def test_a_revoked_refresh_token_fails_at_once_naming_the_destination_without_the_secret(fake):
    fake.refresh_token = "rotated-elsewhere"
    with pytest.raises(PlatformAuthError) as refused:
        deliver(demo(fake), SPEC, emails(8), InMemoryJournal())

    assert str(refused.value) == (
        "destination 'demo_dest' (oauth_demo): the token endpoint refused the refresh token (HTTP 400 "
        "invalid_grant: Invalid refresh token); create a new refresh token and set it in refresh_token"
    )
    assert fake.token_requests() == 1
    assert fake.api_statuses() == []
    assert REFRESH_TOKEN not in repr(refused.value) and CLIENT_SECRET not in repr(refused.value)


def test_a_fresh_token_refused_again_stops_the_sync_after_one_renewal():
    api = TokenAndApi(refuse_all=True)
    with api.server, pytest.raises(PlatformAuthError) as refused:
        deliver(demo(api, max_concurrency=1), SPEC, emails(3), InMemoryJournal())

    assert str(refused.value) == (
        "destination 'demo_dest' (oauth_demo): the platform refused the credentials (HTTP 401): "
        "access token expired or invalid"
    )
    assert api.api_statuses() == [401, 401]
    assert api.token_requests() == 2


def test_a_token_endpoint_outage_is_retried_then_reported_after_three_attempts(fake):
    fake.unavailable = 2
    assert deliver(demo(fake), SPEC, emails(2), InMemoryJournal()).accepted == 2
    assert [status for path, status in fake.answers if path == "/token"] == [503, 503, 200]

    fake.unavailable = 3
    with pytest.raises(PlatformRequestError) as failed:
        deliver(demo(fake), SPEC, emails(2), InMemoryJournal())
    assert str(failed.value) == (
        f"destination 'demo_dest' (oauth_demo): the token endpoint {fake.url}/token failed after 3 attempts: HTTP 503"
    )


def test_the_client_credentials_grant_needs_no_refresh_token(fake):
    result = deliver(
        demo(fake, refresh_token=None, grant_type="client_credentials"), SPEC, emails(2), InMemoryJournal()
    )
    assert result.accepted == 2
    assert fake.token_requests() == 1


def test_settings_name_the_missing_secret():
    with pytest.raises(PlatformConfigError) as missing:
        build_platform("snapchat_ads", {"service": "audiences", "client_id": CLIENT_ID, "client_secret": " ",
                                        "ad_account_id": "8adc3db7-8148-4fbf-999c-8d2266369d74"}, destination="snap")
    assert str(missing.value).splitlines() == [
        "destinations.snap.client_secret: is empty; allowed: the OAuth app's client secret",
        "destinations.snap.refresh_token: found nothing; allowed: a refresh token (grant_type refresh_token)",
    ]
    assert CLIENT_SECRET not in str(missing.value)


def test_client_credentials_go_in_a_basic_header_alone_when_the_platform_asks(fake):
    result = deliver(demo(fake, client_auth="basic"), SPEC, emails(2), InMemoryJournal())

    assert result.accepted == 2
    (token_request,) = [r for r in fake.server.requests if r.path == "/token"]
    assert token_request.headers["authorization"] == "Basic " + base64.b64encode(
        f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
    assert dict(urllib.parse.parse_qsl(token_request.raw_body.decode())) == {
        "grant_type": "refresh_token", "refresh_token": REFRESH_TOKEN}
