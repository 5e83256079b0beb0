"""Where trials run: in this process (threads), a warm process pool, or Dask workers.

Each back end evaluates with :func:`tasks.evaluate.evaluate_trial`; a worker process
registers the model families from their entry points when it starts.
"""

from __future__ import annotations

import pickle
import queue
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from tasks.evaluate import EvalConfig, TrialOutcome, evaluate_trial
from tasks.trial_channel import TrialChannel, outcome_of

if TYPE_CHECKING:
    from tasks.dask_study import DaskTrialPool
    from tasks.data import StudyData

# --- where evaluations run ---------------------------------------------------------------
_DATA_CACHE: dict[str, StudyData] = {}


class DataRef:
    """A study's data for a trial task: in memory for threads, a file or a key elsewhere.

    Pickling a ``DataRef`` ships only the path or the key: a Prefect process-runner worker
    reads the file once and keeps it; a Dask worker received the data once per study from
    the study's worker plugin (``tasks/dask_study.py``: no shared disk) and finds it by the
    key. The frames never travel with each task. The object is opaque to Prefect's
    parameter walking.
    """

    __slots__ = ("path", "key", "_data")

    def __init__(
        self, data: StudyData | None = None, path: str | None = None, key: str | None = None
    ) -> None:
        if data is None and path is None and key is None:
            raise ValueError("DataRef needs the data, a path to it or its key")
        self._data = data
        self.path = path
        self.key = key

    def save(self, path: str | Any) -> DataRef:
        """Write the data to ``path`` (pickle) so other processes can load it."""
        from pathlib import Path

        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(pickle.dumps(self.get(), protocol=pickle.HIGHEST_PROTOCOL))
        self.path = str(target)
        return self

    def get(self) -> StudyData:
        if self._data is not None:
            return self._data
        if self.key is not None:
            if self.key not in _DATA_CACHE:
                raise RuntimeError(
                    f"study data {self.key!r} is not in this worker's memory: the study's "
                    "Dask worker plugin did not reach it (see the worker's log)"
                )
            return _DATA_CACHE[self.key]
        assert self.path is not None
        if self.path not in _DATA_CACHE:
            with open(self.path, "rb") as fh:
                _DATA_CACHE[self.path] = pickle.load(fh)
        return _DATA_CACHE[self.path]

    def __getstate__(self) -> dict[str, Any]:
        if self.path is None and self.key is None:
            raise TypeError("DataRef: save() the data to a file before sending it to a process")
        return {"path": self.path, "key": self.key}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.path = state["path"]
        self.key = state.get("key")
        self._data = None

    def __repr__(self) -> str:
        where = f"key={self.key!r}" if self.key else f"path={self.path!r}"
        return f"DataRef({where}, in_memory={self._data is not None})"


_WORKER_DATA: StudyData | None = None


def _init_worker(payload: bytes, parent_path: list[str]) -> None:
    """Start a worker: see the parent's import path, register every family, keep the data.

    Families come from the ``banditflow.model_families`` entry points (the shipped ones and
    any installed package's), so a family registered by a package reaches every worker.
    """
    global _WORKER_DATA
    import sys

    from tasks.models import load_family_plugins

    sys.path.extend(p for p in parent_path if p not in sys.path)
    load_family_plugins()
    _WORKER_DATA = pickle.loads(payload)


def _evaluate_in_worker(
    config: EvalConfig,
    params: dict[str, Any],
    trial_id: str | None,
    threshold: float | None,
    pruner: Any = None,
) -> TrialOutcome:
    assert _WORKER_DATA is not None, "worker started without data"
    return evaluate_trial(
        config, params, _WORKER_DATA, prune_threshold=threshold, trial_id=trial_id, pruner=pruner
    )


def _ready() -> bool:
    return _WORKER_DATA is not None


class TrialPool:
    """A warm process pool: workers start once per study and receive the data once.

    Prefect tasks stay on threads (cheap to start, ~10-25 ms each) and hand the CPU work to
    these processes, so trials run truly in parallel without paying the process task
    runner's start-up per flow run or shipping the data with every task. Workers come from
    a forkserver that has imported sklearn already: forking the flow's own process (full of
    threads) is unsafe, and spawning re-imports everything per worker.
    """

    def __init__(self, data: StudyData, workers: int) -> None:
        import multiprocessing as mp
        import sys
        from concurrent.futures import ProcessPoolExecutor

        from tasks.models import family_modules

        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers=}")
        context = mp.get_context("forkserver")
        # Preload what every trial imports, and the modules the families come from.
        context.set_forkserver_preload(["sklearn.pipeline", "tasks.evaluate", *family_modules()])
        payload = pickle.dumps(data, protocol=pickle.HIGHEST_PROTOCOL)
        self.workers = workers
        self._pool = ProcessPoolExecutor(
            workers,
            mp_context=context,
            initializer=_init_worker,
            initargs=(payload, list(sys.path)),
        )
        # Start every worker now, while the flow does its other set-up.
        self._warm = [self._pool.submit(_ready) for _ in range(workers)]

    def run(
        self,
        config: EvalConfig,
        params: Mapping[str, Any],
        *,
        trial_id: str | None = None,
        prune_threshold: float | None = None,
        pruner: Any = None,
    ) -> TrialOutcome:
        """Evaluate in a worker process; a crashed worker comes back as a failed trial."""
        future = self._pool.submit(
            _evaluate_in_worker, config, dict(params), trial_id, prune_threshold, pruner
        )
        try:
            return future.result()
        except Exception as exc:  # noqa: BLE001 - e.g. BrokenProcessPool after an OOM kill
            return TrialOutcome(
                dict(params),
                "failed",
                reason=f"worker process failed: {type(exc).__name__}: {exc}",
                trial_id=trial_id,
            )

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> TrialPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


RUNNERS = ("threads", "processes", "dask", "prefect-processes")


class TrialExecutor:
    """Where a study's trial tasks run, by name (``PipelineSettings.task_runner``).

    - ``threads``: Prefect's thread runner, the data shared in memory (tree fits release
      the GIL, Python-heavy work does not).
    - ``processes``: Prefect tasks on threads, the CPU work in a warm ``TrialPool``
      (workers started once per study, data shipped once per worker): the fast default
      for parallel trials on one machine.
    - ``dask``: Prefect tasks on threads, each trial one plain Dask task on the cluster at
      ``settings.dask_address`` (or a LocalCluster of q single-threaded worker processes):
      ``tasks.dask_study.DaskTrialPool``. The data and the model family's package reach the
      workers once per study through a worker plugin (no shared disk).
    - ``prefect-processes``: Prefect's own ``ProcessPoolTaskRunner`` (seconds of start-up
      per flow run), data by file; kept to compare in benchmarks.
    """

    def __init__(
        self,
        kind: str,
        data: StudyData,
        *,
        q: int,
        data_path: str,
        dask_address: str = "",
        on_start: Callable[[], None] | None = None,
    ):
        if kind not in RUNNERS:
            raise ValueError(f"task runner must be one of {RUNNERS}, got {kind!r}")
        self.kind = kind
        # Threads, the warm pool and Dask run ``run_trial`` in this process: it hands the
        # outcome straight to the loop, which tells and asks while Prefect records the end.
        self._done: queue.Queue[tuple[str, TrialOutcome | None]] = queue.Queue()
        direct = kind != "prefect-processes"
        self.channel = TrialChannel(self._done, on_start) if direct else None
        self.data = DataRef(data)
        self.pool: TrialPool | DaskTrialPool | None = None
        self._dask: DaskTrialPool | None = None
        if kind == "prefect-processes":
            self.data = DataRef(data).save(data_path)
        if kind == "processes":
            self.pool = TrialPool(data, q)
        if kind == "dask":
            try:
                from tasks.dask_study import DaskTrialPool
            except ImportError as exc:
                raise ImportError(
                    f"task runner 'dask' needs distributed: pip install 'banditflow[dask]' ({exc})"
                ) from exc
            self.pool = self._dask = DaskTrialPool(data, q, dask_address)
        self.task_runner = self._task_runner(kind, q)

    @staticmethod
    def _task_runner(kind: str, q: int) -> Any:
        from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner

        if kind == "prefect-processes":
            return ProcessPoolTaskRunner(max_workers=q)
        # q threads evaluate; q more let the next trials start while the finished ones'
        # task runs are still being recorded (their outcome has already reached the loop).
        return ThreadPoolTaskRunner(max_workers=2 * q)

    def __enter__(self) -> TrialExecutor:
        self.task_runner.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            self.task_runner.__exit__(*exc)
        finally:
            if self.pool is not None:
                self.pool.close()

    def submit(
        self,
        task: Any,
        config: EvalConfig,
        trial_id: str,
        params: dict[str, Any],
        prune_threshold: float | None,
        pruner: Any = None,
    ) -> Any:
        """Start one trial as a Prefect task run; return its future."""
        if self._dask is not None:  # once: the data and family to the workers (or raise)
            self._dask.ship(config.family)
        future = self.task_runner.submit(
            task,
            parameters={
                "config": config,
                "trial_id": trial_id,
                "params": params,
                "data": self.data,
                "prune_threshold": prune_threshold,
                "pool": self.pool,
                "pruner": pruner,
                "channel": self.channel,
            },
        )
        if self.channel is not None:  # a task that ends without an outcome (crashed) too
            future.add_done_callback(lambda _, tid=trial_id: self._done.put((tid, None)))
        return future

    def wait_next(self, in_flight: dict[Any, Any]) -> tuple[Any, TrialOutcome]:
        """Return the next finished future of ``in_flight`` (future -> trial) and its outcome.

        Through the channel as soon as the evaluation returns (threads, the warm pool,
        Dask); with Prefect's own process runner when Prefect's future resolves.
        """
        if self.channel is None:
            from prefect.futures import as_completed

            finished = next(as_completed(list(in_flight)))
            return finished, outcome_of(finished, in_flight[finished])
        by_id = {trial.id: future for future, trial in in_flight.items()}
        while True:
            trial_id, outcome = self._done.get()
            future = by_id.get(trial_id)
            if future is None:  # the task's end, after its outcome was taken
                continue
            return future, outcome if outcome is not None else outcome_of(future, in_flight[future])


def run_trial(
    config: EvalConfig,
    trial_id: str,
    params: dict[str, Any],
    data: DataRef,
    prune_threshold: float | None = None,
    pool: TrialPool | DaskTrialPool | None = None,
    pruner: Any = None,
    channel: TrialChannel | None = None,
) -> TrialOutcome:
    """Evaluate one trial where the executor says: a warm pool, Dask, or right here."""
    if channel is not None:
        channel.started()
    if pool is not None:
        outcome = pool.run(
            config, params, trial_id=trial_id, prune_threshold=prune_threshold, pruner=pruner
        )
    else:
        outcome = evaluate_trial(
            config,
            params,
            data.get(),
            prune_threshold=prune_threshold,
            trial_id=trial_id,
            pruner=pruner,
        )
    if channel is not None:
        channel.finished(trial_id, outcome)
    return outcome
