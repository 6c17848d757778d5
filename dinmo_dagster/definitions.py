"""The Dagster definitions of the project in ``DINMO_PROJECT_DIR`` (default: the bundled quickstart).

Each module contributes its own ``Definitions``; this one only merges them. A project of your own, or
asset keys and groups of your own, go through ``build_definitions``::

    defs = build_definitions(load_project("path/to/project"), translator=MyTranslator())
"""

from __future__ import annotations

import dagster as dg

from dinmo_dagster import schedules, sensors
from dinmo_dagster.assets import activations, identity, models, predictions
from dinmo_dagster.config import Project, load_project
from dinmo_dagster.resources import build_resources
from dinmo_dagster.sensors import alerts as sensor_alerts
from dinmo_dagster.translator import DinmoTranslator


def build_definitions(project: Project, translator: DinmoTranslator | None = None) -> dg.Definitions:
    """Assets, checks, jobs, schedules, sensors and resources for one project.

    ``translator`` gives every asset its key, group, kinds, description, tags and metadata (default:
    ``DinmoTranslator()``, the keys ``models/M``, ``segments/S``, ``snapshots/A``, ``activations/A``).
    """
    translator = translator or DinmoTranslator()
    return dg.Definitions.merge(
        models.defs(project, translator),
        identity.defs(project, translator),
        predictions.defs(project, translator),
        activations.defs(project, translator),
        schedules.defs(project),
        sensors.defs(project, translator),
        sensor_alerts.defs(project),
        dg.Definitions(resources=build_resources(project)),
    )


def sync_definitions(project: Project, activation: str, translator: DinmoTranslator | None = None) -> dg.Definitions:
    """What one ``dinmo sync`` of ``activation`` runs: the models and segments (with their checks), the
    activation's snapshot and delivery assets, its job ``sync_<activation>`` and the resources.

    The job and its run are those of ``build_definitions``; the other activations, the schedules and
    the sensors are left out: a one-off sync runs none of them, and building them costs about 10 ms per
    activation.
    """
    translator = translator or DinmoTranslator()
    return dg.Definitions.merge(
        models.defs(project, translator),
        identity.defs(project, translator),
        activations.defs(project, translator, only=[activation]),
        dg.Definitions(resources=build_resources(project)),
    )


@dg.definitions
def defs() -> dg.Definitions:
    """The project in ``DINMO_PROJECT_DIR``, loaded when Dagster loads this module's definitions (not on
    import: the CLI imports ``build_definitions`` for other projects).

    Runs of a selection of assets (the UI's "Materialize", `dagster asset materialize`) execute their
    steps in the run's own process, like the sync jobs: the work is in the warehouse, and a process per
    step costs an import of Dagster and the project apiece (a 10-row chain: 47 s against 8 s). Runs of
    several activations run their steps one after the other; the schedules and sensors run each
    activation in a run of its own, which the run queue runs side by side. ``build_definitions`` leaves
    the executor to whoever merges its definitions (a `dg` project's components).
    """
    return dg.Definitions.merge(build_definitions(load_project()), dg.Definitions(executor=dg.in_process_executor))
