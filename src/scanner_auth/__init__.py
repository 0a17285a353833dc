"""The scanner-auth command line: dev, serve, migrate."""
