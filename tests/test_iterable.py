"""The Iterable adapter through a fake Iterable project built from Iterable's API reference
(tests/fakes/iterable.py): what the project holds afterwards (users and their fields, list members), the
failed updates mapped to records, and that the API key never shows anywhere but in the Api-Key header."""

from __future__ import annotations

import datetime as dt
import decimal
import json
from pathlib import Path

import pyarrow as pa
import pytest
from ad_scenarios import ad_project, change_customers
from attribute_scenarios import (
    CliSync,
    crm_project,
    example_activations,
    logged,
    readme_examples,
)
from fakes.iterable import IterableFake
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
from dinmo_dagster.platforms.iterable import Iterable, iterable_value

KEY = "c0ffee4b8a9c610e7d2f8a1b45c3f9c2"
FAST = RetryPolicy(max_attempts=5, initial_wait_seconds=0.01, max_wait_seconds=0.05)
USERS = ActivationSpec("crm", "customer_id", match={"email": "email"}, mapping={"first_name": "firstName"})
MEMBERS = ActivationSpec("crm", "customer_id", match={"email": "email"})


@pytest.fixture
def iterable():
    with IterableFake(KEY) as fake:
        yield fake


def destination(fake: IterableFake, service: str = "attributes", **settings) -> Iterable:
    platform = build_platform(
        "iterable", {"service": service, "api_key": KEY, "base_url": fake.url, **settings}, destination="crm"
    )
    assert isinstance(platform, Iterable)
    return platform


def customers(ids: list[int], **overrides) -> pa.RecordBatch:
    columns = {
        "customer_id": ids,
        "email": [f"Customer{i}@Example.com " for i in ids],
        "first_name": [f"Name{i}" for i in ids],
    }
    columns.update(overrides)
    return pa.record_batch(columns)


def key_only_in_header(fake: IterableFake) -> bool:
    for r in fake.requests:
        assert r.headers.get("api-key") == KEY
        assert KEY not in r.raw_body.decode() and KEY not in r.path
    return True


def test_bulk_update_upserts_users_and_maps_failed_updates_to_records(iterable):
    iterable.add_user("customer2@example.com", firstName="Old", plan="gold")
    iterable.forget("customer3@example.com")
    journal = InMemoryJournal()
    result = deliver(destination(iterable), USERS, {"upsert": [customers([1, 2, 3])]}, journal)

    assert iterable.profiles() == {
        "customer2@example.com": {"firstName": "Name2", "plan": "gold"},  # fields not sent are kept
        "customer1@example.com": {"firstName": "Name1"},
    }
    assert iterable.requests[0].path == "/api/users/bulkUpdate"
    assert iterable.requests[0].json == {
        "users": [
            {"email": "customer1@example.com", "dataFields": {"firstName": "Name1"}},
            {"email": "customer2@example.com", "dataFields": {"firstName": "Name2"}},
            {"email": "customer3@example.com", "dataFields": {"firstName": "Name3"}},
        ]
    }
    assert journal.rejections == [
        ("3", "upsert", "Iterable's failedUpdates.forgottenEmails: the user was GDPR-forgotten")
    ]
    assert (result.accepted, result.rejected) == (2, 1)
    assert result.reasons == {"forgottenEmails": 1}
    assert key_only_in_header(iterable)


def test_a_type_mismatch_is_rejected_and_goes_again_once_fixed(iterable):
    iterable.fields["age"] = "long"
    spec = ActivationSpec("crm", "customer_id", match={"email": "email"}, mapping={"age": "age"})
    journal = InMemoryJournal()
    deliver(destination(iterable), spec, {"upsert": [customers([1, 2], age=["forty", "41"])]}, journal)
    assert journal.rejections == [
        ("1", "upsert", "Iterable's failedUpdates.invalidDataEmails: invalid data in dataFields"),
        ("2", "upsert", "Iterable's failedUpdates.invalidDataEmails: invalid data in dataFields"),
    ]
    deliver(destination(iterable), spec, {"upsert": [customers([1, 2], age=[40, 41])]}, InMemoryJournal())
    assert iterable.profiles() == {"customer1@example.com": {"age": 40}, "customer2@example.com": {"age": 41}}


def test_values_and_nulls_as_iterable_takes_them(iterable):
    spec = ActivationSpec(
        "crm", "customer_id", match={"userId": "customer_id"},
        mapping={"first_name": "firstName", "ltv": "ltv", "since": "signupDate"},
    )  # fmt: skip
    batch = customers(
        [7, 8],
        ltv=pa.array([decimal.Decimal("900.50"), decimal.Decimal(12)], pa.decimal128(10, 2)),
        since=[dt.datetime(2024, 5, 1, 9, 30), None],
        first_name=["Ann", None],
    )
    deliver(destination(iterable, prefer_user_id=True), spec, {"upsert": [batch]}, InMemoryJournal())
    assert iterable.requests[0].json["users"] == [
        {"userId": "7", "preferUserId": True,
         "dataFields": {"firstName": "Ann", "ltv": 900.5, "signupDate": "2024-05-01 09:30:00 +00:00"}},
        {"userId": "8", "preferUserId": True, "dataFields": {"firstName": None, "ltv": 12, "signupDate": None}},
    ]  # fmt: skip
    assert iterable.fields["signupDate"] == "date"
    assert iterable_value(dt.date(2024, 5, 1)) == "2024-05-01 00:00:00 +00:00"


def test_mirror_deletes_users_one_request_each_and_a_gone_user_is_done(iterable):
    iterable.add_user("customer1@example.com", firstName="A")
    iterable.add_user("customer2@example.com", firstName="B")
    result = deliver(destination(iterable), USERS, {"delete": [customers([1, 3])]}, InMemoryJournal())
    assert result.accepted == 2
    assert [(r.method, r.path) for r in iterable.requests] == [
        ("DELETE", "/api/users/customer1@example.com"), ("DELETE", "/api/users/customer3@example.com")]  # fmt: skip
    assert iterable.profiles() == {"customer2@example.com": {"firstName": "B"}}


def test_a_429_storm_is_ridden_out(iterable):
    iterable.throttle(4)
    result = deliver(
        destination(iterable), USERS, {"upsert": [customers([1])]}, InMemoryJournal(), retry=FAST
    )
    assert result.accepted == 1 and result.retries == 4
    assert [s for _, _, s in iterable.answers] == [429, 429, 429, 429, 200]


def test_the_sdk_keeps_to_five_bulk_updates_a_second(iterable):
    # 2,600 users: 3 requests of at most 1,000; plus 5 more single-user syncs, all under the fake's 5/s
    result = deliver(
        destination(iterable), USERS, {"upsert": [customers(list(range(1, 2601)))]}, InMemoryJournal()
    )
    assert result.accepted == 2600
    assert sorted(len(r.json["users"]) for r in iterable.requests) == [600, 1000, 1000]
    assert 429 not in [s for _, _, s in iterable.answers]


def test_a_wrong_key_stops_at_once_with_iterables_message(iterable):
    platform = build_platform(
        "iterable", {"service": "attributes", "api_key": "nope", "base_url": iterable.url}, destination="crm"
    )
    with pytest.raises(PlatformAuthError) as info:
        deliver(platform, USERS, {"upsert": [customers([1])]}, InMemoryJournal())
    assert str(info.value) == (
        "destination 'crm' (iterable): the platform refused the credentials (HTTP 401): Invalid API key (BadApiKey)"
    )
    assert len(iterable.requests) == 1


def test_list_members_are_subscribed_and_unsubscribed_without_a_channel_unsubscribe(iterable):
    platform = destination(iterable, "audiences", audience={"name": "VIP Europe"})
    journal = InMemoryJournal()
    iterable.forget("customer3@example.com")
    result = deliver(platform, MEMBERS, {"add": [customers([1, 2, 3])]}, journal)
    ilist = iterable.list_named("VIP Europe")
    assert ilist is not None and ilist.members == {"customer1@example.com", "customer2@example.com"}
    assert journal.rejections == [
        ("3", "add", "Iterable's failedUpdates.forgottenEmails: the user was GDPR-forgotten")
    ]
    assert result.accepted == 2
    subscribe = next(r for r in iterable.requests if r.path == "/api/lists/subscribe")
    assert subscribe.json == {
        "listId": ilist.id,
        "subscribers": [{"email": f"customer{i}@example.com"} for i in (1, 2, 3)],
        "updateExistingUsersOnly": False,
    }
    removed = deliver(platform, MEMBERS, {"remove": [customers([1, 999])]}, InMemoryJournal())
    assert removed.accepted == 2 and ilist.members == {"customer2@example.com"}  # 999: no such user, done
    unsubscribe = next(r for r in iterable.requests if r.path == "/api/lists/unsubscribe")
    assert set(unsubscribe.json) == {"listId", "subscribers"} and iterable.channel_unsubscribes == 0


def test_update_existing_users_only_rejects_new_users(iterable):
    iterable.add_user("customer1@example.com")
    ilist = iterable.create_list("VIP Europe")
    platform = destination(iterable, "audiences", audience={"id": ilist.id}, update_existing_users_only=True)
    journal = InMemoryJournal()
    deliver(platform, MEMBERS, {"add": [customers([1, 2])]}, journal)
    assert ilist.members == {"customer1@example.com"}
    assert journal.rejections == [
        ("2", "add", ("Iterable's failedUpdates.notFoundEmails: no Iterable user has this e-mail "
         "(updateExistingUsersOnly)"))]  # fmt: skip


def test_preview_masks_identifiers_and_sends_nothing(iterable):
    shown = preview(
        destination(iterable, "audiences", audience={"id": 7}), MEMBERS, {"add": [customers([1, 2])]}
    )
    assert shown[0].url == f"{iterable.url}/api/lists/subscribe"
    assert shown[0].body["subscribers"] == [{"email": "c***@e***"}, {"email": "c***@e***"}]
    deleted = preview(destination(iterable), USERS, {"delete": [customers([1])]})
    assert deleted[0].url == f"{iterable.url}/api/users/c***@e***"
    assert iterable.requests == []


def test_settings_and_activation_errors_name_the_key_and_what_is_allowed(iterable):
    with pytest.raises(PlatformConfigError) as info:
        build_platform(
            "iterable", {"service": "attributes", "api_key": KEY, "data_center": "asia"}, destination="crm"
        )
    assert str(info.value) == "destinations.crm.data_center: Input should be 'us' or 'eu' (found 'asia')"
    with pytest.raises(PlatformConfigError) as info:
        build_platform(
            "iterable",
            {"service": "attributes", "api_key": KEY, "update_existing_users_only": True},
            destination="crm",
        )
    assert str(info.value) == (
        "destinations.crm.update_existing_users_only: found True; allowed only with service: audiences"
    )
    platform = destination(iterable)
    assert platform.validate_activation(
        {"email": "email", "userId": "customer_id"}, {"opt": "emailListIds"}
    ) == [
        (
            "match: found email, userId; allowed: one of email, userId (Iterable names a user by one of them, as the "
            "project identifies users)"
        ),
        (
            "mapping.opt: found 'emailListIds'; allowed: a profile field (subscriptions are never set by an "
            "attributes sync: Iterable changes them without subscribe events)"
        ),
    ]
    eu = build_platform(
        "iterable", {"service": "attributes", "api_key": KEY, "data_center": "eu"}, destination="crm"
    )
    assert eu.base_url == "https://api.eu.iterable.com"


def test_validate_connect_checks_the_key_the_list_and_the_fields(iterable):
    assert validate_connection(destination(iterable), USERS) == []
    spec = ActivationSpec("crm", "customer_id", match={"email": "email"}, mapping={"first_name": "firstNam"})
    assert validate_connection(destination(iterable), spec) == []  # the project creates new fields
    assert validate_connection(destination(iterable, create_new_fields=False), spec) == [
        (
            "mapping.first_name: no field 'firstNam' in Iterable users; did you mean 'firstName'?; create_new_fields "
            "is false, so Iterable would drop it"
        )
    ]
    assert validate_connection(destination(iterable, "audiences", audience={"id": 99}), MEMBERS) == [
        "destination 'crm' (iterable): audience.id: no list 99 in the Iterable project"
    ]
    wrong = build_platform("iterable", {"service": "attributes", "api_key": "x", "base_url": iterable.url})
    assert validate_connection(wrong, USERS) == [
        (
            "destination 'iterable' (iterable): the platform refused the credentials (HTTP 401): Invalid API key "
            "(BadApiKey)"
        )
    ]


def test_an_iterable_list_follows_the_segment_through_the_dagster_job(
    request, tmp_path: Path, monkeypatch, capsys
):
    with ad_project(
        request, tmp_path, monkeypatch, lambda: IterableFake(KEY), attr="iterable", type_="iterable",
        destination="it", activation="to_iterable", fields={}, secrets={"api_key": ("ITERABLE_KEY", KEY)},
    ) as env:  # fmt: skip
        assert main(["--project", str(tmp_path), "validate", "--connect"]) == 0
        assert main(["--project", str(tmp_path), "preview", "to_iterable"]) == 0
        out = capsys.readouterr().out
        assert "bob@example.com" not in out and KEY not in out

        env.iterable.throttle(3)
        assert run_sync_job(env.defs, env.instance, "to_iterable").success
        ilist = env.iterable.list_named("VIP Europe")
        assert ilist.members == {f"{n}@example.com" for n in ("bob", "cle", "dan")}

        change_customers(env.wh)  # Dan leaves, Bob becomes robert@example.com, Ann enters
        assert run_sync_job(env.defs, env.instance, "to_iterable").success
        assert ilist.members == {f"{n}@example.com" for n in ("robert", "cle", "ann")}

        ilist.members.discard("cle@example.com")
        sync_steps(env, "to_iterable", full_refresh=True)
        assert ilist.members == {f"{n}@example.com" for n in ("robert", "cle", "ann")}
        for entry in logged(env.instance):
            assert KEY not in entry
        assert key_only_in_header(env.iterable)


def test_users_follow_the_segment_under_mirror_a_failed_one_going_with_the_next_sync(
    request, tmp_path: Path, monkeypatch
):
    fake = IterableFake(KEY)
    destination_yaml = f"it:\n  type: iterable\n  service: attributes\n  api_key: {{env: ITERABLE_KEY}}\n  base_url: {fake.url}\n"
    activations = (
        "to_it:\n  segment: big\n  destination: it\n  match: {email: email}\n  mapping: {first_name: firstName}\n"
        "  sync_mode: mirror\n  max_rejected_pct: 50\n"
    )
    with crm_project(
        request, tmp_path, monkeypatch, fake, ("ITERABLE_KEY", KEY), destination_yaml, activations
    ) as env:
        fake.forget("cle@example.com")
        fake.throttle(2)
        assert run_sync_job(env.defs, env.instance, "to_it").success
        assert fake.profiles() == {
            "bob@example.com": {"firstName": "Bob"},
            "dan@example.com": {"firstName": "Dan"},
        }

        # Cle (refused last time) goes again; Ann enters; Dan leaves (deleted); Bob's unmapped ltv change sends nothing.
        fake.forgotten.clear()
        run(env.wh, "update raw.customers set ltv = 800 where customer_id = 1")
        run(env.wh, "update raw.customers set ltv = 10 where customer_id = 4")
        run(env.wh, "update raw.customers set ltv = 950 where customer_id = 2")
        assert run_sync_job(env.defs, env.instance, "to_it").success
        bulk = [r.json for r in fake.requests if r.path == "/api/users/bulkUpdate"]
        assert sorted(u["email"] for u in bulk[-1]["users"]) == ["ann@example.com", "cle@example.com"]
        assert fake.profiles() == {
            "bob@example.com": {"firstName": "Bob"}, "cle@example.com": {"firstName": "Cle"},
            "ann@example.com": {"firstName": "Ann"}}  # fmt: skip
        assert ("DELETE", "/api/users/dan@example.com") in [(r.method, r.path) for r in fake.requests]
        for entry in logged(env.instance):
            assert KEY not in entry
        assert key_only_in_header(fake)


def test_the_readme_iterable_examples_load(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("ITERABLE_API_KEY", KEY)
    examples = readme_examples("**Iterable (`type: iterable`).**")
    assert len(examples) == 2
    for n, activation in enumerate(example_activations(tmp_path, examples)):
        assert activation.platform_service == ("attributes", "audiences")[n]


def test_a_killed_sync_of_users_is_recovered_by_the_next_with_nothing_lost(tmp_path: Path):
    cli = CliSync(tmp_path, "to_it", {"ITERABLE_KEY": KEY})
    cli.seed(4000, "'n' || i")
    with IterableFake(KEY, latency=0.3) as fake:
        cli.write(
            destinations=[(f"it:\n  type: iterable\n  service: attributes\n  max_concurrency: 1\n"
                          f"  api_key: {{env: ITERABLE_KEY}}\n  base_url: {fake.url}\n")],
            activations="to_it:\n  segment: big\n  destination: it\n  match: {email: email}\n"
                        "  mapping: {first_name: firstName}\n")  # fmt: skip
        # 4 requests of 1,000 users, one at a time: killed when the third arrives (the first is journalled).
        # settle: the request in flight at the kill is answered
        cli.kill_when(
            lambda: sum(1 for r in fake.requests if r.path == "/api/users/bulkUpdate") >= 3, settle=0.5
        )
        assert 0 < len(fake.users) < 4000
        before = sum(1 for r in fake.requests if r.path == "/api/users/bulkUpdate")

        cli.recover()
        assert fake.profiles() == {f"c{i}@example.com": {"firstName": f"n{i}"} for i in range(1, 4001)}
        again = [r.json["users"] for r in fake.requests if r.path == "/api/users/bulkUpdate"][before:]
        resent = [u["email"] for batch in again for u in batch]
        assert len(resent) == len(set(resent)) <= 4000  # the recovery sends each user at most once
        assert key_only_in_header(fake)
    assert cli.leftovers() == []
    assert not cli.in_home(KEY)
    assert "c1@example.com" not in json.dumps([r.path for r in fake.requests])
