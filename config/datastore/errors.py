"""Datastore errors."""


class DatastoreError(Exception):
    """The datastore cannot do what was asked; the message says why."""


class InvalidKey(DatastoreError, ValueError):
    """Not a valid v1 datastore key."""
