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
through the scheduler, which replays it to workers that start later.
"""

from __future__ import annotations

import importlib
import io
import pickle
import sys
import zipfile
from importlib.metadata import Distribution, entry_points
from pathlib import Path
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

from contract.names import MODEL_FAMILY_ENTRY_POINT_GROUP

PLUGIN_PREFIX = "banditflow-study-"
_SKIP_SUFFIXES = (".pyc", ".pyo")


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
        from tasks.models import load_family_plugins

        for name, blob in self.packages.items():
            target = Path(worker.local_directory) / "banditflow-packages" / self.key / name
            with zipfile.ZipFile(io.BytesIO(blob)) as archive:
                archive.extractall(target)
            if str(target) not in sys.path:
                sys.path.insert(0, str(target))
        if self.packages:
            importlib.invalidate_caches()
        load_family_plugins()
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
