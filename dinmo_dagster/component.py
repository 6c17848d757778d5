"""``DinmoComponent``: a dinmo project as a Dagster Component, for projects laid out with ``dg``.

A ``dg`` project (``dg scaffold project``) loads the components declared under its ``defs`` folder. One
``defs.yaml`` embeds a whole dinmo project (its models, segments, activations, jobs, schedules, sensors
and resources, as ``dinmo_dagster.definitions.build_definitions`` makes them)::

    # src/my_project/defs/dinmo/defs.yaml
    type: dinmo_dagster.DinmoComponent
    attributes:
      project_dir: crm            # the directory holding dinmo.yaml (or a YAML file)

A relative ``project_dir`` is relative to the folder of that ``defs.yaml``; Dagster's templates work too
(``"{{ project_root }}/dinmo"``). ``dg check yaml`` checks the attributes against this class, ``dg check
defs`` and ``dg list defs`` load the project (an invalid project fails with every problem ``dinmo validate``
prints), ``dg launch --assets models/customers`` runs it. The package registers this module's class with
``dg`` through the ``dagster_dg_cli.registry_modules`` entry point, so ``dg list components`` shows it.

Dagster 1.13's components API: ``dg.Component`` with ``dg.Model`` (pydantic) and ``dg.Resolvable``
attributes, ``build_defs(context)`` returning the ``Definitions``
(https://docs.dagster.io/guides/build/components/creating-new-components/creating-and-registering-a-component).
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
from pydantic import Field

from dinmo_dagster.config import ProjectError, load_project
from dinmo_dagster.definitions import build_definitions

__all__ = ["DinmoComponent"]


class DinmoComponent(dg.Component, dg.Model, dg.Resolvable):
    """A dinmo-dagster project (``dinmo.yaml``): its models, segments, activations, jobs, schedules,
    sensors and resources."""

    project_dir: str = Field(
        description="The dinmo project: a directory of YAML files (dinmo.yaml) or one YAML file; relative to "
        "the folder of this defs.yaml."
    )

    def project_path(self, context: dg.ComponentLoadContext) -> Path:
        """``project_dir`` made absolute against the folder of the component's ``defs.yaml``."""
        path = Path(self.project_dir).expanduser()
        if path.is_absolute():
            return path
        here = context.path if context.path.is_dir() else context.path.parent
        return (here / path).resolve()

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        path = self.project_path(context)
        try:
            project = load_project(path)
        except ProjectError as exc:  # every problem, as `dinmo validate` prints them, without a traceback
            raise dg.DagsterInvalidDefinitionError(
                f"dinmo project {path} is invalid:\n" + "\n".join(f"  {p}" for p in exc.problems)
            ) from None
        return build_definitions(project)
