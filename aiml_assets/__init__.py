"""aiml_assets: the BUK AIML Databricks AI/ML platform as Dagster software-defined assets."""
