"""`dinmo validate` checks an activation's sync_mode against its platform destination as configured.

Some adapters narrow what their service offers from their settings (an Intercom ``object: companies``
upserts and deletes only, an Emarsys ``relational_table`` too) or refuse an operation for some matches
(Zendesk deletes users by external id only; HubSpot upserts by a unique property, never by
``hs_object_id``). Those rules used to be met only when a sync sent its first batch; `dinmo validate`
(no network, no secret read: the variables are unset here) now refuses such a project with one line per
problem, and writes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from dinmo_dagster import cli
from dinmo_dagster.platforms import PlatformConfigError, Record, build_platform

BASE = """\
sources:
  warehouse: {type: duckdb, path: data/warehouse.duckdb}
models:
  customers: {source: warehouse, table: raw.customers, primary_key: customer_id}
segments:
  vip: {model: customers, sql: "select * from {{ model }}"}
"""
SECRETS = ("IC_TOKEN", "ZD_TOKEN", "HS_TOKEN", "EM_SECRET")

Validate = Callable[..., tuple[int, list[str]]]


def act(name: str, destination: str, match: str, mapping: str, mode: str | None = None) -> str:
    """One activation of segment ``vip``, as a line of the ``activations:`` section."""
    written = f", sync_mode: {mode}" if mode else ""
    keys = f"segment: vip, destination: {destination}, match: {match}, mapping: {mapping}{written}"
    return f"  {name}: {{{keys}}}\n"


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def validate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Validate:
    """``validate(destinations, *activations)``: `dinmo --project <tmp>/project validate` on BASE plus these
    sections, its exit code and printed lines; asserts that it left every file as it was (and created
    none)."""

    def run(destinations: str, *activations: str) -> tuple[int, list[str]]:
        project = tmp_path / "project"
        project.mkdir()
        (project / "dinmo.yaml").write_text(
            f"{BASE}destinations:\n{destinations}activations:\n{''.join(activations)}"
        )
        for name in SECRETS:
            monkeypatch.delenv(name, raising=False)
        monkeypatch.chdir(tmp_path)
        before = _files(tmp_path)
        code = cli.main(["--project", str(project), "validate"])
        assert _files(tmp_path) == before
        return code, capsys.readouterr().out.splitlines()

    return run


def problems(tmp_path: Path, *lines: str) -> list[str]:
    return [
        f"{len(lines)} problem(s) in {tmp_path / 'project'}:",
        *(f"  dinmo.yaml: {line}" for line in lines),
    ]


def valid(tmp_path: Path, destinations: int, activations: int) -> list[str]:
    counts = (
        f"1 source(s), 1 model(s), 1 segment(s), {destinations} destination(s), {activations} activation(s)"
    )
    return [f"{tmp_path / 'project'}: {counts}: valid"]


INTERCOM = """\
  companies: {type: intercom, service: attributes, object: companies, access_token: {env: IC_TOKEN}}
  contacts: {type: intercom, service: attributes, access_token: {env: IC_TOKEN}}
"""


def test_intercom_companies_refuse_update(tmp_path: Path, validate: Validate) -> None:
    assert validate(
        INTERCOM,
        act("to_companies", "companies", "{company_id: id}", "{n: name}", "update"),
        act("to_contacts", "contacts", "{email: email}", "{n: name}", "update"),
    ) == (
        1,
        problems(
            tmp_path,
            "activations.to_companies.sync_mode: found 'update'; allowed for intercom attributes "
            "(Intercom companies): upsert, mirror",
        ),
    )


def test_intercom_companies_accept_upsert_and_mirror(tmp_path: Path, validate: Validate) -> None:
    assert validate(
        INTERCOM,
        act("upsert_companies", "companies", "{company_id: id}", "{n: name}", "upsert"),
        act("mirror_companies", "companies", "{company_id: id}", "{n: name}", "mirror"),
        act("insert_contacts", "contacts", "{email: email}", "{n: name}", "insert"),
    ) == (0, valid(tmp_path, 2, 3))


ZENDESK = "  zd: {type: zendesk, subdomain: acme, email: agent@acme.io, api_token: {env: ZD_TOKEN}}\n"


def test_zendesk_mirror_of_users_matched_by_email_only_is_refused(tmp_path: Path, validate: Validate) -> None:
    assert validate(ZENDESK, act("to_zd", "zd", "{email: email}", "{n: name}", "mirror")) == (
        1,
        problems(
            tmp_path,
            "activations.to_zd.sync_mode: found 'mirror'; mirror deletes the Zendesk users that left the "
            "segment by external id (Zendesk's bulk delete takes ids or external ids, not e-mails) and match "
            "has email; allowed: upsert, or mirror with external_id in match",
        ),
    )


def test_zendesk_mirror_by_external_id_and_upsert_by_email_are_accepted(
    tmp_path: Path, validate: Validate
) -> None:
    assert validate(
        ZENDESK,
        act("mirror_zd", "zd", "{email: email, external_id: id}", "{n: name}", "mirror"),
        act("upsert_zd", "zd", "{email: email}", "{n: name}"),
    ) == (0, valid(tmp_path, 1, 2))


HUBSPOT = "  crm: {type: hubspot, service: attributes, object: contacts, access_token: {env: HS_TOKEN}}\n"


def test_hubspot_upserts_by_record_id_are_refused_written_or_by_default(
    tmp_path: Path, validate: Validate
) -> None:
    why = (
        "upsert needs a unique property HubSpot can create records with (such as email) in match, not "
        "hs_object_id; allowed with match hs_object_id: update, insert"
    )
    assert validate(
        HUBSPOT,
        act("by_default", "crm", "{hs_object_id: hs_id}", "{n: firstname}"),
        act("mirrored", "crm", "{hs_object_id: hs_id}", "{n: firstname}", "mirror"),
        act("updated", "crm", "{hs_object_id: hs_id}", "{n: firstname}", "update"),
        act("by_email", "crm", "{email: email}", "{n: firstname}", "mirror"),
    ) == (
        1,
        problems(
            tmp_path,
            f"activations.by_default.sync_mode: found 'upsert' (the default for hubspot attributes); {why}",
            f"activations.mirrored.sync_mode: found 'mirror'; {why}",
        ),
    )


EMARSYS = """\
  rds:
    type: emarsys
    service: attributes
    client_id: dinmo_client
    client_secret: {env: EM_SECRET}
    relational_table: {connection: shop, table: orders}
  contacts: {type: emarsys, service: attributes, client_id: dinmo_client, client_secret: {env: EM_SECRET}}
"""


def test_emarsys_relational_tables_refuse_update_and_insert(tmp_path: Path, validate: Validate) -> None:
    allowed = "allowed for emarsys attributes (Emarsys table 'shop.orders'): upsert, mirror"
    assert validate(
        EMARSYS,
        act("upd", "rds", "{order_id: order_id}", "{a: amount}", "update"),
        act("ins", "rds", "{order_id: order_id}", "{a: amount}", "insert"),
        act("mir", "rds", "{order_id: order_id}", "{a: amount}", "mirror"),
        act("contacts_upd", "contacts", "{email: email}", "{f: '1'}", "update"),
    ) == (
        1,
        problems(
            tmp_path,
            f"activations.upd.sync_mode: found 'update'; {allowed}",
            f"activations.ins.sync_mode: found 'insert'; {allowed}",
        ),
    )


def test_what_validate_refuses_is_what_the_adapters_refuse_when_a_sync_sends() -> None:
    """The same settings and matches, built as a sync builds them: each adapter stops the sync with its own
    error at the first batch (why validate refuses them beforehand)."""
    companies = {"service": "attributes", "object": "companies", "access_token": "t"}
    with pytest.raises(PlatformConfigError) as info:
        build_platform("intercom", companies, destination="companies").check_operation("update")
    assert str(info.value) == (
        "destination 'companies' (intercom): service 'attributes' does not support operation 'update'; "
        "allowed: upsert, delete"
    )
    table = {"connection": "shop", "table": "orders"}
    rds = {"service": "attributes", "client_id": "c", "client_secret": "s", "relational_table": table}
    with pytest.raises(
        PlatformConfigError, match="does not support operation 'insert'; allowed: upsert, delete"
    ):
        build_platform("emarsys", rds, destination="rds").check_operation("insert")
    zendesk = build_platform("zendesk", {"subdomain": "acme", "email": "agent@acme.io", "api_token": "t"})
    with pytest.raises(PlatformConfigError, match="sync_mode mirror deletes Zendesk users by external id"):
        zendesk.record_input("delete", Record("1", "delete", {"email": "a@b.io"}, {}))
    hubspot = build_platform("hubspot", {"service": "attributes", "object": "contacts", "access_token": "t"})
    with pytest.raises(
        PlatformConfigError, match="upsert needs a unique property HubSpot can create records"
    ):
        hubspot.record_input("upsert", Record("1", "upsert", {"hs_object_id": "51"}, {"firstname": "Ada"}))
