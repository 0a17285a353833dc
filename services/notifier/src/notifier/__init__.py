"""scanner-auth notifier service."""
