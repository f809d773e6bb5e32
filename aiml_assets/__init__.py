"""aiml_assets: the BUK AIML Databricks AI/ML platform as Dagster software-defined assets."""

# First, before any Dagster definition is built: silence exactly the Dagster warnings the project has reviewed.
from aiml_assets import known_warnings as _known_warnings

_known_warnings.install()
