"""Tortie's node daemon: ExaBGP supervision, routing, kernel programming, metrics."""


def __getattr__(name: str) -> str:
    """`__version__`, looked up on first use: importlib.metadata costs more than a CLI call or a CNI run may."""
    if name != "__version__":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("tortie")
    except PackageNotFoundError:  # running from a source tree
        return "0.0.0+src"
