"""Persistence of the token-issuer: its tables and the SQL that reads and writes them."""
