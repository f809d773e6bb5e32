"""The customers whose erasure was requested (GDPR): recorded in the audit log as keyed digests of their ids
(HMAC-SHA256 under the environment's erasure key), and dropped from whatever a feature or scoring asset reads.

An unkeyed digest of a 9-character id is reversed by trying every id; without the key, the audit log and the
erasure runs' config cannot be. The key is a secret of the environment (`erasure.key_env`: a variable locally, a
secret scope on the clusters): `aiml digest`, the erasure job, and any read while an erasure exists fail without it.

Digests are matched on the executors (`erased_ids`), in Python with the key in the function's closure: a native
Spark HMAC (sha2 over the key xor the pads) would put the key in every query plan, and so in the Spark UI and query
history. It runs over one product (the customers, or the table being erased), and the others drop the erased ids
by a broadcast anti-join of that result: no id or key is ever a literal of a plan, collected, or logged.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from aiml_assets.resources.audit import AuditLog
from aiml_assets.resources.catalog import Catalog
from aiml_assets.resources.spark import SparkResource
from aiml_assets.sources.schemas import SOURCE_MODELS

ERASURE_REQUESTED = "erasure_requested"  # audit action
DIGESTS = "customer_digests"  # its details key
CUSTOMER_ID = "customer_id"


class ErasureKeyMissing(RuntimeError):
    """The environment's erasure key is not set, so erased customers cannot be told apart."""


def erasure_key(settings) -> bytes:
    """The environment's erasure key, from the variable `settings.erasure.key_env` names."""
    name = settings.erasure.key_env
    key = os.environ.get(name, "").encode()
    if not key:
        where = "its Databricks secret scope (databricks.secrets)" if settings.compute == "databricks" else \
            "the environment"
        raise ErasureKeyMissing(f"{name} is not set ({settings.environment}: expected from {where}): erasure "
                                "digests cannot be computed or matched without the environment's erasure key")
    return key


def digest(customer_id: str, key: bytes) -> str:
    return hmac.new(key, str(customer_id).encode(), hashlib.sha256).hexdigest()


def erased_digests(audit) -> set[str]:
    return {d for event in audit.read(ERASURE_REQUESTED) for d in event["details"][DIGESTS]}


def erased_ids(df: DataFrame, digests: set[str] | list[str], key: bytes) -> DataFrame:
    """The distinct customer ids of `df` whose digest is one of `digests` (one column, customer_id)."""
    wanted = frozenset(digests)

    def matching(batches):
        # self-contained (hmac inline, nothing of aiml_assets): a cluster's Python workers cannot import the code
        # bundle the step launcher ships to the driver (as inference/scoring.py's mapInPandas)
        import hashlib
        import hmac

        import pyarrow

        for batch in batches:
            ids = [i for i in batch.column(0).to_pylist()
                   if i is not None and hmac.new(key, i.encode(), hashlib.sha256).hexdigest() in wanted]
            yield pyarrow.RecordBatch.from_pydict({"customer_id": pyarrow.array(ids, pyarrow.string())})

    return df.select(F.col(CUSTOMER_ID).cast("string")).distinct().mapInArrow(matching, f"{CUSTOMER_ID} string")


def held(df: DataFrame, ids: DataFrame) -> DataFrame:
    """The rows of `df` of the customers in `ids`."""
    return df.join(F.broadcast(ids), CUSTOMER_ID, "left_semi")


def without(df: DataFrame, ids: DataFrame) -> DataFrame:
    """`df` without the rows of the customers in `ids`."""
    return df.join(F.broadcast(ids), CUSTOMER_ID, "left_anti")


def without_erased(customers: DataFrame, others: list[DataFrame], digests: set[str], settings) -> list[DataFrame]:
    """The customers product and the `others` without the customers whose erasure was requested; the key is needed
    only when there are any."""
    if not digests:
        return [customers, *others]
    ids = erased_ids(customers, digests, erasure_key(settings)).localCheckpoint()  # matched once, for every product
    return [without(df, ids) for df in (customers, *others)]


@dataclass(frozen=True)
class Sources:
    customers: DataFrame
    transactions: DataFrame
    holdings: DataFrame
    responses: DataFrame


CUSTOMERS, TRANSACTIONS, HOLDINGS, RESPONSES = SOURCE_MODELS


def read_sources(spark: SparkResource, catalog: Catalog, audit: AuditLog, settings) -> Sources:
    """The EDP products, by catalog name, without the customers whose erasure was requested (GDPR)."""
    session = spark.get_session()
    customers, *others = (catalog.read(session, name) for name in (CUSTOMERS, TRANSACTIONS, HOLDINGS, RESPONSES))
    return Sources(*without_erased(customers, others, erased_digests(audit), settings))
