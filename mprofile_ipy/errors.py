"""The errors mprofile-ipy raises on bad input, bad files and exhausted budgets.

Every error derives from :class:`MprofileError`, so ``except mprofile_ipy.MprofileError``
catches all of them, and also from the built-in type it stands in for (``ValueError`` for
bad files and options, ``MemoryError`` for a memory budget), so code written against the
built-in types keeps working. This module imports nothing from the package: every layer
may raise these.
"""

from __future__ import annotations

__all__ = [
    "BudgetError",
    "FileFormatError",
    "MemoryBudgetExceeded",
    "MissingDependencyError",
    "MprofileError",
    "NoPostMortem",
    "PprofFormatError",
    "SnapshotFormatError",
]


class MprofileError(Exception):
    """Base class of every error mprofile-ipy raises on purpose."""


class FileFormatError(MprofileError, ValueError):
    """A file cannot be read: corrupt, truncated, foreign, newer, or over a size cap."""


class SnapshotFormatError(FileFormatError):
    """A file is not a snapshot this version of mprofile-ipy can read, and why."""


class PprofFormatError(FileFormatError):
    """The input is not a readable pprof heap profile (corrupt, truncated, empty, foreign)."""


class MemoryBudgetExceeded(MprofileError, MemoryError):
    """The process crossed its memory budget; raised in the main thread to stop the code.

    What tripped and where, as attributes (None or empty when not known): ``kind`` (the
    budget or the safety net), ``measure`` (rss, traced, cgroup, ...), ``value`` and
    ``limit`` in bytes, ``location`` and ``inner_location`` (the user's line and the
    library line inside it), ``cell``, ``sites`` (the top allocating sites), ``snapshot``,
    ``timeline`` and ``trip`` (the watcher's record of the crossing).
    """

    kind: str | None = None
    measure: str | None = None
    value: int | None = None
    limit: int | None = None
    location: str | None = None
    inner_location: str | None = None
    cell: int | None = None
    sites: tuple = ()
    snapshot: object = None
    timeline: tuple = ()
    trip: object = None


class BudgetError(MprofileError, ValueError):
    """A budget that cannot be used: not a size, or already below the process's memory."""


class NoPostMortem(MprofileError, LookupError):
    """No record of a dead process was found (or the one named is not a record)."""


class MissingDependencyError(MprofileError, ImportError):
    """An optional feature needs a package that is not installed; the message says which."""
