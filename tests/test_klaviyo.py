"""The Klaviyo adapter through a fake Klaviyo built from Klaviyo's documentation (tests/fakes/klaviyo.py):
what the account holds afterwards (profiles, custom properties, list members, consent), what Klaviyo
answered, and that the private key never shows anywhere but in the Authorization header."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import pyarrow as pa
import pytest
import requests
from ad_scenarios import ad_project, change_customers
from attribute_scenarios import (
    CliSync,
    built,
    crm_project,
    example_activations,
    load_example,
    logged,
    readme_examples,
)
from fakes.klaviyo import KlaviyoFake
from platform_scenarios import (
    run,
    run_sync_job,
    sync_steps,
)

from dinmo_dagster.cli import main
from dinmo_dagster.config import ProjectError
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
from dinmo_dagster.platforms.klaviyo import Klaviyo

KEY = "pk_3f9c2a715d4e4b8a9c610e7d2f8a1b45c"
FAST = RetryPolicy(max_attempts=3, initial_wait_seconds=0.01, max_wait_seconds=0.05)
PROFILES = ActivationSpec(
    "crm",
    "customer_id",
    match={"email": "email"},
    mapping={"first_name": "first_name", "ltv": "lifetime_value", "city": "location.city"},
)
MEMBERS = ActivationSpec("crm", "customer_id", match={"email": "email"})
CONSENT = ActivationSpec(
    "crm", "customer_id", match={"email": "email", "phone_number": "phone"}, mapping={"opted_in": "consent"}
)


@pytest.fixture
def klaviyo():
    with KlaviyoFake(KEY, retry_after="0.05") as fake:
        yield fake


def destination(fake: KlaviyoFake, service: str = "attributes", **settings) -> Klaviyo:
    raw = {
        "service": service,
        "api_key": KEY,
        "base_url": fake.url,
        "poll_interval_seconds": 0.01,
        **settings,
    }
    return built("klaviyo", Klaviyo, raw)


def customers(ids: list[int], **overrides) -> pa.RecordBatch:
    columns = {
        "customer_id": ids,
        "email": [f"customer{i}@example.com" for i in ids],
        "first_name": [f"Name{i}" for i in ids],
        "ltv": [i + 0.5 for i in ids],
        "city": ["Paris" for _ in ids],
    }
    columns.update(overrides)
    return pa.record_batch(columns)


def no_raw_key(fake: KlaviyoFake) -> bool:
    """The key is only ever in the Authorization header, which always carries the revision with it."""
    for r in fake.requests:
        assert r.headers.get("revision") == "2024-10-15"
        assert KEY not in r.raw_body.decode() and KEY not in r.path and KEY not in json.dumps(r.query)
    return True


# --------------------------------------------------------------------------------------------------
# attributes: the bulk import job
# --------------------------------------------------------------------------------------------------


def test_an_import_job_upserts_the_profiles_with_their_properties_and_is_polled_to_completion(klaviyo):
    klaviyo.add_profile(email="customer2@example.com", properties={"kept": "yes", "lifetime_value": 1})
    journal = InMemoryJournal()
    result = deliver(
        destination(klaviyo), PROFILES, {"upsert": [customers([1, 2, 3], ltv=[1.5, None, 3.5])]}, journal
    )

    by_email = {p.email: (p.attributes, p.properties) for p in klaviyo.profiles.values()}
    assert by_email == {
        "customer1@example.com": (
            {"first_name": "Name1", "location": {"city": "Paris"}},
            {"lifetime_value": 1.5},
        ),
        # a NULL never clears (the import cannot): Klaviyo keeps the value it held
        "customer2@example.com": (
            {"first_name": "Name2", "location": {"city": "Paris"}},
            {"kept": "yes", "lifetime_value": 1},
        ),
        "customer3@example.com": (
            {"first_name": "Name3", "location": {"city": "Paris"}},
            {"lifetime_value": 3.5},
        ),
    }
    job = klaviyo.requests[0].json["data"]
    assert job["type"] == "profile-bulk-import-job"
    assert job["attributes"]["profiles"]["data"][0] == {
        "type": "profile",
        "attributes": {
            "email": "customer1@example.com",
            "first_name": "Name1",
            "location": {"city": "Paris"},
            "properties": {"lifetime_value": 1.5},
        },
    }
    polls = [r.path for r in klaviyo.requests if r.method == "GET"]
    assert len(polls) == 2 and all(p.startswith("/api/profile-bulk-import-jobs/") for p in polls)
    assert (result.accepted, result.rejected) == (3, 0)
    assert no_raw_key(klaviyo)


def test_per_profile_errors_of_a_job_reject_those_records_with_klaviyos_detail_and_the_next_sync_sends_them(
    klaviyo,
):
    klaviyo.fail_profiles(
        "Profile is suppressed and cannot be updated",
        "customer2@example.com",
        "customer4@example.com",
        "customer5@example.com",
    )
    journal = InMemoryJournal()
    result = deliver(destination(klaviyo), PROFILES, {"upsert": [customers([1, 2, 3, 4, 5])]}, journal)

    assert sorted(journal.rejections) == [
        (str(i), "upsert", "Profile is suppressed and cannot be updated") for i in (2, 4, 5)
    ]
    assert sorted(journal.acknowledged_keys["upsert"]) == ["1", "3"]
    assert result.reasons == {"invalid": 3}
    # the errors come 2 a page: every page was read
    assert sum(1 for r in klaviyo.requests if r.path.endswith("/import-errors")) == 2

    again = deliver(destination(klaviyo), PROFILES, {"upsert": [customers([2, 4, 5])]}, InMemoryJournal())
    assert again.accepted == 3
    assert {p.email for p in klaviyo.profiles.values()} == {f"customer{i}@example.com" for i in range(1, 6)}


def test_only_upsert_is_offered_as_the_import_cannot_update_only_insert_only_or_clear(klaviyo):
    platform = destination(klaviyo)
    with pytest.raises(PlatformConfigError) as info:
        deliver(platform, PROFILES, {"delete": [customers([1])]}, InMemoryJournal())
    assert str(info.value) == (
        "destination 'crm' (klaviyo): service 'attributes' does not support operation "
        "'delete'; allowed: upsert"
    )
    assert klaviyo.requests == []


def test_a_429_storm_is_ridden_out_with_retry_after(klaviyo):
    klaviyo.throttle(4)
    result = deliver(
        destination(klaviyo), PROFILES, {"upsert": [customers([1, 2])]}, InMemoryJournal(), retry=FAST
    )
    assert result.accepted == 2 and result.retries == 4
    assert [s for _, _, s in klaviyo.answers][:5] == [429, 429, 429, 429, 202]


def test_the_fake_refuses_an_11th_request_in_a_second_and_the_adapter_never_sends_one():
    with KlaviyoFake(KEY) as fake:
        headers = {"Authorization": f"Klaviyo-API-Key {KEY}", "revision": "2024-10-15"}
        answers = [requests.get(f"{fake.url}/api/lists", headers=headers, timeout=5) for _ in range(11)]
        assert [a.status_code for a in answers] == [200] * 10 + [429]
        assert answers[-1].headers["Retry-After"] == "1"
        assert answers[-1].json()["errors"][0]["code"] == "throttled"
        time.sleep(1.0)
        fake.answers.clear()

        platform = destination(fake, "audiences", audience={"id": fake.create_list("VIP").id})
        for i in range(1, 7):
            fake.add_profile(email=f"customer{i}@example.com")
        batches = [
            pa.record_batch({"customer_id": [i], "email": [f"customer{i}@example.com"]}) for i in range(1, 7)
        ]
        platform.limits = dataclasses.replace(platform.limits, max_records_per_batch=1)
        deliver(platform, MEMBERS, {"add": batches}, InMemoryJournal())
        assert len(fake.answers) == 12 and 429 not in [s for _, _, s in fake.answers]
        assert len(fake.members("VIP")) == 6


def test_a_wrong_key_stops_at_once_and_the_key_never_shows(klaviyo):
    platform = build_platform(
        "klaviyo",
        {"service": "attributes", "api_key": "pk_wrong_" + KEY, "base_url": klaviyo.url},
        destination="crm",
    )
    with pytest.raises(PlatformAuthError) as info:
        deliver(platform, PROFILES, {"upsert": [customers([1])]}, InMemoryJournal())
    assert str(info.value) == (
        "destination 'crm' (klaviyo): the platform refused the credentials (HTTP 401): "
        "Missing or invalid private key."
    )
    assert len(klaviyo.requests) == 1


# --------------------------------------------------------------------------------------------------
# audiences: list relationships
# --------------------------------------------------------------------------------------------------


def test_a_list_given_by_name_is_created_profiles_looked_up_missing_ones_created_then_related(klaviyo):
    klaviyo.add_profile(email="customer1@example.com")
    platform = destination(klaviyo, "audiences", audience={"name": "VIP Europe"})
    result = deliver(platform, MEMBERS, {"add": [customers([1, 2, 3])]}, InMemoryJournal())

    assert klaviyo.members("VIP Europe") == {f"customer{i}@example.com" for i in (1, 2, 3)}
    assert [(r.method, r.path) for r in klaviyo.requests] == [
        ("GET", "/api/lists"),
        ("POST", "/api/lists"),
        ("GET", "/api/profiles"),
        ("POST", "/api/profiles"),
        ("POST", "/api/profiles"),
        ("POST", f"/api/lists/{klaviyo.list_named('VIP Europe').id}/relationships/profiles"),
    ]
    assert klaviyo.requests[2].query["filter"] == (
        'any(email,["customer1@example.com","customer2@example.com","customer3@example.com"])'
    )
    assert result.accepted == 3

    # a delta: 1 leaves, 3 changes its e-mail (removed under the old one, added under the new one)
    removed = deliver(platform, MEMBERS, {"remove": [customers([1, 3])]}, InMemoryJournal())
    added = deliver(
        platform, MEMBERS, {"add": [customers([3], email=["new3@example.com"])]}, InMemoryJournal()
    )
    assert (removed.accepted, added.accepted) == (2, 1)
    assert klaviyo.members("VIP Europe") == {"customer2@example.com", "new3@example.com"}
    # removing a profile Klaviyo does not hold is done
    assert deliver(platform, MEMBERS, {"remove": [customers([9])]}, InMemoryJournal()).accepted == 1


def test_profiles_found_by_phone_number_join_and_an_invalid_number_is_rejected_before_sending(klaviyo):
    platform = destination(klaviyo, "audiences", audience={"id": klaviyo.create_list("VIP").id})
    spec = ActivationSpec("crm", "customer_id", match={"phone_number": "phone"}, default_country="FR")
    batch = pa.record_batch(
        {"customer_id": [1, 2, 3], "phone": ["06 12 34 56 78", "+33 6 98 76 54 32", "12"]}
    )
    klaviyo.add_profile(phone_number="+33612345678")
    journal = InMemoryJournal()
    deliver(platform, spec, {"add": [batch]}, journal)
    assert klaviyo.members("VIP", "phone_number") == {"+33612345678", "+33698765432"}
    assert journal.rejections == [
        ("3", "add", "identifier phone_number (column phone) is not a valid phone number")
    ]
    assert "12" not in json.dumps([r.json for r in klaviyo.requests])


def test_preview_masks_identifiers_and_sends_nothing(klaviyo):
    platform = destination(klaviyo, "audiences", audience={"name": "VIP Europe"})
    shown = preview(platform, MEMBERS, {"add": [customers([1, 2])]})
    assert klaviyo.requests == []
    assert shown[0].params == {"filter": 'any(email,["c***@e***","c***@e***"])', "page[size]": "100"}
    assert "customer1@example.com" not in json.dumps([p.body for p in shown])
    assert shown[0].body == {
        "then": "POST /api/lists/<id of list 'VIP Europe'>/relationships/profiles (the profiles' ids)"
    }


# --------------------------------------------------------------------------------------------------
# subscriptions: consent only where the segment says so
# --------------------------------------------------------------------------------------------------


def test_consent_follows_the_column_and_nobody_is_subscribed_without_a_yes(klaviyo):
    klist = klaviyo.create_list("Newsletter")
    klaviyo.add_profile(email="customer2@example.com", consent={"email": "SUBSCRIBED"})
    platform = destination(klaviyo, "subscriptions", channels=["email", "sms"], list_id=klist.id)
    batch = pa.record_batch(
        {
            "customer_id": [1, 2, 3],
            "email": [f"customer{i}@example.com" for i in (1, 2, 3)],
            "phone": ["+33612345678", None, None],
            "opted_in": [True, False, None],
        }
    )
    journal = InMemoryJournal()
    result = deliver(platform, CONSENT, {"upsert": [batch]}, journal)

    consent = {p.email: p.consent for p in klaviyo.profiles.values()}
    assert consent == {
        "customer1@example.com": {"email": "SUBSCRIBED", "sms": "SUBSCRIBED"},
        "customer2@example.com": {"email": "UNSUBSCRIBED"},
    }
    assert klaviyo.members("Newsletter") == {"customer1@example.com"}
    assert journal.rejections == [
        (
            "3",
            "upsert",
            (
                "field consent is NULL or not a consent; allowed: true/false or "
                "subscribed/unsubscribed (nothing is changed in Klaviyo without one)"
            ),
        )
    ]
    assert (result.accepted, result.rejected) == (2, 1)
    # mirror: who left the segment is unsubscribed
    deliver(platform, CONSENT, {"delete": [batch.slice(0, 1)]}, InMemoryJournal())
    assert klaviyo.by_email("customer1@example.com").consent == {
        "email": "UNSUBSCRIBED",
        "sms": "UNSUBSCRIBED",
    }


# --------------------------------------------------------------------------------------------------
# settings and validate --connect
# --------------------------------------------------------------------------------------------------


def test_settings_errors_name_the_key_and_what_is_allowed():
    with pytest.raises(PlatformConfigError) as info:
        build_platform(
            "klaviyo",
            {"service": "attributes", "api_key": KEY, "revision": "latest", "channels": ["email"]},
            destination="crm",
        )
    assert str(info.value).splitlines() == [
        "destinations.crm.revision: found 'latest'; allowed: a Klaviyo API revision, YYYY-MM-DD (e.g. 2024-10-15)",
        "destinations.crm.channels: found ['email']; allowed only with service: subscriptions",
    ]
    with pytest.raises(PlatformConfigError) as info:
        build_platform("klaviyo", {"service": "lists", "api_key": KEY}, destination="crm")
    assert str(info.value).startswith(
        "destinations.crm.service: Input should be 'attributes', 'audiences' or 'subscriptions'"
    )


def test_validate_connect_checks_the_key_the_list_and_the_mapping(klaviyo):
    assert validate_connection(destination(klaviyo), PROFILES) == []
    bad = ActivationSpec(
        "crm", "customer_id", match={"fax": "fax"}, mapping={"x": "$consent", "y": "location.planet"}
    )
    problems = validate_connection(destination(klaviyo, "subscriptions", list_id="NOPE"), bad)
    assert problems == [
        "match.fax: klaviyo has no identifier 'fax' for service subscriptions; allowed: email, phone_number",
        (
            "mapping: found $consent, location.planet; allowed: exactly one column mapped to consent (true/false or "
            "subscribed/unsubscribed)"
        ),
        "match: found fax; channels email need email",
        "destination 'crm' (klaviyo): reading Klaviyo list NOPE failed with HTTP 404: A list with id NOPE does not exist.",
    ]
    with KlaviyoFake(KEY, scopes={"profiles:write"}) as limited:
        problems = validate_connection(destination(limited), PROFILES)
    assert problems == [
        (
            "destination 'crm' (klaviyo): the platform refused the credentials (HTTP 403): This API key is "
            "missing required scopes: lists:read"
        )
    ]


# --------------------------------------------------------------------------------------------------
# the Dagster job on DuckDB
# --------------------------------------------------------------------------------------------------


def test_a_klaviyo_list_follows_the_segment_through_the_dagster_job(
    request, tmp_path: Path, monkeypatch, capsys
):
    with ad_project(
        request,
        tmp_path,
        monkeypatch,
        lambda: KlaviyoFake(KEY, retry_after="0.05"),
        attr="klaviyo",
        type_="klaviyo",
        destination="kl",
        activation="to_klaviyo",
        fields={},
        secrets={"api_key": ("KLAVIYO_KEY", KEY)},
    ) as env:
        assert main(["--project", str(tmp_path), "validate", "--connect"]) == 0
        assert main(["--project", str(tmp_path), "preview", "to_klaviyo"]) == 0
        out = capsys.readouterr().out
        assert "bob@example.com" not in out and KEY not in out
        assert all(r.method == "GET" for r in env.klaviyo.requests)

        env.klaviyo.throttle(3)
        assert run_sync_job(env.defs, env.instance, "to_klaviyo").success
        assert env.klaviyo.members("VIP Europe") == {f"{n}@example.com" for n in ("bob", "cle", "dan")}

        change_customers(env.wh)  # Dan leaves, Bob becomes robert@example.com, Ann enters
        assert run_sync_job(env.defs, env.instance, "to_klaviyo").success
        assert env.klaviyo.members("VIP Europe") == {f"{n}@example.com" for n in ("robert", "cle", "ann")}

        # a full refresh (remove + add: Klaviyo has no replace) puts back a member removed by hand
        klist = env.klaviyo.list_named("VIP Europe")
        klist.members.discard(env.klaviyo.by_email("cle@example.com").id)
        sync_steps(env, "to_klaviyo", full_refresh=True)
        assert env.klaviyo.members("VIP Europe") == {f"{n}@example.com" for n in ("robert", "cle", "ann")}
        for entry in logged(env.instance):
            assert KEY not in entry
        assert no_raw_key(env.klaviyo)


def test_the_readme_klaviyo_examples_load(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("KLAVIYO_API_KEY", KEY)
    examples = readme_examples("**Klaviyo (`type: klaviyo`).**")
    assert len(examples) == 3
    for n, activation in enumerate(example_activations(tmp_path, examples)):
        assert activation.platform_service == ("attributes", "audiences", "subscriptions")[n]


def import_jobs(fake: KlaviyoFake) -> list[set[str]]:
    """The e-mails of each import job the fake received, in order."""
    return [
        {p["attributes"].get("email") for p in r.json["data"]["attributes"]["profiles"]["data"]}
        for r in fake.requests
        if r.method == "POST" and r.path == "/api/profile-bulk-import-jobs"
    ]


def test_profiles_follow_the_segment_through_the_dagster_job_a_failed_one_going_with_the_next_sync(
    request, tmp_path: Path, monkeypatch
):
    fake = KlaviyoFake(KEY, retry_after="0.05")
    destination_yaml = (
        f"kl:\n  type: klaviyo\n  service: attributes\n  api_key: {{env: KLAVIYO_KEY}}\n"
        f"  poll_interval_seconds: 0.01\n  base_url: {fake.url}\n"
    )
    activations = (
        "to_kl:\n  segment: big\n  destination: kl\n  match: {email: email}\n  mapping: {first_name: first_name}\n"
        "  max_rejected_pct: 50\n"
    )
    with crm_project(
        request, tmp_path, monkeypatch, fake, ("KLAVIYO_KEY", KEY), destination_yaml, activations
    ) as env:
        # First sync: Cle's profile fails inside Klaviyo's job (per-profile error); Bob and Dan land.
        fake.fail_profiles("Profile is suppressed and cannot be updated", "cle@example.com")
        fake.throttle(2)
        assert run_sync_job(env.defs, env.instance, "to_kl").success
        assert {p.email: p.attributes for p in fake.profiles.values()} == {
            "bob@example.com": {"first_name": "Bob"}, "dan@example.com": {"first_name": "Dan"}}  # fmt: skip

        # Bob's mapped first name changes, Dan's unmapped ltv changes (he stays in the segment): the next job
        # holds Cle (rejected last time) and Bob, not Dan.
        run(env.wh, "update raw.customers set first_name = 'Robert' where customer_id = 2")
        run(env.wh, "update raw.customers set ltv = 650 where customer_id = 4")
        assert run_sync_job(env.defs, env.instance, "to_kl").success
        assert import_jobs(fake)[-1] == {"bob@example.com", "cle@example.com"}
        assert {p.email: p.attributes for p in fake.profiles.values()} == {
            "bob@example.com": {"first_name": "Robert"}, "dan@example.com": {"first_name": "Dan"},
            "cle@example.com": {"first_name": "Cle"}}  # fmt: skip

        # Dan leaves the segment: upsert sends nothing for him (Klaviyo cannot clear a property).
        sent = len(fake.requests)
        run(env.wh, "update raw.customers set ltv = 10 where customer_id = 4")
        assert run_sync_job(env.defs, env.instance, "to_kl").success
        assert len(fake.requests) == sent
        for entry in logged(env.instance):
            assert KEY not in entry
        assert no_raw_key(fake)


def test_a_killed_sync_to_a_list_is_recovered_by_the_next_with_nothing_lost(tmp_path: Path):
    cli = CliSync(tmp_path, "to_kl", {"KLAVIYO_KEY": KEY})
    cli.seed(600)
    with KlaviyoFake(KEY, latency=0.2) as fake:
        for i in range(1, 601):
            fake.add_profile(email=f"c{i}@example.com")
        klist = fake.create_list("VIP Europe")
        cli.write(
            destinations=[(f"kl:\n  type: klaviyo\n  service: audiences\n  max_concurrency: 1\n"
                          f"  api_key: {{env: KLAVIYO_KEY}}\n  base_url: {fake.url}\n")],
            activations='to_kl:\n  segment: big\n  destination: kl\n  audience: {name: "VIP Europe"}\n'
                        "  identifiers: {email: email}\n")  # fmt: skip
        # 6 batches of 100, each a lookup then a POST of relationships: killed after the second POST.
        posts = [("POST", f"/api/lists/{klist.id}/relationships/profiles")]
        # settle: the request in flight at the kill is answered
        cli.kill_when(lambda: sum(1 for r in fake.requests if (r.method, r.path) in posts) >= 2, settle=0.5)
        assert 0 < len(klist.members) < 600

        cli.recover()
        assert fake.members("VIP Europe") == {f"c{i}@example.com" for i in range(1, 601)}
        # adds are idempotent: a membership sent again (the dead sync's full add) changes nothing
        assert all(len(r.json["data"]) <= 1000 for r in fake.requests if (r.method, r.path) in posts)
        assert 429 not in [s for _, _, s in fake.answers]
        assert no_raw_key(fake)
    assert cli.leftovers() == []
    assert not cli.in_home(KEY)


def test_sync_modes_the_import_cannot_honour_are_refused_when_the_project_loads(
    tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("KLAVIYO_API_KEY", KEY)
    example = (
        "destinations:\n  kl: {type: klaviyo, service: attributes, api_key: {env: KLAVIYO_API_KEY}}\n"
        "activations:\n  to_kl: {segment: vip_europe, destination: kl, match: {email: email}, "
        "mapping: {first_name: first_name}, sync_mode: mirror}\n"
    )
    with pytest.raises(ProjectError) as info:
        load_example(tmp_path, example)
    assert str(info.value).splitlines()[1].strip() == (
        "- dinmo.yaml: activations.to_kl.sync_mode: found 'mirror'; allowed for klaviyo attributes: upsert"
    )


def test_unsubscriptions_go_100_a_job_and_subscriptions_up_to_1000(klaviyo):
    platform = destination(klaviyo, "subscriptions")
    ids = list(range(1, 1251))
    batch = pa.record_batch(
        {
            "customer_id": ids,
            "email": [f"customer{i}@example.com" for i in ids],
            "phone": [None] * len(ids),
            "opted_in": [i > 250 for i in ids],
        }
    )
    result = deliver(platform, CONSENT, {"upsert": [batch]}, InMemoryJournal())
    sizes = [
        (r.path.rsplit("-", 2)[-2], len(r.json["data"]["attributes"]["profiles"]["data"]))
        for r in klaviyo.requests
        if r.path.startswith("/api/profile-subscription")
    ]
    # batches of 1,000 records: the first holds the 250 refusals and 750 consents, the second 250 consents
    assert sorted(sizes) == [
        ("create", 250),
        ("create", 750),
        ("delete", 50),
        ("delete", 100),
        ("delete", 100),
    ]
    assert result.accepted == 1250
    consents = [p.consent["email"] for p in klaviyo.profiles.values()]
    assert (consents.count("SUBSCRIBED"), consents.count("UNSUBSCRIBED")) == (1000, 250)
