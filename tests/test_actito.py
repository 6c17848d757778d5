"""The Actito adapter through a fake Actito built from Actito's documentation (tests/fakes/actito.py): what the
profile table holds afterwards (profiles, segmentation members), the imports and their error reports, and that
neither the API key nor an access token shows anywhere but in the Authorization header."""

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
from fakes.actito import ActitoFake, _multipart
from platform_scenarios import run, run_sync_job, sync_steps

from dinmo_dagster.cli import main
from dinmo_dagster.platforms import (
    ActivationSpec,
    InMemoryJournal,
    PlatformAuthError,
    PlatformConfigError,
    PlatformRequestError,
    RetryPolicy,
    build_platform,
    deliver,
    preview,
    validate_connection,
)
from dinmo_dagster.platforms.actito import Actito

KEY = "qhdfbvdh747R49FRHrthqhdfbvdh74-actito-key"
FAST = RetryPolicy(max_attempts=3, initial_wait_seconds=0.01, max_wait_seconds=0.05)
PROFILES = ActivationSpec(
    "crm",
    "customer_id",
    match={"email": "email"},
    mapping={"first_name": "firstName", "last_name": "lastName"},
)
MEMBERS = ActivationSpec("crm", "customer_id", match={"email": "email"})


@pytest.fixture
def actito():
    with ActitoFake(KEY) as fake:
        yield fake


def destination(fake: ActitoFake, service: str = "attributes", **settings) -> Actito:
    raw = {"service": service, "api_key": KEY, "entity": "shop", "table": "Customers", "base_url": fake.url,
           "poll_interval_seconds": 0.01, **settings}  # fmt: skip
    return built("actito", Actito, raw)


def customers(ids: list[int], **overrides) -> pa.RecordBatch:
    columns = {
        "customer_id": ids,
        "email": [f"Customer{i}@Example.com " for i in ids],
        "first_name": [f"Name{i}" for i in ids],
        "last_name": [f"Last{i}" for i in ids],
    }
    columns.update(overrides)
    return pa.record_batch(columns)


def key_only_in_auth(fake: ActitoFake) -> bool:
    tokens = set(fake.tokens)
    for r in fake.token_requests:
        assert r.headers.get("authorization") == KEY
    for r in fake.requests:
        assert r.headers.get("authorization", "").removeprefix("Bearer ") in tokens
        text = r.raw_body.decode(errors="replace") + r.path
        assert KEY not in text and not any(t in text for t in tokens)
    return True


def imports(fake: ActitoFake) -> list[tuple[dict, str]]:
    """The definition and CSV of every import the fake received."""
    found = []
    for r in fake.requests:
        if r.method == "POST" and r.path.endswith("/etl-executions"):
            parts = _multipart(r)
            found.append((json.loads(parts["oneShotEtlExecution"]), parts["inputFile"].decode()))
    return found


def test_an_import_upserts_profiles_and_is_polled_until_finished(actito):
    actito.add_profile(emailAddress="customer2@example.com", firstName="Old", lastName="Gone")
    result = deliver(destination(actito), PROFILES, {"upsert": [customers([1, 2], last_name=["Last1", None])]},
                     InMemoryJournal())  # fmt: skip
    assert actito.by_email() == {
        "customer1@example.com": {"firstName": "Name1", "lastName": "Last1"},
        "customer2@example.com": {"firstName": "Name2"},  # the NULL (an empty cell) emptied lastName
    }
    ((definition, content),) = imports(actito)
    assert content == ("emailAddress,firstName,lastName\ncustomer1@example.com,Name1,Last1\n"
                       "customer2@example.com,Name2,\n")  # fmt: skip
    assert definition["mappings"][0]["mode"] == "CREATE_UPDATE"
    assert definition["mappings"][0]["keyAttribute"] == "emailAddress"
    (execution,) = actito.executions
    assert [r.path for r in actito.requests[1:]] == [f"/mass-imports/v5/entities/shop/etl-executions/{execution}"] * 2 + [
        f"/mass-imports/v5/entities/shop/etl-executions/{execution}/errors"]  # fmt: skip
    assert (result.accepted, result.rejected) == (2, 0)
    assert len(actito.token_requests) == 1 and key_only_in_auth(actito)


def test_lines_in_error_are_rejected_with_actitos_reason_and_sent_again_next_sync(actito):
    actito.fail_keys("INVALID_VALUE", "firstName is too long", "customer2@example.com")
    journal = InMemoryJournal()
    result = deliver(destination(actito), PROFILES, {"upsert": [customers([1, 2, 3])]}, journal)
    assert journal.rejections == [("2", "upsert", "Actito INVALID_VALUE: firstName is too long")]
    assert sorted(journal.acknowledged_keys["upsert"]) == ["1", "3"]
    assert result.reasons == {"Actito INVALID_VALUE": 1}
    again = deliver(destination(actito), PROFILES, {"upsert": [customers([2])]}, InMemoryJournal())
    assert again.accepted == 1 and "customer2@example.com" in actito.by_email()


def test_update_rejects_unknown_profiles_and_insert_leaves_existing_ones_alone(actito):
    actito.add_profile(emailAddress="customer1@example.com", firstName="Kept")
    journal = InMemoryJournal()
    deliver(destination(actito), PROFILES, {"update": [customers([1, 2])]}, journal)
    assert journal.rejections == [("2", "update", ("Actito PROFILE_NOT_FOUND: No profile with emailAddress "
                                                  "customer2@example.com"))]  # fmt: skip
    journal = InMemoryJournal()
    deliver(destination(actito), PROFILES, {"insert": [customers([1, 3], first_name=["New", "C3"])]}, journal)
    assert journal.rejections == []
    assert actito.by_email() == {"customer1@example.com": {"firstName": "Name1", "lastName": "Last1"},
                                 "customer3@example.com": {"firstName": "C3", "lastName": "Last3"}}  # fmt: skip
    assert [d["mappings"][0]["mode"] for d, _ in imports(actito)] == ["UPDATE_ONLY", "CREATE_ONLY"]


def test_mirror_deletes_profiles_one_request_each_and_a_gone_one_counts_as_done(actito):
    actito.add_profile(emailAddress="customer1@example.com")
    actito.add_profile(emailAddress="customer2@example.com")
    result = deliver(destination(actito), PROFILES, {"delete": [customers([1, 9])]}, InMemoryJournal())
    assert result.accepted == 2 and list(actito.by_email()) == ["customer2@example.com"]
    assert [(r.method, r.path) for r in actito.requests] == [
        ("DELETE", "/v4/entity/shop/table/Customers/profile/emailAddress=customer1@example.com"),
        ("DELETE", "/v4/entity/shop/table/Customers/profile/emailAddress=customer9@example.com"),
    ]


def test_a_429_storm_is_ridden_out_and_an_expired_token_renewed(actito, caplog):
    actito.throttle(4)
    platform = destination(actito, "audiences", audience={"name": "VIP Europe"})
    actito.add_profile(emailAddress="customer1@example.com")
    actito.add_profile(emailAddress="customer2@example.com")
    result = deliver(platform, MEMBERS, {"add": [customers([1])]}, InMemoryJournal(), retry=FAST)
    assert result.accepted == 1 and result.retries == 4
    assert [s for _, p, s in actito.answers if p != "/auth/token"] == [429, 429, 429, 429, 200]
    actito.expire_tokens()
    deliver(platform, MEMBERS, {"add": [customers([2])]}, InMemoryJournal())
    assert [s for _, p, s in actito.answers if p != "/auth/token"][-2:] == [401, 200]
    assert len(actito.token_requests) == 2
    assert actito.members["VIP Europe"] == {"customer1@example.com", "customer2@example.com"}
    assert "customer" not in caplog.text  # logs name the segmentation, never a profile's key
    assert key_only_in_auth(actito)


def test_a_refused_api_key_stops_at_once(actito):
    platform = build_platform("actito", {"service": "attributes", "api_key": "nope", "entity": "shop",
                                         "table": "Customers", "base_url": actito.url}, destination="crm")  # fmt: skip
    with pytest.raises(PlatformAuthError) as info:
        deliver(platform, PROFILES, {"upsert": [customers([1])]}, InMemoryJournal())
    assert str(info.value) == (
        "destination 'crm' (actito): Actito refused the API key (GET /auth/token answered HTTP 401: Bad credentials); "
        "check api_key"
    )
    assert actito.requests == []


def test_segmentation_members_are_added_and_removed_and_unknown_profiles_rejected(actito):
    for i in (1, 2, 3):
        actito.add_profile(emailAddress=f"customer{i}@example.com")
    platform = destination(actito, "audiences", audience={"name": "VIP Europe"})
    journal = InMemoryJournal()
    result = deliver(platform, MEMBERS, {"add": [customers([1, 2, 3, 4])]}, journal)
    assert actito.members["VIP Europe"] == {f"customer{i}@example.com" for i in (1, 2, 3)}
    assert journal.rejections == [("4", "add", ("no Actito profile has this key (a segmentation add creates none: "
                                               "an attributes activation creates it)"))]  # fmt: skip
    assert result.accepted == 3
    assert actito.requests[0].path == ("/v4/entity/shop/table/Customers/profile/emailAddress=customer1@example.com"
                                       "/segmentation/VIP%20Europe")  # fmt: skip
    removed = deliver(platform, MEMBERS, {"remove": [customers([1, 4])]}, InMemoryJournal())
    assert removed.accepted == 2 and actito.members["VIP Europe"] == {
        "customer2@example.com",
        "customer3@example.com",
    }

    missing = destination(actito, "audiences", audience={"name": "Nope"})
    with pytest.raises(PlatformRequestError, match="Segmentation Nope not found"):
        deliver(missing, MEMBERS, {"add": [customers([1])]}, InMemoryJournal())


def test_preview_masks_identifiers_and_sends_nothing(actito):
    shown = preview(destination(actito, "audiences", audience={"name": "VIP Europe"}), MEMBERS,
                    {"add": [customers([1, 2])]})  # fmt: skip
    assert actito.requests == [] and actito.token_requests == []
    assert (
        shown[0].url
        == f"{actito.url}/v4/entity/shop/table/Customers/profile/emailAddress=<key>/segmentation/VIP Europe"
    )
    assert shown[0].body == {"profiles": ["c***@e***", "c***@e***"]}
    shown = preview(destination(actito), PROFILES, {"upsert": [customers([1])]})
    assert shown[0].body["inputFile"] == [
        {"emailAddress": "c***@e***", "firstName": "Name1", "lastName": "Last1"}
    ]
    assert actito.requests == []


def test_settings_errors_name_the_key_and_what_is_allowed():
    with pytest.raises(PlatformConfigError) as info:
        build_platform("actito", {"service": "audiences", "api_key": KEY, "entity": "shop", "table": "Customers",
                                  "audience": {"id": "12"}}, destination="crm")  # fmt: skip
    assert "destinations.crm.audience" in str(info.value)
    assert "allowed: {name: ...} (Actito segmentations are addressed by name)" in str(info.value)
    with pytest.raises(PlatformConfigError) as info:
        build_platform("actito", {"service": "attributes", "api_key": KEY, "entity": "my shop", "table": "Customers"},
                       destination="crm")  # fmt: skip
    assert (
        str(info.value) == "destinations.crm.entity: found 'my shop'; allowed: letters, digits, '_' and '-'"
    )


def test_validate_connect_checks_attributes_consent_and_the_segmentation(actito):
    assert validate_connection(destination(actito), PROFILES) == []
    spec = ActivationSpec("crm", "customer_id", match={"email": "email"},
                          mapping={"first_name": "firstname", "optin": "Newsletter", "id": "profileId"})  # fmt: skip
    assert validate_connection(destination(actito), spec) == [
        (
            "mapping.optin: 'Newsletter' is a subscription of Actito table 'Customers'; allowed: an attribute (DinMo never "
            "subscribes nor unsubscribes profiles)"
        ),
        "mapping.first_name: no field 'firstname' in Actito table 'Customers'; did you mean 'firstName'?",
        "mapping.id: field 'profileId' of Actito table 'Customers' is read-only",
    ]
    by_shop = ActivationSpec(
        "crm", "customer_id", match={"shop": "email"}, mapping={"first_name": "firstName"}
    )
    assert validate_connection(destination(actito), by_shop) == [
        "match: attribute 'shop' of Actito table 'Customers' is not unique; allowed: a unique attribute"
    ]
    assert (
        validate_connection(destination(actito, "audiences", audience={"name": "VIP Europe"}), MEMBERS) == []
    )
    assert validate_connection(destination(actito, "audiences", audience={"name": "Tier"}), MEMBERS) == [
        "destination 'crm' (actito): audience.name: 'Tier' is an exclusive segmentation; allowed: a simple segmentation"
    ]


def test_the_readme_actito_examples_load(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("ACTITO_API_KEY", KEY)
    examples = readme_examples("**Actito (`type: actito`).**")
    assert len(examples) == 2
    for n, activation in enumerate(example_activations(tmp_path, examples)):
        assert activation.platform_service == ("attributes", "audiences")[n]


def test_profiles_follow_the_segment_through_the_dagster_job(request, tmp_path: Path, monkeypatch):
    fake = ActitoFake(KEY)
    destination_yaml = (
        f"ac:\n  type: actito\n  service: attributes\n  api_key: {{env: ACTITO_KEY}}\n  entity: shop\n"
        f"  table: Customers\n  poll_interval_seconds: 0.01\n  base_url: {fake.url}\n"
    )
    activations = (
        "to_ac:\n  segment: big\n  destination: ac\n  match: {email: email}\n  mapping: {first_name: firstName}\n"
        "  sync_mode: mirror\n  max_rejected_pct: 50\n"
    )
    with crm_project(request, tmp_path, monkeypatch, fake, ("ACTITO_KEY", KEY), destination_yaml,
                     activations) as env:  # fmt: skip
        fake.fail_keys("INVALID_VALUE", "firstName is reserved", "cle@example.com")
        fake.throttle(2)
        assert run_sync_job(env.defs, env.instance, "to_ac").success
        assert fake.by_email() == {
            "bob@example.com": {"firstName": "Bob"},
            "dan@example.com": {"firstName": "Dan"},
        }

        # Cle (in error last time) goes again; Dan leaves (deleted); Bob's unmapped ltv change sends nothing.
        run(env.wh, "update raw.customers set ltv = 10 where customer_id = 4")
        run(env.wh, "update raw.customers set ltv = 950 where customer_id = 2")
        assert run_sync_job(env.defs, env.instance, "to_ac").success
        assert fake.by_email() == {
            "bob@example.com": {"firstName": "Bob"},
            "cle@example.com": {"firstName": "Cle"},
        }
        assert imports(fake)[-1][1] == "emailAddress,firstName\ncle@example.com,Cle\n"
        deletes = [r.path for r in fake.requests if r.method == "DELETE"]
        assert deletes == ["/v4/entity/shop/table/Customers/profile/emailAddress=dan@example.com"]

        # A mapped change: Bob's first name is imported again.
        run(env.wh, "update raw.customers set first_name = 'Bobby' where customer_id = 2")
        assert run_sync_job(env.defs, env.instance, "to_ac").success
        assert fake.by_email()["bob@example.com"] == {"firstName": "Bobby"}
        for entry in logged(env.instance):
            assert KEY not in entry and not any(t in entry for t in fake.tokens)
        assert key_only_in_auth(fake)


def test_a_segmentation_follows_the_segment_through_the_dagster_job(
    request, tmp_path: Path, monkeypatch, capsys
):
    def fake() -> ActitoFake:
        made = ActitoFake(KEY)
        for name in ("ann", "bob", "cle", "dan", "robert"):
            made.add_profile(emailAddress=f"{name}@example.com")
        return made

    with ad_project(request, tmp_path, monkeypatch, fake, attr="actito", type_="actito", destination="ac",
                    activation="to_ac", fields={"entity": "shop", "table": "Customers"},
                    secrets={"api_key": ("ACTITO_KEY", KEY)}) as env:  # fmt: skip
        assert main(["--project", str(tmp_path), "validate", "--connect"]) == 0
        assert main(["--project", str(tmp_path), "preview", "to_ac"]) == 0
        out = capsys.readouterr().out
        assert "bob@example.com" not in out and KEY not in out

        env.actito.throttle(3)
        assert run_sync_job(env.defs, env.instance, "to_ac").success
        vip = env.actito.members["VIP Europe"]
        assert vip == {f"{n}@example.com" for n in ("bob", "cle", "dan")}

        change_customers(env.wh)
        assert run_sync_job(env.defs, env.instance, "to_ac").success
        assert vip == {f"{n}@example.com" for n in ("robert", "cle", "ann")}

        vip.discard("cle@example.com")
        sync_steps(env, "to_ac", full_refresh=True)
        assert vip == {f"{n}@example.com" for n in ("robert", "cle", "ann")}
        for entry in logged(env.instance):
            assert KEY not in entry and "@example.com" not in entry
        assert key_only_in_auth(env.actito)


def test_a_killed_sync_to_a_segmentation_is_recovered_by_the_next_with_nothing_lost(tmp_path: Path):
    cli = CliSync(tmp_path, "to_ac", {"ACTITO_KEY": KEY})
    cli.seed(40)
    with ActitoFake(KEY, latency=0.02) as fake:
        for i in range(1, 41):
            fake.add_profile(emailAddress=f"c{i}@example.com")
        cli.write(
            destinations=[(f"ac:\n  type: actito\n  service: audiences\n  max_concurrency: 1\n  entity: shop\n"
                          f"  table: Customers\n  api_key: {{env: ACTITO_KEY}}\n  base_url: {fake.url}\n"
                          "  rate_limit: 8\n")],
            activations='to_ac:\n  segment: big\n  destination: ac\n  audience: {name: "VIP Europe"}\n'
                        "  identifiers: {email: email}\n")  # fmt: skip
        # Batches of 25 and 15 profiles, one request each, one at a time: killed in the second one.
        # settle: the request in flight at the kill is answered
        cli.kill_when(
            lambda: sum(1 for m, _, s in list(fake.answers) if m == "PUT" and s == 200) >= 30, settle=0.3
        )
        assert 25 <= len(fake.members["VIP Europe"]) < 40

        cli.recover()
        assert fake.members["VIP Europe"] == {f"c{i}@example.com" for i in range(1, 41)}
        puts = [p for m, p, status in fake.answers if m == "PUT" and status == 200]  # 429s are sent again
        assert max(puts.count(p) for p in puts) <= 2
        assert len(puts) - 40 <= 15  # the journalled batch of 25 is not sent again
        assert key_only_in_auth(fake)
    assert cli.leftovers() == []
    assert not cli.in_home(KEY)
