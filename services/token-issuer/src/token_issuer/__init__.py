"""scanner-auth token-issuer service."""
