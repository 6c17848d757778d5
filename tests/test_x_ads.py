"""The X Ads adapter through a fake X Ads API v12 built from X's documentation (tests/fakes/x_ads.py,
which checks every OAuth 1.0a HMAC-SHA1 signature with the standard library): the members each custom
audience holds, what was sent, and that neither a raw identifier nor a credential is ever sent or shown.
Then a DuckDB scenario through the real Dagster sync job, and a ``dinmo sync`` killed mid-delivery.

Expected digests are computed here with hashlib from the normalized values the adapter documents
(trimmed lower-case e-mails; E.164 phones with their ``+``; handles without ``@``, lower-cased)."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pyarrow as pa
import pytest
from ad_scenarios import ad_project, audiences_platform, calls, change_customers, sha
from attribute_scenarios import (
    CliSync,
    logged,
)
from fakes.x_ads import XAdsFake
from platform_scenarios import run_sync_job, sync_steps

from dinmo_dagster.cli import main
from dinmo_dagster.config import load_project
from dinmo_dagster.platforms import (
    ActivationSpec,
    InMemoryJournal,
    Limits,
    PlatformAuthError,
    PlatformConfigError,
    RetryPolicy,
    build_platform,
    deliver,
    preview,
    validate_connection,
)
from dinmo_dagster.platforms.x_ads import XAds

ACCOUNT = "18ce54d4x5t"
CREDENTIALS = {
    "consumer_key": "xvz1evFS4wEEPTGEFPHBog",
    "consumer_secret": "kAcSOqF21Fu85e7zjz7ZN2U4ZRhfV3WpwPAoE3Z7kBw",
    "access_token": "370773112-GmHxMAgYyLbNEtIKZeRNFsMKPR9EyMZeS9weJAEb",
    "access_token_secret": "LswwdoUaIvS8ltyTt5jkRh4J50vUPVVHtR2YPi5kE",
}
SECRETS = list(CREDENTIALS.values())
USERS = f"/12/accounts/{ACCOUNT}/custom_audiences"
FAST = RetryPolicy(max_attempts=3, max_rate_limited_attempts=20, initial_wait_seconds=0.01, max_wait_seconds=0.05)
EMAILS = ActivationSpec("vip_to_x", "customer_id", {"email": "email"})


@pytest.fixture
def x() -> Iterator[XAdsFake]:
    with XAdsFake(account_id=ACCOUNT, **CREDENTIALS) as fake:
        yield fake


def audiences(fake: XAdsFake, **settings: Any) -> XAds:
    return audiences_platform("x_ads", "x_vip", XAds, fake, {"account_id": ACCOUNT, **CREDENTIALS}, settings)


def customers(ids: Any, **overrides: list[Any]) -> pa.RecordBatch:
    ids = list(ids)
    columns: dict[str, list[Any]] = {"customer_id": ids, "email": [f" Customer{i}@Example.com" for i in ids]}
    columns.update(overrides)
    return pa.record_batch(columns)


def emails(ids: Any) -> set[str]:
    return {sha(f"customer{i}@example.com") for i in ids}


def users_bodies(fake: XAdsFake) -> list[Any]:
    return [r.json for r in fake.requests if r.path.endswith("/users")]


def nothing_secret_or_raw(fake: XAdsFake) -> bool:
    """No raw identifier and no secret in any request (the access token is the OAuth header's
    ``oauth_token``, where it belongs, and nowhere else)."""
    for r in fake.requests:
        sent = r.raw_body + r.path.encode() + repr(r.query).encode()
        if b"xample.com" in sent.lower() or b"12 34" in sent or b"@" in sent:
            return False
        headers = {k: v for k, v in r.headers.items() if k != "authorization"}
        if any(s in repr(headers) or s.encode() in sent for s in SECRETS):
            return False
        auth = r.headers.get("authorization", "")
        if any(s in auth for s in (CREDENTIALS["consumer_secret"], CREDENTIALS["access_token_secret"])):
            return False
    return True


def test_a_first_sync_creates_the_audience_by_name_and_sends_signed_hashed_users(x):
    journal = InMemoryJournal()
    result = deliver(audiences(x), EMAILS, {"add": [customers(range(1, 4))]}, journal)

    audience = x.audience_named("VIP Europe")
    assert audience is not None
    assert audience.members["email"] == emails(range(1, 4))
    assert calls(x) == [("GET", USERS), ("POST", USERS), ("POST", f"{USERS}/{audience.id}/users")]
    assert x.requests[0].query == {"q": "VIP Europe", "count": "1000"}
    assert x.requests[1].query == {"name": "VIP Europe"}
    assert users_bodies(x) == [[{"operation_type": "Update", "params": {"users": [
        {"email": [sha(f"customer{i}@example.com")]} for i in range(1, 4)]}}]]
    assert [status for _, _, status in x.answers] == [200, 201, 200]  # every signature checked and good
    assert all(r.headers["authorization"].startswith("OAuth ") for r in x.requests)
    assert sorted(journal.acknowledged_keys["add"]) == ["1", "2", "3"]
    assert (result.accepted, result.rejected) == (3, 0)
    assert nothing_secret_or_raw(x)


def test_an_audience_is_found_by_its_exact_name_across_pages_or_used_by_id(x):
    x.create_audience("VIP Europe (old)")
    x.create_audience("vip europe 2")
    existing = x.create_audience("VIP Europe")
    x.page_size = 1
    deliver(audiences(x), EMAILS, {"add": [customers([1])]}, InMemoryJournal())
    deliver(audiences(x, audience={"id": existing.id}), EMAILS, {"add": [customers([2])]}, InMemoryJournal())

    assert len(x.audiences) == 3
    assert existing.members["email"] == emails([1, 2])
    assert [p for _, p in calls(x)] == [USERS] * 3 + [f"{USERS}/{existing.id}/users"] * 2
    assert [r.query.get("cursor") for r in x.requests[:3]] == [None, "1", "2"]


def test_a_delta_deletes_those_that_left_and_moves_a_changed_email(x):
    deliver(audiences(x), EMAILS, {"add": [customers(range(1, 6))]}, InMemoryJournal())
    journal = InMemoryJournal()
    result = deliver(audiences(x), EMAILS, {
        "remove": [customers([3, 4, 5])], "add": [customers([3], email=["New.Three@example.com"])]}, journal)

    audience = x.audience_named("VIP Europe")
    assert audience.members["email"] == emails([1, 2]) | {sha("new.three@example.com")}
    assert [b[0]["operation_type"] for b in users_bodies(x)] == ["Update", "Delete", "Update"]
    assert sorted(journal.acknowledged_keys["remove"]) == ["3", "4", "5"]
    assert result.accepted == 4


def test_a_remove_on_an_audience_that_does_not_exist_yet_sends_nothing(x):
    result = deliver(audiences(x), EMAILS, {"remove": [customers([1])]}, InMemoryJournal())
    assert result.accepted == 1 and x.audiences == {} and calls(x) == [("GET", USERS)]


def test_every_identifier_is_normalized_as_x_documents_and_no_raw_value_is_sent(x):
    spec = ActivationSpec("x", "customer_id", {"email": "email", "phone": "phone", "handle": "handle",
                                               "x_id": "x_id", "idfa": "idfa"}, default_country="FR")
    batch = customers([1, 2], phone=["06 12 34 56 78", None], handle=[" @AdsAPI ", None], x_id=["143567", None],
                      idfa=["6D92078A-8246-4BA4-AE5B-76104861E7DC", "AF3802A465767E36"])
    bad = customers([3, 4], email=["not an e-mail", None], phone=[None, None], handle=[None, "no spaces allowed"],
                    x_id=[None, None], idfa=[None, None])
    journal = InMemoryJournal()
    result = deliver(audiences(x), spec, {"add": [batch, bad]}, journal)

    audience = x.audience_named("VIP Europe")
    assert audience.members == {
        "email": emails([1, 2]), "phone_number": {sha("+33612345678")}, "handle": {sha("adsapi")},
        "twitter_id": {sha("143567")}, "partner_user_id": set(),
        "device_id": {sha("6d92078a-8246-4ba4-ae5b-76104861e7dc"), sha("af3802a465767e36")},
    }
    assert sha("adsapi") == "49e0be2aeccfb51a8dee4c945c8a70a9ac500cf6f5cb08112575f74db9b1470d"  # X's own example
    assert users_bodies(x)[0][0]["params"]["users"][0] == {
        "email": [sha("customer1@example.com")], "phone_number": [sha("+33612345678")], "handle": [sha("adsapi")],
        "twitter_id": [sha("143567")], "device_id": [sha("6d92078a-8246-4ba4-ae5b-76104861e7dc")]}
    assert (result.accepted, result.rejected) == (2, 2)
    assert sorted(k for k, _, _ in journal.rejections) == ["3", "4"]
    assert nothing_secret_or_raw(x)
    assert all(b"6D92078A" not in r.raw_body and b"143567" not in r.raw_body for r in x.requests)


def test_batches_hold_at_most_2500_users_and_the_fake_refuses_more_with_xs_error(x):
    audience = x.create_audience("VIP Europe")
    result = deliver(audiences(x, audience={"id": audience.id}), EMAILS, {"add": [customers(range(6000))]},
                     InMemoryJournal())
    assert sorted(len(b[0]["params"]["users"]) for b in users_bodies(x)) == [1000, 2500, 2500]
    assert result.accepted == 6000 and len(audience.members["email"]) == 6000

    too_big = audiences(x, audience={"id": audience.id})
    too_big.limits = Limits(max_records_per_batch=2501, requests_per_window=1500, window_seconds=60.0)
    journal = InMemoryJournal()
    result = deliver(too_big, EMAILS, {"add": [customers(range(10_000, 12_501))]}, journal)
    assert (result.accepted, result.rejected) == (0, 2501)
    assert result.top_reasons() == [("X INVALID_PARAMETER", 2501)]
    assert journal.rejections[0][2] == "X: Maximum batch size is 2500"


def test_a_user_x_refuses_is_rejected_alone_with_xs_message_and_sent_again_next_sync(x):
    audience = x.create_audience("VIP Europe")
    x.refuse(sha("customer3@example.com"), "The user could not be processed")
    journal = InMemoryJournal()
    result = deliver(audiences(x, audience={"id": audience.id}), EMAILS, {"add": [customers(range(1, 6))]}, journal)

    # Batches fail together and operation_errors names no user: the batch is split down to the refused one.
    assert (result.accepted, result.rejected) == (4, 1)
    assert journal.rejections == [("3", "add", "X: The user could not be processed")]
    assert result.top_reasons() == [("X INVALID_USER", 1)]
    assert audience.members["email"] == emails([1, 2, 4, 5])
    x.accept(sha("customer3@example.com"))
    result = deliver(audiences(x, audience={"id": audience.id}), EMAILS, {"add": [customers([3])]}, InMemoryJournal())
    assert result.accepted == 1 and audience.members["email"] == emails(range(1, 6))


def test_a_storm_of_429_is_ridden_out_and_the_rate_limit_window_is_followed(x):
    audience = x.create_audience("VIP Europe")
    x.throttle(6)
    result = deliver(audiences(x, audience={"id": audience.id}), EMAILS, {"add": [customers(range(1, 4))]},
                     InMemoryJournal(), retry=FAST)

    assert audience.members["email"] == emails(range(1, 4))
    assert [status for _, _, status in x.answers] == [429] * 6 + [200]
    assert x.requests[0].headers["authorization"] != x.requests[1].headers["authorization"]  # signed anew
    assert (result.retries, result.accepted) == (6, 3)


def test_remaining_zero_holds_the_next_request_until_the_reset(x):
    audience = x.create_audience("VIP Europe")
    x.limit, x.window = 1, 1.0
    started = time.monotonic()
    result = deliver(audiences(x, audience={"id": audience.id}, max_concurrency=1), EMAILS,
                     {"add": [customers(range(1, 4))], "remove": [customers([9])]}, InMemoryJournal())
    assert result.accepted == 4
    assert [status for _, _, status in x.answers] == [200, 200]  # the second waited for the new window
    assert x.requests[1].arrived - x.requests[0].arrived >= 0.0 and time.monotonic() - started < 10


def test_a_bad_signature_stops_the_sync_with_xs_401_and_no_secret_shows(x, caplog):
    caplog.set_level(logging.DEBUG)
    with pytest.raises(PlatformAuthError) as refused:
        deliver(audiences(x, consumer_secret="not-the-secret"), EMAILS, {"add": [customers([1, 2])]},
                InMemoryJournal())

    assert str(refused.value) == (
        "destination 'x_vip' (x_ads): the platform refused the credentials (HTTP 401): "
        "This request is not properly authenticated (UNAUTHORIZED_ACCESS)")
    assert len(x.requests) == 1
    for secret in [*SECRETS, "not-the-secret"]:
        assert secret not in caplog.text and secret not in repr(refused.value)


def test_preview_shows_the_users_request_with_digests_masked_and_sends_nothing(x):
    (add,) = preview(audiences(x), EMAILS, {"add": [customers([1])]})

    assert x.requests == []
    assert (add.method, add.url) == ("POST", f"{x.url}{USERS}/<id of custom audience 'VIP Europe'>/users")
    (user,) = add.body[0]["params"]["users"]
    assert user == {"email": [sha("customer1@example.com")[:8] + "…"]}
    assert not any(s in repr(add) for s in SECRETS)


def test_validate_connect_checks_the_credentials_the_account_and_an_audience_given_by_id(x):
    audience = x.create_audience("Existing")
    assert validate_connection(audiences(x), EMAILS) == []
    assert validate_connection(audiences(x, audience={"id": audience.id}), EMAILS) == []
    assert validate_connection(audiences(x, audience={"id": "zzz1"}), EMAILS) == [
        ("destination 'x_vip' (x_ads): reading custom audience zzz1 failed with HTTP 404: "
        "Custom audience zzz1 was not found (NOT_FOUND)")]
    assert validate_connection(audiences(x, access_token_secret="wrong"), EMAILS) == [
        ("destination 'x_vip' (x_ads): the platform refused the credentials (HTTP 401): "
        "This request is not properly authenticated (UNAUTHORIZED_ACCESS)")]
    assert validate_connection(audiences(x, account_id="18ce5other"), EMAILS) == [
        ("destination 'x_vip' (x_ads): the platform refused the credentials (HTTP 403): "
        "Account 18ce5other was not found (ACCOUNT_NOT_FOUND)")]
    assert list(x.audiences) == [audience.id]


def test_settings_and_activation_problems_name_the_key_and_what_is_allowed(x):
    with pytest.raises(PlatformConfigError) as wrong:
        build_platform("x_ads", {"service": "audiences", "account_id": "18ce-54", "consumer_key": " ",
                                 "api_version": "9", "audience": {"id": "1nm th"}}, destination="x_vip")
    text = str(wrong.value)
    assert "destinations.x_vip.account_id: found '18ce-54'; allowed: the ad account's id (letters and digits" in text
    assert "destinations.x_vip.consumer_key: is empty; allowed: the consumer key from X's developer portal" in text
    assert "destinations.x_vip.consumer_secret: Field required" in text
    assert "destinations.x_vip.api_version: Input should be '12'" in text
    assert "destinations.x_vip.audience.id: found '1nm th'; allowed: the custom audience's id" in text
    assert CREDENTIALS["consumer_key"] not in text
    assert audiences(x).validate_activation({"email": "email", "idfa": "a", "gaid": "b", "madid": "c"},
                                            {"first": "first_name"}) == [
        "identifiers.gaid: idfa already sends device_id; keep one of them",
        "identifiers.madid: found 'madid'; allowed: email, phone, handle, twitter_id, device_id",
        "mapping: found first; allowed: nothing (X custom audiences take identifiers only)",
    ]


# --------------------------------------------------------------------------------------------------
# Through the Dagster job, and a dinmo sync killed mid-delivery
# --------------------------------------------------------------------------------------------------


def x_project(request, tmp_path: Path, monkeypatch) -> contextlib.AbstractContextManager[SimpleNamespace]:
    return ad_project(
        request, tmp_path, monkeypatch, lambda: XAdsFake(account_id=ACCOUNT, **CREDENTIALS),
        attr="x", type_="x_ads", destination="x_vip", activation="to_x", fields={"account_id": ACCOUNT},
        secrets={key: (f"X_{key.upper()}", value) for key, value in CREDENTIALS.items()},
    )  # fmt: skip


def test_an_x_audience_follows_the_segment_through_the_dagster_job(request, tmp_path: Path, monkeypatch,
                                                                   capsys) -> None:
    with x_project(request, tmp_path, monkeypatch) as env:
        assert main(["--project", str(tmp_path), "validate", "--connect"]) == 0
        assert main(["--project", str(tmp_path), "preview", "to_x"]) == 0
        out = capsys.readouterr().out
        assert "bob@example.com" not in out and not any(s in out for s in SECRETS)
        assert all(r.method == "GET" for r in env.x.requests)

        # First sync: the audience is created with Bob, Cle and Dan; a 429 storm on the way.
        env.x.throttle(3)
        assert run_sync_job(env.defs, env.instance, "to_x").success
        audience = env.x.audience_named("VIP Europe")
        assert audience.members["email"] == {sha(f"{n}@example.com") for n in ("bob", "cle", "dan")}

        # Delta: Dan leaves, Bob's e-mail changes, Ann enters; Ann refused once, sent again next sync.
        change_customers(env.wh)
        env.x.refuse(sha("ann@example.com"), "The user could not be processed")
        run_sync_job(env.defs, env.instance, "to_x")
        assert audience.members["email"] == {sha(f"{n}@example.com") for n in ("robert", "cle")}
        env.x.accept(sha("ann@example.com"))
        run_sync_job(env.defs, env.instance, "to_x")
        assert audience.members["email"] == {sha(f"{n}@example.com") for n in ("robert", "cle", "ann")}

        # Full refresh (no replace on X: remove + add): a member lost on X's side comes back; one added
        # there by hand stays (the SDK never empties an X audience).
        audience.members["email"] = {sha("cle@example.com"), sha("manual@example.com")}
        sync_steps(env, "to_x", full_refresh=True)
        assert audience.members["email"] == {sha(f"{n}@example.com") for n in ("robert", "cle", "ann", "manual")}

        assert nothing_secret_or_raw(env.x)
        for entry in logged(env.instance):
            assert not any(s in entry for s in SECRETS)


def test_a_sync_killed_mid_delivery_is_completed_by_the_next_one(tmp_path: Path) -> None:
    cli = CliSync(tmp_path, "to_x", {f"X_{key.upper()}": value for key, value in CREDENTIALS.items()})
    cli.seed(8000, "'C'")
    with XAdsFake(account_id=ACCOUNT, latency=0.4, **CREDENTIALS) as fake:
        secrets = "".join(f"  {key}: {{env: X_{key.upper()}}}\n" for key in CREDENTIALS)
        cli.write(
            destinations=[(f"x_vip:\n  type: x_ads\n  service: audiences\n  account_id: {ACCOUNT}\n"
                          f"  max_concurrency: 1\n{secrets}  base_url: {fake.url}\n")],
            activations="to_x:\n  segment: big\n  destination: x_vip\n  audience: {name: VIP Europe}\n"
                        "  identifiers: {email: email}\n")
        # 8,000 members go in 4 requests of at most 2,500, one at a time: killed after the first answer.
        # settle: a request in flight at the kill is answered
        cli.kill_when(lambda: fake.users_received > 0, settle=1.0)
        audience = fake.audience_named("VIP Europe")
        assert audience is not None and 0 < len(audience.members["email"]) < 8000

        cli.recover()
        assert audience.members["email"] == {sha(f"c{i}@example.com") for i in range(1, 8001)}
        assert len(fake.audiences) == 1  # found again by name, not created twice
        assert nothing_secret_or_raw(fake)
    assert cli.leftovers() == []
    assert not cli.in_home(*SECRETS)


def test_the_readme_x_example_loads(tmp_path: Path) -> None:
    """The YAML example of the README's X Ads paragraph, with a source, model and segment."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    if "**X Ads (`type: x_ads`).**" not in readme:
        pytest.skip("the README has no X Ads paragraph yet")
    example = readme.split("**X Ads (`type: x_ads`).**", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "dinmo.yaml").write_text("""
sources:
  warehouse: {type: duckdb, path: data/warehouse.duckdb}
models:
  customers: {source: warehouse, table: raw.customers, primary_key: customer_id}
segments:
  vip_europe: {model: customers, sql: "select * from {{ model }}"}
""" + example)
    project = load_project(tmp_path)
    activation = project.activations["vip_to_x"]
    assert (activation.platform_service, activation.platform_mode) == ("audiences", "mirror")
