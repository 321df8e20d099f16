"""Blocks of rows spread over worker threads that each run torch ops on a single intra-op thread.

Why not torch's own intra-op parallelism: a fused loss over cache-sized blocks issues a dozen ops
per block, each an OpenMP parallel region that ends in a barrier. When any core is busy with another
process (a data loader, another job) every barrier waits for the thread that was descheduled, so
thousands of short regions turn a 0.1 s loss into seconds (measured on 2 cores: 115 ms -> 2.3 s at
1024 x 32000 with one core busy, while torch's own loss, a few long regions, went 170 -> 317 ms).
Here each worker takes the next block when it is done with its last one (no barrier, no static
split): a slow core simply processes fewer blocks. Torch ops release the GIL, so the workers run in
parallel; the Python between ops is short against a block's arithmetic.

Each worker sets its intra-op thread count to 1 once, when it starts. ``torch.set_num_threads`` also
stores the count as the default for threads that start using torch later, so the thread that creates
the workers sets its own count back straight after; nothing else is changed for the caller.
"""

from __future__ import annotations

import itertools
import os
import queue
import threading
from collections.abc import Callable

import torch

_lock = threading.Lock()
_tasks: queue.SimpleQueue[Callable[[], None]] | None = None
_size = 0


def _reset_after_fork() -> None:
    # A forked child (e.g. a DataLoader worker) has none of the parent's threads: start afresh.
    global _tasks, _size, _lock
    _tasks, _size, _lock = None, 0, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def _worker(tasks: queue.SimpleQueue[Callable[[], None]], ready: threading.Barrier) -> None:
    # Torch sets a thread's count lazily, from the process default, on its first parallel op: do that
    # first (get_num_threads triggers it), or it would later undo the 1 set here.
    torch.get_num_threads()
    torch.set_num_threads(1)
    ready.wait()
    while True:
        tasks.get()()


def _ensure(n: int) -> queue.SimpleQueue[Callable[[], None]]:
    """Start workers until there are at least ``n``; return the task queue they serve."""
    global _tasks, _size
    with _lock:
        if _tasks is None:
            _tasks = queue.SimpleQueue()
        if _size < n:
            caller_threads = torch.get_num_threads()
            ready = threading.Barrier(n - _size + 1)
            for _ in range(n - _size):
                threading.Thread(
                    target=_worker, args=(_tasks, ready), daemon=True, name="labelsmooth-block-worker"
                ).start()
            ready.wait()
            torch.set_num_threads(caller_threads)  # see the module docstring
            _size = n
        return _tasks


def run_blocks(fn: Callable[[int], None], count: int, workers: int) -> None:
    """Call ``fn(i)`` for ``i`` in ``range(count)``, spread over ``workers`` threads; return when all are done.

    ``fn`` runs with gradients disabled and with the caller's inference-mode state. An exception in any
    call stops the remaining ones and is raised here.
    """
    workers = max(1, min(workers, count))
    tasks = _ensure(workers)
    counter = itertools.count()  # next() on it is atomic under the GIL: each block is taken once
    errors: list[BaseException] = []
    done = threading.Semaphore(0)
    inference = torch.is_inference_mode_enabled()

    def job() -> None:
        try:
            # inference_mode(False) turns grad mode back on, hence no_grad inside it
            with torch.inference_mode(inference), torch.no_grad():
                while not errors:
                    i = next(counter)
                    if i >= count:
                        break
                    fn(i)
        except BaseException as exc:  # any failure, KeyboardInterrupt included, is handed to the caller below
            errors.append(exc)
        finally:
            done.release()

    for _ in range(workers):
        tasks.put(job)
    try:
        for _ in range(workers):
            done.acquire()
    except BaseException:
        errors.append(KeyboardInterrupt())  # stop the workers after their current block
        raise
    if errors:
        raise errors[0]
