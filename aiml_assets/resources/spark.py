"""Spark: one in-process local session, or the cluster's own session on Databricks."""

from __future__ import annotations

import os
import sys
import threading

from dagster import ConfigurableResource
from pyspark.sql import SparkSession

_lock = threading.Lock()


class SparkResource(ConfigurableResource):
    """Hands out the process's SparkSession.

    Locally it builds a `local[*]` session once per process with settings sized for a laptop or CI box; on
    Databricks the step launcher runs the asset on the cluster, where `getOrCreate` returns the cluster's session
    and `master` is ignored.
    """

    master: str = "local[*]"
    shuffle_partitions: int = 4
    driver_memory: str = "4g"
    local: bool = True

    def get_session(self) -> SparkSession:
        if not self.local:
            return SparkSession.builder.getOrCreate()
        with _lock:
            active = SparkSession.getActiveSession()
            if active is not None:
                return active
            # Python workers (mapInPandas scoring) must run this interpreter, with its libraries, not the PATH's
            # python3; pyspark reads this variable, not spark.pyspark.python, when it starts a local context.
            os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
            return (
                SparkSession.builder.master(self.master)
                .appName("aiml_assets")
                .config("spark.driver.memory", self.driver_memory)
                .config("spark.sql.shuffle.partitions", str(self.shuffle_partitions))
                .config("spark.default.parallelism", str(self.shuffle_partitions))
                .config("spark.ui.enabled", "false")
                .config("spark.ui.showConsoleProgress", "false")
                .config("spark.sql.session.timeZone", "UTC")
                .config("spark.driver.extraJavaOptions", "-Duser.timezone=UTC")
                # delta-rs reads the Parquet that Spark's executors write: standard INT64 micros, no INT96.
                .config("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
                .config("spark.sql.execution.arrow.pyspark.enabled", "true")
                .config("spark.hadoop.mapreduce.fileoutputcommitter.marksuccessfuljobs", "false")
                .config("spark.hadoop.parquet.enable.summary-metadata", "false")
                .getOrCreate()
            )
