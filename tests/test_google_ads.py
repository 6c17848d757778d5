"""The Google Ads adapter through a fake Google Ads API (REST) and token endpoint built from the contract
its docstring cites (tests/fakes/google_ads.py): the members each Customer Match list holds once its
jobs ran, the conversions and adjustments Google records (de-duplicated as Google does), what was sent,
and that neither a raw identifier nor a secret is ever sent or shown. Then a DuckDB scenario through the
real Dagster sync job, and a ``dinmo sync`` killed mid-delivery.

Expected digests are computed here with hashlib from the normalized values Google documents (e-mails
and names trimmed and lower-cased, phones in E.164 with their ``+``)."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import duckdb
import pyarrow as pa
import pytest
import requests
from ad_scenarios import ad_project, calls, change_customers, sha
from attribute_scenarios import (
    CliSync,
    logged,
)
from fakes.google_ads import GoogleAdsFake
from platform_scenarios import run_sync_job, sync_steps

from dinmo_dagster.cli import main
from dinmo_dagster.config import load_project
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
from dinmo_dagster.platforms.google_ads import GoogleAds

CUSTOMER = "1234567890"
MANAGER = "9876543210"
CLIENT_ID = "1234-abc.apps.googleusercontent.com"
CLIENT_SECRET = "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r"
REFRESH_TOKEN = "1//google-refresh-token-z8y7x6w5"
DEVELOPER_TOKEN = "google-dev-token-AbCdEf123456"
SECRETS = (CLIENT_SECRET, REFRESH_TOKEN, DEVELOPER_TOKEN, "ya29.google-access")
V = "/v26"
FAST = RetryPolicy(
    max_attempts=3, max_rate_limited_attempts=20, initial_wait_seconds=0.01, max_wait_seconds=0.05
)
EMAILS = ActivationSpec("vip_to_google", "customer_id", {"email": "email"})
CONTACT = ActivationSpec("vip_to_google", "customer_id", {
    "email": "email", "phone": "phone", "first_name": "first", "last_name": "last", "country_code": "country",
    "postal_code": "zip"})  # fmt: skip
CLICKS = ActivationSpec("conversions", "order_id", {"gclid": "gclid"},
                        {"ordered_at": "conversion_date_time", "amount": "conversion_value"})  # fmt: skip


def new_fake(**options: Any) -> GoogleAdsFake:
    return GoogleAdsFake(client_id=CLIENT_ID, client_secret=CLIENT_SECRET, refresh_token=REFRESH_TOKEN,
                         developer_token=DEVELOPER_TOKEN, customer_id=CUSTOMER, manager_id=MANAGER, **options)  # fmt: skip


@pytest.fixture
def google() -> Iterator[GoogleAdsFake]:
    with new_fake() as fake:
        yield fake


def settings(fake: GoogleAdsFake, service: str, **extra: Any) -> dict[str, Any]:
    return {"service": service, "customer_id": "123-456-7890", "login_customer_id": MANAGER, "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET, "refresh_token": REFRESH_TOKEN, "developer_token": DEVELOPER_TOKEN,
            "base_url": fake.url, "token_url": fake.token_url, **extra}  # fmt: skip


def audiences(fake: GoogleAdsFake, **extra: Any) -> GoogleAds:
    extra.setdefault("audience", {"name": "VIP Europe"})
    platform = build_platform("google_ads", settings(fake, "audiences", **extra), destination="google_vip")
    assert isinstance(platform, GoogleAds)
    return platform


def events(fake: GoogleAdsFake, **extra: Any) -> GoogleAds:
    extra.setdefault("conversion_action", {"name": "Purchase"})
    platform = build_platform("google_ads", settings(fake, "events", **extra), destination="google_conv")
    assert isinstance(platform, GoogleAds)
    return platform


def customers(ids: Any, **overrides: list[Any]) -> pa.RecordBatch:
    ids = list(ids)
    columns: dict[str, list[Any]] = {"customer_id": ids, "email": [f" Customer.{i}@Example.com" for i in ids]}
    columns.update(overrides)
    return pa.record_batch(columns)


def emails(ids: Any) -> set[str]:
    return {sha(f"customer.{i}@example.com") for i in ids}


def orders(ids: Any, **overrides: list[Any]) -> pa.RecordBatch:
    ids = list(ids)
    columns: dict[str, list[Any]] = {
        "order_id": ids, "gclid": [f"Cj0KCQ-click-{i}" for i in ids],
        "ordered_at": [dt.datetime(2026, 11, 30, 12, 0, i % 60) for i in ids],
        "amount": [float(i) + 0.5 for i in ids]}  # fmt: skip
    columns.update(overrides)
    return pa.record_batch(columns)


def sent_text(fake: GoogleAdsFake) -> str:
    """Every API request's body and query as JSON (headers carry the credentials, checked apart)."""
    return json.dumps([[r.path, r.query, r.json] for r in fake.requests])


# --------------------------------------------------------------------------------------------------
# Customer Match: first sync, delta, identifier change, replace
# --------------------------------------------------------------------------------------------------


def test_a_first_sync_creates_the_list_and_adds_members_through_a_job_it_runs_and_waits_for(google):
    result = deliver(audiences(google, consent={"ad_user_data": "GRANTED", "ad_personalization": "GRANTED"}),
                     EMAILS, {"add": [customers([1, 2, 3])]}, InMemoryJournal())  # fmt: skip

    assert (result.accepted, result.rejected) == (3, 0)
    user_list = google.user_list_named("VIP Europe")
    assert user_list is not None and google.hashed_emails(user_list) == emails([1, 2, 3])
    assert (user_list.upload_key_type, user_list.membership_life_span) == ("CONTACT_INFO", 10_000)
    (job,) = google.jobs.values()
    assert job.status == "SUCCESS"
    assert job.consent == {"adUserData": "GRANTED", "adPersonalization": "GRANTED"}
    job_path = f"{V}/customers/{CUSTOMER}/offlineUserDataJobs/{job.id}"
    assert calls(google)[:5] == [
        ("POST", f"{V}/customers/{CUSTOMER}/googleAds:search"),
        ("POST", f"{V}/customers/{CUSTOMER}/userLists:mutate"),
        ("POST", f"{V}/customers/{CUSTOMER}/offlineUserDataJobs:create"),
        ("POST", f"{job_path}:addOperations"),
        ("POST", f"{job_path}:run"),
    ]
    assert set(calls(google)[5:]) == {("POST", f"{V}/customers/{CUSTOMER}/googleAds:search")}  # polls
    assert google.requests[0].json == {"query": "SELECT user_list.id, user_list.name FROM user_list "
                                                "WHERE user_list.name = 'VIP Europe'"}  # fmt: skip
    assert google.requests[3].json == {
        "enablePartialFailure": True,
        "operations": [
            {"create": {"userIdentifiers": [{"hashedEmail": sha(f"customer.{i}@example.com")}]}}
            for i in (1, 2, 3)
        ],
    }
    headers = google.requests[3].headers
    assert (headers["developer-token"], headers["login-customer-id"]) == (DEVELOPER_TOKEN, MANAGER)
    assert headers["authorization"].startswith("Bearer ya29.google-access-")
    (token,) = google.token_requests
    assert token.raw_body.decode().startswith("grant_type=refresh_token&client_id=")


def test_a_delta_removes_those_that_left_and_moves_a_changed_email_in_one_job_per_operation(google):
    user_list = google.create_user_list("VIP Europe", hashedEmail=emails([1, 2, 3]) | {sha("manual@x.io")})
    changed = customers([2], email=["Renamed@Example.com"])
    result = deliver(audiences(google), EMAILS, {"remove": [customers([3]), customers([2])], "add": [changed]},
                     InMemoryJournal())  # fmt: skip

    assert result.accepted == 3
    assert google.hashed_emails(user_list) == emails([1]) | {sha("renamed@example.com"), sha("manual@x.io")}
    remove_job, add_job = google.jobs.values()
    assert [next(iter(op)) for op in remove_job.operations] == ["remove", "remove"]
    assert [next(iter(op)) for op in add_job.operations] == ["create"]
    assert (remove_job.status, add_job.status) == ("SUCCESS", "SUCCESS")


def test_a_full_sync_replaces_the_members_with_remove_all_first_and_an_empty_one_empties_the_list(google):
    user_list = google.create_user_list("VIP Europe", hashedEmail=emails([1, 9]) | {sha("manual@x.io")})
    platform = audiences(google, audience={"id": user_list.id})
    platform.limits = type(platform.limits)(max_records_per_batch=2, requests_per_window=100, window_seconds=1.0,
                                            max_concurrency=1)  # fmt: skip
    result = deliver(platform, EMAILS, {"replace": [customers([1, 2, 3])]}, InMemoryJournal())

    assert result.accepted == 3
    assert google.hashed_emails(user_list) == emails([1, 2, 3])
    (job,) = google.jobs.values()
    assert [next(iter(op)) for op in job.operations] == ["removeAll", "create", "create", "create"]
    first, second = [r.json["operations"] for r in google.requests if r.path.endswith(":addOperations")]
    assert (first[0], len(first), len(second)) == ({"removeAll": True}, 3, 1)

    deliver(audiences(google, audience={"id": user_list.id}), EMAILS, {"replace": []}, InMemoryJournal())
    assert user_list.members == set()


def test_contact_identifiers_are_normalized_and_hashed_as_google_documents_and_never_sent_raw(google):
    user_list = google.create_user_list("VIP Europe")
    batch = customers(
        [1, 2, 3, 4], email=["Ann.Lee@Gmail.com ", None, "not-an-email", None],
        phone=["06 12 34 56 78", None, None, None], first=[" Ann ", "Bob", None, "Dan"],
        last=["LEE", "Stone", None, "Park"], country=["fr", "us", None, "us"], zip=["75001", "94043", None, None],
    )  # fmt: skip
    journal = InMemoryJournal()
    platform = audiences(google, audience={"id": user_list.id})
    result = deliver(platform, ActivationSpec("vip_to_google", "customer_id", CONTACT.match, default_country="FR"),
                     {"add": [batch]}, journal)  # fmt: skip

    assert (result.accepted, result.rejected) == (2, 2)
    assert user_list.members == {
        ("hashedEmail", sha("ann.lee@gmail.com")),  # Google: the dots of a gmail address may stay
        ("hashedPhoneNumber", sha("+33612345678")),
        ("addressInfo", (sha("ann"), sha("lee"), "FR", "75001")),
        ("addressInfo", (sha("bob"), sha("stone"), "US", "94043")),
    }
    reasons = {key: reason for key, _, reason in journal.rejections}
    assert reasons["3"] == "identifier email (column email) is not an e-mail address"
    assert reasons["4"] == ("no identifier to send (an address needs first_name, last_name, country_code and "
                            "postal_code)")  # fmt: skip
    sent = sent_text(google).lower()
    assert not any(raw in sent for raw in ("example", "gmail", "ann", "lee", "stone", "0612", "not-an-email"))


# --------------------------------------------------------------------------------------------------
# Customer Match: failures
# --------------------------------------------------------------------------------------------------


def test_a_partial_failure_rejects_the_operation_google_names_and_the_next_sync_sends_it_again(google):
    user_list = google.create_user_list("VIP Europe")
    google.refuse_identifier(sha("customer.2@example.com"), "INVALID_SHA256_FORMAT",
                             "The SHA256 encoded value is malformed.")  # fmt: skip
    journal = InMemoryJournal()
    first = deliver(audiences(google), EMAILS, {"add": [customers([1, 2, 3])]}, journal)

    assert (first.accepted, first.rejected) == (2, 1)
    assert journal.rejections == [("2", "add", "The SHA256 encoded value is malformed.")]
    assert first.top_reasons() == [("offlineUserDataJobError.INVALID_SHA256_FORMAT", 1)]
    assert google.hashed_emails(user_list) == emails([1, 3])
    google.accept_identifier(sha("customer.2@example.com"))
    second = deliver(audiences(google), EMAILS, {"add": [customers([2])]}, InMemoryJournal())
    assert second.accepted == 1 and google.hashed_emails(user_list) == emails([1, 2, 3])


def test_a_failed_job_rejects_its_members_with_googles_reason_and_a_failed_replace_stops(google):
    user_list = google.create_user_list("VIP Europe", hashedEmail=emails([7]))
    google.fail_next_job("PROCESSING_ERROR")
    journal = InMemoryJournal()
    first = deliver(audiences(google), EMAILS, {"add": [customers([1, 2])]}, journal)

    (job,) = google.jobs.values()
    assert (first.accepted, first.rejected) == (0, 2)
    assert journal.rejections[0] == (
        "1",
        "add",
        f"Google Ads job customers/{CUSTOMER}/offlineUserDataJobs/{job.id} FAILED (PROCESSING_ERROR)",
    )
    assert google.hashed_emails(user_list) == emails([7])
    google.fail_next_job("PROCESSING_ERROR")
    with pytest.raises(PlatformRequestError, match=r"FAILED \(PROCESSING_ERROR\); Google Ads user list 'VIP Europe' "
                                                   "was not replaced"):  # fmt: skip
        deliver(audiences(google), EMAILS, {"replace": [customers([1])]}, InMemoryJournal())
    assert deliver(audiences(google), EMAILS, {"add": [customers([1, 2])]}, InMemoryJournal()).accepted == 2
    assert google.hashed_emails(user_list) == emails([1, 2, 7])


def test_batches_hold_10000_members_and_the_fake_refuses_more_than_100000_identifiers(google):
    user_list = google.create_user_list("VIP Europe")
    result = deliver(audiences(google, audience={"id": user_list.id}), EMAILS,
                     {"add": [customers(range(10_001))]}, InMemoryJournal())  # fmt: skip

    assert result.accepted == 10_001 and len(user_list.members) == 10_001
    assert [len(r.json["operations"]) for r in google.requests if r.path.endswith(":addOperations")] == [
        10_000,
        1,
    ]
    job = next(iter(google.jobs))
    google.jobs[job].status = "PENDING"
    too_many = {"operations": [{"create": {"userIdentifiers": [{"hashedEmail": "0" * 64}]}}] * 100_001}
    answer = requests.post(f"{google.url}{V}/customers/{CUSTOMER}/offlineUserDataJobs/{job}:addOperations",
                           json=too_many, headers=audiences(google).auth_headers(), timeout=30)  # fmt: skip
    error = answer.json()["error"]
    assert (answer.status_code, error["status"]) == (400, "INVALID_ARGUMENT")
    assert error["details"][0]["errors"][0]["errorCode"] == {"requestError": "TOO_MANY_OPERATIONS"}


def test_a_storm_of_429_is_ridden_out_waiting_for_googles_retry_delay(google):
    user_list = google.create_user_list("VIP Europe")
    google.throttle(5)
    result = deliver(audiences(google, audience={"id": user_list.id}), EMAILS, {"add": [customers([1, 2])]},
                     InMemoryJournal(), retry=FAST)  # fmt: skip

    assert google.hashed_emails(user_list) == emails([1, 2])
    assert [s for _, p, s in google.answers if p != "/token"][:6] == [429] * 5 + [200]
    assert result.retries == 5 and result.rate_limit_wait_seconds >= 5 * 0.05 * 0.9


def test_an_access_token_that_expires_mid_sync_is_renewed_once(google, caplog):
    caplog.set_level(logging.DEBUG)
    user_list = google.create_user_list("VIP Europe")
    google.expire_tokens_after(2)
    result = deliver(audiences(google, audience={"id": user_list.id}), EMAILS, {"add": [customers([1, 2])]},
                     InMemoryJournal())  # fmt: skip

    assert result.accepted == 2 and google.hashed_emails(user_list) == emails([1, 2])
    assert 401 in [s for _, _, s in google.answers] and len(google.token_requests) == 2
    assert not any(s in caplog.text for s in SECRETS)


def test_auth_refusals_stop_the_sync_at_once_naming_the_destination(google):
    google.revoke_refresh_token()
    with pytest.raises(PlatformAuthError) as revoked:
        deliver(audiences(google), EMAILS, {"add": [customers([1])]}, InMemoryJournal())
    assert str(revoked.value).startswith("destination 'google_vip' (google_ads): the token endpoint refused the "
                                         "refresh token (HTTP 400 invalid_grant: Token has been expired or revoked.)")  # fmt: skip
    assert google.requests == []

    with new_fake() as fake:
        raw = settings(fake, "audiences", audience={"name": "VIP Europe"})
        del raw["login_customer_id"]
        with pytest.raises(PlatformAuthError) as denied:
            deliver(build_platform("google_ads", raw, destination="google_vip"), EMAILS, {"add": [customers([1])]},
                    InMemoryJournal())  # fmt: skip
        assert "'login-customer-id' header" in str(denied.value)
        assert "authorizationError.USER_PERMISSION_DENIED" in str(denied.value)
        assert not any(s in repr(denied.value) for s in SECRETS)


# --------------------------------------------------------------------------------------------------
# Conversions
# --------------------------------------------------------------------------------------------------


def test_click_conversions_are_uploaded_with_googles_date_format_order_ids_and_consent(google):
    action = google.create_conversion_action("Purchase")
    # a naive time is UTC; a text with its offset keeps it
    batch = orders([1, 2], ordered_at=["2026-11-30 09:05:07", "2026-11-30T09:05:07-08:00"])
    result = deliver(events(google, currency_code="EUR", consent={"ad_user_data": "GRANTED"}), CLICKS,
                     {"track": [batch]}, InMemoryJournal())  # fmt: skip

    assert result.accepted == 2 and len(google.conversions) == 2
    upload = google.requests[-1]
    assert upload.path == f"{V}/customers/{CUSTOMER}:uploadClickConversions"
    assert upload.json == {"partialFailure": True, "conversions": [
        {"conversionAction": f"customers/{CUSTOMER}/conversionActions/{action}", "gclid": "Cj0KCQ-click-1",
         "conversionDateTime": "2026-11-30 09:05:07+00:00", "conversionValue": 1.5, "currencyCode": "EUR",
         "orderId": "1", "consent": {"adUserData": "GRANTED"}},
        {"conversionAction": f"customers/{CUSTOMER}/conversionActions/{action}", "gclid": "Cj0KCQ-click-2",
         "conversionDateTime": "2026-11-30 09:05:07-08:00", "conversionValue": 2.5, "currencyCode": "EUR",
         "orderId": "2", "consent": {"adUserData": "GRANTED"}}]}  # fmt: skip
    assert google.requests[0].json == {"query": "SELECT conversion_action.id, conversion_action.name FROM "
                                                "conversion_action WHERE conversion_action.name = 'Purchase'"}  # fmt: skip


def test_a_too_recent_click_is_rejected_with_googles_reason_then_sent_again_and_a_resent_one_counts_once(
    google,
):
    google.create_conversion_action("Purchase")
    google.recent_click("Cj0KCQ-click-2")
    journal = InMemoryJournal()
    first = deliver(events(google), CLICKS, {"track": [orders([1, 2, 3])]}, journal)

    assert (first.accepted, first.rejected) == (2, 1)
    assert journal.rejections == [("2", "track", ("The click associated with the given identifier occurred less "
                                                 "than 6 hours ago, please retry after 6 hours have passed."))]  # fmt: skip
    assert first.top_reasons() == [("conversionUploadError.TOO_RECENT_EVENT", 1)]
    google.recent_click("Cj0KCQ-click-2", recent=False)
    # the next sync sends the rejected one; 1 and 3 again too (a journal lost): Google keeps one of each
    second = deliver(events(google), CLICKS, {"track": [orders([1, 2, 3])]}, InMemoryJournal())
    assert (second.accepted, second.rejected) == (3, 0)
    assert sorted(c["orderId"] for c in google.conversions.values()) == ["1", "2", "3"]
    assert len(google.received) == 6


def test_uploads_hold_2000_conversions_and_the_fake_refuses_2001(google):
    action = google.create_conversion_action("Purchase")
    result = deliver(events(google, conversion_action={"id": action}), CLICKS, {"track": [orders(range(1, 2_002))]},
                     InMemoryJournal())  # fmt: skip

    assert result.accepted == 2_001 and len(google.conversions) == 2_001
    assert sorted(len(r.json["conversions"]) for r in google.requests) == [1, 2_000]
    body = {"partialFailure": True, "conversions": [{"gclid": "x"}] * 2_001}
    answer = requests.post(f"{google.url}{V}/customers/{CUSTOMER}:uploadClickConversions", json=body,
                           headers=events(google).auth_headers(), timeout=10)  # fmt: skip
    assert answer.status_code == 400
    assert answer.json()["error"]["details"][0]["errors"][0]["errorCode"] == {
        "conversionUploadError": "TOO_MANY_CONVERSIONS_IN_REQUEST"
    }


def test_enhancements_restatements_and_retractions_are_adjustments_named_by_order_id(google):
    action = google.create_conversion_action("Purchase")
    enhance = ActivationSpec(
        "enhance", "order_id", {"email": "email", "phone": "phone"}, {"agent": "user_agent"}
    )
    batch = pa.record_batch({"order_id": [10, 11], "email": [" Ann@Example.com", None], "phone": ["+1 650 555 1212",
                             "+33 6 12 34 56 78"], "agent": ["Mozilla/5.0", None]})  # fmt: skip
    assert deliver(events(google, conversion_kind="enhancement"), enhance, {"track": [batch]},
                   InMemoryJournal()).accepted == 2  # fmt: skip
    restate = ActivationSpec("restate", "order_id", {}, {"changed_at": "adjustment_date_time",
                                                         "new_value": "conversion_value"})  # fmt: skip
    changed = pa.record_batch({"order_id": [10], "changed_at": [dt.datetime(2026, 12, 1, 8, 0, 0)],
                               "new_value": [99.9]})  # fmt: skip
    assert deliver(events(google, conversion_kind="restatement", currency_code="USD"), restate,
                   {"track": [changed]}, InMemoryJournal()).accepted == 1  # fmt: skip
    retract = ActivationSpec("retract", "order_id", {}, {"changed_at": "adjustment_date_time"})
    assert deliver(events(google, conversion_kind="retraction"), retract,
                   {"track": [changed.select(["order_id", "changed_at"])] * 2}, InMemoryJournal()).accepted == 2  # fmt: skip

    resource = f"customers/{CUSTOMER}/conversionActions/{action}"
    adjustments = [a for r in google.requests if r.path.endswith(":uploadConversionAdjustments")
                   for a in r.json["conversionAdjustments"]]  # fmt: skip
    assert adjustments[:3] == [
        {"conversionAction": resource, "adjustmentType": "ENHANCEMENT", "orderId": "10", "userIdentifiers": [
            {"hashedEmail": sha("ann@example.com")}, {"hashedPhoneNumber": sha("+16505551212")}],
         "userAgent": "Mozilla/5.0"},
        {"conversionAction": resource, "adjustmentType": "ENHANCEMENT", "orderId": "11",
         "userIdentifiers": [{"hashedPhoneNumber": sha("+33612345678")}]},
        {"conversionAction": resource, "adjustmentType": "RESTATEMENT", "orderId": "10",
         "adjustmentDateTime": "2026-12-01 08:00:00+00:00",
         "restatementValue": {"adjustedValue": 99.9, "currencyCode": "USD"}},
    ]  # fmt: skip
    # the retraction sent twice is held once (CONVERSION_ALREADY_RETRACTED counts as done)
    assert sorted(k[2] for k in google.adjustments) == [
        "ENHANCEMENT",
        "ENHANCEMENT",
        "RESTATEMENT",
        "RETRACTION",
    ]


def test_an_unknown_conversion_action_name_is_a_configuration_error(google):
    google.create_conversion_action("Signup")
    with pytest.raises(PlatformConfigError) as unknown:
        deliver(events(google), CLICKS, {"track": [orders([1])]}, InMemoryJournal())
    assert str(unknown.value) == (
        "destination 'google_conv' (google_ads): conversion_action.name: no conversion action is named 'Purchase' "
        f"in customer {CUSTOMER}; allowed: the name of one conversion action, or {{id: ...}}"
    )


# --------------------------------------------------------------------------------------------------
# preview, validate --connect, settings
# --------------------------------------------------------------------------------------------------


def test_preview_masks_identifiers_shows_the_job_and_sends_nothing(google):
    (replace,) = preview(audiences(google), EMAILS, {"replace": [customers([1, 2])]})

    assert google.requests == [] and google.token_requests == []
    assert replace.url == f"{google.url}{V}/<job created for this operation>:addOperations"
    assert replace.body["operations"] == [{"removeAll": True}] + [
        {"create": {"userIdentifiers": [{"hashedEmail": sha(f"customer.{i}@example.com")[:8] + "…"}]}}
        for i in (1, 2)
    ]
    assert replace.body["job"]["create"] == {"job": {"type": "CUSTOMER_MATCH_USER_LIST", "customerMatchUserListMetadata": {
        "userList": f"customers/{CUSTOMER}/userLists/<id of user list 'VIP Europe'>"}}}  # fmt: skip
    (track,) = preview(events(google), CLICKS, {"track": [orders([1])]})
    assert track.body["conversions"][0]["gclid"] == "Cj0K***"
    assert track.body["conversions"][0]["conversionAction"] == "<conversion action 'Purchase'>"


def test_validate_connect_checks_credentials_customer_list_and_conversion_action(google):
    user_list = google.create_user_list("Existing")
    assert validate_connection(audiences(google, audience={"id": user_list.id}), EMAILS) == []
    assert validate_connection(audiences(google, audience={"id": "999"}), EMAILS) == [
        f"destination 'google_vip' (google_ads): no user list 999 in customer {CUSTOMER}"
    ]
    assert validate_connection(audiences(google, developer_token="wrong-dev-token"), EMAILS) == [
        (
            "destination 'google_vip' (google_ads): the platform refused the credentials (HTTP 401): "
            "The developer token is not valid. (authenticationError.DEVELOPER_TOKEN_INVALID)"
        )
    ]
    google.create_conversion_action("Purchase")
    assert validate_connection(events(google), CLICKS) == []
    assert google.user_list_named("VIP Europe") is None  # validate creates nothing


def test_settings_and_activation_problems_name_the_key_and_what_is_allowed(google):
    with pytest.raises(PlatformConfigError) as wrong:
        build_platform("google_ads", {**settings(google, "events"), "customer_id": "12-34", "api_version": "26",
                                      "currency_code": "euro", "audience": {"name": "x"}}, destination="g")  # fmt: skip
    assert str(wrong.value).splitlines() == [
        "destinations.g.customer_id: found '12-34'; allowed: the customer's 10-digit id, such as 123-456-7890",
        "destinations.g.api_version: found '26'; allowed: a Google Ads API version such as v26",
        "destinations.g.currency_code: found 'euro'; allowed: a 3-letter ISO 4217 code such as EUR",
    ]
    with pytest.raises(PlatformConfigError) as unused:
        build_platform(
            "google_ads", {**settings(google, "events"), "audience": {"name": "x"}}, destination="g"
        )
    assert str(unused.value) == ("destinations.g: audience is not used by service events; conversion_action: "
                                 "found nothing; allowed: {name: ...} or {id: ...}")  # fmt: skip
    assert audiences(google).validate_activation(
        {"email": "e", "mobile_id": "m", "first_name": "f", "gclid": "g"}, {"ltv": "value"}
    ) == [
        (
            "identifiers.gclid: found 'gclid'; allowed: email, phone, first_name, last_name, country_code, "
            "postal_code, mobile_id"
        ),
        "mapping: found ltv; allowed: nothing (Customer Match user lists take identifiers only)",
        "app_id: found nothing; allowed: the mobile app's id (a user list created by name for mobile ids needs it)",
        (
            "identifiers: found mobile_id with contact identifiers; allowed: mobile_id alone (a MOBILE_ADVERTISING_ID "
            "list) or contact identifiers (a CONTACT_INFO list)"
        ),
        (
            "identifiers: an address needs first_name, last_name, country_code and postal_code; missing country_code, "
            "last_name, postal_code"
        ),
    ]
    assert events(google).validate_activation({"gclid": "g", "wbraid": "w"}, {"at": "when"}) == [
        "identifiers: found gclid, wbraid; allowed: one click id per conversion",
        (
            "mapping: found 'when'; allowed for conversion_kind click: conversion_date_time, conversion_value, "
            "currency_code, order_id"
        ),
        "mapping: no column is mapped to conversion_date_time; conversion_kind click needs it",
    ]


def test_the_readme_google_ads_examples_load(tmp_path: Path, monkeypatch) -> None:
    """The YAML examples of the README's Google Ads paragraph, with a source, models and segments."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    marker = "**Google Ads (`type: google_ads`).**"
    if marker not in readme:
        pytest.skip("the README has no Google Ads paragraph yet")
    section = readme.split(marker, 1)[1].split("\n**", 1)[0]
    examples = [part.split("```", 1)[0] for part in section.split("```yaml\n")[1:]]
    assert len(examples) == 2
    for env in ("GOOGLE_ADS_CLIENT_SECRET", "GOOGLE_ADS_REFRESH_TOKEN", "GOOGLE_ADS_DEVELOPER_TOKEN"):
        monkeypatch.setenv(env, "x")
    for n, example in enumerate(examples):
        (tmp_path / f"p{n}").mkdir()
        (tmp_path / f"p{n}" / "dinmo.yaml").write_text(
            """
sources:
  warehouse: {type: duckdb, path: data/warehouse.duckdb}
models:
  customers: {source: warehouse, table: raw.customers, primary_key: customer_id}
  orders: {source: warehouse, kind: fact, table: raw.orders, primary_key: order_id, time_column: ordered_at}
segments:
  vip_europe: {model: customers, sql: "select * from {{ model }}"}
  purchases: {model: orders, sql: "select * from {{ model }}"}
"""
            + example
        )
        project = load_project(tmp_path / f"p{n}")
        (activation,) = project.activations.values()
        assert activation.platform_service == ("audiences", "events")[n]


# --------------------------------------------------------------------------------------------------
# The Dagster sync job on DuckDB, and a killed `dinmo sync`
# --------------------------------------------------------------------------------------------------


def google_project(
    request, tmp_path: Path, monkeypatch
) -> contextlib.AbstractContextManager[SimpleNamespace]:
    return ad_project(
        request, tmp_path, monkeypatch, new_fake, attr="google", type_="google_ads", destination="google_vip",
        activation="to_google",
        fields={"customer_id": "'123-456-7890'", "login_customer_id": f"'{MANAGER}'", "client_id": CLIENT_ID},
        secrets={"client_secret": ("GOOGLE_CLIENT_SECRET", CLIENT_SECRET),
                 "refresh_token": ("GOOGLE_REFRESH_TOKEN", REFRESH_TOKEN),
                 "developer_token": ("GOOGLE_DEVELOPER_TOKEN", DEVELOPER_TOKEN)},
    )  # fmt: skip


def test_a_user_list_follows_the_segment_through_the_dagster_job(
    request, tmp_path: Path, monkeypatch, capsys
):
    with google_project(request, tmp_path, monkeypatch) as env:
        assert main(["--project", str(tmp_path), "validate", "--connect"]) == 0
        assert main(["--project", str(tmp_path), "preview", "to_google"]) == 0
        out = capsys.readouterr().out
        assert "bob@example.com" not in out and not any(s in out for s in SECRETS)

        # First sync: the list is created and gets Bob, Cle and Dan; a 429 storm on the way.
        env.google.throttle(3)
        assert run_sync_job(env.defs, env.instance, "to_google").success
        user_list = env.google.user_list_named("VIP Europe")
        assert env.google.hashed_emails(user_list) == {sha(f"{n}@example.com") for n in ("bob", "cle", "dan")}

        # Delta: Dan leaves, Bob's e-mail changes, Ann enters; the first job (the removes) fails, its
        # members go with the next sync; the token expires mid-sync.
        change_customers(env.wh)
        env.google.fail_next_job("PROCESSING_ERROR")
        env.google.expire_tokens_after(1)
        run_sync_job(env.defs, env.instance, "to_google")
        assert 401 in [status for _, _, status in env.google.answers]
        run_sync_job(env.defs, env.instance, "to_google")
        assert env.google.hashed_emails(user_list) == {
            sha(f"{n}@example.com") for n in ("robert", "cle", "ann")
        }

        # Full refresh: Google's replace (removeAll first) drops a member added by hand and restores one lost.
        user_list.members = {
            ("hashedEmail", sha("cle@example.com")),
            ("hashedEmail", sha("manual@example.com")),
        }
        sync_steps(env, "to_google", full_refresh=True)
        assert env.google.hashed_emails(user_list) == {
            sha(f"{n}@example.com") for n in ("robert", "cle", "ann")
        }

        assert "example.com" not in sent_text(env.google)
        for entry in logged(env.instance):
            assert not any(s in entry for s in SECRETS)


def test_conversions_killed_mid_sync_are_counted_once_after_the_next_sync(tmp_path):
    cli = CliSync(tmp_path, "conversions",
                  {"G_SECRET": CLIENT_SECRET, "G_REFRESH": REFRESH_TOKEN, "G_DEV": DEVELOPER_TOKEN})  # fmt: skip
    cli.seed(0)
    cli.sql("create table raw.orders (order_id integer, gclid varchar, ordered_at timestamp, amount double)",
            "insert into raw.orders select i, 'Cj0KCQ-click-' || i, timestamp '2026-11-30 12:00:00' - "
            "i * interval '1 second', i from generate_series(1, 8000) t(i)")  # fmt: skip
    with new_fake(latency=0.5) as fake:
        action = fake.create_conversion_action("Purchase")
        cli.write(
            models="orders: {source: wh, kind: fact, time_column: ordered_at, table: raw.orders, "
                   "primary_key: order_id}\n",
            segments='all_orders: {model: orders, sql: "select * from {{ model }}"}\n',
            destinations=[(f"google_conv:\n  type: google_ads\n  service: events\n  customer_id: '{CUSTOMER}'\n"
                          f"  login_customer_id: '{MANAGER}'\n  client_id: {CLIENT_ID}\n"
                          "  client_secret: {env: G_SECRET}\n  refresh_token: {env: G_REFRESH}\n"
                          f"  developer_token: {{env: G_DEV}}\n  conversion_action: {{id: '{action}'}}\n"
                          f"  max_concurrency: 1\n  base_url: {fake.url}\n  token_url: {fake.token_url}\n")],
            activations="conversions:\n  segment: all_orders\n  destination: google_conv\n"
                        "  identifiers: {gclid: gclid}\n"
                        "  mapping: {ordered_at: conversion_date_time, amount: conversion_value}\n")  # fmt: skip
        # 1. 8,000 conversions go in 4 uploads of 2,000, one at a time: killed after the second arrives.
        uploads = f"{V}/customers/{CUSTOMER}:uploadClickConversions"
        # settle: the upload in flight at the kill is answered
        cli.kill_when(lambda: sum(r.path == uploads for r in fake.requests) >= 2, settle=1.0)
        received_before = len(fake.received)
        assert 0 < received_before < 8000
        with duckdb.connect(str(tmp_path / "wh.duckdb"), read_only=True) as con:
            journalled = {key for (key,) in con.execute(
                "select record_key from dinmo_delta_storage.dinmo_acknowledgements").fetchall()}  # fmt: skip

        # 2. The next sync recovers: Google holds every conversion once; only those that reached it before
        # the kill without their acknowledgement journalled are sent twice (CLICK_CONVERSION_ALREADY_EXISTS).
        done = cli.recover()
        assert sorted(int(c["orderId"]) for c in fake.conversions.values()) == list(range(1, 8001))
        first = {c["orderId"] for c in fake.received[:received_before]}
        resent = [c["orderId"] for c in fake.received[received_before:] if c["orderId"] in first]
        assert len(fake.received) == 8000 + len(resent)
        assert journalled.isdisjoint(resent)
        assert "rejected" not in done.stdout.lower() or "0 rejected" in done.stdout.lower()
        assert not any(s in sent_text(fake) for s in (CLIENT_SECRET, REFRESH_TOKEN))
    assert cli.leftovers() == []
    assert not cli.in_home(*SECRETS[:3])
