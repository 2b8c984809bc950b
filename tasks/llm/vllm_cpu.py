"""The vLLM CPU settings this project picks for a process: which CPUs its OpenMP threads use, the KV cache size."""

from __future__ import annotations

import os


def cpu_id_ranges(cpus: set[int] | list[int]) -> str:
    """Compress CPU ids into vLLM's list syntax: ``{0, 1, 2, 5}`` -> ``"0-2,5"``."""
    ids = sorted(set(cpus))
    parts: list[str] = []
    start = prev = ids[0]
    for cpu in ids[1:] + [None]:
        if cpu is not None and cpu == prev + 1:
            prev = cpu
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if cpu is not None:
            start = prev = cpu
    return ",".join(parts)


def cpu_env_defaults(cpus: set[int] | list[int] | None = None) -> dict[str, str]:
    """The vLLM CPU variables this project sets when they are unset: a 1 GiB KV cache, OpenMP threads bound to
    every CPU this process may use, none reserved (the default reserves one, half of a 2-core box)."""
    if cpus is None:
        cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    return {
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "VLLM_CPU_OMP_THREADS_BIND": cpu_id_ranges(list(cpus)),
        "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
    }
