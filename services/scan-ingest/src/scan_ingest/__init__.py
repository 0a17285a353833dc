"""scanner-auth scan-ingest service."""
