"""The Emarsys adapter through a fake Emarsys built from Emarsys's documentation (tests/fakes/emarsys.py): what
the account holds afterwards (contacts and their fields, list members, relational rows), the requests it
received, and that neither the client secret nor an access token shows anywhere but in auth headers."""

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
from fakes.emarsys import EmarsysFake, reply
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
from dinmo_dagster.platforms.emarsys import Emarsys

CLIENT_ID = "dinmo_oidc_4711"
SECRET = "oidc-secret-9f8e7d6c5b4a39281706f5e4d3c2b1a0"
FAST = RetryPolicy(max_attempts=3, initial_wait_seconds=0.01, max_wait_seconds=0.05)
CONTACTS = ActivationSpec(
    "crm", "customer_id", match={"email": "email"}, mapping={"first_name": "first_name", "last_name": "2"}
)
MEMBERS = ActivationSpec("crm", "customer_id", match={"email": "email"})


@pytest.fixture
def emarsys():
    with EmarsysFake(CLIENT_ID, SECRET) as fake:
        yield fake


def destination(fake: EmarsysFake, service: str = "attributes", **settings) -> Emarsys:
    raw = {"service": service, "client_id": CLIENT_ID, "client_secret": SECRET, "base_url": fake.url,
           "token_url": fake.token_url, **settings}  # fmt: skip
    return built("emarsys", Emarsys, raw)


def customers(ids: list[int], **overrides) -> pa.RecordBatch:
    columns = {
        "customer_id": ids,
        "email": [f"Customer{i}@Example.com " for i in ids],
        "first_name": [f"Name{i}" for i in ids],
        "last_name": [f"Last{i}" for i in ids],
    }
    columns.update(overrides)
    return pa.record_batch(columns)


def secrets_only_in_auth(fake: EmarsysFake) -> bool:
    tokens = set(fake.tokens)
    for r in fake.requests:
        assert r.headers.get("authorization", "").removeprefix("Bearer ") in tokens
        text = r.raw_body.decode() + r.path + json.dumps(r.query)
        assert SECRET not in text and not any(t in text for t in tokens)
    for r in fake.token_requests:
        assert SECRET not in r.raw_body.decode()  # the client goes in the Basic header only
    return True


def test_an_upsert_resolves_field_names_to_ids_and_a_null_empties_the_field(emarsys):
    emarsys.add_contact("customer2@example.com", **{"1": "Old", "2": "Kept?"})
    result = deliver(
        destination(emarsys),
        CONTACTS,
        {"upsert": [customers([1, 2], last_name=["Last1", None])]},
        InMemoryJournal(),
    )
    assert emarsys.by_email() == {
        "customer1@example.com": {"1": "Name1", "2": "Last1"},
        "customer2@example.com": {"1": "Name2"},  # the NULL emptied field 2
    }
    assert [(r.method, r.path, r.query) for r in emarsys.requests] == [
        ("GET", "/field", {}),
        ("PUT", "/contact/", {"create_if_not_exists": "1"}),
    ]
    assert emarsys.requests[1].json == {
        "key_id": "3",
        "contacts": [
            {"3": "customer1@example.com", "1": "Name1", "2": "Last1"},
            {"3": "customer2@example.com", "1": "Name2", "2": None},
        ],
    }
    assert (result.accepted, result.rejected) == (2, 0)
    assert len(emarsys.token_requests) == 1 and secrets_only_in_auth(emarsys)


def test_update_rejects_unknown_contacts_and_insert_leaves_existing_ones_alone(emarsys):
    emarsys.add_contact("customer1@example.com", **{"1": "Kept"})
    journal = InMemoryJournal()
    deliver(destination(emarsys), CONTACTS, {"update": [customers([1, 2])]}, journal)
    assert journal.rejections == [
        ("2", "update", "Emarsys 2008: No contact found with the external id: 3 - customer2@example.com")
    ]
    assert emarsys.by_email() == {"customer1@example.com": {"1": "Name1", "2": "Last1"}}
    assert "create_if_not_exists" not in emarsys.requests[-1].query

    journal = InMemoryJournal()
    result = deliver(
        destination(emarsys), CONTACTS, {"insert": [customers([1, 3], first_name=["New", "C3"])]}, journal
    )
    assert (result.accepted, journal.rejections) == (2, [])  # customer1 exists (2009): left as it is
    assert emarsys.by_email()["customer1@example.com"] == {"1": "Name1", "2": "Last1"}
    assert emarsys.by_email()["customer3@example.com"] == {"1": "C3", "2": "Last3"}
    assert emarsys.requests[-1].method == "POST" and emarsys.requests[-1].path == "/contact"


def test_per_contact_errors_are_rejected_with_emarsys_reason_and_sent_again_next_sync(emarsys):
    emarsys.fail_keys("2010", "More contacts found with the external ID: 3 - customer2@example.com",
                      "customer2@example.com")  # fmt: skip
    journal = InMemoryJournal()
    result = deliver(destination(emarsys), CONTACTS, {"upsert": [customers([1, 2, 3])]}, journal)
    assert journal.rejections == [
        ("2", "upsert", "Emarsys 2010: More contacts found with the external ID: 3 - customer2@example.com")
    ]
    assert sorted(journal.acknowledged_keys["upsert"]) == ["1", "3"]
    assert result.reasons == {"Emarsys 2010": 1}
    again = deliver(destination(emarsys), CONTACTS, {"upsert": [customers([2])]}, InMemoryJournal())
    assert again.accepted == 1 and "customer2@example.com" in emarsys.by_email()


def test_mirror_deletes_contacts_one_request_each_and_a_gone_one_counts_as_done(emarsys):
    emarsys.add_contact("customer1@example.com")
    emarsys.add_contact("customer2@example.com")
    result = deliver(destination(emarsys), CONTACTS, {"delete": [customers([1, 9])]}, InMemoryJournal())
    assert result.accepted == 2
    assert emarsys.by_email() == {"customer2@example.com": {}}
    assert [r.json for r in emarsys.requests] == [
        {"key_id": "3", "3": "customer1@example.com"},
        {"key_id": "3", "3": "customer9@example.com"},
    ]


def test_a_custom_key_field_is_the_key_id(emarsys):
    spec = ActivationSpec(
        "crm", "customer_id", match={"field_9001": "customer_id"}, mapping={"first_name": "1"}
    )
    deliver(destination(emarsys), spec, {"upsert": [customers([5])]}, InMemoryJournal())
    assert emarsys.requests[-1].json == {"key_id": "9001", "contacts": [{"9001": "5", "1": "Name5"}]}
    assert emarsys.contacts == [{"9001": "5", "1": "Name5"}]
    assert [r.path for r in emarsys.requests] == ["/contact/"]  # ids only: no GET /field


def test_a_429_storm_is_ridden_out_and_an_expired_token_renewed_once(emarsys):
    emarsys.throttle(4)
    platform = destination(emarsys)
    result = deliver(platform, CONTACTS, {"upsert": [customers([1])]}, InMemoryJournal(), retry=FAST)
    assert result.accepted == 1 and result.retries == 4
    assert [s for _, p, s in emarsys.answers if p != "/oauth2/token"][:5] == [429, 429, 429, 429, 200]

    emarsys.expire_tokens_after(1)
    deliver(platform, CONTACTS, {"upsert": [customers([2])]}, InMemoryJournal())  # the token expires after it
    more = deliver(platform, CONTACTS, {"upsert": [customers([3])]}, InMemoryJournal())
    assert more.accepted == 1 and len(emarsys.token_requests) == 2
    assert [s for _, p, s in emarsys.answers if p != "/oauth2/token"][-3:] == [200, 401, 200]
    assert set(emarsys.by_email()) == {f"customer{i}@example.com" for i in (1, 2, 3)}
    assert secrets_only_in_auth(emarsys)


def test_wrong_client_credentials_stop_at_once_with_the_token_endpoints_reason(emarsys):
    platform = build_platform("emarsys", {"service": "attributes", "client_id": CLIENT_ID, "client_secret": "nope",
                                          "base_url": emarsys.url, "token_url": emarsys.token_url},
                              destination="crm")  # fmt: skip
    with pytest.raises(PlatformAuthError) as info:
        deliver(platform, CONTACTS, {"upsert": [customers([1])]}, InMemoryJournal())
    assert str(info.value) == (
        "destination 'crm' (emarsys): the token endpoint refused the client credentials (HTTP 401 "
        "invalid_client: Client authentication failed); check client_id and client_secret"
    )
    assert emarsys.requests == []


def test_a_list_given_by_name_is_created_and_filled_and_unknown_contacts_rejected(emarsys):
    for i in (1, 2, 3):
        emarsys.add_contact(f"customer{i}@example.com")
    platform = destination(emarsys, "audiences", audience={"name": "VIP Europe"})
    journal = InMemoryJournal()
    result = deliver(platform, MEMBERS, {"add": [customers([1, 2, 3, 4])]}, journal)
    vip = emarsys.list_named("VIP Europe")
    assert vip.members == {"customer1@example.com", "customer2@example.com", "customer3@example.com"}
    assert journal.rejections == [("4", "add", ("no Emarsys contact has this key (a list add creates none: an "
                                               "attributes activation creates it)"))]  # fmt: skip
    assert result.accepted == 3
    assert [(r.method, r.path) for r in emarsys.requests] == [
        ("GET", "/contactlist"), ("POST", "/contactlist"), ("POST", f"/contactlist/{vip.id}/add")]  # fmt: skip
    removed = deliver(platform, MEMBERS, {"remove": [customers([1, 4])]}, InMemoryJournal())
    assert removed.accepted == 2 and vip.members == {"customer2@example.com", "customer3@example.com"}
    assert emarsys.requests[-1].json == {"key_id": "3", "external_ids": ["customer1@example.com",
                                                                         "customer4@example.com"]}  # fmt: skip


def test_a_list_add_over_10000_ids_is_refused_by_emarsys_and_the_sdk_never_sends_one(emarsys):
    made = emarsys.create_list("Big")
    platform = destination(emarsys, "audiences", audience={"id": made.id})
    assert platform.effective_limits().max_records_per_batch == 10_000
    ids = list(range(10_001))
    deliver(platform, MEMBERS, {"add": [pa.record_batch({"customer_id": ids,
                                                          "email": [f"c{i}@example.com" for i in ids]})]},
            InMemoryJournal())  # fmt: skip
    assert sorted(len(r.json["external_ids"]) for r in emarsys.requests) == [1, 10_000]


def test_preview_masks_identifiers_and_sends_nothing(emarsys):
    shown = preview(
        destination(emarsys, "audiences", audience={"id": 7}), MEMBERS, {"add": [customers([1, 2])]}
    )
    assert emarsys.requests == [] and emarsys.token_requests == []
    assert shown[0].url == f"{emarsys.url}/contactlist/7/add"
    assert shown[0].body == {"key_id": "3", "external_ids": ["c***@e***", "c***@e***"]}


def test_settings_errors_name_the_key_and_what_is_allowed():
    with pytest.raises(PlatformConfigError) as info:
        build_platform("emarsys", {"service": "audiences", "client_id": CLIENT_ID, "client_secret": SECRET,
                                   "relational_table": {"connection": "shop", "table": "orders"}},
                       destination="crm")  # fmt: skip
    assert str(info.value) == (
        "destinations.crm.relational_table: found a table; allowed only with service: attributes "
        "(service is audiences)"
    )
    with pytest.raises(PlatformConfigError) as info:
        build_platform("emarsys", {"service": "contacts", "client_id": CLIENT_ID, "client_secret": SECRET},
                       destination="crm")  # fmt: skip
    assert "destinations.crm.service" in str(info.value) and "'attributes' or 'audiences'" in str(info.value)


def test_validate_connect_checks_credentials_mapped_fields_and_the_list(emarsys):
    assert validate_connection(destination(emarsys), CONTACTS) == []
    spec = ActivationSpec(
        "crm", "customer_id", match={"email": "email"}, mapping={"first_name": "frist_name"}
    )
    assert validate_connection(destination(emarsys), spec) == [
        "mapping.first_name: no field 'frist_name' in Emarsys contacts (GET /field has no such id, string_id or name)"
    ]
    assert validate_connection(destination(emarsys, "audiences", audience={"id": 99}), MEMBERS) == [
        (
            "destination 'crm' (emarsys): audience.id: found '99'; allowed: the id of a contact list of the account "
            "(GET /contactlist)"
        )
    ]


def test_relational_rows_are_upserted_and_deleted_by_their_key_columns(emarsys):
    platform = destination(emarsys, relational_table={"connection": "shop", "table": "orders"})
    spec = ActivationSpec("crm", "order_id", match={"order_id": "order_id"}, mapping={"amount": "amount"})
    orders = pa.record_batch({"order_id": [10, 11], "amount": [5.5, 7.25]})
    emarsys.fail_keys("4003", "Invalid value for column amount", "11")
    journal = InMemoryJournal()
    deliver(platform, spec, {"upsert": [orders]}, journal)
    assert emarsys.rows == {"shop.orders": {("10",): {"order_id": "10", "amount": 5.5}}}
    assert journal.rejections == [("11", "upsert", "Emarsys 4003: Invalid value for column amount")]
    assert emarsys.requests[-1].path == "/rds/connections/shop/tables/orders/records"
    assert emarsys.requests[-1].json["keys"] == ["order_id"]
    deliver(platform, spec, {"delete": [pa.record_batch({"order_id": [10]})]}, InMemoryJournal())
    assert emarsys.rows == {"shop.orders": {}}
    with pytest.raises(PlatformConfigError, match="does not support operation 'update'"):
        deliver(platform, spec, {"update": [orders]}, InMemoryJournal())


def test_the_readme_emarsys_examples_load(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("EMARSYS_CLIENT_SECRET", SECRET)
    examples = readme_examples("**Emarsys (`type: emarsys`).**")
    assert len(examples) == 3
    for n, activation in enumerate(example_activations(tmp_path, examples)):
        assert activation.platform_service == ("attributes", "audiences", "attributes")[n]


def test_contacts_mirror_the_segment_through_the_dagster_job(request, tmp_path: Path, monkeypatch):
    fake = EmarsysFake(CLIENT_ID, SECRET)
    destination_yaml = (
        f"em:\n  type: emarsys\n  service: attributes\n  client_id: {CLIENT_ID}\n"
        f"  client_secret: {{env: EMARSYS_SECRET}}\n  base_url: {fake.url}\n  token_url: {fake.token_url}\n"
    )
    activations = (
        "to_em:\n  segment: big\n  destination: em\n  match: {email: email}\n  mapping: {first_name: first_name}\n"
        "  sync_mode: mirror\n  max_rejected_pct: 50\n"
    )
    with crm_project(request, tmp_path, monkeypatch, fake, ("EMARSYS_SECRET", SECRET), destination_yaml,
                     activations) as env:  # fmt: skip
        fake.fail_keys(
            "2010", "More contacts found with the external ID: 3 - cle@example.com", "cle@example.com"
        )
        fake.throttle(2)
        assert run_sync_job(env.defs, env.instance, "to_em").success
        assert fake.by_email() == {"bob@example.com": {"1": "Bob"}, "dan@example.com": {"1": "Dan"}}

        # Cle (refused last time) goes again; Dan leaves (deleted); Bob's unmapped ltv change sends nothing.
        run(env.wh, "update raw.customers set ltv = 10 where customer_id = 4")
        run(env.wh, "update raw.customers set ltv = 950 where customer_id = 2")
        assert run_sync_job(env.defs, env.instance, "to_em").success
        assert fake.by_email() == {"bob@example.com": {"1": "Bob"}, "cle@example.com": {"1": "Cle"}}
        upserts = [r.json for r in fake.requests if r.path == "/contact/"]
        assert [c["3"] for c in upserts[-1]["contacts"]] == ["cle@example.com"]
        assert [r.json for r in fake.requests if r.path == "/contact/delete"] == [
            {"key_id": "3", "3": "dan@example.com"}]  # fmt: skip

        # A mapped change and a new e-mail: the new address is another Emarsys contact, upserted; mirror
        # deletes records that left the segment only, so the contact under the old address stays.
        run(env.wh, "update raw.customers set first_name = 'Bobby', email = 'Robert@Example.com ' "
                    "where customer_id = 2")  # fmt: skip
        assert run_sync_job(env.defs, env.instance, "to_em").success
        assert fake.by_email() == {"bob@example.com": {"1": "Bob"}, "cle@example.com": {"1": "Cle"},
                                   "robert@example.com": {"1": "Bobby"}}  # fmt: skip
        for entry in logged(env.instance):
            assert SECRET not in entry and not any(t in entry for t in fake.tokens)
        assert secrets_only_in_auth(fake)


def test_an_emarsys_list_follows_the_segment_through_the_dagster_job(
    request, tmp_path: Path, monkeypatch, capsys
):
    def fake() -> EmarsysFake:
        made = EmarsysFake(CLIENT_ID, SECRET)
        for name in ("ann", "bob", "cle", "dan", "robert"):
            made.add_contact(f"{name}@example.com")
        return made

    with ad_project(request, tmp_path, monkeypatch, fake, attr="emarsys", type_="emarsys", destination="em",
                    activation="to_em", fields={"client_id": CLIENT_ID},
                    secrets={"client_secret": ("EMARSYS_SECRET", SECRET)}) as env:  # fmt: skip
        assert main(["--project", str(tmp_path), "validate", "--connect"]) == 0
        assert main(["--project", str(tmp_path), "preview", "to_em"]) == 0
        out = capsys.readouterr().out
        assert "bob@example.com" not in out and SECRET not in out

        env.emarsys.throttle(3)
        assert run_sync_job(env.defs, env.instance, "to_em").success
        vip = env.emarsys.list_named("VIP Europe")
        assert vip.members == {f"{n}@example.com" for n in ("bob", "cle", "dan")}

        change_customers(env.wh)
        assert run_sync_job(env.defs, env.instance, "to_em").success
        assert vip.members == {f"{n}@example.com" for n in ("robert", "cle", "ann")}

        vip.members.discard("cle@example.com")
        sync_steps(env, "to_em", full_refresh=True)
        assert vip.members == {f"{n}@example.com" for n in ("robert", "cle", "ann")}
        for entry in logged(env.instance):
            assert SECRET not in entry
        assert secrets_only_in_auth(env.emarsys)


def test_a_killed_sync_is_recovered_by_the_next_with_nothing_lost(tmp_path: Path):
    cli = CliSync(tmp_path, "to_em", {"EMARSYS_SECRET": SECRET})
    cli.seed(3000, "'n' || i")
    with EmarsysFake(CLIENT_ID, SECRET, latency=0.3) as fake:
        cli.write(
            destinations=[(f"em:\n  type: emarsys\n  service: attributes\n  max_concurrency: 1\n"
                          f"  client_id: {CLIENT_ID}\n  client_secret: {{env: EMARSYS_SECRET}}\n"
                          f"  base_url: {fake.url}\n  token_url: {fake.token_url}\n")],
            activations="to_em:\n  segment: big\n  destination: em\n  match: {email: email}\n"
                        "  mapping: {first_name: '1'}\n  sync_mode: upsert\n")  # fmt: skip
        # 3 requests of 1,000 contacts, one at a time: killed when the second arrives.
        # settle: the request in flight at the kill is answered
        cli.kill_when(lambda: sum(1 for r in fake.requests if r.path == "/contact/") >= 2, settle=0.6)
        assert 0 < len(fake.contacts) < 3000

        cli.recover()
        assert fake.by_email() == {f"c{i}@example.com": {"1": f"n{i}"} for i in range(1, 3001)}
        sent = [c["3"] for r in fake.requests if r.path == "/contact/" for c in r.json["contacts"]]
        assert len(sent) < 2 * 3000 and max(sent.count(e) for e in set(sent)) <= 2
        assert secrets_only_in_auth(fake)
    assert cli.leftovers() == []
    assert not cli.in_home(SECRET)


def test_a_whole_request_refusal_without_per_contact_errors_splits_down_to_the_bad_contact(emarsys):
    emarsys.fail_next("/contact/", reply(400, 2007, "Invalid data format for field ID: 1. Scalar expected."))
    journal = InMemoryJournal()
    result = deliver(destination(emarsys), ActivationSpec("crm", "customer_id", match={"email": "email"},
                                                          mapping={"first_name": "1"}),
                     {"upsert": [customers([1])]}, journal)  # fmt: skip
    assert journal.rejections == [
        ("1", "upsert", "Emarsys 2007: Invalid data format for field ID: 1. Scalar expected.")
    ]
    assert result.rejected == 1
