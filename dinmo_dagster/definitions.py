"""The Dagster definitions of the project in ``DINMO_PROJECT_DIR`` (default: the bundled quickstart).

Each module contributes its own ``Definitions``; this one only merges them.
"""

from __future__ import annotations

import dagster as dg

from dinmo_dagster import schedules, sensors
from dinmo_dagster.assets import activations, models
from dinmo_dagster.config import Project, load_project
from dinmo_dagster.resources import build_resources


def build_definitions(project: Project) -> dg.Definitions:
    """Assets, checks, jobs, schedules and resources for one project."""
    return dg.Definitions.merge(
        models.defs(project),
        activations.defs(project),
        schedules.defs(project),
        sensors.defs(project),
        dg.Definitions(resources=build_resources(project)),
    )


defs = build_definitions(load_project())
