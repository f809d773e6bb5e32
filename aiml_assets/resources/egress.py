"""No data download (HLD): data goes only into the current environment's own buckets and catalogs.

- Buckets: a remote environment's buckets are S3 (settings refuse a local folder), and no bucket of one environment
  file appears in another's (`check_own_buckets`, when the Definitions are built).
- Writes: the tables resource refuses to write, delete or vacuum anywhere but under the environment's bucket roots
  (`check_location`), whatever code computed the location.
- Catalogs: the catalog resource reads only the environment's own catalog and EDP's, and writes only its own
  catalog and (where it publishes) the CDP's schema: prod cannot read the lab's tables, nor the lab publish.
- Lineage: no prod inference, parallel run or CDP asset may be fed by lab data; the one way from the lab to prod is
  a model binary promoted through Nexus (`check_lineage`, on the asset graph, when the Definitions are built).
"""

import posixpath
from pathlib import Path

from dagster import AssetKey

LAB_GROUPS = {"lab_features", "model_versions"}
PROD_GROUPS = {"prod_inference", "uat_parallel_run", "cdp_publication"}


class EgressRefused(PermissionError):
    """IO outside the current environment's own buckets and catalogs, or lab data flowing into prod."""


def _normal(location: str) -> str:
    if location.startswith("s3://"):
        bucket_and_key = location.removeprefix("s3://")
        if ".." in bucket_and_key.split("/"):
            raise EgressRefused(f"{location}: '..' in an S3 location")
        return "s3://" + posixpath.normpath(bucket_and_key)
    if "://" in location or not Path(location).is_absolute():
        raise EgressRefused(f"{location}: not an s3:// location or an absolute local path")
    return str(Path(location).resolve())


def check_location(location: str, roots: list[str]) -> str:
    """`location` if it lies under one of the environment's bucket roots; else refused."""
    target = _normal(location)
    for root in roots:
        base = _normal(root)
        if target == base or target.startswith(base.rstrip("/") + "/"):
            return location
    raise EgressRefused(f"{location}: outside this environment's buckets ({', '.join(roots) or 'none'}); data is "
                        "written only to the environment's own buckets")


EDP_CATALOG = "edp"  # the EDP central catalog: its source products (read) and, from prod, the CDP (written)


def readable_catalogs(settings) -> list[str]:
    return [settings.catalog.aiml_catalog, EDP_CATALOG]


def writable_catalogs(settings) -> list[str]:
    publishes = "cdp_publication" in settings.asset_groups
    return [settings.catalog.aiml_catalog] + (
        [f"{settings.publication.catalog}.{settings.publication.schema_name}"] if publishes else [])


def check_own_buckets(environment: str, buckets: dict[str, str], others: dict[str, dict[str, str]]) -> None:
    """Refuse a bucket this environment shares with another environment's file (`others`: env -> role -> URI)."""
    mine = {uri.removeprefix("s3://").split("/")[0]: role for role, uri in buckets.items() if uri.startswith("s3://")}
    for env, theirs in others.items():
        for role, uri in theirs.items():
            name = uri.removeprefix("s3://").split("/")[0]
            if env != environment and uri.startswith("s3://") and name in mine:
                raise EgressRefused(f"storage.buckets.{mine[name]}: s3://{name} belongs to {env} ({role}); "
                                    f"{environment} writes only to its own buckets")


def check_lineage(graph, allowed: set[AssetKey]) -> None:
    """Refuse a prod-side asset with a lab asset upstream, other than through the `allowed` keys (the binaries)."""
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        if node.group_name not in PROD_GROUPS:
            continue
        seen, todo = set(), list(node.parent_keys)
        while todo:
            parent = todo.pop()
            if parent in seen or parent in allowed or not graph.has(parent):
                continue
            seen.add(parent)
            if graph.get(parent).group_name in LAB_GROUPS:
                raise EgressRefused(f"{key.to_user_string()} ({node.group_name}) is fed by lab data "
                                    f"{parent.to_user_string()}: lab data reaches prod only as a model binary "
                                    "promoted through Nexus")
            todo.extend(graph.get(parent).parent_keys)
