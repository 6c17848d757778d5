"""Adapters that send a batch as one request per record hand each verdict to the engine as the platform
answers it (``Platform.acknowledge_early``), so a sync killed mid-batch does not send again what was already
answered. Each test runs one adapter against its local fake (tests/fakes/) and checks that every accepted
record is journalled as soon as it is answered (one journal entry per record, in the order the platform
answered them, where a batch journalled only at its end is one entry of all its keys), once, and counted
once in the delivery's result; rejected records are journalled as rejections only."""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa
from ad_scenarios import audiences_platform, sha
from attribute_scenarios import built
from fakes.actito import ActitoFake
from fakes.braze import BrazeFake
from fakes.criteo import CriteoFake
from fakes.emarsys import EmarsysFake
from fakes.intercom import IntercomFake
from fakes.iterable import IterableFake
from fakes.june import JuneFake
from fakes.klaviyo import KlaviyoFake
from fakes.snapchat_ads import SnapchatAdsFake
from fakes.tiktok_ads import TikTokAdsFake

from dinmo_dagster.platforms import ActivationSpec, InMemoryJournal, deliver
from dinmo_dagster.platforms.actito import Actito
from dinmo_dagster.platforms.braze import Braze
from dinmo_dagster.platforms.criteo import Criteo
from dinmo_dagster.platforms.emarsys import Emarsys
from dinmo_dagster.platforms.intercom import Intercom
from dinmo_dagster.platforms.iterable import Iterable
from dinmo_dagster.platforms.june import June
from dinmo_dagster.platforms.klaviyo import Klaviyo
from dinmo_dagster.platforms.snapchat_ads import SnapchatAds
from dinmo_dagster.platforms.tiktok_ads import TikTokAds

MEMBERS = ActivationSpec("crm", "customer_id", match={"email": "email"})
NAMED = ActivationSpec("crm", "customer_id", match={"email": "email"}, mapping={"first_name": "name"})


class EntryJournal(InMemoryJournal):
    """The in-memory journal, keeping each ``acknowledged`` entry as it was made: a batch journalled when
    it ends is one entry of all its keys, one handed over while it runs is one entry per record."""

    def __init__(self) -> None:
        super().__init__()
        self.entries: list[tuple[str, list[str]]] = []

    def acknowledged(self, operation: str, keys: Sequence[str]) -> None:
        self.entries.append((operation, list(keys)))
        super().acknowledged(operation, keys)


def customers(ids: list[int]) -> pa.RecordBatch:
    return pa.record_batch(
        {
            "customer_id": ids,
            "email": [f"Customer{i}@Example.com " for i in ids],
            "first_name": [f"Name{i}" for i in ids],
        }
    )


def one_entry_per_key(journal: EntryJournal, operation: str, keys: list[str]) -> bool:
    assert journal.entries == [(operation, [k]) for k in keys]
    assert journal.acknowledged_keys == {operation: keys}
    return True


def test_intercom_contacts_companies_and_tags_are_journalled_as_intercom_answers_each():
    token = "dG9rOmVhcmx5X2Fja19pbnRlcmNvbV90ZXN0OjE6MA=="
    with IntercomFake(token) as fake:
        fake.add_contact("customer2@example.com")
        raw = {"service": "attributes", "access_token": token, "base_url": fake.url}
        journal = EntryJournal()
        result = deliver(built("intercom", Intercom, raw), NAMED, {"upsert": [customers([1, 2, 3])]}, journal)
        assert one_entry_per_key(journal, "upsert", ["1", "2", "3"])
        assert (result.accepted, result.batches) == (3, 1)
        assert {c.email: c.fields.get("name") for c in fake.live()} == {
            "customer1@example.com": "Name1",
            "customer2@example.com": "Name2",
            "customer3@example.com": "Name3",
        }

        tags = {**raw, "service": "audiences", "audience": {"name": "VIP Europe"}}
        journal = EntryJournal()
        result = deliver(built("intercom", Intercom, tags), MEMBERS, {"add": [customers([1, 4, 2])]}, journal)
        assert one_entry_per_key(journal, "add", ["1", "2"])  # 4: no Intercom contact, rejected
        assert [key for key, _, _ in journal.rejections] == ["4"]
        assert (result.accepted, result.rejected) == (2, 1)
        tag = fake.tag_named("VIP Europe")
        assert tag is not None and fake.tagged(tag) == {"customer1@example.com", "customer2@example.com"}

        companies = {**raw, "object": "companies"}
        spec = ActivationSpec("crm", "customer_id", match={"company_id": "customer_id"})
        journal = EntryJournal()
        result = deliver(
            built("intercom", Intercom, companies), spec, {"upsert": [customers([7, 8])]}, journal
        )
        assert one_entry_per_key(journal, "upsert", ["7", "8"]) and result.accepted == 2


def test_iterable_deletions_are_journalled_as_iterable_answers_each():
    key = "c0ffee4b8a9c610e7d2f8a1b45c3f9c2"
    with IterableFake(key) as fake:
        for i in (1, 3):
            fake.add_user(f"customer{i}@example.com", firstName=f"N{i}")
        raw = {"service": "attributes", "api_key": key, "base_url": fake.url}
        journal = EntryJournal()
        spec = ActivationSpec(
            "crm", "customer_id", match={"email": "email"}, mapping={"first_name": "firstName"}
        )
        result = deliver(built("iterable", Iterable, raw), spec, {"delete": [customers([1, 2, 3])]}, journal)
        assert one_entry_per_key(journal, "delete", ["1", "2", "3"])  # 2: not in Iterable, done
        assert (result.accepted, result.batches) == (3, 1) and fake.profiles() == {}


def test_emarsys_deletions_are_journalled_as_emarsys_answers_each():
    client, secret = "dinmo_oidc_4711", "oidc-secret-0a1b2c3d4e5f60718293a4b5c6d7e8f9"
    with EmarsysFake(client, secret) as fake:
        for i in (1, 2):
            fake.add_contact(f"customer{i}@example.com")
        raw = {"service": "attributes", "client_id": client, "client_secret": secret, "base_url": fake.url,
               "token_url": fake.token_url}  # fmt: skip
        spec = ActivationSpec(
            "crm", "customer_id", match={"email": "email"}, mapping={"first_name": "first_name"}
        )
        journal = EntryJournal()
        result = deliver(built("emarsys", Emarsys, raw), spec, {"delete": [customers([2, 9, 1])]}, journal)
        assert one_entry_per_key(journal, "delete", ["2", "9", "1"])  # 9: already gone, done
        assert (result.accepted, result.batches) == (3, 1) and fake.by_email() == {}


def test_actito_segmentation_adds_and_deletions_are_journalled_as_actito_answers_each():
    key = "qhdfbvdh747R49FRHrthqhdfbvdh74-actito-early"
    with ActitoFake(key) as fake:
        for i in (1, 2, 3):
            fake.add_profile(emailAddress=f"customer{i}@example.com")
        raw = {"service": "audiences", "api_key": key, "entity": "shop", "table": "Customers", "base_url": fake.url,
               "audience": {"name": "VIP Europe"}}  # fmt: skip
        journal = EntryJournal()
        result = deliver(built("actito", Actito, raw), MEMBERS, {"add": [customers([3, 4, 1])]}, journal)
        assert one_entry_per_key(journal, "add", ["3", "1"])  # 4: no Actito profile, rejected
        assert [key for key, _, _ in journal.rejections] == ["4"]
        assert (result.accepted, result.rejected) == (2, 1)
        assert fake.members["VIP Europe"] == {"customer1@example.com", "customer3@example.com"}

        profiles = {**raw, "service": "attributes", "poll_interval_seconds": 0.01}
        del profiles["audience"]
        spec = ActivationSpec(
            "crm", "customer_id", match={"email": "email"}, mapping={"first_name": "firstName"}
        )
        journal = EntryJournal()
        result = deliver(built("actito", Actito, profiles), spec, {"delete": [customers([2, 9])]}, journal)
        assert one_entry_per_key(journal, "delete", ["2", "9"]) and result.accepted == 2
        assert list(fake.by_email()) == ["customer1@example.com", "customer3@example.com"]


def test_june_identify_calls_are_journalled_as_june_answers_each():
    key = "june-wk-0e1d2c3b4a59687f"
    with JuneFake(key) as fake:
        fake.refuse("traits.email is not a valid e-mail", "2")
        raw = {
            "service": "audiences",
            "write_key": key,
            "base_url": fake.url,
            "audience": {"name": "VIP Europe"},
        }
        spec = ActivationSpec("jn", "customer_id", match={"user_id": "customer_id", "email": "email"})
        journal = EntryJournal()
        result = deliver(built("june", June, raw, "jn"), spec, {"add": [customers([1, 2, 3])]}, journal)
        assert one_entry_per_key(journal, "add", ["1", "3"])  # 2: refused by June, rejected
        assert journal.rejections == [("2", "add", "traits.email is not a valid e-mail")]
        assert (result.accepted, result.rejected) == (2, 1) and fake.members("VIP Europe") == {"1", "3"}


def test_klaviyo_subscription_jobs_are_journalled_as_klaviyo_accepts_each():
    key = "pk_0e1d2c3b4a5968778695a4b3c2d1e0f9a"
    with KlaviyoFake(key) as fake:
        raw = {"service": "subscriptions", "api_key": key, "base_url": fake.url}
        spec = ActivationSpec("crm", "customer_id", match={"email": "email"}, mapping={"opted_in": "consent"})
        batch = customers([1, 2, 3, 4, 5]).append_column(
            "opted_in", pa.array([False, True, False, True, True])
        )
        journal = EntryJournal()
        result = deliver(built("klaviyo", Klaviyo, raw), spec, {"upsert": [batch]}, journal)
        # One batch, two jobs: the subscribe job's profiles, then the unsubscribe job's.
        assert journal.entries == [("upsert", ["2", "4", "5"]), ("upsert", ["1", "3"])]
        assert journal.acknowledged_keys == {"upsert": ["2", "4", "5", "1", "3"]}
        assert (result.accepted, result.batches) == (5, 1)
        assert [r.path for r in fake.requests] == [
            "/api/profile-subscription-bulk-create-jobs",
            "/api/profile-subscription-bulk-delete-jobs",
        ]


def test_braze_deletions_of_two_requests_are_journalled_as_braze_answers_each():
    key = "braze-rest-0e1d2c3b-4a59-6877-8695-a4b3c2d1e0f9"
    with BrazeFake(key) as fake:
        raw = {"service": "attributes", "api_key": key, "base_url": fake.url, "mirror": "delete_users"}
        spec = ActivationSpec("crm", "customer_id", match={"external_id": "customer_id"})
        ids = pa.record_batch({"customer_id": list(range(1, 61))})
        deliver(built("braze", Braze, raw), spec, {"upsert": [ids]}, InMemoryJournal())
        journal = EntryJournal()
        result = deliver(built("braze", Braze, raw), spec, {"delete": [ids]}, journal)
        # One batch of 60 (75 a batch), two requests (50 ids a request): each journalled as it is answered.
        keys = [str(i) for i in range(1, 61)]
        assert journal.entries == [("delete", keys[:50]), ("delete", keys[50:])]
        assert journal.acknowledged_keys == {"delete": keys}
        assert (result.accepted, result.batches) == (60, 1)
        assert fake.users == [] and sorted(int(u.external_id) for u in fake.deleted) == list(range(1, 61))


# One request per identifier kind (Snapchat schemas, Criteo identifier types, TikTok files): a record is
# journalled once the requests of all its kinds were answered without rejecting it.
EMAIL_PHONE = ActivationSpec("ads", "customer_id", {"email": "email", "phone": "phone"}, default_country="FR")


def contacts(emails: list[str | None], phones: list[str | None]) -> pa.RecordBatch:
    return pa.record_batch({"customer_id": list(range(1, len(emails) + 1)), "email": emails, "phone": phones})


def test_snapchat_members_are_journalled_once_the_request_of_their_last_schema_is_answered():
    account = "8adc3db7-8148-4fbf-999c-8d2266369d74"
    fields = {"client_id": "snap-client-4f1c", "client_secret": "snap-secret-9d8c7b6a5f4e3d2c1b0a",
              "refresh_token": "snap-refresh-0a1b2c3d4e5f6a7b8c9d", "ad_account_id": account}  # fmt: skip
    with SnapchatAdsFake(**fields) as fake:
        platform = audiences_platform("snapchat_ads", "snap_vip", SnapchatAds, fake, fields, {})
        batch = contacts(["a@example.com", None, "c@example.com", "d@example.com"],
                         ["06 12 34 56 01", "06 12 34 56 02", None, "06 12 34 56 04"])  # fmt: skip
        journal = EntryJournal()
        result = deliver(platform, EMAIL_PHONE, {"add": [batch]}, journal)
        # The e-mail request completes 3 (no phone), the phone request 1, 2 and 4.
        assert journal.entries == [("add", ["3"]), ("add", ["1", "2", "4"])]
        assert journal.acknowledged_keys == {"add": ["3", "1", "2", "4"]}
        assert (result.accepted, result.batches) == (4, 1)
        segment = fake.segment_named("VIP Europe")
        assert segment is not None
        assert [r.json["users"][0]["schema"] for r in fake.requests if r.path.endswith("/users")] == [
            ["EMAIL_SHA256"], ["PHONE_SHA256"]]  # fmt: skip
        assert segment.members["EMAIL_SHA256"] == {sha(f"{c}@example.com") for c in "acd"}


def test_criteo_members_are_journalled_once_the_request_of_their_last_identifier_type_is_answered():
    fields = {"client_id": "criteo-client-7e2a", "client_secret": "criteo-secret-1a2b3c4d5e6f7a8b9c0d",
              "advertiser_id": "48213"}  # fmt: skip
    with CriteoFake(**fields) as fake:
        fake.invalid.add(sha("c@example.com"))  # well-formed, but Criteo answers it invalid
        platform = audiences_platform("criteo", "criteo_vip", Criteo, fake, fields, {})
        spec = ActivationSpec("ads", "customer_id", {"email": "email", "madid": "device"})
        device = ["6d92078a-8246-4ba4-ae5b-76104861e7d1", None, "6d92078a-8246-4ba4-ae5b-76104861e7d3",
                  "6d92078a-8246-4ba4-ae5b-76104861e7d4"]  # fmt: skip
        batch = pa.record_batch({"customer_id": [1, 2, 3, 4], "device": device,
                                 "email": ["a@example.com", "b@example.com", "c@example.com", None]})  # fmt: skip
        journal = EntryJournal()
        result = deliver(platform, spec, {"add": [batch]}, journal)
        # The e-mail request completes 2 (no madid) and rejects 3; the madid request completes 1 and 4.
        assert journal.entries == [("add", ["2"]), ("add", ["1", "4"])]
        assert journal.acknowledged_keys == {"add": ["2", "1", "4"]}
        assert journal.rejections == [("3", "add", "Criteo found the email identifier invalid")]
        assert (result.accepted, result.rejected, result.batches) == (3, 1, 1)
        patches = [r.json["data"]["attributes"] for r in fake.requests if r.method == "PATCH"]
        assert [p["identifierType"] for p in patches] == ["email", "madid"]


def test_tiktok_members_are_journalled_once_the_file_of_their_last_identifier_type_is_applied():
    token, advertiser = "tiktok-long-term-token-5f4e3d2c1b0a9f8e", "7012345678901234567"
    with TikTokAdsFake(access_token=token, advertiser_id=advertiser) as fake:
        audience = fake.create_audience("VIP Europe")
        fields = {"advertiser_id": advertiser, "access_token": token}
        platform = audiences_platform(
            "tiktok_ads", "tiktok_vip", TikTokAds, fake, fields, {"audience": {"id": audience.id}}
        )
        batch = contacts(["a@example.com", "b@example.com", None], ["06 12 34 56 01", None, "06 12 34 56 03"])
        journal = EntryJournal()
        result = deliver(platform, EMAIL_PHONE, {"add": [batch]}, journal)
        # The e-mail file completes 2 (no phone), the phone file 1 and 3.
        assert journal.entries == [("add", ["2"]), ("add", ["1", "3"])]
        assert journal.acknowledged_keys == {"add": ["2", "1", "3"]}
        assert (result.accepted, result.batches) == (3, 1)
        assert audience.members["EMAIL_SHA256"] == {sha("a@example.com"), sha("b@example.com")}
        assert audience.members["PHONE_SHA256"] == {sha("+33612345601"), sha("+33612345603")}
