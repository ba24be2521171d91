"""A profiling session that spans cells: named snapshots and a per-cell timeline.

``%mprofile start`` creates a :class:`Session`; IPython's cell events add a timeline point
after each cell; ``snapshot``, ``show``, ``compare``, ``export`` read its results. Its
methods run with sampling paused (the magic sees to it): what a session stores is the
profiler's bookkeeping, not the user's memory.
"""

from __future__ import annotations

import time
from typing import Any

from .. import sampler
from ..report import CallerStack, TimelinePoint
from ..result import ProfileResult
from .options import Options
from .runner import make_result

__all__ = ["Session"]


class Session:
    """The state of one session: options, snapshots by name, timeline, highest peak.

    ``base`` is the stack that runs the cells (found when the session started from a cell):
    the reports of the session cut those frames by position.
    """

    def __init__(self, shell: Any, opts: Options, base: CallerStack | None) -> None:
        self.shell = shell
        self.opts = opts
        self.base = base
        self.running = True
        self.started = time.time()
        self.snapshots: dict[str, ProfileResult] = {}
        self.timeline: list[TimelinePoint] = []
        self.max_peak = 0.0

    def record(self, label: str, cell: int | None) -> None:
        """Add a timeline point with the sampler's current figures."""
        stats = sampler.get_stats()
        self.max_peak = max(self.max_peak, stats.peak_bytes)
        self.timeline.append(TimelinePoint(label, cell, time.time(), stats.current_bytes,
                                           stats.peak_bytes, stats.allocated_bytes))

    def take(self, label: str, opts: Options | None = None) -> ProfileResult:
        """A result for what is alive now; its peak is the session's highest so far."""
        self.max_peak = max(self.max_peak, sampler.get_stats().peak_bytes)
        return make_result(self.shell, opts or self.opts, label, time.time() - self.started,
                           peak=self.max_peak, timeline=list(self.timeline),
                           caller_stack=self.base)
