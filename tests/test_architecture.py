"""The shape of the package: the engine runs without Dagster, and no module imports itself in a loop."""

from __future__ import annotations

import subprocess
import sys

ENGINE = ["config", "delta", "state", "sync", "writers", "naming", "filters", "platforms"]
# the connectors: registry, secrets, every built-in warehouse and file destination
ENGINE += ["connectors", "secrets", "warehouses", "destinations"] + [
    f"warehouses.{m}" for m in ("duckdb", "postgres", "redshift", "snowflake", "bigquery", "databricks")
] + ["destinations.gcs", "destinations.local"]
# model and segment SQL, schedule options, segment and key statistics
ENGINE += ["compile", "recurrence", "stats"]


def test_the_engine_imports_without_dagster() -> None:
    code = (
        "import sys\n"
        + "".join(f"import dinmo_dagster.{m}\n" for m in ENGINE)
        + "loaded = sorted(m for m in sys.modules if m == 'dagster' or m.startswith('dagster.'))\n"
        + "print(len(loaded))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0"


def test_no_module_imports_the_package_from_inside_a_function() -> None:
    """Function-level imports of our own modules only ever hide an import cycle."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "dinmo_dagster"
    found = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dinmo_dagster"):
                    found.append(f"{path.relative_to(root.parent)}:{node.lineno} from {node.module}")
                elif isinstance(node, ast.Import) and any(a.name.startswith("dinmo_dagster") for a in node.names):
                    found.append(f"{path.relative_to(root.parent)}:{node.lineno} import")
    assert found == []
