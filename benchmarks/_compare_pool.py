"""The comparison's worker pool: every unfinished run, a few at a time, each in a process that exits with the
comparison."""

from __future__ import annotations

import concurrent.futures
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from _compare_plan import Run

logger = logging.getLogger("compare")


def _worker_init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.WARNING)
    _exit_when_orphaned(os.getppid())


def _exit_when_orphaned(parent: int, poll_s: float = 1.0) -> None:
    """Exit this worker as soon as `parent` (the comparison) is gone, however it was stopped.

    Lightning catches SIGTERM in the worker and trains on, so a killed comparison would leave its workers running
    unseen, sharing the cores with the next comparison and writing records of a plan that was stopped.
    """

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os._exit(1)

    threading.Thread(target=watch, name="exit-when-orphaned", daemon=True).start()


def run_all(
    runs: list[Run],
    data_root: Path,
    raw_dir: Path,
    workers: int,
    execute: Callable[[Run, Path, Path], dict] | None = None,
    is_finished: Callable[[Run, Path], bool] | None = None,
) -> None:
    """Run every unfinished run, `workers` at a time, each in a worker process that keeps its imports.

    `execute` and `is_finished` default to the comparison's (`_compare_run`); another study passes its own, as
    module-level functions (the workers are spawned, so they must be importable).
    """
    # Here: a worker's orphan watch (above) must start without waiting for torch and Lightning to import.
    import _compare_run

    execute = execute or _compare_run.execute
    is_finished = is_finished or _compare_run.is_finished

    todo = [run for run in runs if not is_finished(run, raw_dir)]
    logger.info("%d runs planned, %d finished already, %d to do", len(runs), len(runs) - len(todo), len(todo))
    if not todo:
        return
    started = time.perf_counter()
    threads = max(run.budget.threads for run in todo)
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=context, initializer=_worker_init, initargs=(threads,)
    ) as pool:
        futures = {pool.submit(execute, run, data_root, raw_dir): run for run in todo}
        for done, future in enumerate(concurrent.futures.as_completed(futures), start=1):
            run = futures[future]
            try:
                record = future.result()
            except Exception:
                logger.exception("run %s failed", run.name)
                continue
            logger.info(
                "[%d/%d] %s: mIoU %.2f, %.0f s (total %.1f min)",
                done,
                len(todo),
                run.name,
                record["mIoU"],
                record["wall_time_s"],
                (time.perf_counter() - started) / 60,
            )
