"""Runtime: resolving a run, engines, Dask workers, cancellation, crash recovery, the hand-off to training."""
