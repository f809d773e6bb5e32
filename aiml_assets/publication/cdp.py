"""`cdp/nba_propensity`: the day's scores published as a Consolidated Data Product, write-audit-publish.

Write: the scores become a new immutable Delta table in the publication bucket, named by a fingerprint of their
content, so the same scores always make the same version, written once. Audit: the great-expectations suite and
the pandera schema run on that table. Publish: only if both pass, the catalog name switches to it in one
compare-and-swap step, with owner, classification, contract version and tenant grants. A failed audit leaves the
published version in place. After the switch, the same step checks what tenants read by name against the pandera
schema (`NbaPropensity_schema`, blocking). The exactly-once protocol (races, kills) is `publication/protocol.py`.
"""


import hashlib

from dagster import AssetExecutionContext, Failure, MetadataValue, asset
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from aiml_assets.asset_tables import TableAccess, scoring_table
from aiml_assets.features.customer_features import offers
from aiml_assets.inference.assets import deployed, scoring_day, scoring_partitions
from aiml_assets.inference.deployment import scored_products
from aiml_assets.inference.schemas import nba_propensity_schema
from aiml_assets.inference.step_checks import materialized
from aiml_assets.keys import (
    CDP_KEY, DEPLOYED_MODEL_KEY, INFERENCE_GROUP as GROUP, SCORES_KEY, SCORING_FEATURES_KEY, StepLauncherParam,
)
from aiml_assets.publication.contract import CONTRACT, contract_version
from aiml_assets.publication.expectations import run_publish_gate
from aiml_assets.publication.protocol import Candidate, GateRefused, publish_once
from aiml_assets.quality import schema_check, schema_check_spec, table_schema, validate
from aiml_assets.resources.audit import AuditLog, actor_of
from aiml_assets.resources.catalog import Catalog
from aiml_assets.resources.spark import SparkResource
from aiml_assets.resources.storage import Storage
from aiml_assets.resources.tables import DeltaTables
from aiml_assets.settings import Settings, aiml_home

VERSIONS = "cdp/nba_propensity/versions/"  # each version's folder in the publication bucket


def cdp_name(settings: Settings) -> str:
    return f"{settings.publication.catalog}.{settings.publication.schema_name}.{CDP_KEY.path[-1]}"


def content_version(scores: DataFrame, day: str, contract: str) -> tuple[str, int]:
    """(version id, rows): a fingerprint of every column but `scored_at`, so a rerun on the same inputs, which
    gives the same scores at another time, names the same version. One aggregation; the sum of 64-bit row hashes
    is order-free, decimal keeps it from overflowing, and scores are rounded to 12 places first so that another
    order of floating-point sums on a cluster cannot change the id."""
    columns = [c for c in scores.columns if c != "scored_at"]
    values = [F.round(c, 12) if c == "score" else F.col(c) for c in columns]
    row = scores.agg(F.count(F.lit(1)).alias("rows"),
                     F.sum(F.xxhash64(*values).cast("decimal(38,0)")).alias("hash")).first()
    digest = hashlib.sha256(f"{day}|{row['rows']}|{row['hash']}|{contract}|{','.join(columns)}".encode()).hexdigest()
    return digest[:16], row["rows"]


def cdp_assets(settings: Settings) -> list:
    publication = settings.publication
    name, schema = cdp_name(settings), nba_propensity_schema(settings.products)
    scores_table = scoring_table(settings, SCORES_KEY)
    features_table = scoring_table(settings, SCORING_FEATURES_KEY)
    daily = scoring_partitions(settings)

    @asset(
        key=CDP_KEY,
        # the features and the deployed products give the row count the audit expects
        deps=[SCORES_KEY, SCORING_FEATURES_KEY, DEPLOYED_MODEL_KEY],
        group_name=GROUP, partitions_def=daily, owners=["team:aiml"], kinds={"delta", "unity-catalog"},
        pool="cdp_publication",  # one publication step at a time across runs (both instances limit pools to 1)
        description=f"The NBA propensity scores as the Consolidated Data Product {name}: each day an immutable "
        "version in the publication bucket, audited by great-expectations and pandera, then switched to atomically "
        f"in the catalog ({publication.classification}; tenants {', '.join(publication.tenant_groups)} read it "
        "by name only).",
        metadata={"dagster/column_schema": table_schema(schema), "dagster/table_name": name,
                  "contract": MetadataValue.path(f"aiml_assets/publication/{CONTRACT.name}")},
        check_specs=[schema_check_spec(CDP_KEY, schema, settings)],  # on what tenants read, after the switch
    )
    def nba_propensity(context: AssetExecutionContext, pyspark_step_launcher: StepLauncherParam,
                       spark: SparkResource, catalog: Catalog, tables: DeltaTables, storage: Storage,
                       audit: AuditLog):
        io = TableAccess(spark, catalog, tables, storage, context.run.run_id)
        day, contract = scoring_day(context.partition_key).isoformat(), contract_version()
        session = spark.get_session()
        # one pinned snapshot of the scores for the fingerprint and the write: a rerun of the scores meanwhile
        # cannot make the version's id describe other rows
        pinned = catalog.version(scores_table.name)
        scores = catalog.read(session, scores_table.name, pinned).filter(F.col("snapshot_date") == day)
        version_id, rows = content_version(scores, day, contract)
        described = {"cdp_version": MetadataValue.text(version_id), "snapshot_date": MetadataValue.text(day),
                     "contract_version": MetadataValue.text(contract), "dagster/row_count": MetadataValue.int(rows),
                     "scores_table_version": MetadataValue.int(pinned)}

        # rules and counts only: no customer key may reach the run's logs or the append-only audit log
        gate_runs = []

        def gate(location: str) -> list[str]:
            staged = tables.read(session, location)
            # the row count expected, from the features and the products deployed that day, not from the scores
            scored = scored_products(deployed(io, settings, scoring_day(day)), settings.products)
            expected = offers(features_table.read(io, [day]), scored).count()
            gate_runs.append(run_publish_gate(staged, columns=list(schema.columns), products=scored,
                                              expected_rows=expected, project_root=aiml_home(),
                                              run_name=f"{day}-{version_id}"))
            total, violations = validate(schema, staged)
            failures = gate_runs[-1].failures + [f"pandera {schema.name}: {v.describe(total)}"
                                                 for v in violations]
            if content_version(staged, day, contract)[0] != version_id:
                failures.append(f"the version at {location} does not hold the scores its id {version_id} names")
            return failures

        def write(location: str) -> None:
            tables.write(scores, location, run_id=context.run.run_id)
            context.log.info(f"{name}: wrote version {version_id} ({rows} rows) at {location}")

        candidate = Candidate(name, version_id, day, f"{VERSIONS}{version_id}", {
            "cdp_version": version_id, "snapshot_date": day, "rows": rows, "contract_version": contract})
        switch = dict(
            owner=publication.owner, read_grants=publication.tenant_groups,
            comment=f"NBA propensity scores (Consolidated Data Product, owner {publication.owner}): one row per "
            f"customer and product they may be offered, scoring date {day}; contract nba_propensity {contract}",
            properties={"snapshot_date": day, "classification": publication.classification,
                        "contract_version": contract, "dagster_asset": CDP_KEY.to_user_string(), "rows": rows,
                        "source": f"{scores_table.name}@v{pinned}"})
        try:
            outcome = publish_once(candidate, catalog=catalog, audit=audit, storage=storage, write=write, gate=gate,
                                   switch=switch, event=dict(actor=actor_of(context.run.tags),
                                                             environment=settings.environment,
                                                             run_id=context.run.run_id))
        except GateRefused as refused:
            raise Failure(
                description=f"{CDP_KEY.to_user_string()} {day}: version {version_id} failed the publish gate; "
                f"{name} still serves version {refused.serving or 'none'}:\n  " + "\n  ".join(refused.failures),
                metadata={"data_docs": MetadataValue.url(gate_runs[-1].data_docs),
                          "failures": MetadataValue.json(refused.failures)},
                allow_retries=False,
            ) from None
        docs = {"data_docs": MetadataValue.url(gate_runs[-1].data_docs)} if gate_runs else {}
        # what tenants read by name now, whichever version that is
        served = schema_check(context.log, io, CDP_KEY, schema, catalog.read(session, name), settings,
                              context.partition_key)
        if outcome.published:
            context.log.info(f"{name}: now serves version {version_id} ({day}, {rows} rows); replaced "
                             f"{outcome.replaced or 'nothing'}")
            described |= {"published": MetadataValue.bool(True), "location": MetadataValue.path(outcome.location),
                          "replaced_version": MetadataValue.text(outcome.replaced or "none")}
        else:
            context.log.info(f"{name}: {day}: version {version_id} not published: {outcome.reason}")
            described |= {"published": MetadataValue.bool(False), "reason": MetadataValue.text(outcome.reason),
                          "repaired_audit_event": MetadataValue.bool(outcome.repaired)}
        yield from materialized(CDP_KEY, {**described, **docs}, [served])

    return [nba_propensity]
