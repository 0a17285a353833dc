"""scan-ingest's adapters: its ports, the repository (PostgreSQL and in memory), its tables, the
gate in memory and its sync, and the Kafka publisher of uploads."""
