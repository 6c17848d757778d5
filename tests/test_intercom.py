"""The Intercom adapter through a fake Intercom workspace built from Intercom's OpenAPI description and
reference (tests/fakes/intercom.py): what the workspace holds afterwards (contacts, their attributes and
tags, companies), and that the token never shows anywhere but in the Authorization header."""

from __future__ import annotations

import datetime as dt
import decimal
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
from fakes.intercom import IntercomFake
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
from dinmo_dagster.platforms.intercom import Intercom

TOKEN = "dG9rOmIzZjY0YjE2XzQ1YTFfNDk5Y184ZjY0XzFhMmIzYzRkNWU2ZjoxOjA="
FAST = RetryPolicy(max_attempts=5, initial_wait_seconds=0.01, max_wait_seconds=0.05)
CONTACTS = ActivationSpec(
    "crm", "customer_id", match={"email": "email"}, mapping={"first_name": "name", "plan": "plan"}
)
MEMBERS = ActivationSpec("crm", "customer_id", match={"email": "email"})


@pytest.fixture
def intercom():
    with IntercomFake(TOKEN) as fake:
        yield fake


def destination(fake: IntercomFake, service: str = "attributes", **settings) -> Intercom:
    raw = {"service": service, "access_token": TOKEN, "base_url": fake.url, **settings}
    return built("intercom", Intercom, raw)


def customers(ids: list[int], **overrides) -> pa.RecordBatch:
    columns = {
        "customer_id": ids,
        "email": [f"Customer{i}@Example.com " for i in ids],
        "first_name": [f"Name{i}" for i in ids],
        "plan": ["gold"] * len(ids),
    }
    columns.update(overrides)
    return pa.record_batch(columns)


def token_only_in_header(fake: IntercomFake) -> bool:
    for r in fake.requests:
        assert (
            r.headers.get("authorization") == f"Bearer {TOKEN}"
            and r.headers.get("intercom-version") == "2.14"
        )
        assert TOKEN not in r.raw_body.decode() and TOKEN not in r.path
    return True


def people(fake: IntercomFake) -> dict[str, tuple[str | None, dict]]:
    return {c.email or "": (c.fields.get("name"), c.custom_attributes) for c in fake.live()}


def test_upsert_searches_once_then_updates_found_contacts_and_creates_the_others(intercom):
    old = intercom.add_contact("customer2@example.com", plan="silver")
    intercom.add_contact("customer3@example.com", role="lead")  # a lead of the same e-mail is another contact
    result = deliver(destination(intercom), CONTACTS, {"upsert": [customers([1, 2, 3])]}, InMemoryJournal())
    assert result.accepted == 3
    assert {
        c.email: (c.fields.get("name"), c.custom_attributes) for c in intercom.live() if c.role == "user"
    } == {
        "customer2@example.com": ("Name2", {"plan": "gold"}),
        "customer1@example.com": ("Name1", {"plan": "gold"}),
        "customer3@example.com": ("Name3", {"plan": "gold"}),
    }
    assert [c.fields for c in intercom.live() if c.role == "lead"] == [{}]  # the lead is left alone
    assert intercom.by_email("customer2@example.com") is old
    calls = [(r.method, r.path) for r in intercom.requests]
    assert calls[0] == ("POST", "/contacts/search") and calls.count(("POST", "/contacts/search")) == 1
    assert intercom.requests[0].json == {
        "query": {"operator": "AND", "value": [
            {"field": "email", "operator": "IN",
             "value": ["customer1@example.com", "customer2@example.com", "customer3@example.com"]},
            {"field": "role", "operator": "=", "value": "user"}]},
        "pagination": {"per_page": 150},
    }  # fmt: skip
    assert sorted(calls[1:]) == [("POST", "/contacts"), ("POST", "/contacts"), ("PUT", f"/contacts/{old.id}")]
    users = [c for c in intercom.live() if c.role == "user"]
    assert sorted(c.email for c in users) == [f"customer{i}@example.com" for i in (1, 2, 3)]
    assert token_only_in_header(intercom)


def test_update_insert_and_mirror_archive(intercom):
    kept = intercom.add_contact("customer1@example.com", plan="silver")
    journal = InMemoryJournal()
    deliver(destination(intercom), CONTACTS, {"update": [customers([1, 2])]}, journal)
    assert people(intercom) == {"customer1@example.com": ("Name1", {"plan": "gold"})}  # 2 is not created
    assert sorted(journal.acknowledged_keys["update"]) == ["1", "2"]
    deliver(destination(intercom), CONTACTS, {"insert": [customers([1, 2], first_name=["New", "Two"])]},
            InMemoryJournal())  # fmt: skip
    assert people(intercom) == {"customer1@example.com": ("Name1", {"plan": "gold"}),
                                "customer2@example.com": ("Two", {"plan": "gold"})}  # fmt: skip
    result = deliver(destination(intercom), CONTACTS, {"delete": [customers([1, 9])]}, InMemoryJournal())
    assert result.accepted == 2 and kept.archived
    assert list(people(intercom)) == ["customer2@example.com"]


def test_a_contact_search_does_not_see_yet_is_updated_after_the_409(intercom):
    intercom.search_delay = 60.0
    deliver(destination(intercom), CONTACTS, {"upsert": [customers([1])]}, InMemoryJournal())
    result = deliver(destination(intercom), CONTACTS, {"upsert": [customers([1], plan=["platinum"])]},
                     InMemoryJournal())  # fmt: skip
    assert result.accepted == 1
    assert people(intercom) == {"customer1@example.com": ("Name1", {"plan": "platinum"})}
    assert [s for m, p, s in intercom.answers if p == "/contacts"] == [200, 409]


def test_an_unknown_custom_attribute_rejects_the_record_with_intercoms_message(intercom):
    spec = ActivationSpec("crm", "customer_id", match={"email": "email"}, mapping={"plan": "tier"})
    journal = InMemoryJournal()
    result = deliver(destination(intercom), spec, {"upsert": [customers([1])]}, journal)
    assert journal.rejections == [
        ("1", "upsert", "Custom attribute 'tier' does not exist (parameter_not_found)")
    ]
    assert result.reasons == {"parameter_not_found": 1}


def test_values_and_consent_as_intercom_takes_them(intercom):
    intercom.contact_attributes.append("ltv")
    spec = ActivationSpec(
        "crm", "customer_id", match={"external_id": "customer_id"},
        mapping={"since": "signed_up_at", "ltv": "ltv", "unsub": "unsubscribed_from_emails"},
    )  # fmt: skip
    batch = pa.record_batch({
        "customer_id": [7, 8],
        "since": [dt.datetime(2024, 5, 1, 9, 30), None],
        "ltv": pa.array([decimal.Decimal("900.50"), None], pa.decimal128(10, 2)),
        "unsub": [True, None],
    })  # fmt: skip
    deliver(destination(intercom), spec, {"upsert": [batch]}, InMemoryJournal())
    creates = [r.json for r in intercom.requests if r.path == "/contacts"]
    assert creates == [
        {"role": "user", "external_id": "7", "signed_up_at": 1714555800, "unsubscribed_from_emails": True,
         "custom_attributes": {"ltv": 900.5}},
        # a NULL consent is never sent: the contact is not (re-)subscribed
        {"role": "user", "external_id": "8", "signed_up_at": None, "custom_attributes": {"ltv": None}},
    ]  # fmt: skip


def test_companies_are_upserted_by_company_id_and_deleted(intercom):
    spec = ActivationSpec("crm", "account_id", match={"company_id": "account_id"},
                          mapping={"account_name": "name", "tier": "tier"})  # fmt: skip
    batch = pa.record_batch(
        {"account_id": ["a1", "a2"], "account_name": ["Acme", "Beta"], "tier": ["A", "B"]}
    )
    platform = destination(intercom, object="companies")
    assert deliver(platform, spec, {"upsert": [batch]}, InMemoryJournal()).accepted == 2
    assert {c.company_id: (c.fields, c.custom_attributes) for c in intercom.companies.values()} == {
        "a1": ({"name": "Acme"}, {"tier": "A"}), "a2": ({"name": "Beta"}, {"tier": "B"})}  # fmt: skip
    gone = pa.record_batch({"account_id": ["a1", "zz"], "account_name": [None, None], "tier": [None, None]})
    assert deliver(platform, spec, {"delete": [gone]}, InMemoryJournal()).accepted == 2
    assert [c.company_id for c in intercom.companies.values()] == ["a2"]
    with pytest.raises(PlatformConfigError, match="does not support operation 'insert'"):
        deliver(platform, spec, {"insert": [batch]}, InMemoryJournal())


def test_tags_are_added_and_removed_one_request_per_contact(intercom):
    for i in (1, 2):
        intercom.add_contact(f"customer{i}@example.com")
    intercom.add_contact("customer2@example.com", role="lead")  # the lead of that e-mail is tagged too
    platform = destination(intercom, "audiences", audience={"name": "VIP Europe"})
    journal = InMemoryJournal()
    result = deliver(platform, MEMBERS, {"add": [customers([1, 2, 3])]}, journal)
    tag = intercom.tag_named("VIP Europe")
    assert tag is not None and intercom.tagged(tag) == {"customer1@example.com", "customer2@example.com"}
    assert len([c for c in intercom.live() if tag in c.tags]) == 3
    assert journal.rejections == [("3", "add", ("no Intercom contact has this identifier (tagging creates no "
                                               "contact: an attributes activation creates it)"))]  # fmt: skip
    assert result.accepted == 2
    search = next(r for r in intercom.requests if r.path == "/contacts/search")
    assert search.json["query"] == {
        "field": "email", "operator": "IN",
        "value": ["customer1@example.com", "customer2@example.com", "customer3@example.com"]}  # fmt: skip
    removed = deliver(platform, MEMBERS, {"remove": [customers([1, 3])]}, InMemoryJournal())
    assert removed.accepted == 2 and intercom.tagged(tag) == {"customer2@example.com"}
    again = deliver(
        platform, MEMBERS, {"remove": [customers([1])]}, InMemoryJournal()
    )  # no longer tagged: done
    assert again.accepted == 1


def test_a_429_storm_waits_for_x_ratelimit_reset(intercom):
    intercom.throttle(4)
    result = deliver(
        destination(intercom), CONTACTS, {"upsert": [customers([1])]}, InMemoryJournal(), retry=FAST
    )
    assert result.accepted == 1 and result.retries == 4
    assert [s for _, _, s in intercom.answers][:5] == [429, 429, 429, 429, 200]


def test_a_wrong_token_stops_at_once_with_intercoms_message(intercom):
    platform = build_platform("intercom", {"service": "attributes", "access_token": "nope", "base_url": intercom.url},
                              destination="crm")  # fmt: skip
    with pytest.raises(PlatformAuthError) as info:
        deliver(platform, CONTACTS, {"upsert": [customers([1])]}, InMemoryJournal())
    assert str(info.value) == (
        "destination 'crm' (intercom): the platform refused the credentials (HTTP 401): "
        "Access Token Invalid (unauthorized)"
    )


def test_preview_masks_identifiers_and_sends_nothing(intercom):
    shown = preview(
        destination(intercom, "audiences", audience={"id": 81}), MEMBERS, {"add": [customers([1, 2])]}
    )
    assert shown[0].url == f"{intercom.url}/contacts/search"
    assert shown[0].body["query"]["value"] == ["c***@e***", "c***@e***"]
    spec = ActivationSpec("crm", "account_id", match={"company_id": "account_id"})
    gone = preview(destination(intercom, object="companies"), spec,
                   {"delete": [pa.record_batch({"account_id": ["acme-2024"]})]})  # fmt: skip
    assert gone[0].params == {"company_id": "acme***"}
    assert intercom.requests == []


def test_settings_errors_name_the_key_and_what_is_allowed():
    with pytest.raises(PlatformConfigError) as info:
        build_platform("intercom", {"service": "attributes", "access_token": TOKEN, "api_version": "3.0"},
                       destination="crm")  # fmt: skip
    assert str(info.value) == (
        "destinations.crm.api_version: found '3.0'; allowed: 2.7, 2.8, 2.9, 2.10, 2.11, 2.12, 2.13, 2.14"
    )
    with pytest.raises(PlatformConfigError) as info:
        build_platform("intercom", {"service": "audiences", "access_token": TOKEN, "object": "companies"},
                       destination="crm")  # fmt: skip
    assert str(info.value) == (
        "destinations.crm: object: found 'companies'; allowed with service audiences: contacts (tags on contacts)"
    )
    eu = build_platform("intercom", {"service": "attributes", "access_token": TOKEN, "region": "eu"})
    assert eu.base_url == "https://api.eu.intercom.io"
    assert eu.validate_activation({"phone": "phone"}, {"x": "email"}) == [
        "match: found phone; allowed: one of email, external_id",
        "mapping.x: found 'email'; allowed: an attribute (identifiers go in match)",
    ]


def test_validate_connect_checks_the_token_the_tag_and_the_attributes(intercom):
    assert validate_connection(destination(intercom), CONTACTS) == []
    spec = ActivationSpec("crm", "customer_id", match={"email": "email"},
                          mapping={"plan": "plann", "pic": "avatar"})  # fmt: skip
    assert validate_connection(destination(intercom), spec) == [
        "mapping.plan: no field 'plann' in Intercom contacts; did you mean 'plan'?",
        "mapping.pic: field 'avatar' of Intercom contacts is read-only",
    ]
    assert validate_connection(destination(intercom, "audiences", audience={"id": 99}), MEMBERS) == [
        "destination 'crm' (intercom): reading Intercom tag 99 failed with HTTP 404: Resource Not Found (not_found)"
    ]


def test_an_intercom_tag_follows_the_segment_through_the_dagster_job(
    request, tmp_path: Path, monkeypatch, capsys
):
    def fake() -> IntercomFake:
        made = IntercomFake(TOKEN)
        for name in ("ann", "bob", "cle", "dan", "robert"):
            made.add_contact(f"{name}@example.com")
        return made

    with ad_project(
        request, tmp_path, monkeypatch, fake, attr="intercom", type_="intercom", destination="ic",
        activation="to_intercom", fields={}, secrets={"access_token": ("INTERCOM_TOKEN", TOKEN)},
    ) as env:  # fmt: skip
        assert main(["--project", str(tmp_path), "validate", "--connect"]) == 0
        assert main(["--project", str(tmp_path), "preview", "to_intercom"]) == 0
        out = capsys.readouterr().out
        assert "bob@example.com" not in out and TOKEN not in out

        env.intercom.throttle(3)
        assert run_sync_job(env.defs, env.instance, "to_intercom").success
        tag = env.intercom.tag_named("VIP Europe")
        assert env.intercom.tagged(tag) == {f"{n}@example.com" for n in ("bob", "cle", "dan")}

        change_customers(env.wh)  # Dan leaves, Bob becomes robert@example.com, Ann enters
        assert run_sync_job(env.defs, env.instance, "to_intercom").success
        assert env.intercom.tagged(tag) == {f"{n}@example.com" for n in ("robert", "cle", "ann")}

        env.intercom.by_email("cle@example.com").tags.discard(tag)
        sync_steps(env, "to_intercom", full_refresh=True)
        assert env.intercom.tagged(tag) == {f"{n}@example.com" for n in ("robert", "cle", "ann")}
        for entry in logged(env.instance):
            assert TOKEN not in entry
        assert token_only_in_header(env.intercom)


def test_contacts_follow_the_segment_under_mirror_through_the_dagster_job(
    request, tmp_path: Path, monkeypatch
):
    fake = IntercomFake(TOKEN)
    destination_yaml = (f"ic:\n  type: intercom\n  service: attributes\n  access_token: {{env: INTERCOM_TOKEN}}\n"
                        f"  base_url: {fake.url}\n")  # fmt: skip
    activations = (
        "to_ic:\n  segment: big\n  destination: ic\n  match: {email: email}\n  mapping: {first_name: name}\n"
        "  sync_mode: mirror\n"
    )
    with crm_project(request, tmp_path, monkeypatch, fake, ("INTERCOM_TOKEN", TOKEN), destination_yaml,
                     activations) as env:  # fmt: skip
        fake.throttle(2)
        assert run_sync_job(env.defs, env.instance, "to_ic").success
        assert people(fake) == {f"{n.lower()}@example.com": (n, {}) for n in ("Bob", "Cle", "Dan")}

        # Ann enters; Dan leaves (archived); Cle's name changes; Bob's unmapped ltv change sends nothing.
        run(env.wh, "update raw.customers set ltv = 800 where customer_id = 1")
        run(env.wh, "update raw.customers set ltv = 10 where customer_id = 4")
        run(env.wh, "update raw.customers set first_name = 'Cleo' where customer_id = 3")
        run(env.wh, "update raw.customers set ltv = 950 where customer_id = 2")
        before = len(fake.requests)
        assert run_sync_job(env.defs, env.instance, "to_ic").success
        assert people(fake) == {"bob@example.com": ("Bob", {}), "cle@example.com": ("Cleo", {}),
                                "ann@example.com": ("Ann", {})}  # fmt: skip
        searched = [v for r in fake.requests[before:] if r.path == "/contacts/search"
                    for v in r.json["query"]["value"][0]["value"]]  # fmt: skip
        assert sorted(searched) == ["ann@example.com", "cle@example.com", "dan@example.com"]
        for entry in logged(env.instance):
            assert TOKEN not in entry
        assert token_only_in_header(fake)


def test_the_readme_intercom_examples_load(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("INTERCOM_TOKEN", TOKEN)
    examples = readme_examples("**Intercom (`type: intercom`).**")
    assert len(examples) == 3
    for n, activation in enumerate(example_activations(tmp_path, examples)):
        assert activation.platform_service == ("attributes", "attributes", "audiences")[n]


def test_a_killed_sync_to_a_tag_is_recovered_by_the_next_with_nothing_lost(tmp_path: Path):
    cli = CliSync(tmp_path, "to_ic", {"INTERCOM_TOKEN": TOKEN})
    cli.seed(100)
    with IntercomFake(TOKEN, latency=0.01) as fake:
        for i in range(1, 101):
            fake.add_contact(f"c{i}@example.com")
        tag = fake.create_tag("VIP Europe")
        cli.write(
            destinations=[(f"ic:\n  type: intercom\n  service: audiences\n  max_concurrency: 1\n"
                          f"  access_token: {{env: INTERCOM_TOKEN}}\n  base_url: {fake.url}\n")],
            activations='to_ic:\n  segment: big\n  destination: ic\n  audience: {name: "VIP Europe"}\n'
                        "  identifiers: {email: email}\n")  # fmt: skip
        # 2 batches of 50 contacts (a search, then 50 tag requests each): killed after the 60th tag request.
        cli.kill_when(lambda: sum(1 for r in fake.requests if r.path.endswith("/tags")) >= 60, settle=0.3)
        assert 0 < len(fake.tagged(tag)) < 100

        cli.recover()
        assert fake.tagged(tag) == {f"c{i}@example.com" for i in range(1, 101)}
        assert token_only_in_header(fake)
    assert cli.leftovers() == []
    assert not cli.in_home(TOKEN)
