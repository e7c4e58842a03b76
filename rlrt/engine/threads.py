"""How many intra-op threads torch uses in the main process, chosen for the machine.

torch starts one intra-op thread per physical core, whatever else runs: DataLoader workers (each a
process with its own thread) and other jobs on a shared box. On a 2-core machine with one loader
worker, the training step's two threads then compete with the worker and spin-wait for each other;
a cached demo epoch ran 3x slower than with one thread. The default here counts the CPUs this
process may actually run on (its affinity mask, which containers and batch schedulers set) and
leaves one for each loader worker.

An explicit choice always wins: `OMP_NUM_THREADS` in the environment, or `--threads N` on the
command line.
"""

from __future__ import annotations

import os


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def default_threads(num_workers: int, cpus: int | None = None) -> int:
    """Intra-op threads for the main process: the CPUs left once each loader worker has one,
    at least one."""
    cpus = available_cpus() if cpus is None else cpus
    return max(1, cpus - max(0, num_workers))


def choose_threads(requested: int | None, num_workers: int) -> int | None:
    """The thread count to set, or None to leave torch's as it is (`OMP_NUM_THREADS` is set).

    Raises ValueError for a `requested` count below 1.
    """
    if requested is not None:
        if requested < 1:
            raise ValueError(f"--threads must be at least 1, got {requested}")
        return requested
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    return default_threads(num_workers)
