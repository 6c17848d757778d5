"""Google BigQuery: the helper schemas are datasets of the source's project.

The Google clients are imported when a connection opens (they take about a second to import).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar, Literal

import pyarrow as pa
from sqlglot import exp

from dinmo_dagster.connectors import register_warehouse
from dinmo_dagster.secrets import Secret, decode_base64_text
from dinmo_dagster.warehouses.base import (
    SourceConfig,
    Warehouse,
    WarehouseError,
    split_batch,
    strip_statement,
)


class BigQuerySource(SourceConfig):
    """``{type: bigquery, project, location, service_account_json: {env: NAME} | service_account_file, dataset}``."""

    path_fields: ClassVar[tuple[str, ...]] = ("service_account_file",)

    type: Literal["bigquery"]
    project: str
    """Project that runs the jobs and holds the helper datasets."""
    location: str | None = None
    """Location of the jobs and of the helper datasets (EU, US, europe-west1...)."""
    service_account_json: Secret | None = None
    """Service account key: the JSON text, or that JSON base64-encoded. Without it (and without
    service_account_file), Application Default Credentials are used."""
    service_account_file: str | None = None
    """Path of a service account key file (instead of service_account_json)."""
    dataset: str | None = None
    """Dataset of unqualified table names (the jobs' default dataset)."""


class BigQueryWarehouse(Warehouse):
    """A Google BigQuery project; helper schemas are datasets of `project`."""

    dialect: ClassVar[str] = "bigquery"
    source_type: ClassVar[str] = "bigquery"

    config: BigQuerySource

    def _target(self) -> str:
        location = self._value("location")
        return f"project {self._value('project')}" + (f" ({location})" if location else "")

    def _configured_schema(self) -> str | None:
        return self._value("dataset")

    def _catalog_prefix(self) -> str | None:
        return self._value("project")

    def _ident(self, name: str) -> exp.Identifier:
        # BigQuery dataset and table names are case-sensitive: never normalised
        return exp.Identifier(this=name, quoted=True)

    def _name_value(self, ident: exp.Identifier) -> str:
        return ident.name

    def _credentials(self) -> Any:
        from google.oauth2 import service_account  # Google client: import cost only

        key = self._value("service_account_json")
        path = self._value("service_account_file")
        if key and path:
            raise WarehouseError(
                self._prefix() + "give service_account_json or service_account_file, not both"
            )
        if path:
            return service_account.Credentials.from_service_account_file(path)
        if not key:
            return None

        text = key.strip()
        if not text.startswith("{"):
            text = decode_base64_text(text) or ""
        try:
            info = json.loads(text)
        except ValueError:
            raise WarehouseError(
                self._prefix() + "service_account_json is neither a JSON key nor a base64-encoded JSON key"
            ) from None
        return service_account.Credentials.from_service_account_info(info)

    @contextmanager
    def _open(self) -> Iterator[Any]:
        """A `google.cloud.bigquery.Client`.

        With a key, the credentials are built in memory (dagster_gcp's `gcp_credentials` would
        write the key to a temporary file and set GOOGLE_APPLICATION_CREDENTIALS process-wide);
        without one, `dagster_gcp.BigQueryResource` builds the client from the environment.
        """
        credentials = self._credentials()
        if credentials is not None:
            from google.cloud import bigquery  # Google client: import cost only

            client = bigquery.Client(
                project=self._value("project"), location=self._value("location"), credentials=credentials
            )
            try:
                yield client
            finally:
                client.close()
        else:
            # Application Default Credentials, as dagster-gcp finds them (imported on use: import cost)
            from dagster_gcp import BigQueryResource

            resource = BigQueryResource(project=self._value("project"), location=self._value("location"))
            with resource.get_client() as client:
                try:
                    yield client
                finally:
                    client.close()

    def _job_config(self, **kwargs: Any) -> Any:
        from google.cloud import bigquery  # Google client: import cost only

        dataset = self._value("dataset")
        if dataset:
            kwargs["default_dataset"] = f"{self._value('project')}.{dataset}"
        return bigquery.QueryJobConfig(**kwargs)

    def _run_statements(self, conn: Any, statements: list[str]) -> None:
        script = ";\n".join(strip_statement(s) for s in statements)
        conn.query(script, job_config=self._job_config()).result()

    def query(self, sql: str) -> list[tuple]:
        with self._connection() as client, self._wrap("query failed"):
            return [tuple(row.values()) for row in client.query(sql, job_config=self._job_config()).result()]

    def _create_schema(self, schema: str) -> exp.Create:
        create = super()._create_schema(schema)
        location = self._value("location")
        if location:
            create.set(
                "properties",
                exp.Properties(
                    expressions=[exp.Property(this=exp.var("location"), value=exp.Literal.string(location))]
                ),
            )
        return create

    def _information_schema_columns(self, catalog: exp.Identifier | None) -> exp.Table:
        raise NotImplementedError  # BigQuery's INFORMATION_SCHEMA is per dataset: see _columns_query

    def _columns_query(
        self, catalog: exp.Identifier | None, db: exp.Identifier | None, name: exp.Identifier
    ) -> str:
        project = catalog.name if catalog is not None else self._value("project")
        dataset = (db if db is not None else self._default_schema_ident()).name
        columns = exp.Table(
            this=exp.to_identifier("COLUMNS"),
            db=exp.to_identifier("INFORMATION_SCHEMA"),
            catalog=exp.Identifier(this=f"{project}.{dataset}", quoted=True),
        )
        query = (
            exp.select("column_name", "data_type", exp.null(), exp.null())
            .from_(columns)
            .where(exp.EQ(this=exp.column("table_name"), expression=exp.Literal.string(name.name)))
            .order_by("ordinal_position")
        )
        return self._render(query)

    def query_columns(self, sql: str) -> list[str]:
        """A dry-run job: BigQuery returns the result schema without running the query."""
        with self._connection() as client, self._wrap("query failed"):
            job = client.query(sql, job_config=self._job_config(dry_run=True, use_query_cache=False))
            return [field.name for field in job.schema]

    def check_connection(self) -> None:
        with self._connection() as client, self._wrap(f"cannot connect to {self._target()}"):
            client.query("SELECT 1", job_config=self._job_config()).result()

    def _bqstorage_client(self, client: Any) -> Any:
        """A BigQuery Storage Read API client when google-cloud-bigquery-storage is installed."""
        try:
            from google.cloud import bigquery_storage  # optional Google client
        except ImportError:
            return None
        return bigquery_storage.BigQueryReadClient(credentials=client._credentials)

    @contextmanager
    def stream(self, sql: str, batch_rows: int = 100_000) -> Iterator[pa.RecordBatchReader]:
        """Result pages as Arrow batches (Storage Read API when available, else REST pages)."""
        from google.cloud.bigquery import _pandas_helpers  # Google client: import cost only

        with self._connection() as client:
            with self._wrap("query failed"):
                rows = client.query(sql, job_config=self._job_config()).result(page_size=batch_rows)
                source = iter(rows.to_arrow_iterable(bqstorage_client=self._bqstorage_client(client)))
                first = next(source, None)
                if first is not None:
                    schema = first.schema
                else:
                    schema = _pandas_helpers.bq_to_arrow_schema(rows.schema) or pa.schema([])

            def batches() -> Iterator[pa.RecordBatch]:
                batch = first
                while batch is not None:
                    yield from split_batch(batch, batch_rows)
                    with self._wrap("streaming the result failed"):
                        batch = next(source, None)

            yield pa.RecordBatchReader.from_batches(schema, batches())


register_warehouse("bigquery", BigQuerySource, BigQueryWarehouse)
