"""Spark: one local session (in-process, or the driver of a standalone cluster), or the cluster's own on Databricks."""

from __future__ import annotations

import os
import sys
import threading

from dagster import ConfigurableResource
from pyspark.sql import SparkSession

_lock = threading.Lock()


class SparkResource(ConfigurableResource):
    """Hands out the process's SparkSession.

    Locally it builds a session once per process with settings sized for a laptop or CI box: in-process for a
    `local[...]` master, or this process as the driver of a standalone cluster for `spark://host:port` (whose
    executors must see the same filesystem: delta-rs commits, here, the files they write under the AIML home). On
    Databricks the step launcher runs the asset on the cluster, where `getOrCreate` returns the cluster's session
    and the rest is ignored.
    """

    master: str = "local[*]"
    shuffle_partitions: int = 4
    driver_memory: str = "4g"
    executor_memory: str | None = None  # a cluster's executors; None: Spark's default
    executor_cores: int | None = None
    python: str | None = None  # the Python the executors start; None: this interpreter
    ui: bool = False
    local: bool = True

    def _conf(self) -> dict[str, str]:
        conf = {
            "spark.driver.memory": self.driver_memory,
            "spark.sql.shuffle.partitions": str(self.shuffle_partitions),
            "spark.default.parallelism": str(self.shuffle_partitions),
            "spark.ui.enabled": str(self.ui).lower(),
            "spark.ui.showConsoleProgress": "false",
            "spark.sql.session.timeZone": "UTC",
            "spark.driver.extraJavaOptions": "-Duser.timezone=UTC",
            "spark.executor.extraJavaOptions": "-Duser.timezone=UTC",  # a cluster's executor JVMs
            # delta-rs reads the Parquet that Spark's executors write: standard INT64 micros, no INT96.
            "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
            "spark.sql.execution.arrow.pyspark.enabled": "true",
            "spark.hadoop.mapreduce.fileoutputcommitter.marksuccessfuljobs": "false",
            "spark.hadoop.parquet.enable.summary-metadata": "false",
        }
        if self.executor_memory:
            conf["spark.executor.memory"] = self.executor_memory
        if self.executor_cores:
            conf["spark.executor.cores"] = str(self.executor_cores)
        return conf

    def get_session(self) -> SparkSession:
        if not self.local:
            return SparkSession.builder.getOrCreate()
        with _lock:
            active = SparkSession.getActiveSession()
            if active is not None:
                return active
            # Python workers (mapInPandas scoring), here or on a cluster's executors, run the interpreter named by
            # this variable, read when the context starts (spark.pyspark.python only records it): this one, with
            # its libraries, not the PATH's python3, unless told otherwise.
            if self.python:
                os.environ["PYSPARK_PYTHON"] = self.python
            os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
            builder = SparkSession.builder.master(self.master).appName("aiml_assets")
            for key, value in {**self._conf(), "spark.pyspark.python": os.environ["PYSPARK_PYTHON"]}.items():
                builder = builder.config(key, value)
            return builder.getOrCreate()
