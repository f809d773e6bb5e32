"""MLflow tracking and model registry: SQLite under the AIML home locally; Databricks / Unity Catalog remotely."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from dagster import ConfigurableResource

if TYPE_CHECKING:  # MLflow loads where it is used, not with the code location
    from mlflow import MlflowClient


class MlflowStoreUnavailable(RuntimeError):
    """The tracking or registry store could not be written or read (a SQLite database locked by another
    connection); transient, so the step is retried."""


class MlflowResource(ConfigurableResource):
    tracking_uri: str  # "sqlite" means the SQLite database under `home`
    registry_uri: str
    experiment: str
    home: str = ""

    def _resolve(self, uri: str) -> str:
        if uri != "sqlite":
            return uri
        db = Path(self.home) / "mlflow" / "mlflow.db"
        db.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{db}"

    @property
    def artifact_location(self) -> str | None:
        return (Path(self.home) / "mlflow" / "artifacts").as_uri() if self.tracking_uri == "sqlite" else None

    def activate(self) -> str:
        """Point the mlflow client library at this environment and return the experiment id."""
        import mlflow

        mlflow.set_tracking_uri(self._resolve(self.tracking_uri))
        mlflow.set_registry_uri(self._resolve(self.registry_uri))
        experiment = mlflow.get_experiment_by_name(self.experiment)
        if experiment is not None:
            return experiment.experiment_id
        return mlflow.create_experiment(self.experiment, artifact_location=self.artifact_location)

    def client(self) -> MlflowClient:
        from mlflow import MlflowClient

        self.activate()
        return MlflowClient()

    @contextmanager
    def unavailable_named(self, doing: str):
        """Raise a locked store's error as `MlflowStoreUnavailable` naming the store and what was being done.
        MLflow has already waited out SQLite's busy timeout (20 s) by then."""
        from mlflow.exceptions import MlflowException

        try:
            yield
        except MlflowException as exc:
            if "database is locked" not in str(exc):
                raise
            raise MlflowStoreUnavailable(
                f"MLflow store {self._resolve(self.tracking_uri)} is locked by another connection (SQLite: "
                f"database is locked) while {doing}") from exc
