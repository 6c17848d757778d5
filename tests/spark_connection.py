"""A local Apache Spark session standing in for a Databricks SQL warehouse, and a stand-in for the
`databricks-sql-connector` driver that runs each statement through ``spark.sql``.

The Databricks source (``dinmo_dagster.warehouses.databricks``) imports ``databricks.sql`` when a
connection opens; :func:`install_driver` puts a module of that name in ``sys.modules`` whose ``connect``
answers like the connector does (PEP 249 cursors, ``description`` tuples of (name, type name, None,
None, precision, scale, nullable), ``fetchall`` and ``fetchmany_arrow``), so the product's own
warehouse class, untouched, generates and runs its SQL on Spark's parser, analyzer and executor.

Table format. Databricks stores tables as Delta Lake. The Delta Lake jars come only from Maven Central
(``delta-spark`` on PyPI is Python only and downloads its jars through Spark's Ivy at start-up), which
these machines and CI cannot reach. Apache Iceberg is the other open table format whose Spark runtime
jar is on PyPI (``snowpark-connect-deps-iceberg``, Apache Iceberg 1.10.2 for Spark 3.5): it gives
Spark the same v2-table statements the product relies on (``CREATE OR REPLACE TABLE``, ``DELETE``,
``UPDATE``, ``ALTER TABLE ... ADD COLUMNS``, views). So the stand-in runs Spark 3.5 with an Iceberg
catalog named ``main`` (the name of the default Unity Catalog catalog) as the default catalog; tables
created without ``USING`` are Iceberg tables there, as they are Delta tables on Databricks. That package
ships Iceberg's runtime jar without the Jackson classes it relocates into ``org.apache.iceberg.shaded``;
:func:`relocated_jackson_jar` makes them from the Jackson jars pyspark ships (a constant-pool rename).

Not Databricks: no Photon, no Unity Catalog ``information_schema``, Spark 3.5's SQL (Databricks SQL is
a superset), Iceberg instead of Delta underneath. What runs here is the SQL text the product sends.
"""

from __future__ import annotations

import os
import shutil
import struct
import sys
import time
import types
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa

CATALOG = "main"
"""The Iceberg catalog standing in for the workspace's default Unity Catalog catalog."""

TOKEN = "dapi-spark-stand-in-token"
"""The only access token the stand-in driver accepts."""


def skip_reason() -> str | None:
    """Why Spark cannot run here (no Java, no pyspark, no Iceberg jar), or None."""
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        return "Spark tests need Java 17 (java not found on PATH and JAVA_HOME unset)"
    try:
        import pyspark  # noqa: F401
        import snowpark_connect_deps_iceberg  # noqa: F401
    except ImportError as exc:
        return f"Spark tests need the test extra (pip install -e '.[test]'): {exc}"
    return None


# ------------------------------------------------------------------------------ Iceberg's Jackson classes

_OLD, _NEW = b"com/fasterxml/jackson", b"org/apache/iceberg/shaded/com/fasterxml/jackson"
_OLD_DOTS, _NEW_DOTS = b"com.fasterxml.jackson", b"org.apache.iceberg.shaded.com.fasterxml.jackson"
# size of each constant-pool entry after its tag (JVM spec 4.4), but Utf8 (1), which carries its length
_CP_SIZES = {3: 4, 4: 4, 5: 8, 6: 8, 7: 2, 8: 2, 9: 4, 10: 4, 11: 4, 12: 4, 15: 3, 16: 2, 17: 4, 18: 4, 19: 2,
             20: 2}  # fmt: skip


def _rename(text: bytes) -> bytes:
    return text.replace(_OLD, _NEW).replace(_OLD_DOTS, _NEW_DOTS)


def _relocate_class(data: bytes) -> bytes:
    """A class file with every Jackson name in its constant pool moved under Iceberg's shaded package."""
    count = struct.unpack(">H", data[8:10])[0]
    out, i, k = [data[:10]], 10, 1
    while k < count:
        tag = data[i]
        if tag == 1:
            n = struct.unpack(">H", data[i + 1 : i + 3])[0]
            text = _rename(data[i + 3 : i + 3 + n])
            out.append(b"\x01" + struct.pack(">H", len(text)) + text)
            i += 3 + n
        else:
            out.append(data[i : i + 1 + _CP_SIZES[tag]])
            i += 1 + _CP_SIZES[tag]
        k += 2 if tag in (5, 6) else 1  # long and double take two slots
    out.append(data[i:])
    return b"".join(out)


def relocated_jackson_jar(directory: Path) -> Path:
    """The Jackson jars pyspark ships, relocated to ``org.apache.iceberg.shaded.com.fasterxml.jackson``."""
    import pyspark

    target = directory / "iceberg-shaded-jackson.jar"
    jars = Path(pyspark.__file__).parent / "jars"
    sources = [next(jars.glob(f"jackson-{name}-2.*.jar")) for name in ("core", "databind", "annotations")]
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as out:
        for source in sources:
            with zipfile.ZipFile(source) as jar:
                for info in jar.infolist():
                    name = info.filename
                    if (
                        info.is_dir()
                        or name.endswith("module-info.class")
                        or name.startswith("META-INF/versions")
                    ):
                        continue
                    if name.startswith("META-INF/") and not name.startswith("META-INF/services/"):
                        continue
                    data = jar.read(name)
                    if name.endswith(".class"):
                        data = _relocate_class(data)
                    elif name.startswith("META-INF/services/"):
                        data = _rename(data)
                    out.writestr(_rename(name.encode()).decode(), data)
    return target


# ------------------------------------------------------------------------------ the Spark session


def start_spark(directory: Path) -> Any:
    """A local Spark session (one core, one shuffle partition, no UI) with the Iceberg catalog ``main``
    (in memory, data files under ``directory``) as its default catalog."""
    import snowpark_connect_deps_iceberg
    from pyspark.sql import SparkSession

    runtime = next(
        p
        for p in snowpark_connect_deps_iceberg.list_jars()
        if p.name.startswith("iceberg-spark-runtime-3.5_2.12")
    )
    jars = [str(runtime), str(relocated_jackson_jar(directory))]
    catalog = f"spark.sql.catalog.{CATALOG}"
    spark = (
        SparkSession.builder.master("local[2]")
        .appName("dinmo-databricks-stand-in")
        .config("spark.jars", ",".join(jars))
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", "1")
        .config("spark.default.parallelism", "1")
        # small statements on small tables: query planning, not execution, is the cost to cut
        .config("spark.sql.adaptive.enabled", "false")
        .config("spark.sql.codegen.wholeStage", "false")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.driver.extraJavaOptions", "-Duser.timezone=UTC")
        .config("spark.sql.warehouse.dir", str(directory / "spark-warehouse"))
        .config("spark.sql.extensions", "org.apache.iceberg.spark.extensions.IcebergSparkSessionExtensions")
        .config(catalog, "org.apache.iceberg.spark.SparkCatalog")
        .config(f"{catalog}.catalog-impl", "org.apache.iceberg.inmemory.InMemoryCatalog")
        .config(f"{catalog}.warehouse", str(directory / "iceberg"))
        .config("spark.sql.defaultCatalog", CATALOG)
        # Databricks SQL warehouses run with ANSI mode on (a failing cast is an error, not a NULL)
        .config("spark.sql.ansi.enabled", "true")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    return spark


# ------------------------------------------------------------------------------ the driver stand-in


class ServerOperationError(Exception):
    """What databricks-sql-connector raises for a statement the warehouse rejects."""


class RequestError(Exception):
    """What databricks-sql-connector raises when the request itself fails (here: a wrong token)."""


def _arrow_of(df: Any) -> pa.Table:
    """All rows of a Spark DataFrame as one Arrow table (Spark's own Arrow conversion)."""
    from pyspark.sql.pandas.types import to_arrow_schema

    schema = to_arrow_schema(df.schema)
    if hasattr(df, "toArrow"):  # Spark 4
        return df.toArrow()
    batches = df._collect_as_arrow()  # Spark 3.5: the conversion behind toPandas
    return pa.Table.from_batches(batches, schema=schema) if batches else schema.empty_table()


class Cursor:
    """A databricks-sql-connector cursor over ``spark.sql``."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.description: list[tuple] | None = None
        self._result: pa.Table | None = None
        self._offset = 0

    def __enter__(self) -> Cursor:  # noqa: PYI034 - the connector's cursor is not subclassed
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def execute(self, operation: str, parameters: Any = None) -> Cursor:
        if parameters:
            raise ServerOperationError("the stand-in takes no statement parameters")
        self.connection.log.append(operation)
        started = time.perf_counter()
        try:
            df = self.connection.session.sql(operation)
            result = _arrow_of(df) if df.columns else None
        except Exception as exc:  # noqa: BLE001 - Spark's error, as the connector reports the server's
            raise ServerOperationError(str(exc).split("\nJVM stacktrace:")[0]) from None
        finally:
            self.connection.timings.append((time.perf_counter() - started, operation))
        self._result, self._offset = result, 0
        self.description = None if result is None else [
            (f.name, f.dataType.simpleString(), None, None, getattr(f.dataType, "precision", None),
             getattr(f.dataType, "scale", None), f.nullable)
            for f in df.schema.fields
        ]  # fmt: skip
        return self

    def _take(self, size: int) -> pa.Table:
        if self._result is None:
            raise ServerOperationError("no result set: the statement returned no rows")
        part = self._result.slice(self._offset, size)
        self._offset += part.num_rows
        return part

    def fetchall(self) -> list[tuple]:
        return [tuple(row.values()) for row in self._take(sys.maxsize).to_pylist()]

    def fetchmany(self, size: int = 1) -> list[tuple]:
        return [tuple(row.values()) for row in self._take(size).to_pylist()]

    def fetchmany_arrow(self, size: int) -> pa.Table:
        return self._take(size)

    def fetchall_arrow(self) -> pa.Table:
        return self._take(sys.maxsize)

    def close(self) -> None:
        self._result = None


class Connection:
    """A databricks-sql-connector connection on the one Spark session.

    Not ``spark.newSession()``: a new session has catalogs of its own, and the in-memory Iceberg catalog
    would then hold other tables. So a connection's ``catalog`` and ``schema`` stay the session's current
    ones after it closes (the product always names the schema it means).
    """

    def __init__(self, spark: Any, log: list[str], timings: list[tuple[float, str]], catalog: str | None,
                 schema: str | None) -> None:  # fmt: skip
        self.session = spark
        self.log = log
        self.timings = timings
        self.closed = False
        if catalog:
            self.session.sql(f"USE `{catalog}`")  # Spark 3.5 has no USE CATALOG: a catalog name is enough
        if schema:
            self.session.sql(f"USE `{schema}`")

    def cursor(self) -> Cursor:
        if self.closed:
            raise ServerOperationError("connection is closed")
        return Cursor(self)

    def close(self) -> None:
        self.closed = True


class Driver:
    """The ``databricks.sql`` module of the stand-in: ``connect`` checks the token and opens a Connection."""

    def __init__(self, spark: Any) -> None:
        self.spark = spark
        self.log: list[str] = []
        self.timings: list[tuple[float, str]] = []  # (seconds, statement), to see where the time goes
        self.connections = 0

    def connect(self, *, server_hostname: str, http_path: str, access_token: str, catalog: str | None = None,
                schema: str | None = None, **_: Any) -> Connection:  # fmt: skip
        if access_token != TOKEN:
            # the connector's answer to a rejected token (HTTP 403 from the workspace), without the token
            raise RequestError(f"Error during request to server: 403 Forbidden: Invalid access token "
                               f"({server_hostname}{http_path})")  # fmt: skip
        self.connections += 1
        return Connection(self.spark, self.log, self.timings, catalog, schema)


@contextmanager
def install_driver(spark: Any) -> Iterator[Driver]:
    """``databricks.sql`` answers from ``spark`` inside the block; the modules are restored after it."""
    driver = Driver(spark)
    package = types.ModuleType("databricks")
    module = types.ModuleType("databricks.sql")
    module.connect = driver.connect  # type: ignore[attr-defined]
    package.sql = module  # type: ignore[attr-defined]
    package.__path__ = []  # type: ignore[attr-defined]  # a package, so `from databricks import sql` works
    saved = {name: sys.modules.get(name) for name in ("databricks", "databricks.sql")}
    sys.modules.update({"databricks": package, "databricks.sql": module})
    try:
        yield driver
    finally:
        for name, previous in saved.items():
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous
