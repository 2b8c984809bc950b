"""``evol run`` in a process of its own with one infrastructure failure planted, for tests/test_infra_errors.py:
``enospc`` (every Parquet write finds the disk full) or ``race`` (another run takes the folder's lease between the
command's check and the flow's start, as a run started in the same second does). Usage: MODE CONFIG [RECORD]."""

from __future__ import annotations

import errno
import json
import sys

import pyarrow.parquet as pq


def main(mode: str, config: str, record: str | None = None) -> None:
    if mode == "enospc":
        def full(self, *args, **kwargs):
            raise OSError(errno.ENOSPC, "No space left on device")

        pq.ParquetWriter.write_table = full
    elif mode == "race":
        import flows.cli_models
        from storage.lease import RunLease
        from tasks.core.config_file import load_run_config
        from tasks.core.context import run_layout

        def other_run_starts(cfg):  # after `evol run` found the folder free, before its flow takes the lease
            lease = RunLease(run_layout(load_run_config(config)).run_uri, purpose="flow run B").acquire()
            with open(record, "w") as f:
                json.dump(lease.read(), f)

        flows.cli_models.prepare_for_config = other_run_starts
    from flows.cli import app

    app(["run", config, "--no-progress"])


if __name__ == "__main__":
    main(*sys.argv[1:])
