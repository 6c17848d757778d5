"""Selligent (Marigold Engage), Dialog Insight, June and All My SMS through local fakes built from their
documentation (tests/fakes/{selligent,dialog_insight,june,all_my_sms}.py): what each platform holds
afterwards (list records and segment members, contacts and opt-ins, user traits, list numbers), per-record
failures retried by the next sync, 429 storms, and that no secret shows anywhere but where it is sent."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from attribute_scenarios import (
    CliSync,
    crm_project,
    example_activations,
    logged,
    readme_examples,
)
from fakes.all_my_sms import AllMySmsFake
from fakes.dialog_insight import DialogInsightFake
from fakes.june import JuneFake
from fakes.selligent import SelligentFake
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

FAST = RetryPolicy(max_attempts=4, initial_wait_seconds=0.01, max_wait_seconds=0.05)
SL_KEY, SL_SECRET = "sk_live_4f9a1c2e", "Zx81-secret-7d6e5f4a3b2c1d0e"
DI_KEY = "di-7f3a9c1b5e2d8f40a6c4"
JUNE_KEY = "june-wk-8b2f6e1a9c7d3f50"
AMS_KEY = "ams-1e9d7c5b3a2f4e6d8c0b"


def people(ids: list[int], **overrides) -> pa.RecordBatch:
    columns = {
        "customer_id": ids,
        "email": [f"Customer{i}@Example.com " for i in ids],
        "first_name": [f"Name{i}" for i in ids],
        "last_name": [f"Last{i}" for i in ids],
    }
    columns.update(overrides)
    return pa.record_batch(columns)


# --------------------------------------------------------------------------------------------------
# Selligent (Marigold Engage)
# --------------------------------------------------------------------------------------------------

SL_CONTACTS = ActivationSpec(
    "sl", "customer_id", match={"MAIL": "email"}, mapping={"first_name": "FIRSTNAME", "last_name": "LASTNAME"}
)


def selligent(fake: SelligentFake, service: str = "attributes", **settings):
    raw = {
        "service": service,
        "organization": "SHOP",
        "list": "CONTACTS",
        "api_key": SL_KEY,
        "api_secret": SL_SECRET,
        "base_url": fake.url,
        "poll_interval_seconds": 0.01,
        **settings,
    }
    return build_platform("selligent", raw, destination="sl")


def test_selligent_load_job_upserts_list_records_and_failed_rows_go_with_the_next_sync():
    with SelligentFake(SL_KEY, SL_SECRET) as fake:
        fake.records.append({"MAIL": "customer2@example.com", "FIRSTNAME": "Old", "LASTNAME": "Kept"})
        fake.fail("Invalid value for field FIRSTNAME", "customer3@example.com")
        fake.throttle(3)
        journal = InMemoryJournal()
        result = deliver(
            selligent(fake),
            SL_CONTACTS,
            {"upsert": [people([1, 2, 3], last_name=["Last1", None, "Last3"])]},
            journal,
            retry=FAST,
        )
        assert fake.records == [
            {"MAIL": "customer2@example.com", "FIRSTNAME": "Name2", "LASTNAME": None},
            {"MAIL": "customer1@example.com", "FIRSTNAME": "Name1", "LASTNAME": "Last1"},
        ]
        load = next(r for r in fake.requests if r.method == "POST")
        assert load.path == "/organizations/SHOP/lists/CONTACTS/data/load"
        assert load.headers["x-apikey"] == f"{SL_KEY}:{SL_SECRET}"
        assert load.json["mode"] == "InsertOrUpdate" and load.json["keys"] == ["MAIL"]
        assert [r.path for r in fake.requests if r.method == "GET"] == [
            "/organizations/SHOP/lists/CONTACTS/data/load/1"
        ] * 2
        assert (result.accepted, result.rejected, result.retries) == (2, 1, 3)
        assert journal.rejections == [("3", "upsert", "InvalidValue: Invalid value for field FIRSTNAME")]
        again = deliver(selligent(fake), SL_CONTACTS, {"upsert": [people([3])]}, InMemoryJournal())
        assert again.accepted == 1 and fake.record("customer3@example.com")["FIRSTNAME"] == "Name3"
        assert all(SL_SECRET not in r.raw_body.decode() for r in fake.requests)


def test_selligent_update_and_insert_leave_what_they_must_alone():
    with SelligentFake(SL_KEY, SL_SECRET) as fake:
        fake.records.append({"MAIL": "customer1@example.com", "FIRSTNAME": "Kept"})
        deliver(selligent(fake), SL_CONTACTS, {"insert": [people([1, 2])]}, InMemoryJournal())
        deliver(
            selligent(fake),
            SL_CONTACTS,
            {"update": [people([2, 3], first_name=["Upd2", "Upd3"])]},
            InMemoryJournal(),
        )
        assert fake.records == [
            {"MAIL": "customer1@example.com", "FIRSTNAME": "Kept"},
            {"MAIL": "customer2@example.com", "FIRSTNAME": "Upd2", "LASTNAME": "Last2"},
        ]
        assert [r.json["mode"] for r in fake.requests if r.method == "POST"] == ["Insert", "Update"]


def test_selligent_static_segment_members_are_added_and_removed():
    with SelligentFake(SL_KEY, SL_SECRET) as fake:
        fake.records += [{"MAIL": f"customer{i}@example.com"} for i in (1, 2)]
        segment = fake.add_segment("VIP Europe", "VIP_EUROPE")
        platform = selligent(fake, "audiences", audience={"name": "VIP Europe"})
        spec = ActivationSpec("sl", "customer_id", match={"MAIL": "email"})
        journal = InMemoryJournal()
        deliver(platform, spec, {"add": [people([1, 2, 3])]}, journal)
        assert segment["members"] == {("customer1@example.com",), ("customer2@example.com",)}
        assert journal.rejections == [("3", "add", "RecordNotFound: No record of the list matches the keys")]
        deliver(platform, spec, {"remove": [people([1])]}, InMemoryJournal())
        assert segment["members"] == {("customer2@example.com",)}
        missing = selligent(fake, "audiences", audience={"name": "Nope"})
        with pytest.raises(PlatformConfigError, match="no static segment named 'Nope'"):
            deliver(missing, spec, {"add": [people([1])]}, InMemoryJournal())


def test_selligent_preview_validate_and_settings():
    with SelligentFake(SL_KEY, SL_SECRET) as fake:
        shown = preview(selligent(fake), SL_CONTACTS, {"upsert": [people([1])]})
        assert fake.requests == []
        assert shown[0].url == f"{fake.url}/organizations/SHOP/lists/CONTACTS/data/load"
        assert shown[0].body["data"] == [{"MAIL": "c***@e***", "FIRSTNAME": "Name1", "LASTNAME": "Last1"}]
        assert validate_connection(selligent(fake), SL_CONTACTS) == []
        bad = ActivationSpec("sl", "customer_id", match={"MAIL": "email"}, mapping={"first_name": "FIRSTNAM"})
        assert validate_connection(selligent(fake), bad) == [
            "mapping.first_name: no field 'FIRSTNAM' in Selligent list 'CONTACTS'; did you mean 'FIRSTNAME', 'LASTNAME'?"
        ]
        wrong = selligent(fake, api_secret="nope")
        with pytest.raises(PlatformAuthError) as info:
            deliver(wrong, SL_CONTACTS, {"upsert": [people([1])]}, InMemoryJournal())
        assert "The access key was incorrect" in str(info.value) and SL_KEY not in str(info.value)
    with pytest.raises(PlatformConfigError) as info:
        build_platform("selligent", {"service": "attributes", "organization": "S", "list": "L",
                                     "api_key": "k", "api_secret": "s"}, destination="sl")  # fmt: skip
    assert str(info.value) == (
        "destinations.sl: host: found nothing; allowed: the tenant's host (yourcompany.slgnt.eu) or base_url"
    )
    platform = build_platform("selligent", {"service": "attributes", "organization": "S", "list": "L",
                                            "api_key": "k", "api_secret": "s", "host": "shop.slgnt.eu"})  # fmt: skip
    assert platform.base_url == "https://shop.slgnt.eu/Portal/Api"


def test_selligent_records_follow_the_segment_through_the_dagster_job(request, tmp_path: Path, monkeypatch):
    fake = SelligentFake(SL_KEY, SL_SECRET)
    monkeypatch.setenv("SL_SECRET", SL_SECRET)
    destination = (
        f"sl:\n  type: selligent\n  service: attributes\n  organization: SHOP\n  list: CONTACTS\n"
        f"  api_key: {{env: SL_KEY}}\n  api_secret: {{env: SL_SECRET}}\n  poll_interval_seconds: 0.01\n"
        f"  base_url: {fake.url}\n"
    )
    activations = (
        "to_sl:\n  segment: big\n  destination: sl\n  match: {MAIL: email}\n  mapping: {first_name: FIRSTNAME}\n"
        "  max_rejected_pct: 50\n"
    )
    with crm_project(
        request, tmp_path, monkeypatch, fake, ("SL_KEY", SL_KEY), destination, activations
    ) as env:
        fake.fail("Invalid value", "cle@example.com")
        fake.throttle(2)
        assert run_sync_job(env.defs, env.instance, "to_sl").success
        assert {r["MAIL"]: r["FIRSTNAME"] for r in fake.records} == {
            "bob@example.com": "Bob",
            "dan@example.com": "Dan",
        }
        # a mapped change (Dan's name), an unmapped one (Bob's ltv): only Dan and the failed Cle go
        run(env.wh, "update raw.customers set first_name = 'Daniel' where customer_id = 4")
        run(env.wh, "update raw.customers set ltv = 950 where customer_id = 2")
        assert run_sync_job(env.defs, env.instance, "to_sl").success
        loads = [r.json for r in fake.requests if r.method == "POST"]
        assert sorted(row["MAIL"] for row in loads[-1]["data"]) == ["cle@example.com", "dan@example.com"]
        assert {r["MAIL"]: r["FIRSTNAME"] for r in fake.records} == {
            "bob@example.com": "Bob", "dan@example.com": "Daniel", "cle@example.com": "Cle"}  # fmt: skip
        for entry in logged(env.instance):
            assert SL_KEY not in entry and SL_SECRET not in entry


# --------------------------------------------------------------------------------------------------
# Dialog Insight
# --------------------------------------------------------------------------------------------------

DI_SPEC = ActivationSpec(
    "di",
    "customer_id",
    match={"key_f_EMail": "email"},
    mapping={"first_name": "f_FirstName", "newsletter": "optin_Newsletter"},
)


def dialog_insight(fake: DialogInsightFake, **settings):
    raw = {
        "service": "attributes",
        "key_id": 5335,
        "api_key": DI_KEY,
        "project_id": 123456,
        "base_url": fake.url,
    }
    return build_platform("dialog_insight", {**raw, **settings}, destination="di")


def test_dialog_insight_merges_contacts_and_opt_ins_only_as_the_segment_says():
    with DialogInsightFake(5335, DI_KEY, 123456) as fake:
        fake.contacts["customer3@example.com"] = {"f_FirstName": "Old", "optin_Newsletter": "1"}
        fake.fail("The e-mail domain is blocked", "customer4@example.com")
        fake.throttle(2)
        journal = InMemoryJournal()
        batch = people([1, 2, 3, 4], newsletter=[True, None, False, True])
        result = deliver(dialog_insight(fake), DI_SPEC, {"upsert": [batch]}, journal, retry=FAST)
        assert fake.contacts == {
            "customer1@example.com": {"f_FirstName": "Name1", "optin_Newsletter": "1"},
            "customer2@example.com": {"f_FirstName": "Name2"},  # NULL consent: never subscribed
            "customer3@example.com": {"f_FirstName": "Name3", "optin_Newsletter": "0"},
        }
        merge = [r for r in fake.requests if r.query.get("method") == "Merge"][-1]
        assert merge.json["MergeOptions"] == {
            "AllowInsert": True,
            "AllowUpdate": True,
            "SkipDuplicateRecords": False,
        }
        assert merge.json["Records"][0] == {
            "ID": {"key_f_EMail": "customer1@example.com"},
            "Data": {"f_FirstName": "Name1", "optin_Newsletter": "1"},
        }
        assert (result.accepted, result.rejected, result.retries) == (3, 1, 2)
        assert journal.rejections == [("4", "upsert", "InvalidValue: The e-mail domain is blocked")]
        assert deliver(dialog_insight(fake), DI_SPEC, {"upsert": [people([4], newsletter=[True])]},
                       InMemoryJournal()).accepted == 1  # fmt: skip
        deliver(
            dialog_insight(fake),
            DI_SPEC,
            {"update": [people([1, 9], newsletter=[None, None])]},
            InMemoryJournal(),
        )
        assert fake.contacts["customer1@example.com"] == {"f_FirstName": "Name1", "optin_Newsletter": "1"}
        assert "customer9@example.com" not in fake.contacts  # update creates nobody


def test_dialog_insight_key_is_masked_in_previews_and_a_wrong_one_stops_the_sync():
    with DialogInsightFake(5335, DI_KEY, 123456) as fake:
        shown = preview(dialog_insight(fake), DI_SPEC, {"insert": [people([1], newsletter=[True])]})
        assert fake.requests == []
        assert shown[0].body["AuthKey"] == {"idKey": 5335, "Key": "***"}
        assert shown[0].body["Records"][0]["ID"] == {"key_f_EMail": "c***@e***"}
        with pytest.raises(PlatformAuthError) as info:
            deliver(
                dialog_insight(fake, api_key="wrong-key"),
                DI_SPEC,
                {"upsert": [people([1], newsletter=[True])]},
                InMemoryJournal(),
            )
        assert str(info.value) == (
            "destination 'di' (dialog_insight): the platform refused the credentials (HTTP 200): "
            "InvalidAuthKey: Invalid authentication key"
        )
        assert validate_connection(dialog_insight(fake), DI_SPEC) == []
        bad = ActivationSpec(
            "di", "customer_id", match={"email": "email"}, mapping={"x": "f_FirstNam", "y": "Phone"}
        )
        assert validate_connection(dialog_insight(fake), bad) == [
            "match.email: found 'email'; allowed: a project key field, e.g. key_f_EMail",
            "mapping.y: found 'Phone'; allowed: a field f_<code> or an opt-in optin_<code>",
            "mapping.x: no field 'f_FirstNam' in Dialog Insight project 123456; did you mean 'f_FirstName', 'f_LastName'?",
            "mapping.y: no field 'Phone' in Dialog Insight project 123456",
        ]
        assert validate_connection(dialog_insight(fake, project_id=9), DI_SPEC) == [
            (
                "destination 'di' (dialog_insight): the platform refused the credentials (HTTP 200): "
                "AccessDenied: No access to this project"
            )
        ]


# --------------------------------------------------------------------------------------------------
# June
# --------------------------------------------------------------------------------------------------

JUNE_SPEC = ActivationSpec("jn", "customer_id", match={"user_id": "customer_id", "email": "email"})


def june(fake: JuneFake, **settings):
    raw = {
        "service": "audiences",
        "write_key": JUNE_KEY,
        "base_url": fake.url,
        "audience": {"name": "VIP Europe"},
    }
    return build_platform("june", {**raw, **settings}, destination="jn")


def test_june_audience_is_a_boolean_trait_set_and_unset_by_identify_calls():
    with JuneFake(JUNE_KEY) as fake:
        fake.refuse("traits.email is not a valid e-mail", "3")
        fake.throttle(3)
        journal = InMemoryJournal()
        result = deliver(june(fake), JUNE_SPEC, {"add": [people([1, 2, 3])]}, journal, retry=FAST)
        assert fake.members("VIP Europe") == {"1", "2"}
        assert fake.requests[-1].json == {
            "userId": "3",
            "traits": {"VIP Europe": True, "email": "customer3@example.com"},
        }
        assert fake.requests[-1].headers["authorization"] == f"Basic {JUNE_KEY}"
        assert (result.accepted, result.rejected, result.retries) == (2, 1, 3)
        assert journal.rejections == [("3", "add", "traits.email is not a valid e-mail")]
        deliver(june(fake), JUNE_SPEC, {"add": [people([3])], "remove": [people([1])]}, InMemoryJournal())
        assert fake.members("VIP Europe") == {"2", "3"} and fake.users["1"]["VIP Europe"] is False
        deliver(june(fake, trait="is_vip"), JUNE_SPEC, {"add": [people([2])]}, InMemoryJournal())
        assert fake.members("is_vip") == {"2"}
        assert all(JUNE_KEY not in r.raw_body.decode() for r in fake.requests)
        shown = preview(june(fake), JUNE_SPEC, {"add": [people([1])]})
        assert shown[0].body == {"userId": "***", "traits": {"VIP Europe": True, "email": "c***@e***"}}
    platform = build_platform("june", {"service": "audiences", "write_key": "k", "audience": {"name": "A"}})
    (problem,) = platform.validate_activation({"email": "email"}, {})
    assert problem == (
        "identifiers.user_id: found nothing; allowed: the user id June tracks the user with (June identifies"
        " users by userId)"
    )


def test_a_killed_june_sync_is_recovered_by_the_next_with_nothing_lost(tmp_path: Path):
    cli = CliSync(tmp_path, "to_jn", {"JUNE_KEY": JUNE_KEY})
    cli.seed(300)
    with JuneFake(JUNE_KEY, latency=0.01) as fake:
        cli.write(
            destinations=[(f"jn:\n  type: june\n  service: audiences\n  max_concurrency: 1\n"
                           f"  write_key: {{env: JUNE_KEY}}\n  base_url: {fake.url}\n")],
            activations='to_jn:\n  segment: big\n  destination: jn\n  audience: {name: "VIP Europe"}\n'
                        "  identifiers: {user_id: customer_id}\n")  # fmt: skip
        cli.kill_when(lambda: len(fake.requests) >= 120, settle=0.3)
        assert 0 < len(fake.members("VIP Europe")) < 300
        done = cli.recover()
        assert fake.members("VIP Europe") == {str(i) for i in range(1, 301)}
        assert JUNE_KEY not in done.stdout + done.stderr
    assert cli.leftovers() == []
    assert not cli.in_home(JUNE_KEY)


# --------------------------------------------------------------------------------------------------
# All My SMS
# --------------------------------------------------------------------------------------------------


def all_my_sms(fake: AllMySmsFake, **settings):
    raw = {"service": "audiences", "login": "shop", "api_key": AMS_KEY, "base_url": fake.url,
           "audience": {"name": "VIP Europe"}}  # fmt: skip
    return build_platform("all_my_sms", {**raw, **settings}, destination="sms")


def test_all_my_sms_adds_only_consented_numbers_in_the_providers_format():
    with AllMySmsFake("shop", AMS_KEY) as fake:
        spec = ActivationSpec("sms", "customer_id", match={"phone": "phone"}, mapping={"optin": "consent"},
                              default_country="FR")  # fmt: skip
        batch = pa.record_batch({
            "customer_id": [1, 2, 3, 4, 5],
            "phone": ["06 12 34 56 78", "+33 6 12 34 56 79", "0612345680", "06 12", "+44 7911 123456"],
            "optin": ["true", "yes", "false", "true", None],
        })  # fmt: skip
        fake.throttle(2)
        journal = InMemoryJournal()
        result = deliver(all_my_sms(fake), spec, {"add": [batch]}, journal, retry=FAST)
        assert fake.members("VIP Europe") == {"33612345678", "33612345679"}
        assert sorted(journal.rejections) == [
            (
                "3",
                "add",
                "no SMS consent (the column mapped to consent is not true): not added, removed from the list",
            ),
            ("4", "add", "identifier phone (column phone) is not a valid phone number"),
            (
                "5",
                "add",
                "no SMS consent (the column mapped to consent is not true): not added, removed from the list",
            ),
        ]
        assert result.accepted == 2 and result.retries == 2
        # consent withdrawn: the number leaves the list
        deliver(all_my_sms(fake), spec, {"add": [pa.record_batch({"customer_id": [2], "phone": ["0612345679"],
                                                                  "optin": ["no"]})]}, InMemoryJournal())  # fmt: skip
        assert fake.members("VIP Europe") == {"33612345678"}
        assert all(AMS_KEY not in r.raw_body.decode() for r in fake.requests)


def test_all_my_sms_list_follows_the_segment_through_the_dagster_job(
    request, tmp_path: Path, monkeypatch, capsys
):
    fake = AllMySmsFake("shop", AMS_KEY)
    destination = (
        f"sms:\n  type: all_my_sms\n  service: audiences\n  login: shop\n  api_key: {{env: AMS_KEY}}\n"
        f"  base_url: {fake.url}\n"
    )
    activations = (
        'to_sms:\n  segment: big\n  destination: sms\n  audience: {name: "VIP Europe"}\n'
        "  identifiers: {phone: phone}\n  default_country: FR\n"
    )
    with crm_project(
        request, tmp_path, monkeypatch, fake, ("AMS_KEY", AMS_KEY), destination, activations
    ) as env:
        run(env.wh, "alter table raw.customers add column phone varchar")
        run(
            env.wh,
            "update raw.customers set phone = '06123456' || lpad(cast(customer_id as varchar), 2, '0')",
        )
        assert main(["--project", str(tmp_path), "validate", "--connect"]) == 0
        assert main(["--project", str(tmp_path), "preview", "to_sms"]) == 0
        out = capsys.readouterr().out
        assert "33612345602" not in out and AMS_KEY not in out
        fake.throttle(2)
        assert run_sync_job(env.defs, env.instance, "to_sms").success
        assert fake.members("VIP Europe") == {"33612345602", "33612345603", "33612345604"}
        # Dan leaves, Bob's number changes (removed under the old one, added under the new), Ann enters
        run(env.wh, "update raw.customers set ltv = 10 where customer_id = 4")
        run(env.wh, "update raw.customers set phone = '+33 6 98 76 54 32' where customer_id = 2")
        run(env.wh, "update raw.customers set ltv = 800 where customer_id = 1")
        assert run_sync_job(env.defs, env.instance, "to_sms").success
        assert fake.members("VIP Europe") == {"33698765432", "33612345603", "33612345601"}
        fake.members("VIP Europe").discard("33612345603")
        sync_steps(env, "to_sms", full_refresh=True)
        assert fake.members("VIP Europe") == {"33698765432", "33612345603", "33612345601"}
        for entry in logged(env.instance):
            assert AMS_KEY not in entry


def test_settings_errors_name_the_key_and_what_is_allowed():
    with pytest.raises(PlatformConfigError) as info:
        build_platform(
            "all_my_sms", {"service": "attributes", "login": "x", "api_key": "k"}, destination="sms"
        )
    assert str(info.value) == "destinations.sms.service: Input should be 'audiences' (found 'attributes')"
    with pytest.raises(PlatformConfigError) as info:
        build_platform("dialog_insight", {"service": "attributes", "key_id": 0, "api_key": "k", "project_id": 1},
                       destination="di")  # fmt: skip
    assert str(info.value) == "destinations.di.key_id: Input should be greater than or equal to 1"
    platform = build_platform("all_my_sms", {"service": "audiences", "login": "x", "api_key": "k",
                                             "audience": {"name": "A"}})  # fmt: skip
    assert platform.validate_activation({"phone": "phone"}, {"first_name": "first_name"}) == [
        "mapping: found first_name; allowed: {column: consent} only (All My SMS contact lists take identifiers only)"
    ]


@pytest.mark.parametrize(
    ("marker", "services", "env"),
    [
        (
            "**Selligent (`type: selligent`).**",
            ("attributes", "audiences"),
            ("SELLIGENT_API_KEY", "SELLIGENT_API_SECRET"),
        ),
        ("**Dialog Insight (`type: dialog_insight`).**", ("attributes",), ("DIALOG_INSIGHT_API_KEY",)),
        ("**June (`type: june`).**", ("audiences",), ("JUNE_WRITE_KEY",)),
        ("**All My SMS (`type: all_my_sms`).**", ("audiences",), ("ALLMYSMS_API_KEY",)),
    ],
)
def test_the_readme_examples_load(tmp_path: Path, monkeypatch, marker, services, env) -> None:
    for name in env:
        monkeypatch.setenv(name, "secret-value")
    examples = readme_examples(marker)
    assert len(examples) == len(services)
    for n, activation in enumerate(example_activations(tmp_path, examples)):
        assert activation.platform_service == services[n]
