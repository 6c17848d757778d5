"""How the project's entities appear in Dagster: asset keys, groups, kinds, descriptions, tags, metadata.

``DinmoTranslator.get_asset_spec(entity)`` returns the ``dg.AssetSpec`` of one entity: a model's source
table, a model, a segment, or an activation's snapshot or delivery. The asset factories build every asset
from it, and take the dependencies of each asset from the keys it gives the entities upstream, so a
subclass that re-prefixes keys or regroups assets keeps the lineage whole (the pattern of dagster-sling's
``DagsterSlingTranslator`` and dagster-dbt's ``DagsterDbtTranslator``)::

    class CrmTranslator(DinmoTranslator):
        def get_asset_spec(self, entity: DinmoEntity) -> dg.AssetSpec:
            spec = super().get_asset_spec(entity)
            return spec.replace_attributes(key=spec.key.with_prefix("crm"), group_name="crm")

    defs = build_definitions(load_project(), translator=CrmTranslator())

Job, partition, pool, schedule and sensor names do not depend on the translator (``names.py``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import dagster as dg

from dinmo_dagster import names
from dinmo_dagster.compile import table_parts
from dinmo_dagster.config import Project, reads_without_cycles
from dinmo_dagster.identity.spec import identity_model
from dinmo_dagster.predictions.spec import prediction_model
from dinmo_dagster.warehouses import dialect_of

__all__ = ["DinmoEntity", "DinmoTranslator", "EntityKind", "destination_text"]


class EntityKind(enum.StrEnum):
    """The kinds of entities that become assets."""

    SOURCE_TABLE = "source_table"  # a model's ``table``: an external asset, where lineage starts
    MODEL = "model"
    SEGMENT = "segment"
    SNAPSHOT = "snapshot"  # step 1 of an activation's sync: its delta storage
    ACTIVATION = "activation"  # step 2: the delivery
    IDENTITY_GRAPH = "identity_graph"  # an identity space's graph table (``name``: the space)
    IDENTITY_PROFILES = "identity_profiles"  # an identity space's profiles table
    PREDICTIONS = "predictions"  # a prediction set's training (``name``: the set)
    PREDICTION_SCORES = "prediction_scores"  # a prediction set's published score tables


@dataclass(frozen=True)
class DinmoEntity:
    """One entity of a project that becomes an asset.

    ``name`` is the model's, segment's or activation's name, or a source table's ``table`` as written in
    the YAML (with ``source`` naming its source).
    """

    kind: EntityKind
    name: str
    project: Project = field(compare=False, repr=False)
    source: str | None = None

    @classmethod
    def source_table(cls, project: Project, source: str, table: str) -> DinmoEntity:
        """A model's ``table`` in ``source``, as written in the YAML."""
        return cls(EntityKind.SOURCE_TABLE, table, project, source)

    @classmethod
    def model(cls, project: Project, name: str) -> DinmoEntity:
        """Model ``name``."""
        return cls(EntityKind.MODEL, name, project)

    @classmethod
    def segment(cls, project: Project, name: str) -> DinmoEntity:
        """Segment ``name``."""
        return cls(EntityKind.SEGMENT, name, project)

    @classmethod
    def snapshot(cls, project: Project, activation: str) -> DinmoEntity:
        """The snapshot step of ``activation``."""
        return cls(EntityKind.SNAPSHOT, activation, project)

    @classmethod
    def activation(cls, project: Project, name: str) -> DinmoEntity:
        """The delivery step of activation ``name``."""
        return cls(EntityKind.ACTIVATION, name, project)

    @classmethod
    def identity(cls, project: Project, space: str, table: str) -> DinmoEntity:
        """The ``graph`` or ``profiles`` table of identity space ``space``."""
        kind = EntityKind.IDENTITY_GRAPH if table == "graph" else EntityKind.IDENTITY_PROFILES
        return cls(kind, space, project)

    @classmethod
    def predictions(cls, project: Project, name: str, scores: bool = False) -> DinmoEntity:
        """The training (or, with ``scores``, the published score tables) of prediction set ``name``."""
        return cls(EntityKind.PREDICTION_SCORES if scores else EntityKind.PREDICTIONS, name, project)


class DinmoTranslator:
    """The asset spec of each entity. Subclass it and override ``get_asset_spec`` (calling ``super()``
    and ``replace_attributes``/``merge_attributes`` on its answer) to change keys, groups, kinds,
    descriptions, tags, owners or metadata."""

    def get_asset_spec(self, entity: DinmoEntity) -> dg.AssetSpec:
        """The spec of ``entity``: its key, dependencies, group, kinds, description, tags and metadata."""
        build = {
            EntityKind.SOURCE_TABLE: self._source_table_spec,
            EntityKind.MODEL: self._model_spec,
            EntityKind.SEGMENT: self._segment_spec,
            EntityKind.SNAPSHOT: self._snapshot_spec,
            EntityKind.ACTIVATION: self._activation_spec,
            EntityKind.IDENTITY_GRAPH: self._identity_spec,
            EntityKind.IDENTITY_PROFILES: self._identity_spec,
            EntityKind.PREDICTIONS: self._predictions_spec,
            EntityKind.PREDICTION_SCORES: self._predictions_spec,
        }[entity.kind]
        return build(entity)

    def get_asset_key(self, entity: DinmoEntity) -> dg.AssetKey:
        """The key of ``entity``: the key of its spec."""
        return self.get_asset_spec(entity).key

    # -- the default specs ---------------------------------------------------------------------------

    def _source_table_spec(self, entity: DinmoEntity) -> dg.AssetSpec:
        p, source, table = entity.project, entity.source or "", entity.name
        return dg.AssetSpec(
            key=names.source_table_key(source, table_parts(table, dialect_of(p.sources[source]))),
            group_name="sources", kinds={p.sources[source].type},
            description=f"Table {table} in source '{source}'",
            metadata={"dagster/table_name": table},
        )

    def _model_spec(self, entity: DinmoEntity) -> dg.AssetSpec:
        p, name = entity.project, entity.name
        m = p.models[name]
        deps = [self.get_asset_key(DinmoEntity.source_table(p, m.source, m.table))] if m.table else []
        deps += [self.get_asset_key(DinmoEntity.model(p, r)) for r in reads_without_cycles(p, "models", name)]
        builtin = identity_model(p, name)  # identity.<space>: a view on the space's table
        deps += [self.get_asset_key(DinmoEntity.identity(p, *builtin))] if builtin else []
        scored = prediction_model(p, name)  # predictions.<set>: a view on the set's published scores
        deps += [self.get_asset_key(DinmoEntity.predictions(p, scored[0], scores=True))] if scored else []
        over = m.table or "SQL"
        description = m.description or f"Model '{name}' ({m.kind}{', ' + m.class_ if m.class_ else ''}) over {over}"
        return dg.AssetSpec(
            key=names.model_key(name), deps=deps, group_name=name.replace(".", "_"), description=description,
            kinds={p.sources[m.source].type, "table" if m.materialized else "view"},
            tags={"dinmo/model_kind": m.kind},
        )

    def _segment_spec(self, entity: DinmoEntity) -> dg.AssetSpec:
        p, name = entity.project, entity.name
        s = p.segments[name]
        m = p.models[s.model]
        upstream = [DinmoEntity.model(p, s.model),
                    *(DinmoEntity.model(p, r.model) for r in m.relationships if r.model in p.models),
                    *(DinmoEntity.segment(p, n) for n in reads_without_cycles(p, "segments", name))]
        return dg.AssetSpec(
            key=names.segment_key(name), deps=list(dict.fromkeys(self.get_asset_key(e) for e in upstream)),
            group_name=s.model.replace(".", "_"), description=s.description or f"Segment '{name}' of model '{s.model}'",
            kinds={p.sources[m.source].type, "segment"},
        )

    def _predictions_spec(self, entity: DinmoEntity) -> dg.AssetSpec:
        p, name = entity.project, entity.name
        ps = p.predictions[name]
        scores = entity.kind == EntityKind.PREDICTION_SCORES
        if scores:
            deps = [self.get_asset_key(DinmoEntity.predictions(p, name))]
            what = (f"Scores of predictions '{name}': the tables behind models predictions.{name}"
                    f"{f' and predictions.{name}_recommendations' if ps.recommendations else ''}")
        else:
            deps = [self.get_asset_key(DinmoEntity.model(p, m)) for m in dict.fromkeys((ps.model, ps.events))]
            what = (f"Predictions '{name}': lifetime value, churn{' and recommendations' if ps.recommendations else ''}"
                    f" of {ps.model} learned from {ps.events}, back-tested against naive baselines")
        return dg.AssetSpec(
            key=names.prediction_key(name, scores), deps=deps, group_name=f"predictions_{name}",
            description=ps.description or what if not scores else what,
            kinds={p.sources[p.models[ps.model].source].type, "predictions"},
            metadata={"dinmo/prediction_set": name}, tags={"dinmo/own_schedule": "predictions"},
        )

    def _identity_spec(self, entity: DinmoEntity) -> dg.AssetSpec:
        p, space = entity.project, entity.name
        sources = [s.model for s in p.identity[space].sources]
        source = p.models[sources[0]].source
        if entity.kind == EntityKind.IDENTITY_GRAPH:
            deps = [self.get_asset_key(DinmoEntity.model(p, m)) for m in dict.fromkeys(sources)]
            what = f"Identity graph of '{space}': every record of {', '.join(sources)} linked to its profile"
        else:
            deps = [self.get_asset_key(DinmoEntity.identity(p, space, "graph"))]
            what = f"Profiles of '{space}': one golden record per person, by survivorship over the graph"
        table = "graph" if entity.kind == EntityKind.IDENTITY_GRAPH else "profiles"
        return dg.AssetSpec(
            key=names.identity_key(space, table), deps=deps, group_name=f"identity_{space}",
            description=p.identity[space].description or what, kinds={p.sources[source].type, "identity"},
            metadata={"dinmo/identity_space": space},
        )

    def _snapshot_spec(self, entity: DinmoEntity) -> dg.AssetSpec:
        p, name = entity.project, entity.name
        a = p.activations[name]
        _, model = p.model_of(name)
        schemas = p.sources[model.source].helper_schemas
        rows = "" if a.effective_run_type == "full_only" else \
            f", and the rows this sync delivers (`rows__{name}__<partition>`)"
        # Both assets of an activation end in its name, the label of their node in the asset graph: the
        # first line of each description tells them apart (the graph's Description facet shows it).
        description = (
            f"{name}: snapshot (delta storage)\n\n"
            f"Step 1 of each sync of activation '{name}': stores in `{schemas.delta_storage}` the key and row hash "
            f"of every record of {a.reads} (`snap__{name}__<partition>`){rows}. One partition per "
            "sync; nothing leaves the warehouse."
        )
        return dg.AssetSpec(
            key=names.snapshot_key(name),
            deps=[self.get_asset_key(DinmoEntity.segment(p, a.segment) if a.segment is not None
                                     else DinmoEntity.model(p, str(a.model)))],
            group_name=f"activation_{name}", description=description,
            kinds={p.sources[model.source].type, "snapshot"},
            metadata={"dinmo/activation": name, "dinmo/step": "1 of 2: snapshot (delta storage)"},
        )

    def _activation_spec(self, entity: DinmoEntity) -> dg.AssetSpec:
        p, name = entity.project, entity.name
        a = p.activations[name]
        if a.platform_service is not None:
            return self._platform_activation_spec(entity)
        description = "\n\n".join([
            f"{name}: delivery to {a.destination}",
            *([a.description] if a.description else []),
            (f"Step 2 of each sync: writes {a.reads} as {a.format} files ({a.sync_mode} mode, "
             f"{a.effective_run_type}) to {destination_text(p, name)}, then promotes the snapshot to the "
             "activation's baseline."),
        ])
        return dg.AssetSpec(
            key=names.activation_key(name), deps=[self.get_asset_key(DinmoEntity.snapshot(p, name))],
            group_name=f"activation_{name}", description=description,
            kinds={p.destinations[a.destination].type, a.format, "delivery"},
            metadata={"dinmo/activation": name, "dinmo/step": f"2 of 2: delivery to {a.destination}",
                      "dinmo/destination": destination_text(p, name)},
            tags={"dinmo/sync_mode": a.sync_mode, "dinmo/run_type": a.effective_run_type},
        )


    def _platform_activation_spec(self, entity: DinmoEntity) -> dg.AssetSpec:
        p, name = entity.project, entity.name
        a = p.activations[name]
        d = p.destinations[a.destination]
        description = "\n\n".join([
            f"{name}: delivery to {a.destination}",
            *([a.description] if a.description else []),
            (f"Step 2 of each sync: sends the changes of {a.reads} to {destination_text(p, name)} "
             f"({a.platform_service}, {a.platform_mode} mode), then promotes to the activation's baseline what "
             "the platform acknowledged (rejected records are sent again by the next sync)."),
        ])
        return dg.AssetSpec(
            key=names.activation_key(name), deps=[self.get_asset_key(DinmoEntity.snapshot(p, name))],
            group_name=f"activation_{name}", description=description,
            kinds={d.type, "delivery"},
            metadata={"dinmo/activation": name, "dinmo/step": f"2 of 2: delivery to {a.destination}",
                      "dinmo/destination": destination_text(p, name)},
            tags={"dinmo/sync_mode": a.platform_mode, "dinmo/run_type": a.effective_run_type},
        )


def destination_text(project: Project, activation: str) -> str:
    """Where ``activation`` writes: ``gs://bucket/folder/``, the local folder's path, or the platform and its
    service (``hubspot attributes``)."""
    a = project.activations[activation]
    d = project.destinations[a.destination]
    if a.platform_service is not None:
        return f"{d.type} {a.platform_service}"
    folder = a.folder.strip("/")
    if d.type == "gcs":
        return f"gs://{d.bucket}/{folder + '/' if folder else ''}"
    return str(project.resolve_path(d.path) / folder) if folder else str(project.resolve_path(d.path))
