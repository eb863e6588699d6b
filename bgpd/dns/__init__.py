"""Pod and service names from the datastore, served by every node (docs/dns.md)."""
