"""The installed version of runner (a leaf: the CLI reads it without importing the package API)."""

__version__ = "0.1.0"
