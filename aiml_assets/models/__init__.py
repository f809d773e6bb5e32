"""Model versions: per-product propensity models trained from lab training sets, tracked and registered in MLflow."""
