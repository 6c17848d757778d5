"""The Display & Video 360 adapter through a fake API v4 and Google token endpoint built from the contract
its docstring cites (tests/fakes/google_dv360.py): the members each Customer Match audience holds, what
was sent, and that neither a raw contact value nor a secret is ever sent or shown. Then one DuckDB
scenario through the real Dagster sync job.

Expected digests are computed here with hashlib from the values Google's "prepare user data" guide
describes (whitespace removed, lower-cased; phones E.164; zips and countries in clear)."""

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
from attribute_scenarios import (
    CliSync,
)
from fakes.google_dv360 import DEVICE_ID, DV360Fake, google_error
from platform_scenarios import run_sync_job, sync_steps

from dinmo_dagster.cli import main
from dinmo_dagster.config import load_project
from dinmo_dagster.platforms import (
    ActivationSpec,
    InMemoryJournal,
    Limits,
    PlatformAuthError,
    PlatformConfigError,
    RetryPolicy,
    build_platform,
    deliver,
    preview,
    validate_connection,
)
from dinmo_dagster.platforms.google_dv360 import GoogleDV360

ADVERTISER = "1234567"
CLIENT_ID = "dv360-client.apps.googleusercontent.com"
CLIENT_SECRET = "GOCSPX-dv360-secret-1q2w3e4r5t6y"
REFRESH_TOKEN = "1//dv360-refresh-9z8y7x6w5v4u3t"
API = "/v4/firstPartyAndPartnerAudiences"
FAST = RetryPolicy(
    max_attempts=3, max_rate_limited_attempts=20, initial_wait_seconds=0.01, max_wait_seconds=0.05
)
EMAILS = ActivationSpec("vip_to_dv360", "customer_id", {"email": "email"})
CONTACT = ActivationSpec("vip_to_dv360", "customer_id", {
    "email": "email", "phone": "phone", "first_name": "first", "last_name": "last", "country": "country",
    "zip": "zip"}, default_country="FR")  # fmt: skip
DEVICES = ActivationSpec("vip_to_dv360", "customer_id", {"mobile_device_id": "maid"})


@pytest.fixture
def dv360() -> Iterator[DV360Fake]:
    with DV360Fake(
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        refresh_token=REFRESH_TOKEN,
        advertiser_id=ADVERTISER,
    ) as fake:
        yield fake


def audiences(fake: DV360Fake, **settings: Any) -> GoogleDV360:
    return audiences_platform(
        "google_dv360", "dv360_vip", GoogleDV360, fake,
        {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "refresh_token": REFRESH_TOKEN,
         "advertiser_id": ADVERTISER}, settings,
    )  # fmt: skip


def customers(ids: Any, **overrides: list[Any]) -> pa.RecordBatch:
    ids = list(ids)
    columns: dict[str, list[Any]] = {"customer_id": ids, "email": [f" Customer.{i}@Example.com" for i in ids]}
    columns.update(overrides)
    return pa.record_batch(columns)


def emails(ids: Any) -> set[str]:
    return {sha(f"customer.{i}@example.com") for i in ids}


def edits(fake: DV360Fake) -> list[dict[str, Any]]:
    return [r.json for r in fake.requests if r.path.endswith(":editCustomerMatchMembers")]


# --------------------------------------------------------------------------------------------------
# First sync, delta, identifier change, full sync
# --------------------------------------------------------------------------------------------------


def test_a_first_sync_creates_the_audience_with_its_members_hashed_as_google_documents(dv360):
    batch = customers([1, 2, 3], phone=["06 12 34 56 78", None, "+44 20 7946 0958"],
                      first=[" Ann Marie ", "Bob", None], last=["Du Pont", "Smith", "Lee"],
                      country=["fr", "GB", "FR"], zip=["75001", " SW1A 1AA ", "69001"])  # fmt: skip
    result = deliver(
        audiences(dv360, consent={"ad_user_data": "granted", "ad_personalization": "granted"}),
        CONTACT,
        {"add": [batch]},
        InMemoryJournal(),
    )

    assert (result.accepted, result.rejected) == (3, 0)
    audience = dv360.audience_named("VIP Europe")
    assert audience is not None and audience.membership_duration_days == 540
    assert audience.emails == emails([1, 2, 3])
    assert audience.phones == {sha("+33612345678"), sha("+442079460958")}
    assert audience.addresses == {
        (sha("annmarie"), sha("dupont"), "FR", "75001"),
        (sha("bob"), sha("smith"), "GB", "SW1A 1AA"),
    }  # Cle has no first name
    assert calls(dv360) == [("GET", API), ("POST", API)]
    assert dv360.requests[0].query == {
        "advertiserId": ADVERTISER,
        "filter": 'displayName:"VIP Europe"',
        "pageSize": "5000",
    }
    create = dv360.requests[1].json
    assert create["contactInfoList"]["contactInfos"][0] == {
        "hashedEmails": [sha("customer.1@example.com")], "hashedPhoneNumbers": [sha("+33612345678")],
        "hashedFirstName": sha("annmarie"), "hashedLastName": sha("dupont"), "countryCode": "FR",
        "zipCodes": ["75001"]}  # fmt: skip
    assert {k: v for k, v in create.items() if k != "contactInfoList"} == {
        "displayName": "VIP Europe", "firstPartyAndPartnerAudienceType": "FIRST_PARTY_AND_PARTNER_AUDIENCE_TYPE_FIRST_PARTY",
        "audienceType": "CUSTOMER_MATCH_CONTACT_INFO", "membershipDurationDays": "540"}  # fmt: skip
    assert audience.consents == [
        {"adUserData": "CONSENT_STATUS_GRANTED", "adPersonalization": "CONSENT_STATUS_GRANTED"}
    ]
    # the token request: Google's token endpoint, client credentials in the form
    assert "client_secret=" in dv360.token_requests[0].raw_body.decode()


def test_an_audience_is_found_by_exact_name_across_pages_or_used_by_id_and_never_created_twice(dv360):
    dv360.page_size_cap = 2
    for i in range(3):
        dv360.create_audience(f"VIP Europe {i}")  # "contains" matches them too
    existing = dv360.create_audience("VIP Europe")
    deliver(audiences(dv360), EMAILS, {"add": [customers([1])]}, InMemoryJournal())
    deliver(
        audiences(dv360, audience={"id": existing.id}), EMAILS, {"add": [customers([2])]}, InMemoryJournal()
    )

    assert len(dv360.audiences) == 4
    assert existing.emails == emails([1, 2])
    assert [m for m, _ in calls(dv360)] == ["GET", "GET", "POST", "POST"]
    assert dv360.requests[1].query["pageToken"] == "2"


def test_a_delta_removes_those_that_left_and_moves_a_changed_email(dv360):
    audience = dv360.create_audience("VIP Europe", emails=emails([1, 2, 3]))
    changed = customers([2], email=["Renamed @Example.com"])
    result = deliver(
        audiences(dv360),
        EMAILS,
        {"remove": [customers([3]), customers([2])], "add": [changed]},
        InMemoryJournal(),
    )

    assert result.accepted == 3
    assert audience.emails == emails([1]) | {sha("renamed@example.com")}
    removed = [c for e in edits(dv360) for c in e.get("removedContactInfoList", {}).get("contactInfos", [])]
    assert sorted(c["hashedEmails"][0] for c in removed) == sorted(emails([2, 3]))
    assert all(e["advertiserId"] == ADVERTISER for e in edits(dv360))


def test_a_full_sync_is_remove_and_add_and_restores_a_lost_member(dv360):
    audience = dv360.create_audience("VIP Europe", emails=emails([1, 9]))
    result = deliver(
        audiences(dv360), EMAILS, {"remove": [customers([9])], "add": [customers([1, 2])]}, InMemoryJournal()
    )

    assert result.accepted == 3 and audience.emails == emails([1, 2])


def test_device_id_audiences_take_ids_in_clear_and_refuse_contact_lists(dv360):
    ids = ["6D92078A-8246-4BA4-AE5B-76104861E7DC", " aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee ", "nope"]
    journal = InMemoryJournal()
    result = deliver(audiences(dv360), DEVICES, {"add": [customers([1, 2, 3], maid=ids)]}, journal)

    audience = dv360.audience_named("VIP Europe")
    assert audience.audience_type == DEVICE_ID
    assert audience.device_ids == {
        "6D92078A-8246-4BA4-AE5B-76104861E7DC",
        "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee",
    }
    assert (result.accepted, result.rejected) == (2, 1) and "nope" not in journal.rejections[0][2]
    # the fake refuses a contact list for a device-id audience, as Display & Video 360 would
    refused = deliver(
        audiences(dv360, audience={"id": audience.id}), EMAILS, {"add": [customers([1])]}, InMemoryJournal()
    )
    assert refused.top_reasons() == [("HTTP 400 INVALID_ARGUMENT", 1)]


def test_batches_are_cut_at_the_limit_and_the_fake_refuses_more_members_than_documented(dv360):
    audience = dv360.create_audience("VIP Europe")
    dv360.max_members = 1_000  # the documented 500,000, scaled down for speed
    platform = audiences(dv360, audience={"id": audience.id})
    platform.limits = Limits(max_records_per_batch=1_000 // 3, requests_per_window=140, window_seconds=60.0)
    batch = customers(range(1, 1_001), phone=[f"+3361234{i:04d}" for i in range(1, 1_001)])
    result = deliver(
        platform,
        ActivationSpec("v", "customer_id", {"email": "email", "phone": "phone"}),
        {"add": [batch]},
        InMemoryJournal(),
    )

    assert result.accepted == 1_000 and len(audience.emails) == 1_000
    assert max(len(e["addedContactInfoList"]["contactInfos"]) for e in edits(dv360)) == 333
    too_many = {
        "advertiserId": ADVERTISER,
        "addedContactInfoList": {
            "contactInfos": [
                {"hashedEmails": [sha(str(i))], "hashedPhoneNumbers": [sha(f"p{i}")]} for i in range(501)
            ]
        },
    }
    answer = requests.post(
        f"{dv360.url}{API}/{audience.id}:editCustomerMatchMembers",
        json=too_many,
        headers=platform.auth_headers(),
        timeout=10,
    )
    assert (answer.status_code, answer.json()["error"]["status"]) == (400, "INVALID_ARGUMENT")
    assert answer.json()["error"]["message"] == (
        "Request contains an invalid argument: 1002 members after splitting the contact_infos; at most 1000."
    )


def test_incomplete_contacts_and_invalid_values_are_rejected_before_sending_and_never_sent_raw(dv360):
    audience = dv360.create_audience("VIP Europe")
    batch = customers([1, 2, 3, 4], email=["not-an-email", None, "ok@x.io", None],
                      phone=[None, None, None, "12"], first=[None, "Bo", None, None], last=[None, "B", None, None],
                      country=[None, "FRA", None, None], zip=[None, "1", None, None])  # fmt: skip
    journal = InMemoryJournal()
    result = deliver(audiences(dv360, audience={"id": audience.id}), CONTACT, {"add": [batch]}, journal)

    assert (result.accepted, result.rejected) == (1, 3)
    assert audience.emails == {sha("ok@x.io")}
    reasons = {key: reason for key, _, reason in journal.rejections}
    assert set(reasons) == {"1", "2", "4"}
    assert "email" in reasons["1"] and "not-an-email" not in reasons["1"]
    assert "country" in reasons["2"] and "FRA" not in reasons["2"]
    sent = json.dumps([r.json for r in dv360.requests])
    assert "x.io" not in sent and "@" not in sent


def test_a_record_with_no_complete_contact_is_rejected_naming_what_is_missing(dv360):
    audience = dv360.create_audience("VIP Europe")
    batch = customers([1, 2], email=[None, "a@b.co"], phone=[None, None], first=["Ann", None],
                      last=["Lee", None], country=["FR", None], zip=[None, None])  # fmt: skip
    journal = InMemoryJournal()
    deliver(audiences(dv360, audience={"id": audience.id}), CONTACT, {"add": [batch]}, journal)

    assert journal.rejections == [
        (
            "1",
            "add",
            "no e-mail, phone or complete address (first_name, last_name, country and zip together) to send",
        )
    ]
    assert audience.emails == {sha("a@b.co")} and audience.addresses == set()


# --------------------------------------------------------------------------------------------------
# Failures: refused requests, 429, tokens
# --------------------------------------------------------------------------------------------------


def test_a_refused_edit_rejects_its_records_with_googles_message_and_the_next_sync_sends_them(dv360):
    audience = dv360.create_audience("VIP Europe")
    dv360.fail_next(
        ":editCustomerMatchMembers", google_error(400, "INVALID_ARGUMENT", "Audience is being updated")
    )
    journal = InMemoryJournal()
    first = deliver(audiences(dv360), EMAILS, {"add": [customers([1, 2])]}, journal)

    assert (first.accepted, first.rejected) == (0, 2)
    assert journal.rejections == [
        ("1", "add", "Audience is being updated (INVALID_ARGUMENT)"),
        ("2", "add", "Audience is being updated (INVALID_ARGUMENT)"),
    ]
    second = deliver(audiences(dv360), EMAILS, {"add": [customers([1, 2])]}, InMemoryJournal())
    assert second.accepted == 2 and audience.emails == emails([1, 2])


def test_a_storm_of_429_resource_exhausted_is_ridden_out_with_backoff(dv360):
    audience = dv360.create_audience("VIP Europe")
    dv360.throttle(5)
    result = deliver(
        audiences(dv360, audience={"id": audience.id}),
        EMAILS,
        {"add": [customers(range(1, 4))]},
        InMemoryJournal(),
        retry=FAST,
    )

    assert audience.emails == emails(range(1, 4))
    assert [status for _, path, status in dv360.answers if path != "/token"] == [429] * 5 + [200]
    assert (result.retries, result.accepted) == (5, 3)


def test_a_token_that_expires_mid_sync_is_renewed_once_and_secrets_never_logged(dv360, caplog):
    caplog.set_level(logging.DEBUG)
    audience = dv360.create_audience("VIP Europe")
    dv360.expire_tokens_after(2)
    platform = audiences(dv360, audience={"id": audience.id}, max_concurrency=1)
    platform.limits = Limits(max_records_per_batch=1, requests_per_window=140, window_seconds=60.0)
    result = deliver(platform, EMAILS, {"add": [customers([i]) for i in range(1, 5)]}, InMemoryJournal())

    assert result.accepted == 4
    assert [status for _, path, status in dv360.answers if path != "/token"] == [200, 200, 401, 200, 200]
    assert len(dv360.token_requests) == 2 and audience.emails == emails(range(1, 5))
    assert not any(s in caplog.text for s in (CLIENT_SECRET, REFRESH_TOKEN, "ya29."))


def test_a_revoked_refresh_token_stops_the_sync_at_once_naming_the_destination(dv360):
    dv360.revoke_refresh_token()
    with pytest.raises(PlatformAuthError) as refused:
        deliver(audiences(dv360), EMAILS, {"add": [customers([1])]}, InMemoryJournal())

    assert str(refused.value) == (
        "destination 'dv360_vip' (google_dv360): the token endpoint refused the refresh token (HTTP 400 "
        "invalid_grant: Token has been expired or revoked.); create a new refresh token and set it in refresh_token"
    )
    assert dv360.requests == [] and REFRESH_TOKEN not in repr(refused.value)


# --------------------------------------------------------------------------------------------------
# preview, validate --connect, settings
# --------------------------------------------------------------------------------------------------


def test_preview_shows_the_first_request_with_identifiers_masked_and_sends_nothing(dv360):
    (add,) = preview(audiences(dv360), EMAILS, {"add": [customers([1, 2])]})

    assert dv360.requests == [] and dv360.token_requests == []
    assert add.method == "POST"
    assert add.url == f"{dv360.url}{API}/<id of audience 'VIP Europe'>:editCustomerMatchMembers"
    assert add.body == {
        "advertiserId": ADVERTISER,
        "addedContactInfoList": {
            "contactInfos": [{"hashedEmails": [sha(f"customer.{i}@example.com")[:8] + "…"]} for i in (1, 2)]
        },
    }


def test_validate_connect_checks_the_token_the_advertiser_and_an_audience_given_by_id(dv360):
    audience = dv360.create_audience("Existing")
    assert validate_connection(audiences(dv360), EMAILS) == []
    assert validate_connection(audiences(dv360, audience={"id": audience.id}), EMAILS) == []
    assert list(dv360.audiences) == [audience.id]
    assert validate_connection(audiences(dv360, audience={"id": "999"}), EMAILS) == [
        (
            "destination 'dv360_vip' (google_dv360): reading audience 999 failed with HTTP 404: "
            "Requested entity was not found. (NOT_FOUND)"
        )
    ]
    assert validate_connection(audiences(dv360, client_secret="wrong"), EMAILS) == [
        (
            "destination 'dv360_vip' (google_dv360): the token endpoint refused the client credentials (HTTP 401 "
            "invalid_client: Unauthorized); check client_id and client_secret"
        )
    ]


def test_settings_and_activation_problems_name_the_key_and_what_is_allowed(dv360):
    with pytest.raises(PlatformConfigError) as wrong:
        build_platform("google_dv360", {
            "service": "audiences", "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
            "refresh_token": REFRESH_TOKEN, "advertiser_id": "adv-1", "membership_duration_days": 600,
            "consent": {"ad_user_data": "denied"}, "audience": {"id": "abc"}}, destination="dv360_vip")  # fmt: skip
    assert str(wrong.value).splitlines() == [
        "destinations.dv360_vip.advertiser_id: found 'adv-1'; allowed: the advertiser's numeric id",
        "destinations.dv360_vip.audience.id: found 'abc'; allowed: the Customer Match audience's numeric id",
        "destinations.dv360_vip.membership_duration_days: found 600; allowed: a whole number of days from 1 to 540",
        (
            "destinations.dv360_vip.consent.ad_user_data: found 'denied'; allowed: granted, unspecified (Google "
            "refuses a request whose users denied consent: leave them out of the segment)"
        ),
    ]
    platform = audiences(dv360)
    assert platform.validate_activation(
        {"email": "e", "maid": "m", "first_name": "f", "idfa": "i"}, {"x": "y"}
    ) == [
        "identifiers.idfa: found 'idfa'; allowed: email, phone, first_name, last_name, country, zip, mobile_device_id",
        "mapping: found x; allowed: nothing (Customer Match audiences take identifiers only)",
        (
            "identifiers: found mobile_device_id with contact identifiers; allowed: mobile_device_id alone, or "
            "contact identifiers (an audience holds one kind)"
        ),
        (
            "identifiers: found part of an address, without last_name, country, zip; allowed: first_name, "
            "last_name, country and zip together"
        ),
    ]


# --------------------------------------------------------------------------------------------------
# The Dagster sync job on DuckDB
# --------------------------------------------------------------------------------------------------


def dv360_project(request, tmp_path: Path, monkeypatch) -> contextlib.AbstractContextManager[SimpleNamespace]:
    return ad_project(
        request, tmp_path, monkeypatch,
        lambda: DV360Fake(client_id=CLIENT_ID, client_secret=CLIENT_SECRET, refresh_token=REFRESH_TOKEN,
                          advertiser_id=ADVERTISER),
        attr="dv360", type_="google_dv360", destination="dv360_vip", activation="to_dv360",
        fields={"advertiser_id": f"'{ADVERTISER}'", "client_id": CLIENT_ID},
        secrets={"client_secret": ("DV360_CLIENT_SECRET", CLIENT_SECRET),
                 "refresh_token": ("DV360_REFRESH_TOKEN", REFRESH_TOKEN)},
    )  # fmt: skip


def test_a_dv360_audience_follows_the_segment_through_the_dagster_job(
    request, tmp_path: Path, monkeypatch, capsys
) -> None:
    with dv360_project(request, tmp_path, monkeypatch) as env:
        assert main(["--project", str(tmp_path), "validate", "--connect"]) == 0
        assert main(["--project", str(tmp_path), "preview", "to_dv360"]) == 0
        out = capsys.readouterr().out
        assert "bob@example.com" not in out and CLIENT_SECRET not in out
        assert all(r.method == "GET" for r in env.dv360.requests)

        # First sync: the audience is created with Bob, Cle and Dan; a 429 storm on the way.
        env.dv360.throttle(3)
        assert run_sync_job(env.defs, env.instance, "to_dv360").success
        audience = env.dv360.audience_named("VIP Europe")
        assert audience.emails == {sha(f"{n}@example.com") for n in ("bob", "cle", "dan")}

        # Delta: Dan leaves, Bob's e-mail changes, Ann enters; the first edit is refused (sent again by the
        # next sync); the token expires mid-sync.
        change_customers(env.wh)
        env.dv360.fail_next(":editCustomerMatchMembers", google_error(400, "INVALID_ARGUMENT", "Busy"))
        env.dv360.expire_tokens_after(1)
        run_sync_job(env.defs, env.instance, "to_dv360")
        assert 401 in [status for _, _, status in env.dv360.answers]
        run_sync_job(env.defs, env.instance, "to_dv360")
        assert audience.emails == {sha(f"{n}@example.com") for n in ("robert", "cle", "ann")}

        # Full refresh (no replace in the API: remove + add) puts back a member lost on Google's side; one added
        # there by other means stays.
        audience.emails = {sha("cle@example.com"), sha("manual@example.com")}
        sync_steps(env, "to_dv360", full_refresh=True)
        assert audience.emails == {sha(f"{n}@example.com") for n in ("robert", "cle", "ann", "manual")}

        sent = json.dumps([r.json for r in env.dv360.requests])
        assert "example.com" not in sent
        for dagster_run in env.instance.get_runs():
            for entry in env.instance.all_logs(dagster_run.run_id):
                text = repr(entry)
                assert CLIENT_SECRET not in text and REFRESH_TOKEN not in text and "ya29." not in text


def test_a_sync_killed_with_its_upload_in_flight_recovers_with_every_member_and_one_audience(tmp_path):
    cli = CliSync(
        tmp_path, "to_dv360", {"DV360_CLIENT_SECRET": CLIENT_SECRET, "DV360_REFRESH_TOKEN": REFRESH_TOKEN}
    )
    cli.seed(500, "'C'")
    with DV360Fake(
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        refresh_token=REFRESH_TOKEN,
        advertiser_id=ADVERTISER,
        latency=0.5,
    ) as fake:
        cli.write(
            destinations=[
                (
                    f"dv360_vip:\n  type: google_dv360\n  service: audiences\n  advertiser_id: '{ADVERTISER}'\n"
                    f"  client_id: {CLIENT_ID}\n  client_secret: {{env: DV360_CLIENT_SECRET}}\n"
                    f"  refresh_token: {{env: DV360_REFRESH_TOKEN}}\n  base_url: {fake.url}\n"
                    f"  token_url: {fake.token_url}\n"
                )
            ],
            activations='to_dv360:\n  segment: big\n  destination: dv360_vip\n  audience: {name: "VIP Europe"}\n'
            "  identifiers: {email: email}\n",
        )
        # 1. Killed once the audience's creation (with its 500 members) reached Display & Video 360.
        # settle: the request in flight at the kill is answered
        cli.kill_when(lambda: any(r.method == "POST" for r in fake.requests), settle=1.0)
        fake.latency = 0.0

        # 2. The next sync finds the audience by name and adds every member again (adds are idempotent).
        cli.recover()
        assert len(fake.audiences) == 1
        assert fake.audience_named("VIP Europe").emails == {sha(f"c{i}@example.com") for i in range(1, 501)}
        assert all(b"example.com" not in r.raw_body for r in fake.requests)
    assert cli.leftovers() == []
    assert not cli.in_home(REFRESH_TOKEN)


def readme_example(heading: str) -> str | None:
    """The YAML block after the README paragraph starting with ``heading``; None while there is none."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    if heading not in readme:
        return None
    return readme.split(heading, 1)[1].split("\n**", 1)[0].split("```yaml\n", 1)[1].split("```", 1)[0]


def load_and_validate_dv360_example(example: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "dinmo.yaml").write_text(
        """
sources:
  warehouse: {type: duckdb, path: data/warehouse.duckdb}
models:
  customers: {source: warehouse, table: raw.customers, primary_key: customer_id}
segments:
  vip_europe: {model: customers, sql: "select * from {{ model }}"}
"""
        + example
    )
    project = load_project(tmp_path)
    (activation,) = project.activations.values()
    assert activation.platform_service == "audiences" and activation.audience.name == "VIP Europe"
    monkeypatch.setenv("DV360_CLIENT_SECRET", CLIENT_SECRET)
    monkeypatch.setenv("DV360_REFRESH_TOKEN", REFRESH_TOKEN)
    assert main(["--project", str(tmp_path), "validate"]) == 0


def test_the_readme_dv360_example_loads_and_validates(tmp_path: Path, monkeypatch, capsys) -> None:
    example = readme_example("**Google Display & Video 360 (`type: google_dv360`).**")
    if example is None:
        pytest.skip("the README has no Display & Video 360 paragraph yet")
    load_and_validate_dv360_example(example, tmp_path, monkeypatch)
