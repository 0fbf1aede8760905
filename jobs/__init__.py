"""The team's jobs: one module per job, each an `@job` function (see README.md)."""
