"""The Reddit Ads adapter through a fake Ads API v3 and token endpoint built from the contract its
docstring cites (tests/fakes/reddit_ads.py): the members each custom audience holds, what was sent,
and that neither a raw identifier nor a secret is ever sent or shown. Then one DuckDB scenario
through the real Dagster sync job.

Expected digests are computed here with hashlib from the normalized values Reddit's hashing guide
describes (lower-cased e-mails, ``+alias`` removed, user name letters and digits only; mobile ad ids
trimmed, case kept)."""

from __future__ import annotations

import base64
import contextlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pyarrow as pa
import pytest
import requests
from ad_scenarios import ad_project, audiences_platform, calls, change_customers, sha
from fakes.reddit_ads import RedditAdsFake
from fakes.server import FakeResponse
from platform_scenarios import (
    run_sync_job,
    sync_steps,
)

from dinmo_dagster.cli import main
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
from dinmo_dagster.platforms.reddit_ads import RedditAds

ACCOUNT = "t2_adacct42"
CLIENT_ID = "reddit-client-7h2k"
CLIENT_SECRET = "reddit-secret-1q2w3e4r5t6y7u8i9o0p"
REFRESH_TOKEN = "reddit-refresh-9z8y7x6w5v4u3t2s1r"
FAST = RetryPolicy(max_attempts=3, max_rate_limited_attempts=20, initial_wait_seconds=0.01, max_wait_seconds=0.05)
EMAILS = ActivationSpec("vip_to_reddit", "customer_id", {"email": "email"})
BOTH = ActivationSpec("vip_to_reddit", "customer_id", {"email": "email", "mobile_ad_id": "maid"})


@pytest.fixture
def reddit() -> Iterator[RedditAdsFake]:
    with RedditAdsFake(
        client_id=CLIENT_ID, client_secret=CLIENT_SECRET, refresh_token=REFRESH_TOKEN, ad_account_id=ACCOUNT
    ) as fake:
        yield fake


def audiences(fake: RedditAdsFake, **settings: Any) -> RedditAds:
    return audiences_platform(
        "reddit_ads", "reddit_vip", RedditAds, fake,
        {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "refresh_token": REFRESH_TOKEN,
         "ad_account_id": ACCOUNT}, settings,
    )  # fmt: skip


def customers(ids: Any, **overrides: list[Any]) -> pa.RecordBatch:
    ids = list(ids)
    columns: dict[str, list[Any]] = {"customer_id": ids, "email": [f" Customer.{i}@Example.com" for i in ids]}
    columns.update(overrides)
    return pa.record_batch(columns)


def emails(ids: Any) -> set[str]:
    return {sha(f"customer{i}@example.com") for i in ids}


# --------------------------------------------------------------------------------------------------
# First sync, delta, identifier change, full sync
# --------------------------------------------------------------------------------------------------


def test_a_first_sync_creates_the_audience_and_adds_every_member_hashed_in_one_patch(reddit):
    maids = ["6D92078A-8246-4BA4-AE5B-76104861E7DC", None, " aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee "]
    result = deliver(audiences(reddit), BOTH, {"add": [customers([1, 2, 3], maid=maids)]}, InMemoryJournal())

    assert result.accepted == 3
    audience = reddit.audience_named("VIP Europe")
    assert audience is not None
    assert audience.members == {
        "EMAIL_SHA256": emails([1, 2, 3]),
        "MAID_SHA256": {sha("6D92078A-8246-4BA4-AE5B-76104861E7DC"), sha("aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee")},
    }
    assert calls(reddit) == [
        ("GET", f"/api/v3/ad_accounts/{ACCOUNT}/custom_audiences"),
        ("POST", f"/api/v3/ad_accounts/{ACCOUNT}/custom_audiences"),
        ("PATCH", f"/api/v3/custom_audiences/{audience.id}/users"),
    ]
    assert reddit.requests[1].json == {"data": {"name": "VIP Europe", "type": "CUSTOMER_LIST"}}
    assert reddit.requests[2].json == {"data": {
        "action_type": "ADD", "column_order": ["EMAIL_SHA256", "MAID_SHA256"],
        "user_data": [[sha("customer1@example.com"), sha("6D92078A-8246-4BA4-AE5B-76104861E7DC")],
                      [sha("customer2@example.com"), ""],
                      [sha("customer3@example.com"), sha("aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee")]]}}  # fmt: skip
    # the token request: client credentials in HTTP Basic only, a descriptive User-Agent
    token = reddit.token_requests[0]
    assert token.headers["authorization"] == "Basic " + base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
    assert CLIENT_SECRET not in token.raw_body.decode()
    assert token.headers["user-agent"] == "dinmo-dagster (reverse ETL)"


def test_an_audience_is_found_by_name_across_pages_or_used_by_id_and_never_created_twice(reddit):
    reddit.page_size = 2
    for i in range(4):
        reddit.create_audience(f"Other {i}")
    existing = reddit.create_audience("VIP Europe")
    deliver(audiences(reddit), EMAILS, {"add": [customers([1])]}, InMemoryJournal())
    deliver(audiences(reddit, audience={"id": existing.id}), EMAILS, {"add": [customers([2])]}, InMemoryJournal())

    assert len(reddit.audiences) == 5
    assert existing.members["EMAIL_SHA256"] == emails([1, 2])
    assert [m for m, _ in calls(reddit)] == ["GET", "GET", "GET", "PATCH", "PATCH"]


def test_a_delta_removes_those_that_left_and_moves_a_changed_email(reddit):
    audience = reddit.create_audience("VIP Europe", EMAIL_SHA256=emails([1, 2, 3]))
    changed = customers([2], email=["Renamed+news@Example.com"])
    result = deliver(audiences(reddit), EMAILS,
                     {"remove": [customers([3]), customers([2])], "add": [changed]}, InMemoryJournal())

    assert result.accepted == 3
    assert audience.members["EMAIL_SHA256"] == emails([1]) | {sha("renamed@example.com")}
    removes = [r.json["data"] for r in reddit.requests if r.method == "PATCH" and r.json["data"]["action_type"] == "REMOVE"]
    assert sorted(row[0] for d in removes for row in d["user_data"]) == sorted(emails([2, 3]))


def test_a_batch_holds_at_most_2500_rows_and_the_fake_refuses_more(reddit):
    audience = reddit.create_audience("VIP Europe")
    result = deliver(audiences(reddit, audience={"id": audience.id}), EMAILS,
                     {"add": [customers(range(1, 2_602))]}, InMemoryJournal())

    assert result.accepted == 2_601
    assert sorted(len(r.json["data"]["user_data"]) for r in reddit.requests) == [101, 2_500]
    assert audience.members["EMAIL_SHA256"] == emails(range(1, 2_602))
    too_many = {"data": {"action_type": "ADD", "column_order": ["EMAIL_SHA256"],
                         "user_data": [[sha(str(i))] for i in range(2_501)]}}
    platform = audiences(reddit)
    answer = requests.patch(f"{reddit.url}/api/v3/custom_audiences/{audience.id}/users",
                                          json=too_many, headers=platform.auth_headers(), timeout=10)
    assert (answer.status_code, answer.json()) == (400, {"error": {
        "code": "INVALID_INPUT", "message": "Too many rows in one request (2501); at most 2500"}})


def test_identifiers_are_normalized_as_reddit_documents_and_raw_values_never_sent(reddit):
    audience = reddit.create_audience("VIP Europe")
    batch = customers([1, 2, 3, 4], email=["Al.ice$+Apple@Example.Com", "not-an-email", None, "b@x.io"],
                      maid=[None, None, None, "not-a-uuid"])
    journal = InMemoryJournal()
    result = deliver(audiences(reddit, audience={"id": audience.id}), BOTH, {"add": [batch]}, journal)

    # Reddit's own example: Al.ice$+Apple@Example.Com hashes as alice@example.com
    assert audience.members["EMAIL_SHA256"] == {"ff8d9819fc0e12bf0d24892e45987e249a28dce836a85cad60e28eaaa8c6d976"}
    assert result.accepted == 1 and result.rejected == 3
    reasons = {key: reason for key, _, reason in journal.rejections}
    assert set(reasons) == {"2", "3", "4"}
    assert "email" in reasons["2"] and "not-an-email" not in reasons["2"]
    assert "not-a-uuid" not in reasons["4"] and "mobile advertising id" in reasons["4"]
    sent = json.dumps([r.json for r in reddit.requests])
    assert "example" not in sent.lower() and "@" not in sent


# --------------------------------------------------------------------------------------------------
# Failures: refused requests, 429, tokens
# --------------------------------------------------------------------------------------------------


def test_a_refused_request_rejects_its_records_with_reddits_message_and_the_next_sync_sends_them(reddit):
    audience = reddit.create_audience("VIP Europe")
    reddit.fail_next("/users", FakeResponse(400, {"error": {
        "code": "AUDIENCE_PROCESSING", "message": "The audience is being processed, retry later"}}))
    journal = InMemoryJournal()
    first = deliver(audiences(reddit), EMAILS, {"add": [customers([1, 2])]}, journal)

    assert (first.accepted, first.rejected) == (0, 2)
    assert journal.rejections == [
        ("1", "add", "The audience is being processed, retry later (AUDIENCE_PROCESSING)"),
        ("2", "add", "The audience is being processed, retry later (AUDIENCE_PROCESSING)"),
    ]
    assert first.top_reasons() == [("HTTP 400 AUDIENCE_PROCESSING", 2)]
    second = deliver(audiences(reddit), EMAILS, {"add": [customers([1, 2])]}, InMemoryJournal())
    assert second.accepted == 2
    assert audience.members["EMAIL_SHA256"] == emails([1, 2])


def test_a_storm_of_429_is_ridden_out_waiting_for_x_ratelimit_reset(reddit):
    audience = reddit.create_audience("VIP Europe")
    reddit.throttle(6)
    result = deliver(audiences(reddit, audience={"id": audience.id}), EMAILS, {"add": [customers(range(1, 4))]},
                     InMemoryJournal(), retry=FAST)

    assert audience.members["EMAIL_SHA256"] == emails(range(1, 4))
    assert [status for _, path, status in reddit.answers if path.startswith("/api/v3/")] == [429] * 6 + [200]
    assert (result.retries, result.accepted) == (6, 3)
    assert result.rate_limit_wait_seconds >= 6 * 0.05 * 0.9


def test_a_token_that_expires_mid_sync_is_renewed_once_and_the_request_sent_again(reddit, caplog):
    caplog.set_level(logging.DEBUG)
    audience = reddit.create_audience("VIP Europe")
    reddit.expire_tokens_after(2)
    platform = audiences(reddit, audience={"id": audience.id}, max_concurrency=1)
    platform.limits = type(platform.limits)(max_records_per_batch=1, requests_per_window=60, window_seconds=60.0)
    result = deliver(platform, EMAILS, {"add": [customers([i]) for i in range(1, 5)]}, InMemoryJournal())

    assert result.accepted == 4
    assert [status for _, path, status in reddit.answers if path.startswith("/api/v3/")] == [200, 200, 401, 200, 200]
    assert len(reddit.token_requests) == 2
    assert audience.members["EMAIL_SHA256"] == emails(range(1, 5))
    assert not any(s in caplog.text for s in (CLIENT_SECRET, REFRESH_TOKEN, "reddit-access-"))


def test_a_revoked_refresh_token_stops_the_sync_at_once_naming_the_destination(reddit):
    reddit.revoke_refresh_token()
    with pytest.raises(PlatformAuthError) as refused:
        deliver(audiences(reddit), EMAILS, {"add": [customers([1])]}, InMemoryJournal())

    assert str(refused.value).startswith(
        "destination 'reddit_vip' (reddit_ads): the token endpoint refused the refresh token (HTTP 400 invalid_grant")
    assert reddit.requests == [] and len(reddit.token_requests) == 1
    assert REFRESH_TOKEN not in repr(refused.value) and CLIENT_SECRET not in repr(refused.value)


# --------------------------------------------------------------------------------------------------
# preview, validate --connect, settings
# --------------------------------------------------------------------------------------------------


def test_preview_shows_the_first_request_with_digests_masked_and_sends_nothing(reddit):
    (add,) = preview(audiences(reddit), EMAILS, {"add": [customers([1, 2])]})

    assert reddit.requests == [] and reddit.token_requests == []
    assert add.method == "PATCH"
    assert add.url == f"{reddit.url}/api/v3/custom_audiences/<id of audience 'VIP Europe'>/users"
    assert add.body == {"data": {"action_type": "ADD", "column_order": ["EMAIL_SHA256"],
                                 "user_data": [[sha(f"customer{i}@example.com")[:8] + "…"] for i in (1, 2)]}}


def test_validate_connect_checks_the_token_the_account_and_an_audience_given_by_id(reddit):
    audience = reddit.create_audience("Existing")
    assert validate_connection(audiences(reddit), EMAILS) == []
    assert validate_connection(audiences(reddit, audience={"id": audience.id}), EMAILS) == []
    assert list(reddit.audiences) == [audience.id]  # an audience given by name is not created by validate
    assert validate_connection(audiences(reddit, audience={"id": "a999"}), EMAILS) == [
        ("destination 'reddit_vip' (reddit_ads): reading custom audience a999 failed with HTTP 404: "
         "Custom audience a999 not found (NOT_FOUND)")
    ]
    # Reddit answers a wrong client with HTTP 401 {"message": "Unauthorized", "error": 401}
    assert validate_connection(audiences(reddit, client_secret="wrong-secret"), EMAILS) == [
        ("destination 'reddit_vip' (reddit_ads): the token endpoint refused the refresh token (HTTP 401 401: "
         "Unauthorized); check client_id, client_secret, refresh_token and token_url")
    ]


def test_settings_and_activation_problems_name_the_key_and_what_is_allowed(reddit):
    with pytest.raises(PlatformConfigError) as wrong:
        build_platform("reddit_ads", {
            "service": "audiences", "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
            "ad_account_id": "act 12/34", "audience": {"name": "x", "id": "1"}}, destination="reddit_vip")  # fmt: skip
    assert str(wrong.value).splitlines() == [
        "destinations.reddit_vip.refresh_token: found nothing; allowed: a refresh token (grant_type refresh_token)",
        ("destinations.reddit_vip.ad_account_id: found 'act 12/34'; allowed: the ad account's id, letters, digits "
         "and _ such as t2_abc123"),
        "destinations.reddit_vip.audience: found both name and id; allowed: {name: ...} or {id: ...}",
    ]
    platform = audiences(reddit)
    assert platform.validate_activation({"email": "email", "phone": "phone", "madid": "d", "mobile_ad_id": "e"},
                                        {"first": "first_name"}) == [
        "identifiers.phone: found 'phone'; allowed: email, mobile_ad_id",
        "identifiers.mobile_ad_id: madid already sends MAID_SHA256; keep one of them",
        "mapping: found first; allowed: nothing (Reddit audiences take identifiers only)",
    ]


# --------------------------------------------------------------------------------------------------
# The Dagster sync job on DuckDB
# --------------------------------------------------------------------------------------------------


def reddit_project(request, tmp_path: Path,
                 monkeypatch) -> contextlib.AbstractContextManager[SimpleNamespace]:
    return ad_project(
        request, tmp_path, monkeypatch,
        lambda: RedditAdsFake(client_id=CLIENT_ID, client_secret=CLIENT_SECRET,
                              refresh_token=REFRESH_TOKEN, ad_account_id=ACCOUNT),
        attr="reddit", type_="reddit_ads", destination="reddit_vip", activation="to_reddit",
        fields={"ad_account_id": ACCOUNT, "client_id": CLIENT_ID},
        secrets={"client_secret": ("REDDIT_CLIENT_SECRET", CLIENT_SECRET),
                 "refresh_token": ("REDDIT_REFRESH_TOKEN", REFRESH_TOKEN)},
    )  # fmt: skip


def test_a_reddit_audience_follows_the_segment_through_the_dagster_job(request, tmp_path: Path, monkeypatch,
                                                                       capsys) -> None:
    with reddit_project(request, tmp_path, monkeypatch) as env:
        assert main(["--project", str(tmp_path), "validate", "--connect"]) == 0
        assert main(["--project", str(tmp_path), "preview", "to_reddit"]) == 0
        out = capsys.readouterr().out
        assert "bob@example.com" not in out and CLIENT_SECRET not in out
        assert all(r.method == "GET" for r in env.reddit.requests)

        # First sync: the audience is created and gets Bob, Cle and Dan; a 429 storm on the way.
        env.reddit.throttle(3)
        result = run_sync_job(env.defs, env.instance, "to_reddit")
        assert result.success
        audience = env.reddit.audience_named("VIP Europe")
        assert audience.members["EMAIL_SHA256"] == {sha(f"{n}@example.com") for n in ("bob", "cle", "dan")}

        # Delta: Dan leaves, Bob's e-mail changes, Ann enters; the first PATCH is refused (retried next
        # sync); the token expires mid-sync.
        change_customers(env.wh)
        env.reddit.fail_next("/users", FakeResponse(400, {"error": {"code": "INVALID_INPUT", "message": "Busy"}}))
        env.reddit.expire_tokens_after(1)
        run_sync_job(env.defs, env.instance, "to_reddit")
        assert 401 in [status for _, _, status in env.reddit.answers]
        run_sync_job(env.defs, env.instance, "to_reddit")
        assert audience.members["EMAIL_SHA256"] == {sha(f"{n}@example.com") for n in ("robert", "cle", "ann")}

        # Full refresh (no replace on Reddit: remove + add) puts back a member lost on Reddit's side; one
        # added there by hand stays.
        audience.members["EMAIL_SHA256"] = {sha("cle@example.com"), sha("manual@example.com")}
        sync_steps(env, "to_reddit", full_refresh=True)
        assert audience.members["EMAIL_SHA256"] == {sha(f"{n}@example.com") for n in ("robert", "cle", "ann", "manual")}

        sent = json.dumps([r.json for r in env.reddit.requests])
        assert "example.com" not in sent
        for dagster_run in env.instance.get_runs():
            for entry in env.instance.all_logs(dagster_run.run_id):
                text = repr(entry)
                assert CLIENT_SECRET not in text and REFRESH_TOKEN not in text and "reddit-access-" not in text
