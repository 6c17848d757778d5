"""The quickstart's HubSpot activation: `dinmo demo` (and `dinmo emulator`) serve it from the HubSpot
fake shipped in the package, and only a loopback destination whose token variable is unset is ever
sent to that fake. Real processes, the real fake, the warehouse read back with duckdb."""

from __future__ import annotations

import json
import math
import re
import socket
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from pathlib import Path

import duckdb
import pytest
from cli_processes import clean_env, dinmo, emulator_serving

from dinmo_dagster import demo
from dinmo_dagster.config import QUICKSTART_DIR, load_project
from dinmo_dagster.emulator import free_port
from dinmo_dagster.fakes.local import DEMO_TOKEN, HubSpotStandIn, faked_hubspot_destinations

QUICKSTART_URL = "http://127.0.0.1:9024"
VIP_SQL = ("select email, first_name, phone, ltv from raw.customers "
           "where ltv > 500 and country in ('FR', 'DE')")
def quickstart_on_port(directory: Path, port: int) -> Path:
    """The quickstart, with its fake on ``port`` (a free one: other test runs may hold 9024)."""
    directory.mkdir(parents=True)
    text = (QUICKSTART_DIR / "dinmo.yaml").read_text()
    assert text.count(f"base_url: {QUICKSTART_URL}\n") == 1
    (directory / "dinmo.yaml").write_text(text.replace(QUICKSTART_URL, f"http://127.0.0.1:{port}"))
    return directory


def vip_contacts(warehouse: Path) -> dict[str, dict[str, str]]:
    """The vip_europe segment as HubSpot contacts: e-mail -> the mapped properties, as HubSpot's strings
    (a NULL is sent as "", which clears the property: HubSpot holds none)."""
    with duckdb.connect(str(warehouse), read_only=True) as con:
        rows = con.execute(VIP_SQL).fetchall()
    contacts = {}
    for email, first, phone, ltv in rows:
        props = {"firstname": first, "phone": phone, "lifetime_value": f"{ltv:.2f}"}
        contacts[email] = {k: v for k, v in props.items() if v is not None}
    return contacts


def fake_contacts(data_file: Path) -> dict[str, dict[str, str]]:
    """The contacts the fake keeps in its data file, by e-mail, without HubSpot's own id."""
    saved = json.loads(data_file.read_text(encoding="utf-8"))
    out = {}
    for record in saved["store"]["contacts"].values():
        props = {k: v for k, v in record["properties"].items() if k != "hs_object_id"}
        out[props.pop("email")] = props
    return out


def landed(stdout: str) -> list[str]:
    return [ln for ln in stdout.split("what landed where:\n")[1].splitlines() if not ln.startswith("  gs://")]


def nothing_listens(port: int) -> bool:
    """True when a connection to the port is refused (a bind could still fail on TIME_WAIT sockets)."""
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def test_demo_sends_the_vip_segment_to_the_hubspot_fake_then_a_delta(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    project = quickstart_on_port(tmp_path / "qs", port)
    env = clean_env(DAGSTER_HOME=str(tmp_path / "dh"))
    first = dinmo("demo", "--dir", str(project), cwd=tmp_path, env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    lines = first.stdout.splitlines()
    data_file = project / ".hubspot" / "crm.json"
    assert lines[0] == (f"HUBSPOT_TOKEN is not set: started the local HubSpot fake at {url} for the demo "
                        f"(destination crm; contacts kept in {data_file})")
    expected = vip_contacts(project / "data" / "warehouse.duckdb")
    n = len(expected)
    assert n > 300  # several batches of HubSpot's 100 inputs
    assert [ln for ln in lines if ln.startswith("sync vip_to_crm:")] == [
        (f"sync vip_to_crm: full sync to hubspot (attributes, upsert): {n} added, 0 updated, 0 removed, "
         f"0 unchanged; {n} record(s) accepted, 0 rejected in {math.ceil(n / 100)} batch(es), 0 retries, "
         "0.0s waiting on rate limits")]
    first3 = sorted(expected)[:3]
    assert landed(first.stdout)[:5] == [
        f"  hubspot crm (local fake at {url}): {n} contacts  <- vip_to_crm",
        *(f"    {e}: firstname={expected[e]['firstname']}, phone={expected[e]['phone']}, "
          f"lifetime_value={expected[e]['lifetime_value']}" for e in first3),
        f"    ... and {n - 3} more",
    ]
    assert fake_contacts(data_file) == expected  # exactly the segment, with the mapped values
    assert nothing_listens(port)  # the demo stopped its fake

    # The second run applies the sample changes: a delta of the mapped columns, sent to the same fake.
    second = dinmo("demo", "--dir", str(project), cwd=tmp_path, env=env)
    assert second.returncode == 0, second.stdout + second.stderr
    now = vip_contacts(project / "data" / "warehouse.duckdb")
    added = now.keys() - expected.keys()
    updated = {e for e in now.keys() & expected.keys() if now[e] != expected[e]}
    removed = expected.keys() - now.keys()
    assert added and updated and removed
    assert [ln for ln in second.stdout.splitlines() if ln.startswith("sync vip_to_crm:")] == [
        (f"sync vip_to_crm: delta sync to hubspot (attributes, upsert): {len(added)} added, "
         f"{len(updated)} updated, {len(removed)} removed, {len(now) - len(added) - len(updated)} unchanged; "
         f"{len(added) + len(updated)} record(s) accepted, 0 rejected in 1 batch(es), 0 retries, "
         "0.0s waiting on rate limits")]
    # upsert never deletes: the contacts that left the segment keep their last synced values.
    held = {**{e: expected[e] for e in removed}, **now}
    assert landed(second.stdout)[0] == f"  hubspot crm (local fake at {url}): {len(held)} contacts  <- vip_to_crm"
    assert fake_contacts(data_file) == held


def test_demo_with_the_fakes_port_taken_says_so_in_one_line_and_changes_nothing(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        project = quickstart_on_port(tmp_path / "qs", port)
        proc = dinmo("demo", "--dir", str(project), cwd=tmp_path, env=clean_env(DAGSTER_HOME=str(tmp_path / "dh")))
    assert proc.returncode == 1
    assert proc.stdout.splitlines() == [
        (f"dinmo demo: cannot start the local HubSpot fake for destination 'crm' at http://127.0.0.1:{port} "
         f"(base_url in {project / 'dinmo.yaml'}): port {port} is already in use; stop what uses it, or set "
         "another port in base_url")]
    assert proc.stderr == ""
    assert not (project / "data").exists()  # no warehouse built, no sample change applied
    assert not (project / ".hubspot").exists()


HUBSPOT_PROJECT = """
sources:
  wh: {type: duckdb, path: wh.duckdb}
models:
  customers: {source: wh, table: raw.customers, primary_key: customer_id}
segments:
  all: {model: customers, sql: "select * from {{ model }}"}
destinations:
  crm:
    type: hubspot
    service: attributes
    object: contacts
    access_token: {env: DINMO_TEST_HUBSPOT_TOKEN}
    BASE_URL
activations:
  to_crm: {segment: all, destination: crm, match: {email: email}, sync_mode: upsert}
"""


@pytest.mark.parametrize("base_url, token_set, faked", [
    ("", False, False),  # HubSpot's real URL (the default)
    ("base_url: https://api.hubapi.com", False, False),
    ("base_url: http://127.0.0.1:9024", True, False),  # a token: a real account behind a local proxy
    ("base_url: http://10.0.0.7:9024", False, False),  # not loopback
    ("base_url: http://127.0.0.1:9024", False, True),
    ("base_url: http://localhost:9024", False, True),
])
def test_only_a_loopback_hubspot_destination_without_its_token_goes_to_the_fake(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, base_url: str, token_set: bool, faked: bool) -> None:
    (tmp_path / "dinmo.yaml").write_text(textwrap.dedent(HUBSPOT_PROJECT).replace("BASE_URL", base_url))
    if token_set:
        monkeypatch.setenv("DINMO_TEST_HUBSPOT_TOKEN", "pat-na1-real")
    else:
        monkeypatch.delenv("DINMO_TEST_HUBSPOT_TOKEN", raising=False)
    got = faked_hubspot_destinations(load_project(tmp_path))
    assert got == ([HubSpotStandIn("crm", "contacts", 9024, "DINMO_TEST_HUBSPOT_TOKEN",
                                   str(tmp_path / "dinmo.yaml"))] if faked else [])


def _get(url: str, token: str | None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_dinmo_emulator_serves_the_hubspot_fake_for_dinmo_sync(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    project = quickstart_on_port(tmp_path / "qs", port)
    demo.prepare_warehouse(load_project(project))
    env = clean_env(DAGSTER_HOME=str(tmp_path / "dh"))
    with emulator_serving(project, tmp_path, env, tmp_path / "emulator.log") as lines:
        gcs = re.fullmatch(r"  export STORAGE_EMULATOR_HOST=(http://127\.0\.0\.1:\d+)", lines[1]).group(1)
        assert lines[2:] == [
            (f"HubSpot fake at {url} for destination crm (contacts kept in {project / '.hubspot' / 'crm.json'}). "
             "In another shell:"),
            f"  export HUBSPOT_TOKEN={DEMO_TOKEN}",
            "Ctrl-C stops it."]
        contacts = f"{url}/crm/v3/objects/contacts?limit=1"
        assert (_get(contacts, None), _get(contacts, "pat-na1-wrong"), _get(contacts, DEMO_TOKEN)) == (401, 401, 200)
        synced = dinmo("--project", str(project), "sync", "vip_to_crm", cwd=tmp_path,
                       env={**env, "STORAGE_EMULATOR_HOST": gcs, "HUBSPOT_TOKEN": DEMO_TOKEN})
        assert synced.returncode == 0, synced.stdout + synced.stderr
        n = len(vip_contacts(project / "data" / "warehouse.duckdb"))
        assert f"sync vip_to_crm: full sync to hubspot (attributes, upsert): {n} added" in synced.stdout
    assert nothing_listens(port)
    assert fake_contacts(project / ".hubspot" / "crm.json") == vip_contacts(project / "data" / "warehouse.duckdb")


def test_the_shipped_fake_needs_no_test_dependency() -> None:
    code = ("import sys\nimport dinmo_dagster.fakes.hubspot, dinmo_dagster.fakes.local\n"
            "print(sorted(m for m in ('pytest', 'werkzeug', 'pytest_httpserver', 'fakes') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/")
    assert out.stdout.strip() == "[]"
