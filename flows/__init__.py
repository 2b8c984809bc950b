"""Prefect flows and the ``evol`` command line: wiring only, the work is in ``tasks``."""
