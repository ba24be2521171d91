"""Follow the processes that profiled code starts, and bring their snapshots home.

A notebook's heavy work often runs in other processes: ``multiprocessing`` (``fork``,
``spawn`` and ``forkserver``), ``concurrent.futures.ProcessPoolExecutor``, joblib's loky
workers, or any ``python`` started with ``subprocess``. :func:`follow` starts a
:class:`ChildSession`; while it is open, every such child samples its own allocations with
the parent's settings, and :meth:`ChildSession.collect` gathers one snapshot per child.

How a child is reached (the contract of this module):

- **Fork** (``fork`` start method, pools, ``os.fork``): the sampler keeps running in the
  child (its tables survive ``fork()``, see ``native/``). An ``os.register_at_fork`` handler
  clears the traces inherited from the parent, so a child reports only what it allocated.
- **A new interpreter** (``spawn``, ``forkserver``'s server, loky, ``subprocess``): the
  session exports ``MPROFILE_IPY_CHILDREN`` (JSON: directory, sample rate, frames, native
  mode) and makes sure a one-line startup hook, ``mprofile_ipy_children.pth``, sits in the
  interpreter's ``purelib`` directory. Python runs it at start-up; without the variable it
  does nothing but read ``os.environ`` (it is inert outside a session). Where that directory
  is read-only, ``multiprocessing``'s spawn command line is patched instead (loky and plain
  ``subprocess`` children are then not followed; :attr:`ChildSession.startup_hook` says which).
- **The hook's lifetime.** The line is removed when the last session that needed it ends,
  in this process and in every other process of the same environment (two kernels may
  follow children at once): each process with an open session leaves a marker named by its
  pid in a per-environment folder under the temporary directory, and the last one to close
  (or to exit: an ``atexit`` handler) deletes the line, under a file lock so that a session
  opening meanwhile keeps it. Markers of dead processes (a kernel killed with SIGKILL) are
  ignored and swept. A child that is starting while the line goes away is not harmed:
  ``site`` skips a ``.pth`` file that vanished, and the session is over for it anyway.
- **Delivery.** Each child writes ``<dir>/<pid>.json`` (who it is) when it starts and
  ``<dir>/<pid>.snap`` (a snapshot in the package's safe file format, written atomically)
  when it exits: at interpreter exit (``atexit``) and, for ``multiprocessing`` children
  that leave through ``os._exit``, through a ``multiprocessing.util.Finalize`` that their
  bootstrap runs. A child that outlives the collection (a pool worker waiting for work)
  answers a request: a daemon thread blocks on the FIFO ``<dir>/<pid>.req`` (no CPU while
  idle) and writes a fresh snapshot when the parent writes a byte to it.
- **Loss.** A child that announced itself but left no snapshot and is gone (killed,
  crashed) is reported in :attr:`ChildrenCollection.lost`; it loses only its own part.

Snapshots carry the child's ``pid``, ``ppid``, process name and start method in
``snapshot.meta["process"]``. Live memory at exit is usually small (the work is done);
``Snapshot.allocated_statistics()`` holds what each child allocated over its life.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import hashlib
import io
import json
import os
import shutil
import stat
import sys
import sysconfig
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from . import sampler
from .errors import MprofileError, SnapshotFormatError
from .storage import load_snapshot, save_snapshot, write_atomically

__all__ = [
    "ENV_VAR",
    "PTH_NAME",
    "ChildProcess",
    "ChildSession",
    "ChildrenCollection",
    "follow",
    "remove_startup_hook",
]

ENV_VAR = "MPROFILE_IPY_CHILDREN"
PTH_NAME = "mprofile_ipy_children.pth"
# One line, run by site.py at every start-up of this environment's interpreter. It must be
# cheap and inert without the variable, and never raise (a failing .pth line only prints).
_PTH_LINE = (
    "import os; os.environ.get('MPROFILE_IPY_CHILDREN') and "
    "__import__('mprofile_ipy.children', fromlist=['_boot'])._boot()\n"
)


@dataclass(frozen=True)
class ChildProcess:
    """Who a child was: enough to label its part of a merged report."""

    pid: int
    ppid: int
    name: str
    start_method: str
    argv: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        """``name (pid N)``, the label views and pprof use for this process."""
        return f"{self.name} (pid {self.pid})"


@dataclass
class ChildrenCollection:
    """What :meth:`ChildSession.collect` found: snapshots, and the children that left none."""

    snapshots: list[tuple[ChildProcess, Any]] = field(default_factory=list)
    lost: list[ChildProcess] = field(default_factory=list)
    unreadable: list[tuple[ChildProcess, str]] = field(default_factory=list)

    @property
    def processes(self) -> list[ChildProcess]:
        """Every child that delivered a snapshot, in pid order."""
        return [proc for proc, _ in self.snapshots]

    def notes(self) -> list[str]:
        """One sentence per child whose part is missing, for a report's notes."""
        out = [f"{p.label} left no snapshot (killed or crashed): its memory is not counted"
               for p in self.lost]
        out += [f"{p.label}: its snapshot could not be read ({why})"
                for p, why in self.unreadable]
        return out


# ------------------------------------------------------------------------------------------
# Child side


class _ChildState:
    """This process's part of a session (set at start-up or after fork)."""

    def __init__(self) -> None:
        self.directory: str | None = None
        self.start_method = ""
        self.name_hint: str | None = None
        self.delivered_final = False
        self.lock = threading.Lock()


_child = _ChildState()
_AFTER_FORK_KEY = type("_AfterForkKey", (), {})()  # a weak-referenceable registry key
_fork_handler_registered = False


def _process_name() -> str:
    if _child.name_hint is not None:
        return _child.name_hint
    mp = sys.modules.get("multiprocessing")
    if mp is not None:
        with contextlib.suppress(Exception):
            return str(mp.current_process().name)
    return os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python"


def _describe_self() -> ChildProcess:
    mp = sys.modules.get("multiprocessing")
    if mp is not None:
        with contextlib.suppress(Exception):
            _child.start_method = mp.current_process()._start_method or _child.start_method
    return ChildProcess(pid=os.getpid(), ppid=os.getppid(), name=_process_name(),
                        start_method=_child.start_method, argv=tuple(sys.argv[:4]))


def _announce() -> None:
    directory = _child.directory
    if directory is None:
        return
    info = _describe_self()
    doc = {"pid": info.pid, "ppid": info.ppid, "name": info.name,
           "start_method": info.start_method, "argv": list(info.argv)}
    with sampler.paused():
        write_atomically(os.path.join(directory, f"{info.pid}.json"), json.dumps(doc).encode())


def _deliver(final: bool) -> None:
    """Write this process's snapshot (again, for a request; once more at exit)."""
    directory = _child.directory
    if directory is None or not os.path.isdir(directory) or not sampler.is_tracing():
        return
    with _child.lock:
        if _child.delivered_final:
            return
        _announce()  # multiprocessing names the process only after start-up
        with sampler.paused():
            snap = sampler.take_snapshot()
            info = _describe_self()
            snap.meta["process"] = {"pid": info.pid, "ppid": info.ppid, "name": info.name,
                                    "start_method": info.start_method, "final": final}
            buffer = io.BytesIO()
            save_snapshot(snap, buffer)
            write_atomically(os.path.join(directory, f"{info.pid}.snap"), buffer.getbuffer())
        if final:
            _child.delivered_final = True


def _deliver_final() -> None:
    with contextlib.suppress(Exception):  # never turn a child's clean exit into a failure
        _deliver(final=True)


def _serve_requests(fifo: str) -> None:
    """Daemon thread: one snapshot per byte written to the FIFO; idle costs nothing."""
    while _child.directory is not None:
        try:
            fd = os.open(fifo, os.O_RDONLY)  # blocks until the parent opens it for writing
        except OSError:
            return
        try:
            data = os.read(fd, 64)
        finally:
            os.close(fd)
        if data:
            with contextlib.suppress(Exception):
                _deliver(final=False)


def _start_request_thread() -> None:
    fifo = os.path.join(str(_child.directory), f"{os.getpid()}.req")
    with contextlib.suppress(FileExistsError):
        os.mkfifo(fifo, 0o600)
    threading.Thread(target=_serve_requests, args=(fifo,), name="mprofile-children",
                     daemon=True).start()


def _register_exit_delivery() -> None:
    global _after_fork_registered
    atexit.register(_deliver_final)
    mp_util = sys.modules.get("multiprocessing.util")
    if mp_util is None:
        return
    # Children that leave through os._exit() (fork-started multiprocessing children) skip
    # atexit but run multiprocessing's finalisers. A spawned child keeps this one; a forked
    # child's bootstrap clears the registry and then runs the after-fork callbacks, so
    # the callback registers it again there.
    mp_util.Finalize(None, _deliver_final, exitpriority=0)
    if not _after_fork_registered:
        mp_util.register_after_fork(_AFTER_FORK_KEY, _mp_after_fork)
        _after_fork_registered = True


def _mp_after_fork(_key: object) -> None:
    import multiprocessing.util as mp_util

    if _child.directory is not None:
        mp_util.Finalize(None, _deliver_final, exitpriority=0)


_after_fork_registered = False


def _become_child(directory: str, start_method: str) -> None:
    _child.directory = directory
    _child.start_method = start_method
    _child.delivered_final = False
    _announce()
    _start_request_thread()
    _register_exit_delivery()


def _boot() -> None:
    """Start-up hook of a new interpreter inside a session (run from the .pth line)."""
    try:
        config = json.loads(os.environ.get(ENV_VAR, ""))
        directory = str(config["dir"])
        if not os.path.isdir(directory) or config.get("parent") == os.getpid():
            return
        if not sampler.is_tracing():
            sampler.start(int(config["max_frames"]), int(config["sample_rate"]),
                          native=bool(config.get("native", False)))
        import multiprocessing.util  # noqa: F401  (so that exit delivery can use it)

        _become_child(directory, "spawn")
        _announce_at_bootstrap()
        _install_fork_handler()
    except Exception as exc:  # a child must start even when profiling it cannot
        print(f"mprofile-ipy: not profiling this child process: {exc}", file=sys.stderr)


def _announce_at_bootstrap() -> None:
    """In a new interpreter, name the process as soon as multiprocessing knows its name.

    A spawned child learns which Process object it is only when the parent's pickle
    arrives, right before ``BaseProcess._bootstrap``; announcing there means that a
    child killed in the middle of its work is still reported by name.
    """
    import multiprocessing.process as mp_process

    original = mp_process.BaseProcess._bootstrap

    def _bootstrap(self: Any, *args: Any, **kwargs: Any) -> Any:
        _child.name_hint = str(self.name)
        _child.start_method = getattr(self, "_start_method", None) or _child.start_method
        with contextlib.suppress(OSError):
            _announce()
        return original(self, *args, **kwargs)

    mp_process.BaseProcess._bootstrap = _bootstrap  # type: ignore[method-assign]


def _after_fork_in_child() -> None:
    directory = _session_dir_for_fork
    if directory is None or not os.path.isdir(directory):
        return
    try:
        if sampler.is_tracing():
            sampler.clear_traces()  # report what this child allocates, not its inheritance
        _become_child(directory, "fork")
    except Exception as exc:
        _child.directory = None
        print(f"mprofile-ipy: not profiling forked child: {exc}", file=sys.stderr)


_session_dir_for_fork: str | None = None


def _install_fork_handler() -> None:
    global _fork_handler_registered, _session_dir_for_fork
    _session_dir_for_fork = _child.directory or _session_dir_for_fork
    if not _fork_handler_registered:
        os.register_at_fork(after_in_child=_after_fork_in_child)
        _fork_handler_registered = True


# ------------------------------------------------------------------------------------------
# Parent side


def _purelib() -> str:
    return sysconfig.get_paths()["purelib"]


def _ensure_startup_hook() -> str | None:
    """Put the inert .pth start-up line in place; its path, or None where not writable."""
    path = os.path.join(_purelib(), PTH_NAME)
    try:
        with open(path, encoding="utf-8") as fh:
            if fh.read() == _PTH_LINE:
                return path
    except OSError:
        pass
    try:
        write_atomically(path, _PTH_LINE.encode())
    except OSError:
        return None
    return path


def remove_startup_hook() -> bool:
    """Delete the start-up line this module puts in site-packages; True if there was one.

    Sessions remove it themselves when the last one ends (see the module doc); this is for
    a line left by a process that was killed while a session was open."""
    try:
        os.unlink(os.path.join(_purelib(), PTH_NAME))
    except FileNotFoundError:
        return False
    return True


class _HookUsers:
    """Who needs the start-up line: the sessions open in this process (a count) and, across
    processes of this environment, one marker file per process with an open session."""

    def __init__(self) -> None:
        self.count = 0
        self.owner_pid = 0  # the process whose count this is (a forked child has a copy)
        self.lock = threading.Lock()
        self.atexit_registered = False


_hook_users = _HookUsers()


def _registry() -> str:
    """The folder of markers of this environment's processes that need the start-up line."""
    digest = hashlib.sha256(_purelib().encode("utf-8", "surrogateescape")).hexdigest()[:16]
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return os.path.join(tempfile.gettempdir(), f"mprofile-ipy-hook-{uid}-{digest}")


@contextlib.contextmanager
def _registry_locked() -> Any:
    """The registry folder, locked against other processes (``flock``; best effort where
    there is none). Yields None when the folder cannot be made."""
    folder = _registry()
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
        fd = os.open(os.path.join(folder, "lock"), os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        yield None
        return
    try:
        try:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX)
        except (ImportError, OSError):
            pass
        yield folder
    finally:
        os.close(fd)  # closing releases the lock


def _acquire_startup_hook() -> str | None:
    """A session opens: mark this process as needing the line and put it in place."""
    with _hook_users.lock, _registry_locked() as folder:
        path = _ensure_startup_hook()
        if path is None:
            return None
        if _hook_users.owner_pid != os.getpid():  # first session here (or a forked copy)
            _hook_users.count = 0
            _hook_users.owner_pid = os.getpid()
        _hook_users.count += 1
        if folder is not None:
            with contextlib.suppress(OSError):
                write_atomically(os.path.join(folder, str(os.getpid())), b"")
        if not _hook_users.atexit_registered:
            atexit.register(_release_at_exit)
            _hook_users.atexit_registered = True
        return path


def _release_startup_hook(everything: bool = False) -> bool:
    """A session that put the line in place ends (``everything``: the interpreter exits).
    When no session of any live process of this environment needs the line any more, it
    is deleted. Returns True if it was. A forked child that inherited the parent's count
    releases nothing: the sessions are its parent's."""
    with _hook_users.lock:
        if _hook_users.owner_pid != os.getpid() or _hook_users.count <= 0:
            return False
        _hook_users.count = 0 if everything else _hook_users.count - 1
        if _hook_users.count:
            return False
        with _registry_locked() as folder:
            if folder is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(folder, str(os.getpid())))
                if _other_users(folder):
                    return False
            return remove_startup_hook()


def _other_users(folder: str) -> bool:
    """Whether a live process still has a marker; markers of dead processes are swept."""
    alive = False
    for entry in os.listdir(folder):
        if not entry.isdigit():
            continue
        if _pid_alive(int(entry)):
            alive = True
        else:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(folder, entry))
    return alive


def _release_at_exit() -> None:
    with contextlib.suppress(Exception):  # never fail an interpreter's exit
        _release_startup_hook(everything=True)


def _patch_spawn_command_line() -> Any:
    """Fallback without a .pth: make multiprocessing's spawn children run _boot() first."""
    import multiprocessing.spawn as mp_spawn

    original = mp_spawn.get_command_line

    def get_command_line(**kwds: Any) -> list[str]:
        args = list(original(**kwds))
        if "-c" in args:
            i = args.index("-c") + 1
            args[i] = ("import mprofile_ipy.children as _mpc; _mpc._boot(); " + args[i])
        return args

    mp_spawn.get_command_line = get_command_line
    return original


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            state = fh.read().rsplit(b")", 1)[1].split()[0]
        return state not in (b"Z", b"X")
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


class ChildSession:
    """An open session: children started from now on are profiled until :meth:`close`.

    Use it as a context manager, or call :meth:`collect` and :meth:`close` yourself. The
    parent must be sampling (``mprofile_ipy.start()``) before children start: they take
    its sample rate, frame limit and native mode.
    """

    def __init__(self, directory: str | None = None) -> None:
        if not sampler.is_tracing():
            raise MprofileError("start the sampler before following child processes "
                                "(mprofile_ipy.start())")
        self.directory = directory or tempfile.mkdtemp(prefix="mprofile-children-")
        self._own_directory = directory is None
        self._previous_env = os.environ.get(ENV_VAR)
        self._spawn_original: Any = None
        self.startup_hook = _acquire_startup_hook()
        if self.startup_hook is None:
            self._spawn_original = _patch_spawn_command_line()
        os.environ[ENV_VAR] = json.dumps({
            "dir": self.directory,
            "sample_rate": sampler.get_sample_rate(),
            "max_frames": sampler.get_traceback_limit(),
            "native": bool(sampler._settings.get("native", False)),
            "parent": os.getpid(),
        })
        global _session_dir_for_fork
        _session_dir_for_fork = self.directory
        _install_fork_handler()
        self.closed = False

    def __enter__(self) -> ChildSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _announced(self) -> dict[int, ChildProcess]:
        found: dict[int, ChildProcess] = {}
        for entry in os.listdir(self.directory):
            if not entry.endswith(".json"):
                continue
            try:
                with open(os.path.join(self.directory, entry), encoding="utf-8") as fh:
                    doc = json.load(fh)
                proc = ChildProcess(pid=int(doc["pid"]), ppid=int(doc["ppid"]),
                                    name=str(doc["name"]),
                                    start_method=str(doc["start_method"]),
                                    argv=tuple(str(a) for a in doc.get("argv", ())))
            except (OSError, ValueError, KeyError, TypeError):
                continue
            found[proc.pid] = proc
        return found

    def _request(self, pid: int) -> bool:
        fifo = os.path.join(self.directory, f"{pid}.req")
        try:
            if not stat.S_ISFIFO(os.stat(fifo).st_mode):
                return False
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno not in (errno.ENXIO, errno.ENOENT):
                raise
            return False  # nobody reads it: the child is gone or not serving
        try:
            os.write(fd, b"s")
        finally:
            os.close(fd)
        return True

    def collect(self, timeout: float = 10.0) -> ChildrenCollection:
        """Gather every child's snapshot; ask children still running for a fresh one.

        Children that exited left their final snapshot; for the ones still alive (pool
        workers) a request is sent and answered within ``timeout`` seconds. A child that
        is gone without a snapshot is listed in ``lost``.
        """
        children = self._announced()
        asked_at = time.time()
        waiting: dict[int, float] = {}
        for pid in children:
            snap_path = os.path.join(self.directory, f"{pid}.snap")
            if _pid_alive(pid) and self._request(pid):
                waiting[pid] = os.stat(snap_path).st_mtime if os.path.exists(snap_path) else 0
        deadline = asked_at + timeout
        while waiting and time.time() < deadline:
            for pid, before in list(waiting.items()):
                path = os.path.join(self.directory, f"{pid}.snap")
                try:
                    if os.stat(path).st_mtime > before or not _pid_alive(pid):
                        del waiting[pid]
                except FileNotFoundError:
                    if not _pid_alive(pid):
                        del waiting[pid]
            time.sleep(0.02)
        result = ChildrenCollection()
        with sampler.paused():
            for pid in sorted(children):
                proc = children[pid]
                path = os.path.join(self.directory, f"{pid}.snap")
                if not os.path.exists(path):
                    result.lost.append(proc)
                    continue
                try:
                    result.snapshots.append((proc, load_snapshot(path)))
                except SnapshotFormatError as exc:
                    result.unreadable.append((proc, str(exc)))
        return result

    def close(self) -> None:
        """End the session: new children are no longer profiled; files are removed."""
        global _session_dir_for_fork
        if self.closed:
            return
        self.closed = True
        if self._previous_env is None:
            os.environ.pop(ENV_VAR, None)
        else:
            os.environ[ENV_VAR] = self._previous_env
        if _session_dir_for_fork == self.directory:
            _session_dir_for_fork = None
        if self._spawn_original is not None:
            import multiprocessing.spawn as mp_spawn

            mp_spawn.get_command_line = self._spawn_original
        if self.startup_hook is not None:
            _release_startup_hook()
        if self._own_directory:
            shutil.rmtree(self.directory, ignore_errors=True)


def follow(directory: str | None = None) -> ChildSession:
    """Profile the child processes started from now on (see the module docstring)."""
    return ChildSession(directory)
