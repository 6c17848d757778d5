"""The Splio adapter through a fake Splio Data API built from Splio's documentation (tests/fakes/splio.py):
what the universe holds afterwards (contacts, fields, custom fields), the JWT life cycle, and that neither the
API key nor the JWT shows anywhere but where Splio asks for them."""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import unquote

import duckdb
import pyarrow as pa
import pytest
from attribute_scenarios import (
    CliSync,
    crm_project,
    load_example,
    logged,
    readme_examples,
)
from fakes.splio import SplioFake
from platform_scenarios import run, run_sync_job

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
from dinmo_dagster.platforms.splio import Splio

KEY = "splio-key-3c9e1f7a2b5d48e6a0f1c2d3e4b5a697"
FAST = RetryPolicy(max_attempts=5, initial_wait_seconds=0.01, max_wait_seconds=0.05)
CONTACTS = ActivationSpec(
    "sp",
    "customer_id",
    match={"email": "email"},
    mapping={"first_name": "firstname", "tier": "custom_fields.5", "ltv": "custom_fields.7"},
)


@pytest.fixture
def splio():
    with SplioFake(KEY) as fake:
        yield fake


def destination(fake: SplioFake) -> Splio:
    platform = build_platform(
        "splio", {"service": "attributes", "api_key": KEY, "base_url": fake.url}, destination="sp"
    )
    assert isinstance(platform, Splio)
    return platform


def customers(ids: list[int], **overrides) -> pa.RecordBatch:
    columns = {
        "customer_id": ids,
        "email": [f" C{i}@Example.com" for i in ids],
        "first_name": [f"Name{i}" for i in ids],
        "tier": ["gold"] * len(ids),
        "ltv": [100.5 * i for i in ids],
    }
    columns.update(overrides)
    return pa.record_batch(columns)


def secrets_only_where_splio_asks(fake: SplioFake) -> bool:
    for r in fake.requests:
        body = r.raw_body.decode()
        if r.path == "/authenticate":
            assert r.json == {"api_key": KEY} and "authorization" not in r.headers
            continue
        assert KEY not in body and KEY not in r.path and KEY not in str(r.headers)
        assert r.headers["authorization"].startswith("Bearer eyJ")
        assert not any(t in body for t in fake.tokens)
    return True


def test_upsert_creates_new_contacts_in_bulk_and_edits_existing_ones(splio):
    splio.add_contact("c2@example.com", firstname="Old", lastname="Kept")
    result = deliver(
        destination(splio),
        CONTACTS,
        {"upsert": [customers([1, 2, 3], first_name=["Ann", None, "Cle"])]},
        InMemoryJournal(),
    )
    calls = [(r.method, r.path) for r in splio.requests]
    assert calls == [
        ("POST", "/authenticate"),
        ("POST", "/data/contacts/bulk"),
        ("PATCH", "/data/contacts/c2@example.com"),
    ]
    assert splio.requests[1].json["contacts"][0] == {
        "email": "c1@example.com",
        "firstname": "Ann",
        "custom_fields": [{"id": 5, "value": "gold"}, {"id": 7, "value": 100.5}],
    }
    assert splio.requests[2].json == {
        "firstname": "",
        "custom_fields": [{"id": 5, "value": "gold"}, {"id": 7, "value": 201.0}],
    }
    assert splio.view() == {
        "c1@example.com": {"firstname": "Ann", "custom_fields.5": "gold", "custom_fields.7": 100.5},
        "c2@example.com": {"lastname": "Kept", "custom_fields.5": "gold", "custom_fields.7": 201.0},
        "c3@example.com": {"firstname": "Cle", "custom_fields.5": "gold", "custom_fields.7": 301.5},
    }
    assert (result.accepted, result.rejected) == (3, 0)
    assert secrets_only_where_splio_asks(splio)


def test_insert_leaves_existing_contacts_alone_and_update_never_creates(splio):
    splio.add_contact("c1@example.com", firstname="Kept")
    inserted = deliver(destination(splio), CONTACTS, {"insert": [customers([1, 2])]}, InMemoryJournal())
    assert inserted.accepted == 2
    assert splio.view()["c1@example.com"] == {"firstname": "Kept"}
    updated = deliver(destination(splio), CONTACTS, {"update": [customers([1, 9], first_name=["New", "Nine"])]},
                      InMemoryJournal())  # fmt: skip
    assert updated.accepted == 2
    assert splio.view()["c1@example.com"]["firstname"] == "New"
    assert "c9@example.com" not in splio.contacts


def test_per_contact_errors_are_rejected_with_splios_description_and_sent_again_next_sync(splio):
    journal = InMemoryJournal()
    rows = customers([1, 2, 3], ltv=["100", "lots", "300"])
    result = deliver(destination(splio), CONTACTS, {"insert": [rows]}, journal)
    assert journal.rejections == [
        ("1", "insert", "Custom field with id 7 and name ltv must be of type double."),
        ("2", "insert", "Custom field with id 7 and name ltv must be of type double."),
        ("3", "insert", "Custom field with id 7 and name ltv must be of type double."),
    ]
    assert result.reasons == {"code 400": 3}
    assert (
        deliver(destination(splio), CONTACTS, {"insert": [customers([1, 2, 3])]}, InMemoryJournal()).accepted
        == 3
    )


def test_a_malformed_email_rejects_that_contact_and_the_others_go(splio):
    journal = InMemoryJournal()
    spec = ActivationSpec("sp", "customer_id", match={"email": "email"}, mapping={"first_name": "firstname"})
    rows = customers([1, 2, 3], email=["c1@example.com", "c2@example.c", "c3@example.com"])
    result = deliver(destination(splio), spec, {"insert": [rows]}, journal)
    assert journal.rejections == [
        ("2", "insert", "contacts[1].email: The email given should have the right format")
    ]
    assert [len(r.json["contacts"]) for r in splio.requests[1:]] == [3, 2]  # the others sent again
    assert set(splio.contacts) == {"c1@example.com", "c3@example.com"}
    assert result.accepted == 2


def test_mirror_deletes_contacts_and_counts_unknown_ones_as_gone(splio):
    splio.add_contact("c1@example.com")
    result = deliver(destination(splio), CONTACTS, {"delete": [customers([1, 2])]}, InMemoryJournal())
    assert splio.requests[-1].json == {"contacts": ["c1@example.com", "c2@example.com"]}
    assert result.accepted == 2 and splio.contacts == {}


def test_an_expired_jwt_is_renewed_once_and_the_call_sent_again(splio):
    platform = destination(splio)
    deliver(platform, CONTACTS, {"insert": [customers([1])]}, InMemoryJournal())
    splio.expire_tokens()
    result = deliver(platform, CONTACTS, {"insert": [customers([2])]}, InMemoryJournal())
    assert result.accepted == 2 - 1 and platform.token_requests == 2
    assert [s for _, p, s in splio.answers] == [200, 200, 401, 200, 200]
    assert secrets_only_where_splio_asks(splio)


def test_edits_handed_over_while_the_batch_runs_are_journalled_and_counted_once(splio):
    """The upsert's created contacts and its edits are journalled as Splio answers them (the kill test below
    shows it); the batch's outcome, applied afterwards, neither journals nor counts them a second time."""
    for i in (2, 4):
        splio.add_contact(f"c{i}@example.com")
    journal = InMemoryJournal()
    result = deliver(destination(splio), CONTACTS, {"upsert": [customers([1, 2, 3, 4])]}, journal)
    assert journal.acknowledged_keys == {"upsert": ["1", "3", "2", "4"]}  # created, then each edit
    assert (result.accepted, result.batches, result.requests) == (4, 1, 3)  # one bulk create, two edits
    journal = InMemoryJournal()
    updated = deliver(destination(splio), CONTACTS, {"update": [customers([1, 9])]}, journal)
    assert journal.acknowledged_keys == {"update": ["1", "9"]} and updated.accepted == 2


def test_a_wrong_api_key_stops_at_once(splio):
    platform = build_platform(
        "splio", {"service": "attributes", "api_key": "wrong", "base_url": splio.url}, destination="sp"
    )
    with pytest.raises(PlatformAuthError) as info:
        deliver(platform, CONTACTS, {"insert": [customers([1])]}, InMemoryJournal())
    assert str(info.value) == (
        "destination 'sp' (splio): Splio refused the API key at /authenticate (HTTP 401: "
        "api_key: Authentication failed.); check api_key"
    )
    assert "wrong" not in str(info.value).replace("wrong_value", "")


def test_a_429_storm_is_ridden_out(splio):
    splio.throttle(4)
    result = deliver(
        destination(splio), CONTACTS, {"insert": [customers([1])]}, InMemoryJournal(), retry=FAST
    )
    assert result.accepted == 1 and result.retries == 4


def test_preview_masks_emails_and_sends_nothing(splio):
    shown = preview(destination(splio), CONTACTS, {"insert": [customers([1])]})
    assert splio.requests == []
    assert shown[0].url == f"{splio.url}/data/contacts/bulk"
    assert "c1@example.com" not in repr(shown)


def test_settings_errors_name_the_key():
    with pytest.raises(PlatformConfigError) as info:
        build_platform("splio", {"service": "audiences", "api_key": KEY}, destination="sp")
    assert str(info.value) == "destinations.sp.service: Input should be 'attributes' (found 'audiences')"
    with pytest.raises(PlatformConfigError) as info:
        build_platform("splio", {"service": "attributes", "api_key": " "}, destination="sp")
    assert str(info.value) == "destinations.sp.api_key: is empty; allowed: a Splio API key"


def test_validate_connect_authenticates_and_checks_custom_field_ids(splio):
    assert validate_connection(destination(splio), CONTACTS) == []
    spec = ActivationSpec("sp", "customer_id", match={"email": "email"}, mapping={"tier": "custom_fields.6"})
    assert validate_connection(destination(splio), spec) == [
        (
            "mapping.tier: no field 'custom_fields.6' in Splio contacts; did you mean 'custom_fields.7', "
            "'custom_fields.5'?"
        )
    ]
    spec = ActivationSpec("sp", "customer_id", match={"email": "email"}, mapping={"tier": "TIER"})
    assert validate_connection(destination(splio), spec) == [
        "mapping.tier: found 'TIER'; allowed: firstname, lastname, cellphone, language, date or custom_fields.<id>"
    ]


def test_contacts_follow_the_segment_through_the_dagster_job(request, tmp_path: Path, monkeypatch):
    fake = SplioFake(KEY)
    destination_yaml = (
        f"sp:\n  type: splio\n  service: attributes\n  api_key: {{env: SPLIO_KEY}}\n  base_url: {fake.url}\n"
    )
    activations = (
        "to_sp:\n  segment: big\n  destination: sp\n  match: {email: email}\n"
        "  mapping: {first_name: firstname, ltv: custom_fields.7}\n  sync_mode: mirror\n"
    )
    with crm_project(
        request, tmp_path, monkeypatch, fake, ("SPLIO_KEY", KEY), destination_yaml, activations
    ) as env:
        fake.throttle(2)
        assert run_sync_job(env.defs, env.instance, "to_sp").success
        assert fake.view() == {
            "bob@example.com": {"firstname": "Bob", "custom_fields.7": 900},
            "cle@example.com": {"firstname": "Cle", "custom_fields.7": 600.1},
            "dan@example.com": {"firstname": "Dan", "custom_fields.7": 700},
        }
        run(env.wh, "update raw.customers set first_name = 'Robert' where customer_id = 2")
        run(env.wh, "update raw.customers set ltv = 650 where customer_id = 1")
        run(env.wh, "update raw.customers set ltv = 10 where customer_id = 3")
        run(env.wh, "update raw.customers set email = 'daniel@example.com' where customer_id = 4")
        assert run_sync_job(env.defs, env.instance, "to_sp").success
        # Dan's new e-mail is another Splio contact, created; mirror deletes records that left the segment
        # only, so the contact under the old address stays (as for every attributes platform).
        assert fake.view() == {
            "ann@example.com": {"firstname": "Ann", "custom_fields.7": 650},
            "bob@example.com": {"firstname": "Robert", "custom_fields.7": 900},
            "dan@example.com": {"firstname": "Dan", "custom_fields.7": 700},
            "daniel@example.com": {"firstname": "Dan", "custom_fields.7": 700},
        }
        assert [r.json for r in fake.requests if r.method == "DELETE"] == [{"contacts": ["cle@example.com"]}]
        for entry in logged(env.instance):
            assert KEY not in entry and not any(t in entry for t in fake.tokens)
        assert secrets_only_where_splio_asks(fake)


def test_a_killed_sync_is_recovered_by_the_next_without_sending_what_splio_acknowledged(tmp_path: Path):
    """`dinmo sync` (upsert) killed with SIGKILL while its first batch edits the contacts Splio already
    holds, one call each: the contacts the bulk create made and the edits Splio answered are journalled as
    they come, not when the batch of 1,000 ends, so the next sync sends none of them again."""
    cli = CliSync(tmp_path, "to_sp", {"SPLIO_KEY": KEY})
    cli.seed(2500, "'n' || i")
    with SplioFake(KEY, latency=0.05) as fake:
        held = {f"c{i}@example.com" for i in range(1, 41)}  # in the universe before the first sync
        for email in held:
            fake.add_contact(email, firstname="Old", lastname="Kept")
        cli.write(
            destinations=[(f"sp:\n  type: splio\n  service: attributes\n  max_concurrency: 1\n"
                           f"  api_key: {{env: SPLIO_KEY}}\n  base_url: {fake.url}\n")],
            activations="to_sp:\n  segment: big\n  destination: sp\n  match: {email: email}\n"
                        "  mapping: {first_name: firstname}\n  sync_mode: upsert\n")  # fmt: skip
        bulk = "/data/contacts/bulk"

        def edited() -> set[str]:  # the contacts whose edit Splio answered (200)
            return {p.rsplit("/", 1)[1] for m, p, s in list(fake.answers) if m == "PATCH" and s == 200}

        cli.start()
        cli.wait_for(lambda: len(edited()) >= 15)
        answered = edited() | (set(fake.contacts) - held)  # edited, or made by a bulk create Splio answered
        time.sleep(0.5)  # the answers above are journalled meanwhile (within about 0.05 s)
        cli.kill(settle=0.5)  # the request in flight at the kill is answered
        killed_at, universe = len(fake.requests), set(fake.contacts)
        assert len(edited()) < 40 and len(fake.contacts) < 2500  # killed mid-delivery
        with duckdb.connect(str(cli.warehouse)) as con:
            journalled = {f"c{k}@example.com" for (k,) in con.execute(
                "select record_key from dinmo_delta_storage.dinmo_acknowledgements where activation = 'to_sp' "
                "and operation = 'upsert'").fetchall()}  # fmt: skip
        # what Splio answered before the pause is journalled, the created contacts of the unfinished batch too
        assert answered <= journalled <= edited() | (set(fake.contacts) - held)
        assert len(journalled) >= 15 + 900

        done = cli.recover()
        assert done.stdout.splitlines()[1].startswith(
            f"sync to_sp: delta sync to splio (attributes, upsert): {2500 - len(journalled)} added, 0 updated, "
            f"0 removed, {len(journalled)} unchanged; "
        )
        again = [r for r in fake.requests[killed_at:] if r.json is not None]
        created = [c["email"] for r in again if r.path == bulk for c in r.json["contacts"]]
        edits = [unquote(r.path.rsplit("/", 1)[1]) for r in again if r.method == "PATCH"]
        # the retry sends each contact Splio did not acknowledge once (and edits the ones it holds), none it did
        assert sorted(created) == sorted(f"c{i}@example.com" for i in range(1, 2501)
                                         if f"c{i}@example.com" not in journalled)  # fmt: skip
        assert sorted(edits) == sorted(set(created) & universe) and held - journalled <= set(edits)
        assert fake.view() == {
            f"c{i}@example.com": {"firstname": f"n{i}", **({"lastname": "Kept"} if i <= 40 else {})}
            for i in range(1, 2501)
        }
        assert all(len(r.json["contacts"]) <= 1000 for r in fake.requests if r.path == bulk)
        assert secrets_only_where_splio_asks(fake)
    assert cli.leftovers() == []
    assert not cli.in_home(KEY)


def test_the_readme_splio_example_loads(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SPLIO_API_KEY", KEY)
    examples = readme_examples("**Splio (`type: splio`).**")
    assert len(examples) == 1
    (activation,) = load_example(tmp_path, examples[0]).activations.values()
    assert activation.platform_service == "attributes"
