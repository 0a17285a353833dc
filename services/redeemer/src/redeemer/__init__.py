"""scanner-auth redeemer service."""
