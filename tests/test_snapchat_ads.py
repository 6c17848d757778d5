"""The Snapchat Ads adapter through a fake Marketing API and token endpoint built from Snap's
documentation (tests/fakes/snapchat_ads.py): the members each segment holds, what was sent, and that
neither a raw identifier nor a secret is ever sent or shown. Then one DuckDB scenario through the
real Dagster sync job.

Expected digests are computed here with hashlib from the normalized values Snap's Customer Lists
page describes (trimmed lower-case e-mails; phone digits with the country code, no ``+``, no leading
``0``; lower-case mobile ad ids with their hyphens)."""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pyarrow as pa
import pytest
from ad_scenarios import ad_project, audiences_platform, calls, change_customers, sha
from fakes.server import FakeResponse
from fakes.snapchat_ads import SnapchatAdsFake
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
from dinmo_dagster.platforms.snapchat_ads import SnapchatAds

ACCOUNT = "8adc3db7-8148-4fbf-999c-8d2266369d74"
CLIENT_ID = "snap-client-4f1c"
CLIENT_SECRET = "snap-secret-9d8c7b6a5f4e3d2c1b0a"
REFRESH_TOKEN = "snap-refresh-0a1b2c3d4e5f6a7b8c9d"
FAST = RetryPolicy(max_attempts=3, max_rate_limited_attempts=20, initial_wait_seconds=0.01, max_wait_seconds=0.05)
MEMBERS = ActivationSpec("vip_to_snap", "customer_id", {"email": "email", "phone": "phone"}, default_country="FR")
EMAILS = ActivationSpec("vip_to_snap", "customer_id", {"email": "email"})


@pytest.fixture
def snap() -> Iterator[SnapchatAdsFake]:
    with SnapchatAdsFake(
        client_id=CLIENT_ID, client_secret=CLIENT_SECRET, refresh_token=REFRESH_TOKEN, ad_account_id=ACCOUNT
    ) as fake:
        yield fake


def audiences(fake: SnapchatAdsFake, **settings: Any) -> SnapchatAds:
    return audiences_platform(
        "snapchat_ads", "snap_vip", SnapchatAds, fake,
        {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "refresh_token": REFRESH_TOKEN,
         "ad_account_id": ACCOUNT}, settings,
    )  # fmt: skip


def customers(ids: Any, **overrides: list[Any]) -> pa.RecordBatch:
    ids = list(ids)
    columns: dict[str, list[Any]] = {
        "customer_id": ids,
        "email": [f" Customer{i}@Example.com" for i in ids],
        "phone": [f"06 12 34 {i // 100 % 100:02d} {i % 100:02d}" for i in ids],
    }
    columns.update(overrides)
    return pa.record_batch(columns)


def emails(ids: Any) -> set[str]:
    return {sha(f"customer{i}@example.com") for i in ids}


def phones(ids: Any) -> set[str]:
    return {sha(f"33612345{i // 100 % 100:02d}{i % 100:02d}"[:11]) for i in ids}


# --------------------------------------------------------------------------------------------------
# First sync, delta, identifier change, full-sync replace
# --------------------------------------------------------------------------------------------------


def test_a_first_sync_creates_the_segment_and_adds_every_member_hashed_one_request_per_schema(snap):
    journal = InMemoryJournal()
    result = deliver(audiences(snap), MEMBERS, {"add": [customers(range(1, 6))]}, journal)

    segment = snap.segment_named("VIP Europe")
    assert segment is not None
    assert (segment.source_type, segment.retention_in_days) == ("FIRST_PARTY", 9999)
    assert segment.members == {
        "EMAIL_SHA256": emails(range(1, 6)),
        "PHONE_SHA256": {sha(f"3361234000{i}") for i in range(1, 6)},
        "MOBILE_AD_ID_SHA256": set(),
    }
    assert calls(snap) == [
        ("GET", f"/v1/adaccounts/{ACCOUNT}/segments"),
        ("POST", f"/v1/adaccounts/{ACCOUNT}/segments"),
        ("POST", f"/v1/segments/{segment.id}/users"),
        ("POST", f"/v1/segments/{segment.id}/users"),
    ]
    assert [r.json["users"][0]["schema"] for r in snap.requests[2:]] == [["EMAIL_SHA256"], ["PHONE_SHA256"]]
    assert sorted(journal.acknowledged_keys["add"]) == ["1", "2", "3", "4", "5"]
    assert (result.accepted, result.rejected, result.batches) == (5, 0, 1)
    assert [r.headers["authorization"].startswith("Bearer snap-access-") for r in snap.requests] == [True] * 4
    assert len(snap.token_requests) == 1


def test_a_segment_is_found_by_name_across_pages_or_used_by_id_and_never_created_twice(snap):
    for i in range(3):
        snap.create_segment(f"other {i}")
    existing = snap.create_segment("VIP Europe")
    snap.page_size = 2
    deliver(audiences(snap), EMAILS, {"add": [customers([1])]}, InMemoryJournal())
    deliver(audiences(snap, audience={"id": existing.id}), EMAILS, {"add": [customers([2])]}, InMemoryJournal())

    assert len(snap.segments) == 4
    assert existing.members["EMAIL_SHA256"] == emails([1, 2])
    assert calls(snap) == [
        ("GET", f"/v1/adaccounts/{ACCOUNT}/segments"),
        ("GET", f"/v1/adaccounts/{ACCOUNT}/segments"),
        ("POST", f"/v1/segments/{existing.id}/users"),
        ("POST", f"/v1/segments/{existing.id}/users"),
    ]


def test_a_delta_removes_those_that_left_and_moves_a_changed_email(snap):
    deliver(audiences(snap), EMAILS, {"add": [customers(range(1, 6))]}, InMemoryJournal())
    journal = InMemoryJournal()
    result = deliver(
        audiences(snap),
        EMAILS,
        {"remove": [customers([4, 5]), customers([3])], "add": [customers([3], email=["New.Three@example.com"])]},
        journal,
    )

    segment = snap.segment_named("VIP Europe")
    assert segment.members["EMAIL_SHA256"] == emails([1, 2]) | {sha("new.three@example.com")}
    assert [r.method for r in snap.requests[-2:]] == ["DELETE", "POST"]
    assert sorted(journal.acknowledged_keys["remove"]) == ["3", "4", "5"]
    assert journal.acknowledged_keys["add"] == ["3"]
    assert result.accepted == 4


def test_a_full_sync_empties_the_segment_first_then_adds_in_requests_of_at_most_100000(snap):
    segment = snap.create_segment("VIP Europe", EMAIL_SHA256={sha("old@example.com")})
    journal = InMemoryJournal()
    result = deliver(audiences(snap), EMAILS, {"replace": [customers(range(100_001))]}, journal)

    assert segment.members["EMAIL_SHA256"] == emails(range(100_001))
    assert calls(snap)[:2] == [
        ("GET", f"/v1/adaccounts/{ACCOUNT}/segments"),
        ("DELETE", f"/v1/segments/{segment.id}/all_users"),
    ]
    adds = [r for r in snap.requests if r.path.endswith("/users")]
    assert sorted(len(r.json["users"][0]["data"]) for r in adds) == [1, 100_000]
    assert len(journal.acknowledged_keys["replace"]) == 100_001
    assert (result.accepted, result.batches) == (100_001, 2)


def test_the_fake_refuses_more_than_100000_identifiers_in_one_request(snap):
    import requests

    token = requests.post(snap.token_url, data={
        "grant_type": "refresh_token", "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
        "refresh_token": REFRESH_TOKEN}, timeout=10).json()["access_token"]  # fmt: skip
    segment = snap.create_segment("VIP Europe")
    body = {"users": [{"schema": ["EMAIL_SHA256"], "data": [[sha(str(i))] for i in range(100_001)]}]}
    answer = requests.post(f"{snap.url}/v1/segments/{segment.id}/users", json=body,
                           headers={"Authorization": f"Bearer {token}"}, timeout=60)
    assert answer.status_code == 400
    assert answer.json()["debug_message"] == "Too many identifiers in one request (100001); at most 100000"
    raw = {"users": [{"schema": ["EMAIL_SHA256"], "data": [["someone@example.com"]]}]}
    answer = requests.post(f"{snap.url}/v1/segments/{segment.id}/users", json=raw,
                           headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert (answer.status_code, answer.json()["debug_message"]) == (
        400, "Invalid EMAIL_SHA256 data: expected SHA-256 hex digests")
    assert segment.members["EMAIL_SHA256"] == set()


def test_a_full_sync_of_an_empty_segment_empties_the_snapchat_segment(snap):
    segment = snap.create_segment("VIP Europe", EMAIL_SHA256={sha("old@example.com")})
    result = deliver(audiences(snap), EMAILS, {"replace": [customers([])]}, InMemoryJournal())

    assert segment.members["EMAIL_SHA256"] == set()
    assert calls(snap)[-1] == ("DELETE", f"/v1/segments/{segment.id}/all_users")
    assert result.accepted == 0


# --------------------------------------------------------------------------------------------------
# Identifiers
# --------------------------------------------------------------------------------------------------


def test_identifiers_are_normalized_as_snap_documents_and_raw_values_never_sent(snap):
    spec = ActivationSpec("vip_to_snap", "customer_id",
                          {"email": "email", "phone": "phone", "mobile_ad_id": "device"}, default_country="FR")
    batch = pa.record_batch({
        "customer_id": [1, 2, 3],
        "email": [" John.Smith@Example.COM ", None, "ann@example.com"],
        "phone": ["06 12 34 56 78", "+1 (650) 555-1212", "0033 6 98 76 54 32"],
        "device": ["AECE52E7-03EE-455A-B3C4-E57283966239", None, "not-a-device-id"],
    })  # fmt: skip
    journal = InMemoryJournal()
    result = deliver(audiences(snap), spec, {"add": [batch]}, journal)

    segment = snap.segment_named("VIP Europe")
    assert segment.members == {
        "EMAIL_SHA256": {sha("john.smith@example.com")},
        "PHONE_SHA256": {sha("33612345678"), sha("16505551212")},
        "MOBILE_AD_ID_SHA256": {sha("aece52e7-03ee-455a-b3c4-e57283966239")},
    }
    assert (result.accepted, result.rejected) == (2, 1)
    assert journal.rejections == [
        ("3", "add", ("identifier mobile_ad_id (column device) is not a mobile advertising id (IDFA or AAID, "
                     "8-4-4-4-12 hex digits)")),
    ]
    sent = [row[0] for r in snap.requests if r.path.endswith("/users") for row in r.json["users"][0]["data"]]
    assert sent and all(re.fullmatch(r"[0-9a-f]{64}", v) for v in sent)
    bodies = "".join(r.raw_body.decode() for r in snap.requests)
    assert "example" not in bodies.lower() and "aece52e7" not in bodies.lower()


# --------------------------------------------------------------------------------------------------
# Errors, rate limits, tokens
# --------------------------------------------------------------------------------------------------


def test_a_refused_request_rejects_its_records_with_snaps_message_and_the_next_sync_sends_them(snap):
    segment = snap.create_segment("VIP Europe")
    snap.fail_next("/users", FakeResponse(400, {
        "request_status": "ERROR", "debug_message": "Segment is being processed, retry later",
        "display_message": "Segment is being processed", "error_code": "E3001"}))  # fmt: skip
    journal = InMemoryJournal()
    first = deliver(audiences(snap), EMAILS, {"add": [customers([1, 2])]}, journal)

    assert (first.accepted, first.rejected) == (0, 2)
    assert journal.rejections == [
        ("1", "add", "Segment is being processed (E3001)"),
        ("2", "add", "Segment is being processed (E3001)"),
    ]
    assert first.top_reasons() == [("HTTP 400 E3001 (EMAIL_SHA256)", 2)]
    second = deliver(audiences(snap), EMAILS, {"add": [customers([1, 2])]}, InMemoryJournal())
    assert second.accepted == 2
    assert segment.members["EMAIL_SHA256"] == emails([1, 2])


def test_a_storm_of_429_is_ridden_out(snap):
    segment = snap.create_segment("VIP Europe")
    snap.throttle(6)
    result = deliver(audiences(snap, audience={"id": segment.id}), EMAILS, {"add": [customers(range(1, 4))]},
                     InMemoryJournal(), retry=FAST)

    assert segment.members["EMAIL_SHA256"] == emails(range(1, 4))
    assert [status for _, path, status in snap.answers if path.startswith("/v1/")] == [429] * 6 + [200]
    assert (result.retries, result.accepted) == (6, 3)
    assert result.rate_limit_wait_seconds > 0


def test_a_token_that_expires_mid_sync_is_renewed_once_and_the_request_sent_again(snap, caplog):
    caplog.set_level(logging.DEBUG)
    segment = snap.create_segment("VIP Europe")
    snap.expire_tokens_after(2)
    platform = audiences(snap, audience={"id": segment.id}, max_concurrency=1)
    batches = [customers(range(i, i + 1)) for i in range(1, 5)]
    platform.limits = type(platform.limits)(max_records_per_batch=1, requests_per_window=10, window_seconds=1.0)
    result = deliver(platform, EMAILS, {"add": batches}, InMemoryJournal())

    assert result.accepted == 4
    assert [status for _, path, status in snap.answers if path.startswith("/v1/")] == [200, 200, 401, 200, 200]
    assert len(snap.token_requests) == 2
    assert segment.members["EMAIL_SHA256"] == emails(range(1, 5))
    assert not any(s in caplog.text for s in (CLIENT_SECRET, REFRESH_TOKEN, "snap-access-"))


def test_a_revoked_refresh_token_stops_the_sync_at_once_naming_the_destination(snap):
    snap.revoke_refresh_token()
    with pytest.raises(PlatformAuthError) as refused:
        deliver(audiences(snap), EMAILS, {"add": [customers([1])]}, InMemoryJournal())

    assert str(refused.value) == (
        "destination 'snap_vip' (snapchat_ads): the token endpoint refused the refresh token (HTTP 400 "
        "invalid_grant: Invalid refresh token); create a new refresh token and set it in refresh_token"
    )
    assert snap.requests == [] and len(snap.token_requests) == 1
    assert REFRESH_TOKEN not in repr(refused.value) and CLIENT_SECRET not in repr(refused.value)


# --------------------------------------------------------------------------------------------------
# preview, validate --connect, settings
# --------------------------------------------------------------------------------------------------


def test_preview_shows_the_first_requests_with_digests_masked_and_sends_nothing(snap):
    add, replace = preview(audiences(snap), MEMBERS, {"add": [customers([1, 2])], "replace": [customers([3])]})

    assert snap.requests == [] and snap.token_requests == []
    assert add.method == "POST"
    assert add.url == f"{snap.url}/v1/segments/<id of segment 'VIP Europe'>/users"
    assert add.body == {"users": [{"schema": ["EMAIL_SHA256"],
                                   "data": [[sha(f"customer{i}@example.com")[:8] + "…"] for i in (1, 2)]}]}
    assert replace.body["first"] == (
        "DELETE /v1/segments/<id of segment 'VIP Europe'>/all_users (once, before the first add)")


def test_validate_connect_checks_the_token_the_account_and_a_segment_given_by_id(snap):
    segment = snap.create_segment("Existing")
    assert validate_connection(audiences(snap), EMAILS) == []
    assert validate_connection(audiences(snap, audience={"id": segment.id}), EMAILS) == []
    assert list(snap.segments) == [segment.id]  # a segment given by name is not created by validate
    assert validate_connection(audiences(snap, audience={"id": "999"}), EMAILS) == [
        "destination 'snap_vip' (snapchat_ads): reading segment 999 failed with HTTP 404: Segment 999 not found"
    ]
    assert validate_connection(audiences(snap, client_secret="wrong-secret"), EMAILS) == [
        ("destination 'snap_vip' (snapchat_ads): the token endpoint refused the client credentials (HTTP 400 "
        "invalid_client: Invalid client credentials); check client_id and client_secret")
    ]


def test_settings_and_activation_problems_name_the_key_and_what_is_allowed(snap):
    with pytest.raises(PlatformConfigError) as wrong:
        build_platform("snapchat_ads", {
            "service": "audiences", "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
            "ad_account_id": "act_1234", "audience": {"name": "x", "id": "1"}}, destination="snap_vip")  # fmt: skip
    assert str(wrong.value).splitlines() == [
        "destinations.snap_vip.refresh_token: found nothing; allowed: a refresh token (grant_type refresh_token)",
        ("destinations.snap_vip.ad_account_id: found 'act_1234'; allowed: the ad account's id, a UUID such as "
        "8adc3db7-8148-4fbf-999c-8d2266369d74"),
        "destinations.snap_vip.audience: found both name and id; allowed: {name: ...} or {id: ...}",
    ]
    platform = audiences(snap)
    assert platform.validate_activation({"email": "email", "fn": "first", "madid": "d", "mobile_ad_id": "e"},
                                        {"first": "first_name"}) == [
        "identifiers.fn: found 'fn'; allowed: email, phone, mobile_ad_id",
        "identifiers.mobile_ad_id: madid already sends MOBILE_AD_ID_SHA256; keep one of them",
        "mapping: found first; allowed: nothing (Snapchat segments take identifiers only)",
    ]


# --------------------------------------------------------------------------------------------------
# The Dagster sync job on DuckDB
# --------------------------------------------------------------------------------------------------


def snap_project(request, tmp_path: Path,
                 monkeypatch) -> contextlib.AbstractContextManager[SimpleNamespace]:
    return ad_project(
        request, tmp_path, monkeypatch,
        lambda: SnapchatAdsFake(client_id=CLIENT_ID, client_secret=CLIENT_SECRET,
                                refresh_token=REFRESH_TOKEN, ad_account_id=ACCOUNT),
        attr="snap", type_="snapchat_ads", destination="snap_vip", activation="to_snap",
        fields={"ad_account_id": f'"{ACCOUNT}"', "client_id": CLIENT_ID},
        secrets={"client_secret": ("SNAP_CLIENT_SECRET", CLIENT_SECRET),
                 "refresh_token": ("SNAP_REFRESH_TOKEN", REFRESH_TOKEN)},
    )  # fmt: skip


def test_a_snapchat_segment_follows_the_segment_through_the_dagster_job(request, tmp_path: Path, monkeypatch,
                                                                        capsys) -> None:
    with snap_project(request, tmp_path, monkeypatch) as env:
        assert main(["--project", str(tmp_path), "validate", "--connect"]) == 0
        assert main(["--project", str(tmp_path), "preview", "to_snap"]) == 0
        out = capsys.readouterr().out
        assert "bob@example.com" not in out and CLIENT_SECRET not in out
        assert env.snap.requests == [] or all(r.method == "GET" for r in env.snap.requests)

        # First sync (a full one): the segment is created and gets Bob, Cle and Dan; a 429 storm on the way.
        env.snap.throttle(3)
        result = run_sync_job(env.defs, env.instance, "to_snap")
        assert result.success
        segment = env.snap.segment_named("VIP Europe")
        assert segment.members["EMAIL_SHA256"] == {sha(f"{n}@example.com") for n in ("bob", "cle", "dan")}

        # Delta: Dan leaves, Bob's e-mail changes, Ann enters; the token expires mid-sync.
        change_customers(env.wh)
        env.snap.expire_tokens_after(1)
        result = run_sync_job(env.defs, env.instance, "to_snap")
        assert result.success
        assert segment.members["EMAIL_SHA256"] == {sha(f"{n}@example.com") for n in ("robert", "cle", "ann")}
        assert 401 in [status for _, _, status in env.snap.answers]

        # Full refresh: someone added a member by hand; the replace leaves exactly the segment's members.
        segment.members["EMAIL_SHA256"].add(sha("stranger@example.com"))
        sync_steps(env, "to_snap", full_refresh=True)
        assert segment.members["EMAIL_SHA256"] == {sha(f"{n}@example.com") for n in ("robert", "cle", "ann")}
        assert ("DELETE", f"/v1/segments/{segment.id}/all_users") in calls(env.snap)

        sent = json.dumps([r.json for r in env.snap.requests])
        assert "example.com" not in sent
        for dagster_run in env.instance.get_runs():
            for entry in env.instance.all_logs(dagster_run.run_id):
                text = repr(entry)
                assert CLIENT_SECRET not in text and REFRESH_TOKEN not in text and "snap-access-" not in text
