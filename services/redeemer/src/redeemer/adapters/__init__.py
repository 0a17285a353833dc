"""Tables and SQL of the redeemer."""
