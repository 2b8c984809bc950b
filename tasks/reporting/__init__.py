"""Reporting: what users see of a run: progress, tables and samples in the UI, the run log, the runs index."""
