"""Publication of the scores as the Consolidated Data Product nba_propensity: write-audit-publish, contract."""
