"""The Mailchimp adapter through a fake Mailchimp built from Mailchimp's documentation (tests/fakes/mailchimp.py):
what the account holds afterwards (list members, their status and merge fields, static segment members),
that nobody is subscribed without the segment's consent, and that the API key never shows anywhere but in
the Authorization header."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pyarrow as pa
import pytest
from ad_scenarios import ad_project, change_customers
from attribute_scenarios import (
    CliSync,
    built,
    load_example,
    logged,
    readme_examples,
)
from fakes.mailchimp import MailchimpFake
from platform_scenarios import run_sync_job, sync_steps

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
from dinmo_dagster.platforms.mailchimp import Mailchimp

KEY = "0f3b2c9d8e7a6b5c4d3e2f1a0b9c8d7e-us6"
BASIC = base64.b64encode(f"dinmo:{KEY}".encode()).decode()
LIST = "9e67587f52"
FAST = RetryPolicy(max_attempts=4, initial_wait_seconds=0.01, max_wait_seconds=0.05)
MEMBERS = ActivationSpec("mc", "customer_id", match={"email": "email"})
WITH_CONSENT = ActivationSpec(
    "mc", "customer_id", match={"email": "email"}, mapping={"opt_in": "consent", "first_name": "FNAME"}
)


@pytest.fixture
def mailchimp():
    with MailchimpFake(KEY, list_id=LIST) as fake:
        yield fake


def destination(fake: MailchimpFake, **settings) -> Mailchimp:
    raw = {"service": "audiences", "api_key": KEY, "list_id": LIST, "base_url": fake.url,
           "audience": {"name": "VIP Europe"}, **settings}  # fmt: skip
    return built("mailchimp", Mailchimp, raw, "mc")


def customers(ids: list[int], **overrides) -> pa.RecordBatch:
    columns = {
        "customer_id": ids,
        "email": [f"Customer{i}@Example.com " for i in ids],
        "first_name": [f"Name{i}" for i in ids],
        "opt_in": [None for _ in ids],
    }
    columns.update(overrides)
    return pa.record_batch(columns, schema=pa.schema([
        ("customer_id", pa.int64()), ("email", pa.string()), ("first_name", pa.string()), ("opt_in", pa.bool_())]))  # fmt: skip


def key_only_in_header(fake: MailchimpFake) -> bool:
    for r in fake.requests:
        assert r.headers.get("authorization") == f"Basic {BASIC}"
        body = r.raw_body.decode()
        assert KEY not in body and BASIC not in body and KEY not in r.path
        assert "@" not in r.path and "@" not in json.dumps(r.query)  # e-mails only in bodies
    return True


def members(fake: MailchimpFake) -> dict[str, tuple[str, dict]]:
    return {m.email: (m.status, m.merge_fields) for m in fake.list.members.values()}


def test_members_are_subscribed_only_when_the_segment_says_they_consented(mailchimp):
    mailchimp.add_member("customer2@example.com", "subscribed", FNAME="Kept")  # consent unknown: untouched
    mailchimp.add_member("customer4@example.com", "subscribed", FNAME="Old")  # consent false: unsubscribed
    result = deliver(
        destination(mailchimp),
        WITH_CONSENT,
        {"add": [customers([1, 2, 3, 4], opt_in=[True, None, None, False])]},
        InMemoryJournal(),
    )
    assert (result.accepted, result.rejected) == (4, 0)
    assert members(mailchimp) == {
        "customer1@example.com": ("subscribed", {"FNAME": "Name1"}),
        "customer2@example.com": ("subscribed", {"FNAME": "Kept"}),
        "customer3@example.com": ("transactional", {"FNAME": "Name3"}),
        "customer4@example.com": ("unsubscribed", {"FNAME": "Name4"}),
    }
    segment = mailchimp.segment_named("VIP Europe")
    assert segment.members == {f"customer{i}@example.com" for i in (1, 2, 3, 4)}
    calls = [(r.method, r.path, r.json) for r in mailchimp.requests]
    assert calls == [
        ("GET", f"/lists/{LIST}/segments", None),
        ("POST", f"/lists/{LIST}/segments", {"name": "VIP Europe", "static_segment": []}),
        ("POST", f"/lists/{LIST}", {"members": [
            {"email_address": "customer1@example.com", "status": "subscribed", "merge_fields": {"FNAME": "Name1"}},
            {"email_address": "customer4@example.com", "status": "unsubscribed", "merge_fields": {"FNAME": "Name4"}},
        ], "update_existing": True}),
        ("POST", f"/lists/{LIST}", {"members": [
            {"email_address": "customer2@example.com", "status": "transactional", "merge_fields": {"FNAME": "Name2"}},
            {"email_address": "customer3@example.com", "status": "transactional", "merge_fields": {"FNAME": "Name3"}},
        ], "update_existing": False}),
        ("POST", f"/lists/{LIST}/segments/{segment.id}", {"members_to_add": [
            f"customer{i}@example.com" for i in (1, 2, 3, 4)]}),
    ]  # fmt: skip
    assert mailchimp.requests[0].query == {"type": "static", "count": "1000", "offset": "0"}
    assert key_only_in_header(mailchimp)


def test_without_a_consent_mapping_new_members_get_status_if_new(mailchimp):
    deliver(
        destination(mailchimp, status_if_new="pending"), MEMBERS, {"add": [customers([1])]}, InMemoryJournal()
    )
    assert members(mailchimp) == {"customer1@example.com": ("pending", {})}


def test_batches_hold_500_members_and_removed_ones_stay_on_the_list(mailchimp):
    platform = destination(mailchimp)
    assert (
        deliver(platform, MEMBERS, {"add": [customers(list(range(1, 1202)))]}, InMemoryJournal()).accepted
        == 1201
    )
    sizes = sorted(len(r.json["members"]) for r in mailchimp.requests if r.path == f"/lists/{LIST}")
    assert sizes == [201, 500, 500]
    segment = mailchimp.segment_named("VIP Europe")
    assert len(segment.members) == 1201
    removed = deliver(platform, MEMBERS, {"remove": [customers([1, 2, 5000])]}, InMemoryJournal())
    assert removed.accepted == 3  # customer5000 was in no segment: done
    assert "customer1@example.com" not in segment.members and len(segment.members) == 1199
    assert members(mailchimp)["customer1@example.com"] == ("transactional", {})  # still on the list


def test_a_member_mailchimp_refuses_is_rejected_with_its_reason_and_sent_by_the_next_sync(mailchimp):
    mailchimp.fail_emails(
        "customer2@example.com has signed up to a lot of lists very recently", "customer2@example.com"
    )
    journal = InMemoryJournal()
    result = deliver(destination(mailchimp), MEMBERS, {"add": [customers([1, 2, 3])]}, journal)
    assert journal.rejections == [
        (
            "2",
            "add",
            (
                "Mailchimp refused the member: customer2@example.com has signed up to a lot of lists very recently"
            ),
        )
    ]
    assert result.reasons == {"ERROR_GENERIC": 1}
    segment = mailchimp.segment_named("VIP Europe")
    assert segment.members == {"customer1@example.com", "customer3@example.com"}
    assert (
        deliver(destination(mailchimp), MEMBERS, {"add": [customers([2])]}, InMemoryJournal()).accepted == 1
    )
    assert "customer2@example.com" in segment.members


def test_a_429_storm_is_ridden_out(mailchimp):
    mailchimp.throttle(5)
    result = deliver(
        destination(mailchimp),
        MEMBERS,
        {"add": [customers([1])]},
        InMemoryJournal(),
        retry=RetryPolicy(max_attempts=8, initial_wait_seconds=0.01, max_wait_seconds=0.05),
    )
    assert result.accepted == 1 and result.retries == 5
    assert [s for _, _, s in mailchimp.answers][:6] == [429] * 5 + [200]
    assert mailchimp.segment_named("VIP Europe").members == {"customer1@example.com"}


def test_a_wrong_key_stops_at_once_with_mailchimps_detail(mailchimp):
    platform = build_platform("mailchimp", {"service": "audiences", "api_key": "nope-us6", "list_id": LIST,
                                            "base_url": mailchimp.url, "audience": {"id": 1}}, destination="mc")  # fmt: skip
    with pytest.raises(PlatformAuthError) as info:
        deliver(platform, MEMBERS, {"add": [customers([1])]}, InMemoryJournal())
    assert str(info.value) == (
        "destination 'mc' (mailchimp): the platform refused the credentials (HTTP 401): Your API key may be "
        "invalid, or you've attempted to access the wrong datacenter."
    )


def test_the_data_center_comes_from_the_key():
    platform = build_platform(
        "mailchimp", {"service": "audiences", "api_key": KEY, "list_id": LIST}, destination="mc"
    )
    assert platform.base_url == "https://us6.api.mailchimp.com/3.0"
    bad = build_platform(
        "mailchimp", {"service": "audiences", "api_key": "abc", "list_id": LIST}, destination="mc"
    )
    with pytest.raises(PlatformConfigError) as info:
        _ = bad.base_url
    assert str(info.value) == (
        "destination 'mc' (mailchimp): api_key: does not end in -<data center> (like -us6); allowed: a Mailchimp "
        "API key, or base_url"
    )


def test_preview_masks_identifiers_and_sends_nothing(mailchimp):
    shown = preview(destination(mailchimp, audience={"id": 77}), WITH_CONSENT,
                    {"add": [customers([1, 2], opt_in=[True, True])]})  # fmt: skip
    assert mailchimp.requests == []
    assert shown[0].url == f"{mailchimp.url}/lists/{LIST}"
    assert shown[0].body == {"members": [
        {"email_address": "c***@e***", "status": "subscribed", "merge_fields": {"FNAME": "Name1"}},
        {"email_address": "c***@e***", "status": "subscribed", "merge_fields": {"FNAME": "Name2"}}],
        "update_existing": True}  # fmt: skip


def test_settings_errors_name_the_key_and_what_is_allowed():
    with pytest.raises(PlatformConfigError) as info:
        build_platform("mailchimp", {"service": "audiences", "api_key": KEY, "list_id": LIST,
                                     "status_if_new": "subscribed"}, destination="mc")  # fmt: skip
    assert str(info.value) == (
        "destinations.mc.status_if_new: found 'subscribed'; allowed: transactional, pending, unsubscribed "
        "(members are subscribed only by the column mapped to consent)"
    )
    with pytest.raises(PlatformConfigError) as info:
        build_platform(
            "mailchimp", {"service": "audiences", "api_key": KEY, "list_id": "my list"}, destination="mc"
        )
    assert str(info.value) == (
        "destinations.mc.list_id: found 'my list'; allowed: the audience's list id (letters and digits, like 9e67587f52)"
    )
    with pytest.raises(PlatformConfigError) as info:
        build_platform(
            "mailchimp", {"service": "attributes", "api_key": KEY, "list_id": LIST}, destination="mc"
        )
    assert str(info.value) == "destinations.mc.service: Input should be 'audiences' (found 'attributes')"


def test_validate_connect_checks_the_key_the_list_the_segment_and_the_merge_fields(mailchimp):
    assert validate_connection(destination(mailchimp), WITH_CONSENT) == []
    typo = ActivationSpec("mc", "customer_id", match={"email": "email"}, mapping={"first_name": "FNAM"})
    assert validate_connection(destination(mailchimp), typo) == [
        (
            "mapping.first_name: no field 'FNAM' in Mailchimp static segment 'VIP Europe' of list 9e67587f52; "
            "did you mean 'FNAME', 'LNAME'?"
        )
    ]
    assert validate_connection(destination(mailchimp, audience={"id": 99}), MEMBERS) == [
        (
            "destination 'mc' (mailchimp): reading Mailchimp static segment 99 of list 9e67587f52 failed with "
            "HTTP 404: The requested segment was not found."
        )
    ]
    assert key_only_in_header(mailchimp)


def test_a_segment_follows_the_segment_through_the_dagster_job(request, tmp_path: Path, monkeypatch, capsys):
    def fake() -> MailchimpFake:
        made = MailchimpFake(KEY, list_id=LIST)
        made.add_member("bob@example.com", "unsubscribed")
        return made

    with ad_project(request, tmp_path, monkeypatch, fake, attr="mailchimp", type_="mailchimp", destination="mc",
                    activation="to_mc", fields={"list_id": LIST},
                    secrets={"api_key": ("MAILCHIMP_KEY", KEY)}) as env:  # fmt: skip
        assert main(["--project", str(tmp_path), "validate", "--connect"]) == 0
        assert main(["--project", str(tmp_path), "preview", "to_mc"]) == 0
        out = capsys.readouterr().out
        assert "bob@example.com" not in out and KEY not in out

        env.mailchimp.throttle(3)
        assert run_sync_job(env.defs, env.instance, "to_mc").success
        segment = env.mailchimp.segment_named("VIP Europe")
        assert segment.members == {f"{n}@example.com" for n in ("bob", "cle", "dan")}
        assert members(env.mailchimp)["bob@example.com"] == ("unsubscribed", {})  # never subscribed by a sync

        change_customers(env.wh)  # Dan leaves, Bob becomes robert@example.com, Ann enters
        assert run_sync_job(env.defs, env.instance, "to_mc").success
        assert segment.members == {f"{n}@example.com" for n in ("robert", "cle", "ann")}

        segment.members.discard("cle@example.com")
        sync_steps(env, "to_mc", full_refresh=True)
        assert segment.members == {f"{n}@example.com" for n in ("robert", "cle", "ann")}
        assert {m.status for m in env.mailchimp.list.members.values()} == {"transactional", "unsubscribed"}
        for entry in logged(env.instance):
            assert KEY not in entry and BASIC not in entry
        assert key_only_in_header(env.mailchimp)


def test_the_readme_mailchimp_example_loads(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MAILCHIMP_API_KEY", KEY)
    examples = readme_examples("**Mailchimp (`type: mailchimp`).**")
    assert len(examples) == 1
    (activation,) = load_example(tmp_path, examples[0]).activations.values()
    assert activation.platform_service == "audiences"


def test_a_killed_sync_to_a_segment_is_recovered_by_the_next_with_nothing_lost(tmp_path: Path):
    cli = CliSync(tmp_path, "to_mc", {"MAILCHIMP_KEY": KEY})
    cli.seed(1500, None)
    with MailchimpFake(KEY, list_id=LIST, latency=0.2) as fake:
        segment = fake.create_segment("VIP Europe")
        cli.write(
            destinations=[(f"mc:\n  type: mailchimp\n  service: audiences\n  max_concurrency: 1\n  list_id: '{LIST}'\n"
                           f"  api_key: {{env: MAILCHIMP_KEY}}\n  base_url: {fake.url}\n")],
            activations='to_mc:\n  segment: big\n  destination: mc\n  audience: {name: "VIP Europe"}\n'
                        "  identifiers: {email: email}\n")  # fmt: skip
        # 3 batches of 500, each a batch subscribe then a segment call: killed when the second segment call arrives.
        path = f"/lists/{LIST}/segments/{segment.id}"
        # settle: the request in flight at the kill is answered
        cli.kill_when(lambda: sum(1 for r in fake.requests if r.path == path) >= 2, settle=0.5)
        assert 0 < len(segment.members) < 1500

        cli.recover()
        assert segment.members == {f"c{i}@example.com" for i in range(1, 1501)}
        assert len(fake.list.members) == 1500
        assert all(len(r.json["members_to_add"]) <= 500 for r in fake.requests if r.path == path)
        assert key_only_in_header(fake)
    assert cli.leftovers() == []
    assert not cli.in_home(KEY)
