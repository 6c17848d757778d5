"""The Microsoft Advertising adapter through a fake Campaign Management REST API and identity-platform token
endpoint built from Microsoft's documentation (tests/fakes/microsoft_ads.py): the members each customer
list holds, what was sent, and that neither a raw e-mail nor a secret is ever sent or shown. Then one
DuckDB scenario through the real Dagster sync job, and a `dinmo sync` killed mid-delivery.

Expected digests are computed here with hashlib from trimmed, lower-cased addresses."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import duckdb
import pyarrow as pa
import pytest
import requests
from ad_scenarios import ad_project, audiences_platform, calls, change_customers, sha
from attribute_scenarios import (
    CliSync,
    logged,
)
from fakes.microsoft_ads import MicrosoftAdsFake
from fakes.server import FakeResponse
from platform_scenarios import run_sync_job, sync_steps

from dinmo_dagster.cli import main
from dinmo_dagster.config import load_project
from dinmo_dagster.platforms import (
    ActivationSpec,
    HttpResponse,
    InMemoryJournal,
    PlatformAuthError,
    PlatformConfigError,
    ResponseKind,
    RetryPolicy,
    Signal,
    build_platform,
    deliver,
    preview,
    validate_connection,
)
from dinmo_dagster.platforms.microsoft_ads import MicrosoftAds

CUSTOMER = "251186883"
ACCOUNT = "149123456"
CLIENT_ID = "7e2b1c44-9a0d-4f3e-8b6a-2c5d9e1f0a3b"
CLIENT_SECRET = "msads-secret-Qw8~Er7.Ty6_Ui5-Op4"
REFRESH_TOKEN = "M.C507_BAY.0.U.-refresh-1a2b3c4d5e6f7g8h"
DEVELOPER_TOKEN = "BBD37VB98-devtoken-1234"
APPLY = "/CampaignManagement/v13/CustomerListUserData/Apply"
QUERY = "/CampaignManagement/v13/Audiences/QueryByIds"
ADD_AUDIENCES = "/CampaignManagement/v13/Audiences"
FAST = RetryPolicy(
    max_attempts=3, max_rate_limited_attempts=20, initial_wait_seconds=0.01, max_wait_seconds=0.05
)
EMAILS = ActivationSpec("vip_to_bing", "customer_id", {"email": "email"})
DEST = "destination 'bing_vip' (microsoft_ads): "  # how messages name the destination
KEY = "destinations.bing_vip."  # how settings messages name its keys
SECRETS = (CLIENT_SECRET, REFRESH_TOKEN, DEVELOPER_TOKEN, "EwBQA8l6BAAU", "M.C5")


def new_fake(**kwargs: Any) -> MicrosoftAdsFake:
    return MicrosoftAdsFake(
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        refresh_token=REFRESH_TOKEN,
        developer_token=DEVELOPER_TOKEN,
        customer_id=CUSTOMER,
        account_id=ACCOUNT,
        **kwargs,
    )


@pytest.fixture
def bing(monkeypatch) -> Iterator[MicrosoftAdsFake]:
    # Microsoft says to wait 60 s after 117 CallRateExceeded; the tests wait 10 ms.
    monkeypatch.setattr(MicrosoftAds, "call_rate_wait_seconds", 0.01)
    with new_fake() as fake:
        yield fake


def audiences(fake: MicrosoftAdsFake, **settings: Any) -> MicrosoftAds:
    return audiences_platform(
        "microsoft_ads", "bing_vip", MicrosoftAds, fake,
        {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "refresh_token": REFRESH_TOKEN,
         "developer_token": DEVELOPER_TOKEN, "customer_id": CUSTOMER, "account_id": ACCOUNT}, settings,
    )  # fmt: skip


def customers(ids: Any, **overrides: list[Any]) -> pa.RecordBatch:
    ids = list(ids)
    columns: dict[str, list[Any]] = {"customer_id": ids, "email": [f" Customer.{i}@Example.com" for i in ids]}
    columns.update(overrides)
    return pa.record_batch(columns)


def emails(ids: Any) -> set[str]:
    return {sha(f"customer.{i}@example.com") for i in ids}


def no_secret_in(text: str) -> bool:
    return not any(s in text for s in SECRETS)


# --------------------------------------------------------------------------------------------------
# First sync, delta, identifier change, full sync
# --------------------------------------------------------------------------------------------------


def test_a_first_sync_creates_the_list_and_adds_every_member_hashed_in_one_apply(bing):
    result = deliver(audiences(bing), EMAILS, {"add": [customers([1, 2, 3])]}, InMemoryJournal())

    assert (result.accepted, result.rejected) == (3, 0)
    created = bing.list_named("VIP Europe")
    assert created is not None and created.members == emails([1, 2, 3])
    assert (created.parent_id, created.scope, created.membership_duration) == (ACCOUNT, "Account", -1)
    assert calls(bing) == [("POST", QUERY), ("POST", ADD_AUDIENCES), ("POST", APPLY)]
    assert bing.requests[0].json == {"Type": "CustomerList"}
    assert bing.requests[1].json == {
        "Audiences": [
            {
                "Type": "CustomerList",
                "Name": "VIP Europe",
                "ParentId": ACCOUNT,
                "Scope": "Account",
                "MembershipDuration": -1,
            }
        ]
    }
    assert bing.requests[2].json == {
        "CustomerListUserData": {
            "ActionType": "Add",
            "AudienceId": created.id,
            "CustomerListItemSubType": "Email",
            "CustomerListItems": [sha(f"customer.{i}@example.com") for i in (1, 2, 3)],
        }
    }
    headers = bing.requests[2].headers
    assert (headers["developertoken"], headers["customerid"], headers["customeraccountid"]) == (
        DEVELOPER_TOKEN,
        CUSTOMER,
        ACCOUNT,
    )
    assert headers["authorization"].startswith("Bearer EwBQA8l6BAAU-")
    # the token request: the Microsoft identity platform's refresh grant with the Advertising scope
    form = dict(p.split("=", 1) for p in bing.token_requests[0].raw_body.decode().split("&"))
    assert (form["grant_type"], form["client_id"], form["scope"]) == (
        "refresh_token",
        CLIENT_ID,
        "https%3A%2F%2Fads.microsoft.com%2Fmsads.manage+offline_access",
    )


def test_a_list_is_found_by_name_or_used_by_id_and_never_created_twice(bing):
    bing.create_list("Other")
    existing = bing.create_list("VIP Europe")
    deliver(audiences(bing), EMAILS, {"add": [customers([1])]}, InMemoryJournal())
    deliver(
        audiences(bing, audience={"id": existing.id}), EMAILS, {"add": [customers([2])]}, InMemoryJournal()
    )

    assert len(bing.lists) == 2
    assert existing.members == emails([1, 2])
    assert calls(bing) == [("POST", QUERY), ("POST", APPLY), ("POST", APPLY)]
    bing.create_list("VIP Europe")
    with pytest.raises(PlatformConfigError) as twice:
        deliver(audiences(bing), EMAILS, {"add": [customers([3])]}, InMemoryJournal())
    assert str(twice.value).startswith(
        DEST + "audience.name: 2 customer lists of account 149123456 are named 'VIP Europe' (ids "
    )


def test_a_delta_removes_those_that_left_and_moves_a_changed_email(bing):
    audience = bing.create_list("VIP Europe", emails([1, 2, 3]))
    changed = customers([2], email=["Renamed@Example.com "])
    result = deliver(
        audiences(bing),
        EMAILS,
        {"remove": [customers([3]), customers([2])], "add": [changed]},
        InMemoryJournal(),
    )

    assert result.accepted == 3
    assert audience.members == emails([1]) | {sha("renamed@example.com")}
    assert sorted(i for d in bing.applied("Remove") for i in d["CustomerListItems"]) == sorted(emails([2, 3]))
    assert [d["CustomerListItems"] for d in bing.applied("Add")] == [[sha("renamed@example.com")]]


def test_a_full_sync_replaces_the_members_first_then_adds_and_an_empty_one_empties_the_list(bing):
    audience = bing.create_list("VIP Europe", emails([1, 2]) | {sha("manual@example.com")})
    platform = audiences(bing, audience={"id": audience.id})
    result = deliver(platform, EMAILS, {"replace": [customers(range(2, 2_502))]}, InMemoryJournal())

    assert result.accepted == 2_500
    assert audience.members == emails(range(2, 2_502))
    sent = [(d["ActionType"], len(d["CustomerListItems"])) for d in bing.applied()]
    # the Replace first (the other worker waits for it), then the adds in any order
    assert (sent[0], sorted(sent[1:])) == (("Replace", 1_000), [("Add", 500), ("Add", 1_000)])
    # a full sync of an empty segment replaces the members with none
    deliver(platform, EMAILS, {"replace": []}, InMemoryJournal())
    assert audience.members == set()
    assert bing.applied()[-1] == {
        "ActionType": "Replace",
        "AudienceId": audience.id,
        "CustomerListItemSubType": "Email",
        "CustomerListItems": [],
    }


def test_a_call_holds_at_most_1000_items_and_the_fake_refuses_more_as_microsoft_does(bing):
    audience = bing.create_list("VIP Europe")
    result = deliver(
        audiences(bing, audience={"id": audience.id}),
        EMAILS,
        {"add": [customers(range(1, 1_102))]},
        InMemoryJournal(),
    )

    assert result.accepted == 1_101
    assert sorted(len(d["CustomerListItems"]) for d in bing.applied()) == [101, 1_000]
    too_many = {
        "CustomerListUserData": {
            "ActionType": "Add",
            "AudienceId": audience.id,
            "CustomerListItemSubType": "Email",
            "CustomerListItems": [sha(str(i)) for i in range(1_001)],
        }
    }
    answer = requests.post(
        f"{bing.url}{APPLY}", json=too_many, headers=audiences(bing).auth_headers(), timeout=10
    )
    assert answer.status_code == 400
    assert answer.json()["OperationErrors"] == [
        {
            "Code": 6999,
            "Details": None,
            "ErrorCode": "CampaignServiceBatchLimitExceeded",
            "Message": "The maximum number of items per request would be exceeded.",
        }
    ]


def test_emails_are_trimmed_lower_cased_and_hashed_and_no_raw_value_is_ever_sent(bing):
    audience = bing.create_list("VIP Europe")
    digest = sha("already@hashed.example")
    batch = customers([1, 2, 3, 4], email=["  Test@Contoso.COM ", "not-an-email", None, digest.upper()])
    journal = InMemoryJournal()
    result = deliver(audiences(bing, audience={"id": audience.id}), EMAILS, {"add": [batch]}, journal)

    # Microsoft's Bulk page: test@contoso.com hashes as f25ad364...0101
    assert audience.members == {"f25ad364d33972379a7a4f4df33db142205f5c40eb19cfdb2fc5aaf117e10101", digest}
    assert (result.accepted, result.rejected) == (2, 2)
    reasons = {key: reason for key, _, reason in journal.rejections}
    assert set(reasons) == {"2", "3"}
    assert "email" in reasons["2"] and "not-an-email" not in reasons["2"]
    sent = json.dumps([r.json for r in bing.requests])
    assert "contoso" not in sent.lower() and "@" not in sent


# --------------------------------------------------------------------------------------------------
# Failures: partial errors, terms, 117 / 429, tokens
# --------------------------------------------------------------------------------------------------


def test_partial_errors_reject_the_items_at_their_index_and_the_next_sync_sends_them(bing):
    audience = bing.create_list("VIP Europe")
    bing.refuse_item(
        sha("customer.2@example.com"),
        8004,
        "EmailMustBeHashed",
        "Email address can't be in plain text and must be hashed.",
    )
    journal = InMemoryJournal()
    first = deliver(audiences(bing), EMAILS, {"add": [customers([1, 2, 3])]}, journal)

    assert (first.accepted, first.rejected) == (2, 1)
    assert journal.rejections == [
        ("2", "add", "Email address can't be in plain text and must be hashed. (EmailMustBeHashed 8004)")
    ]
    assert first.top_reasons() == [("EmailMustBeHashed 8004", 1)]
    assert audience.members == emails([1, 3])
    second = deliver(audiences(bing), EMAILS, {"add": [customers([2])]}, InMemoryJournal())
    assert second.accepted == 1
    assert audience.members == emails([1, 2, 3])


def test_a_fault_rejects_the_batch_with_microsofts_message_and_a_wrong_list_stops_the_sync(bing):
    audience = bing.create_list("VIP Europe")
    bing.fail_next(
        "/Apply",
        FakeResponse(
            400,
            {
                "TrackingId": "t-1",
                "Type": "ApiFaultDetail",
                "BatchErrors": [],
                "OperationErrors": [
                    {"Code": 1001, "ErrorCode": "SomethingBusy", "Message": "Try again later."}
                ],
            },
        ),
    )
    journal = InMemoryJournal()
    first = deliver(
        audiences(bing, audience={"id": audience.id}), EMAILS, {"add": [customers([1, 2])]}, journal
    )

    assert (first.accepted, first.rejected) == (0, 2)
    assert [r[2] for r in journal.rejections] == ["Try again later. (SomethingBusy 1001)"] * 2
    assert audience.members == set()
    with pytest.raises(Exception) as wrong:
        deliver(audiences(bing, audience={"id": "999"}), EMAILS, {"add": [customers([1])]}, InMemoryJournal())
    assert str(wrong.value) == (
        DEST + "add of members of Microsoft Advertising customer list 999 failed "
        "with HTTP 400: Invalid CustomerList Id (InvalidCustomerListId 8000)"
    )


def test_customer_match_terms_not_accepted_stop_the_sync_saying_how_to_accept_them(bing):
    audience = bing.create_list("VIP Europe")
    bing.terms_accepted_in_ui = False
    expected = (
        DEST + "Microsoft Advertising refused the customer data of Microsoft "
        "Advertising customer list 'VIP Europe': the Customer Match terms are not accepted "
        "(CustomerListTermsAndConditionsNotAccepted, 8003); accept them in the Microsoft Advertising UI "
        "(Tools > Audiences > Create > Customer match list, select I accept) or set "
        "accept_customer_match_terms: true in the destination"
    )
    with pytest.raises(PlatformConfigError) as refused:
        deliver(audiences(bing), EMAILS, {"add": [customers([1])]}, InMemoryJournal())
    assert str(refused.value) == expected
    with pytest.raises(PlatformConfigError):
        deliver(
            audiences(bing, accept_customer_match_terms=False),
            EMAILS,
            {"add": [customers([1])]},
            InMemoryJournal(),
        )
    assert audience.members == set()

    result = deliver(
        audiences(bing, accept_customer_match_terms=True),
        EMAILS,
        {"add": [customers([1])]},
        InMemoryJournal(),
    )
    assert result.accepted == 1 and audience.members == emails([1])
    assert [d.get("AcceptCustomerMatchTerm") for d in bing.applied()] == [None, False, True]


def test_a_storm_of_call_rate_exceeded_is_ridden_out(bing):
    audience = bing.create_list("VIP Europe")
    bing.throttle(5)
    bing.fail_next(
        "/Apply",
        FakeResponse(
            400,
            {
                "Type": "ApiFaultDetail",
                "OperationErrors": [
                    {
                        "Code": 117,
                        "ErrorCode": "CallRateExceeded",
                        "Message": "You have exceeded the number of calls.",
                    }
                ],
            },
        ),
    )
    result = deliver(
        audiences(bing, audience={"id": audience.id}),
        EMAILS,
        {"add": [customers(range(1, 4))]},
        InMemoryJournal(),
        retry=FAST,
    )

    assert audience.members == emails(range(1, 4))
    assert [status for _, path, status in bing.answers if path == APPLY] == [429] * 5 + [400, 200]
    assert (result.retries, result.accepted) == (6, 3)
    # each wait is Microsoft's (60 s, lowered to 10 ms here) unless the answer says Retry-After
    platform = audiences(bing)
    fault = json.dumps(
        {"Type": "AdApiFaultDetail", "Errors": [{"Code": 117, "ErrorCode": "CallRateExceeded"}]}
    )
    assert platform.classify(HttpResponse(429, {}, fault.encode())) == Signal(
        ResponseKind.RATE_LIMITED, 0.01, "refused (CallRateExceeded 117)"
    )
    assert platform.classify(HttpResponse(400, {"retry-after": "7"}, fault.encode())).retry_after == 7.0


def test_a_token_that_expires_mid_sync_is_renewed_once_and_the_call_sent_again(bing, caplog):
    caplog.set_level(logging.DEBUG)
    audience = bing.create_list("VIP Europe")
    bing.expire_tokens_after(2)
    platform = audiences(bing, audience={"id": audience.id}, max_concurrency=1)
    platform.limits = type(platform.limits)(
        max_records_per_batch=1, requests_per_window=60, window_seconds=60.0
    )
    result = deliver(platform, EMAILS, {"add": [customers([i]) for i in range(1, 5)]}, InMemoryJournal())

    assert result.accepted == 4
    assert [status for _, path, status in bing.answers if path == APPLY] == [200, 200, 401, 200, 200]
    assert len(bing.token_requests) == 2
    assert audience.members == emails(range(1, 5))
    assert no_secret_in(caplog.text)


def test_a_revoked_refresh_token_or_a_wrong_developer_token_stops_the_sync_at_once(bing):
    with pytest.raises(PlatformAuthError) as wrong:
        deliver(
            audiences(bing, developer_token="not-the-developer-token"),
            EMAILS,
            {"add": [customers([1])]},
            InMemoryJournal(),
        )
    assert str(wrong.value) == (
        DEST + "the platform refused the credentials (HTTP 401): Authentication "
        "failed. Either supplied credentials are invalid or the account is inactive (InvalidCredentials 105)"
    )
    bing.revoke_refresh_token()
    with pytest.raises(PlatformAuthError) as refused:
        deliver(audiences(bing), EMAILS, {"add": [customers([1])]}, InMemoryJournal())
    assert str(refused.value).startswith(
        DEST + "the token endpoint refused the refresh token (HTTP 400 "
        "invalid_grant: The user could not be authenticated or the grant is expired."
    )
    assert no_secret_in(repr(refused.value) + repr(wrong.value))


# --------------------------------------------------------------------------------------------------
# preview, validate --connect, settings
# --------------------------------------------------------------------------------------------------


def test_preview_shows_the_first_call_with_digests_masked_and_sends_nothing(bing):
    (add,) = preview(audiences(bing), EMAILS, {"add": [customers([1, 2])]})
    (replace,) = preview(audiences(bing, audience={"id": "512"}), EMAILS, {"replace": [customers([1])]})

    assert bing.requests == [] and bing.token_requests == []
    assert (add.method, add.url) == ("POST", f"{bing.url}{APPLY}")
    assert add.body == {
        "CustomerListUserData": {
            "ActionType": "Add",
            "AudienceId": "<id of customer list 'VIP Europe'>",
            "CustomerListItemSubType": "Email",
            "CustomerListItems": [sha(f"customer.{i}@example.com")[:8] + "…" for i in (1, 2)],
        }
    }
    assert replace.body["CustomerListUserData"]["ActionType"] == "Replace"
    assert replace.body["CustomerListUserData"]["AudienceId"] == "512"


def test_validate_connect_checks_the_token_the_account_and_a_list_given_by_id(bing):
    existing = bing.create_list("Existing")
    assert validate_connection(audiences(bing), EMAILS) == []
    assert validate_connection(audiences(bing, audience={"id": existing.id}), EMAILS) == []
    assert list(bing.lists) == [existing.id]  # a list given by name is not created by validate
    assert validate_connection(audiences(bing, audience={"id": "999"}), EMAILS) == [
        (
            DEST + "audience.id: found '999'; allowed: the id of a customer list of "
            "account 149123456 (Microsoft Advertising has none with that id)"
        )
    ]
    assert validate_connection(audiences(bing, account_id="42"), EMAILS) == [
        (
            DEST + "the platform refused the credentials (HTTP 403): The user is not "
            "authorized to perform this action. (UserIsNotAuthorized 106)"
        )
    ]
    assert validate_connection(audiences(bing, client_secret="wrong-secret"), EMAILS) == [
        (
            DEST + "the token endpoint refused the client credentials (HTTP 401 invalid_client: "
            "AADSTS7000215: Invalid client secret provided.); check client_id and client_secret"
        )
    ]


def test_settings_and_activation_problems_name_the_key_and_what_is_allowed(bing):
    with pytest.raises(PlatformConfigError) as wrong:
        build_platform("microsoft_ads", {
            "service": "audiences", "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
            "refresh_token": "r", "developer_token": " ", "customer_id": "C-251", "account_id": "F1234567",
            "membership_duration_days": 400, "audience": {"name": "x" * 129},
        }, destination="bing_vip")  # fmt: skip
    assert str(wrong.value).splitlines() == [
        KEY + "developer_token: is empty; allowed: the developer token of the Microsoft Advertising API",
        (
            KEY + "customer_id: found 'C-251'; allowed: the manager account's numeric customer id, "
            "such as 251186883"
        ),
        (
            KEY + "account_id: found 'F1234567'; allowed: the ad account's numeric id (not its account "
            "number), such as 149123456"
        ),
        KEY + "membership_duration_days: found 400; allowed: -1 (no expiration) or 1 to 390 days",
        KEY + "audience.name: has 129 characters; allowed: at most 128",
    ]
    with pytest.raises(PlatformConfigError) as scope:
        build_platform(
            "microsoft_ads",
            {
                "service": "audiences",
                "client_id": CLIENT_ID,
                "client_secret": "s",
                "refresh_token": "r",
                "developer_token": "d",
                "customer_id": 1,
                "account_id": 2,
                "list_scope": "Global",
            },
            destination="bing_vip",
        )
    assert str(scope.value) == KEY + "list_scope: Input should be 'Account' or 'Customer' (found 'Global')"
    assert audiences(bing).validate_activation(
        {"email": "email", "phone": "phone"}, {"first": "first_name"}
    ) == [
        "identifiers.phone: found 'phone'; allowed: email",
        "mapping: found first; allowed: nothing (Microsoft Advertising customer lists take identifiers only)",
    ]


def test_a_list_created_for_every_account_of_the_customer_has_the_customer_as_parent(bing):
    deliver(
        audiences(
            bing,
            list_scope="Customer",
            membership_duration_days=180,
            audience={"name": "VIP Europe", "description": "Synced by dinmo"},
        ),
        EMAILS,
        {"add": [customers([1])]},
        InMemoryJournal(),
    )
    created = bing.list_named("VIP Europe")
    assert (created.parent_id, created.scope, created.membership_duration, created.description) == (
        CUSTOMER,
        "Customer",
        180,
        "Synced by dinmo",
    )


def test_the_readme_microsoft_ads_example_loads_and_validates(tmp_path: Path, monkeypatch) -> None:
    """The YAML example of the README's Microsoft Advertising paragraph, with a source, model and segment."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    label = "**Microsoft Advertising (`type: microsoft_ads`).**"
    if label not in readme:
        pytest.skip("the README's Microsoft Advertising paragraph is not merged yet")
    example = readme.split(label, 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "dinmo.yaml").write_text(
        """
sources:
  warehouse: {type: duckdb, path: data/warehouse.duckdb}
models:
  customers: {source: warehouse, table: raw.customers, primary_key: customer_id}
segments:
  vip_europe: {model: customers, sql: "select * from {{ model }}"}
"""
        + example
    )
    for variable, value in (("MSADS_CLIENT_SECRET", CLIENT_SECRET), ("MSADS_REFRESH_TOKEN", REFRESH_TOKEN),
                            ("MSADS_DEVELOPER_TOKEN", DEVELOPER_TOKEN)):  # fmt: skip
        monkeypatch.setenv(variable, value)
    project = load_project(tmp_path)
    activation = project.activations["vip_to_bing"]
    assert (activation.platform_service, activation.platform_mode) == ("audiences", "mirror")


# --------------------------------------------------------------------------------------------------
# The Dagster sync job on DuckDB
# --------------------------------------------------------------------------------------------------


def bing_project(request, tmp_path: Path, monkeypatch) -> contextlib.AbstractContextManager[SimpleNamespace]:
    return ad_project(
        request, tmp_path, monkeypatch, new_fake,
        attr="bing", type_="microsoft_ads", destination="bing_vip", activation="to_bing",
        fields={"client_id": CLIENT_ID, "customer_id": CUSTOMER, "account_id": ACCOUNT},
        secrets={"client_secret": ("MSADS_CLIENT_SECRET", CLIENT_SECRET),
                 "refresh_token": ("MSADS_REFRESH_TOKEN", REFRESH_TOKEN),
                 "developer_token": ("MSADS_DEVELOPER_TOKEN", DEVELOPER_TOKEN)},
    )  # fmt: skip


def test_a_customer_list_follows_the_segment_through_the_dagster_job(
    request, tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setattr(MicrosoftAds, "call_rate_wait_seconds", 0.01)
    with bing_project(request, tmp_path, monkeypatch) as env:
        assert main(["--project", str(tmp_path), "validate", "--connect"]) == 0
        assert main(["--project", str(tmp_path), "preview", "to_bing"]) == 0
        out = capsys.readouterr().out
        assert "bob@example.com" not in out and no_secret_in(out)
        assert [path for _, path in calls(env.bing)] == [QUERY]  # validate reads; preview sends nothing

        # First sync: the list is created and gets Bob, Cle and Dan; a storm of 117 on the way.
        env.bing.throttle(3)
        assert run_sync_job(env.defs, env.instance, "to_bing").success
        audience = env.bing.list_named("VIP Europe")
        assert audience.members == {sha(f"{n}@example.com") for n in ("bob", "cle", "dan")}

        # Delta: Dan leaves, Bob's e-mail changes, Ann enters; Ann's item is refused (sent again next sync);
        # the token expires mid-sync.
        change_customers(env.wh)
        env.bing.refuse_item(sha("ann@example.com"), 8004, "EmailMustBeHashed", "Email must be hashed.")
        env.bing.expire_tokens_after(1)
        run_sync_job(env.defs, env.instance, "to_bing")
        assert 401 in [status for _, _, status in env.bing.answers]
        assert audience.members == {sha(f"{n}@example.com") for n in ("robert", "cle")}
        run_sync_job(env.defs, env.instance, "to_bing")
        assert audience.members == {sha(f"{n}@example.com") for n in ("robert", "cle", "ann")}

        # Full refresh: Replace puts back a member lost on Microsoft's side and drops one added by hand.
        audience.members = {sha("cle@example.com"), sha("manual@example.com")}
        sync_steps(env, "to_bing", full_refresh=True)
        assert audience.members == {sha(f"{n}@example.com") for n in ("robert", "cle", "ann")}
        assert env.bing.applied()[-1]["ActionType"] == "Replace"

        sent = json.dumps([r.json for r in env.bing.requests])
        assert "example.com" not in sent
        for entry in logged(env.instance):
            assert no_secret_in(entry)


def test_a_sync_killed_mid_delivery_recovers_with_every_member_and_nothing_journalled_sent_again(tmp_path):
    cli = CliSync(
        tmp_path,
        "to_bing",
        {
            "MSADS_CLIENT_SECRET": CLIENT_SECRET,
            "MSADS_REFRESH_TOKEN": REFRESH_TOKEN,
            "MSADS_DEVELOPER_TOKEN": DEVELOPER_TOKEN,
        },
    )
    cli.seed(6000, "'C'")
    with new_fake(latency=0.5) as fake:
        audience = fake.create_list("VIP Europe")
        cli.write(
            destinations=[
                (
                    f"bing_vip:\n  type: microsoft_ads\n  service: audiences\n  client_id: {CLIENT_ID}\n"
                    "  client_secret: {env: MSADS_CLIENT_SECRET}\n"
                    "  refresh_token: {env: MSADS_REFRESH_TOKEN}\n"
                    f"  developer_token: {{env: MSADS_DEVELOPER_TOKEN}}\n  customer_id: '{CUSTOMER}'\n"
                    f"  account_id: '{ACCOUNT}'\n  max_concurrency: 1\n  base_url: {fake.url}\n"
                    f"  token_url: {fake.token_url}\n"
                )
            ],
            activations=(
                "to_bing:\n  segment: big\n  destination: bing_vip\n"
                f"  audience: {{id: '{audience.id}'}}\n  identifiers: {{email: email}}\n"
            ),
        )

        def answered() -> int:
            return sum(1 for _, path, status in fake.answers if path == APPLY and status == 200)

        # 1. 6,000 members go in 6 calls of 1,000, one at a time (the first replaces): killed once four were
        # answered (the first ones journalled by then, unless the machine is very slow).
        cli.kill_when(lambda: answered() >= 4)
        deadline = time.monotonic() + 10
        while fake.in_flight and time.monotonic() < deadline:  # the call in flight at the kill is answered
            time.sleep(0.01)
        before = len(fake.applied())
        assert 0 < len(audience.members) < 6000
        # what the dead sync journalled
        with duckdb.connect(str(tmp_path / "wh.duckdb"), read_only=True) as con:
            journalled = {
                int(key)
                for (key,) in con.execute(
                    "select record_key from dinmo_delta_storage.dinmo_acknowledgements"
                ).fetchall()
            }

        # 2. The next sync resumes the full sync: every member is there, and none the dead sync journalled is
        # sent again (the list was replaced already: the rest is added).
        cli.recover()
        assert audience.members == {sha(f"c{i}@example.com") for i in range(1, 6001)}
        resent = {i for d in fake.applied()[before:] for i in d["CustomerListItems"]}
        assert resent.isdisjoint({sha(f"c{i}@example.com") for i in journalled})
        if journalled:
            assert {d["ActionType"] for d in fake.applied()[before:]} == {"Add"}
            assert len(resent) == 6000 - len(journalled)
        assert "example.com" not in json.dumps([r.json for r in fake.requests])
    assert cli.leftovers() == []
    assert not cli.in_home(*SECRETS[:3])
