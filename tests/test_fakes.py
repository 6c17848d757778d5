"""The platform fakes accept what each platform documents and refuse what it refuses.

Each test sends plain ``requests`` calls written from the platform's documentation examples to a
fake (Braze, Meta Ads) or to the real Firestore emulator, and asserts the status, the exact answer
body and headers, and what the platform holds afterwards.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from fakes.braze import BrazeFake
from fakes.firestore_emulator import (  # its fixtures come from conftest's pytest_plugins
    FIRESTORE_EMULATOR_ENV_VAR,
    FirestoreEmulatorUnavailable,
    start_firestore_emulator,
)
from fakes.meta_ads import MetaAdsFake

BRAZE_KEY = "braze-rest-key"
AUTH = {"Authorization": f"Bearer {BRAZE_KEY}"}
META_TOKEN = "meta-access-token"
NOW = 1_800_000_000.0


def sha256(value: str) -> str:
    """The SHA-256 hex digest Meta expects of a normalized identifier."""
    return hashlib.sha256(value.encode()).hexdigest()


class Clock:
    """A clock a test moves by hand."""

    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def braze() -> Iterator[BrazeFake]:
    with BrazeFake(BRAZE_KEY) as fake:
        yield fake


@pytest.fixture
def meta() -> Iterator[MetaAdsFake]:
    with MetaAdsFake(META_TOKEN, ad_account_id="act_1234", pixel_ids=("1234567890",)) as fake:
        yield fake


# ------------------------------------------------------------------------------------------- Braze
def test_braze_track_accepts_the_documented_update_by_email_example(braze: BrazeFake) -> None:
    body = {
        "attributes": [{"email": "test@braze.com", "string_attribute": "fruit", "boolean_attribute_1": True,
                        "integer_attribute": 26, "array_attribute": ["banana", "apple"]}],
        "events": [
            {"email": "test@braze.com", "app_id": "your_app_identifier", "name": "rented_movie",
             "time": "2022-12-06T19:20:45+01:00", "properties": {"release": {"studio": "FilmStudio"}}},
            {"user_alias": {"alias_name": "device123", "alias_label": "my_device_identifier"},
             "app_id": "your_app_identifier", "name": "rented_movie", "time": "2013-07-16T19:20:50+01:00"},
        ],
        "purchases": [{"email": "test@braze.com", "app_id": "your_app_identifier", "product_id": "product_name",
                       "currency": "USD", "price": 12.12, "quantity": 6, "time": "2017-05-12T18:47:12Z"}],
    }

    response = requests.post(f"{braze.url}/users/track", json=body, headers=AUTH, timeout=5)

    assert response.status_code == 201
    assert response.json() == {"message": "success", "attributes_processed": 1, "events_processed": 2,
                               "purchases_processed": 1}
    user = braze.user(email="test@braze.com")
    assert user is not None and user.external_id is None
    assert user.attributes == {"string_attribute": "fruit", "boolean_attribute_1": True, "integer_attribute": 26,
                               "array_attribute": ["banana", "apple"]}
    # The alias event names no existing profile and does not say _update_existing_only: false.
    assert [(e.braze_id, e.name) for e in braze.events] == [(user.braze_id, "rented_movie")]
    assert [(p.product_id, p.price, p.quantity) for p in braze.purchases] == [("product_name", 12.12, 6)]
    assert len(braze.users) == 1


def test_braze_track_refuses_76_objects_with_max_input_length_exceeded(braze: BrazeFake) -> None:
    attributes = [{"external_id": f"user{i}", "first_name": "Jon"} for i in range(76)]

    response = requests.post(f"{braze.url}/users/track", json={"attributes": attributes}, headers=AUTH, timeout=5)

    assert response.status_code == 400
    assert response.json()["message"] == "Max Input Length Exceeded"
    assert braze.users == []
    ok = requests.post(f"{braze.url}/users/track", json={"attributes": attributes[:75]}, headers=AUTH, timeout=5)
    assert ok.status_code == 201 and ok.json()["attributes_processed"] == 75


def test_braze_refuses_a_missing_or_unknown_key_and_a_key_without_permission() -> None:
    body = {"attributes": [{"external_id": "user1", "first_name": "Jon"}]}
    with BrazeFake(BRAZE_KEY, permissions={"subscription.status.set"}) as braze:
        missing = requests.post(f"{braze.url}/users/track", json=body, timeout=5)
        wrong = requests.post(f"{braze.url}/users/track", json=body, headers={"Authorization": "Bearer nope"},
                              timeout=5)
        forbidden = requests.post(f"{braze.url}/users/track", json=body, headers=AUTH, timeout=5)

        assert (missing.status_code, missing.json()) == (401, {"message": "Invalid API key"})
        assert (wrong.status_code, wrong.json()) == (401, {"message": "Invalid API key"})
        assert (forbidden.status_code, forbidden.json()) == (403, {"message": "Access Denied"})
        assert braze.users == []
        assert all(BRAZE_KEY not in json.dumps(r.body) for r in braze.requests)


def test_braze_partial_failure_reports_each_bad_object_and_keeps_the_others(braze: BrazeFake) -> None:
    body = {
        "attributes": [{"external_id": "user1", "first_name": "Jon"}, {"first_name": "nobody"}],
        "events": [{"external_id": "user1", "name": "watched_trailer", "time": "2013-07-16T19:20:30+01:00"},
                   {"external_id": "user1", "name": "watched_trailer", "time": "yesterday"}],
    }

    response = requests.post(f"{braze.url}/users/track", json=body, headers=AUTH, timeout=5)

    assert response.status_code == 201
    assert response.json() == {
        "message": "success",
        "attributes_processed": 1,
        "events_processed": 1,
        "errors": [
            {"type": "'external_id', 'user_alias', 'braze_id', 'email' or 'phone' is required",
             "input_array": "attributes", "index": 1},
            {"type": "'time' 'yesterday' is not in ISO 8601 or yyyy-MM-dd'T'HH:mm:ss:SSSZ format",
             "input_array": "events", "index": 1},
        ],
    }
    assert braze.user(external_id="user1").attributes == {"first_name": "Jon"}
    assert [e.time for e in braze.events] == ["2013-07-16T19:20:30+01:00"]


def test_braze_rate_limit_answers_429_with_the_rate_limit_headers() -> None:
    clock = Clock()
    with BrazeFake(BRAZE_KEY, track_limit=2, track_window=60, clock=clock) as braze:
        body = {"attributes": [{"external_id": "user1", "visits": {"inc": 1}}]}
        answers = [requests.post(f"{braze.url}/users/track", json=body, headers=AUTH, timeout=5) for _ in range(3)]

        assert [a.status_code for a in answers] == [201, 201, 429]
        assert [a.headers["X-RateLimit-Remaining"] for a in answers] == ["1", "0", "0"]
        assert {a.headers["X-RateLimit-Limit"] for a in answers} == {"2"}
        assert {a.headers["X-RateLimit-Reset"] for a in answers} == {"1800000060"}
        assert answers[2].json() == {"message": "Rate Limited"}
        assert braze.user(external_id="user1").attributes == {"visits": 2}

        clock.now += 60
        again = requests.post(f"{braze.url}/users/track", json=body, headers=AUTH, timeout=5)
        assert (again.status_code, again.headers["X-RateLimit-Remaining"]) == (201, "1")
        assert again.headers["X-RateLimit-Reset"] == "1800000120"


def test_braze_array_attribute_add_and_remove_keeps_unique_values_and_the_25_newest(braze: BrazeFake) -> None:
    def track(value: object) -> None:
        response = requests.post(f"{braze.url}/users/track",
                                 json={"attributes": [{"external_id": "user1", "dinmo_lists": value}]},
                                 headers=AUTH, timeout=5)
        assert response.status_code == 201 and "errors" not in response.json()

    track({"add": ["vip", "europe"]})
    track({"add": ["vip"], "remove": ["europe"]})
    track({"add": ["churn_risk"]})
    assert braze.user(external_id="user1").attributes["dinmo_lists"] == ["vip", "churn_risk"]

    track(["a", "a", "b"])
    assert braze.user(external_id="user1").attributes["dinmo_lists"] == ["a", "b"]
    track({"add": [f"list{i}" for i in range(30)]})
    assert braze.user(external_id="user1").attributes["dinmo_lists"] == [f"list{i}" for i in range(5, 30)]
    track(None)
    assert "dinmo_lists" not in braze.user(external_id="user1").attributes


def test_braze_identification_rules(braze: BrazeFake) -> None:
    def track(*attributes: dict) -> dict:
        response = requests.post(f"{braze.url}/users/track", json={"attributes": list(attributes)}, headers=AUTH,
                                 timeout=5)
        assert response.status_code == 201
        return response.json()

    track({"external_id": "ghost", "_update_existing_only": True, "first_name": "Nobody"})
    track({"user_alias": {"alias_name": "a1", "alias_label": "crm"}, "first_name": "Ann"})
    assert braze.users == []

    track({"user_alias": {"alias_name": "a1", "alias_label": "crm"}, "_update_existing_only": False,
           "email": "ann@example.com"})
    alias_user = braze.user(alias=("a1", "crm"))
    assert alias_user is not None and alias_user.email == "ann@example.com"

    track({"external_id": "user1", "email": "ann@example.com"})
    track({"email": "ann@example.com", "phone": "+15043277269", "plan": "gold"})
    # The most recently updated profile with an external_id wins; email beats phone as identifier.
    assert braze.user(external_id="user1").attributes == {"plan": "gold"}
    assert braze.user(external_id="user1").phone == "+15043277269"
    assert alias_user.attributes == {}

    errors = track({"phone": "555-1234", "plan": "x"})["errors"]
    assert errors == [{"type": "'phone' must be a valid phone number (E.164, e.g. +15043277269)",
                       "input_array": "attributes", "index": 0}]


def test_braze_keeps_duplicate_events_as_separate_events(braze: BrazeFake) -> None:
    event = {"external_id": "user1", "name": "purchase_completed", "time": "2024-05-01T10:00:00Z",
             "properties": {"order_id": "o-1"}}
    for _ in range(2):
        response = requests.post(f"{braze.url}/users/track", json={"events": [event]}, headers=AUTH, timeout=5)
        assert response.json() == {"message": "success", "events_processed": 1}

    stored = braze.events_named("purchase_completed")
    assert [e.properties for e in stored] == [{"order_id": "o-1"}, {"order_id": "o-1"}]
    assert len({e.event_id for e in stored}) == 2


def test_braze_subscription_status_set_v1_and_v2(braze: BrazeFake) -> None:
    requests.post(f"{braze.url}/users/track", headers=AUTH, timeout=5, json={"attributes": [
        {"external_id": "user123", "email": "your.user@email.com", "phone": "+12223334444"},
        {"external_id": "example-user", "email": "example1@email.com"}]})

    v1 = requests.post(f"{braze.url}/subscription/status/set", headers=AUTH, timeout=5, json={
        "subscription_group_id": "pto81fff-734f-80e5-b7b2-b880562888ww", "subscription_state": "unsubscribed",
        "email": "your.user@email.com"})
    both = requests.post(f"{braze.url}/subscription/status/set", headers=AUTH, timeout=5, json={
        "subscription_group_id": "g1", "subscription_state": "subscribed", "email": "your.user@email.com",
        "phone": "+12223334444"})
    too_many = requests.post(f"{braze.url}/subscription/status/set", headers=AUTH, timeout=5, json={
        "subscription_group_id": "g1", "subscription_state": "subscribed",
        "external_id": [f"user{i}" for i in range(51)]})
    v2 = requests.post(f"{braze.url}/v2/subscription/status/set", headers=AUTH, timeout=5, json={
        "subscription_groups": [{"subscription_group_id": "subscription_group_identifier",
                                 "subscription_state": "subscribed",
                                 "external_ids": ["example-user", "example1@email.com"]}]})

    assert (v1.status_code, v1.json()) == (201, {"message": "success"})
    assert (both.status_code, both.json()) == (
        400, {"message": "Either an email address or a phone number should be provided, but not both."})
    assert (too_many.status_code, too_many.json()) == (
        400, {"message": "The max number of external_ids and aliases per request was exceeded"})
    assert (v2.status_code, v2.json()) == (201, {"message": "success"})
    assert braze.subscription_state("pto81fff-734f-80e5-b7b2-b880562888ww", external_id="user123") == "unsubscribed"
    assert braze.subscription_state("subscription_group_identifier", external_id="example-user") == "subscribed"
    assert braze.subscription_state("g1", external_id="user123") is None
    assert "X-RateLimit-Remaining" in v2.headers


def test_braze_partner_cohort_import(braze: BrazeFake) -> None:
    requests.post(f"{braze.url}/users/track", headers=AUTH, timeout=5,
                  json={"attributes": [{"external_id": f"test_user_{i}"} for i in (1, 2, 3)]})
    keys = {"partner_api_key": "braze-partner-key", "client_secret": "braze-data-import-key", "cohort_id": "vip"}

    named = requests.post(f"{braze.url}/partners/dinmo/cohorts", timeout=5,
                          json={**keys, "name": "VIP Europe", "created_at": "2021-01-21T19:20:30+05:00"})
    added = requests.post(f"{braze.url}/partners/dinmo/cohorts/users", timeout=5, json={
        **keys, "cohort_changes": [{"user_ids": ["test_user_1", "test_user_2", "unknown_user"]}]})
    removed = requests.post(f"{braze.url}/partners/dinmo/cohorts/users", timeout=5, json={
        **keys, "cohort_changes": [{"user_ids": ["test_user_2"], "should_remove": True}]})
    bad_key = requests.post(f"{braze.url}/partners/dinmo/cohorts/users", timeout=5, json={
        **keys, "partner_api_key": "nope", "cohort_changes": []})
    too_many = requests.post(f"{braze.url}/partners/dinmo/cohorts/users", timeout=5, json={
        **keys, "cohort_changes": [{"user_ids": [f"u{i}" for i in range(1001)]}]})

    assert [r.status_code for r in (named, added, removed)] == [201, 201, 201]
    assert (bad_key.status_code, bad_key.json()) == (401, {"message": "Invalid Partner API key"})
    assert (too_many.status_code, too_many.json()) == (
        400, {"message": "Only 1,000 user_ids, device_ids, and aliases are allowed per request"})
    cohort = braze.cohorts["vip"]
    assert (cohort.name, cohort.external_ids) == ("VIP Europe", {"test_user_1"})


def test_braze_fail_next_injects_a_server_error_then_recovers(braze: BrazeFake) -> None:
    braze.fail_next("/users/track", 503, {"message": "Service Unavailable"})
    body = {"attributes": [{"external_id": "user1", "first_name": "Jon"}]}

    first = requests.post(f"{braze.url}/users/track", json=body, headers=AUTH, timeout=5)
    second = requests.post(f"{braze.url}/users/track", json=body, headers=AUTH, timeout=5)

    assert (first.status_code, first.json()) == (503, {"message": "Service Unavailable"})
    assert second.status_code == 201
    assert braze.user(external_id="user1").attributes == {"first_name": "Jon"}


def test_braze_latency_lets_concurrent_requests_overlap_and_counts_them() -> None:
    with BrazeFake(BRAZE_KEY, latency=0.3) as braze:
        bodies = [{"attributes": [{"external_id": f"user{i}", "first_name": "Jon"}]} for i in range(4)]
        with ThreadPoolExecutor(max_workers=4) as pool:
            answers = list(pool.map(
                lambda body: requests.post(f"{braze.url}/users/track", json=body, headers=AUTH, timeout=5), bodies))

        assert [a.status_code for a in answers] == [201] * 4
        assert braze.max_in_flight == 4
        assert sorted(u.external_id for u in braze.users) == ["user0", "user1", "user2", "user3"]
        arrivals = [r.at for r in braze.requests]
        assert max(arrivals) - min(arrivals) < 0.3


# ---------------------------------------------------------------------------------------- Meta Ads
def create_audience(meta: MetaAdsFake, name: str = "VIP Europe") -> str:
    """Create an audience the way the docs' curl example does (form fields), return its id."""
    response = requests.post(f"{meta.graph_url()}/act_1234/customaudiences", timeout=5, data={
        "name": name, "subtype": "CUSTOM", "description": "People who purchased on my website",
        "customer_file_source": "USER_PROVIDED_ONLY", "access_token": META_TOKEN})
    assert response.status_code == 200, response.text
    return response.json()["id"]


def test_meta_creates_an_audience_and_adds_hashed_users(meta: MetaAdsFake) -> None:
    audience_id = create_audience(meta)
    payload = {"schema": ["EMAIL", "PHONE"],
               "data": [[sha256("alice@example.com"), sha256("33612345678")], [sha256("bob@example.com"), ""]]}

    response = requests.post(f"{meta.graph_url()}/{audience_id}/users", timeout=5,
                             data={"payload": json.dumps(payload), "access_token": META_TOKEN})

    assert response.status_code == 200
    body = response.json()
    assert {k: body[k] for k in ("audience_id", "num_received", "num_invalid_entries", "invalid_entry_samples")} == {
        "audience_id": audience_id, "num_received": 2, "num_invalid_entries": 0, "invalid_entry_samples": {}}
    assert meta.member_hashes(audience_id, "EMAIL") == {sha256("alice@example.com"), sha256("bob@example.com")}
    assert meta.member_hashes(audience_id, "PHONE") == {sha256("33612345678")}
    listed = requests.get(f"{meta.graph_url()}/act_1234/customaudiences", params={"access_token": META_TOKEN},
                          timeout=5).json()["data"]
    assert [(a["id"], a["name"], a["approximate_count_lower_bound"]) for a in listed] == [
        (audience_id, "VIP Europe", 2)]


def test_meta_counts_unhashed_identifiers_as_invalid_and_never_stores_them(meta: MetaAdsFake) -> None:
    audience_id = create_audience(meta)
    payload = {"schema": "EMAIL_SHA256", "data": ["alice@example.com", sha256("bob@example.com")]}

    response = requests.post(f"{meta.graph_url()}/{audience_id}/users", timeout=5,
                             json={"payload": payload}, headers={"Authorization": f"Bearer {META_TOKEN}"})
    phone = requests.post(f"{meta.graph_url()}/{audience_id}/users", timeout=5, json={
        "payload": {"schema": "PHONE_SHA256", "data": ["+33612345678"]}, "access_token": META_TOKEN})

    body = response.json()
    assert (body["num_received"], body["num_invalid_entries"]) == (2, 1)
    assert body["invalid_entry_samples"] == {"alice@example.com": "EMAIL"}
    assert phone.json()["num_invalid_entries"] == 1
    assert meta.members(audience_id) == [{"EMAIL": sha256("bob@example.com")}]


def test_meta_refuses_more_than_10000_users_per_request(meta: MetaAdsFake) -> None:
    audience_id = create_audience(meta)
    data = [sha256(f"user{i}@example.com") for i in range(10_001)]

    response = requests.post(f"{meta.graph_url()}/{audience_id}/users", timeout=10, json={
        "payload": {"schema": "EMAIL_SHA256", "data": data}, "access_token": META_TOKEN})

    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], error["type"], error["message"]) == (100, "OAuthException", "Invalid parameter")
    assert error["error_user_msg"] == "payload.data has 10001 users; at most 10000 are accepted per request"
    assert error["fbtrace_id"]
    assert meta.members(audience_id) == []
    ok = requests.post(f"{meta.graph_url()}/{audience_id}/users", timeout=10, json={
        "payload": {"schema": "EMAIL_SHA256", "data": data[:10_000]}, "access_token": META_TOKEN})
    assert ok.json()["num_received"] == 10_000 and len(meta.members(audience_id)) == 10_000


def test_meta_delete_users_removes_the_matching_people(meta: MetaAdsFake) -> None:
    audience = meta.create_audience("VIP", members=[
        {"EMAIL": sha256("alice@example.com"), "PHONE": sha256("33612345678")},
        {"EMAIL": sha256("bob@example.com")}])

    response = requests.delete(f"{meta.graph_url()}/{audience.id}/users", timeout=5, json={
        "payload": {"schema": "PHONE_SHA256", "data": [sha256("33612345678")]}, "access_token": META_TOKEN})

    assert response.status_code == 200 and response.json()["num_received"] == 1
    assert meta.members(audience.id) == [{"EMAIL": sha256("bob@example.com")}]


def test_meta_usersreplace_swaps_the_membership_when_the_last_batch_arrives() -> None:
    clock = Clock()
    with MetaAdsFake(META_TOKEN, clock=clock) as meta:
        audience = meta.create_audience("VIP", members=[{"EMAIL": sha256("old@example.com")}])
        url = f"{meta.graph_url()}/{audience.id}/usersreplace"

        def replace(session: dict, *emails: str) -> requests.Response:
            return requests.post(url, timeout=5, json={
                "session": session, "access_token": META_TOKEN,
                "payload": {"schema": "EMAIL_SHA256", "data": [sha256(e) for e in emails]}})

        late_start = replace({"session_id": 9, "batch_seq": 2, "last_batch_flag": False}, "a@example.com")
        first = replace({"session_id": 7, "batch_seq": 1, "last_batch_flag": False, "estimated_num_total": 3},
                        "a@example.com", "b@example.com")
        during = requests.post(f"{meta.graph_url()}/{audience.id}/users", timeout=5, json={
            "payload": {"schema": "EMAIL_SHA256", "data": [sha256("x@example.com")]}, "access_token": META_TOKEN})
        other = replace({"session_id": 8, "batch_seq": 1, "last_batch_flag": False}, "z@example.com")
        assert meta.member_hashes(audience.id) == {sha256("old@example.com")}
        last = replace({"session_id": 7, "batch_seq": 2, "last_batch_flag": True, "estimated_num_total": 3},
                       "c@example.com")
        after = replace({"session_id": 7, "batch_seq": 3, "last_batch_flag": True}, "d@example.com")

        assert [r.status_code for r in (first, last)] == [200, 200]
        assert (first.json()["session_id"], first.json()["num_received"]) == ("7", 2)
        assert late_start.json()["error"]["error_user_msg"] == "A new replace session must start with batch_seq 1, got 2"
        assert during.json()["error"]["code"] == 100
        assert other.json()["error"]["error_user_msg"] == "Replace session 7 is still in progress on this audience"
        assert after.json()["error"]["error_user_msg"] == "Replace session 7 has already finished"
        assert meta.member_hashes(audience.id) == {sha256(e) for e in ("a@example.com", "b@example.com",
                                                                         "c@example.com")}

        # A session left without its last batch for 90 minutes expires and changes nothing.
        replace({"session_id": 11, "batch_seq": 1, "last_batch_flag": False}, "e@example.com")
        clock.now += 90 * 60 + 1
        expired = replace({"session_id": 11, "batch_seq": 2, "last_batch_flag": True}, "f@example.com")
        assert expired.json()["error"]["error_user_msg"] == "Replace session 11 expired: no batch for 5400 seconds"
        assert len(meta.members(audience.id)) == 3


def test_meta_refuses_a_bad_or_missing_token_with_code_190(meta: MetaAdsFake) -> None:
    audience_id = create_audience(meta)
    payload = {"schema": "EMAIL_SHA256", "data": [sha256("alice@example.com")]}

    wrong = requests.post(f"{meta.graph_url()}/{audience_id}/users", timeout=5,
                          json={"payload": payload, "access_token": "expired-token"})
    missing = requests.post(f"{meta.graph_url()}/{audience_id}/users", timeout=5, json={"payload": payload})

    for response in (wrong, missing):
        assert response.status_code == 400
        error = response.json()["error"]
        assert {k: error[k] for k in ("message", "type", "code")} == {
            "message": "Invalid OAuth access token - Cannot parse access token", "type": "OAuthException",
            "code": 190}
    assert meta.members(audience_id) == []
    assert all(META_TOKEN not in json.dumps(r.params) for r in meta.requests)


def test_meta_refuses_a_deprecated_version_and_unknown_objects(meta: MetaAdsFake) -> None:
    old = requests.post(f"{meta.url}/v2.0/act_1234/customaudiences", timeout=5,
                        data={"name": "x", "customer_file_source": "USER_PROVIDED_ONLY", "access_token": META_TOKEN})
    other_account = requests.post(f"{meta.graph_url()}/act_999/customaudiences", timeout=5,
                                  data={"name": "x", "customer_file_source": "USER_PROVIDED_ONLY",
                                        "access_token": META_TOKEN})

    assert old.json()["error"]["code"] == 2635
    assert old.json()["error"]["message"].startswith("(#2635) You are calling a deprecated version of the Ads API")
    error = other_account.json()["error"]
    assert (error["code"], error["error_subcode"]) == (100, 33)
    assert error["message"].startswith("Unsupported post request. Object with ID 'act_999' does not exist")
    assert meta.audiences == {}


def test_meta_business_use_case_limit_answers_80003_with_the_usage_header() -> None:
    clock = Clock()
    with MetaAdsFake(META_TOKEN, audience_call_limit=2, audience_window=3600, clock=clock) as meta:
        audience = meta.create_audience("VIP")
        url = f"{meta.graph_url()}/{audience.id}/users"
        body = {"payload": {"schema": "EMAIL_SHA256", "data": [sha256("a@example.com")]}, "access_token": META_TOKEN}
        answers = [requests.post(url, json=body, timeout=5) for _ in range(3)]

        usages = [json.loads(a.headers["X-Business-Use-Case-Usage"])["1234"][0] for a in answers]
        assert [a.status_code for a in answers] == [200, 200, 400]
        assert [u["call_count"] for u in usages] == [50, 100, 100]
        assert [u["estimated_time_to_regain_access"] for u in usages] == [0, 0, 60]
        assert {u["type"] for u in usages} == {"custom_audience"}
        error = answers[2].json()["error"]
        assert (error["code"], error["error_subcode"], error["is_transient"]) == (80003, 2446079, True)
        assert error["message"].startswith("(#80003) There have been too many calls to this ad-account.")

        clock.now += 3600
        assert requests.post(url, json=body, timeout=5).status_code == 200


def test_meta_fail_next_injects_the_documented_throttling_codes(meta: MetaAdsFake) -> None:
    audience_id = create_audience(meta)
    meta.fail_next(f"/{audience_id}/users", 613, "Calls to this api have exceeded the rate limit.", subcode=1487742)
    body = {"payload": {"schema": "EMAIL_SHA256", "data": [sha256("a@example.com")]}, "access_token": META_TOKEN}

    throttled = requests.post(f"{meta.graph_url()}/{audience_id}/users", json=body, timeout=5)
    retried = requests.post(f"{meta.graph_url()}/{audience_id}/users", json=body, timeout=5)

    error = throttled.json()["error"]
    assert (throttled.status_code, error["code"], error["error_subcode"]) == (400, 613, 1487742)
    assert retried.status_code == 200
    assert meta.member_hashes(audience_id) == {sha256("a@example.com")}


def capi_event(event_time: int, **overrides: object) -> dict:
    """A Purchase event shaped like the Conversions API docs' example."""
    event = {
        "event_name": "Purchase", "event_time": event_time, "action_source": "website", "event_id": "order-1",
        "event_source_url": "http://jaspers-market.com/product/123",
        "user_data": {"em": [sha256("joe@eg.com")], "ph": [sha256("12345678901")],
                      "client_ip_address": "123.123.123.123", "client_user_agent": "$CLIENT_USER_AGENT"},
        "custom_data": {"currency": "usd", "value": 123.45},
    }
    event.update(overrides)
    return event


def test_capi_counts_an_event_id_once_within_48_hours() -> None:
    clock = Clock()
    with MetaAdsFake(META_TOKEN, clock=clock) as meta:
        url = f"{meta.graph_url()}/1234567890/events"
        now = int(clock.now)

        first = requests.post(url, timeout=5, data={"data": json.dumps([capi_event(now)]), "access_token": META_TOKEN})
        repeat = requests.post(url, timeout=5, json={"data": [capi_event(now), capi_event(now, event_id="order-2")],
                                                     "access_token": META_TOKEN})

        assert first.status_code == 200
        assert {k: first.json()[k] for k in ("events_received", "messages")} == {"events_received": 1, "messages": []}
        assert repeat.json()["events_received"] == 2
        assert [e.event_id for e in meta.counted_events("1234567890")] == ["order-1", "order-2"]

        clock.now += 48 * 3600 + 1
        later = requests.post(url, timeout=5, json={"data": [capi_event(int(clock.now))], "access_token": META_TOKEN})
        assert later.status_code == 200
        assert [e.event_id for e in meta.counted_events()] == ["order-1", "order-2", "order-1"]


def test_capi_rejects_the_whole_request_for_one_invalid_event(meta: MetaAdsFake) -> None:
    url = f"{meta.graph_url()}/1234567890/events"
    now = int(meta.clock())
    eight_days = now - 8 * 24 * 3600
    unhashed = capi_event(now, user_data={"em": ["joe@eg.com"], "client_user_agent": "ua"})

    cases = {
        "old": [capi_event(now), capi_event(eight_days, event_id="order-2")],
        "unhashed": [capi_event(now), unhashed],
        "no_action_source": [{k: v for k, v in capi_event(now).items() if k != "action_source"}],
        "too_many": [capi_event(now, event_id=f"o{i}") for i in range(1001)],
    }
    messages = {}
    for name, data in cases.items():
        response = requests.post(url, timeout=5, json={"data": data, "access_token": META_TOKEN})
        assert response.status_code == 400
        error = response.json()["error"]
        assert (error["code"], error["error_subcode"], error["error_user_title"]) == (
            100, 2804019, "Server-side API parameter error")
        messages[name] = error["error_user_msg"]

    assert messages == {
        "old": "The parameter $['data'][1]['event_time'] is more than 7 days in the past; no event of this request "
               "was processed.",
        "unhashed": "The parameter $['data'][1]['user_data']['em'] must be hashed with SHA-256 (64 hexadecimal "
                    "characters).",
        "no_action_source": "The parameter $['data'][0]['action_source'] is required.",
        "too_many": "The parameter $['data'] has 1001 events; at most 1000 are accepted per request.",
    }
    assert meta.capi_events == []


def test_capi_test_events_are_not_counted(meta: MetaAdsFake) -> None:
    response = requests.post(f"{meta.graph_url()}/1234567890/events", timeout=5, json={
        "data": [capi_event(int(meta.clock()))], "test_event_code": "TEST123", "access_token": META_TOKEN})

    assert response.json()["events_received"] == 1
    assert meta.counted_events() == []
    assert [e.event_name for e in meta.test_events] == ["Purchase"]


# --------------------------------------------------------------------------------------- Firestore
def _port_open(host: str) -> bool:
    address, port = host.rsplit(":", 1)
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((address, int(port))) == 0


def test_firestore_emulator_answers_on_loopback_and_stops_its_whole_process_group() -> None:
    try:
        context = start_firestore_emulator(project="dinmo-fakes-test")
        emulator = context.__enter__()
    except FirestoreEmulatorUnavailable as exc:
        pytest.skip(str(exc))
    try:
        assert emulator.host.startswith("127.0.0.1:")
        assert requests.get(f"{emulator.url}/", timeout=5).text.strip() == "Ok"
    finally:
        context.__exit__(None, None, None)

    assert not _port_open(emulator.host)
    with pytest.raises(ProcessLookupError):
        os.killpg(emulator.pid, 0)


def test_firestore_env_points_the_python_client_at_the_emulator_and_reset_empties_it(
    request: pytest.FixtureRequest,
) -> None:
    firestore = pytest.importorskip("google.cloud.firestore", reason="needs google-cloud-firestore (pip)")
    emulator = request.getfixturevalue("firestore_env")
    assert os.environ[FIRESTORE_EMULATOR_ENV_VAR] == emulator.host

    client = firestore.Client(project=os.environ["GOOGLE_CLOUD_PROJECT"])
    client.collection("audiences").document("vip").set({"members": ["c1", "c2"], "size": 2})
    assert client.collection("audiences").document("vip").get().to_dict() == {"members": ["c1", "c2"], "size": 2}

    emulator.reset()
    assert list(client.collection("audiences").stream()) == []


def test_firestore_emulator_missing_gcloud_names_what_to_install(monkeypatch: pytest.MonkeyPatch,
                                                                 tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))

    with pytest.raises(FirestoreEmulatorUnavailable) as raised, start_firestore_emulator():
        pass

    assert str(raised.value).startswith("Firestore emulator unavailable: gcloud not found on PATH; install the "
                                        "Google Cloud CLI with its Firestore emulator and a Java 17+ runtime")
    assert "google-cloud-cli-firestore-emulator" in str(raised.value)

