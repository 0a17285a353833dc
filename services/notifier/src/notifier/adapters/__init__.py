"""The notifier's adapters: its tables and queries, the email renderer and the SMTP relay."""
