"""``--children`` and ``--dask``: profile the processes a cell's work runs in, merge them.

:class:`Followers` starts, after the kernel's own sampler, the child-process session
(:func:`mprofile_ipy.children.follow`) and/or the Dask worker session
(:func:`mprofile_ipy.cluster.profile_workers` on the current ``distributed`` client); at the
end of the cell :meth:`Followers.merge_into` collects one snapshot per process (pool workers
still alive are asked for a fresh one), merges them with the kernel's
(:func:`mprofile_ipy.processes.merge`) and gives the cell's result over the merged snapshot,
with a per-process section (label, kind, pid, size and count with their uncertainty) and a
note for each process whose part is missing. :meth:`Followers.close` always runs: nothing
keeps sampling in children or workers after the cell.
"""

from __future__ import annotations

import math
import os
import sys
from typing import Any

from IPython.core.error import UsageError

from ..errors import MprofileError
from ..report import ProcessShare
from ..result import ProfileResult
from .options import Options

__all__ = ["Followers"]


def _say(message: str) -> None:
    print(f"mprofile: {message}", file=sys.stderr)


class Followers:
    """The child and worker sessions of one cell (either may be None)."""

    def __init__(self, opts: Options) -> None:
        self.children: Any = None
        self.workers: Any = None
        if opts.children:
            from ..children import follow

            try:
                self.children = follow()
            except (MprofileError, OSError) as exc:
                raise UsageError(f"--children: {exc}") from None
        if opts.dask:
            from ..cluster import profile_workers

            try:
                self.workers = profile_workers(sample_rate=opts.rate,
                                               max_frames=opts.max_frames, native=opts.native)
            except (MprofileError, ImportError) as exc:
                self.close()
                raise UsageError(f"--dask: {exc}") from None

    @property
    def active(self) -> bool:
        return self.children is not None or self.workers is not None

    def merge_into(self, result: ProfileResult) -> ProfileResult:
        """The cell's result over the snapshots of every process, merged. A collection that
        fails is said in one line and leaves the kernel's own result."""
        from ..processes import ProcessPart, merge

        parts = [ProcessPart(f"kernel (pid {os.getpid()})", "kernel", os.getpid(),
                             result.snapshot)]
        notes: list[str] = []
        peaks = [float(result.peak)]
        if self.children is not None:
            try:
                found = self.children.collect()
            except Exception as exc:  # noqa: BLE001 - the kernel's own result still counts
                _say(f"--children: collecting the children's snapshots failed ({exc})")
            else:
                notes += found.notes()
                for proc, snapshot in found.snapshots:
                    parts.append(ProcessPart(proc.label, "child", proc.pid, snapshot))
                    peaks.append(float(snapshot.meta.get("peak_bytes", 0) or 0))
                if not found.snapshots and not found.lost and not found.unreadable:
                    notes.append("--children: the code started no child process that this "
                                 "profiler could follow")
        if self.workers is not None:
            try:
                found = self.workers.collect()
            except Exception as exc:  # noqa: BLE001
                _say(f"--dask: collecting the workers' snapshots failed ({exc})")
            else:
                notes += found.notes()
                for address, snapshot in found.snapshots:
                    info = snapshot.meta.get("process") or {}
                    pid = int(info.get("pid") or 0)
                    parts.append(ProcessPart(f"worker {address}", "worker", pid, snapshot,
                                             address=address))
                    peaks.append(float(snapshot.meta.get("peak_bytes", 0) or 0))
        try:
            merged = merge(parts, notes)
        except MprofileError as exc:  # different sample rates: keep the kernel's own
            _say(f"cannot merge the processes' snapshots ({exc}); the report is the "
                 f"kernel's own")
            return result
        shares = []
        allocated_total = allocated_count = 0.0
        allocated_known = True
        samples = int(result.samples) + sum(
            int(part.snapshot.meta.get("samples_total", 0) or 0) for part in parts[1:])
        for part, live in merged.shares("live"):
            has_alloc = part.snapshot.allocated is not None
            alloc = part.totals("allocated") if has_alloc else None
            if alloc is None:
                allocated_known = False
            else:
                allocated_total += alloc.size
                allocated_count += alloc.count
            shares.append(ProcessShare(
                label=part.label, kind=part.kind, pid=part.pid, size=float(live.size),
                size_std_error=math.sqrt(live.size_var), count=float(live.count),
                count_std_error=math.sqrt(live.count_var), samples=live.samples,
                allocated=float(alloc.size) if alloc is not None else math.nan,
                allocated_std_error=math.sqrt(alloc.size_var) if alloc is not None
                else math.nan, address=part.address))
        # The peak is the sum of each process's own peak: an upper bound of their peaks
        # together (they need not have peaked at the same moment).
        return result.with_snapshot(
            merged.merged, current=None, peak=sum(peaks),
            allocated=allocated_total if allocated_known else float(result.allocated),
            allocated_count=allocated_count if allocated_known else None, samples=samples,
            processes=tuple(shares), process_notes=tuple(notes))

    def close(self) -> None:
        """End both sessions (children no longer followed, worker plugins removed)."""
        for session in (self.children, self.workers):
            if session is not None:
                try:
                    session.close()
                except Exception as exc:  # noqa: BLE001 - the cell's result matters more
                    _say(f"closing a process session failed ({exc})")
