"""Pipeline stages, one per file, each a thin Prefect task over pure functions."""
