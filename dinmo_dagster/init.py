"""``dinmo init [DIR] --source TYPE``: a new project that validates as it is.

It writes ``DIR/dinmo.yaml`` with the chosen source (its secrets as ``{env: NAME}``, never a value), one
model (``customers``), one segment (``high_value``) and one activation (``high_value_files``) to a local
folder, so nothing but the warehouse needs credentials. For ``duckdb`` it also creates
``data/warehouse.duckdb`` with a small ``raw.customers`` table, so ``dinmo sync high_value_files`` runs at
once; for the other warehouses, point ``models.customers.table`` at a table of yours with these columns
(or edit the columns) and set the variables. The file's first line points editors at the JSON Schema the
package ships (``schema.py``). An existing ``dinmo.yaml`` is never overwritten.

Plain Python: DuckDB is imported only to create the sample table.
"""

from __future__ import annotations

from pathlib import Path

from dinmo_dagster.schema import SCHEMA_FILE

__all__ = ["SOURCES", "InitError", "init_project"]

# The source entry of each warehouse type: connection settings as placeholders, secrets as {env: NAME}.
SOURCES: dict[str, str] = {
    "duckdb": "  warehouse: {type: duckdb, path: data/warehouse.duckdb}\n",
    "postgres": """  warehouse:
    type: postgres
    host: localhost
    port: 5432
    database: analytics
    user: {env: DINMO_POSTGRES_USER}
    password: {env: DINMO_POSTGRES_PASSWORD}
""",
    "snowflake": """  warehouse:
    type: snowflake
    account: {env: DINMO_SNOWFLAKE_ACCOUNT}     # e.g. myorg-myaccount
    user: {env: DINMO_SNOWFLAKE_USER}
    private_key: {env: DINMO_SNOWFLAKE_PRIVATE_KEY}   # or password: {env: ...}
    database: ANALYTICS
    warehouse: COMPUTE_WH
""",
    "bigquery": """  warehouse:
    type: bigquery
    project: my-gcp-project
    location: EU
    service_account_json: {env: DINMO_BIGQUERY_SERVICE_ACCOUNT_JSON}   # none: Application Default Credentials
""",
    "redshift": """  warehouse:
    type: redshift
    host: my-cluster.abc123.eu-west-1.redshift.amazonaws.com
    port: 5439
    database: analytics
    user: {env: DINMO_REDSHIFT_USER}
    password: {env: DINMO_REDSHIFT_PASSWORD}
""",
    "databricks": """  warehouse:
    type: databricks
    server_hostname: dbc-12345678-9abc.cloud.databricks.com
    http_path: /sql/1.0/warehouses/0123456789abcdef
    access_token: {env: DINMO_DATABRICKS_TOKEN}
    catalog: main
""",
}

_PROJECT = """# yaml-language-server: $schema={schema}
# A dinmo-dagster project created by `dinmo init --source {source}`. Check it with `dinmo validate`
# (`--connect` also connects to the warehouse), then sync with `dinmo sync high_value_files`.{note}
sources:
{source_entry}
models:
  customers:
    source: warehouse
    description: One row per customer.
    table: {table}
    primary_key: customer_id
    order_by: updated_at
    identifiers: [email]
    categorical: [country]

segments:
  high_value:
    model: customers
    description: Customers whose lifetime value is above 100.
    sql: "select * from {{{{ model }}}} where ltv > 100"

destinations:
  files:
    type: local
    path: exports

activations:
  high_value_files:
    segment: high_value
    destination: files
    folder: high_value
    file_name: "high_value_{{YYYY}}{{MM}}{{DD}}_{{HH}}{{mm}}{{ss}}"
    format: csv
    mapping: {{customer_id: id, email: email, country: country, ltv: lifetime_value}}
    sync_mode: snapshot
    # schedule: {{every: 1 day, at: "06:30", timezone: Europe/Paris}}
"""

_NOTE = (
    "\n# Set the variables named {{env: ...}} below, and point models.customers.table at your customers "
    "table\n# (columns customer_id, email, country, ltv, updated_at)."
)

_SAMPLE_ROWS = [
    (1, "ada@example.com", "FR", 540.0, "2026-01-05 09:00:00"),
    (2, "bob@example.com", "DE", 80.0, "2026-01-06 10:30:00"),
    (3, "chloe@example.com", "FR", 125.5, "2026-01-07 11:15:00"),
    (4, "dan@example.com", "US", 20.0, "2026-01-08 16:45:00"),
]


class InitError(Exception):
    """The project cannot be created (a ``dinmo.yaml`` is already there, an unknown source type)."""


def init_project(directory: str | Path, source: str) -> list[Path]:
    """Create the project in ``directory`` (created when missing); returns the files written."""
    if source not in SOURCES:
        raise InitError(f"unknown source type '{source}'; allowed: {', '.join(SOURCES)}")
    root = Path(directory).expanduser().resolve()
    target = root / "dinmo.yaml"
    if target.exists():
        raise InitError(
            f"{target} already exists; not overwriting it (remove it or choose another directory)"
        )
    root.mkdir(parents=True, exist_ok=True)
    table = "raw.customers" if source in ("duckdb", "postgres", "redshift") else "analytics.customers"
    text = _PROJECT.format(
        schema=SCHEMA_FILE.as_uri(),
        source=source,
        source_entry=SOURCES[source].rstrip("\n"),
        table=table,
        note="" if source == "duckdb" else _NOTE,
    )
    written = []
    if source == "duckdb":
        written.append(_sample_warehouse(root / "data" / "warehouse.duckdb"))
    with target.open("x", encoding="utf-8") as f:  # "x": never replace a file created meanwhile
        f.write(text)
    return [target, *written]


def _sample_warehouse(path: Path) -> Path:
    """A DuckDB file with ``raw.customers`` (four rows), unless the file is already there."""
    if path.exists():
        return path
    import duckdb

    path.parent.mkdir(parents=True, exist_ok=True)
    with duckdb.connect(str(path)) as con:
        con.execute("create schema raw")
        con.execute(
            "create table raw.customers (customer_id integer primary key, email varchar, "
            "country varchar, ltv double, updated_at timestamp)"
        )
        con.executemany("insert into raw.customers values (?, ?, ?, ?, ?)", _SAMPLE_ROWS)
    return path
