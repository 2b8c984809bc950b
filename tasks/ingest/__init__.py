"""Ingest: a seed file in, seed shards (round 0) and quarantined rows out."""
