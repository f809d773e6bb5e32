"""The catalog: Unity Catalog three-level names remotely; locally a persistent catalog mapping the same names to
Delta tables. Tables are only ever addressed by these names; locations are the catalog's business."""

from __future__ import annotations

import json
import re
import sqlite3
from abc import ABC, abstractmethod
from contextlib import closing
from datetime import datetime, timezone
from pathlib import Path

from dagster import ConfigurableResource
from pyspark.sql import DataFrame, SparkSession

from aiml_assets.resources.egress import EgressRefused
from aiml_assets.resources.tables import DeltaRsTables
from aiml_assets.sql_identifiers import location_literal, quoted_name, quoted_principal, string_literal

_NAME = re.compile(r"^[a-z_][a-z0-9_]*\.[a-z_][a-z0-9_]*\.[a-z_][a-z0-9_]*$")


class CatalogError(LookupError):
    pass


class PublicationConflict(CatalogError):
    """A compare-and-swap switch lost: the name no longer serves the version the publisher read. Nothing changed;
    re-read what it serves and decide again."""


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise CatalogError(f"{name!r} is not a three-level catalog name (catalog.schema.table, lower case)")
    return name


class Catalog(ConfigurableResource, ABC):
    # What this environment may read and write: catalog or catalog.schema prefixes (build_resources sets both; None,
    # any name, is for code that builds its own catalog, like the local EDP seed and tests)
    readable: list[str] | None = None
    writable: list[str] | None = None

    def _may(self, action: str, name: str) -> str:
        prefixes = self.readable if action == "read" else self.writable
        if prefixes is not None and not any(check_name(name).startswith(f"{p}.") for p in prefixes):
            raise EgressRefused(f"{name}: this environment may {action} only {', '.join(f'{p}.*' for p in prefixes)}")
        return name

    @abstractmethod
    def read(self, spark: SparkSession, name: str, version: int | None = None) -> DataFrame:
        """The table `name` as of Delta `version` (time travel), or its current version."""

    @abstractmethod
    def location(self, name: str) -> str: ...

    @abstractmethod
    def register(self, name: str, location: str, *, owner: str, comment: str = "", properties: dict | None = None) -> None:
        """Point `name` at the Delta table at `location`, in one atomic step."""

    @abstractmethod
    def exists(self, name: str) -> bool: ...

    @abstractmethod
    def drop(self, name: str) -> None:
        """Forget the name (the table's files are the caller's business: this never deletes data)."""

    @abstractmethod
    def publish(self, name: str, location: str, *, version_id: str, owner: str, comment: str, properties: dict,
                read_grants: list[str], replaces: str | None = None) -> None:
        """Switch `name` to the immutable table version at `location` in one atomic step, with its owner, comment,
        properties and SELECT grants to `read_grants`: a compare-and-swap that switches only while the name serves
        version `replaces` (None: nothing yet; `version_id` itself completes an interrupted switch again), and
        raises `PublicationConflict` otherwise."""

    @abstractmethod
    def published(self, name: str) -> dict | None:
        """The properties of what `name` currently serves (with `cdp_version`), or None if nothing is published."""

    @abstractmethod
    def version(self, name: str) -> int:
        """The Delta table version the name currently points at."""


class LocalCatalog(Catalog):
    """A SQLite registry under the AIML home: name -> Delta location, owner, comment, properties."""

    home: str

    @property
    def _db(self) -> Path:
        return Path(self.home) / "catalog" / "registry.sqlite"

    def _connect(self) -> sqlite3.Connection:
        self._db.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self._db, timeout=30)
        conn.execute(
            "CREATE TABLE IF NOT EXISTS tables (name TEXT PRIMARY KEY, location TEXT NOT NULL, owner TEXT NOT NULL,"
            " comment TEXT NOT NULL, properties TEXT NOT NULL, registered_at TEXT NOT NULL)"
        )
        return conn

    def managed_location(self, name: str) -> str:
        """Where a table owned by the catalog itself lives (the local stand-in for EDP's storage)."""
        return str(Path(self.home, "catalog", *check_name(name).split(".")))

    @staticmethod
    def _row(name, location, owner, comment, properties) -> tuple:
        """A registry row; `registered_at` is a record of when, which nothing decides on."""
        return (check_name(name), location, owner, comment, json.dumps(properties or {}, sort_keys=True),
                datetime.now(timezone.utc).isoformat())

    def register(self, name, location, *, owner, comment="", properties=None) -> None:
        self._may("write", name)
        with closing(self._connect()) as conn, conn:
            conn.execute("INSERT OR REPLACE INTO tables VALUES (?, ?, ?, ?, ?, ?)",
                         self._row(name, location, owner, comment, properties))

    def entry(self, name: str) -> dict:
        with closing(self._connect()) as conn:
            found = conn.execute("SELECT * FROM tables WHERE name = ?", (check_name(name),)).fetchone()
        if found is None:
            raise CatalogError(f"{name} is not registered in the local catalog at {self._db}")
        keys = ("name", "location", "owner", "comment", "properties", "registered_at")
        entry = dict(zip(keys, found))
        entry["properties"] = json.loads(entry["properties"])
        return entry

    def exists(self, name) -> bool:
        try:
            self.entry(name)
        except CatalogError:
            return False
        return True

    def location(self, name) -> str:
        return self.entry(name)["location"]

    def drop(self, name) -> None:
        self._may("write", name)
        with closing(self._connect()) as conn, conn:
            conn.execute("DELETE FROM tables WHERE name = ?", (check_name(name),))

    def publish(self, name, location, *, version_id, owner, comment, properties, read_grants, replaces=None) -> None:
        self._may("write", name)
        row = self._row(name, location, owner, comment,
                        {**properties, "cdp_version": version_id, "read_grants": sorted(read_grants)})
        # one statement, the compare and the swap together: readers resolve the old version or the new one
        with closing(self._connect()) as conn, conn:
            if replaces is None:
                switched = conn.execute("INSERT OR IGNORE INTO tables VALUES (?, ?, ?, ?, ?, ?)", row).rowcount
            else:
                switched = conn.execute(
                    "UPDATE tables SET location = ?, owner = ?, comment = ?, properties = ?, registered_at = ? "
                    "WHERE name = ? AND json_extract(properties, '$.cdp_version') = ?",
                    (*row[1:], row[0], replaces)).rowcount
        if not switched:
            serves = (self.published(name) or {}).get("cdp_version", "nothing")
            raise PublicationConflict(f"{name}: not switched to version {version_id}: it serves {serves}, not "
                                      f"{replaces or 'nothing'} as read; another publisher switched it first")

    def published(self, name) -> dict | None:
        return self.entry(name)["properties"] if self.exists(name) else None

    def names(self) -> list[str]:
        with closing(self._connect()) as conn:
            return [row[0] for row in conn.execute("SELECT name FROM tables ORDER BY name")]

    def read(self, spark, name, version=None) -> DataFrame:
        self._may("read", name)
        return DeltaRsTables().read(spark, self.location(name), version)

    def version(self, name) -> int:
        self._may("read", name)
        return DeltaRsTables().version(self.location(name))


class UnityCatalog(Catalog):
    """Unity Catalog through the cluster's Spark session; grants and lineage are Unity Catalog's own."""

    def _spark(self) -> SparkSession:
        return SparkSession.builder.getOrCreate()

    def read(self, spark, name, version=None) -> DataFrame:
        self._may("read", name)
        if version is None:
            return spark.table(check_name(name))
        return spark.sql(f"SELECT * FROM {_table(name)} VERSION AS OF {int(version)}")

    def location(self, name) -> str:
        return self._spark().sql(f"DESCRIBE DETAIL {_table(name)}").first()["location"]

    def exists(self, name) -> bool:
        return self._spark().catalog.tableExists(check_name(name))

    def drop(self, name) -> None:
        self._may("write", name)
        self._spark().sql(f"DROP TABLE IF EXISTS {_table(name)}")  # an external table: its files stay

    def version(self, name) -> int:
        self._may("read", name)
        return int(self._spark().sql(f"DESCRIBE HISTORY {_table(name)} LIMIT 1").first()["version"])

    def register(self, name, location, *, owner, comment="", properties=None) -> None:
        self._may("write", name)
        spark = self._spark()
        # every value checked before the first statement: a refused one leaves nothing half done
        table, location, owner = _table(name), location_literal(location), quoted_principal(owner, "owner")
        if not self.exists(name):
            spark.sql(f"CREATE TABLE {table} USING DELTA LOCATION {location}")
            # once, at creation: after it, only the owner (or a member of the owning group) may alter the table
            spark.sql(f"ALTER TABLE {table} SET OWNER TO {owner}")
        spark.sql(f"COMMENT ON TABLE {table} IS {string_literal(comment)}")
        if properties:
            spark.sql(f"ALTER TABLE {table} SET TBLPROPERTIES ({_properties(properties)})")

    def publish(self, name, location, *, version_id, owner, comment, properties, read_grants, replaces=None) -> None:
        """Each version is a table of its own; the name tenants read is a view over one of them, and a one-row
        Delta table `<name>__pointer` says which. Unity Catalog has no conditional ALTER VIEW, so the pointer is the
        compare-and-swap: `UPDATE ... WHERE cdp_version = <replaces>` switches it only from the version the
        publisher read, and Delta's optimistic concurrency (Serializable on this table) fails the second of two
        racing UPDATEs of its one row (DELTA_CONCURRENT_*); 0 rows or that failure is a lost race, before the view
        is touched. The winner then points the view at the pointer's version and re-reads the pointer until the
        two agree, so the view converges on the pointer whichever ALTER VIEW runs last. ALTER VIEW ... AS keeps the
        view's owner and grants (CREATE OR REPLACE VIEW would drop them); the view runs with its owner's rights, so
        the owner reads the version tables and tenants only the view. The service principal that publishes must be
        a member of the owning group. A crash after the pointer and before the view leaves the view behind: the
        next publish of that version (`replaces` itself) brings it up."""
        self._may("write", name)
        spark = self._spark()
        # every value checked before the first statement: a refused one leaves nothing half done
        view, version_table = _table(name), _version_table(name, version_id)
        location, owner = location_literal(location), quoted_principal(owner, "owner")
        grants = [quoted_principal(group, "read_grants") for group in read_grants]
        pointer, described = _pointer(name), {**properties, "cdp_version": version_id}
        expected = string_literal(_version_id(replaces) if replaces else "")
        spark.sql(f"CREATE TABLE IF NOT EXISTS {version_table} USING DELTA LOCATION {location}")
        spark.sql(f"GRANT SELECT ON TABLE {version_table} TO {owner}")
        if not spark.catalog.tableExists(f"{check_name(name)}__pointer"):
            served = self._view_version(name) if self.exists(name) else ""  # a view from before the pointer
            spark.sql(f"CREATE TABLE IF NOT EXISTS {pointer} TBLPROPERTIES ('delta.isolationLevel' = 'Serializable',"
                      " 'delta.enableDeletionVectors' = 'false') AS SELECT "
                      f"{string_literal(served)} AS cdp_version, '{{}}' AS properties")
        try:
            row = spark.sql(f"UPDATE {pointer} SET cdp_version = {string_literal(version_id)}, properties = "
                            f"{string_literal(json.dumps(described, sort_keys=True))} "
                            f"WHERE cdp_version = {expected}").first()
        except Exception as exc:
            if "DELTA_CONCURRENT" not in str(exc):
                raise
            row = None
        if not row or not row["num_affected_rows"]:
            raise PublicationConflict(f"{name}: not switched to version {version_id}: the pointer {pointer} no "
                                      f"longer names {replaces or 'nothing'}; another publisher switched it first")
        serving = None  # what the view selects from, as far as this publisher knows
        if not self.exists(name):
            spark.sql(f"CREATE VIEW {view} AS SELECT * FROM {version_table}")
            spark.sql(f"ALTER VIEW {view} OWNER TO {owner}")
            serving = version_id
        for group in grants:
            spark.sql(f"GRANT SELECT ON TABLE {view} TO {group}")
        spark.sql(f"COMMENT ON TABLE {view} IS {string_literal(comment)}")
        self._follow_pointer(name, serving)

    def _follow_pointer(self, name: str, serving: str | None) -> None:
        """Point the view at the pointer's version until a re-read of the pointer finds nothing newer."""
        spark, done = self._spark(), None
        while (target := self._pointer_row(name)) and target["cdp_version"] != done:
            done = target["cdp_version"]
            if done != serving:
                spark.sql(f"ALTER VIEW {_table(name)} AS SELECT * FROM {_version_table(name, done)}")
                serving = done
            spark.sql(f"ALTER VIEW {_table(name)} SET TBLPROPERTIES ({_properties(json.loads(target['properties']))})")

    def _pointer_row(self, name: str):
        return self._spark().sql(f"SELECT cdp_version, properties FROM {_pointer(name)}").first()

    def _view_version(self, name: str) -> str:
        text = self._spark().sql(f"SHOW CREATE TABLE {_table(name)}").first()[0]
        served = re.search(r"__v_([0-9a-f]{16})\b", text)
        return served.group(1) if served else ""

    def published(self, name) -> dict | None:
        """The pointer's version and properties (what the compare-and-swap compares); before the first pointer,
        the version the view selects from."""
        if self._spark().catalog.tableExists(f"{check_name(name)}__pointer"):
            row = self._pointer_row(name)
            return {**json.loads(row["properties"]), "cdp_version": row["cdp_version"]} if row and row[
                "cdp_version"] else None
        if not self.exists(name):
            return None
        properties = {row["key"]: row["value"] for row in
                      self._spark().sql(f"SHOW TBLPROPERTIES {_table(name)}").collect()}
        return {**properties, "cdp_version": self._view_version(name) or properties.get("cdp_version")}


_VERSION_ID = re.compile(r"[0-9a-f]{16}")


def _version_id(version_id: str) -> str:
    if not isinstance(version_id, str) or not _VERSION_ID.fullmatch(version_id):
        raise CatalogError(f"{version_id!r} is not a CDP version id (16 hex digits)")
    return version_id


def _version_table(name: str, version_id: str) -> str:
    return _table(f"{check_name(name)}__v_{_version_id(version_id)}")


def _pointer(name: str) -> str:
    return _table(f"{check_name(name)}__pointer")


def _table(name: str) -> str:
    return quoted_name(check_name(name))


def _properties(properties: dict) -> str:
    return ", ".join(f"{string_literal(k)} = {string_literal(v)}" for k, v in properties.items())
