"""Moved to ``dinmo_dagster.fakes.hubspot`` (``dinmo demo`` serves it); re-exported here so the tests'
``from fakes.hubspot import FakeHubSpot`` keeps working."""

from dinmo_dagster.fakes.hubspot import DEFAULT_SCHEMAS, MAX_INPUTS, FakeHubSpot

__all__ = ["DEFAULT_SCHEMAS", "MAX_INPUTS", "FakeHubSpot"]
