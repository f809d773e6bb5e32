"""Features: one implementation of the customer features, used by the lab (per snapshot) and by prod scoring."""
