"""The local EDP: synthetic stand-ins for the bank's EDP source data products (see `aiml_assets.edp.seed`)."""
