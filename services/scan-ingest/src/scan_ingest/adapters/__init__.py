"""scan-ingest's adapters: its tables, the gate writer's store and the gate's listener."""
