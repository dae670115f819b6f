"""The package version, in a module of its own so that any module can name it without importing `firm`'s façade."""

__version__ = "0.1.0"
