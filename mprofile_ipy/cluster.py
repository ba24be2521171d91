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
carry ``meta["process"]`` = ``{"worker": address, "pid": ..., "name": ...}``.

**Code from notebook cells.** cloudpickle ships a function defined in a cell by value and,
since version 3, renames its code's file to ``<dynamic-code>`` (to make payloads
deterministic). The line numbers, names and first lines survive, so :meth:`collect` gives
those frames back the file of the cell that defines the function, found among the
functions and classes of the kernel's ``__main__`` namespace by (name, first line): the
parent's attribution then shows ``In [N], line k`` again. A function no longer in the
namespace keeps ``<dynamic-code>``.

**Task labels.** While the plugin is set up, every task a worker runs in its thread pool
labels the thread that runs it with the task's key prefix (``('read_parquet-<hash>', 3)``
-> ``read_parquet``): the sampler records the thread's label with each allocation
(``sampler.set_thread_label``), so samples can be grouped by task
(``Snapshot.split("task")``, pprof's ``task`` label). Worker plugin transition hooks run
in the worker's event-loop thread, not in the thread that runs the task, so the label is
set by a wrapper around the function that ``distributed`` calls *in the executing thread*
(``distributed.worker._run_task_simple``; ``apply_function_simple`` in older versions),
from the key that ``distributed`` has just put in that thread's ``thread_state``; it is
reset to the previous label when the task ends, even when it fails. Label ids are this
worker's (1, 2, ... in order of first use); each snapshot ships the table id -> prefix in
``meta["labels"]`` and :func:`mprofile_ipy.processes.merge` renumbers them across workers.
Tasks that run on the event loop (``async`` tasks) are not labelled: many share the thread.
A sampler without thread labels leaves the samples unlabelled and says so in
``meta["task_labels"]``.

``distributed`` is optional: it is imported only here, when the user asks for Dask.
"""

from __future__ import annotations

import functools
import io
import os
import sys
import threading
import types
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import sampler
from .errors import MprofileError, SnapshotFormatError
from .model import Snapshot
from .storage import load_snapshot, save_snapshot

__all__ = ["WorkerCollection", "WorkerSession", "profile_workers"]

_PLUGIN_PREFIX = "mprofile-ipy-"


try:
    from distributed.diagnostics.plugin import WorkerPlugin as _WorkerPluginBase

    HAVE_DISTRIBUTED = True
except ImportError:  # the module still imports; profile_workers() says what is missing
    _WorkerPluginBase = object  # type: ignore[assignment, misc]
    HAVE_DISTRIBUTED = False


# ---------------------------------------------------------------------------------------------
# Task labels (worker side)


class _TaskLabels:
    """This worker process's task prefixes and the hook that labels executing threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ids: dict[str, int] = {}  # task prefix -> label id (1, 2, ...)
        self.current: dict[int, int] = {}  # thread ident -> its label while a task runs
        self.users = 0  # plugins set up in this process that want the hook
        self.patched: tuple[Any, str, Callable] | None = None  # (module, name, original)
        self.local = threading.local()
        self.error = ""  # why setting a label failed, if it ever did

    def label_for(self, key: Any) -> int:
        prefix = _key_prefix(key)
        with self.lock:
            label = self.ids.get(prefix)
            if label is None:
                label = self.ids[prefix] = len(self.ids) + 1
            return label

    def table(self) -> dict[str, str]:
        with self.lock:
            return {str(label): prefix for prefix, label in self.ids.items()}


_labels = _TaskLabels()


def _key_prefix(key: Any) -> str:
    """A Dask key's prefix, as the dashboard groups tasks: ``('read_parquet-ab12', 3)`` and
    ``'read_parquet-ab12'`` -> ``read_parquet``."""
    from dask.utils import key_split

    try:
        return str(key_split(key))
    except Exception:  # noqa: BLE001 - an odd key type is still some task
        return str(key)


def _set_thread_label(label: int) -> None:
    """Label the calling thread for the sampler (and remember it, for tests and views)."""
    ident = threading.get_ident()
    if label:
        _labels.current[ident] = label
    else:
        _labels.current.pop(ident, None)
    setter = getattr(sampler, "set_thread_label", None)
    if setter is not None:
        try:
            setter(label)
        except Exception as exc:  # noqa: BLE001 - a label must never fail the user's task
            _labels.error = f"{type(exc).__name__}: {exc}"


def labels_supported() -> bool:
    """Whether this sampler records thread labels with its samples."""
    return hasattr(sampler, "set_thread_label")


def _labelled(run: Callable) -> Callable:
    """Wrap distributed's function that runs a task in the executing thread: label the
    thread with the task's prefix before, restore the previous label after."""

    @functools.wraps(run)
    def run_labelled(*args: Any, **kwargs: Any) -> Any:
        from distributed.worker import thread_state

        key = getattr(thread_state, "key", None)
        if key is None or not _labels.users:
            return run(*args, **kwargs)
        previous = getattr(_labels.local, "label", 0)
        label = _labels.label_for(key)
        _labels.local.label = label
        _set_thread_label(label)
        try:
            return run(*args, **kwargs)
        finally:
            _labels.local.label = previous
            _set_thread_label(previous)

    run_labelled.__mprofile_original__ = run  # type: ignore[attr-defined]
    return run_labelled


# distributed's functions that run a task in the executing thread, newest first. Each is
# called by module-global name from inside ``set_thread_state(key=...)``.
_TASK_RUNNERS = ("_run_task_simple", "apply_function_simple")


def _install_task_hook() -> bool:
    """Install the labelling wrapper (counted: one per plugin set up). False when this
    version of distributed has none of the known runners (tasks stay unlabelled)."""
    import distributed.worker as worker_module

    with _labels.lock:
        _labels.users += 1
        if _labels.patched is not None:
            return True
        for name in _TASK_RUNNERS:
            original = getattr(worker_module, name, None)
            if callable(original):
                setattr(worker_module, name, _labelled(original))
                _labels.patched = (worker_module, name, original)
                return True
        return False


def _remove_task_hook() -> None:
    """Undo one :func:`_install_task_hook`; the last one puts distributed's function back."""
    with _labels.lock:
        _labels.users = max(0, _labels.users - 1)
        if _labels.users or _labels.patched is None:
            return
        module, name, original = _labels.patched
        if getattr(getattr(module, name, None), "__mprofile_original__", None) is original:
            setattr(module, name, original)
        _labels.patched = None


def _task_label_state() -> dict[str, Any]:
    """Runs on a worker: its label table and the threads labelled right now (tests)."""
    return {"labels": _labels.table(), "current": dict(_labels.current),
            "hooked": _labels.patched is not None, "supported": labels_supported()}


# ---------------------------------------------------------------------------------------------
# The plugin


class MprofileWorkerPlugin(_WorkerPluginBase):  # type: ignore[misc, valid-type]
    """Starts the sampler when a worker takes the plugin; stops it at teardown.

    Pickled by reference: a worker without mprofile-ipy cannot load it, and Dask reports
    that worker's error to :class:`WorkerSession`, which lists it as not profiled.
    """

    idempotent = True

    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = dict(settings)
        self.started_here = False
        self.hooked: bool | None = None  # whether setup() installed the task-label hook

    def setup(self, worker: Any) -> None:
        if self.hooked is None:
            self.hooked = _install_task_hook()  # labels tasks even in a shared sampler
        if sampler.is_tracing():
            return  # someone profiles this worker already: share it, stop nothing
        sampler.start(self.settings["max_frames"], self.settings["sample_rate"],
                      native=self.settings["native"])
        self.started_here = True

    def teardown(self, worker: Any) -> None:
        if self.hooked is not None:
            _remove_task_hook()
            self.hooked = None
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
        snap.meta["labels"] = _labels.table()
        snap.meta["task_labels"] = (
            f"not recorded: {_labels.error}" if _labels.error
            else "not recorded: this sampler has no thread labels" if not labels_supported()
            else "recorded" if _labels.patched is not None
            else "not recorded: this version of distributed runs tasks another way")
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
        """One sentence per worker whose memory is not in the report, and one per reason
        the workers' samples carry no task labels."""
        out = [f"worker {a}: not profiled ({why})" for a, why in sorted(self.failed.items())]
        out += [f"worker {a} left the cluster: its memory is not counted" for a in self.lost]
        unlabelled = {str(snap.meta.get("task_labels"))[len("not recorded: "):]
                      for _, snap in self.snapshots
                      if str(snap.meta.get("task_labels", "")).startswith("not recorded: ")}
        out += [f"Dask task labels not recorded ({why}): group by task shows no tasks"
                for why in sorted(unlabelled)]
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

    def collect(self, namespace: Mapping[str, Any] | None = None) -> WorkerCollection:
        """One snapshot per worker now in the cluster (joined ones included); frames of
        code shipped from ``namespace`` (default: the running IPython shell's user
        namespace, else ``__main__``'s) get their cell's file back (module docstring)."""
        files = shipped_code_files(_user_namespace() if namespace is None else namespace)
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
                    snapshot = load_snapshot(io.BytesIO(reply))
                    result.snapshots.append((address, restore_code_files(snapshot, files)))
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


DYNAMIC_CODE = "<dynamic-code>"  # cloudpickle >= 3: the file name of code shipped by value


def _user_namespace() -> Mapping[str, Any]:
    """The running IPython shell's user namespace, else ``__main__``'s (a script)."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    namespace = getattr(shell, "user_ns", None)
    if isinstance(namespace, dict):
        return namespace
    return getattr(sys.modules.get("__main__"), "__dict__", {})


def shipped_code_files(namespace: Mapping[str, Any]) -> dict[tuple[str, int], str]:
    """``(name, first line) -> file`` for the code of the functions and classes defined in
    ``namespace``'s module (``__module__ == "__main__"``: what cloudpickle ships by value),
    nested functions, lambdas and comprehensions included. Names are both ``co_name`` and
    ``co_qualname``, whichever the sampler recorded. Reads attributes of functions and
    classes only (``__dict__`` of classes through ``vars``), never calls user code."""
    files: dict[tuple[str, int], str] = {}
    stack: list[types.CodeType] = []
    for value in list(namespace.values()):
        if isinstance(value, types.FunctionType) and value.__module__ == "__main__":
            stack.append(value.__code__)
        elif isinstance(value, type) and type.__dict__["__module__"].__get__(value) == "__main__":
            for member in type.__dict__["__dict__"].__get__(value).values():
                func = getattr(member, "__func__", member)  # staticmethod, classmethod
                if isinstance(func, types.FunctionType):
                    stack.append(func.__code__)
    seen: set[int] = set()
    while stack:
        code = stack.pop()
        if id(code) in seen or code.co_filename == DYNAMIC_CODE:
            continue
        seen.add(id(code))
        for name in {code.co_name, getattr(code, "co_qualname", code.co_name)}:
            files.setdefault((name, code.co_firstlineno), code.co_filename)
        stack.extend(c for c in code.co_consts if isinstance(c, types.CodeType))
    return files


def restore_code_files(snapshot: Snapshot, files: Mapping[tuple[str, int], str]) -> Snapshot:
    """``snapshot`` with each ``<dynamic-code>`` frame that ``files`` knows given back its
    file (the snapshot itself when there is none)."""
    if not files:
        return snapshot

    def fix(frames: tuple) -> tuple:
        out = []
        for frame in frames:
            if frame[0] == DYNAMIC_CODE and len(frame) >= 4:
                known = files.get((frame[2], frame[3]))
                if known is not None:
                    frame = (known, *frame[1:])
            out.append(frame)
        return tuple(out)

    traces = snapshot.trace_records
    if not any(f[0] == DYNAMIC_CODE for t in traces for f in t[2]) and not any(
            f[0] == DYNAMIC_CODE for a in snapshot.allocated or () for f in a[0]):
        return snapshot
    allocated = snapshot.allocated
    return Snapshot(
        [(t[0], t[1], fix(t[2]), *t[3:]) for t in traces], snapshot.traceback_limit,
        sample_rate=snapshot.sample_rate, meta=dict(snapshot.meta),
        counts=snapshot.trace_counts,
        allocated=None if allocated is None else [(fix(a[0]), *a[1:]) for a in allocated])


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
