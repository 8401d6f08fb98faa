"""Developer tooling: local Google services, demos. Not shipped in the service image."""
