"""Sample memory on every worker of a Dask cluster and bring the snapshots home.

:func:`profile_workers` registers a ``distributed`` worker plugin that starts the sampler
in each worker process (workers that join later get it too, since Dask applies registered
plugins to new workers), and :meth:`WorkerSession.collect` fetches one snapshot per worker
with ``Client.run``. Closing the session unregisters the plugin, whose ``teardown`` stops
the sampler on every worker where the plugin started it: nothing keeps running after the
cell.

A worker where the plugin cannot run (the package is not installed there, or it fails to
start) is reported in :attr:`WorkerCollection.failed` with the reason, never as an error
of the cell; a worker that was there at the start and is gone at collection time is in
:attr:`WorkerCollection.lost`.

Snapshots travel as bytes in the package's safe file format (never pickled objects) and
carry ``meta["process"]`` = ``{"worker": address, "pid": ..., "name": ...}``. Code sent
from notebook cells keeps its ``co_filename`` through cloudpickle, so the parent's
attribution still shows ``In [N], line k``.

``distributed`` is optional: it is imported only here, when the user asks for Dask.
"""

from __future__ import annotations

import io
import os
import uuid
from dataclasses import dataclass, field
from typing import Any

from . import sampler
from .errors import MprofileError, SnapshotFormatError
from .storage import load_snapshot, save_snapshot

__all__ = ["WorkerCollection", "WorkerSession", "profile_workers"]

_PLUGIN_PREFIX = "mprofile-ipy-"


try:
    from distributed.diagnostics.plugin import WorkerPlugin as _WorkerPluginBase

    HAVE_DISTRIBUTED = True
except ImportError:  # the module still imports; profile_workers() says what is missing
    _WorkerPluginBase = object  # type: ignore[assignment, misc]
    HAVE_DISTRIBUTED = False


class MprofileWorkerPlugin(_WorkerPluginBase):  # type: ignore[misc, valid-type]
    """Starts the sampler when a worker takes the plugin; stops it at teardown.

    Pickled by reference: a worker without mprofile-ipy cannot load it, and Dask reports
    that worker's error to :class:`WorkerSession`, which lists it as not profiled.
    """

    idempotent = True

    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = dict(settings)
        self.started_here = False

    def setup(self, worker: Any) -> None:
        if sampler.is_tracing():
            return  # someone profiles this worker already: share it, stop nothing
        sampler.start(self.settings["max_frames"], self.settings["sample_rate"],
                      native=self.settings["native"])
        self.started_here = True

    def teardown(self, worker: Any) -> None:
        if self.started_here and sampler.is_tracing():
            sampler.stop()
        self.started_here = False


def _require_distributed() -> None:
    if not HAVE_DISTRIBUTED:
        raise MprofileError("profiling Dask workers needs distributed: "
                            "pip install 'mprofile-ipy[dask]'")


def _worker_snapshot(dask_worker: Any = None) -> bytes:
    """Runs on a worker (through ``Client.run``): its snapshot in the safe file format."""
    if not sampler.is_tracing():
        raise MprofileError("the sampler is not running on this worker")
    with sampler.paused():
        snap = sampler.take_snapshot()
        address = getattr(dask_worker, "address", "")
        snap.meta["process"] = {"worker": address, "pid": os.getpid(),
                                "name": getattr(dask_worker, "name", address)}
        buffer = io.BytesIO()
        save_snapshot(snap, buffer)
    return buffer.getvalue()


@dataclass
class WorkerCollection:
    """Snapshots of the workers, and the workers whose part is missing."""

    snapshots: list[tuple[str, Any]] = field(default_factory=list)  # (address, Snapshot)
    failed: dict[str, str] = field(default_factory=dict)  # address -> why
    lost: list[str] = field(default_factory=list)

    def notes(self) -> list[str]:
        """One sentence per worker whose memory is not in the report."""
        out = [f"worker {a}: not profiled ({why})" for a, why in sorted(self.failed.items())]
        out += [f"worker {a} left the cluster: its memory is not counted" for a in self.lost]
        return out


class WorkerSession:
    """Sampling on a cluster's workers, from :func:`profile_workers` until :meth:`close`."""

    def __init__(self, client: Any, *, sample_rate: int | None = None,
                 max_frames: int | None = None, native: bool | None = None) -> None:
        self.client = client
        self.name = _PLUGIN_PREFIX + uuid.uuid4().hex[:12]
        settings = {
            "sample_rate": sample_rate if sample_rate is not None else sampler.get_sample_rate(),
            "max_frames": max_frames if max_frames is not None
            else sampler.get_traceback_limit(),
            "native": bool(native) if native is not None
            else bool(sampler._settings.get("native", False)),
        }
        self.settings = settings
        self.workers_at_start = set(self._worker_addresses())
        self.failed: dict[str, str] = {}
        try:
            responses = client.register_plugin(MprofileWorkerPlugin(settings), name=self.name)
        except Exception as exc:
            raise MprofileError(f"could not start sampling on the Dask workers: {exc}") from exc
        for address, response in (responses or {}).items():
            if isinstance(response, dict) and response.get("status") == "error":
                self.failed[address] = _reason(response)
        self.closed = False

    def _worker_addresses(self) -> list[str]:
        return list(self.client.scheduler_info(n_workers=-1).get("workers", {}))

    def __enter__(self) -> WorkerSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def collect(self) -> WorkerCollection:
        """One snapshot per worker now in the cluster (joined ones included)."""
        result = WorkerCollection(failed=dict(self.failed))
        now = set(self._worker_addresses())
        result.lost = sorted(self.workers_at_start - now)
        replies = self.client.run(_worker_snapshot, on_error="return")
        with sampler.paused():
            for address in sorted(replies):
                reply = replies[address]
                if isinstance(reply, BaseException):
                    result.failed.setdefault(address, f"{type(reply).__name__}: {reply}")
                    continue
                try:
                    result.snapshots.append((address, load_snapshot(io.BytesIO(reply))))
                except SnapshotFormatError as exc:
                    result.failed[address] = str(exc)
        return result

    def close(self) -> None:
        """Unregister the plugin: every worker where it started the sampler stops it."""
        if self.closed:
            return
        self.closed = True
        try:
            self.client.unregister_worker_plugin(self.name)
        except Exception as exc:  # a worker that is gone cannot answer: nothing runs there
            self.failed.setdefault("*", f"unregistering the plugin failed: {exc}")


def _reason(response: dict[str, Any]) -> str:
    exc = response.get("exception")
    text = response.get("exception_text") or (repr(exc) if exc is not None else "")
    return str(text) or "the worker refused the plugin"


def profile_workers(client: Any = None, **settings: Any) -> WorkerSession:
    """Start sampling on every worker of ``client`` (default: the current Dask client).

    ``sample_rate``, ``max_frames`` and ``native`` default to the running sampler's.
    """
    _require_distributed()
    if client is None:
        from distributed import get_client

        try:
            client = get_client()
        except ValueError as exc:
            raise MprofileError("no Dask client: create distributed.Client() first, "
                                "or pass client=") from exc
    return WorkerSession(client, **settings)
