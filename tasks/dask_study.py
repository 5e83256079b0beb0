"""Trials that travel: a study's data and its model family reach Dask workers, no shared disk.

A Dask worker may run on another machine, in its own folder: nothing the flow writes to
its data folder is there. So, once per study, a worker plugin carries to every worker
(those running now and any that join later):

- the study's data, pickled once and kept in the worker's memory under the study's key
  (a ``DataRef`` sent with each trial carries only that key);
- the model family's distribution, when the workers cannot load that family themselves:
  the files of the installed package that declares it in the ``banditflow.model_families``
  entry-point group, unpacked into the worker's local directory and put on its path.

``distributed``'s worker plugins are the mechanism: ``register_plugin`` sends the plugin
through the scheduler, which replays it to workers that start later. The plugin also
imports what every trial needs (sklearn, the evaluator, the families' modules) while it
sets up, on all workers at once, instead of in each worker's first trial. A worker started
with ``--preload tasks.dask_study`` (the scaled profile's) does those imports when it
starts (:func:`dask_setup`), so a study on a running cluster does not wait ~1.4 s for them.

Each trial is then one plain Dask task (:class:`DaskTrialPool`): its Prefect task run stays
on a thread of the flow's process, as with the warm process pool. Running Prefect's task
engine on the worker instead (prefect-dask's ``DaskTaskRunner``) cost ~0.8 s per trial on
2 shared cores: the flow serialized its whole Prefect context and settings with every
submit (~0.3 s of the loop's time), and each worker rebuilt that context, an API client
and the task run's states before the trial began (~0.5 s).
"""

from __future__ import annotations

import importlib
import io
import logging
import pickle
import sys
import threading
import uuid
import zipfile
from collections.abc import Mapping
from importlib.metadata import Distribution, entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distributed.diagnostics.plugin import WorkerPlugin

from contract.names import MODEL_FAMILY_ENTRY_POINT_GROUP
from tasks.evaluate import EvalConfig, TrialOutcome, evaluate_trial

if TYPE_CHECKING:
    from tasks.data import StudyData

PLUGIN_PREFIX = "banditflow-study-"
_SKIP_SUFFIXES = (".pyc", ".pyo")
# Under ``distributed``'s logger: a worker's log (its stderr) shows which trials it ran.
log = logging.getLogger("distributed.banditflow")
# What every trial imports (the evaluator's lazy imports), loaded when the plugin sets up.
_PRELOAD = (
    "sklearn.pipeline",
    "sklearn.compose",
    "sklearn.impute",
    "sklearn.preprocessing",
    "sklearn.model_selection",
    "sklearn.metrics",
)


# How the scaled profile (and the benchmark's cluster) start each worker, beside
# ``--preload tasks.dask_study``. Dask's statistical profiler samples every thread's stack
# each 10 ms for the dashboard's profile page; on 2 shared cores with CPU-bound trials it
# cost about a fifth of each trial's CPU (measured with ``benchmarks/optimize_parallel.py``:
# worker CPU per trial 1.27 s on, 1.0 s off). A value already in the environment wins.
WORKER_ENV = {"DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED": "False"}
WORKER_ARGS = ("--nthreads", "1", "--nworkers", "1", "--preload", "tasks.dask_study")


def worker_env(environ: Mapping[str, str]) -> dict[str, str]:
    """Return the variables a trial worker starts with: ``WORKER_ENV`` under ``environ``."""
    return {**WORKER_ENV, **environ}


def preload_trial_modules() -> None:
    """Import what every trial needs: sklearn's parts and every registered family's module."""
    from tasks.models import family_modules, load_family_plugins

    load_family_plugins()
    for module in (*_PRELOAD, *family_modules()):
        importlib.import_module(module)


def dask_setup(worker: Any) -> None:
    """``dask worker --preload tasks.dask_study``: the trial imports when the worker starts."""
    preload_trial_modules()
    log.info("banditflow: trial modules preloaded on %s", worker.name)


def family_distribution(family: str) -> Distribution | None:
    """Return the installed distribution whose entry point declares ``family``, if any."""
    for ep in entry_points(group=MODEL_FAMILY_ENTRY_POINT_GROUP):
        if ep.name == family:
            return ep.dist
    return None


def pack_distribution(dist: Distribution) -> bytes:
    """Zip a distribution's installed files (package and ``*.dist-info``), paths kept."""
    root = Path(str(dist.locate_file(""))).resolve()
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for entry in dist.files or []:
            path = Path(str(dist.locate_file(entry))).resolve()
            if path.suffix in _SKIP_SUFFIXES or not path.is_file():
                continue
            try:
                archive.write(path, path.relative_to(root).as_posix())
            except ValueError:  # a file installed outside its root (a script): not needed
                continue
    return out.getvalue()


def can_load_family(family: str) -> bool:
    """Whether this process can load ``family`` (run on each worker by ``client.run``)."""
    from tasks.models import ModelFamilyError, get_family

    try:
        get_family(family)
    except ModelFamilyError:
        return False
    return True


class StudyPlugin(WorkerPlugin):
    """A Dask worker plugin: the study's data in memory, its family loadable."""

    def __init__(self, key: str, payload: bytes, packages: dict[str, bytes]) -> None:
        self.key = key
        self.name = PLUGIN_PREFIX + key
        self.payload = payload
        self.packages = packages

    def setup(self, worker: Any) -> None:
        from tasks.executors import _DATA_CACHE

        for name, blob in self.packages.items():
            target = Path(worker.local_directory) / "banditflow-packages" / self.key / name
            with zipfile.ZipFile(io.BytesIO(blob)) as archive:
                archive.extractall(target)
            if str(target) not in sys.path:
                sys.path.insert(0, str(target))
        if self.packages:
            importlib.invalidate_caches()
        # The first trial's imports, on every worker at once (a no-op after a preload; a
        # package that just arrived registers its family here).
        preload_trial_modules()
        _DATA_CACHE[self.key] = pickle.loads(self.payload)

    def teardown(self, worker: Any) -> None:
        from tasks.executors import _DATA_CACHE

        _DATA_CACHE.pop(self.key, None)


def ship_study(client: Any, key: str, data: Any, family: str) -> str:
    """Register the study's plugin on the cluster behind ``client``; return its name.

    The family's package travels only when some worker cannot load the family already
    (the shipped families, and packages installed on the workers, need nothing).
    """
    from tasks.models import ModelFamilyError

    packages: dict[str, bytes] = {}
    loadable = client.run(can_load_family, family)
    if not all(loadable.values()):
        dist = family_distribution(family)
        if dist is None:
            missing = sorted(w for w, ok in loadable.items() if not ok)
            raise ModelFamilyError(
                f"Dask workers {missing} cannot load model family {family!r}, and no installed "
                f"package declares it in {MODEL_FAMILY_ENTRY_POINT_GROUP!r} to send them: "
                "install the family's package (with that entry point) here or on the workers"
            )
        packages[dist.metadata["Name"]] = pack_distribution(dist)
    payload = pickle.dumps(data, protocol=pickle.HIGHEST_PROTOCOL)
    plugin = StudyPlugin(key, payload, packages)
    client.register_plugin(plugin, name=plugin.name)
    return plugin.name


def unship_study(client: Any, name: str) -> None:
    """Remove the study's plugin: every worker drops the study's data."""
    client.unregister_worker_plugin(name)


def evaluate_on_worker(
    key: str,
    config: EvalConfig,
    params: dict[str, Any],
    trial_id: str | None,
    prune_threshold: float | None,
    pruner: Any,
) -> TrialOutcome:
    """One trial on a Dask worker, on the study's data its plugin keeps under ``key``."""
    from tasks.executors import DataRef

    log.info("banditflow trial %s of study %s", trial_id, key[:8])
    data = DataRef(key=key).get()
    return evaluate_trial(
        config, params, data, prune_threshold=prune_threshold, trial_id=trial_id, pruner=pruner
    )


class DaskTrialPool:
    """Trials on a Dask cluster (``address``, or a LocalCluster of ``workers`` processes).

    The same interface as ``tasks.executors.TrialPool``: a Prefect task on one of the flow's
    threads calls :meth:`run`, which submits one plain Dask task and waits for it. The data
    and the family reach the workers once, through the study's plugin (:meth:`ship`).
    """

    def __init__(self, data: StudyData, workers: int, address: str = "") -> None:
        from distributed import Client, LocalCluster

        self.key = uuid.uuid4().hex
        self._data: StudyData | None = data
        self._plugin = ""
        self._lock = threading.Lock()
        self._cluster: Any = None
        if not address:
            import dask

            # As the scaled profile's workers: no statistical profiler (see WORKER_ENV).
            with dask.config.set({"distributed.worker.profile.enabled": False}):
                self._cluster = LocalCluster(
                    n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None
                )
        self.client = Client(address or self._cluster, set_as_default=False)

    def ship(self, family: str) -> None:
        """Send the study's data and ``family`` to the workers (once; raises if it cannot)."""
        with self._lock:
            if not self._plugin:
                self._plugin = ship_study(self.client, self.key, self._data, family)
                self._data = None  # the workers hold it now

    def run(
        self,
        config: EvalConfig,
        params: dict[str, Any],
        *,
        trial_id: str | None = None,
        prune_threshold: float | None = None,
        pruner: Any = None,
    ) -> TrialOutcome:
        """Evaluate on a worker; a lost worker or a task error comes back as a failed trial."""
        self.ship(config.family)
        args = (self.key, config, dict(params), trial_id, prune_threshold, pruner)
        # pure=False: a unique key, and no hashing of the arguments on the loop's path.
        future = self.client.submit(
            evaluate_on_worker, *args, key=f"trial-{trial_id}-{uuid.uuid4().hex[:8]}", pure=False
        )
        try:
            return future.result()  # type: ignore[no-any-return]
        except Exception as exc:  # noqa: BLE001 - e.g. KilledWorker: the study goes on
            return TrialOutcome(
                dict(params),
                "failed",
                reason=f"Dask task failed: {type(exc).__name__}: {exc}",
                trial_id=trial_id,
            )

    def close(self) -> None:
        try:
            if self._plugin:
                unship_study(self.client, self._plugin)
        finally:
            self.client.close()
            if self._cluster is not None:
                self._cluster.close()
