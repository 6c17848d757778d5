"""The LinkedIn Ads adapter through a fake Marketing API (DMP segments) and token endpoint built from
LinkedIn's documentation (tests/fakes/linkedin_ads.py): the members each segment holds, what was
sent, and that neither a raw e-mail nor a secret is ever sent or shown. Then one DuckDB scenario
through the real Dagster sync job.

Expected digests are computed here with hashlib from trimmed, lower-cased e-mails (LinkedIn's
SHA256_EMAIL idType); advertising ids and company fields go unhashed, as LinkedIn takes them."""

from __future__ import annotations

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
from fakes.linkedin_ads import LinkedInAdsFake
from fakes.server import FakeResponse
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
from dinmo_dagster.platforms.linkedin_ads import LinkedInAds

ACCOUNT = "516848833"
CLIENT_ID = "li-client-77ab"
CLIENT_SECRET = "li-secret-1f2e3d4c5b6a7980"
REFRESH_TOKEN = "li-refresh-aa11bb22cc33dd44"
FAST = RetryPolicy(max_attempts=3, max_rate_limited_attempts=20, initial_wait_seconds=0.01, max_wait_seconds=0.05)
EMAILS = ActivationSpec("vip_to_linkedin", "customer_id", {"email": "email"})


@pytest.fixture
def linkedin() -> Iterator[LinkedInAdsFake]:
    with LinkedInAdsFake(
        client_id=CLIENT_ID, client_secret=CLIENT_SECRET, refresh_token=REFRESH_TOKEN, account_id=ACCOUNT
    ) as fake:
        yield fake


def audiences(fake: LinkedInAdsFake, **settings: Any) -> LinkedInAds:
    platform = audiences_platform(
        "linkedin_ads", "li_vip", LinkedInAds, fake,
        {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "refresh_token": REFRESH_TOKEN,
         "ad_account_id": ACCOUNT}, settings,
    )  # fmt: skip
    platform.settle_seconds = 0.0  # the fake's segments are usable at once
    return platform


def customers(ids: Any, **overrides: list[Any]) -> pa.RecordBatch:
    ids = list(ids)
    columns: dict[str, list[Any]] = {"customer_id": ids, "email": [f" Customer{i}@Example.com" for i in ids]}
    columns.update(overrides)
    return pa.record_batch(columns)


def emails(ids: Any) -> set[tuple[str, str]]:
    return {("SHA256_EMAIL", sha(f"customer{i}@example.com")) for i in ids}


# --------------------------------------------------------------------------------------------------
# First sync, delta, identifier change, full sync
# --------------------------------------------------------------------------------------------------


def test_a_first_sync_creates_the_user_segment_and_adds_every_member_hashed(linkedin):
    other = linkedin.create_segment("Other")
    linkedin.create_segment("Another")
    journal = InMemoryJournal()
    result = deliver(audiences(linkedin), EMAILS, {"add": [customers(range(1, 4))]}, journal)

    segment = linkedin.segment_named("VIP Europe")
    assert segment.users == emails(range(1, 4)) and other.users == set()
    assert (segment.type, segment.account, segment.source_platform) == (
        "USER", f"urn:li:sponsoredAccount:{ACCOUNT}", "DMP")
    assert calls(linkedin) == [("GET", "/rest/dmpSegments"), ("POST", "/rest/dmpSegments"),
                               ("POST", f"/rest/dmpSegments/{segment.id}/users")]
    listing = linkedin.requests[0]
    assert listing.query == {"q": "account", "account": f"urn:li:sponsoredAccount:{ACCOUNT}", "start": "0",
                             "count": "100"}
    add = linkedin.requests[-1]
    assert add.headers["x-restli-method"] == "BATCH_CREATE"
    assert add.headers["linkedin-version"] == "202607" and add.headers["x-restli-protocol-version"] == "2.0.0"
    assert add.json["elements"][0] == {"action": "ADD", "userIds": [
        {"idType": "SHA256_EMAIL", "idValue": sha("customer1@example.com")}]}
    assert (result.accepted, len(journal.acknowledged_keys["add"])) == (3, 3)


def test_a_segment_given_by_name_is_found_across_pages_and_never_created_twice(linkedin):
    for name in ("A", "B", "C"):
        linkedin.create_segment(name)
    existing = linkedin.create_segment("VIP Europe")
    platform = audiences(linkedin)
    deliver(platform, EMAILS, {"add": [customers([1])]}, InMemoryJournal())
    deliver(platform, EMAILS, {"add": [customers([2])]}, InMemoryJournal())

    assert [s.name for s in linkedin.segments.values()] == ["A", "B", "C", "VIP Europe"]
    assert existing.users == emails([1, 2])
    assert [m for m, _ in calls(linkedin)] == ["GET", "GET", "POST", "POST"]  # two pages of two


def test_a_delta_removes_those_that_left_and_moves_a_changed_email(linkedin):
    segment = linkedin.create_segment("VIP Europe")
    segment.users |= emails([1, 2, 3])
    changed = customers([2], email=["Renamed@Example.com "])
    result = deliver(audiences(linkedin, audience={"id": segment.id}), EMAILS,
                     {"remove": [customers([3]), customers([2])], "add": [changed]}, InMemoryJournal())

    assert result.accepted == 3
    assert segment.users == emails([1]) | {("SHA256_EMAIL", sha("renamed@example.com"))}
    actions = [e["action"] for r in linkedin.requests for e in r.json["elements"]]
    assert sorted(actions) == ["ADD", "REMOVE", "REMOVE"]


def test_a_full_sync_is_remove_and_add_and_a_batch_holds_at_most_5000_elements(linkedin):
    segment = linkedin.create_segment("VIP Europe")
    result = deliver(audiences(linkedin, audience={"id": segment.id}), EMAILS,
                     {"remove": [customers([0])], "add": [customers(range(1, 5002))]}, InMemoryJournal())

    assert segment.users == emails(range(1, 5002))
    sizes = sorted(len(r.json["elements"]) for r in linkedin.requests if r.path.endswith("/users"))
    assert sizes == [1, 1, 5000]
    assert result.accepted == 5002
    assert "replace" not in audiences(linkedin).operations


def test_the_fake_refuses_more_than_5000_elements_and_raw_emails(linkedin):
    token = requests.post(linkedin.token_url, data={
        "grant_type": "refresh_token", "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
        "refresh_token": REFRESH_TOKEN}, timeout=10).json()["access_token"]  # fmt: skip
    segment = linkedin.create_segment("VIP Europe")
    headers = {"Authorization": f"Bearer {token}", "LinkedIn-Version": "202607",
               "X-Restli-Protocol-Version": "2.0.0", "X-RestLi-Method": "BATCH_CREATE"}
    element = {"action": "ADD", "userIds": [{"idType": "SHA256_EMAIL", "idValue": sha("x")}]}
    answer = requests.post(f"{linkedin.url}/rest/dmpSegments/{segment.id}/users", json={"elements": [element] * 5001},
                           headers=headers, timeout=30)
    assert (answer.status_code, answer.json()["message"]) == (400, "Too many elements in one batch (5001); at most 5000")
    raw = {"action": "ADD", "userIds": [{"idType": "SHA256_EMAIL", "idValue": "someone@example.com"}]}
    answer = requests.post(f"{linkedin.url}/rest/dmpSegments/{segment.id}/users", json={"elements": [raw]},
                           headers=headers, timeout=10)
    assert answer.json() == {"elements": [
        {"status": 400, "message": "SHA256_EMAIL must be a HEX encoded string with length = 64"}]}
    assert segment.users == set()


# --------------------------------------------------------------------------------------------------
# Identifiers
# --------------------------------------------------------------------------------------------------


def test_user_identifiers_are_normalized_and_no_raw_email_is_sent(linkedin):
    spec = ActivationSpec("vip_to_linkedin", "customer_id",
                          {"email": "email", "google_aid": "gaid", "idfa": "idfa"})
    batch = pa.record_batch({
        "customer_id": [1, 2, 3],
        "email": [" John.Smith@Example.COM ", None, "ann@example.com"],
        "gaid": [None, "38400000-8CF0-11BD-B23E-10B96E40000D", "not-an-ad-id"],
        "idfa": ["ab0c1d2e-3f40-5a6b-7c8d-9e0f1a2b3c4d", None, None],
    })  # fmt: skip
    journal = InMemoryJournal()
    result = deliver(audiences(linkedin), spec, {"add": [batch]}, journal)

    segment = linkedin.segment_named("VIP Europe")
    assert segment.users == {
        ("SHA256_EMAIL", sha("john.smith@example.com")),
        ("APPLE_IDFA", "AB0C1D2E-3F40-5A6B-7C8D-9E0F1A2B3C4D"),
        ("GOOGLE_AID", "38400000-8cf0-11bd-b23e-10b96e40000d"),
    }
    first = next(r for r in linkedin.requests if r.path.endswith("/users")).json["elements"][0]
    assert first["userIds"] == [{"idType": "SHA256_EMAIL", "idValue": sha("john.smith@example.com")},
                                {"idType": "APPLE_IDFA", "idValue": "AB0C1D2E-3F40-5A6B-7C8D-9E0F1A2B3C4D"}]
    assert (result.accepted, result.rejected) == (2, 1)
    assert journal.rejections == [
        ("3", "add", "identifier google_aid (column gaid) is not a Google advertising id (8-4-4-4-12 hex digits)"),
    ]
    bodies = "".join(r.raw_body.decode() for r in linkedin.requests)
    assert "example" not in bodies.lower()


def test_a_company_segment_gets_names_domains_and_pages_unhashed(linkedin):
    spec = ActivationSpec("accounts_to_linkedin", "account_id", {
        "company_name": "name", "company_domain": "website", "company_page_url": "page"})
    batch = pa.record_batch({
        "account_id": [1, 2, 3],
        "name": ["  Acme   Corp ", "Globex", None],
        "website": ["https://www.Acme.com/about", None, "not a domain"],
        "page": [None, "linkedin.com/company/globex/", None],
    })  # fmt: skip
    journal = InMemoryJournal()
    result = deliver(audiences(linkedin, segment_type="company", audience={"name": "Target accounts"}), spec,
                     {"add": [batch]}, journal)

    segment = linkedin.segment_named("Target accounts")
    assert segment.type == "COMPANY"
    assert segment.companies == {
        (("companyName", "Acme Corp"), ("companyWebsiteDomain", "acme.com")),
        (("companyName", "Globex"), ("companyPageUrl", "https://www.linkedin.com/company/globex")),
    }
    assert calls(linkedin)[-1] == ("POST", f"/rest/dmpSegments/{segment.id}/companies")
    assert journal.rejections == [
        ("3", "add", "identifier company_domain (column website) is not a website domain (such as example.com)"),
    ]
    assert (result.accepted, result.rejected) == (2, 1)


# --------------------------------------------------------------------------------------------------
# Errors, rate limits, tokens
# --------------------------------------------------------------------------------------------------


def test_refused_elements_and_requests_reject_their_records_and_the_next_sync_sends_them(linkedin):
    segment = linkedin.create_segment("VIP Europe")
    platform = audiences(linkedin, audience={"id": segment.id})
    linkedin.fail_next("/users", FakeResponse(200, {"elements": [
        {"status": 201}, {"status": 400, "message": "Segment is archived"}]}))  # fmt: skip
    linkedin.fail_next("/users", FakeResponse(422, {
        "status": 422, "serviceErrorCode": 100, "code": "UNPROCESSABLE_ENTITY", "message": "Invalid segment state"}))
    journal = InMemoryJournal()
    first = deliver(platform, EMAILS, {"add": [customers([1, 2])], "remove": [customers([3])]}, journal)

    assert (first.accepted, first.rejected) == (1, 2)
    assert sorted(journal.rejections) == [
        ("2", "add", "Segment is archived"),
        ("3", "remove", "Invalid segment state (100)"),
    ]
    assert sorted(first.top_reasons()) == [("HTTP 422 UNPROCESSABLE_ENTITY", 1), ("element status 400", 1)]
    assert segment.users == set()  # the fake's scripted answers applied nothing
    second = deliver(platform, EMAILS, {"add": [customers([1, 2])]}, InMemoryJournal())
    assert second.accepted == 2 and segment.users == emails([1, 2])


def test_a_storm_of_429_is_ridden_out(linkedin):
    segment = linkedin.create_segment("VIP Europe")
    linkedin.throttle(6)
    result = deliver(audiences(linkedin, audience={"id": segment.id}), EMAILS, {"add": [customers(range(1, 4))]},
                     InMemoryJournal(), retry=FAST)

    assert segment.users == emails(range(1, 4))
    assert [status for _, path, status in linkedin.answers if path.startswith("/rest/")] == [429] * 6 + [200]
    assert (result.retries, result.accepted) == (6, 3)


def test_a_token_that_expires_mid_sync_is_renewed_once_and_the_request_sent_again(linkedin, caplog):
    caplog.set_level(logging.DEBUG)
    segment = linkedin.create_segment("VIP Europe")
    linkedin.expire_tokens_after(2)
    platform = audiences(linkedin, audience={"id": segment.id}, max_concurrency=1)
    platform.limits = type(platform.limits)(max_records_per_batch=1, requests_per_window=10, window_seconds=1.0)
    result = deliver(platform, EMAILS, {"add": [customers([i]) for i in range(1, 5)]}, InMemoryJournal())

    assert result.accepted == 4
    assert [status for _, path, status in linkedin.answers if path.startswith("/rest/")] == [200, 200, 401, 200, 200]
    assert len(linkedin.token_requests) == 2
    assert linkedin.token_requests[0].raw_body.decode().startswith("grant_type=refresh_token")
    assert segment.users == emails(range(1, 5))
    assert not any(s in caplog.text for s in (CLIENT_SECRET, REFRESH_TOKEN, "li-access-"))


def test_a_revoked_refresh_token_stops_the_sync_at_once_naming_the_destination(linkedin):
    linkedin.revoke_refresh_token()
    with pytest.raises(PlatformAuthError) as refused:
        deliver(audiences(linkedin), EMAILS, {"add": [customers([1])]}, InMemoryJournal())

    assert str(refused.value).startswith("destination 'li_vip' (linkedin_ads): the token endpoint refused")
    assert "The provided authorization grant is invalid" in str(refused.value)
    assert linkedin.requests == [] and len(linkedin.token_requests) == 1
    assert REFRESH_TOKEN not in repr(refused.value) and CLIENT_SECRET not in repr(refused.value)


# --------------------------------------------------------------------------------------------------
# preview, validate --connect, settings
# --------------------------------------------------------------------------------------------------


def test_preview_shows_the_first_request_with_digests_masked_and_sends_nothing(linkedin):
    (add,) = preview(audiences(linkedin), EMAILS, {"add": [customers([1, 2])]})

    assert linkedin.requests == [] and linkedin.token_requests == []
    assert (add.method, add.url) == ("POST", f"{linkedin.url}/rest/dmpSegments/<id of segment 'VIP Europe'>/users")
    assert add.body == {"elements": [
        {"action": "ADD", "userIds": [{"idType": "SHA256_EMAIL", "idValue": sha(f"customer{i}@example.com")[:8] + "…"}]}
        for i in (1, 2)]}  # fmt: skip


def test_validate_connect_checks_the_token_the_account_and_a_segment_given_by_id(linkedin):
    segment = linkedin.create_segment("Existing")
    assert validate_connection(audiences(linkedin), EMAILS) == []
    assert validate_connection(audiences(linkedin, audience={"id": segment.id}), EMAILS) == []
    assert list(linkedin.segments) == [segment.id]
    assert validate_connection(audiences(linkedin, audience={"id": "999"}), EMAILS) == [
        "destination 'li_vip' (linkedin_ads): reading DMP segment 999 failed with HTTP 404: DMP segment 999 not found"
    ]
    problems = validate_connection(audiences(linkedin, client_secret="wrong-secret"), EMAILS)
    assert len(problems) == 1 and "invalid_client" in problems[0] and "wrong-secret" not in problems[0]


def test_settings_and_activation_problems_name_the_key_and_what_is_allowed(linkedin):
    with pytest.raises(PlatformConfigError) as wrong:
        build_platform("linkedin_ads", {
            "service": "audiences", "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
            "refresh_token": REFRESH_TOKEN, "ad_account_id": "act_12", "segment_type": "account",
            "linkedin_version": "2025-11", "audience": {"id": "x"}}, destination="li_vip")  # fmt: skip
    lines = str(wrong.value).splitlines()
    assert lines[0] == ("destinations.li_vip.ad_account_id: found 'act_12'; allowed: the ad account's numeric id, "
                        "such as 516848833")
    assert any(line.startswith("destinations.li_vip.segment_type:") for line in lines)
    assert ("destinations.li_vip.linkedin_version: found '2025-11'; allowed: a LinkedIn API version YYYYMM, "
            "such as 202607") in lines
    assert "destinations.li_vip.audience.id: found 'x'; allowed: the DMP segment's numeric id" in lines
    urn = audiences(linkedin, ad_account_id=f"urn:li:sponsoredAccount:{ACCOUNT}")
    assert urn.settings.ad_account_id == ACCOUNT
    assert audiences(linkedin).validate_activation({"email": "email", "phone": "p", "company_name": "n"}, {"a": "b"}) == [
        "identifiers.phone: found 'phone'; allowed for segment_type user: email, google_aid, apple_idfa",
        "identifiers.company_name: found 'company_name'; allowed for segment_type user: email, google_aid, apple_idfa",
        "mapping: found a; allowed: nothing (LinkedIn segments take identifiers only)",
    ]
    company = audiences(linkedin, segment_type="company")
    assert company.validate_activation({"email": "email"}, {}) == [
        ("identifiers.email: found 'email'; allowed for segment_type company: company_name, company_domain, "
         "company_page_url"),
    ]


# --------------------------------------------------------------------------------------------------
# The Dagster sync job on DuckDB
# --------------------------------------------------------------------------------------------------


def linkedin_project(request, tmp_path: Path,
                 monkeypatch) -> contextlib.AbstractContextManager[SimpleNamespace]:
    monkeypatch.setattr(LinkedInAds, "settle_seconds", 0.0)  # the fake's segments are usable at once
    return ad_project(
        request, tmp_path, monkeypatch,
        lambda: LinkedInAdsFake(client_id=CLIENT_ID, client_secret=CLIENT_SECRET,
                                refresh_token=REFRESH_TOKEN, account_id=ACCOUNT),
        attr="fake", type_="linkedin_ads", destination="li_vip", activation="to_linkedin",
        fields={"ad_account_id": f'"{ACCOUNT}"', "client_id": CLIENT_ID},
        secrets={"client_secret": ("LINKEDIN_CLIENT_SECRET", CLIENT_SECRET),
                 "refresh_token": ("LINKEDIN_REFRESH_TOKEN", REFRESH_TOKEN)},
    )  # fmt: skip


def test_a_linkedin_segment_follows_the_segment_through_the_dagster_job(request, tmp_path: Path, monkeypatch,
                                                                       capsys) -> None:
    def members(*names: str) -> set[tuple[str, str]]:
        return {("SHA256_EMAIL", sha(f"{n}@example.com")) for n in names}

    with linkedin_project(request, tmp_path, monkeypatch) as env:
        assert main(["--project", str(tmp_path), "validate", "--connect"]) == 0
        assert main(["--project", str(tmp_path), "preview", "to_linkedin"]) == 0
        out = capsys.readouterr().out
        assert "bob@example.com" not in out and CLIENT_SECRET not in out
        assert all(r.method == "GET" for r in env.fake.requests)

        # First sync: the DMP segment is created and gets Bob, Cle and Dan; a 429 storm on the way.
        env.fake.throttle(3)
        assert run_sync_job(env.defs, env.instance, "to_linkedin").success
        segment = env.fake.segment_named("VIP Europe")
        assert segment.users == members("bob", "cle", "dan")

        # Delta: Dan leaves, Bob's e-mail changes, Ann enters; one request is refused (sent again next
        # sync); the token expires mid-sync.
        change_customers(env.wh)
        env.fake.fail_next("/users", FakeResponse(400, {"status": 400, "message": "Busy"}))
        env.fake.expire_tokens_after(1)
        run_sync_job(env.defs, env.instance, "to_linkedin")
        assert 401 in [status for _, _, status in env.fake.answers]
        run_sync_job(env.defs, env.instance, "to_linkedin")
        assert segment.users == members("robert", "cle", "ann")

        # Full refresh (no replace on LinkedIn: remove + add) puts back a member lost on LinkedIn's side;
        # one added there another way stays.
        segment.users = members("cle", "manual")
        sync_steps(env, "to_linkedin", full_refresh=True)
        assert segment.users == members("robert", "cle", "ann", "manual")

        sent = json.dumps([r.json for r in env.fake.requests])
        assert "example.com" not in sent
        for dagster_run in env.instance.get_runs():
            for entry in env.instance.all_logs(dagster_run.run_id):
                text = repr(entry)
                assert CLIENT_SECRET not in text and REFRESH_TOKEN not in text and "li-access-" not in text


def test_the_readme_linkedin_example_loads(tmp_path: Path, monkeypatch, capsys) -> None:
    """The YAML example of the README's LinkedIn Ads paragraph, with a source, model and segment."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    example = readme.split("**LinkedIn Ads (`type: linkedin_ads`).**", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "dinmo.yaml").write_text("""
sources:
  warehouse: {type: duckdb, path: data/warehouse.duckdb}
models:
  customers: {source: warehouse, table: raw.customers, primary_key: customer_id}
segments:
  vip_europe: {model: customers, sql: "select * from {{ model }}"}
""" + example)
    project = load_project(tmp_path)
    activation = project.activations["vip_to_linkedin"]
    assert activation.platform_service == "audiences"
    assert activation.destination == "linkedin_vip"
    monkeypatch.setenv("LINKEDIN_CLIENT_SECRET", CLIENT_SECRET)
    monkeypatch.setenv("LINKEDIN_REFRESH_TOKEN", REFRESH_TOKEN)
    assert main(["--project", str(tmp_path), "validate"]) == 0, capsys.readouterr().out
