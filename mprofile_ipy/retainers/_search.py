"""Breadth-first search of the object graph from the user's roots, and what it found.

One pass visits every object reachable from the roots once (``gc.get_referents``, plus an
ndarray's ``base`` and the elements of object arrays, which the GC cannot see), recording
for each object the object it was first reached from. Targets are recognised on the way
by address: an object whose ``id`` is a sampled block's address plus its pre-header.
Blocks that are not objects are tied afterwards to the container whose buffer they are.

Objects the pass does not reach are looked at once more, the way the cyclic GC does it:
count each object's references from inside that set; the ones with more references than
that are held from outside (from C), the ones reachable only from each other form cycles
that ``gc.collect()`` would free.

The search holds strong references to what it visits only while it runs, disables the
cyclic GC meanwhile (so no visited object can be freed and its address reused) and
checks the clock every few thousand objects.
"""

from __future__ import annotations

import bisect
import gc
import sys
import time
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._layout import (
    PREHEADER_SIZES,
    NumpyAccess,
    buffer_pointers,
    numpy_ndarray,
    preheader_size,
    type_module,
    type_name,
)
from ._roots import Context, RootRef, cleared_with_kind

_ROOT = object()  # parent of a root object in the parent map
_CONTAINER = object()  # marks the namespaces whose entries are roots: never walked
_CHECK_EVERY = 4096
# Exact types whose instances reference nothing: marked visited only when they are targets.
_LEAVES = frozenset({int, float, complex, str, bytes, bool, type(None)})

_KIND_PLAIN = 0
_KIND_BUFFERS = 1  # list, dict, set, frozenset, bytearray: buffers in other blocks
_KIND_NDARRAY = 2
_KIND_SKIP = 3  # never traversed: see _UNSAFE_MODULES
# Types whose tp_traverse must not be called from outside a collection: on CPython 3.12 in
# an ipykernel, gc.get_referents() on pyzmq's objects makes the next gc.collect() hang
# (reproduced without mprofile-ipy: a BFS over gc.get_referents, then `%reset -f out`).
# They hold the kernel's sockets and messages, never user data.
_UNSAFE_MODULES = frozenset({"zmq"})
_KIND_MODULE = 4  # module objects: see module_referents
# Extension modules whose module state gc.get_referents must not see. CPython 3.12.0-3.12.4
# (gh-122695): the traverse of `_asyncio` visits its free list of FutureIter objects, so
# get_referents hands out references to freed ones; dropping them frees them a second
# time, the free list becomes a cycle and the next gc.collect() never ends (a hung kernel).
# Their state holds the event loop's bookkeeping, never a root a user would recognise.
_UNSAFE_MODULE_STATE = frozenset({"_asyncio"})
# The module's own namespace, read through the C member descriptor: no user code runs.
_MODULE_DICT = types.ModuleType.__dict__["__dict__"]


def module_referents(module: Any) -> list:
    """What a module references: its namespace, plus its C state unless that is unsafe."""
    namespace = _MODULE_DICT.__get__(module)
    name = namespace.get("__name__") if type(namespace) is dict else None
    if type(name) is str and name in _UNSAFE_MODULE_STATE:
        return [namespace]
    return gc.get_referents(module)


@dataclass
class Progress:
    """Where a running search is: ``phase``, objects visited so far, seconds elapsed."""

    phase: str
    objects: int
    elapsed: float


class SearchTimeout(Exception):
    """The time limit ran out; the search stops and reports what it has."""


class Clock:
    """Deadline and progress reports shared by all passes of one request."""

    def __init__(self, time_limit: float | None, progress: Callable[[Progress], None] | None,
                 ) -> None:
        self.start = time.perf_counter()
        self.deadline = None if time_limit is None else self.start + time_limit
        self.progress = progress
        self.visited = 0
        self.timed_out = False

    def tick(self, phase: str, objects: int) -> None:
        now = time.perf_counter()
        if self.progress is not None:
            self.progress(Progress(phase, self.visited + objects, now - self.start))
        if self.deadline is not None and now > self.deadline:
            self.timed_out = True
            raise SearchTimeout


class Pass:
    """One breadth-first pass from the roots. ``parent`` maps id(obj) to the object it was
    first reached from (``_ROOT`` for roots); ``levels`` keep every visited object alive
    until the request ends."""

    def __init__(self, ctx: Context, clock: Clock, *, wanted_ids: set[int],
                 stop_when_all_found: bool, excluded: dict[int, frozenset[str]],
                 excluded_kinds: frozenset[str]) -> None:
        self.parent: dict[int, Any] = {}
        self.levels: list[list] = []
        self.rootref: dict[int, RootRef] = {}
        self.hits: dict[int, Any] = {}
        self.kinds: dict[int, int] = {}
        self._types: list[type] = []  # keeps the types of `kinds` alive (ids stay valid)
        ndarray = numpy_ndarray()
        self.numpy = NumpyAccess(ndarray) if ndarray is not None else None
        self.complete = False
        self.containers: list = []
        self.owners: list = []  # visited containers and ndarrays, for buffer matching
        try:
            self._run(ctx, clock, wanted_ids, stop_when_all_found, excluded, excluded_kinds)
        except SearchTimeout:
            pass  # clock.timed_out says so; what was found so far stands

    def kind_of(self, tp: type) -> int:
        kind = self.kinds.get(id(tp))
        if kind is None:
            if type_module(tp).split(".")[0] in _UNSAFE_MODULES:
                kind = _KIND_SKIP
            elif issubclass(tp, (list, dict, set, frozenset, bytearray)):
                kind = _KIND_BUFFERS
            elif self.numpy is not None and issubclass(tp, self.numpy.ndarray):
                kind = _KIND_NDARRAY
            elif issubclass(tp, types.ModuleType):
                kind = _KIND_MODULE
            else:
                kind = _KIND_PLAIN
            self.kinds[id(tp)] = kind
            self._types.append(tp)
        return kind

    def referents(self, obj: Any) -> list:
        """What ``obj`` references, as the search follows it."""
        kind = self.kind_of(type(obj))
        if kind == _KIND_SKIP:
            return []
        if kind == _KIND_MODULE:
            return module_referents(obj)
        refs = gc.get_referents(obj)
        if self.numpy is not None and kind == _KIND_NDARRAY:
            base = self.numpy.base(obj)
            if base is not None:
                refs.append(base)
            if self.numpy.is_object_array(obj):
                refs.extend(self.numpy.elements(obj))
        return refs

    def _run(self, ctx: Context, clock: Clock, wanted: set[int], stop: bool,
             excluded: dict[int, frozenset[str]], excluded_kinds: frozenset[str]) -> None:
        parent = self.parent
        hits = self.hits
        entries = ctx.entries()
        self.containers = ctx.containers()
        for container in self.containers:
            parent[id(container)] = _CONTAINER
        level0: list = []
        for obj, ref in entries:
            key = id(obj)
            if ref.kind in excluded.get(key, ()) or (
                ref.kind in excluded_kinds and cleared_with_kind(ref)
            ):
                continue
            if key not in parent:
                parent[key] = _ROOT
                self.rootref[key] = ref
                level0.append(obj)
                if key in wanted:
                    hits[key] = obj
        del entries
        self.levels.append(level0)
        frontier = level0
        get_referents = gc.get_referents
        kinds = self.kinds
        kind_of = self.kind_of
        owners = self.owners
        leaves = _LEAVES
        _id = id
        _type = type
        count = self.count = 0
        remaining = len(wanted) - len(hits)
        while frontier:
            if stop and remaining <= 0:
                break
            nxt: list = []
            self.levels.append(nxt)
            for obj in frontier:
                count += 1
                if not count % _CHECK_EVERY:
                    clock.tick("search", count)
                kind = kinds.get(_id(_type(obj)))
                if kind is None:
                    kind = kind_of(_type(obj))
                if kind:
                    if kind == _KIND_SKIP:
                        continue
                    if kind != _KIND_MODULE:
                        owners.append(obj)  # may own a buffer in another block
                refs = self.referents(obj) if kind else get_referents(obj)
                for ref in refs:
                    key = _id(ref)
                    if key in parent:
                        continue
                    if _type(ref) in leaves:  # no references of their own: not walked
                        if key in wanted:
                            parent[key] = obj
                            hits[key] = ref
                            remaining -= 1
                        continue
                    if True:
                        parent[key] = obj
                        nxt.append(ref)
                        if key in wanted:
                            hits[key] = ref
                            remaining -= 1
            frontier = nxt
        else:
            self.complete = True
        self.count = count
        clock.visited += count

    def path_to(self, obj: Any) -> list:
        """Objects from a root to ``obj`` (both included), following first discoveries."""
        path = [obj]
        step = self.parent[id(obj)]
        while step is not _ROOT and step is not _CONTAINER:
            path.append(step)
            step = self.parent[id(step)]
        path.reverse()
        return path



def candidate_ids(addresses: list[int]) -> set[int]:
    """Every ``id`` an object starting in one of these blocks could have."""
    return {address + pre for address in addresses for pre in PREHEADER_SIZES}


def match_objects(addresses: list[int], hits: dict[int, Any]) -> dict[int, Any]:
    """address -> the object whose memory block starts at that address, among ``hits``."""
    out: dict[int, Any] = {}
    for address in addresses:
        for pre in PREHEADER_SIZES:
            obj = hits.get(address + pre)
            if obj is not None and preheader_size(type(obj)) == pre:
                out[address] = obj
                break
    return out


class BlockIndex:
    """Sorted ``[start, end)`` intervals of blocks, to find the block holding a pointer."""

    def __init__(self, blocks: list[tuple[int, int]]) -> None:
        self.blocks = sorted(blocks)
        self.starts = [start for start, _ in self.blocks]

    def find(self, pointer: int) -> int | None:
        """The start address of the block that contains ``pointer``, or None."""
        i = bisect.bisect_right(self.starts, pointer) - 1
        if i >= 0:
            start, size = self.blocks[i]
            if start <= pointer < start + max(size, 1):
                return start
        return None


def match_buffers(objects: Any, index: BlockIndex, kind_of: Callable[[type], int],
                  numpy: NumpyAccess | None, clock: Clock) -> dict[int, tuple[Any, str]]:
    """block address -> (owner object, what the block is) for blocks that are buffers of a
    container (item arrays, hash tables) or the data of an ndarray."""
    found: dict[int, tuple[Any, str]] = {}
    arrays: dict[int, list] = {}
    count = 0
    for obj in objects:
        count += 1
        if not count % _CHECK_EVERY:
            clock.tick("buffers", count)
        kind = kind_of(type(obj))
        if kind == _KIND_BUFFERS:
            for pointer, what in buffer_pointers(obj):
                start = index.find(pointer)
                if start is not None and start not in found:
                    found[start] = (obj, what)
        elif kind == _KIND_NDARRAY and numpy is not None:
            start = index.find(numpy.data_pointer(obj))
            if start is not None:
                arrays.setdefault(start, []).append(obj)
    for start, candidates in arrays.items():
        if start in found:
            continue
        owners = [a for a in candidates if numpy is not None and numpy.owns_data(a)]
        found[start] = ((owners or candidates)[0], "data")
    return found


@dataclass
class Unreached:
    """What the unreached part of the heap says about some targets."""

    garbage: set[int]  # ids of objects only cyclic garbage holds
    held: set[int]  # ids of objects held from outside the graph the search sees
    objects: dict[int, Any]  # address -> object, for targets found here
    buffers: dict[int, tuple[Any, str]]
    parent: dict[int, Any]  # id -> object it is reached from, inside the unreached part
    referrer_types: dict[int, list[str]]


def analyse_unreached(visited: dict[int, Any], addresses: list[int], index: BlockIndex,
                      kind_of: Callable[[type], int], numpy: NumpyAccess | None,
                      referents: Callable[[Any], list], clock: Clock, own: set[int],
                      ) -> Unreached:
    """Look at the GC-tracked objects the search did not reach (and what they reference).

    Finds the targets among them, then tells cyclic garbage from objects held from C with
    the GC's own rule: an object referenced more often than the unreached objects
    reference it is held from outside. ``referents`` is the search's own
    (:meth:`Pass.referents`): the same edges, the same objects left alone.
    """
    # No comprehension below may use `members`: on 3.10/3.11 that would put it in a cell,
    # a GC object the analysis would then see holding everything.
    wanted = candidate_ids(addresses)
    everything = gc.get_objects()
    members: list = []
    for obj in everything:
        if id(obj) not in visited and id(obj) not in own:
            members.append(obj)
    del everything, obj
    position = {id(obj): i for i, obj in enumerate(members)}
    # Close over what the unreached objects reference (untracked tuples and dicts,
    # strings, ndarrays, ...), which gc.get_objects() does not list.
    i = 0
    edges: list[list[int]] = []
    while i < len(members):
        obj = members[i]
        if not (i + 1) % _CHECK_EVERY:
            clock.tick("unreachable", i)
        refs = referents(obj)
        out: list[int] = []
        for ref in refs:
            key = id(ref)
            if key in visited or key in own:
                continue
            j = position.get(key)
            if j is None:
                j = position[key] = len(members)
                members.append(ref)
            out.append(j)
        edges.append(out)
        i += 1
        del refs, obj
    internal = [0] * len(members)
    for out in edges:
        for j in out:
            internal[j] += 1
    members.append([])  # a probe referenced by `members` only: the baseline count
    baseline = sys.getrefcount(members[-1])
    members.pop()
    held_roots: list[int] = []
    for j in range(len(members)):
        if sys.getrefcount(members[j]) - baseline > internal[j]:
            held_roots.append(j)
    held = set(held_roots)
    stack = list(held_roots)
    parent_index: dict[int, int] = {}
    while stack:
        j = stack.pop()
        for k in edges[j]:
            if k not in held:
                held.add(k)
                parent_index[k] = j
                stack.append(k)
    by_id: dict[int, Any] = {}
    for obj in members:
        if id(obj) in wanted:
            by_id[id(obj)] = obj
    objects = match_objects(addresses, by_id)
    buffers = match_buffers(members, index, kind_of, numpy, clock)
    referrer_types: dict[int, list[str]] = {}
    for j, out in enumerate(edges):
        for k in out:
            referrer_types.setdefault(id(members[k]), [])
            if len(referrer_types[id(members[k])]) < 5:
                referrer_types[id(members[k])].append(type_name(type(members[j])))
    garbage: set[int] = set()
    held_ids: set[int] = set()
    for j in range(len(members)):
        (held_ids if j in held else garbage).add(id(members[j]))
    parents: dict[int, Any] = {}
    for k, j in parent_index.items():
        parents[id(members[k])] = members[j]
    return Unreached(garbage=garbage, held=held_ids, objects=objects, buffers=buffers,
                     parent=parents, referrer_types=referrer_types)
