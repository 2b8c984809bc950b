"""``--preload tasks.worker``: the Dask preload module of ``evol worker`` (its hook: ``tasks.runtime.worker``)."""

from tasks.runtime.worker import dask_setup

__all__ = ["dask_setup"]
