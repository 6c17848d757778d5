"""The TikTok Ads adapter through a fake Marketing API v1.3 built from TikTok's documentation
(tests/fakes/tiktok_ads.py): the members each custom audience holds, what was sent, and that neither a
raw identifier nor the access token is ever sent or shown. Then one DuckDB scenario through the real
Dagster sync job.

Expected digests are computed here with hashlib from the normalized values the adapter documents
(trimmed lower-case e-mails; E.164 phones with their ``+``; lower-case device ids with hyphens)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pyarrow as pa
import pytest
from ad_scenarios import ad_project, audiences_platform, calls, change_customers, sha
from fakes.tiktok_ads import TikTokAdsFake, answer, parse_form
from platform_scenarios import (
    run_sync_job,
    sync_steps,
)

from dinmo_dagster.cli import main
from dinmo_dagster.config import load_project
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
from dinmo_dagster.platforms.tiktok_ads import TikTokAds

ADVERTISER = "7012345678901234567"
TOKEN = "tiktok-long-term-token-5f4e3d2c1b0a9f8e"
API = "/open_api/v1.3"
UPLOAD = f"{API}/file/custom_audience/upload/"
UPDATE = f"{API}/dmp/custom_audience/update/"
CREATE = f"{API}/dmp/custom_audience/create/"
LIST = f"{API}/dmp/custom_audience/list/"
FAST = RetryPolicy(max_attempts=3, max_rate_limited_attempts=20, initial_wait_seconds=0.01, max_wait_seconds=0.05)
MEMBERS = ActivationSpec("vip_to_tiktok", "customer_id", {"email": "email", "phone": "phone"}, default_country="FR")
EMAILS = ActivationSpec("vip_to_tiktok", "customer_id", {"email": "email"})


@pytest.fixture
def tiktok() -> Iterator[TikTokAdsFake]:
    with TikTokAdsFake(access_token=TOKEN, advertiser_id=ADVERTISER) as fake:
        yield fake


def audiences(fake: TikTokAdsFake, **settings: Any) -> TikTokAds:
    return audiences_platform(
        "tiktok_ads", "tiktok_vip", TikTokAds, fake,
        {"advertiser_id": ADVERTISER, "access_token": TOKEN}, settings,
    )  # fmt: skip


def customers(ids: Any, **overrides: list[Any]) -> pa.RecordBatch:
    ids = list(ids)
    columns: dict[str, list[Any]] = {
        "customer_id": ids,
        "email": [f" Customer{i}@Example.com" for i in ids],
        "phone": [f"06 12 34 56 {i:02d}" for i in ids],
    }
    columns.update(overrides)
    return pa.record_batch(columns)


def emails(ids: Any) -> set[str]:
    return {sha(f"customer{i}@example.com") for i in ids}


def uploaded(fake: TikTokAdsFake) -> list[tuple[str, list[str]]]:
    """(calculate_type, lines) of every upload, read back with the standard library's MIME parser."""
    forms = [parse_form(r) for r in fake.requests if r.path == UPLOAD]
    return [(f["calculate_type"].decode(), f["file"].decode().splitlines()) for f in forms]


def test_a_first_sync_creates_the_audience_from_the_first_file_and_appends_the_next(tiktok):
    journal = InMemoryJournal()
    result = deliver(audiences(tiktok), MEMBERS, {"add": [customers(range(1, 4))]}, journal)

    audience = tiktok.audience_named("VIP Europe")
    assert audience is not None
    assert audience.members["EMAIL_SHA256"] == emails(range(1, 4))
    assert audience.members["PHONE_SHA256"] == {sha(f"+3361234560{i}") for i in range(1, 4)}
    assert calls(tiktok) == [("POST", UPLOAD), ("GET", LIST), ("POST", CREATE), ("POST", UPLOAD), ("POST", UPDATE)]
    assert tiktok.requests[2].json == {"advertiser_id": ADVERTISER, "custom_audience_name": "VIP Europe",
                                       "calculate_type": "EMAIL_SHA256", "file_paths": ["tos-fake/audience/1.txt"]}
    assert tiktok.requests[4].json == {"advertiser_id": ADVERTISER, "custom_audience_id": audience.id,
                                       "action": "APPEND", "file_paths": ["tos-fake/audience/2.txt"]}
    assert [t for t, _ in uploaded(tiktok)] == ["EMAIL_SHA256", "PHONE_SHA256"]
    assert all(r.headers["access-token"] == TOKEN for r in tiktok.requests)
    assert sorted(journal.acknowledged_keys["add"]) == ["1", "2", "3"]
    assert (result.accepted, result.rejected) == (3, 0)


def test_an_audience_is_found_by_name_across_pages_or_used_by_id(tiktok):
    for i in range(3):
        tiktok.create_audience(f"other {i}")
    existing = tiktok.create_audience("VIP Europe")
    tiktok.page_size = 2
    deliver(audiences(tiktok), EMAILS, {"add": [customers([1])]}, InMemoryJournal())
    deliver(audiences(tiktok, audience={"id": existing.id}), EMAILS, {"add": [customers([2])]}, InMemoryJournal())

    assert len(tiktok.audiences) == 4
    assert existing.members["EMAIL_SHA256"] == emails([1, 2])
    assert [p for _, p in calls(tiktok)] == [UPLOAD, LIST, LIST, UPDATE, UPLOAD, UPDATE]


def test_a_delta_deletes_those_that_left_and_moves_a_changed_email(tiktok):
    deliver(audiences(tiktok), EMAILS, {"add": [customers(range(1, 6))]}, InMemoryJournal())
    journal = InMemoryJournal()
    result = deliver(audiences(tiktok), EMAILS, {
        "remove": [customers([3, 4, 5])], "add": [customers([3], email=["New.Three@example.com"])]}, journal)

    audience = tiktok.audience_named("VIP Europe")
    assert audience.members["EMAIL_SHA256"] == emails([1, 2]) | {sha("new.three@example.com")}
    assert [r.json["action"] for r in tiktok.requests if r.path == UPDATE] == ["DELETE", "APPEND"]
    assert sorted(journal.acknowledged_keys["remove"]) == ["3", "4", "5"]
    assert result.accepted == 4


def test_a_full_sync_replaces_with_the_first_file_then_appends_in_files_of_at_most_50000(tiktok):
    audience = tiktok.create_audience("VIP Europe", EMAIL_SHA256={sha("old@example.com")})
    ids = range(1, 50_003)
    result = deliver(audiences(tiktok, max_concurrency=1), EMAILS, {"replace": [customers(ids)]}, InMemoryJournal())

    assert audience.members["EMAIL_SHA256"] == emails(ids)
    assert [len(lines) for _, lines in uploaded(tiktok)] == [50_000, 2]
    assert [r.json["action"] for r in tiktok.requests if r.path == UPDATE] == ["REPLACE", "APPEND"]
    assert result.accepted == 50_002


def test_a_full_sync_with_no_record_empties_the_audience_with_an_empty_file(tiktok):
    audience = tiktok.create_audience("VIP Europe", EMAIL_SHA256={sha("old@example.com")})
    deliver(audiences(tiktok), EMAILS, {"replace": []}, InMemoryJournal())

    assert audience.members["EMAIL_SHA256"] == set()
    assert uploaded(tiktok) == [("EMAIL_SHA256", [])]


def test_identifiers_are_normalized_and_no_raw_identifier_is_ever_sent(tiktok):
    spec = ActivationSpec("x", "customer_id", {"email": "email", "phone": "phone", "idfa": "idfa", "gaid": "gaid"},
                          default_country="FR")
    batch = customers([1, 2], idfa=["6D92078A-8246-4BA4-AE5B-76104861E7DC", None],
                      gaid=[None, "38400000-8CF0-11BD-B23E-10B96E40000D"], phone=["+33 6 12 34 56 78", None])
    result = deliver(audiences(tiktok), spec, {"add": [batch, customers([3], email=["not an e-mail"], idfa=[None], gaid=[None])]},
                     InMemoryJournal())

    audience = tiktok.audience_named("VIP Europe")
    assert audience.members == {
        "EMAIL_SHA256": emails([1, 2]), "PHONE_SHA256": {sha("+33612345678")},
        "IDFA_SHA256": {sha("6d92078a-8246-4ba4-ae5b-76104861e7dc")},
        "GAID_SHA256": {sha("38400000-8cf0-11bd-b23e-10b96e40000d")},
    }
    assert (result.accepted, result.rejected) == (2, 1)
    sent = b"".join(r.raw_body for r in tiktok.requests)
    for raw in (b"xample.com", b"12 34", b"33612345678", b"6D92078A", b"6d92078a", b"38400000"):
        assert raw not in sent


def test_a_refused_file_rejects_its_records_with_tiktoks_message_and_the_next_sync_sends_them(tiktok):
    audience = tiktok.create_audience("VIP Europe")
    tiktok.fail_next("/update/", answer(40002, "file_paths: the file is being processed."))
    journal = InMemoryJournal()
    result = deliver(audiences(tiktok, audience={"id": audience.id}), EMAILS, {"add": [customers([1, 2])]}, journal)

    assert (result.accepted, result.rejected) == (0, 2)
    assert result.top_reasons() == [("TikTok code 40002", 2)]
    assert sorted(journal.rejections) == [
        (key, "add", "file_paths: the file is being processed. (code 40002)") for key in ("1", "2")]
    assert audience.members["EMAIL_SHA256"] == set()
    result = deliver(audiences(tiktok, audience={"id": audience.id}), EMAILS, {"add": [customers([1, 2])]},
                     InMemoryJournal())
    assert result.accepted == 2 and audience.members["EMAIL_SHA256"] == emails([1, 2])


def test_a_storm_of_40100_answers_is_ridden_out(tiktok):
    audience = tiktok.create_audience("VIP Europe")
    tiktok.throttle(6)
    result = deliver(audiences(tiktok, audience={"id": audience.id}), EMAILS, {"add": [customers(range(1, 4))]},
                     InMemoryJournal(), retry=FAST)

    assert audience.members["EMAIL_SHA256"] == emails(range(1, 4))
    assert [code for _, _, code in tiktok.answers] == [40100] * 6 + [0, 0]
    assert (result.retries, result.accepted) == (6, 3)


def test_a_revoked_token_stops_the_sync_at_once_naming_the_destination(tiktok, caplog):
    caplog.set_level(logging.DEBUG)
    tiktok.revoke_token()
    with pytest.raises(PlatformAuthError) as refused:
        deliver(audiences(tiktok), EMAILS, {"add": [customers([1, 2])]}, InMemoryJournal())

    assert str(refused.value) == (
        "destination 'tiktok_vip' (tiktok_ads): the platform refused the credentials (HTTP 200): "
        "Access token is incorrect or has been revoked. (code 40105)")
    assert len(tiktok.requests) == 1
    assert TOKEN not in caplog.text and TOKEN not in repr(refused.value)


def test_preview_shows_the_upload_and_the_update_with_digests_masked_and_sends_nothing(tiktok):
    add, replace = preview(audiences(tiktok), EMAILS, {"add": [customers([1])], "replace": [customers([3])]})

    assert tiktok.requests == []
    assert (add.method, add.url) == ("POST", f"{tiktok.url}{UPLOAD}")
    assert add.body["calculate_type"] == "EMAIL_SHA256"
    assert add.body["file"] == [sha("customer1@example.com")[:8] + "…"]
    assert '"action": "APPEND"' in add.body["then"] and '"action": "REPLACE"' in replace.body["then"]
    assert "<id of audience 'VIP Europe'>" in add.body["then"]


def test_validate_connect_checks_the_token_the_advertiser_and_an_audience_given_by_id(tiktok):
    audience = tiktok.create_audience("Existing")
    assert validate_connection(audiences(tiktok), EMAILS) == []
    assert validate_connection(audiences(tiktok, audience={"id": audience.id}), EMAILS) == []
    assert validate_connection(audiences(tiktok, audience={"id": "999"}), EMAILS) == [
        ("destination 'tiktok_vip' (tiktok_ads): reading custom audience 999 failed with HTTP 200: "
         "Custom audience 999 does not exist. (code 40001)")]
    assert validate_connection(audiences(tiktok, access_token="wrong"), EMAILS) == [
        ("destination 'tiktok_vip' (tiktok_ads): the platform refused the credentials (HTTP 200): "
         "Access token is incorrect or has been revoked. (code 40105)")]


def test_settings_and_activation_problems_name_the_key_and_what_is_allowed(tiktok):
    with pytest.raises(PlatformConfigError) as wrong:
        build_platform("tiktok_ads", {"service": "audiences", "advertiser_id": "adv-1",
                                      "audience": {"name": "x", "id": "1"}}, destination="tiktok_vip")
    text = str(wrong.value)
    assert "destinations.tiktok_vip.advertiser_id: found 'adv-1'; allowed: the advertiser's numeric id" in text
    assert "destinations.tiktok_vip.access_token" in text
    assert "destinations.tiktok_vip.audience: found both name and id; allowed: {name: ...} or {id: ...}" in text
    assert audiences(tiktok).validate_activation({"email": "email", "madid": "d"}, {"first": "first_name"}) == [
        "identifiers.madid: found 'madid'; allowed: email, phone, idfa, gaid",
        "mapping: found first; allowed: nothing (TikTok audiences take identifiers only)",
    ]


def tiktok_project(request, tmp_path: Path,
                 monkeypatch) -> contextlib.AbstractContextManager[SimpleNamespace]:
    return ad_project(
        request, tmp_path, monkeypatch,
        lambda: TikTokAdsFake(access_token=TOKEN, advertiser_id=ADVERTISER),
        attr="tiktok", type_="tiktok_ads", destination="tiktok_vip", activation="to_tiktok",
        fields={"advertiser_id": f'"{ADVERTISER}"'},
        secrets={"access_token": ("TIKTOK_ACCESS_TOKEN", TOKEN)},
    )  # fmt: skip


def test_a_tiktok_audience_follows_the_segment_through_the_dagster_job(request, tmp_path: Path, monkeypatch,
                                                                       capsys) -> None:
    with tiktok_project(request, tmp_path, monkeypatch) as env:
        assert main(["--project", str(tmp_path), "validate", "--connect"]) == 0
        assert main(["--project", str(tmp_path), "preview", "to_tiktok"]) == 0
        out = capsys.readouterr().out
        assert "bob@example.com" not in out and TOKEN not in out
        assert all(r.method == "GET" for r in env.tiktok.requests)

        # First sync: the audience is created with Bob, Cle and Dan; a 40100 storm on the way.
        env.tiktok.throttle(3)
        assert run_sync_job(env.defs, env.instance, "to_tiktok").success
        audience = env.tiktok.audience_named("VIP Europe")
        assert audience.members["EMAIL_SHA256"] == {sha(f"{n}@example.com") for n in ("bob", "cle", "dan")}

        # Delta: Dan leaves, Bob's e-mail changes, Ann enters; one file refused, sent again next sync.
        change_customers(env.wh)
        env.tiktok.fail_next("/update/", answer(40002, "file_paths: the file is being processed."))
        run_sync_job(env.defs, env.instance, "to_tiktok")
        run_sync_job(env.defs, env.instance, "to_tiktok")
        assert audience.members["EMAIL_SHA256"] == {sha(f"{n}@example.com") for n in ("robert", "cle", "ann")}

        # Full refresh: someone added a member by hand; REPLACE leaves exactly the segment's members.
        audience.members["EMAIL_SHA256"].add(sha("stranger@example.com"))
        sync_steps(env, "to_tiktok", full_refresh=True)
        assert audience.members["EMAIL_SHA256"] == {sha(f"{n}@example.com") for n in ("robert", "cle", "ann")}
        assert "REPLACE" in [r.json["action"] for r in env.tiktok.requests if r.path == UPDATE]

        sent = b"".join(r.raw_body for r in env.tiktok.requests)
        assert b"example.com" not in sent
        for dagster_run in env.instance.get_runs():
            for entry in env.instance.all_logs(dagster_run.run_id):
                assert TOKEN not in repr(entry)


def test_the_readme_tiktok_example_loads(tmp_path: Path) -> None:
    """The YAML example of the README's TikTok Ads paragraph, with a source, model and segment."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    example = readme.split("**TikTok Ads (`type: tiktok_ads`).**", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "dinmo.yaml").write_text("""
sources:
  warehouse: {type: duckdb, path: data/warehouse.duckdb}
models:
  customers: {source: warehouse, table: raw.customers, primary_key: customer_id}
segments:
  vip_europe: {model: customers, sql: "select * from {{ model }}"}
""" + example)
    project = load_project(tmp_path)
    activation = project.activations["vip_to_tiktok"]
    assert (activation.platform_service, activation.platform_mode) == ("audiences", "mirror")
