"""Many processes, one profile: the kernel, its child processes and its Dask workers.

:func:`merge` takes one snapshot per process (the kernel's own, those of
:mod:`mprofile_ipy.children` and of :mod:`mprofile_ipy.cluster`) and returns a
:class:`MultiProcessProfile`: a merged :class:`~mprofile_ipy.model.Snapshot` in which
estimates add up (every process sampled at the same rate, so each sample keeps its own
weight and the variances of independent processes add), plus the per-process parts so
that a view can show each process's share. Sites match by frames across processes, so the
same notebook line run in three workers is one site of the merged snapshot.

Every trace and allocation total of the merged snapshot carries its process: the index of
its part in ``meta["processes"]`` (label, kind, pid, worker address), the model's
``process`` field. Thread labels (a Dask worker's task prefixes) are renumbered into one
table, ``meta["labels"]``, so that ``read_parquet`` is one label whichever worker ran it.
``meta["process_notes"]`` lists the processes whose part is missing (lost, failed). A saved
merged snapshot (``Snapshot.dump``, ``to_pprof``) keeps all of it: it still says which
process and which task allocated what, and ``Snapshot.split("process")`` or
``split("task")`` (or :func:`group_totals`) give each one's part.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from . import aggregate
from .errors import MprofileError
from .model import Snapshot

__all__ = ["GroupTotals", "MultiProcessProfile", "ProcessPart", "group_totals", "merge"]

KINDS = ("kernel", "child", "worker")


@dataclass(frozen=True)
class ProcessPart:
    """One process's snapshot and how to name it."""

    label: str
    kind: str  # "kernel", "child" or "worker"
    pid: int
    snapshot: Snapshot
    address: str = ""  # a Dask worker's address

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, not {self.kind!r}")

    def totals(self, which: str = "live") -> aggregate.Totals:
        """This process's live (or allocated-since-start) total, with its variance."""
        records = aggregate.by_traceback(self.snapshot)
        exact = self.snapshot.sample_rate <= 1
        total = aggregate.zero(exact)
        for record in records:
            total = total + getattr(record, which)
        return total


@dataclass(frozen=True)
class MultiProcessProfile:
    """The merged snapshot of several processes and each process's part."""

    merged: Snapshot
    parts: tuple[ProcessPart, ...]
    notes: tuple[str, ...] = ()

    def shares(self, which: str = "live") -> list[tuple[ProcessPart, aggregate.Totals]]:
        """Each process with its total, largest first."""
        rows = [(part, part.totals(which)) for part in self.parts]
        return sorted(rows, key=lambda row: -row[1].size)

    def statistics(self, key_type: str, *, process: str | None = None,
                   cumulative: bool = False) -> list[Any]:
        """``Snapshot.statistics`` of the merged snapshot, or of one process by label."""
        if process is None:
            return self.merged.statistics(key_type, cumulative)
        for part in self.parts:
            if part.label == process or part.address == process or str(part.pid) == process:
                return part.snapshot.statistics(key_type, cumulative)
        raise KeyError(f"no process {process!r} in this profile "
                       f"(there are: {', '.join(p.label for p in self.parts)})")


def _rate(parts: Sequence[ProcessPart]) -> int:
    rates = {part.snapshot.sample_rate for part in parts}
    if len(rates) > 1:
        raise MprofileError(
            "cannot merge snapshots taken at different sample rates "
            f"({', '.join(str(r) for r in sorted(rates))}): estimates of different rates "
            "do not add up sample by sample")
    return rates.pop() if rates else 1


def merge(parts: Iterable[ProcessPart], notes: Iterable[str] = ()) -> MultiProcessProfile:
    """Merge per-process snapshots into one profile (see the module docstring)."""
    parts = tuple(parts)
    if not parts:
        raise MprofileError("nothing to merge: no process delivered a snapshot")
    rate = _rate(parts)
    traces: list[tuple] = []
    counts: list[int] = []
    allocated: list[tuple] | None = []
    limit = 1
    label_ids: dict[str, int] = {}  # label name -> label id of the merged snapshot
    for index, part in enumerate(parts):
        snap = part.snapshot
        renumber = {old: label_ids.setdefault(snap.label_name(old), len(label_ids) + 1)
                    for old in _label_ids(snap)}
        records = snap.trace_records
        traces.extend((*t[:6], renumber.get(t[6], 0) if len(t) > 6 else 0, index)
                      for t in records)
        part_counts = snap.trace_counts
        counts.extend(part_counts if part_counts is not None else [1] * len(records))
        limit = max(limit, snap.traceback_limit)
        part_alloc = snap.allocated_records
        if part_alloc is None or allocated is None:
            allocated = None
        else:
            allocated.extend((*e[:7], renumber.get(e[7], 0) if len(e) > 7 else 0, index)
                             for e in part_alloc)
    meta = {
        "processes": [{"label": p.label, "kind": p.kind, "pid": p.pid, "address": p.address}
                      for p in parts],
        "labels": {str(i): name for name, i in label_ids.items()},
        "process_notes": list(notes),
    }
    kernel = next((p for p in parts if p.kind == "kernel"), None)
    if kernel is not None:
        meta = {**kernel.snapshot.meta, **meta}
    merged = Snapshot(traces, limit, sample_rate=rate, allocated=allocated, meta=meta,
                      counts=counts if any(c != 1 for c in counts) else None)
    return MultiProcessProfile(merged=merged, parts=parts, notes=tuple(notes))


def _label_ids(snapshot: Snapshot) -> set[int]:
    """The non-zero labels of a snapshot's traces and allocation totals."""
    found = {t[6] for t in snapshot.trace_records if len(t) > 6 and t[6]}
    found.update(e[7] for e in snapshot.allocated_records or () if len(e) > 7 and e[7])
    return found


@dataclass(frozen=True)
class GroupTotals:
    """One process's or one task's part of a snapshot: memory still alive and allocated
    since start (``None`` without allocation totals), each with its variance."""

    name: str
    live: aggregate.Totals
    allocated: aggregate.Totals | None
    snapshot: Snapshot


def group_totals(snapshot: Snapshot, by: str) -> list[GroupTotals]:
    """Each process's (``by="process"``) or each task's (``by="task"``) totals in
    ``snapshot``, largest first by memory alive; the name ``""`` collects the allocations
    made outside any task. Works on any snapshot carrying the fields (a merged one, or
    one loaded from a file or a pprof profile)."""
    out = []
    for name, part in snapshot.split(by).items():
        records = aggregate.by_traceback(part)
        exact = part.sample_rate <= 1
        live = alloc = aggregate.zero(exact)
        for record in records:
            live = live + record.live
            alloc = alloc + record.allocated
        out.append(GroupTotals(name, live, alloc if part.allocated is not None else None, part))
    return out
