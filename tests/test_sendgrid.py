"""The SendGrid adapter through a fake SendGrid built from SendGrid's documentation (tests/fakes/sendgrid.py):
what the account holds afterwards (contacts, their reserved and custom fields, list members), the upsert and
delete jobs and their error files, and that the API key never shows anywhere but in the Authorization header."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest
from ad_scenarios import ad_project, change_customers
from attribute_scenarios import (
    CliSync,
    built,
    crm_project,
    example_activations,
    logged,
    readme_examples,
)
from fakes.sendgrid import SendGridFake
from platform_scenarios import run, run_sync_job, sync_steps

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
from dinmo_dagster.platforms.sendgrid import SendGrid

KEY = "SG.x1Yz2AbC3dEf4GhI5jKl6M.nOpQrStUvWxYz0123456789abcdefGHIJKLmnopqrs"
FAST = RetryPolicy(max_attempts=5, initial_wait_seconds=0.01, max_wait_seconds=0.05)
CONTACTS = ActivationSpec(
    "sg",
    "customer_id",
    match={"email": "email"},
    mapping={"first_name": "first_name", "tier": "loyalty_tier", "ltv": "ltv"},
)
MEMBERS = ActivationSpec("sg", "customer_id", match={"email": "email"})


@pytest.fixture
def sendgrid():
    with SendGridFake(KEY, reset_seconds=0.05) as fake:
        yield fake


def destination(fake: SendGridFake, service: str = "attributes", **settings) -> SendGrid:
    raw = {
        "service": service,
        "api_key": KEY,
        "base_url": fake.url,
        "poll_interval_seconds": 0.01,
        **settings,
    }
    return built("sendgrid", SendGrid, raw, "sg")


def customers(ids: list[int], **overrides) -> pa.RecordBatch:
    columns = {
        "customer_id": ids,
        "email": [f"Customer{i}@Example.com " for i in ids],
        "first_name": [f"Name{i}" for i in ids],
        "tier": ["gold" for _ in ids],
        "ltv": [100 * i for i in ids],
    }
    columns.update(overrides)
    return pa.record_batch(columns)


def key_only_in_header(fake: SendGridFake) -> bool:
    for r in fake.requests:
        assert r.headers.get("authorization") == f"Bearer {KEY}"
        assert KEY not in r.raw_body.decode() and KEY not in r.path
        assert "@" not in r.path and "@" not in json.dumps(r.query)  # e-mails only in bodies
    return True


def test_an_upsert_job_sets_reserved_and_custom_fields_by_id_and_is_polled(sendgrid):
    sendgrid.add_contact("customer2@example.com", first_name="Old", last_name="Kept")
    result = deliver(destination(sendgrid), CONTACTS,
                     {"upsert": [customers([1, 2], tier=["gold", None])]}, InMemoryJournal())  # fmt: skip
    assert (result.accepted, result.rejected) == (2, 0)
    assert {e: c.fields for e, c in sendgrid.contacts.items()} == {
        "customer2@example.com": {"first_name": "Name2", "last_name": "Kept"},
        "customer1@example.com": {"first_name": "Name1"},
    }
    assert sendgrid.custom("customer1@example.com") == {"loyalty_tier": "gold", "ltv": 100}
    assert sendgrid.custom("customer2@example.com") == {"ltv": 200}  # the NULL tier was left out
    (job,) = sendgrid.jobs
    assert [(r.method, r.path) for r in sendgrid.requests] == [
        ("GET", "/marketing/field_definitions"),
        ("PUT", "/marketing/contacts"),
        ("GET", f"/marketing/contacts/imports/{job}"),
        ("GET", f"/marketing/contacts/imports/{job}"),
    ]
    assert sendgrid.requests[1].json == {"contacts": [
        {"email": "customer1@example.com", "first_name": "Name1", "custom_fields": {"e1_T": "gold", "e2_N": 100}},
        {"email": "customer2@example.com", "first_name": "Name2", "custom_fields": {"e2_N": 200}},
    ]}  # fmt: skip
    assert key_only_in_header(sendgrid)


def test_contacts_the_errors_file_names_are_rejected_and_sent_by_the_next_sync(sendgrid):
    sendgrid.fail_emails("email is on the global suppression list", "customer2@example.com")
    journal = InMemoryJournal()
    result = deliver(destination(sendgrid), CONTACTS, {"upsert": [customers([1, 2, 3])]}, journal)
    assert journal.rejections == [
        ("2", "upsert", "SendGrid's contacts job reported: email is on the global suppression list")
    ]
    assert sorted(journal.acknowledged_keys["upsert"]) == ["1", "3"]
    assert result.reasons == {"contacts job error": 1}
    assert sorted(sendgrid.contacts) == ["customer1@example.com", "customer3@example.com"]
    assert (
        deliver(destination(sendgrid), CONTACTS, {"upsert": [customers([2])]}, InMemoryJournal()).accepted
        == 1
    )
    assert "customer2@example.com" in sendgrid.contacts


def test_a_mapped_name_that_is_no_field_of_the_account_stops_before_anything_is_sent(sendgrid):
    spec = ActivationSpec("sg", "customer_id", match={"email": "email"}, mapping={"tier": "loyalty"})
    with pytest.raises(PlatformConfigError) as info:
        deliver(destination(sendgrid), spec, {"upsert": [customers([1])]}, InMemoryJournal())
    assert str(info.value).startswith(
        "destination 'sg' (sendgrid): mapping: 'loyalty' is not a writable SendGrid field; allowed: a reserved "
        "field (first_name, last_name,"
    )
    assert [r.method for r in sendgrid.requests] == ["GET"]


def test_mirror_deletes_the_contacts_that_left_through_a_deletion_job(sendgrid):
    for i in range(1, 151):
        sendgrid.add_contact(f"customer{i}@example.com")
    result = deliver(destination(sendgrid), MEMBERS, {"delete": [customers(list(range(1, 121)) + [999])]},
                     InMemoryJournal())  # fmt: skip
    assert result.accepted == 121  # customer999 is no SendGrid contact: done
    assert sorted(sendgrid.contacts) == sorted(f"customer{i}@example.com" for i in range(121, 151))
    searches = [
        len(r.json["emails"]) for r in sendgrid.requests if r.path == "/marketing/contacts/search/emails"
    ]
    assert searches == [100, 21]
    deletes = [r.query["ids"].count(",") + 1 for r in sendgrid.requests if r.method == "DELETE"]
    assert deletes == [100, 20]
    assert {j.job_type: j.status for j in sendgrid.jobs.values()} == {"delete": "completed"}
    assert key_only_in_header(sendgrid)


def test_a_429_storm_waits_for_x_ratelimit_reset(sendgrid):
    sendgrid.throttle(4)
    result = deliver(
        destination(sendgrid), CONTACTS, {"upsert": [customers([1])]}, InMemoryJournal(), retry=FAST
    )
    assert result.accepted == 1 and result.retries == 4
    assert [s for _, _, s in sendgrid.answers][:5] == [429, 429, 429, 429, 200]


def test_a_wrong_key_stops_at_once_with_sendgrids_message(sendgrid):
    platform = build_platform("sendgrid", {"service": "attributes", "api_key": "SG.nope", "base_url": sendgrid.url},
                              destination="sg")  # fmt: skip
    with pytest.raises(PlatformAuthError) as info:
        deliver(platform, CONTACTS, {"upsert": [customers([1])]}, InMemoryJournal())
    assert str(info.value) == (
        "destination 'sg' (sendgrid): the platform refused the credentials (HTTP 401): authorization required"
    )


def test_list_members_are_added_with_list_ids_and_removed_by_contact_id(sendgrid):
    sendgrid.add_contact("customer1@example.com", first_name="Kept")
    platform = destination(sendgrid, "audiences", audience={"name": "VIP Europe"})
    assert (
        deliver(platform, MEMBERS, {"add": [customers(list(range(1, 251)))]}, InMemoryJournal()).accepted
        == 250
    )
    list_id = sendgrid.list_named("VIP Europe")
    assert sendgrid.members(list_id) == {f"customer{i}@example.com" for i in range(1, 251)}
    assert sendgrid.contacts["customer1@example.com"].fields == {
        "first_name": "Kept"
    }  # e-mail only: untouched
    put = next(r.json for r in sendgrid.requests if r.method == "PUT")
    assert put["list_ids"] == [list_id] and put["contacts"][0] == {"email": "customer1@example.com"}
    removed = deliver(
        platform, MEMBERS, {"remove": [customers(list(range(1, 121)) + [999])]}, InMemoryJournal()
    )
    assert removed.accepted == 121
    assert sendgrid.members(list_id) == {f"customer{i}@example.com" for i in range(121, 251)}
    assert len(sendgrid.contacts) == 250  # removed from the list, kept in the account
    assert key_only_in_header(sendgrid)


def test_preview_masks_identifiers_and_sends_nothing(sendgrid):
    shown = preview(destination(sendgrid), CONTACTS, {"upsert": [customers([1])]})
    assert shown[0].url == f"{sendgrid.url}/marketing/contacts"
    assert shown[0].body == {"contacts": [{"email": "c***@e***", "first_name": "Name1", "custom_fields": {
        "<id of custom field 'loyalty_tier'>": "gold", "<id of custom field 'ltv'>": 100}}]}  # fmt: skip
    shown = preview(destination(sendgrid, "audiences", audience={"id": "4f1c-77"}), MEMBERS,
                    {"remove": [customers([1, 2])]})  # fmt: skip
    assert shown[0].body == {"emails": ["c***@e***", "c***@e***"]}
    assert sendgrid.requests == []


def test_settings_errors_name_the_key_and_what_is_allowed():
    with pytest.raises(PlatformConfigError) as info:
        build_platform("sendgrid", {"service": "attributes", "api_key": KEY, "audience": {"name": "VIP"}},
                       destination="sg")  # fmt: skip
    assert str(info.value) == (
        "destinations.sg.audience: found a list; allowed only with service: audiences (service is attributes)"
    )
    with pytest.raises(PlatformConfigError) as info:
        build_platform("sendgrid", {"service": "events", "api_key": KEY}, destination="sg")
    assert (
        str(info.value)
        == "destinations.sg.service: Input should be 'attributes' or 'audiences' (found 'events')"
    )


def test_validate_connect_checks_the_key_the_fields_and_the_list(sendgrid):
    assert validate_connection(destination(sendgrid), CONTACTS) == []
    spec = ActivationSpec("sg", "customer_id", match={"email": "email"},
                          mapping={"tier": "loyalty_teir", "seen": "created_at"})  # fmt: skip
    assert validate_connection(destination(sendgrid), spec) == [
        "mapping.tier: no field 'loyalty_teir' in SendGrid contacts; did you mean 'loyalty_tier'?",
        "mapping.seen: field 'created_at' of SendGrid contacts is read-only",
    ]
    assert validate_connection(destination(sendgrid, "audiences", audience={"id": "4f1c-77"}), MEMBERS) == [
        "destination 'sg' (sendgrid): reading SendGrid list 4f1c-77 failed with HTTP 404: id: list ID does not exist"
    ]


def test_contacts_follow_the_segment_through_the_dagster_job_under_mirror(
    request, tmp_path: Path, monkeypatch
):
    fake = SendGridFake(KEY, reset_seconds=0.05)
    destination_yaml = (f"sg:\n  type: sendgrid\n  service: attributes\n  api_key: {{env: SENDGRID_KEY}}\n"
                        f"  poll_interval_seconds: 0.01\n  base_url: {fake.url}\n")  # fmt: skip
    activations = ("to_sg:\n  segment: big\n  destination: sg\n  match: {email: email}\n"
                   "  mapping: {first_name: first_name, ltv: ltv}\n  sync_mode: mirror\n  max_rejected_pct: 50\n")  # fmt: skip
    with crm_project(request, tmp_path, monkeypatch, fake, ("SENDGRID_KEY", KEY), destination_yaml,
                     activations) as env:  # fmt: skip
        fake.fail_emails("email is on the global suppression list", "cle@example.com")
        fake.throttle(2)
        assert run_sync_job(env.defs, env.instance, "to_sg").success
        assert {e: (c.fields, fake.custom(e)) for e, c in fake.contacts.items()} == {
            "bob@example.com": ({"first_name": "Bob"}, {"ltv": 900}),
            "dan@example.com": ({"first_name": "Dan"}, {"ltv": 700})}  # fmt: skip

        # Cle (reported last time) goes again; Ann enters; Dan's ltv (mapped) changes; Bob leaves (deleted).
        run(env.wh, "update raw.customers set ltv = 800 where customer_id = 1")
        run(env.wh, "update raw.customers set ltv = 650 where customer_id = 4")
        run(env.wh, "update raw.customers set ltv = 10 where customer_id = 2")
        assert run_sync_job(env.defs, env.instance, "to_sg").success
        assert {e: fake.custom(e) for e in fake.contacts} == {
            "dan@example.com": {"ltv": 650}, "cle@example.com": {"ltv": 600.1}, "ann@example.com": {"ltv": 800}}  # fmt: skip
        for entry in logged(env.instance):
            assert KEY not in entry
        assert key_only_in_header(fake)


def test_a_list_follows_the_segment_through_the_dagster_job(request, tmp_path: Path, monkeypatch, capsys):
    with ad_project(request, tmp_path, monkeypatch, lambda: SendGridFake(KEY, reset_seconds=0.05), attr="sendgrid",
                    type_="sendgrid", destination="sg", activation="to_sg", fields={"poll_interval_seconds": "0.01"},
                    secrets={"api_key": ("SENDGRID_KEY", KEY)}) as env:  # fmt: skip
        assert main(["--project", str(tmp_path), "validate", "--connect"]) == 0
        assert main(["--project", str(tmp_path), "preview", "to_sg"]) == 0
        out = capsys.readouterr().out
        assert "bob@example.com" not in out and KEY not in out

        env.sendgrid.throttle(3)
        assert run_sync_job(env.defs, env.instance, "to_sg").success
        list_id = env.sendgrid.list_named("VIP Europe")
        assert env.sendgrid.members(list_id) == {f"{n}@example.com" for n in ("bob", "cle", "dan")}

        change_customers(env.wh)
        assert run_sync_job(env.defs, env.instance, "to_sg").success
        assert env.sendgrid.members(list_id) == {f"{n}@example.com" for n in ("robert", "cle", "ann")}

        env.sendgrid.contacts["cle@example.com"].list_ids.clear()
        sync_steps(env, "to_sg", full_refresh=True)
        assert env.sendgrid.members(list_id) == {f"{n}@example.com" for n in ("robert", "cle", "ann")}
        for entry in logged(env.instance):
            assert KEY not in entry
        assert key_only_in_header(env.sendgrid)


def test_the_readme_sendgrid_examples_load(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SENDGRID_API_KEY", KEY)
    examples = readme_examples("**SendGrid (`type: sendgrid`).**")
    assert len(examples) == 2
    for n, activation in enumerate(example_activations(tmp_path, examples)):
        assert activation.platform_service == ("attributes", "audiences")[n]


def test_a_sync_killed_while_its_job_runs_is_recovered_by_the_next_with_nothing_lost(tmp_path: Path):
    cli = CliSync(tmp_path, "to_sg", {"SENDGRID_KEY": KEY})
    cli.seed(1500, None)
    with SendGridFake(KEY, latency=0.1) as fake:
        list_id = fake.create_list("VIP Europe")
        cli.write(
            destinations=[(f"sg:\n  type: sendgrid\n  service: audiences\n  poll_interval_seconds: 0.5\n"
                           f"  api_key: {{env: SENDGRID_KEY}}\n  base_url: {fake.url}\n")],
            activations='to_sg:\n  segment: big\n  destination: sg\n  audience: {name: "VIP Europe"}\n'
                        "  identifiers: {email: email}\n")  # fmt: skip
        # One upsert job of 1,500 contacts: killed after its first poll, while the job is still pending.
        cli.kill_when(lambda: any(j.polls for j in fake.jobs.values()), settle=0.3)
        (killed,) = fake.jobs.values()
        assert killed.status == "pending" and fake.members(list_id) == set()

        cli.recover()
        assert fake.members(list_id) == {f"c{i}@example.com" for i in range(1, 1501)}
        assert len(fake.contacts) == 1500
        assert key_only_in_header(fake)
    assert cli.leftovers() == []
    assert not cli.in_home(KEY)
