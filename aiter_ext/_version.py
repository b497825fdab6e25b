"""The package version, in a module of its own so that ``aiter_ext.core`` may read it without importing the ops."""

__version__ = "0.1.0"
