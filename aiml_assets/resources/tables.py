"""Delta Lake tables: delta-rs locally (Spark cannot load the Delta jars here), Spark's Delta on Databricks.

Both implementations share one contract: a write replaces the whole table or exactly the partitions named in
`replace`, in one transaction whose commit metadata carries the Dagster run id; a read returns a Spark
DataFrame of the current snapshot.

Retention counts from when a partition's data was first written, and a rewrite (an erasure, a re-materialization)
does not restart it: the table property FIRST_WRITTEN maps each live partition to its first write, recorded by
`record_first_writes` (the daily purge, and the erasure before it rewrites) as the earliest write time of the
partition's files when first seen, and kept over every later rewrite. A property, not the add actions' `tags`:
neither delta-rs's Python transaction API nor Spark's DataFrame writer sets file tags (delta-rs also refuses
unknown properties at create time), and a property reads the same from both engines. Recorded by the purge, not by
each write, so a write stays one commit: a partition rewritten before any purge saw it counts from the rewrite,
so at most a day late.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from abc import ABC, abstractmethod
from pathlib import Path
from urllib.parse import unquote

import pyarrow as pa
from dagster import ConfigurableResource
from deltalake import DeltaTable, Schema
from deltalake.transaction import AddAction, CommitProperties, create_table_with_add_actions
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.pandas.types import from_arrow_schema, to_arrow_schema

from aiml_assets.resources.egress import check_location
from aiml_assets.resources.file_statistics import file_statistics
from aiml_assets.sql_identifiers import delta_path, partition_literal, quoted_identifier, string_literal

RUN_ID_KEY = "dagster_run_id"
FIRST_WRITTEN = "aiml.first_written"  # table property: {"column=value/...": epoch ms of the partition's first write}
NULL_PARTITION = "__HIVE_DEFAULT_PARTITION__"  # how a null partition value is written in a path


class TableWriteError(RuntimeError):
    """A write that would break the table's contract; nothing was committed."""


class DeltaTables(ConfigurableResource, ABC):
    # The environment's bucket roots: writes, deletes and vacuums anywhere else are refused (none: nothing is written)
    write_roots: list[str] = []

    def _writable(self, location: str) -> str:
        return check_location(location, self.write_roots)

    @abstractmethod
    def write(
        self,
        df: DataFrame,
        location: str,
        *,
        run_id: str,
        partition_by: list[str] | None = None,
        replace: dict[str, str] | None = None,
    ) -> int:
        """Commit `df` at `location` and return the new table version.

        `replace=None` overwrites the table; `replace={"snapshot_date": "2024-01-31"}` replaces that partition
        only, and refuses rows outside it.
        """

    @abstractmethod
    def read(self, spark: SparkSession, location: str, version: int | None = None) -> DataFrame:
        """The table as of `version` (time travel), or its current version."""

    @abstractmethod
    def version(self, location: str) -> int: ...

    @abstractmethod
    def exists(self, location: str) -> bool:
        """Whether a Delta table has been committed at `location`."""

    @abstractmethod
    def commit_metadata(self, location: str) -> dict:
        """The latest commit's metadata (holds the Dagster run id of the write)."""

    @abstractmethod
    def live_files(self, location: str) -> list[str]:
        """The data files the current version reads, relative to `location`."""

    @abstractmethod
    def delete_partitions(self, location: str, partitions: list[dict[str, str]], *, run_id: str) -> int:
        """Remove the given partitions (column -> value each) in one commit; returns the new table version."""

    @abstractmethod
    def checkpoint(self, location: str) -> None:
        """Make sure the log has a checkpoint at its latest version, so the entries before it are not needed."""

    @abstractmethod
    def vacuum(self, location: str, retain_hours: int) -> None:
        """Destroy the files no version of the last `retain_hours` reads; 0 leaves only the current version readable
        (an erasure)."""

    @abstractmethod
    def _properties(self, location: str) -> dict[str, str]: ...

    @abstractmethod
    def _set_property(self, location: str, key: str, value: str, *, run_id: str) -> None: ...

    def first_written(self, location: str) -> dict[str, int]:
        """Each live partition ("column=value/...", "" unpartitioned) -> when it was first written (epoch ms)."""
        try:
            recorded = json.loads(self._properties(location).get(FIRST_WRITTEN) or "{}")
        except ValueError:
            return {}
        return {k: v for k, v in recorded.items() if isinstance(v, int)} if isinstance(recorded, dict) else {}

    @abstractmethod
    def _file_ages(self, location: str) -> list[tuple[str, int]]:
        """(path relative to `location`, write time in epoch ms) of each live data file."""

    def record_first_writes(self, location: str, *, run_id: str) -> dict[str, int]:
        """Record each live partition's first write (kept if recorded, else its files' earliest write time), forget
        the partitions no longer live; returns the record. Commits only when it changes."""
        recorded, seen = self.first_written(location), {}
        for path, written in self._file_ages(location):
            partition = partition_of(path)
            seen[partition] = min(seen.get(partition, written), written)
        settled = {p: min(recorded.get(p, written), written) for p, written in sorted(seen.items())}
        if settled != recorded:
            self._set_property(location, FIRST_WRITTEN, json.dumps(settled, separators=(",", ":")), run_id=run_id)
        return settled


def partition_of(path: str) -> str:
    """The partition folders of a data file's path relative to its table ("" for an unpartitioned table)."""
    return "/".join(part for part in path.split("/")[:-1] if "=" in part)


def _condition(column: str, value: str) -> str:
    quoted = quoted_identifier(column, "partition column")
    return f"{quoted} IS NULL" if value == NULL_PARTITION else f"{quoted} = {partition_literal(value, column)}"


def _predicate(replace: dict[str, str]) -> str:
    # one text for Spark SQL and delta-rs (DataFusion): both read backticked names and unescaped literals alike
    return " AND ".join(_condition(column, value) for column, value in replace.items())


def _any_of(partitions: list[dict[str, str]]) -> str:
    return " OR ".join(f"({_predicate(partition)})" for partition in partitions)


class DeltaRsTables(DeltaTables):
    """Local tables: Spark's executors write the Parquet files under the table folder (nothing crosses the
    driver), and delta-rs commits them as one transaction."""

    def write(self, df, location, *, run_id, partition_by=None, replace=None) -> int:
        self._writable(location)
        partition_by = list(partition_by or [])
        if replace and set(replace) != set(partition_by):
            raise TableWriteError(f"{location}: replace {sorted(replace)} must name the partition columns {partition_by}")
        root = Path(location)
        write_id = uuid.uuid4().hex
        staging = root / "_staging" / write_id
        placed: list[Path] = []
        try:
            df.write.partitionBy(*partition_by).parquet(str(staging))
            actions = self._place_files(root, staging, write_id, placed)
            self._check_within(actions, replace, location)
            self._commit(root, df, actions, run_id, partition_by, replace)
        except BaseException:
            for path in placed:  # never referenced by the log, so invisible to readers; tidy them away
                path.unlink(missing_ok=True)
            raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            with contextlib.suppress(OSError):
                staging.parent.rmdir()  # only when no other write is staging
        return self.version(location)

    @staticmethod
    def _place_files(root: Path, staging: Path, write_id: str, placed: list[Path]) -> list[AddAction]:
        """Move Spark's output into the table's Hive-style layout and describe each file for the commit."""
        actions = []
        for dirpath, _, files in os.walk(staging):
            for name in sorted(files):
                if not name.endswith(".parquet"):
                    continue  # Hadoop's .crc side files stay in staging and go with it
                partition_dirs = Path(dirpath).relative_to(staging)
                target = root / partition_dirs / f"{write_id}-{name}"
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(Path(dirpath) / name, target)
                placed.append(target)
                values = dict(unquote(part).split("=", 1) for part in partition_dirs.parts)
                stat = target.stat()
                rel = str(target.relative_to(root))
                actions.append(AddAction(rel, stat.st_size, values, int(stat.st_mtime * 1000), True,
                                         file_statistics(target)))
        return actions

    @staticmethod
    def _check_within(actions: list[AddAction], replace: dict[str, str] | None, location: str) -> None:
        if not replace:
            return
        for action in actions:
            outside = {k: v for k, v in action.partition_values.items() if replace.get(k) != v}
            if outside:
                raise TableWriteError(f"{location}: rows outside the replaced partition {replace}: {outside}")

    @staticmethod
    def _commit(root, df, actions, run_id, partition_by, replace) -> None:
        schema = to_arrow_schema(df.schema, timezone="UTC")
        properties = CommitProperties(custom_metadata={RUN_ID_KEY: run_id})
        if not (root / "_delta_log").is_dir():
            create_table_with_add_actions(
                str(root), Schema.from_arrow(schema), actions, mode="error",
                partition_by=partition_by or None, commit_properties=properties,
            )
            return
        filters = [(k, "=", v) for k, v in replace.items()] if replace else None
        DeltaTable(str(root)).create_write_transaction(
            actions, mode="overwrite", schema=schema, partition_by=partition_by or None,
            partition_filters=filters, commit_properties=properties,
        )

    def read(self, spark, location, version=None) -> DataFrame:
        table = DeltaTable(location, version=version)
        schema = from_arrow_schema(pa.schema(table.schema().to_arrow()), prefer_timestamp_ntz=False)
        files = table.file_uris()
        if not files:
            return spark.createDataFrame([], schema)
        return spark.read.schema(schema).option("basePath", location).parquet(*files)

    def version(self, location) -> int:
        return DeltaTable(location).version()

    def exists(self, location) -> bool:
        return DeltaTable.is_deltatable(location)

    def commit_metadata(self, location) -> dict:
        return DeltaTable(location).history(limit=1)[0]

    def live_files(self, location) -> list[str]:
        return [unquote(path) for path in DeltaTable(location).get_add_actions(flatten=True).column("path").to_pylist()]

    def delete_partitions(self, location, partitions, *, run_id) -> int:
        table = DeltaTable(self._writable(location))
        table.delete(_any_of(partitions), commit_properties=CommitProperties(custom_metadata={RUN_ID_KEY: run_id}))
        return table.version()

    def checkpoint(self, location) -> None:
        DeltaTable(self._writable(location)).create_checkpoint()

    def vacuum(self, location, retain_hours) -> None:
        # full: also the files removed before the latest checkpoint, and files no commit ever named
        DeltaTable(self._writable(location)).vacuum(retention_hours=retain_hours, dry_run=False, full=True,
                                                     enforce_retention_duration=False)

    def _properties(self, location) -> dict[str, str]:
        return dict(DeltaTable(location).metadata().configuration)

    def _set_property(self, location, key, value, *, run_id) -> None:
        DeltaTable(self._writable(location)).alter.set_table_properties(
            {key: value}, raise_if_not_exists=False,  # an aiml.* key is not one delta-rs knows
            commit_properties=CommitProperties(custom_metadata={RUN_ID_KEY: run_id}))

    def _file_ages(self, location) -> list[tuple[str, int]]:
        actions = DeltaTable(location).get_add_actions(flatten=True)
        return list(zip([unquote(p) for p in actions.column("path").to_pylist()],
                        actions.column("modification_time").to_pylist()))


class SparkDeltaTables(DeltaTables):
    """Databricks: Spark's own Delta reader and writer."""

    kms_key_alias: str | None = None  # settings.storage.kms_key_alias: every file written asks for SSE-KMS under it

    def s3a_encryption(self) -> dict[str, str]:
        """The S3A settings that make each PUT carry the SSE-KMS headers (the buckets' default is the backstop)."""
        if not self.kms_key_alias:
            return {}
        return {"fs.s3a.server-side-encryption-algorithm": "SSE-KMS",
                "fs.s3a.server-side-encryption.key": self.kms_key_alias}

    def _encrypting(self, spark: SparkSession) -> SparkSession:
        for key, value in self.s3a_encryption().items():
            spark.conf.set(key, value)
        return spark

    def write(self, df, location, *, run_id, partition_by=None, replace=None) -> int:
        self._writable(location)
        self._encrypting(df.sparkSession)
        writer = df.write.format("delta").mode("overwrite").option("userMetadata", run_id)
        if partition_by:
            writer = writer.partitionBy(*partition_by)
        if replace:
            writer = writer.option("replaceWhere", _predicate(replace))
        writer.save(location)
        return self.version(location)

    def read(self, spark, location, version=None) -> DataFrame:
        reader = spark.read.format("delta")
        return (reader if version is None else reader.option("versionAsOf", version)).load(location)

    def _last_commit(self, location):
        spark = SparkSession.builder.getOrCreate()
        return spark.sql(f"DESCRIBE HISTORY {delta_path(location)} LIMIT 1").first()

    def version(self, location) -> int:
        return int(self._last_commit(location)["version"])

    def exists(self, location) -> bool:
        from delta.tables import DeltaTable as SparkDeltaTable  # the Databricks runtime's own Delta

        return SparkDeltaTable.isDeltaTable(SparkSession.builder.getOrCreate(), location)

    def commit_metadata(self, location) -> dict:
        commit = self._last_commit(location)
        return {"version": int(commit["version"]), RUN_ID_KEY: commit["userMetadata"]}

    def live_files(self, location) -> list[str]:
        root = location.rstrip("/") + "/"
        files = SparkSession.builder.getOrCreate().read.format("delta").load(location).inputFiles()
        return [unquote(uri.removeprefix(root)) for uri in files]

    def _sql_committed_by(self, statement: str, run_id: str) -> None:
        spark = self._encrypting(SparkSession.builder.getOrCreate())
        spark.conf.set("spark.databricks.delta.commitInfo.userMetadata", run_id)
        try:
            spark.sql(statement)
        finally:
            spark.conf.unset("spark.databricks.delta.commitInfo.userMetadata")

    def delete_partitions(self, location, partitions, *, run_id) -> int:
        self._sql_committed_by(f"DELETE FROM {delta_path(self._writable(location))} WHERE {_any_of(partitions)}",
                               run_id)
        return self.version(location)

    def _properties(self, location) -> dict[str, str]:
        rows = SparkSession.builder.getOrCreate().sql(f"SHOW TBLPROPERTIES {delta_path(location)}").collect()
        return {row["key"]: row["value"] for row in rows}

    def _set_property(self, location, key, value, *, run_id) -> None:
        self._sql_committed_by(f"ALTER TABLE {delta_path(self._writable(location))} SET TBLPROPERTIES "
                               f"({string_literal(key)} = {string_literal(value)})", run_id)

    def _file_ages(self, location) -> list[tuple[str, int]]:
        root = location.rstrip("/") + "/"
        files = SparkSession.builder.getOrCreate().read.format("delta").load(location).select(
            "_metadata.file_path", "_metadata.file_modification_time").distinct().collect()
        return [(unquote(path.removeprefix(root)), int(moment.timestamp() * 1000)) for path, moment in files]

    def checkpoint(self, location) -> None:
        if self._properties(self._writable(location)).get("delta.checkpointInterval") != "1":
            # Spark has no call to write a checkpoint; with interval 1 every commit, this one first, writes one
            spark = SparkSession.builder.getOrCreate()
            spark.sql(f"ALTER TABLE {delta_path(location)} SET TBLPROPERTIES ('delta.checkpointInterval' = '1')")

    def vacuum(self, location, retain_hours) -> None:
        statement = f"VACUUM {delta_path(self._writable(location))} RETAIN {int(retain_hours)} HOURS"
        spark = SparkSession.builder.getOrCreate()
        check = "spark.databricks.delta.retentionDurationCheck.enabled"
        spark.conf.set(check, "false")  # Delta refuses under 7 days unless told; an erasure means exactly that
        try:
            spark.sql(statement)
        finally:
            spark.conf.unset(check)
