"""Jobs the test suite runs through the real `runner` command (job_packages = jobs_fixture)."""
