"""Moved to ``dinmo_dagster.fakes.server`` (``dinmo demo`` ships the HubSpot fake); re-exported here so
the tests' ``from fakes.server import ...`` keeps working."""

from dinmo_dagster.fakes.server import App, FakeRequest, FakeResponse, FakeServer, ServedFake, _FakeHandler

__all__ = ["App", "FakeRequest", "FakeResponse", "FakeServer", "ServedFake", "_FakeHandler"]
