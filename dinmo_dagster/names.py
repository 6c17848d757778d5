"""Every name the project takes in Dagster, in one place.

| what | name |
|---|---|
| a model's source table (external asset) | ``sources/<source>/<schema>/<table>``, each part through ``key_part`` |
| model ``M`` / segment ``S`` | ``models/M`` / ``segments/S`` |
| prediction set ``V``: training / scores (models ``predictions.V``, ``predictions.V_recommendations``) | ``predictions/V`` / ``predictions/V/scores`` |
| identity space ``P``: graph / profiles (models ``identity.P_graph`` / ``identity.P``) | ``identity/P/graph`` / ``identity/P/profiles`` |
| their primary-key check | ``primary_key_unique`` |
| the op (step) of each asset | its default key as an identifier: ``models__M``, ``activations__A`` ... |
| activation ``A``: snapshot / delivery | ``snapshots/A`` / ``activations/A`` |
| their dynamic partitions (one per sync) | ``sync_A`` |
| their concurrency pool | ``dinmo_activation_A`` |
| the job of one sync of ``A`` | ``sync_A`` |
| the job refreshing a materialized model ``M`` | ``refresh_model_M`` |
| schedules | ``A_schedule``, ``model_M_refresh`` |
| sensors | ``A_source_change``, ``dinmo_validation``, ``dinmo_pause_after_failures`` |
| run tags | ``dinmo/activation``, ``dinmo/trigger``, ``dinmo/owner``, ``dinmo/paused`` |

The asset keys here are the defaults: ``DinmoTranslator`` (``translator.py``) hands them out, and a
subclass of it can re-prefix or rename them. Resource keys (``source_<name>``, ``destination_<name>``) are
in ``resources/``.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

import dagster as dg

# Run tags.
ACTIVATION_TAG = "dinmo/activation"  # every run of a sync; the instance limits runs per value
TRIGGER_TAG = "dinmo/trigger"  # what started a sync: cli, schedule, source_change
OWNER_TAG = "dinmo/owner"  # host:pid of the process running a `dinmo sync`, to reap it once dead
PAUSED_TAG = "dinmo/paused"  # set on the failed run that paused its activation

KEY_CHECK = "primary_key_unique"
VALIDATION_SENSOR = "dinmo_validation"
FAILURE_SENSOR = "dinmo_pause_after_failures"

_DAGSTER_NAME_RE = re.compile(r"^[A-Za-z0-9_]+$")


def key_part(name: str) -> str:
    """``name`` as an asset key part Dagster accepts (``[A-Za-z0-9_]``, which op and input names need).

    A name made of those characters is kept as it is. Any other name has each run of other characters
    replaced by ``_`` (accents dropped first) and the first 8 hex digits of the SHA-1 of the real name
    appended, so the mapping is stable across processes and versions and different names get different
    keys (barring a 32-bit hash collision): ``cust-data`` -> ``cust_data_da4b09fd``,
    ``my customers`` -> ``my_customers_08780a37``.
    """
    if _DAGSTER_NAME_RE.match(name):
        return name
    ascii_text = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")  # é -> e
    base = re.sub(r"[^A-Za-z0-9_]+", "_", ascii_text).strip("_") or "name"
    return f"{base}_{hashlib.sha1(name.encode('utf-8')).hexdigest()[:8]}"


def source_table_key(source: str, table_parts: list[str]) -> dg.AssetKey:
    """``sources/<source>/<schema>/<table>`` from the table's real names (quotes removed)."""
    return dg.AssetKey(["sources", source, *(key_part(p) for p in table_parts)])


def model_key(model: str) -> dg.AssetKey:
    """``models/M``: the model's view (or table)."""
    return dg.AssetKey(["models", model])


def segment_key(segment: str) -> dg.AssetKey:
    """``segments/S``: the segment's view."""
    return dg.AssetKey(["segments", segment])


def snapshot_key(activation: str) -> dg.AssetKey:
    """``snapshots/A``: step 1 of each sync of activation A, its delta storage."""
    return dg.AssetKey(["snapshots", activation])


def activation_key(activation: str) -> dg.AssetKey:
    """``activations/A``: step 2 of each sync of activation A, the delivery."""
    return dg.AssetKey(["activations", activation])


def prediction_key(name: str, scores: bool = False) -> dg.AssetKey:
    """``predictions/<set>`` (training) or ``predictions/<set>/scores`` (the published score tables)."""
    return dg.AssetKey(["predictions", name, "scores"] if scores else ["predictions", name])


def identity_key(space: str, table: str) -> dg.AssetKey:
    """``identity/<space>/graph`` or ``identity/<space>/profiles``: an identity space's tables."""
    return dg.AssetKey(["identity", space, table])


def op_name(default_key: dg.AssetKey) -> str:
    """The op (and step key) of an asset: its default key as a Python identifier (``models__customers``),
    whatever key the translator gives the asset, so run config and step keys do not move with it."""
    return default_key.to_python_identifier()


def partitions_name(activation: str) -> str:
    """The dynamic partitions of ``snapshots/A`` and ``activations/A``: one partition per sync."""
    return f"sync_{activation}"


def pool_name(activation: str) -> str:
    """The concurrency pool of an activation's snapshot and delivery steps."""
    return f"dinmo_activation_{activation}"


def job_name(activation: str) -> str:
    """The job of one sync: models, segments, snapshot and delivery."""
    return f"sync_{activation}"


def refresh_job_name(model: str) -> str:
    """The job refreshing a materialized model on its schedule."""
    return f"refresh_model_{model}"


def schedule_name(activation: str) -> str:
    """The schedule of an activation with a ``schedule``."""
    return f"{activation}_schedule"


def model_schedule_name(model: str) -> str:
    """The schedule of a materialized model with a ``schedule``."""
    return f"model_{model}_refresh"


def source_sensor_name(activation: str) -> str:
    """The source-change sensor of an activation with a ``trigger``."""
    return f"{activation}_source_change"
