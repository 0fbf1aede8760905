"""A job package whose decorator names a job longer than the history's column allows."""
