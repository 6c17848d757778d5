"""The Brevo adapter through a fake Brevo built from Brevo's documentation (tests/fakes/brevo.py): what the
account holds afterwards (contacts and their attributes, list members), the import processes and their
reports, and that the API key never shows anywhere but in the api-key header."""

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
    load_example,
    logged,
    readme_examples,
)
from fakes.brevo import BrevoFake
from platform_scenarios import run, run_sync_job, sync_steps

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
from dinmo_dagster.platforms.brevo import Brevo

KEY = "xkeysib-4b8a9c610e7d2f8a1b45c3f9c2a715d4e-Zq81"
FAST = RetryPolicy(max_attempts=3, initial_wait_seconds=0.01, max_wait_seconds=0.05)
CONTACTS = ActivationSpec(
    "crm",
    "customer_id",
    match={"email": "email"},
    mapping={"first_name": "FIRSTNAME", "last_name": "LASTNAME"},
)
MEMBERS = ActivationSpec("crm", "customer_id", match={"email": "email"})


@pytest.fixture
def brevo():
    with BrevoFake(KEY, reset_seconds="0.05") as fake:
        yield fake


def destination(fake: BrevoFake, service: str = "attributes", **settings) -> Brevo:
    raw = {
        "service": service,
        "api_key": KEY,
        "base_url": fake.url,
        "poll_interval_seconds": 0.01,
        **settings,
    }
    return built("brevo", Brevo, raw)


def customers(ids: list[int], **overrides) -> pa.RecordBatch:
    columns = {
        "customer_id": ids,
        "email": [f"Customer{i}@Example.com " for i in ids],
        "first_name": [f"Name{i}" for i in ids],
        "last_name": [f"Last{i}" for i in ids],
    }
    columns.update(overrides)
    return pa.record_batch(columns)


def key_only_in_header(fake: BrevoFake) -> bool:
    for r in fake.requests:
        assert r.headers.get("api-key") == KEY
        assert KEY not in r.raw_body.decode() and KEY not in r.path
    return True


def test_an_import_upserts_the_contacts_and_is_polled_until_completed(brevo):
    brevo.add_contact("customer2@example.com", FIRSTNAME="Old", LASTNAME="Kept")
    journal = InMemoryJournal()
    result = deliver(
        destination(brevo),
        CONTACTS,
        {"upsert": [customers([1, 2, 3], last_name=["Last1", None, "Last3"])]},
        journal,
    )

    assert {c.email: c.attributes for c in brevo.contacts.values()} == {
        "customer1@example.com": {"FIRSTNAME": "Name1", "LASTNAME": "Last1"},
        "customer2@example.com": {"FIRSTNAME": "Name2"},  # the NULL erased LASTNAME (emptyContactsAttributes)
        "customer3@example.com": {"FIRSTNAME": "Name3", "LASTNAME": "Last3"},
    }
    body = brevo.requests[0].json
    assert body == {
        "jsonBody": [
            {"email": "customer1@example.com", "attributes": {"FIRSTNAME": "Name1", "LASTNAME": "Last1"}},
            {"email": "customer2@example.com", "attributes": {"FIRSTNAME": "Name2", "LASTNAME": ""}},
            {"email": "customer3@example.com", "attributes": {"FIRSTNAME": "Name3", "LASTNAME": "Last3"}},
        ],
        "updateExistingContacts": True,
        "emptyContactsAttributes": True,
        "disableNotification": True,
    }
    (process,) = brevo.processes
    assert [r.path for r in brevo.requests[1:]] == [
        f"/processes/{process}"
    ] * 2  # queued, in_process, completed
    assert (result.accepted, result.rejected) == (3, 0)
    assert key_only_in_header(brevo)


def test_insert_leaves_existing_contacts_alone_and_skip_never_erases(brevo):
    brevo.add_contact("customer1@example.com", FIRSTNAME="Kept")
    spec = ActivationSpec(
        "crm",
        "customer_id",
        match={"email": "email"},
        mapping={"first_name": "FIRSTNAME", "last_name": "LASTNAME"},
        null_values="skip",
    )
    deliver(
        destination(brevo), spec, {"insert": [customers([1, 2], last_name=[None, None])]}, InMemoryJournal()
    )
    assert {c.email: c.attributes for c in brevo.contacts.values()} == {
        "customer1@example.com": {"FIRSTNAME": "Kept"},
        "customer2@example.com": {"FIRSTNAME": "Name2"},
    }
    assert brevo.requests[0].json["updateExistingContacts"] is False
    assert brevo.requests[0].json["emptyContactsAttributes"] is False


def test_rows_the_import_report_names_are_rejected_and_the_next_sync_sends_them(brevo):
    brevo.fail_emails("Email address is blocklisted", "customer2@example.com")
    journal = InMemoryJournal()
    result = deliver(destination(brevo), CONTACTS, {"upsert": [customers([1, 2, 3])]}, journal)
    assert journal.rejections == [
        ("2", "upsert", "Brevo's import report invalid_emails: Email address is blocklisted")
    ]
    assert sorted(journal.acknowledged_keys["upsert"]) == ["1", "3"]
    assert result.reasons == {"invalid_emails": 1}
    assert (
        deliver(destination(brevo), CONTACTS, {"upsert": [customers([2])]}, InMemoryJournal()).accepted == 1
    )
    assert "customer2@example.com" in brevo.contacts


def test_a_429_storm_waits_x_sib_ratelimit_reset(brevo):
    brevo.throttle(4)
    result = deliver(
        destination(brevo), CONTACTS, {"upsert": [customers([1])]}, InMemoryJournal(), retry=FAST
    )
    assert result.accepted == 1 and result.retries == 4
    assert [s for _, _, s in brevo.answers][:5] == [429, 429, 429, 429, 202]


def test_a_wrong_key_stops_at_once_with_brevos_message(brevo):
    platform = build_platform(
        "brevo", {"service": "attributes", "api_key": "nope", "base_url": brevo.url}, destination="crm"
    )
    with pytest.raises(PlatformAuthError) as info:
        deliver(platform, CONTACTS, {"upsert": [customers([1])]}, InMemoryJournal())
    assert str(info.value) == (
        "destination 'crm' (brevo): the platform refused the credentials (HTTP 401): Key not found"
    )


def test_list_members_are_added_150_a_request_and_removed(brevo):
    for i in range(1, 201):
        brevo.add_contact(f"customer{i}@example.com")
    platform = destination(brevo, "audiences", audience={"name": "VIP Europe"}, folder_id=1)
    journal = InMemoryJournal()
    result = deliver(platform, MEMBERS, {"add": [customers(list(range(1, 202)))]}, journal)
    blist = brevo.list_named("VIP Europe")
    assert blist.members == {f"customer{i}@example.com" for i in range(1, 201)}
    sizes = sorted(len(r.json["emails"]) for r in brevo.requests if r.path.endswith("/contacts/add"))
    assert sizes == [51, 150]
    # customer201 is no Brevo contact: rejected, sent again by the next sync
    assert journal.rejections == [
        (
            "201",
            "add",
            (
                "no Brevo contact has this e-mail (a list add creates none: an "
                "attributes activation creates it)"
            ),
        )
    ]
    assert result.accepted == 200
    removed = deliver(platform, MEMBERS, {"remove": [customers([1, 2, 999])]}, InMemoryJournal())
    assert removed.accepted == 3 and "customer1@example.com" not in blist.members


def test_preview_masks_identifiers_and_sends_nothing(brevo):
    shown = preview(
        destination(brevo, "audiences", audience={"id": 7}), MEMBERS, {"add": [customers([1, 2])]}
    )
    assert brevo.requests == []
    assert shown[0].url == f"{brevo.url}/contacts/lists/7/contacts/add"
    assert shown[0].body == {"emails": ["c***@e***", "c***@e***"]}


def test_settings_errors_name_the_key_and_what_is_allowed():
    with pytest.raises(PlatformConfigError) as info:
        build_platform(
            "brevo", {"service": "audiences", "api_key": KEY, "audience": {"name": "VIP"}}, destination="crm"
        )
    assert str(info.value) == (
        "destinations.crm.folder_id: is required to create the list by name (Brevo creates "
        "lists in a folder); allowed: the id of a contacts folder, or audience: {id: ...}"
    )
    with pytest.raises(PlatformConfigError) as info:
        build_platform("brevo", {"service": "attributes", "api_key": KEY, "folder_id": 3}, destination="crm")
    assert str(info.value) == "destinations.crm.folder_id: found 3; allowed only with service: audiences"


def test_validate_connect_checks_the_key_and_the_mapped_attributes(brevo):
    assert validate_connection(destination(brevo), CONTACTS) == []
    spec = ActivationSpec("crm", "customer_id", match={"email": "email"}, mapping={"first_name": "FIRSTNAM"})
    assert validate_connection(destination(brevo), spec) == [
        "mapping.first_name: no field 'FIRSTNAM' in Brevo contacts; did you mean 'FIRSTNAME', 'LASTNAME'?"
    ]
    assert validate_connection(destination(brevo, "audiences", audience={"id": 99}), MEMBERS) == [
        "destination 'crm' (brevo): reading Brevo list 99 failed with HTTP 404: List ID does not exist"
    ]


def test_a_brevo_list_follows_the_segment_through_the_dagster_job(
    request, tmp_path: Path, monkeypatch, capsys
):
    def fake() -> BrevoFake:
        made = BrevoFake(KEY, reset_seconds="0.05")
        for name in ("ann", "bob", "cle", "dan", "robert"):
            made.add_contact(f"{name}@example.com")
        return made

    with ad_project(
        request,
        tmp_path,
        monkeypatch,
        fake,
        attr="brevo",
        type_="brevo",
        destination="bv",
        activation="to_brevo",
        fields={"folder_id": "1"},
        secrets={"api_key": ("BREVO_KEY", KEY)},
    ) as env:
        assert main(["--project", str(tmp_path), "validate", "--connect"]) == 0
        assert main(["--project", str(tmp_path), "preview", "to_brevo"]) == 0
        out = capsys.readouterr().out
        assert "bob@example.com" not in out and KEY not in out

        env.brevo.throttle(3)
        assert run_sync_job(env.defs, env.instance, "to_brevo").success
        blist = env.brevo.list_named("VIP Europe")
        assert blist.members == {f"{n}@example.com" for n in ("bob", "cle", "dan")}

        change_customers(env.wh)
        assert run_sync_job(env.defs, env.instance, "to_brevo").success
        assert blist.members == {f"{n}@example.com" for n in ("robert", "cle", "ann")}

        blist.members.discard("cle@example.com")
        sync_steps(env, "to_brevo", full_refresh=True)
        assert blist.members == {f"{n}@example.com" for n in ("robert", "cle", "ann")}
        for entry in logged(env.instance):
            assert KEY not in entry
        assert key_only_in_header(env.brevo)
        assert "example.com" not in json.dumps([r.path for r in env.brevo.requests])


def test_the_readme_brevo_examples_load(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("BREVO_API_KEY", KEY)
    examples = readme_examples("**Brevo (`type: brevo`).**")
    assert len(examples) == 2
    for n, activation in enumerate(example_activations(tmp_path, examples)):
        assert activation.platform_service == ("attributes", "audiences")[n]


def test_contacts_follow_the_segment_through_the_dagster_job_a_reported_one_going_with_the_next_sync(
    request, tmp_path: Path, monkeypatch
):
    fake = BrevoFake(KEY, reset_seconds="0.05")
    destination_yaml = (
        f"bv:\n  type: brevo\n  service: attributes\n  api_key: {{env: BREVO_KEY}}\n"
        f"  poll_interval_seconds: 0.01\n  base_url: {fake.url}\n"
    )
    activations = (
        "to_bv:\n  segment: big\n  destination: bv\n  match: {email: email}\n  mapping: {first_name: FIRSTNAME}\n"
        "  sync_mode: insert\n  max_rejected_pct: 50\n"
    )
    with crm_project(
        request, tmp_path, monkeypatch, fake, ("BREVO_KEY", KEY), destination_yaml, activations
    ) as env:
        fake.add_contact("dan@example.com", FIRSTNAME="Daniel")  # insert leaves an existing contact alone
        fake.fail_emails("Email address is blocklisted", "cle@example.com")
        fake.throttle(2)
        assert run_sync_job(env.defs, env.instance, "to_bv").success
        assert {c.email: c.attributes for c in fake.contacts.values()} == {
            "dan@example.com": {"FIRSTNAME": "Daniel"}, "bob@example.com": {"FIRSTNAME": "Bob"}}  # fmt: skip

        # Cle (reported last time) goes again; Ann enters; Dan's unmapped ltv change sends nothing for him.
        run(env.wh, "update raw.customers set ltv = 800 where customer_id = 1")
        run(env.wh, "update raw.customers set ltv = 650 where customer_id = 4")
        assert run_sync_job(env.defs, env.instance, "to_bv").success
        imports = [r.json for r in fake.requests if r.path == "/contacts/import"]
        assert sorted(row["email"] for row in imports[-1]["jsonBody"]) == [
            "ann@example.com",
            "cle@example.com",
        ]
        assert {c.email: c.attributes for c in fake.contacts.values()} == {
            "dan@example.com": {"FIRSTNAME": "Daniel"}, "bob@example.com": {"FIRSTNAME": "Bob"},
            "cle@example.com": {"FIRSTNAME": "Cle"}, "ann@example.com": {"FIRSTNAME": "Ann"}}  # fmt: skip
        for entry in logged(env.instance):
            assert KEY not in entry
        assert key_only_in_header(fake)


def test_a_killed_sync_to_a_list_is_recovered_by_the_next_with_nothing_lost(tmp_path: Path):
    cli = CliSync(tmp_path, "to_bv", {"BREVO_KEY": KEY})
    cli.seed(600)
    with BrevoFake(KEY, latency=0.2) as fake:
        for i in range(1, 601):
            fake.add_contact(f"c{i}@example.com")
        blist = fake.create_list("VIP Europe")
        cli.write(
            destinations=[(f"bv:\n  type: brevo\n  service: audiences\n  max_concurrency: 1\n  folder_id: 1\n"
                          f"  api_key: {{env: BREVO_KEY}}\n  base_url: {fake.url}\n")],
            activations='to_bv:\n  segment: big\n  destination: bv\n  audience: {name: "VIP Europe"}\n'
                        "  identifiers: {email: email}\n")  # fmt: skip
        # 4 requests of at most 150 e-mails, one at a time: killed when the second arrives.
        add = f"/contacts/lists/{blist.id}/contacts/add"
        # settle: the request in flight at the kill is answered
        cli.kill_when(lambda: sum(1 for r in fake.requests if r.path == add) >= 2, settle=0.5)
        assert 0 < len(blist.members) < 600

        cli.recover()
        assert blist.members == {f"c{i}@example.com" for i in range(1, 601)}
        assert all(len(r.json["emails"]) <= 150 for r in fake.requests if r.path == add)
        assert key_only_in_header(fake)
    assert cli.leftovers() == []
    assert not cli.in_home(KEY)


def test_sync_modes_the_import_cannot_honour_are_refused_when_the_project_loads(
    tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("BREVO_API_KEY", KEY)
    example = (
        "destinations:\n  bv: {type: brevo, service: attributes, api_key: {env: BREVO_API_KEY}}\n"
        "activations:\n  to_bv: {segment: vip_europe, destination: bv, match: {email: email}, "
        "mapping: {first_name: FIRSTNAME}, sync_mode: update}\n"
    )
    with pytest.raises(ProjectError) as info:
        load_example(tmp_path, example)
    assert str(info.value).splitlines()[1].strip() == (
        "- dinmo.yaml: activations.to_bv.sync_mode: found 'update'; allowed for brevo attributes: upsert, insert"
    )
