"""The customers whose erasure was requested (GDPR): recorded in the audit log as SHA-256 digests of their ids, and
dropped from whatever a feature or scoring asset reads from then on."""

import hashlib

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

ERASURE_REQUESTED = "erasure_requested"  # audit action
DIGESTS = "customer_digests"  # its details key


def digest(customer_id: str) -> str:
    return hashlib.sha256(str(customer_id).encode()).hexdigest()


def erased_digests(audit) -> set[str]:
    return {d for event in audit.read(ERASURE_REQUESTED) for d in event["details"][DIGESTS]}


def erased(digests: set[str] | list[str]) -> Column:
    """True for the rows of the customers with these digests."""
    return F.sha2(F.col("customer_id").cast("string"), 256).isin(sorted(digests))


def without_erased(df: DataFrame, digests: set[str]) -> DataFrame:
    """`df` without the rows of customers whose erasure was requested."""
    return df.filter(~erased(digests)) if digests else df
