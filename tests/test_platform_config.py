"""Destinations that are API platforms (hubspot, braze, meta_ads, firestore) and activations to them:
what the project loader accepts and the exact messages of what it refuses."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from dinmo_dagster.config import ProjectError, load_project
from dinmo_dagster.platform_connectors import audience_platforms

BASE = """
sources:
  warehouse: {type: duckdb, path: data/warehouse.duckdb}
models:
  customers: {source: warehouse, table: raw.customers, primary_key: customer_id}
segments:
  vip: {model: customers, sql: "select * from {{ model }}"}
destinations:
  crm:
    type: hubspot
    service: attributes
    object: contacts
    access_token: {env: HUBSPOT_TOKEN}
  meta_vip:
    type: meta_ads
    service: audiences
    ad_account_id: "act_1234"
    access_token: {env: META_TOKEN}
  exports: {type: gcs, bucket: acme-activation, project: acme-data}
activations:
  vip_to_crm:
    segment: vip
    destination: crm
    match: {email: email}
    mapping: {ltv: lifetime_value}
    sync_mode: upsert
  vip_to_meta:
    segment: vip
    destination: meta_vip
    audience: {name: "VIP Europe"}
    identifiers: {email: email, phone: phone}
"""


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "dinmo.yaml").write_text(textwrap.dedent(text))
    return tmp_path


def problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ProjectError) as exc:
        load_project(write(tmp_path, text))
    return exc.value.problems


def test_the_platform_example_loads_with_its_defaults(tmp_path: Path) -> None:
    project = load_project(write(tmp_path, BASE))
    crm, meta = project.activations["vip_to_crm"], project.activations["vip_to_meta"]
    assert (crm.platform_service, crm.platform_mode, crm.effective_run_type) == ("attributes", "upsert",
                                                                                "full_then_delta")
    assert (crm.max_rejected_pct, crm.retry_rejected_days, crm.null_values) == (10.0, 14.0, "sync")
    assert (meta.platform_service, meta.platform_mode, meta.platform_match) == (
        "audiences", "mirror", {"email": "email", "phone": "phone"})
    assert project.destinations["crm"].type == "hubspot"
    assert project.warnings == []


def test_an_inline_token_is_refused(tmp_path: Path) -> None:
    text = BASE.replace("access_token: {env: HUBSPOT_TOKEN}", "access_token: pat-na1-secret-value")
    found = problems(tmp_path, text)
    assert found == [("dinmo.yaml: destinations.crm.access_token: secrets must not be written in the YAML; "
                     "found an inline value; allowed: {env: VARIABLE_NAME}")]
    assert not any("pat-na1-secret-value" in p for p in found)


def test_the_platform_validators_run_with_the_key_path(tmp_path: Path) -> None:
    text = BASE.replace("object: contacts", "object: contactz").replace('"act_1234"', '"1234x"')
    assert problems(tmp_path, text) == [
        ("dinmo.yaml: destinations.crm.object: found 'contactz'; allowed: contacts, companies, deals, or a "
        "custom object's objectTypeId (2-123456) or fully qualified name (p123456_name)"),
        ("dinmo.yaml: destinations.meta_vip.ad_account_id: found '1234x'; allowed: act_ followed by the ad "
        "account's digits (act_1234)"),
    ]


def test_an_unknown_platform_key_lists_the_allowed_ones(tmp_path: Path) -> None:
    text = BASE.replace("object: contacts", "object: contacts\n    objekt: x")
    found = problems(tmp_path, text)
    assert len(found) == 1
    assert found[0].startswith("dinmo.yaml: destinations.crm: unknown key 'objekt'; did you mean 'object'? "
                               "allowed: access_token, api_version, base_url")


def test_file_keys_on_a_platform_activation_are_errors(tmp_path: Path) -> None:
    text = BASE.replace("    sync_mode: upsert\n", "    sync_mode: upsert\n    format: csv\n"
                        "    file_name: vip\n")
    found = problems(tmp_path, text)
    assert [p.split(";")[0] for p in found] == [
        "dinmo.yaml: activations.vip_to_crm.file_name: a file option",
        "dinmo.yaml: activations.vip_to_crm.format: a file option",
    ]
    assert "destination 'crm' is a hubspot platform destination; remove it" in found[0]


def test_platform_keys_on_a_file_activation_are_errors(tmp_path: Path) -> None:
    text = BASE + """
  vip_files:
    segment: vip
    destination: exports
    file_name: "vip_{X}"
    match: {email: email}
    max_rejected_pct: 5
"""
    assert problems(tmp_path, text) == [
        ("dinmo.yaml: activations.vip_files.match: applies to API platform destinations only; destination "
        "'exports' is a gcs file destination; remove it"),
        ("dinmo.yaml: activations.vip_files.max_rejected_pct: applies to API platform destinations only; "
        "destination 'exports' is a gcs file destination; remove it"),
    ]


def test_a_file_activation_still_needs_its_file_name(tmp_path: Path) -> None:
    text = BASE + "\n  vip_files: {segment: vip, destination: exports}\n"
    assert problems(tmp_path, text) == ["dinmo.yaml: activations.vip_files.file_name: required key is missing"]


def test_sync_mode_allowed_per_service(tmp_path: Path) -> None:
    text = BASE.replace("sync_mode: upsert", "sync_mode: difference").replace(
        "    identifiers: {email: email, phone: phone}", "    identifiers: {email: email}\n    sync_mode: upsert")
    assert problems(tmp_path, text) == [
        ("dinmo.yaml: activations.vip_to_crm.sync_mode: found 'difference'; allowed for hubspot attributes: "
        "upsert, update, insert, mirror"),
        "dinmo.yaml: activations.vip_to_meta.sync_mode: found 'upsert'; allowed for meta_ads audiences: mirror",
    ]


def test_match_identifiers_and_audience_are_required_where_the_service_needs_them(tmp_path: Path) -> None:
    text = BASE.replace("    match: {email: email}\n", "").replace(
        '    audience: {name: "VIP Europe"}\n    identifiers: {email: email, phone: phone}\n', "")
    assert problems(tmp_path, text) == [
        "dinmo.yaml: activations.vip_to_crm.match: found nothing; allowed: at least one {identifier: column}",
        ("dinmo.yaml: activations.vip_to_meta.identifiers: found nothing; allowed: at least one of email, phone, "
         "first_name, last_name, first_initial, gender, birth_year, birth_month, birth_day, city, state, zip, "
         "country, external_id, madid"),
        "dinmo.yaml: activations.vip_to_meta.audience: found nothing; allowed: {name: ...} or {id: ...}",
    ]


def test_match_on_an_audience_and_fields_an_audience_does_not_take(tmp_path: Path) -> None:
    text = BASE.replace("identifiers: {email: email, phone: phone}", "match: {email: email}\n    mapping: {ltv: x}")
    assert problems(tmp_path, text) == [
        ("dinmo.yaml: activations.vip_to_meta.match: found match; meta_ads audiences take identifiers; "
         "allowed: identifiers"),
        ("dinmo.yaml: activations.vip_to_meta.mapping: found ltv; allowed: nothing (custom audiences take "
         "identifiers only)"),
    ]


def test_a_firestore_document_per_record_needs_no_match(tmp_path: Path) -> None:
    text = BASE + """
  docs:
    segment: vip
    destination: customers_docs
    mapping: {ltv: ltv}
"""
    text = text.replace("destinations:\n", "destinations:\n  customers_docs: {type: firestore, service: attributes, "
                        "project: acme-data, collection: customers, service_account_json: {env: FS_KEY}}\n")
    project = load_project(write(tmp_path, text))
    assert project.activations["docs"].platform_mode == "upsert"


def test_audience_takes_a_name_or_an_id(tmp_path: Path) -> None:
    text = BASE.replace('audience: {name: "VIP Europe"}', 'audience: {name: "VIP", id: "123"}')
    assert problems(tmp_path, text) == [
        "dinmo.yaml: activations.vip_to_meta.audience: give exactly one of name and id"]


def test_rejection_limits_are_bounded(tmp_path: Path) -> None:
    text = BASE.replace("sync_mode: upsert", "sync_mode: upsert\n    max_rejected_pct: 150\n"
                        "    retry_rejected_days: 0\n    null_values: keep")
    found = problems(tmp_path, text)
    assert found == [
        "dinmo.yaml: activations.vip_to_crm.null_values: found 'keep'; allowed: 'sync' or 'skip'",
        ("dinmo.yaml: activations.vip_to_crm.max_rejected_pct: Input should be less than or equal to 100, "
        "found 150"),
        "dinmo.yaml: activations.vip_to_crm.retry_rejected_days: Input should be greater than 0, found 0",
    ]


def test_the_readme_platform_example_loads(tmp_path: Path) -> None:
    """The YAML of the README's "Destination platforms" section, with a source, model and segment."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Destination platforms", 1)[1]
    example = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    head = """
sources:
  warehouse: {type: duckdb, path: data/warehouse.duckdb}
models:
  customers: {source: warehouse, table: raw.customers, primary_key: customer_id}
segments:
  vip_europe: {model: customers, sql: "select * from {{ model }}"}
"""
    (tmp_path / "dinmo.yaml").write_text(head + example)
    project = load_project(tmp_path)
    assert {n: (a.platform_service, a.platform_mode) for n, a in project.activations.items()} == {
        "vip_to_crm": ("attributes", "upsert"), "vip_to_meta": ("audiences", "mirror"),
        "vip_to_braze": ("attributes", "upsert"), "vip_profiles": ("attributes", "upsert")}


def test_an_audience_on_attributes_and_full_only_are_refused(tmp_path: Path) -> None:
    # every registered platform with an audiences service is listed, these among them
    assert {"braze", "criteo", "firestore", "meta_ads", "snapchat_ads"} <= set(audience_platforms())
    text = BASE.replace("    sync_mode: upsert\n", "    sync_mode: upsert\n    audience: {name: VIP}\n"
                        "    run_type: full_only\n")
    assert problems(tmp_path, text) == [
        ("dinmo.yaml: activations.vip_to_crm.audience: found an audience; destination 'crm' is a hubspot platform "
         "destination with service attributes, which takes none; allowed: audience only with service audiences "
         "of " + ", ".join(audience_platforms())),
        ("dinmo.yaml: activations.vip_to_crm.run_type: found 'full_only'; destination 'crm' is a hubspot platform "
         "destination, synced by its changes; allowed: full_then_delta"),
    ]


def test_an_oauth_platforms_identifiers_are_checked_without_its_secrets(tmp_path: Path) -> None:
    # The refresh token is a secret the YAML sets but validation does not read: the check still runs.
    text = (BASE + """
  vip_to_linkedin:
    segment: vip
    destination: linkedin_vip
    audience: {name: "VIP Europe"}
    identifiers: {email: email, phone: phone}
""").replace("  exports: {type: gcs", """  linkedin_vip:
    type: linkedin_ads
    service: audiences
    ad_account_id: "5123"
    client_id: app-1
    client_secret: {env: LINKEDIN_CLIENT_SECRET}
    refresh_token: {env: LINKEDIN_REFRESH_TOKEN}
  exports: {type: gcs""")
    assert problems(tmp_path, text) == [
        ("dinmo.yaml: activations.vip_to_linkedin.identifiers.phone: found 'phone'; allowed for segment_type user: "
         "email, google_aid, apple_idfa")]
