"""The records the sampler hands out: :class:`SamplerStats` and :class:`LiveBlock`.

They live apart from :mod:`mprofile_ipy.sampler` because they are dataclasses: importing
:mod:`dataclasses` pulls in :mod:`inspect` (``ast``, ``dis``, ``tokenize`` ...), about
2,000 objects that every full collection of the cyclic GC would traverse for the rest of
the process. ``import mprofile_ipy; mprofile_ipy.start()`` never needs them; the first
``get_stats()`` or ``live_blocks()`` imports this module. Both names stay importable from
:mod:`mprofile_ipy.sampler` (and ``SamplerStats`` from :mod:`mprofile_ipy`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SamplerStats:
    """Counters of the running sampler; byte and count figures are unbiased estimates."""

    tracing: bool
    exact: bool
    sample_rate: int
    max_frames: int
    samples: int
    live_samples: int
    current_bytes: float
    peak_bytes: float
    allocated_bytes: float
    allocated_count: float
    profiler_memory: int
    foreign_hooks: bool


@dataclass(frozen=True)
class LiveBlock:
    """One sampled block that is still alive, with the address the allocator returned.

    ``frames`` are raw frames, most recent first, exactly as in a raw trace
    (``docs/architecture.md``). ``allocator`` is a :class:`mprofile_ipy.model.Allocator`
    value; for Python objects the address is the start of the block, which lies before
    ``id(obj)`` by the object's GC header and pre-header.
    """

    address: int
    size: int
    allocator: int
    domain: int
    thread_id: int
    frames: tuple
