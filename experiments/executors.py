"""Executors: run independent tasks of a study and hand each finished task's rows back as it lands.

An executor is ``run(fn, tasks, on_done, desc)``: it calls ``fn(task) -> rows`` for every task and
``on_done(task, rows)`` in the calling process as each one finishes (that is where rows are appended
to the result table, so a killed run keeps every finished task). ``local`` runs them one after the
other in this process; ``ray`` submits them as Ray remote tasks (one GPU each when the cluster has
GPUs). Ray is an optional extra, imported only when asked for.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterable

from tqdm.auto import tqdm

Task = dict
OnDone = Callable[[Task, list], None]


def run_local(fn: Callable[[Task], list], tasks: Iterable[Task], on_done: OnDone, desc: str = "") -> None:
    """One task after the other, in this process."""
    for task in tqdm(list(tasks), desc=desc, unit="task"):
        on_done(task, fn(task))


def run_ray(fn: Callable[[Task], list], tasks: Iterable[Task], on_done: OnDone, desc: str = "") -> None:
    """Every task as a Ray remote task; results are handed back in order of completion.

    Connects to a running cluster (``RAY_ADDRESS``) or starts a local one when Ray is not yet
    initialised, with this checkout on the workers' PYTHONPATH. Task results come back to this process;
    files a task writes (figure tensors) go to the shared output folder, so a multi-machine cluster
    needs a shared filesystem for them. Each task asks for one GPU when the cluster has GPUs, else one CPU.
    """
    try:
        import ray
    except ImportError as err:
        raise ValueError("--executor ray needs Ray: pip install 'geomexpl[ray]'") from err
    tasks = list(tasks)
    if not tasks:
        return
    if not ray.is_initialized():  # workers must import this package and geomexpl from where we run
        root = str(Path(__file__).resolve().parents[1])
        path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
        ray.init(runtime_env={"env_vars": {"PYTHONPATH": path}})
    gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
    remote = ray.remote(num_gpus=gpus, num_cpus=1, max_retries=0)(_call)
    pending = {remote.remote(fn, task): task for task in tasks}
    with tqdm(total=len(tasks), desc=desc, unit="task") as bar:
        while pending:
            (ready,), _ = ray.wait(list(pending), num_returns=1)
            on_done(pending.pop(ready), ray.get(ready))
            bar.update()


def _call(fn: Callable[[Task], list], task: Task) -> list:
    """fn(task); a plain function for ray.remote (which refuses partials), fn travels pickled."""
    return fn(task)


EXECUTORS = {"local": run_local, "ray": run_ray}
