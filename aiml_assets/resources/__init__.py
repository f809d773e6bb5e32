"""Resource classes, each with its local and its Databricks/AWS implementation; `per_environment` picks them."""
