"""Test support: real infrastructure fixtures (a pytest plugin) and small helpers.

Enable with `pytest_plugins = ["scanner_auth_shared.testing.plugin"]` in a conftest.
"""
