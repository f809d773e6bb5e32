"""The ODCS data contract of the CDP `edp.cdp.nba_propensity`: lint it, and test a published version against it
with datacontract-cli, offline (DuckDB reads the version's Parquet files; nothing is fetched).

datacontract-cli reads only the contract's columns from Parquet and casts them to the contract's types, so it
neither sees undeclared columns nor checks types there (it reports "Checking types in parquet files is not
supported yet" as a warning). `verify_published` therefore also compares the Delta table's own schema with the
contract's columns and physical types, and accepts only those warnings; every other warning, error or failed
check fails the test.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from deltalake import DeltaTable

# The contract of the CDP; the publication reads its version. datacontract-cli is imported only where a contract is
# linted or tested: the code location imports this module to publish and must not pay for that.
CONTRACT = Path(__file__).with_name("nba_propensity.odcs.yaml")
SCHEMA = "nba_propensity"
LOCAL_SERVER = "local"
UNSUPPORTED_TYPE_CHECK = "Checking types in parquet files is not supported yet"
OK, NOT_PASSED = ("passed", "info"), ("failed", "error", "warning")
DELTA_TO_SQL = {"integer": "INT", "long": "BIGINT", "short": "SMALLINT", "byte": "TINYINT"}  # else upper-cased


def contract_version() -> str:
    return str(yaml.safe_load(CONTRACT.read_text())["version"])


@dataclass(frozen=True)
class ContractResult:
    passed: bool
    failures: list[str]  # "<check>: <reason>" of every failed, errored or unexpected-warning check
    ignored: list[str] = field(default_factory=list)  # the type checks datacontract-cli cannot run on Parquet


def lint(contract: Path = CONTRACT) -> list[str]:
    """The contract's problems against its declared ODCS version; empty when it lints clean."""
    from datacontract.data_contract import DataContract

    run = DataContract(data_contract_file=str(contract)).lint()
    return [f"{c.name}: {c.reason}" for c in run.checks if c.result != "passed"]


def verify_published(location: str, contract: Path = CONTRACT, *, service_levels: bool = True) -> ContractResult:
    """`datacontract test` of the local Delta table at `location` (the files of its current snapshot) on the
    contract's local server, plus the column names and types of the table's own schema. The service levels
    (freshness of scored_at, retention of snapshot_date) are measured against the time of the test; a version of a
    fixed past day (a replay, a test) is checked without them (`service_levels=False`)."""
    from datacontract.data_contract import DataContract

    doc = yaml.safe_load(contract.read_text())
    if not service_levels:
        doc.pop("slaProperties", None)
    table = DeltaTable(location)
    if table.metadata().partition_columns:  # their values live in the log and paths, not in the Parquet files
        raise ValueError(f"{location}: partitioned tables are not supported")
    failures = _schema_drift(table, next(s for s in doc["schema"] if s["name"] == SCHEMA))
    with tempfile.TemporaryDirectory(prefix="cdp_contract_") as files:
        for i, uri in enumerate(table.file_uris()):  # only the current snapshot's files, under one glob
            (Path(files) / f"{i:06d}.parquet").symlink_to(uri.removeprefix("file://"))
        for server in doc["servers"]:
            if server["server"] == LOCAL_SERVER:
                server["path"] = f"{files}/*.parquet"
        run = DataContract(data_contract_str=yaml.safe_dump(doc, sort_keys=False), server=LOCAL_SERVER).test()
    failures += [_describe(c) for c in run.checks if c.result in NOT_PASSED and not _unsupported_type_check(c)]
    not_run = [c.name for c in run.checks if c.result not in OK + NOT_PASSED]  # e.g. after a connection error
    if not_run:
        failures.append(f"{len(not_run)} checks did not run, e.g. {not_run[0]}")
    if not any(c.result == "passed" for c in run.checks):
        failures.append("datacontract test: no check passed")
    ignored = [_describe(c) for c in run.checks if _unsupported_type_check(c)]
    return ContractResult(passed=not failures, failures=failures, ignored=ignored)


def _unsupported_type_check(check) -> bool:
    return (check.result == "warning" and check.type in ("field_type", "field_physical_type")
            and (check.reason or "").startswith(UNSUPPORTED_TYPE_CHECK))


def _describe(check) -> str:
    return f"{check.name}: {check.reason}"


def _schema_drift(table: DeltaTable, schema: dict) -> list[str]:
    """Columns missing from or not in the contract, and types other than the contract's physicalType."""
    actual = {f.name: DELTA_TO_SQL.get(f.type.type, f.type.type.upper()) for f in table.schema().fields}
    expected = {p["name"]: p["physicalType"].upper() for p in schema["properties"]}
    problems = [f"Check that the table has no columns beyond the contract's: {name} is not in the contract"
                for name in actual.keys() - expected.keys()]
    problems += [f"Check that field {name} has physical type {expected[name]}: it is {actual[name]}"
                 for name in expected.keys() & actual.keys() if actual[name] != expected[name]]
    return sorted(problems)  # a missing column is datacontract-cli's "Check that field ... is present"


