"""Local fakes of API platforms, written from each platform's documentation (not from our clients).

``dinmo demo`` and ``dinmo ui`` serve the HubSpot fake for the quickstart's ``crm`` destination (see
:mod:`dinmo_dagster.fakes.local` for when); the tests use it too. Standard library only.
"""
