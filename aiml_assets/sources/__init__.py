"""EDP source products: read through the catalog, owned by EDP, never written by us."""
