"""Blocking checks evaluated in their asset's own step: after the write, on the one read of what was written; a
failing one is recorded and then the step fails, so nothing after it in the step runs and Dagster stops everything
downstream."""

from collections.abc import Callable, Collection, Iterator

from dagster import (
    AssetCheckKey, AssetCheckResult, AssetCheckSeverity, AssetKey, Failure, MaterializeResult,
)


def blocks(result: AssetCheckResult) -> bool:
    return not result.passed and result.severity == AssetCheckSeverity.ERROR


def evaluated(selected: Collection[AssetCheckKey], asset: AssetKey,
              checks: list[tuple[str, Callable[[], AssetCheckResult]]]) -> list[AssetCheckResult]:
    """The results of the selected `checks` (name, evaluation) of `asset`, in order, up to the first that blocks."""
    results = []
    for name, evaluate in checks:
        if AssetCheckKey(asset, name) in selected:
            results.append(evaluate())
            if blocks(results[-1]):
                break
    return results


def materialized(asset: AssetKey, metadata: dict | None,
                 results: list[AssetCheckResult]) -> Iterator[MaterializeResult | AssetCheckResult]:
    """The asset's materialization (None: not written in this step, its checks alone were selected) with its check
    results; if one blocks, the step fails once they are recorded, so nothing after it runs."""
    if metadata is None:
        yield from results
    else:
        yield MaterializeResult(asset_key=asset, metadata=metadata, check_results=results)
    if failed := [r.description for r in results if blocks(r)]:
        raise Failure(description="\n".join(failed), allow_retries=False)
