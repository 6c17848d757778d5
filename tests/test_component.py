"""``dinmo_dagster.DinmoComponent`` in a ``dg`` project, driven by the real ``dg`` command line (dagster-dg-cli):
``dg check yaml``, ``dg list defs`` and ``dg launch`` as subprocesses, as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import duckdb

from dinmo_dagster.cli import main

DG = Path(sys.executable).parent / "dg"


def _dg_project(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A dg project written by hand (what `dg scaffold project` lays out, without installing it: its ``src``
    goes on PYTHONPATH), embedding the dinmo project ``crm`` that `dinmo init` makes."""
    root = tmp_path / "acme"
    package = root / "src" / "acme"
    (package / "defs" / "dinmo").mkdir(parents=True)
    (root / "pyproject.toml").write_text(
        textwrap.dedent("""
        [project]
        name = "acme"
        version = "0.1.0"
        requires-python = ">=3.10"
        dependencies = ["dinmo-dagster"]

        [tool.dg]
        directory_type = "project"

        [tool.dg.project]
        root_module = "acme"
        """)
    )
    (package / "__init__.py").write_text("")
    (package / "defs" / "__init__.py").write_text("")
    (package / "definitions.py").write_text(
        textwrap.dedent("""
        from pathlib import Path

        import dagster as dg


        @dg.definitions
        def defs() -> dg.Definitions:
            return dg.load_from_defs_folder(path_within_project=Path(__file__).parent.parent.parent)
        """)
    )
    (package / "defs" / "dinmo" / "defs.yaml").write_text(
        textwrap.dedent("""
        type: dinmo_dagster.DinmoComponent
        attributes:
          project_dir: "{{ project_root }}/crm"
        """)
    )
    assert main(["init", str(root / "crm")]) == 0
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {
        **os.environ,
        "PATH": f"{DG.parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "DAGSTER_HOME": str(home),
        "PYTHONPATH": str(root / "src"),
        "NO_COLOR": "1",
        "COLUMNS": "200",
    }
    return root, env


def _dg(root: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(
        [str(DG), *args], check=False, cwd=root, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, f"dg {' '.join(args)}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


def test_a_dg_project_embeds_a_dinmo_project_checks_lists_and_launches_it(tmp_path: Path) -> None:
    root, env = _dg_project(tmp_path)

    assert "All component YAML validated successfully." in _dg(root, env, "check", "yaml").stdout

    listed = json.loads(_dg(root, env, "list", "defs", "--json").stdout)
    assert sorted(a["asset_key"] for a in listed["assets"]) == [
        "activations/high_value_files",
        "models/customers",
        "segments/high_value",
        "snapshots/high_value_files",
        "sources/warehouse/raw/customers",
    ]
    assert [j["name"] for j in listed["jobs"]] == ["sync_high_value_files"]

    # in one process: the default executor would start a process per step
    run = _dg(
        root,
        env,
        "launch",
        "--assets",
        "models/customers",
        "--config-json",
        json.dumps({"execution": {"config": {"in_process": {}}}}),
    )
    assert "RUN_SUCCESS" in run.stdout + run.stderr
    with duckdb.connect(str(root / "crm" / "data" / "warehouse.duckdb"), read_only=True) as con:
        assert con.execute(
            "select customer_id from dinmo_segments.model_customers order by 1"
        ).fetchall() == [(1,), (2,), (3,), (4,)]
