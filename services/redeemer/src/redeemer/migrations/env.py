from scanner_auth_shared.migrations import run_env

run_env()
