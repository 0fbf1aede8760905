"""Fails at import time, the way a module with a bad top-level line does."""

raise RuntimeError("this module is broken on purpose")
