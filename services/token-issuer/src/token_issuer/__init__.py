"""scanner-auth token-issuer service."""

SERVICE = "token-issuer"
SOURCE = f"scanner-auth/{SERVICE}"  # the CloudEvents source of everything it publishes
