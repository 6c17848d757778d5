"""The Criteo adapter through a fake Marketing Solutions API and token endpoint built from Criteo's
documentation (tests/fakes/criteo.py): the identifiers each contact list holds, what was sent, and
that neither a raw e-mail nor a secret is ever sent or shown. Then one DuckDB scenario through the
real Dagster sync job.

Expected digests are computed here with hashlib from trimmed, lower-cased e-mails; mobile ad ids
are expected lower-cased with their hyphens, unhashed (the adapter's docstring says why)."""

from __future__ import annotations

import contextlib
import json
import logging
import re
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pyarrow as pa
import pytest
from ad_scenarios import ad_project, audiences_platform, calls, change_customers, sha
from fakes.criteo import CriteoFake
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
from dinmo_dagster.platforms.criteo import Criteo

ADVERTISER = "48213"
CLIENT_ID = "criteo-client-7e2a"
CLIENT_SECRET = "criteo-secret-1a2b3c4d5e6f7a8b9c0d"
FAST = RetryPolicy(max_attempts=3, max_rate_limited_attempts=20, initial_wait_seconds=0.01, max_wait_seconds=0.05)
EMAILS = ActivationSpec("vip_to_criteo", "customer_id", {"email": "email"})
PREFIX = "/2026-01/marketing-solutions/audience-segments"


@pytest.fixture
def criteo() -> Iterator[CriteoFake]:
    with CriteoFake(client_id=CLIENT_ID, client_secret=CLIENT_SECRET, advertiser_id=ADVERTISER) as fake:
        yield fake


def audiences(fake: CriteoFake, **settings: Any) -> Criteo:
    return audiences_platform(
        "criteo", "criteo_vip", Criteo, fake,
        {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "advertiser_id": ADVERTISER}, settings,
    )  # fmt: skip


def customers(ids: Any, **overrides: list[Any]) -> pa.RecordBatch:
    ids = list(ids)
    columns: dict[str, list[Any]] = {"customer_id": ids, "email": [f" Customer{i}@Example.com" for i in ids]}
    columns.update(overrides)
    return pa.record_batch(columns)


def emails(ids: Any) -> set[str]:
    return {sha(f"customer{i}@example.com") for i in ids}


# --------------------------------------------------------------------------------------------------
# Audiences: create, add, remove, replace
# --------------------------------------------------------------------------------------------------


def test_a_missing_segment_is_created_in_the_advertiser_then_filled(criteo):
    criteo.create_segment("Other")
    result = deliver(audiences(criteo), EMAILS, {"add": [customers([1, 2])]}, InMemoryJournal())

    segment = criteo.segment_named("VIP Europe")
    assert segment is not None and segment.members["email"] == emails([1, 2])
    assert calls(criteo) == [
        ("POST", f"{PREFIX}/search"),
        ("POST", f"{PREFIX}/create"),
        ("PATCH", f"{PREFIX}/{segment.id}/contact-list"),
    ]
    search, create, patch = criteo.requests
    assert search.query == {"limit": "100", "offset": "0"}
    assert search.json == {"data": {"type": "AudienceSegmentSearch", "attributes": {
        "advertiserIds": [ADVERTISER], "audienceSegmentTypes": ["ContactList"]}}}  # fmt: skip
    assert create.json == {"data": [{"type": "AudienceSegment", "attributes": {
        "advertiserId": ADVERTISER, "name": "VIP Europe", "contactList": {}}}]}  # fmt: skip
    assert patch.json == {"data": {"type": "ContactlistAmendment", "attributes": {
        "operation": "add", "identifierType": "email",
        "identifiers": [sha("customer1@example.com"), sha("customer2@example.com")]}}}  # fmt: skip
    assert patch.headers["authorization"].startswith("Bearer criteo-access-")
    assert (result.accepted, result.rejected) == (2, 0)


def test_an_existing_segment_is_found_by_name_across_pages_and_members_removed(criteo):
    for i in range(150):
        criteo.create_segment(f"Segment {i}")
    segment = criteo.create_segment("VIP Europe", email=emails([1, 2, 3]))
    result = deliver(audiences(criteo), EMAILS, {"remove": [customers([2, 3])]}, InMemoryJournal())

    assert segment.members["email"] == emails([1])
    searches = [r.query["offset"] for r in criteo.requests if r.path.endswith("/search")]
    assert searches == ["0", "100"]
    patch = criteo.requests[-1]
    assert patch.json["data"]["attributes"]["operation"] == "remove"
    assert result.accepted == 2 and len(criteo.segments) == 151


def test_a_name_two_segments_share_is_refused_naming_both_ids(criteo):
    first, second = criteo.create_segment("VIP Europe"), criteo.create_segment("VIP Europe")
    with pytest.raises(PlatformConfigError) as refused:
        deliver(audiences(criteo), EMAILS, {"add": [customers([1])]}, InMemoryJournal())
    assert str(refused.value) == (
        f"destination 'criteo_vip' (criteo): audience.name: 2 contact-list segments of advertiser {ADVERTISER} "
        f"are named 'VIP Europe' (ids {first.id}, {second.id}); allowed: a unique name, or audience: {{id: ...}}"
    )
    assert criteo.requests[-1].path.endswith("/search")  # nothing was created or sent


def test_a_full_sync_wipes_the_list_once_then_adds_in_batches_of_50000(criteo):
    segment = criteo.create_segment("VIP Europe", email={sha("old@example.com")})
    journal = InMemoryJournal()
    result = deliver(audiences(criteo), EMAILS, {"replace": [customers(range(50_001))]}, journal)

    assert segment.members["email"] == emails(range(50_001))
    assert calls(criteo)[:2] == [("POST", f"{PREFIX}/search"), ("DELETE", f"{PREFIX}/{segment.id}/contact-list")]
    adds = [r for r in criteo.requests if r.method == "PATCH"]
    assert sorted(len(r.json["data"]["attributes"]["identifiers"]) for r in adds) == [1, 50_000]
    assert [r.method for r in criteo.requests].count("DELETE") == 1
    assert (result.accepted, result.batches) == (50_001, 2)


def test_a_full_sync_of_an_empty_segment_empties_the_criteo_list(criteo):
    segment = criteo.create_segment("VIP Europe", email={sha("old@example.com")})
    result = deliver(audiences(criteo), EMAILS, {"replace": [customers([])]}, InMemoryJournal())

    assert segment.members["email"] == set()
    assert calls(criteo)[-1] == ("DELETE", f"{PREFIX}/{segment.id}/contact-list")
    assert result.accepted == 0


# --------------------------------------------------------------------------------------------------
# Identifiers
# --------------------------------------------------------------------------------------------------


def test_emails_are_hashed_madids_sent_lower_case_and_no_raw_email_is_ever_sent(criteo):
    spec = ActivationSpec("vip_to_criteo", "customer_id", {"email": "email", "madid": "device"})
    batch = pa.record_batch({
        "customer_id": [1, 2, 3, 4],
        "email": [" John.Smith@Example.COM ", None, "ann@example.com", None],
        "device": ["AECE52E7-03EE-455A-B3C4-E57283966239", "6d92078a-8246-4ba4-ae5b-76104861e7dc",
                   "not-a-device-id", None],
    })  # fmt: skip
    journal = InMemoryJournal()
    result = deliver(audiences(criteo), spec, {"add": [batch]}, journal)

    segment = criteo.segment_named("VIP Europe")
    assert segment.members == {
        "email": {sha("john.smith@example.com")},
        "madid": {"aece52e7-03ee-455a-b3c4-e57283966239", "6d92078a-8246-4ba4-ae5b-76104861e7dc"},
    }
    assert (result.accepted, result.rejected) == (2, 2)
    assert sorted(journal.rejections) == [
        ("3", "add", ("identifier madid (column device) is not a mobile advertising id (IDFA or AAID, "
                     "8-4-4-4-12 hex digits)")),
        ("4", "add", "no identifier has a value (columns email, device)"),
    ]
    patches = [r.json["data"]["attributes"] for r in criteo.requests if r.method == "PATCH"]
    assert [p["identifierType"] for p in patches] == ["email", "madid"]
    assert all(re.fullmatch(r"[0-9a-f]{64}", v) for v in patches[0]["identifiers"])
    bodies = "".join(r.raw_body.decode() for r in criteo.requests)
    assert "example" not in bodies.lower()


def test_identifiers_criteo_reports_invalid_are_rejected_and_the_others_accepted(criteo):
    segment = criteo.create_segment("VIP Europe")
    criteo.invalid.add(sha("b@example.com"))  # well-formed, but Criteo lists it in sampleInvalidIdentifiers
    journal = InMemoryJournal()
    result = deliver(audiences(criteo, audience={"id": segment.id}), EMAILS,
                     {"add": [customers([1, 2], email=["a@example.com", "b@example.com"])]}, journal)
    assert segment.members["email"] == {sha("a@example.com")}
    assert (result.accepted, result.rejected) == (1, 1)
    assert journal.rejections == [("2", "add", "Criteo found the email identifier invalid")]
    assert result.top_reasons() == [("invalid email", 1)]


# --------------------------------------------------------------------------------------------------
# Errors, rate limits, tokens
# --------------------------------------------------------------------------------------------------


def test_a_refused_request_rejects_its_records_with_criteos_message_and_the_next_sync_sends_them(criteo):
    segment = criteo.create_segment("VIP Europe")
    criteo.fail_next("/contact-list", FakeResponse(400, {"errors": [{
        "traceId": "t-1", "type": "validation", "code": "contact-list-locked",
        "title": "Contact list is locked", "detail": "An update is being processed; retry later"}]}))  # fmt: skip
    journal = InMemoryJournal()
    first = deliver(audiences(criteo), EMAILS, {"add": [customers([1, 2])]}, journal)

    assert (first.accepted, first.rejected) == (0, 2)
    reason = "Contact list is locked: An update is being processed; retry later (contact-list-locked)"
    assert journal.rejections == [("1", "add", reason), ("2", "add", reason)]
    assert first.top_reasons() == [("HTTP 400 contact-list-locked (email)", 2)]
    second = deliver(audiences(criteo), EMAILS, {"add": [customers([1, 2])]}, InMemoryJournal())
    assert second.accepted == 2
    assert segment.members["email"] == emails([1, 2])


def test_a_storm_of_429_is_ridden_out(criteo):
    segment = criteo.create_segment("VIP Europe")
    criteo.throttle(6)
    result = deliver(audiences(criteo, audience={"id": segment.id}), EMAILS, {"add": [customers(range(1, 4))]},
                     InMemoryJournal(), retry=FAST)

    assert segment.members["email"] == emails(range(1, 4))
    assert [status for _, path, status in criteo.answers if path != "/oauth2/token"] == [429] * 6 + [200]
    assert (result.retries, result.accepted) == (6, 3)


def test_a_token_that_expires_mid_sync_is_renewed_once_and_the_request_sent_again(criteo, caplog):
    caplog.set_level(logging.DEBUG)
    segment = criteo.create_segment("VIP Europe")
    criteo.expire_tokens_after(2)
    platform = audiences(criteo, audience={"id": segment.id}, max_concurrency=1)
    platform.limits = type(platform.limits)(max_records_per_batch=1, requests_per_window=10, window_seconds=1.0)
    result = deliver(platform, EMAILS, {"add": [customers([i]) for i in range(1, 5)]}, InMemoryJournal())

    assert result.accepted == 4
    assert [status for _, path, status in criteo.answers if path != "/oauth2/token"] == [200, 200, 401, 200, 200]
    assert len(criteo.token_requests) == 2
    forms = [dict(urllib.parse.parse_qsl(r.raw_body.decode())) for r in criteo.token_requests]
    assert [f["grant_type"] for f in forms] == ["client_credentials"] * 2 and "refresh_token" not in forms[0]
    assert segment.members["email"] == emails(range(1, 5))
    assert not any(s in caplog.text for s in (CLIENT_SECRET, "criteo-access-"))


def test_wrong_client_credentials_stop_the_sync_at_once_naming_the_destination(criteo):
    with pytest.raises(PlatformAuthError) as refused:
        deliver(audiences(criteo, client_secret="wrong-secret-123"), EMAILS, {"add": [customers([1])]},
                InMemoryJournal())
    assert str(refused.value) == (
        "destination 'criteo_vip' (criteo): the token endpoint refused the client credentials (HTTP 401 "
        "invalid_client: Invalid client credentials); check client_id and client_secret"
    )
    assert criteo.requests == [] and len(criteo.token_requests) == 1


# --------------------------------------------------------------------------------------------------
# preview, validate --connect, settings
# --------------------------------------------------------------------------------------------------


def test_preview_shows_the_first_requests_with_digests_masked_and_sends_nothing(criteo):
    add, replace = preview(audiences(criteo), EMAILS, {"add": [customers([1, 2])], "replace": [customers([3])]})

    assert criteo.requests == [] and criteo.token_requests == []
    assert add.method == "PATCH"
    assert add.url == f"{criteo.url}{PREFIX}/<id of segment 'VIP Europe'>/contact-list"
    assert add.body == {"data": {"type": "ContactlistAmendment", "attributes": {
        "operation": "add", "identifierType": "email",
        "identifiers": [sha(f"customer{i}@example.com")[:8] + "…" for i in (1, 2)]}}}  # fmt: skip
    assert replace.body["first"] == (
        f"DELETE {PREFIX}/<id of segment 'VIP Europe'>/contact-list (once, before the first add)")


def test_validate_connect_checks_the_token_the_advertiser_and_a_segment_given_by_id(criteo):
    segment = criteo.create_segment("Existing")
    assert validate_connection(audiences(criteo), EMAILS) == []
    assert validate_connection(audiences(criteo, audience={"id": segment.id}), EMAILS) == []
    assert list(criteo.segments) == [segment.id]  # a segment given by name is not created by validate
    assert validate_connection(audiences(criteo, audience={"id": "999"}), EMAILS) == [
        f"destination 'criteo_vip' (criteo): audience.id: no contact-list segment 999 in advertiser {ADVERTISER}"
    ]
    assert validate_connection(audiences(criteo, advertiser_id="777"), EMAILS) == [
        ("destination 'criteo_vip' (criteo): the platform refused the credentials (HTTP 403): Forbidden: "
         "No access to advertiser 777 (access-denied)")
    ]


def test_settings_and_activation_problems_name_the_key_and_what_is_allowed(criteo):
    with pytest.raises(PlatformConfigError) as wrong:
        build_platform("criteo", {
            "service": "audiences", "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
            "advertiser_id": "adv-12", "audience": {"name": "x", "id": "1"}}, destination="criteo_vip")  # fmt: skip
    assert str(wrong.value).splitlines() == [
        "destinations.criteo_vip.advertiser_id: found 'adv-12'; allowed: the advertiser's numeric id such as 12345",
        "destinations.criteo_vip.audience: found both name and id; allowed: {name: ...} or {id: ...}",
    ]
    platform = audiences(criteo)
    assert platform.validate_activation({"email": "email", "phone": "p", "madid": "d", "mobile_ad_id": "e"},
                                        {"first": "first_name"}) == [
        "identifiers.phone: found 'phone'; allowed: email, madid",
        "identifiers.mobile_ad_id: madid already sends madid; keep one of them",
        "mapping: found first; allowed: nothing (Criteo contact lists take identifiers only)",
    ]


# --------------------------------------------------------------------------------------------------
# The Dagster sync job on DuckDB
# --------------------------------------------------------------------------------------------------


def criteo_project(request, tmp_path: Path,
                 monkeypatch) -> contextlib.AbstractContextManager[SimpleNamespace]:
    return ad_project(
        request, tmp_path, monkeypatch,
        lambda: CriteoFake(client_id=CLIENT_ID, client_secret=CLIENT_SECRET, advertiser_id=ADVERTISER),
        attr="criteo", type_="criteo", destination="criteo_vip", activation="to_criteo",
        fields={"advertiser_id": f'"{ADVERTISER}"', "client_id": CLIENT_ID},
        secrets={"client_secret": ("CRITEO_CLIENT_SECRET", CLIENT_SECRET)},
    )  # fmt: skip


def test_a_criteo_contact_list_follows_the_segment_through_the_dagster_job(request, tmp_path: Path, monkeypatch,
                                                                           capsys) -> None:
    with criteo_project(request, tmp_path, monkeypatch) as env:
        assert main(["--project", str(tmp_path), "validate", "--connect"]) == 0
        assert main(["--project", str(tmp_path), "preview", "to_criteo"]) == 0
        out = capsys.readouterr().out
        assert "bob@example.com" not in out and CLIENT_SECRET not in out
        assert all(r.path.endswith("/search") for r in env.criteo.requests)

        # First sync (a full one): the segment is created and gets Bob, Cle and Dan; a 429 storm on the way.
        env.criteo.throttle(3)
        result = run_sync_job(env.defs, env.instance, "to_criteo")
        assert result.success
        segment = env.criteo.segment_named("VIP Europe")
        assert segment.members["email"] == {sha(f"{n}@example.com") for n in ("bob", "cle", "dan")}

        # Delta: Dan leaves, Bob's e-mail changes, Ann enters; the token expires mid-sync.
        change_customers(env.wh)
        env.criteo.expire_tokens_after(1)
        result = run_sync_job(env.defs, env.instance, "to_criteo")
        assert result.success
        assert segment.members["email"] == {sha(f"{n}@example.com") for n in ("robert", "cle", "ann")}
        assert 401 in [status for _, _, status in env.criteo.answers]

        # Full refresh: someone added a member by hand; the replace leaves exactly the segment's members.
        segment.members["email"].add(sha("stranger@example.com"))
        sync_steps(env, "to_criteo", full_refresh=True)
        assert segment.members["email"] == {sha(f"{n}@example.com") for n in ("robert", "cle", "ann")}
        assert ("DELETE", f"{PREFIX}/{segment.id}/contact-list") in calls(env.criteo)

        sent = json.dumps([r.json for r in env.criteo.requests])
        assert "example.com" not in sent
        for dagster_run in env.instance.get_runs():
            for entry in env.instance.all_logs(dagster_run.run_id):
                text = repr(entry)
                assert CLIENT_SECRET not in text and "criteo-access-" not in text


def test_the_readme_criteo_example_loads(tmp_path: Path) -> None:
    """The YAML example of the README's Criteo paragraph, with a source, model and segment."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    example = readme.split("**Criteo (`type: criteo`).**", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "dinmo.yaml").write_text("""
sources:
  warehouse: {type: duckdb, path: data/warehouse.duckdb}
models:
  customers: {source: warehouse, table: raw.customers, primary_key: customer_id}
segments:
  vip_europe: {model: customers, sql: "select * from {{ model }}"}
""" + example)
    project = load_project(tmp_path)
    activation = project.activations["vip_to_criteo"]
    assert (activation.platform_service, activation.platform_mode) == ("audiences", "mirror")
    assert activation.identifiers == {"email": "email", "madid": "device_id"}
    assert activation.audience is not None and activation.audience.name == "VIP Europe"
