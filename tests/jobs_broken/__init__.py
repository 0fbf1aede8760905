"""A job package with one module that fails to import, beside one that is fine."""
