"""Identity resolution: profiles unified across models, in the warehouse (DuckDB and a real PostgreSQL).

Small hand-made populations with exact expectations: chains of links, transitive merges, a shared family
e-mail above its limit, fuzzy names, survivorship ties, stable ids across runs and a recorded merge; the
validation messages; a segment and a file activation on ``identity.people`` through Dagster; incremental
runs compared with full runs on the same data (joins, leaves, a split, a merge, a limit crossing).
"""

from __future__ import annotations

import csv
import hashlib
import textwrap
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import dagster as dg
import pytest

from dinmo_dagster import names, sync
from dinmo_dagster.compile import refresh_model
from dinmo_dagster.config import Project, ProjectError, load_project
from dinmo_dagster.definitions import build_definitions
from dinmo_dagster.identity.engine import IdentityError, build_graph, build_profiles
from dinmo_dagster.warehouses import Warehouse, warehouse_from_config

IDENTITY = """
identity:
  people:
    sources:
      - model: crm_contacts
        identifiers: {email: email, phone: phone, customer_id: id}
        attributes: {first_name: fname, last_name: lname, zip: zip, ltv: ltv}
        updated_at: updated_at
      - model: web_signups
        identifiers: {email: email_address, anonymous_id: anon_id}
        attributes: {first_name: first, last_name: last, zip: zip}
        updated_at: created_at
    rules:
      - [customer_id]
      - [email]
      - [phone, last_name]
      - fuzzy: {first_name: 0.9, last_name: 0.9, zip: exact}
    limits: {email: 3}
    phone_country: FR
    survivorship: {email: most_recent, ltv: max, first_name: most_frequent}
"""

CRM = [  # id, email, phone, first, last, zip, ltv, updated_at
    (1, " Ann@X.com ", "06 12 34 56 78", "Ann", "Lee", "75001", 100, "2024-01-01"),
    (2, "ann@x.com", None, "Annie", "Lee", "75001", 300, "2024-02-01"),
    (3, "bob@y.com", "+33 6 12 34 56 70", "Bob", "Ray", "69001", 50, "2024-01-05"),
    (4, None, "0033612345670", "Robert", "Ray", "69002", 500, "2024-03-01"),
    (5, "family@z.com", None, "Carl", "Moe", "13001", 10, "2024-01-01"),
    (6, "family@z.com", None, "Dana", "Moe", "13001", 20, "2024-01-01"),
    (7, "FAMILY@z.com", None, "Eve", "Moe", "13001", 30, "2024-01-01"),
    (8, "family@z.com", None, "Finn", "Moe", "13001", 40, "2024-01-01"),
    (9, "ann.lee@work.com", "+33612345678", "Ann", "Lee", None, None, "2024-01-10"),
]
WEB = [  # anon_id, email, first, last, zip, created_at
    ("a1", "ANN@x.com", None, None, None, "2024-05-01"),
    ("a2", None, "Christopher", "Smith", "10001", "2024-01-01"),
    ("a3", "chris@z.com", "Christophe", "Smith", "10001", "2024-01-02"),
    ("a4", None, "Christine", "Smith", "10001", "2024-01-03"),
    ("a5", "Bob@Y.com", None, "Ray", None, "2024-04-01"),
    ("a6", "ann.lee@work.com", None, None, None, "2024-06-01"),
]
# Who is who: Ann's records chain through e-mails and phone+last name (a6 - crm 9 - crm 1 - crm 2 - a1),
# Bob's through phone+last name and e-mail (crm 4 - crm 3 - a5), Christopher's two sign-ups through the fuzzy
# rule; the Moe family shares one e-mail on 4 records (limit 3): it links none of them.
EXPECTED_GROUPS = [
    {"crm_contacts:1", "crm_contacts:2", "crm_contacts:9", "web_signups:a1", "web_signups:a6"},
    {"crm_contacts:3", "crm_contacts:4", "web_signups:a5"},
    {"crm_contacts:5"},
    {"crm_contacts:6"},
    {"crm_contacts:7"},
    {"crm_contacts:8"},
    {"web_signups:a2", "web_signups:a3"},
    {"web_signups:a4"},
]


def pid(first_record: str) -> str:
    """The documented id of a new profile: p_ + 20 hex digits of the MD5 of its smallest record id."""
    return "p_" + hashlib.md5(first_record.encode()).hexdigest()[:20]


def project_yaml(source: str, raw: str, extra: str = "") -> str:
    return (
        textwrap.dedent(f"""
        sources:
          {source}
        models:
          crm_contacts: {{source: wh, table: {raw}.crm, primary_key: id}}
          web_signups: {{source: wh, table: {raw}.web, primary_key: anon_id}}
        """)
        + textwrap.dedent(IDENTITY)
        + textwrap.dedent(extra)
    )


def literal(v: object) -> str:
    return "null" if v is None else str(v) if isinstance(v, int) else "'" + str(v).replace("'", "''") + "'"


def load_raw(wh: Warehouse, raw: str, crm: list[tuple], web: list[tuple]) -> None:
    wh.execute(
        [
            f"drop schema if exists {raw} cascade",
            f"create schema {raw}",
            (
                f"create table {raw}.crm (id integer, email varchar(80), phone varchar(40), fname varchar(40), "
                "lname varchar(40), zip varchar(10), ltv integer, updated_at timestamp)"
            ),
            (
                f"create table {raw}.web (anon_id varchar(20), email_address varchar(80), first varchar(40), "
                "last varchar(40), zip varchar(10), created_at timestamp)"
            ),
        ]
    )
    rows = [f"insert into {raw}.crm values ({', '.join(map(literal, r))})" for r in crm]
    rows += [f"insert into {raw}.web values ({', '.join(map(literal, r))})" for r in web]
    wh.execute(rows)


def warehouse(project: Project) -> Warehouse:
    return warehouse_from_config("wh", project.sources["wh"].model_dump(by_alias=True, exclude_none=True))


def resolve(wh: Warehouse, project: Project, now: datetime | None = None) -> None:
    """What the assets run: the source models' views, the graph, the profiles (one connection, as a step)."""
    with wh.session():
        for m in ("crm_contacts", "web_signups"):
            refresh_model(wh, project, m)
        build_graph(wh, project, "people", now=now)
        build_profiles(wh, project, "people")


def groups(wh: Warehouse, schema: str) -> tuple[list[set[str]], dict[str, str]]:
    """The graph's profiles as sets of record ids (sorted by smallest record id), and record -> profile."""
    rows = wh.query(f"select record_id, profile_id from {schema}.people_graph")
    by_profile: dict[str, set[str]] = {}
    for record, profile in rows:
        by_profile.setdefault(profile, set()).add(record)
    return sorted(by_profile.values(), key=min), dict(rows)


@pytest.fixture
def duck(tmp_path: Path) -> Iterator[tuple[Project, Warehouse]]:
    (tmp_path / "dinmo.yaml").write_text(
        project_yaml(f"wh: {{type: duckdb, path: {tmp_path / 'wh.duckdb'}}}", "raw")
    )
    project = load_project(tmp_path)
    wh = warehouse(project)
    load_raw(wh, "raw", CRM, WEB)
    yield project, wh


def assert_population(wh: Warehouse, schema: str) -> None:
    found, of = groups(wh, schema)
    assert found == sorted(EXPECTED_GROUPS, key=min)
    assert {of[min(g)] for g in EXPECTED_GROUPS} == {pid(min(g)) for g in EXPECTED_GROUPS}
    for g in EXPECTED_GROUPS:
        assert {of[r] for r in g} == {pid(min(g))}
    profiles = wh.query(
        f"select profile_id, email, phone, customer_id, anonymous_id, first_name, last_name, zip, "
        f"ltv from {schema}.people_profiles order by profile_id"
    )
    assert sorted(profiles) == sorted(
        [
            # Ann: latest e-mail (a6, June); most frequent first name (Ann x2 against Annie); phone as E.164;
            # latest customer id and anonymous id; max ltv
            (
                pid("crm_contacts:1"),
                "ann.lee@work.com",
                "+33612345678",
                "2",
                "a6",
                "Ann",
                "Lee",
                "75001",
                300,
            ),
            (pid("crm_contacts:3"), "bob@y.com", "+33612345670", "4", "a5", "Robert", "Ray", "69002", 500),
            (pid("crm_contacts:5"), "family@z.com", None, "5", None, "Carl", "Moe", "13001", 10),
            (pid("crm_contacts:6"), "family@z.com", None, "6", None, "Dana", "Moe", "13001", 20),
            (pid("crm_contacts:7"), "family@z.com", None, "7", None, "Eve", "Moe", "13001", 30),
            (pid("crm_contacts:8"), "family@z.com", None, "8", None, "Finn", "Moe", "13001", 40),
            # most_frequent ties (one each): the value seen most recently (Robert in March; Christophe, a3)
            (pid("web_signups:a2"), "chris@z.com", None, None, "a3", "Christophe", "Smith", "10001", None),
            (pid("web_signups:a4"), None, None, None, "a4", "Christine", "Smith", "10001", None),
        ]
    )


def test_chains_limits_fuzzy_and_survivorship_on_duckdb(duck: tuple[Project, Warehouse]) -> None:
    project, wh = duck
    resolve(wh, project)
    assert_population(wh, "dinmo_identity")
    assert wh.query("select count(*) from dinmo_identity.people_merges") == [(0,)]


def test_chains_limits_fuzzy_and_survivorship_on_postgres(
    tmp_path: Path, postgres_server, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = postgres_server
    monkeypatch.setenv("PG_PASSWORD", server.password)
    schemas = {
        "segments": "idt_segments",
        "stats": "idt_stats",
        "delta_storage": "idt_delta",
        "predictions": "idt_predictions",
        "identity": "idt_identity",
    }
    source = (
        f"wh: {{type: postgres, host: {server.host}, port: {server.port}, database: {server.database}, "
        f"user: {server.user}, password: {{env: PG_PASSWORD}}, helper_schemas: {{"
        + ", ".join(f"{k}: {v}" for k, v in schemas.items())
        + "}}"
    )
    (tmp_path / "dinmo.yaml").write_text(project_yaml(source, "idt_raw"))
    project = load_project(tmp_path)
    wh = warehouse(project)
    try:
        load_raw(wh, "idt_raw", CRM, WEB)
        resolve(wh, project)
        # fuzzystrmatch's Levenshtein on PostgreSQL: christopher / christophe = 1 - 1/11 = 0.909 >= 0.9
        assert_population(wh, "idt_identity")
        resolve(wh, project)  # a second run keeps every id and records no merge
        assert_population(wh, "idt_identity")
        assert wh.query("select count(*) from idt_identity.people_merges") == [(0,)]
    finally:
        wh.execute([f"drop schema if exists {s} cascade" for s in ("idt_raw", *schemas.values())])


def test_the_snowflake_sql_under_fakesnow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Snowflake's JAROWINKLER_SIMILARITY is an integer percentage
    (https://docs.snowflake.com/sql-reference/functions/jarowinkler_similarity): christophe / christine,
    0.8956 in DuckDB, scores 90 there and meets the 0.9 threshold, so Christine joins Christopher's profile."""
    import fakesnow

    monkeypatch.setenv("SF_PASSWORD", "not-a-real-password")
    (tmp_path / "fakesnow").mkdir()
    source = (
        "wh: {type: snowflake, account: acct, user: dinmo, password: {env: SF_PASSWORD}, database: CRM, "
        "warehouse: WH, role: DINMO}"
    )
    (tmp_path / "dinmo.yaml").write_text(project_yaml(source, "raw"))
    with fakesnow.patch(db_path=str(tmp_path / "fakesnow")):
        project = load_project(tmp_path)
        wh = warehouse(project)
        load_raw(wh, "raw", CRM, WEB)
        resolve(wh, project)
        found, of = groups(wh, "dinmo_identity")
        # a second run, incremental (its SQL on Snowflake too): a4 leaves, and the rest keeps its profiles
        load_raw(wh, "raw", CRM, [w for w in WEB if w[0] != "a4"])
        with wh.session():
            second = build_graph(wh, project, "people")
        assert (second.mode, second.records_changed) == ("incremental", 1)
        again = groups(wh, "dinmo_identity")[1]
    assert again == {r: p for r, p in of.items() if r != "web_signups:a4"}
    christopher = {"web_signups:a2", "web_signups:a3", "web_signups:a4"}
    expected = [g for g in EXPECTED_GROUPS if not g <= christopher] + [christopher]
    assert found == sorted(expected, key=min)
    assert {of[r] for r in christopher} == {pid("web_signups:a2")}
    assert of["crm_contacts:9"] == pid("crm_contacts:1")


def test_stable_ids_and_a_merge_keeps_the_older_id(duck: tuple[Project, Warehouse]) -> None:
    project, wh = duck
    bob = [r for r in CRM if r[0] in (3, 4)]
    load_raw(wh, "raw", [bob[1]], [])  # run 1: only Robert (crm 4)
    resolve(wh, project, now=datetime(2025, 1, 1))
    load_raw(wh, "raw", bob, [])  # run 2: Bob (crm 3) joins Robert's profile through phone + last name
    resolve(wh, project, now=datetime(2025, 1, 2))
    assert groups(wh, "dinmo_identity")[1] == {
        "crm_contacts:3": pid("crm_contacts:4"),
        "crm_contacts:4": pid("crm_contacts:4"),
    }
    # run 3: a sign-up with Bob's e-mail arrives alone (new id), with a typo in it
    load_raw(wh, "raw", bob, [("a5", "bob@y.co", None, "Ray", None, "2024-04-01")])
    resolve(wh, project, now=datetime(2025, 1, 3))
    _, of = groups(wh, "dinmo_identity")
    assert of["web_signups:a5"] == pid("web_signups:a5")
    # run 4: a new CRM record links the sign-up (e-mail) to Bob (phone + last name): Robert's id, older, stays
    linker = (10, "bob@y.co", "0612345670", "Bob", "Ray", None, None, "2024-05-01")
    load_raw(wh, "raw", [*bob, linker], [("a5", "bob@y.co", None, "Ray", None, "2024-04-01")])
    resolve(wh, project, now=datetime(2025, 1, 4))
    _, of = groups(wh, "dinmo_identity")
    assert set(of.values()) == {pid("crm_contacts:4")}
    assert wh.query("select merged_at, rule, kept_id, merged_id from dinmo_identity.people_merges") == [
        (datetime(2025, 1, 4), "email", pid("crm_contacts:4"), pid("web_signups:a5"))
    ]
    assert wh.query("select profile_id, customer_id from dinmo_identity.people_profiles") == [
        (pid("crm_contacts:4"), "10")
    ]


def test_survivorship_ties(tmp_path: Path) -> None:
    (tmp_path / "dinmo.yaml").write_text(
        textwrap.dedent(f"""
        sources:
          wh: {{type: duckdb, path: {tmp_path / "wh.duckdb"}}}
        models:
          a: {{source: wh, table: raw.a, primary_key: id}}
          b: {{source: wh, table: raw.b, primary_key: id}}
        identity:
          people:
            sources:
              - {{model: a, identifiers: {{email: email}}, attributes: {{name: name, city: city, plan: plan, nick: nick,
                  zip: zip, ltv: ltv}}, updated_at: seen_at}}
              - {{model: b, identifiers: {{email: email}}, attributes: {{name: name, city: city, plan: plan, nick: nick,
                  zip: zip, ltv: ltv}}, updated_at: seen_at}}
            rules: [[email]]
            survivorship: {{name: most_recent, city: most_frequent, plan: most_frequent, nick: first_seen,
                           zip: source_priority, ltv: sum}}
        """)
    )
    project = load_project(tmp_path)
    wh = warehouse(project)
    columns = (
        "id integer, email varchar, name varchar, city varchar, plan varchar, nick varchar, zip varchar, "
        "ltv integer, seen_at timestamp"
    )
    wh.execute(
        [
            "create schema raw",
            f"create table raw.a ({columns})",
            f"create table raw.b ({columns})",
            (
                "insert into raw.a values (1, 't@x.com', 'Zed', 'Paris', 'gold', 'zz', null, 10, '2024-01-01'), "
                "(2, 't@x.com', 'Amy', 'Lyon', null, null, '2', 20, '2024-03-01')"
            ),
            (
                "insert into raw.b values (1, 't@x.com', 'Bea', 'Lyon', null, null, '3', 5, '2024-03-01'), "
                "(2, 't@x.com', null, 'Paris', 'basic', 'bb', null, null, '2024-01-01')"
            ),
        ]
    )
    for m in ("a", "b"):
        refresh_model(wh, project, m)
    build_graph(wh, project, "people")
    build_profiles(wh, project, "people")
    assert wh.query("select * from dinmo_identity.people_profiles") == [
        # name: A:2 and B:1 are both latest: the source listed first wins (Amy). city: Paris and Lyon twice each:
        # Lyon was seen last. plan: gold and basic once each, both last seen 1 January: the smaller value.
        # nick: A:1 and B:2 both first seen 1 January: the source listed first (zz). zip: source a first,
        # its latest value (2). ltv: 10 + 20 + 5.
        (pid("a:1"), "t@x.com", "Amy", "Lyon", "basic", "zz", "2", 35)
    ]


def test_label_propagation_stops_at_its_guard(duck: tuple[Project, Warehouse], tmp_path: Path) -> None:
    text = (
        (tmp_path / "dinmo.yaml")
        .read_text()
        .replace("    phone_country: FR\n", "    phone_country: FR\n    max_iterations: 1\n")
    )
    (tmp_path / "dinmo.yaml").write_text(text)
    project = load_project(tmp_path)
    _, wh = duck
    with pytest.raises(IdentityError) as err:
        resolve(wh, project)
    assert str(err.value) == (
        "identity.people: the profiles did not converge after 1 iterations of label propagation (labels still "
        "changed in the last one); raise identity.people.max_iterations, or add limits to identifiers that chain "
        "many records together"
    )


def problems(tmp_path: Path, identity: str, source: str = "{type: duckdb, path: wh.duckdb}") -> list[str]:
    (tmp_path / "dinmo.yaml").write_text(
        textwrap.dedent(f"""
        sources:
          wh: {source}
          other: {{type: duckdb, path: other.duckdb}}
        models:
          crm_contacts: {{source: wh, table: raw.crm, primary_key: id}}
          web_signups: {{source: wh, table: raw.web, primary_key: anon_id}}
          elsewhere: {{source: other, table: raw.x, primary_key: id}}
        """)
        + textwrap.dedent(identity)
    )
    with pytest.raises(ProjectError) as err:
        load_project(tmp_path)
    return err.value.problems


def test_validation_messages(tmp_path: Path) -> None:
    assert problems(
        tmp_path,
        """
        identity:
          people:
            sources:
              - {model: crm_contact, identifiers: {email: email}, attributes: {last_name: lname}}
              - {model: web_signups, identifiers: {email: email_address}, updated_at: created_at}
            rules:
              - [email, last_nam]
              - fuzzy: {last_name: 1.5, email: exact}
              - fuzzy: {email: exact}
              - {exact: [email]}
            limits: {phone: 3}
            survivorship: {email: newest, ltv: max}
        """,
    ) == [
        (
            "dinmo.yaml: identity.people.survivorship.email: found 'newest'; allowed: 'most_recent', 'most_frequent', "
            "'first_seen', 'source_priority', 'max', 'min' or 'sum'"
        ),
    ]
    assert problems(
        tmp_path,
        """
        identity:
          people:
            sources:
              - {model: crm_contact, identifiers: {email: email}, attributes: {last_name: lname}}
              - {model: web_signups, identifiers: {email: email_address}, updated_at: created_at}
            rules:
              - [email, last_nam]
              - fuzzy: {last_name: 1.5, email: exact}
              - fuzzy: {email: exact}
              - {exact: [email]}
            limits: {phone: 3}
            survivorship: {ltv: max}
        """,
    ) == [
        (
            "dinmo.yaml: identity.people.sources[0].model: unknown model 'crm_contact'; did you mean 'crm_contacts'? "
            "allowed: crm_contacts, elsewhere, web_signups"
        ),
        (
            "dinmo.yaml: identity.people.rules[0][1]: unknown identifier or attribute 'last_nam'; did you mean "
            "'last_name'? allowed: email, last_name"
        ),
        (
            "dinmo.yaml: identity.people.rules[1].fuzzy.last_name: found 1.5; allowed: a similarity threshold above 0 "
            "and at most 1 (0.92), or 'exact'"
        ),
        (
            "dinmo.yaml: identity.people.rules[2].fuzzy: found no similarity threshold; allowed: at least one key with "
            "a threshold (an all-exact rule is written as a list: [zip, last_name])"
        ),
        (
            "dinmo.yaml: identity.people.rules[3]: found \"{'exact': ['email']}\"; allowed: a list of keys ([email]) or "
            "{fuzzy: {key: threshold between 0 and 1 | exact}}"
        ),
        (
            "dinmo.yaml: identity.people.limits.phone: 'phone' is not used by any rule; allowed: email, last_nam, "
            "last_name"
        ),
        (
            "dinmo.yaml: identity.people.survivorship.ltv: unknown identifier or attribute 'ltv'; allowed: email, "
            "last_name"
        ),
    ]
    assert problems(
        tmp_path,
        """
        identity:
          people:
            sources:
              - {model: crm_contacts, identifiers: {email: email}}
              - {model: elsewhere, identifiers: {email: mail}}
            rules: [[email]]
        segments:
          s: {model: identity.persons, sql: "select * from {{ model }}"}
        """,
    ) == [
        (
            "dinmo.yaml: identity.people.sources: the models are in different sources: crm_contacts (source 'wh'), "
            "elsewhere (source 'other'); allowed: models of one source (identity resolution runs inside one warehouse)"
        ),
        (
            "dinmo.yaml: segments.s.model: unknown model 'identity.persons'; allowed: crm_contacts, elsewhere, "
            "web_signups"
        ),
    ]
    assert problems(
        tmp_path,
        """
        identity:
          people:
            sources: [{model: crm_contacts, identifiers: {email: email}, attributes: {first_name: fname}}]
            rules: [[email], {fuzzy: {first_name: 0.9}}]
        """,
        source="{type: redshift, host: h, database: d, user: u, password: {env: RS_PASSWORD}}",
    ) == [
        (
            "dinmo.yaml: identity.people.rules[1].fuzzy: fuzzy rules are not supported on redshift (source 'wh'); "
            "allowed on: duckdb, snowflake, postgres, bigquery, databricks"
        ),
    ]


def test_segment_and_file_activation_on_identity_people_through_dagster(tmp_path: Path) -> None:
    extra = """
        segments:
          big_spenders: {model: identity.people, filter: {all: [{attribute: ltv, op: gte, value: 300}]}}
          ann: {model: identity.people, sql: "select profile_id, email from {{ model }} where last_name = 'Lee'"}
        destinations:
          out: {type: local, path: out}
        activations:
          spenders_file:
            segment: big_spenders
            destination: out
            file_name: spenders
            mapping: {profile_id: profile_id, email: email, ltv: ltv}
        """
    (tmp_path / "dinmo.yaml").write_text(project_yaml("wh: {type: duckdb, path: wh.duckdb}", "raw", extra))
    project = load_project(tmp_path)
    wh = warehouse_from_config("wh", {"type": "duckdb", "path": str(tmp_path / "wh.duckdb")})
    load_raw(wh, "raw", CRM, WEB)
    defs = build_definitions(project)
    graph = defs.resolve_asset_graph()
    upstream = graph.get(dg.AssetKey(["models", "identity.people"])).parent_keys
    assert upstream == {dg.AssetKey(["identity", "people", "profiles"])}
    assert graph.get(dg.AssetKey(["identity", "people", "profiles"])).parent_keys == {
        dg.AssetKey(["identity", "people", "graph"])
    }
    assert graph.get(dg.AssetKey(["identity", "people", "graph"])).parent_keys == {
        dg.AssetKey(["models", "crm_contacts"]),
        dg.AssetKey(["models", "web_signups"]),
    }

    instance = dg.DagsterInstance.ephemeral()
    key = sync.new_partition_key()
    instance.add_dynamic_partitions(names.partitions_name("spenders_file"), [key])
    result = defs.resolve_job_def(names.job_name("spenders_file")).execute_in_process(
        instance=instance, partition_key=key
    )
    assert result.success
    files = list((tmp_path / "out").glob("spenders*.csv"))
    assert len(files) == 1
    with files[0].open() as f:
        assert sorted(csv.reader(f)) == sorted(
            [
                ["profile_id", "email", "ltv"],
                [pid("crm_contacts:1"), "ann.lee@work.com", "300"],
                [pid("crm_contacts:3"), "bob@y.com", "500"],
            ]
        )
    event = instance.get_latest_materialization_event(dg.AssetKey(["identity", "people", "graph"]))
    assert event is not None and event.asset_materialization is not None
    md = {k: v.value for k, v in event.asset_materialization.metadata.items()}
    assert (md["records"], md["profiles"], md["largest_profile"], md["merges"]) == (15, 8, 5, 0)
    assert (md["mode"], md["records_changed"], md["full_run_because"]) == ("full", 0, "first run")
    assert md["records_per_source"] == (
        "| source model | records |\n|---|---:|\n| crm_contacts | 9 |\n| web_signups | 6 |"
    )
    checks = {
        (e.check_name, e.passed, e.description)
        for e in result.get_asset_check_evaluations()
        if e.asset_key == dg.AssetKey(["identity", "people", "graph"])
    }
    assert checks == {
        ("profile_size", True, "the largest profile holds 5 records (limit 1000)"),
        ("one_profile_per_record", True, "15 records, each in exactly one profile"),
    }

    # the same project with a profile size limit of 4: the blocking check stops the sync before the delivery
    (tmp_path / "dinmo.yaml").write_text(
        (tmp_path / "dinmo.yaml")
        .read_text()
        .replace("    phone_country: FR\n", "    phone_country: FR\n    max_profile_size: 4\n")
    )
    defs = build_definitions(load_project(tmp_path))
    key = sync.new_partition_key()
    instance.add_dynamic_partitions(names.partitions_name("spenders_file"), [key])
    result = defs.resolve_job_def(names.job_name("spenders_file")).execute_in_process(
        instance=instance, partition_key=key, raise_on_error=False
    )
    assert not result.success
    failed = [(e.check_name, e.description) for e in result.get_asset_check_evaluations() if not e.passed]
    assert failed == [
        (
            "profile_size",
            (
                f"profile {pid('crm_contacts:1')} holds 5 records, above the limit of 4: a "
                "shared identifier probably links unrelated records; add a limit for it "
                "under identity.people.limits"
            ),
        )
    ]
    assert len(list((tmp_path / "out").glob("spenders*.csv"))) == 1
    # that second graph run was incremental: max_profile_size does not change the graph, no record changed
    event = instance.get_latest_materialization_event(dg.AssetKey(["identity", "people", "graph"]))
    assert event is not None and event.asset_materialization is not None
    md = {k: v.value for k, v in event.asset_materialization.metadata.items()}
    assert (md["mode"], md["records_changed"], md["profiles"], "full_run_because" in md) == (
        "incremental",
        0,
        8,
        False,
    )


# ------------------------------------------------------------------------------ incremental runs


def _snapshot(wh: Warehouse) -> dict[str, object]:
    """Everything a run leaves for users: record -> profile, merges, ids and their creation, golden records."""
    return {
        "graph": sorted(
            wh.query(
                "select record_id, source_model, record_key, profile_id from dinmo_identity.people_graph"
            )
        ),
        "merges": sorted(
            wh.query("select merged_at, rule, kept_id, merged_id from dinmo_identity.people_merges")
        ),
        "ids": sorted(wh.query("select profile_id, created_at from dinmo_identity.people_ids")),
        "profiles": sorted(wh.query("select * from dinmo_identity.people_profiles"), key=str),
    }


def _twins(tmp_path: Path) -> tuple[Project, Warehouse, Project, Warehouse]:
    """Two copies of the project: one resolved incrementally, one from scratch (full runs) each time."""
    out: list = []
    for side in ("incremental", "full"):
        (tmp_path / side).mkdir()
        (tmp_path / side / "dinmo.yaml").write_text(
            project_yaml(f"wh: {{type: duckdb, path: {tmp_path / side / 'wh.duckdb'}}}", "raw")
        )
        project = load_project(tmp_path / side)
        out += [project, warehouse(project)]
    return tuple(out)  # type: ignore[return-value]


def _run(wh: Warehouse, project: Project, mode: str, now: datetime):
    with wh.session():
        for m in ("crm_contacts", "web_signups"):
            refresh_model(wh, project, m)
        result = build_graph(wh, project, "people", now=now, mode=mode)
        build_profiles(wh, project, "people")
    return result


def _same_as_full_runs(tmp_path: Path, states: list[tuple[list[tuple], list[tuple]]]) -> list:
    """Loads each state into both copies, resolves one incrementally and the other with full runs, and checks
    that they leave the same graph, merges, ids and profiles each time; returns the incremental results."""
    inc, inc_wh, full, full_wh = _twins(tmp_path)
    results = []
    for day, (crm, web) in enumerate(states, start=1):
        now = datetime(2025, 1, day)
        for wh in (inc_wh, full_wh):
            load_raw(wh, "raw", crm, web)
        results.append(_run(inc_wh, inc, "auto", now))
        _run(full_wh, full, "full", now)
        assert _snapshot(inc_wh) == _snapshot(full_wh), f"state {day}"
    return results, inc_wh


def _crm(**changes: tuple) -> list[tuple]:
    """CRM with some records replaced (id -> new row) or removed (id -> ())."""
    by_id = {r[0]: r for r in CRM}
    for key, row in changes.items():
        by_id[int(key.removeprefix("r"))] = row
    return [r for r in by_id.values() if r]


def test_incremental_runs_equal_full_runs(tmp_path: Path) -> None:
    """Joins, leaves, an identifier change that splits a profile, a merge keeping the older id, a change of an
    attribute only, and a value crossing its limit: after each, the incremental run leaves exactly what a
    full run on the same data leaves."""
    web_join = [*WEB, ("a7", "bob@Y.com", "Bobby", "Ray", None, "2024-07-01"), ("a8", "new@n.com", None, None,
                                                                                   None, "2024-07-02")]  # fmt: skip
    no_crm5 = _crm(r5=())
    web_leave = [w for w in web_join if w[0] != "a4"]
    ann9_moved = (9, "ann.lee@work.com", "+33699999999", "Ann", "Lee", None, None, "2024-01-10")
    split = _crm(r5=(), r9=ann9_moved)
    linker = (10, None, "06 99 99 99 99", "Ann", "Lee", "75001", 7, "2024-08-01")  # fuzzy to crm 1
    merged = [*split, linker]
    richer = [*[(*r[:6], 999, r[7]) if r[0] == 1 else r for r in merged]]
    bob_shared = [*web_leave, ("a9", "bob@y.com", None, None, None, "2024-09-01")]  # 4 holders > limit 3
    results, wh = _same_as_full_runs(
        tmp_path,
        [
            (CRM, WEB),
            (CRM, web_join),  # a7 joins Bob through e-mail; a8 is new
            (no_crm5, web_leave),  # crm 5 and a4 leave
            (split, web_leave),  # crm 9's phone changes: Ann's profile splits
            (merged, web_leave),  # crm 10 links Ann's two parts again: a merge
            (richer, web_leave),  # an attribute only (ltv): no record changed its keys
            (richer, bob_shared),  # bob@y.com on 4 records: above the limit, it links none
        ],
    )
    assert [(r.mode, r.records_changed) for r in results] == [
        ("full", 0),
        ("incremental", 2),
        ("incremental", 5),  # crm 5 and a4; the family e-mail, now on 3 records, links crm 6, 7 and 8
        ("incremental", 1),
        ("incremental", 1),
        ("incremental", 0),
        ("incremental", 4),  # a9, and the three holders whose e-mail key is now blank
    ]
    assert results[3].merges == [] and results[4].merges == [
        ("phone+last_name", pid("crm_contacts:1"), "p_" + hashlib.md5(
            f"crm_contacts:9|split of {pid('crm_contacts:1')}".encode()).hexdigest()[:20])
    ]  # fmt: skip
    assert wh.query(
        f"select ltv from dinmo_identity.people_profiles where profile_id = '{pid('crm_contacts:1')}'"
    ) == [(999,)]


def test_a_profile_that_splits_keeps_its_id_in_the_part_with_most_records(tmp_path: Path) -> None:
    """Ann's profile is created by crm 9 and a6, then crm 1, 2 and a1 join it; when crm 9's phone changes, the
    profile falls in two parts: the three records keep its id (though crm 9 gave it), crm 9 and a6 get a new
    one, derived from their smallest record id and the profile they split from."""
    ann = [r for r in CRM if r[0] in (1, 2, 9)]
    first = ([r for r in ann if r[0] == 9], [w for w in WEB if w[0] == "a6"])
    joined = (ann, [w for w in WEB if w[0] in ("a1", "a6")])
    moved = (
        [(9, "ann.lee@work.com", "+33699999999", *ann[2][3:]) if r[0] == 9 else r for r in ann],
        joined[1],
    )
    results, wh = _same_as_full_runs(tmp_path, [first, joined, moved])
    old = pid("crm_contacts:9")
    new = "p_" + hashlib.md5(f"crm_contacts:9|split of {old}".encode()).hexdigest()[:20]
    assert groups(wh, "dinmo_identity")[1] == {
        "crm_contacts:1": old,
        "crm_contacts:2": old,
        "web_signups:a1": old,
        "crm_contacts:9": new,
        "web_signups:a6": new,
    }
    assert wh.query("select profile_id, created_at from dinmo_identity.people_ids order by created_at") == [
        (old, datetime(2025, 1, 1)),
        (new, datetime(2025, 1, 3)),
    ]
    assert [(r.mode, r.records_changed, r.new_profiles, r.merges) for r in results] == [
        ("full", 0, 1, []),
        ("incremental", 3, 0, []),
        ("incremental", 1, 1, []),
    ]


def test_full_runs_when_incremental_cannot_be_trusted(
    duck: tuple[Project, Warehouse], tmp_path: Path
) -> None:
    project, wh = duck
    assert _run(wh, project, "auto", datetime(2025, 1, 1)).reason == "first run"
    second = _run(wh, project, "auto", datetime(2025, 1, 2))
    assert (second.mode, second.records_changed, second.links) == ("incremental", 0, 0)
    # a changed rule: the last graph was built by other rules
    text = (tmp_path / "dinmo.yaml").read_text().replace("limits: {email: 3}", "limits: {email: 5}")
    (tmp_path / "dinmo.yaml").write_text(text)
    changed = load_project(tmp_path)
    third = _run(wh, changed, "auto", datetime(2025, 1, 3))
    assert (third.mode, third.reason) == ("full", "the configuration changed")
    # a run that failed half-way (here: its state row is gone) leaves a full run next
    wh.execute("delete from dinmo_identity.people_state")
    assert _run(wh, changed, "auto", datetime(2025, 1, 4)).reason == "the last run did not finish"
    # a survivorship change does not touch the graph: still incremental
    text = text.replace("survivorship: {email: most_recent,", "survivorship: {email: first_seen,")
    (tmp_path / "dinmo.yaml").write_text(text)
    assert _run(wh, load_project(tmp_path), "auto", datetime(2025, 1, 5)).mode == "incremental"
    text = text.replace("    phone_country: FR\n", "    phone_country: FR\n    incremental: false\n")
    (tmp_path / "dinmo.yaml").write_text(text)
    assert _run(wh, load_project(tmp_path), "auto", datetime(2025, 1, 6)).reason == "incremental: false"
