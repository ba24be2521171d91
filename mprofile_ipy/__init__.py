"""mprofile-ipy: a low-overhead sampling memory profiler with tracemalloc's API.

``import mprofile_ipy as mp; mp.start(); ...; mp.take_snapshot().statistics("lineno")``
works as tracemalloc does, at a few percent of the cost. In IPython,
``%load_ext mprofile_ipy`` adds the ``%mprofile`` and ``%%mprofile`` magics.
"""

from __future__ import annotations

from typing import Any

from .errors import (
    FileFormatError,
    MemoryBudgetExceeded,
    MprofileError,
    PprofFormatError,
    SnapshotFormatError,
)
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
from .sampler import (
    DEFAULT_MAX_FRAMES,
    DEFAULT_SAMPLE_RATE,
    SamplerStats,
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
    take_snapshot,
)

__version__ = "0.1.0"

__all__ = [
    "NATIVE_DOMAIN",
    "NUMPY_DOMAIN",
    "DEFAULT_MAX_FRAMES",
    "DEFAULT_SAMPLE_RATE",
    "Allocator",
    "BaseFilter",
    "DomainFilter",
    "FileFormatError",
    "Filter",
    "Frame",
    "MemoryBudgetExceeded",
    "MprofileError",
    "PprofFormatError",
    "SamplerStats",
    "Snapshot",
    "SnapshotFormatError",
    "Statistic",
    "StatisticDiff",
    "Trace",
    "Traceback",
    "clear_traces",
    "get_object_traceback",
    "get_profiler_memory",
    "get_sample_rate",
    "get_stats",
    "get_traceback_limit",
    "get_traced_memory",
    "get_tracemalloc_memory",
    "is_tracing",
    "load_ipython_extension",
    "paused",
    "reset_peak",
    "start",
    "stop",
    "take_snapshot",
    "unload_ipython_extension",
]


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext mprofile_ipy``: register the magics (imported only now, with IPython)."""
    from .magics import load_ipython_extension as load

    load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    """``%unload_ext mprofile_ipy``: remove the magics and stop what they started."""
    from .magics import unload_ipython_extension as unload

    unload(ipython)
