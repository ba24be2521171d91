"""mprofile-ipy: a low-overhead sampling memory profiler with tracemalloc's API.

``import mprofile_ipy as mp; mp.start(); ...; mp.take_snapshot().statistics("lineno")``
works as tracemalloc does, at a few percent of the cost. In IPython,
``%load_ext mprofile_ipy`` adds the ``%mprofile`` and ``%%mprofile`` magics.

The public surface is what ``__all__`` lists: the tracemalloc-compatible API, the model
(``Snapshot``, ``Statistic``, ...), the results of the magics (``ProfileResult``,
``DiffResult``), the loaders (``load_snapshot``, ``load_pprof``) and the errors, the memory
budget (``set_budget("4GB")``, ``get_budget()``, ``with memory_budget("2GB"): ...``) and
``load_postmortem()`` (what a killed kernel was doing). Everything else (``aggregate``,
``report``, ``renderers``, ``ipython``, ``attribution``, ``native_capture``, ...) is
internal and may change between releases.

Importing the package and ``start()`` load only the sampler: every other public name is
imported when first used (PEP 562 ``__getattr__``), because in a script each module loaded
is more objects for every full collection of the cyclic GC to traverse while the profiled
code runs (docs/architecture.md, "Import cost").
"""

from __future__ import annotations

from . import sampler as _sampler
from .errors import (
    BudgetError,
    FileFormatError,
    MemoryBudgetExceeded,
    MissingDependencyError,
    MprofileError,
    NoPostMortem,
    PprofFormatError,
    SnapshotFormatError,
)
from .sampler import (
    DEFAULT_MAX_FRAMES,
    DEFAULT_SAMPLE_RATE,
    clear_traces,
    get_object_traceback,
    get_profiler_memory,
    get_sample_rate,
    get_stats,
    get_traceback_limit,
    get_traced_memory,
    get_tracemalloc_memory,
    is_tracing,
    paused,
    reset_peak,
    start,
    stop,
)
from .sampler import (
    _get_object_traceback as _get_object_traceback,
)
from .sampler import (
    _get_traces as _get_traces,
)

# typing.TYPE_CHECKING without importing typing at run time (type checkers take it as
# True): the names below are imported on first use by __getattr__.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .budget import get_budget, memory_budget, set_budget
    from .export.pprof import load_pprof
    from .model import (
        NATIVE_DOMAIN,
        NUMPY_DOMAIN,
        Allocator,
        BaseFilter,
        DomainFilter,
        Filter,
        Frame,
        Snapshot,
        Statistic,
        StatisticDiff,
        Trace,
        Traceback,
    )
    from .postmortem import load_postmortem
    from .result import DiffResult, ProfileResult
    from .sampler_records import SamplerStats
    from .storage import load_snapshot
del TYPE_CHECKING

__version__ = "0.1.0"

__all__ = [
    "Allocator",
    "BaseFilter",
    "BudgetError",
    "DEFAULT_MAX_FRAMES",
    "DEFAULT_SAMPLE_RATE",
    "DiffResult",
    "DomainFilter",
    "FileFormatError",
    "Filter",
    "Frame",
    "MemoryBudgetExceeded",
    "MissingDependencyError",
    "MprofileError",
    "NATIVE_DOMAIN",
    "NUMPY_DOMAIN",
    "NoPostMortem",
    "PprofFormatError",
    "ProfileResult",
    "SamplerStats",
    "Snapshot",
    "SnapshotFormatError",
    "Statistic",
    "StatisticDiff",
    "Trace",
    "Traceback",
    "clear_traces",
    "get_budget",
    "get_object_traceback",
    "get_profiler_memory",
    "get_sample_rate",
    "get_stats",
    "get_traceback_limit",
    "get_traced_memory",
    "get_tracemalloc_memory",
    "is_tracing",
    "load_ipython_extension",
    "load_postmortem",
    "load_pprof",
    "load_snapshot",
    "memory_budget",
    "paused",
    "reset_peak",
    "set_budget",
    "start",
    "stop",
    "take_snapshot",
    "unload_ipython_extension",
]


def take_snapshot() -> Snapshot:
    """A snapshot of the sampled allocations that are still alive (tracemalloc's
    ``take_snapshot``; see :func:`mprofile_ipy.sampler.take_snapshot`).

    As in tracemalloc, it asks the module's own ``is_tracing()``, ``_get_traces()`` and
    ``get_traceback_limit()``: code that replaces them (tracemalloc's tests do, with
    ``mock.patch.object``) gets a snapshot of what they return. Otherwise the sampler's
    snapshot, which carries more than the raw traces (function names, threads, estimates).
    """
    if not is_tracing():
        raise RuntimeError(_sampler.NOT_TRACING)
    if _get_traces is _sampler._get_traces and get_traceback_limit is _sampler.get_traceback_limit:
        return _sampler.take_snapshot()
    from .model import Snapshot  # a module-level name here is lazy (__getattr__)

    return Snapshot(_get_traces(), get_traceback_limit())


#: Public names imported on first use, and the module that defines each. Importing the
#: package and calling start() load only the sampler (the native module, threading): the
#: model, the aggregation, the storage and every view come with the first snapshot, load,
#: statistic or magic. Each module loaded is more objects for every full collection of the
#: cyclic GC to traverse for the rest of the profiled process; docs/architecture.md,
#: "Import cost", says what loads when.
_LAZY = {
    **dict.fromkeys(
        ("NATIVE_DOMAIN", "NUMPY_DOMAIN", "Allocator", "BaseFilter", "DomainFilter", "Filter",
         "Frame", "Snapshot", "Statistic", "StatisticDiff", "Trace", "Traceback"),
        ".model"),
    "SamplerStats": ".sampler_records",
    "load_snapshot": ".storage",
    "ProfileResult": ".result",
    "DiffResult": ".result",
    "load_pprof": ".export.pprof",
    "set_budget": ".budget",
    "get_budget": ".budget",
    "memory_budget": ".budget",
    "load_postmortem": ".postmortem",
}

#: Submodules that ``import mprofile_ipy`` used to load, so that ``mprofile_ipy.model``
#: (attribute access, without importing it) still works: imported when first asked for.
_LAZY_MODULES = ("model", "aggregate", "estimate", "storage", "sampler_records")


def __getattr__(name: str) -> Any:
    """Import a public name of ``_LAZY`` (the model, ``load_snapshot``, results,
    ``load_pprof``, the budget and post-mortem API) or a submodule of ``_LAZY_MODULES``
    when first asked for (PEP 562), and keep it: later lookups are plain attributes."""
    from importlib import import_module

    target = _LAZY.get(name)
    if target is not None:
        value = getattr(import_module(target, __name__), name)
    elif name in _LAZY_MODULES:
        value = import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext mprofile_ipy``: register the magics (imported only now, with IPython)."""
    from .ipython import load_ipython_extension as load

    load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    """``%unload_ext mprofile_ipy``: remove the magics and stop what they started."""
    from .ipython import unload_ipython_extension as unload

    unload(ipython)
