"""Tortie's node daemon: ExaBGP supervision, routing, kernel programming, metrics."""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tortie")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0+src"
