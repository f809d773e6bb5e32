"""GDPR right to be forgotten: an erasure request removes customers from every table of the environment that holds
them, keeps them out of every later feature and scoring run, is recorded, and names and flags the model versions
whose training data held them.

The request is recorded first, in the append-only audit log, with each customer as a keyed digest (erased.py) and
never the id: from that commit on, `without_erased` drops them from the EDP sources every feature and scoring asset
reads, even if the rewrite below stops half way. Then the affected partitions of every table with customer rows
(`customer_tables`: lab, scoring, parallel run; the quarantine tables failing checks wrote; every
published CDP version, immutable but for this) are rewritten without them, the files they were in destroyed, and
the history scrubbed (retention.scrub_history: a checkpoint after the rewrite, every log entry before it destroyed,
since commits and checkpoints carry each file's min/max customer ids, then every noncurrent object version); a
last read of the log (`log_naming`) proves no entry names them. So no time travel, statistic or bucket version
brings them back. That history is also what the models were pinned to, so the model versions trained on them are
found first, listed, and tagged RETRAIN_TAG in the registry.

The job takes the customers as digests too (`aiml digest <id>...`), because Dagster keeps run config for good, and
needs the environment's erasure key to match them: without it, it fails before recording anything. Each environment
has its own audit log and key, so a request is run in each of lab, UAT and prod (one CI pipeline, digests computed
with each environment's key). Rewrite and vacuum race a run that read its sources before the request was recorded;
run an erasure while no other job is running.
"""

import json
import re
from collections import defaultdict

import pyarrow as pa
import pyarrow.parquet as pq

from dagster import Config, MetadataValue, OpExecutionContext, job, op
from pydantic import Field, field_validator
from pyspark.sql import functions as F

from aiml_assets.asset_tables import AssetTable, TableAccess, lab_table, scoring_table, table_name
from aiml_assets.governance.retention import DELTA_LOG, delta_tables, destroy_noncurrent, scrub_history
from aiml_assets.keys import (FEATURES_GROUP, FEATURES_KEY, INFERENCE_GROUP, MODEL_GROUP, PARALLEL_RUN_GROUP,
                              PARALLEL_RUN_KEY, SCORES_KEY, SCORING_FEATURES_KEY, TRAINING_KEY, StepLauncherParam)
from aiml_assets.models.training import registered_name
from aiml_assets.publication.cdp import VERSIONS, cdp_name
from aiml_assets.publication.protocol import MARKER, ROLE as PUBLICATION_ROLE
from aiml_assets.quarantine import QUARANTINE_PREFIX, quarantine_role
from aiml_assets.resources.audit import AuditLog, actor_of
from aiml_assets.resources.catalog import Catalog
from aiml_assets.resources.spark import SparkResource
from aiml_assets.resources.storage import Storage
from aiml_assets.resources.tables import DeltaTables
from aiml_assets.resources.tracking import MlflowResource
from aiml_assets.settings import Settings
from aiml_assets.sources.erased import DIGESTS, ERASURE_REQUESTED, digest, erased_ids, erasure_key, held, without

ERASURE = "erasure"  # audit action, once the lab is rewritten
ERASURE_JOB = "gdpr_erasure"
RETRAIN_TAG = "retrain_required"  # model version tag: the erasure requests whose customers its training data held


class ErasureIncomplete(RuntimeError):
    """After the rewrite and scrub, a log entry still names an erased customer (the engine kept it somewhere)."""


class ErasureRequest(Config):
    # the privacy team's reference, e.g. DSR-2026-0042
    request_id: str = Field(pattern=r"^[A-Z][A-Z0-9]*-[0-9A-Za-z-]+$")
    # HMAC-SHA256 of each customer id (`aiml digest`): run config stays in Dagster's run storage, so ids never go in it
    customer_digests: list[str] = Field(min_length=1)

    @field_validator("customer_digests")
    @classmethod
    def _digests(cls, values: list[str]) -> list[str]:
        bad = [v for v in values if not re.fullmatch(r"[0-9a-f]{64}", v)]
        if bad:
            raise ValueError(f"{len(bad)} entries are not hex digests of customer ids (run `aiml digest`)")
        return sorted(set(values))


def models_trained_on(mlflow: MlflowResource, io: TableAccess, settings: Settings, digests: list[str], key: bytes,
                      request_id: str) -> dict[str, str]:
    """Each registered model version whose pinned training rows held any of the customers -> "yes" (and tagged
    RETRAIN_TAG), or why that can no longer be told."""
    client, catalog, spark = mlflow.client(), io.catalog, io.spark.get_session()
    holding: dict[tuple[str, str], set[tuple[str, str]] | str] = {}  # pinned table version -> (product, snapshot)s
    found = {}
    for product in settings.products:
        name = registered_name(settings.catalog.aiml_catalog, product)
        for version in client.search_model_versions(f"name = '{name}'"):
            pinned = (version.tags.get("training_table"), version.tags.get("training_table_version"))
            if pinned not in holding:
                holding[pinned] = _held_by(catalog, spark, *pinned, digests, key)
            label = f"{name} v{version.version}"
            if isinstance(holding[pinned], str):
                found[label] = holding[pinned]
            elif any((product, s) in holding[pinned] for s in version.tags.get("training_partitions", "").split(",")):
                found[label] = "yes"
                requests = {r for r in version.tags.get(RETRAIN_TAG, "").split(",") if r} | {request_id}
                client.set_model_version_tag(name, version.version, RETRAIN_TAG, ",".join(sorted(requests)))
    return found


def _held_by(catalog: Catalog, spark, table: str, version: str, digests: list[str],
             key: bytes) -> set[tuple[str, str]] | str:
    """The (product, snapshot) partitions of `table` at Delta `version` holding any of the customers, or why that
    version cannot be read (past retention, or vacuumed by an earlier erasure)."""
    try:
        rows = catalog.read(spark, table, int(version))
        rows = held(rows, erased_ids(rows, digests, key))
        return {(r[0], str(r[1])) for r in rows.select("product_code", "snapshot_date").distinct().collect()}
    except Exception as exc:  # noqa: BLE001 - whatever the engine raises for a vacuumed version, the answer is "unknown"
        return f"unknown: {table} version {version} cannot be read ({type(exc).__name__})"


def customer_tables(settings: Settings) -> list[AssetTable]:
    """The environment's tables with a row per customer: lab features and training sets, scoring features, scores
    and the UAT parallel run."""
    groups, tables = set(settings.asset_groups), []
    if FEATURES_GROUP in groups:
        tables += [lab_table(settings, FEATURES_KEY), lab_table(settings, TRAINING_KEY)]
    if INFERENCE_GROUP in groups:
        tables += [scoring_table(settings, SCORING_FEATURES_KEY), scoring_table(settings, SCORES_KEY)]
    if PARALLEL_RUN_GROUP in groups:
        tables.append(scoring_table(settings, PARALLEL_RUN_KEY))
    return tables


class StoredTable(AssetTable):
    """An unpartitioned table found in a bucket and read by its location: a quarantine, or a CDP version's table
    (immutable, but for an erasure, whose audit event lists it; locally no catalog name is its own)."""

    def read(self, io: TableAccess, values=None):
        return io.tables.read(io.spark.get_session(), self.location(io))


def quarantine_tables(settings: Settings, storage: Storage) -> list[StoredTable]:
    """The quarantine tables failing checks have written (quarantine.py): the offending rows, customers' among them;
    found in the bucket, so also one whose check was killed before naming it in the catalog."""
    role = quarantine_role(settings)
    return [StoredTable(table_name(settings, role, k), role, k, None, settings.catalog.table_owner)
            for k in sorted(delta_tables(storage.list(role, QUARANTINE_PREFIX)))]


def published_versions(settings: Settings, storage: Storage) -> list[StoredTable]:
    """Every table of every CDP version written (those a killed publisher left unclaimed too)."""
    if "cdp_publication" not in settings.asset_groups:
        return []
    keys = sorted(delta_tables(storage.list(PUBLICATION_ROLE, VERSIONS)))
    return [StoredTable(f"{cdp_name(settings)} {k.removeprefix(VERSIONS)}", PUBLICATION_ROLE, k, None,
                        settings.publication.owner) for k in keys]


def remove_unclaimed_attempts(settings: Settings, storage: Storage) -> int:
    """Delete what a publisher killed before its first commit left in the version folders: Parquet files no Delta log
    names (and so no rewrite above reached); returns how many objects went, their versions destroyed too."""
    if "cdp_publication" not in settings.asset_groups:
        return 0
    tables = delta_tables(storage.list(PUBLICATION_ROLE, VERSIONS))
    stray = [o for o in storage.list(PUBLICATION_ROLE, VERSIONS) if not o.key.endswith(f"/{MARKER}")
             and not any(o.key.startswith(f"{t}/") for t in tables)]
    for item in stray:
        storage.delete(PUBLICATION_ROLE, item.key)
    destroy_noncurrent(storage, PUBLICATION_ROLE, VERSIONS)
    return len(stray)


def erase_from_tables(io: TableAccess, log, settings: Settings, digests: list[str],
                      key: bytes) -> dict[str, dict[str, int]]:
    """Rewrite every partition of `customer_tables`, every quarantine table and every published CDP version holding
    the customers, then scrub the table's history; returns table -> partition ("all" for an unpartitioned table) ->
    rows removed."""
    removed, storage = defaultdict(dict), io.storage
    named = [t for t in customer_tables(settings) if io.catalog.exists(t.name)]
    for table in named + quarantine_tables(settings, storage) + published_versions(settings, storage):
        # the rewrite must not restart the retention clock of the partitions it rewrites
        io.tables.record_first_writes(table.location(io), run_id=io.run_id)
        rows = table.read(io)
        ids = erased_ids(rows, digests, key).localCheckpoint()
        column = table.partition_column
        hits = held(rows, ids).groupBy(*([column] if column else [])).count().collect()
        for partition, count in sorted((str(r[0]) if column else "all", r[-1]) for r in hits):
            if column:
                table.write_partition(io, without(rows.filter(F.col(column) == partition), ids), partition)
            else:
                table.overwrite(io, without(rows, ids))
            removed[table.name][partition] = count
            log.info(f"{table.name} {partition}: {count} rows of erased customers removed")
        # whether or not the current version holds them: an earlier one may (a partition since recomputed)
        io.tables.vacuum(table.location(io), retain_hours=0)
        for leftover in storage.list(table.role, f"{table.key}/_staging/"):  # a killed write's files: no log names them
            storage.delete(table.role, leftover.key)
        scrub_history(storage, io.tables, table.role, table.key)
        left = log_naming(storage, table.role, table.key, digests, key)
        if left:
            raise ErasureIncomplete(f"{table.name}: after the rewrite and scrub, {len(left)} Delta log entries "
                                    f"still name erased customers (statistics or tombstones): {', '.join(left)}")
    return dict(removed)


def log_naming(storage: Storage, role: str, table_key: str, digests: list[str], key: bytes) -> list[str]:
    """The entries of a table's Delta log (commits, checkpoints and the statistics in them) holding any value
    whose digest is one of `digests`. Engine-independent: it reads what is in the bucket."""
    wanted, found = set(digests), []
    for entry in storage.list(role, f"{table_key}/{DELTA_LOG}/"):
        data = storage.get(role, entry.key)
        if entry.key.endswith(".parquet"):
            values = pq.read_table(pa.BufferReader(data)).to_pylist()
        else:
            values = [json.loads(line) for line in data.decode().splitlines() if line.strip().startswith("{")]
        if any(digest(v, key) in wanted for v in _strings(values)):
            found.append(entry.key)
    return found


def _strings(value):
    """Every string in a decoded log entry, and in the statistics JSON strings nested in it."""
    if isinstance(value, str):
        yield value
        if value.startswith("{"):
            try:
                yield from _strings(json.loads(value))
            except ValueError:
                pass
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _strings(item)


def erasure_job(settings: Settings):
    trains_models = MODEL_GROUP in settings.asset_groups

    @op
    def erase_customers(context: OpExecutionContext, config: ErasureRequest, pyspark_step_launcher: StepLauncherParam,
                        spark: SparkResource, catalog: Catalog, tables: DeltaTables, storage: Storage, audit: AuditLog,
                        mlflow: MlflowResource) -> None:  # mlflow: read only where the environment trains models
        digests = config.customer_digests
        key = erasure_key(settings)  # before anything is recorded: a request that cannot be matched is refused
        who = dict(actor=actor_of(context.run.tags), environment=settings.environment, run_id=context.run.run_id)
        audit.record(ERASURE_REQUESTED, config.request_id, **who, details={DIGESTS: digests, "customers": len(digests)})
        io = TableAccess(spark, catalog, tables, storage, context.run.run_id)
        models = models_trained_on(mlflow, io, settings, digests, key, config.request_id) if trains_models else {}
        removed = erase_from_tables(io, context.log, settings, digests, key)
        remove_unclaimed_attempts(settings, storage)
        audit.record(ERASURE, config.request_id, **who, details={
            "customers": len(digests), "rows_removed": removed, "models_trained_on_them": models})
        context.add_output_metadata({
            "rows_removed": MetadataValue.json(removed),
            "models_trained_on_them": MetadataValue.json(models),
        })

    @job(name=ERASURE_JOB, description="GDPR erasure: record the request (its customers are excluded from every "
         "later run), list and flag the model versions trained on them, rewrite every table holding them without "
         "them and destroy their history.")
    def gdpr_erasure():
        erase_customers()

    return gdpr_erasure
