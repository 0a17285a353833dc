"""Real-infrastructure fixtures for every test under this repository."""

pytest_plugins = ["scanner_auth_shared.testing.plugin"]
