"""Why is this memory still alive? Reference chains from sampled blocks to what keeps them.

Given live sampled blocks (``mprofile_ipy.sampler.live_blocks()``), or a site of a
snapshot or result, :func:`find_retainers` finds the Python object each block is (or the
object whose buffer it is: a list's item array, a dict's table, an ndarray's data) and the
shortest reference chains that keep it alive, each from a root the user recognises:

- a name in the user namespace (``df``), an output-history entry (``Out[12]``, ``_``,
  ``_12``), a module global (``mymod.CACHE``), a class attribute, a closure variable or a
  default argument of a named function, ``sys.last_value``/``sys.last_traceback`` (whose
  frames keep their locals), a local variable of a running thread's function;
- or no root at all: "unreachable: a reference cycle that ``gc.collect()`` would free", or
  "held only from C" (an extension's internal state, a reference the GC cannot see).

Each chain says how to free the object when IPython can (``%xdel df``,
``%reset -f out``, ``del mymod.CACHE['k']``, ``gc.collect()``). Chains come in order: the
second is what still holds the object once the first one's command has run.

Contract:

- Costs nothing until asked (nothing is imported or hooked before the first call).
- Runs no user code: dicts are iterated and compared by identity only, attributes are read
  through C descriptors, objects are named by ``type(obj).__qualname__``, and only
  str/int/float/bytes keys are shown with ``repr``.
- Holds no new strong reference afterwards: reports contain only strings and numbers.
- Bounded in time: ``time_limit`` (seconds) stops the search and says so; a progress
  indication goes to stderr (or to ``progress=``) once a request takes more than a second.
  The cyclic GC is disabled while the search runs.
- Honest: a block that is not a Python object, a target no chain reaches, or a search that
  ran out of time is reported as such, with the reason.

Typical use (IPython)::

    import mprofile_ipy as mp
    from mprofile_ipy.retainers import retainers_for_site, format_retainers
    mp.start(sample_rate=1)
    ...
    print(format_retainers(retainers_for_site(("<ipython-input-3-...>", 1))))
"""

from __future__ import annotations

import gc
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..renderers.text import chain_lines
from ..report import chain_text
from ._labels import Step, describe_object, label_path
from ._layout import type_module, type_name
from ._roots import (
    CLASS_ATTRIBUTE,
    CLOSURE,
    DEFAULT_ARGUMENT,
    EXCEPTION,
    HELD_FROM_C,
    MODULE_GLOBAL,
    OUTPUT_HISTORY,
    ROOT_KINDS,
    THREAD_FRAME,
    UNREACHABLE_CYCLE,
    USER_NS,
    Context,
    RootRef,
)
from ._search import (
    BlockIndex,
    Clock,
    Pass,
    Progress,
    SearchTimeout,
    Unreached,
    analyse_unreached,
    candidate_ids,
    match_buffers,
    match_objects,
)

__all__ = [
    "CLASS_ATTRIBUTE",
    "CLOSURE",
    "DEFAULT_ARGUMENT",
    "EXCEPTION",
    "HELD_FROM_C",
    "MODULE_GLOBAL",
    "OUTPUT_HISTORY",
    "ROOT_KINDS",
    "THREAD_FRAME",
    "UNREACHABLE_CYCLE",
    "USER_NS",
    "Chain",
    "Progress",
    "RetainerReport",
    "Step",
    "find_retainers",
    "format_retainers",
    "retainers_for_site",
    "select_site_blocks",
]

_ALLOCATOR_NAMES = {0: "RAW", 1: "MEM", 2: "OBJ", 3: "NUMPY", 4: "NATIVE"}
_PANDAS_HOLDERS = ("DataFrame", "Series", "Index")
DEFAULT_TIME_LIMIT = 60.0
MAX_EXTRA_PASSES = 4  # searches for chains after the first, per request
_CODE_TYPES = ("function", "code", "property", "classmethod", "staticmethod",
               "builtin_function_or_method", "method_descriptor", "getset_descriptor")


@dataclass(frozen=True)
class Chain:
    """One reference chain from a root to the object.

    ``root_kind`` is one of :data:`ROOT_KINDS`; ``root_name`` how the user names the root
    (``df``, ``Out[12]``, ``mymod.CACHE``, ``sys.last_traceback``); ``also_named`` other
    names of the same root object; ``steps`` the references from the root to the object;
    ``command`` what frees this reference (None when nothing safe can be suggested).
    """

    root_kind: str
    root_name: str
    steps: tuple[Step, ...]
    target_type: str
    command: str | None = None
    also_named: tuple[str, ...] = ()

    @property
    def text(self) -> str:
        """``Out[12] -> list[3] -> DataFrame``."""
        return chain_text(self.root_name, [str(step) for step in self.steps],
                          self.target_type, self.root_kind)

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class RetainerReport:
    """What one sampled block is and what keeps it alive.

    ``kind`` is ``object`` (the block is the Python object ``object_type``), ``buffer``
    (the block is not a Python object but a buffer of ``owner_type``: ``what`` says which),
    or ``unknown`` (no Python object or owner was found for it). ``status`` is
    ``reachable`` (chains from roots), ``cycle`` (garbage a ``gc.collect()`` frees),
    ``held_from_c``, ``not_found`` or ``timeout``. ``holder`` names the pandas object on the
    first chain that holds the data (``DataFrame``), if any. ``note`` explains the status.
    """

    address: int
    size: int
    allocator: str
    domain: int
    thread_id: int
    frames: tuple
    kind: str
    object_type: str | None
    description: str
    status: str
    chains: tuple[Chain, ...] = ()
    owner_type: str | None = None
    what: str | None = None
    holder: str | None = None
    note: str = ""
    elapsed: float = 0.0

    @property
    def commands(self) -> list[str]:
        """The distinct commands of the chains, in order: running all of them frees it."""
        out: list[str] = []
        for chain in self.chains:
            if chain.command and chain.command not in out:
                out.append(chain.command)
        return out

    @property
    def site(self) -> str:
        """``file:line`` of the innermost frame where the block was allocated."""
        if not self.frames:
            return "?"
        frame = self.frames[0]
        return f"{frame[0]}:{frame[1]}"


@dataclass
class _Block:
    address: int
    size: int
    allocator: int
    domain: int = 0
    thread_id: int = 0
    frames: tuple = ()


def _normalize(blocks: Iterable[Any]) -> list[_Block]:
    out: list[_Block] = []
    for block in blocks:
        if isinstance(block, _Block):
            out.append(block)
            continue
        if hasattr(block, "address"):
            values = (block.address, block.size, getattr(block, "allocator", 2),
                      getattr(block, "domain", 0), getattr(block, "thread_id", 0),
                      tuple(getattr(block, "frames", ()) or ()))
        elif isinstance(block, (tuple, list)) and len(block) >= 2:
            values = (tuple(block) + (2, 0, 0, ())[max(0, len(block) - 2):])[:6]
        else:
            raise TypeError(f"a block must be a LiveBlock or an (address, size[, allocator, "
                            f"domain, thread_id, frames]) tuple, not {type(block).__name__}")
        address, size, allocator = values[0], values[1], values[2]
        for name, value in (("address", address), ("size", size), ("allocator", allocator)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"block {name} must be a non-negative int, got {value!r}")
        out.append(_Block(int(address), int(size), int(allocator), int(values[3] or 0),
                          int(values[4] or 0), tuple(values[5] or ())))
    return out


def _stderr_progress() -> Callable[[Progress], None]:
    state = {"shown": False, "last": 0.0}

    def show(progress: Progress) -> None:
        if progress.elapsed < 1.0 and progress.phase != "done":
            return
        if progress.phase == "done":
            if state["shown"]:
                sys.stderr.write("\n")
                sys.stderr.flush()
            return
        if progress.elapsed - state["last"] < 0.5:
            return
        state["shown"] = True
        state["last"] = progress.elapsed
        sys.stderr.write(f"\r[mprofile why] {progress.phase}: {progress.objects:,} objects, "
                         f"{progress.elapsed:.1f} s")
        sys.stderr.flush()

    return show


class _Paused:
    """Pause the sampler for this thread when it is running (our own work is not the
    user's memory); a no-op when the sampler was never imported."""

    def __enter__(self) -> None:
        sampler = sys.modules.get("mprofile_ipy.sampler")
        self._pause = sampler.paused() if sampler is not None else None
        if self._pause is not None:
            self._pause.__enter__()

    def __exit__(self, *exc: object) -> None:
        if self._pause is not None:
            self._pause.__exit__(*exc)


# --------------------------------------------------------------------------------------------
# The request


@dataclass
class _Target:
    block: _Block
    obj: Any = None  # the object, or the owner of the buffer
    kind: str = "unknown"
    what: str | None = None
    chains: list[Chain] = field(default_factory=list)
    status: str = "not_found"
    note: str = ""
    holder: str | None = None
    excluded: dict[int, frozenset[str]] = field(default_factory=dict)
    excluded_kinds: frozenset[str] = frozenset()
    keep: list = field(default_factory=list)  # excluded roots, alive until the request ends


def find_retainers(
    blocks: Iterable[Any],
    *,
    user_ns: dict | None = None,
    max_chains: int = 3,
    time_limit: float | None = DEFAULT_TIME_LIMIT,
    progress: Callable[[Progress], None] | None = None,
) -> list[RetainerReport]:
    """What each block is and the shortest chains that keep it alive (one report a block).

    ``blocks`` are :class:`mprofile_ipy.sampler.LiveBlock` values (or ``(address, size,
    allocator[, domain, thread_id, frames])`` tuples), all searched for in one pass.
    ``user_ns`` is the namespace whose names are the user's (default: the running IPython
    shell's, else ``__main__``). ``max_chains`` bounds the chains per block: chain *k+1* is
    what still holds the object after chain *k*'s command has run. ``time_limit`` (seconds,
    None for none) bounds the whole request; ``progress`` receives :class:`Progress` values
    while it runs (default: a line on stderr once it takes more than a second).
    """
    if isinstance(max_chains, bool) or not isinstance(max_chains, int) or max_chains < 1:
        raise ValueError(f"max_chains must be a positive int, got {max_chains!r}")
    if time_limit is not None and not time_limit > 0:
        raise ValueError(f"time_limit must be positive seconds or None, got {time_limit!r}")
    normalized = _normalize(blocks)
    if not normalized:
        return []
    ctx = Context(user_ns)
    shown = progress or _stderr_progress()
    clock = Clock(time_limit, shown)
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        with _Paused():
            targets = _run_search(normalized, ctx, clock, max_chains)
    finally:
        ctx.release()
        if was_enabled:
            gc.enable()
    elapsed = time.perf_counter() - clock.start
    shown(Progress("done", clock.visited, elapsed))
    reports = [_report(target, elapsed) for target in targets]
    del targets
    return reports


def _run_search(blocks: list[_Block], ctx: Context, clock: Clock,
            max_chains: int) -> list[_Target]:
    targets = [_Target(block) for block in blocks]
    addresses = [block.address for block in blocks]
    first = Pass(ctx, clock, wanted_ids=candidate_ids(addresses), stop_when_all_found=False,
                 excluded={}, excluded_kinds=frozenset())
    objects = match_objects(addresses, first.hits)
    for target in targets:
        obj = objects.get(target.block.address)
        if obj is not None:
            target.obj, target.kind = obj, "object"
    pending = [t for t in targets if t.obj is None]
    if pending and not clock.timed_out:
        index = BlockIndex([(t.block.address, t.block.size) for t in pending])
        try:
            buffers = match_buffers(first.owners, index, first.kind_of, first.numpy, clock)
        except SearchTimeout:
            buffers = {}
        for target in pending:
            found = buffers.get(target.block.address)
            if found is not None:
                target.obj, target.what = found
                target.kind = "buffer"
    for target in targets:
        if target.obj is not None and id(target.obj) in first.parent:
            _first_chain(target, first, ctx)
    unreached_targets = [t for t in targets if not t.chains]
    if unreached_targets and not clock.timed_out:
        _explain_unreached(unreached_targets, first, ctx, clock)
    for target in targets:
        if target.status == "not_found" and clock.timed_out:
            target.status = "timeout"
            target.note = (f"the search stopped at its time limit after {clock.visited:,} "
                           "objects; no chain was found before that")
    numpy = first.numpy
    del first, objects
    _more_chains(targets, ctx, clock, max_chains, numpy)
    for target in targets:
        target.keep.clear()
    return targets


def _first_chain(target: _Target, search: Pass, ctx: Context) -> None:
    path = search.path_to(target.obj)
    chain = _make_chain(path, search, ctx, target)
    target.chains.append(chain)
    target.status = "reachable"
    target.holder = _pandas_holder(path)
    _exclude(target, path[0], search.rootref.get(id(path[0])), chain)


def _pandas_holder(path: list) -> str | None:
    for obj in reversed(path[:-1]):
        tp = type(obj)
        if type_module(tp).startswith("pandas") and type_name(tp) in _PANDAS_HOLDERS:
            return type_name(tp)
    return None


def _make_chain(path: list, search: Pass, ctx: Context, target: _Target) -> Chain:
    root = path[0]
    ref = search.rootref.get(id(root))
    steps = label_path(path, search.numpy)
    final_type = type_name(type(path[-1]))
    if target.kind == "buffer":
        label = ".<data>" if target.what == "data" else f".<{target.what}>"
        steps.append(Step("buffer", label, final_type,
                          "data buffer" if target.what == "data" else "buffer"))
        final_type = "NumPy data" if target.what == "data" else f"{final_type} {target.what}"
    if ref is None:  # the target is one of the namespaces themselves
        ref = RootRef(USER_NS, "a namespace", None, 9)
    root_kind = ref.kind
    name = ref.name
    if steps:
        first = steps[0]
        if first.kind == "closure" and root_kind in (USER_NS, MODULE_GLOBAL):
            root_kind = CLOSURE
        elif first.kind == "default" and root_kind in (USER_NS, MODULE_GLOBAL):
            root_kind = DEFAULT_ARGUMENT
        elif (first.kind == "attr" and issubclass(type(root), type)
              and root_kind in (USER_NS, MODULE_GLOBAL)):
            root_kind = CLASS_ATTRIBUTE
    command = _command(root_kind, ref, steps, ctx)
    return Chain(root_kind, name, tuple(steps), final_type, command,
                 tuple(_other_names(root, ref, ctx)))


def _other_names(root: Any, ref: RootRef, ctx: Context) -> list[str]:
    names: list[str] = []
    if ref.kind in (USER_NS, OUTPUT_HISTORY):
        for obj, other in list(ctx._user_roots()) + list(ctx._history_roots()):
            if obj is root and other.name != ref.name and other.name not in names:
                names.append(other.name)
    return names[:8]


def _command(root_kind: str, ref: RootRef, steps: list[Step], ctx: Context) -> str | None:
    expr = ref.expr
    if ref.kind == USER_NS and expr is not None:
        if (root_kind == USER_NS and steps and steps[0].code
                and steps[0].kind == "key"
                and steps[0].container_type == "dict"):
            return f"del {expr}{steps[0].label}"  # a cache: drop the entry, keep the cache
        return f"%xdel {expr}" if ctx.ipython else f"del {expr}"
    if ref.kind == OUTPUT_HISTORY:
        if expr is not None and expr.startswith("get_ipython()"):
            return f"del {expr}"  # IPython's copies of the output text: not cleared by %reset
        return "%reset -f out" if ctx.ipython else None
    if ref.kind == EXCEPTION:
        if expr is not None and expr.startswith("get_ipython()"):
            return f"{expr} = None"
        if expr is None:
            return None  # the last cell's error: gone once another cell runs
        names = "sys.last_type = sys.last_value = sys.last_traceback = None"
        if sys.version_info >= (3, 12):
            names = "sys.last_exc = " + names
        return f"import sys; {names}"
    if ref.kind == MODULE_GLOBAL and expr is not None:
        prefix = "import sys; " if expr.startswith("sys.modules[") else ""
        if steps and (steps[0].label.startswith(".__") or steps[0].obj_type in _CODE_TYPES):
            return None  # a library's methods, docs, bases: nothing to free there
        if root_kind == CLASS_ATTRIBUTE and steps:
            target = expr + steps[0].label
            if len(steps) > 1 and steps[1].code and steps[1].kind in ("key", "index"):
                target += steps[1].label
            return f"{prefix}del {target}"
        if root_kind in (CLOSURE, DEFAULT_ARGUMENT):
            return None  # deleting a module's function is not ours to suggest
        if steps and steps[0].code and steps[0].kind in ("key", "index"):
            return f"{prefix}del {expr}{steps[0].label}"
        if not steps:
            return f"{prefix}del {expr}"
    return None


def _exclude(target: _Target, root: Any, ref: RootRef | None, chain: Chain) -> None:
    """What the next pass leaves out: the roots this chain's command removes."""
    if ref is None:
        return
    target.keep.append(root)
    excluded = dict(target.excluded)
    kinds = set(excluded.get(id(root), frozenset()))
    if chain.command == "%reset -f out":
        target.excluded_kinds = target.excluded_kinds | {OUTPUT_HISTORY}
    elif ref.kind == OUTPUT_HISTORY:
        kinds.add(OUTPUT_HISTORY)
    elif ref.kind == EXCEPTION and (ref.expr or "").startswith("sys."):
        target.excluded_kinds = target.excluded_kinds | {EXCEPTION}
    elif chain.command is not None and chain.command.startswith("%xdel"):
        kinds |= {USER_NS, OUTPUT_HISTORY}
    else:
        kinds.add(ref.kind)
    excluded[id(root)] = frozenset(kinds)
    target.excluded = excluded


def _explain_unreached(targets: list[_Target], search: Pass, ctx: Context,
                       clock: Clock) -> None:
    own = {id(search.parent), id(search.levels), id(search.hits), id(search.rootref),
           id(search.kinds), id(search._types), id(search.containers), id(targets),
           id(search.owners)}
    if ctx._entries is not None:
        own.add(id(ctx._entries))
        own.update(id(entry) for entry in ctx._entries)
    own.update(id(level) for level in search.levels)
    own.update(id(t) for t in targets)
    own.update(id(t.__dict__) for t in targets)
    looking = [t for t in targets if t.obj is None]
    addresses = [t.block.address for t in looking]
    index = BlockIndex([(t.block.address, t.block.size) for t in looking])
    try:
        unreached = analyse_unreached(search.parent, addresses, index, search.kind_of,
                                      search.numpy, search.referents, clock, own)
    except SearchTimeout:
        return
    for target in looking:
        obj = unreached.objects.get(target.block.address)
        if obj is not None:
            target.obj, target.kind = obj, "object"
            continue
        found = unreached.buffers.get(target.block.address)
        if found is not None:
            target.obj, target.what = found
            target.kind = "buffer"
    for target in targets:
        if target.obj is None:
            continue
        _classify_unreached(target, unreached, search)


def _classify_unreached(target: _Target, unreached: Unreached, search: Pass) -> None:
    key = id(target.obj)
    what = type_name(type(target.obj))
    if key in unreached.garbage:
        target.status = "cycle"
        target.chains.append(Chain(
            UNREACHABLE_CYCLE, "unreachable: a reference cycle that gc.collect() would free",
            (), what, "import gc; gc.collect()"))
        target.note = ("no root reaches it: it is part of (or only held by) a reference "
                       "cycle that the garbage collector has not collected yet")
        return
    if key in unreached.held:
        path = [target.obj]
        while id(path[-1]) in unreached.parent and len(path) < 200:
            path.append(unreached.parent[id(path[-1])])
        path.reverse()
        steps = label_path(path, search.numpy) if len(path) > 1 else []
        holder = type_name(type(path[0]))
        target.status = "held_from_c"
        target.chains.append(Chain(HELD_FROM_C, f"a {holder} held from C", tuple(steps), what))
        target.note = ("no root the user can name reaches it: it is held by a reference from "
                       "C code (an extension's or the interpreter's internal state) or from "
                       "an object whose references the garbage collector cannot see")
        referrers = unreached.referrer_types.get(key)
        if referrers:
            target.note += "; referenced by: " + ", ".join(referrers)
        return
    target.status = "not_found"


def _more_chains(targets: list[_Target], ctx: Context, clock: Clock, max_chains: int,
                 numpy: Any) -> None:
    """Chain k+1: search again without the roots that chain k's command removes."""
    passes = 0
    for _ in range(max_chains - 1):
        groups: dict[tuple, list[_Target]] = {}
        for target in targets:
            if target.status != "reachable" or target.obj is None or clock.timed_out:
                continue
            if len(target.chains) >= max_chains or getattr(target, "_done", False):
                continue
            key = (tuple(sorted(target.excluded.items())), target.excluded_kinds)
            groups.setdefault(key, []).append(target)
        if not groups:
            return
        for group in sorted(groups.values(), key=lambda g: -sum(t.block.size for t in g)):
            if clock.timed_out or passes >= MAX_EXTRA_PASSES:
                return
            passes += 1
            head = group[0]
            search = Pass(ctx, clock, wanted_ids={id(t.obj) for t in group},
                          stop_when_all_found=True, excluded=head.excluded,
                          excluded_kinds=head.excluded_kinds)
            for target in group:
                if id(target.obj) not in search.hits:
                    target._done = True  # type: ignore[attr-defined]
                    continue
                path = search.path_to(target.obj)
                chain = _make_chain(path, search, ctx, target)
                target.chains.append(chain)
                if target.holder is None:
                    target.holder = _pandas_holder(path)
                _exclude(target, path[0], search.rootref.get(id(path[0])), chain)
            del search


def _report(target: _Target, elapsed: float) -> RetainerReport:
    block = target.block
    allocator = _ALLOCATOR_NAMES.get(block.allocator, str(block.allocator))
    obj = target.obj
    numpy_access = None
    ndarray = sys.modules.get("numpy")
    if ndarray is not None and obj is not None:
        from ._layout import NumpyAccess, numpy_ndarray

        tp = numpy_ndarray()
        numpy_access = NumpyAccess(tp) if tp is not None else None
    object_type = owner_type = None
    if target.kind == "object":
        object_type = type_name(type(obj))
        description = describe_object(obj, numpy_access)
    elif target.kind == "buffer":
        owner_type = type_name(type(obj))
        owner = describe_object(obj, numpy_access)
        if target.what == "data":
            description = f"not a Python object: the data of a NumPy {owner}"
        else:
            description = f"not a Python object: the {target.what} of a {owner}"
        if target.holder:
            description += f", held by a {target.holder}"
    else:
        description = _unknown_description(block)
    note = target.note
    if target.status == "not_found" and not note:
        note = ("no live Python object or container owns this block as far as the search "
                "can see: it may be interpreter-internal memory (code, frames, interned "
                "strings), a buffer of an object the search cannot read, or freed since the "
                "blocks were listed")
    chains = tuple(target.chains)
    target.obj = None
    return RetainerReport(
        address=block.address, size=block.size, allocator=allocator, domain=block.domain,
        thread_id=block.thread_id, frames=block.frames, kind=target.kind,
        object_type=object_type, description=description, status=target.status,
        chains=chains, owner_type=owner_type, what=target.what, holder=target.holder,
        note=note, elapsed=elapsed,
    )


def _unknown_description(block: _Block) -> str:
    if block.allocator == 0:
        return "not a Python object: raw memory (PyMem_RawMalloc)"
    if block.allocator == 4:
        return "not a Python object: memory allocated by native code (malloc/mmap)"
    if block.allocator == 3:
        return "not a Python object: NumPy data whose array was not found"
    return "no Python object found in this block"


# --------------------------------------------------------------------------------------------
# Sites


def _frame_key(frame: Any) -> tuple[str, int] | None:
    """``(filename, lineno)`` of a raw frame tuple, a Frame, a FrameInfo or a pair."""
    if isinstance(frame, tuple) and len(frame) >= 2:
        return str(frame[0]), int(frame[1])
    filename = getattr(frame, "filename", None)
    lineno = getattr(frame, "lineno", None)
    if isinstance(filename, str) and isinstance(lineno, int):
        return filename, lineno
    return None


def _site_matcher(site: Any) -> Callable[[tuple], bool]:
    """A predicate on a block's raw frames (most recent first) for the given site."""
    # A (filename, lineno) pair or a Frame: that line anywhere on the stack.
    if isinstance(site, tuple) and len(site) == 2 and isinstance(site[0], str):
        wanted = (site[0], int(site[1]))
        return lambda frames: any((f[0], f[1]) == wanted for f in frames)
    traceback = getattr(site, "traceback", None)
    group_by = getattr(site, "group_by", None)
    frame = getattr(site, "frame", None)
    if group_by is not None and frame is not None:  # a result's Site
        key = _frame_key(frame)
        if key is None:
            raise TypeError("the site's frame has no filename and line")
        if group_by == "file":
            return lambda frames: any(f[0] == key[0] for f in frames)
        if group_by == "function":
            name = getattr(frame, "name", None)
            return lambda frames: any(f[0] == key[0] and len(f) > 2 and f[2] == name
                                      for f in frames)
        return lambda frames: any((f[0], f[1]) == key for f in frames)
    if traceback is not None and not isinstance(site, (str, bytes)):  # a Statistic
        site = traceback
    if isinstance(site, Sequence) and not isinstance(site, (str, bytes)) and site:
        keys = [_frame_key(frame) for frame in site]  # oldest first (a Traceback)
        if any(key is None for key in keys):
            raise TypeError(f"cannot read frames from {type(site).__name__}")
        innermost_first = list(reversed(keys))
        if len(innermost_first) == 1 and innermost_first[0][1] == 0:  # 'filename' stats
            filename = innermost_first[0][0]
            return lambda frames: bool(frames) and frames[0][0] == filename
        n = len(innermost_first)
        return lambda frames: [(f[0], f[1]) for f in frames[:n]] == innermost_first
    key = _frame_key(site)
    if key is not None:
        return lambda frames: any((f[0], f[1]) == key for f in frames)
    raise TypeError(
        "site must be a (filename, lineno) pair, a Frame, a Traceback, a Statistic or a "
        f"result Site, not {type(site).__name__}")


def select_site_blocks(site: Any, blocks: Iterable[Any]) -> list[Any]:
    """The blocks allocated at ``site``, largest first.

    A ``(filename, lineno)`` pair or a ``Frame`` matches blocks with that line anywhere on
    their stack (a notebook line that called into a library); a ``Statistic`` or a
    ``Traceback`` matches blocks whose innermost frames are its frames (tracemalloc's
    grouping); a result ``Site`` matches by its representative frame and grouping.
    """
    matches = _site_matcher(site)
    chosen = [block for block in blocks if matches(tuple(getattr(block, "frames", ()) or ()))]
    chosen.sort(key=lambda block: -block.size)
    return chosen


def retainers_for_site(
    site: Any,
    *,
    blocks: Iterable[Any] | None = None,
    max_blocks: int = 20,
    user_ns: dict | None = None,
    max_chains: int = 3,
    time_limit: float | None = DEFAULT_TIME_LIMIT,
    progress: Callable[[Progress], None] | None = None,
) -> list[RetainerReport]:
    """Reports for the live sampled blocks of one site (the ``max_blocks`` largest).

    ``blocks`` defaults to ``mprofile_ipy.sampler.live_blocks()`` (the profiler must be
    tracing). An empty list means no sampled block of the site is alive now.
    """
    if isinstance(max_blocks, bool) or not isinstance(max_blocks, int) or max_blocks < 1:
        raise ValueError(f"max_blocks must be a positive int, got {max_blocks!r}")
    if blocks is None:
        from ..sampler import is_tracing, live_blocks

        if not is_tracing():
            raise RuntimeError("the profiler is not tracing: no live blocks to explain; "
                               "call start() first or pass blocks=")
        blocks = live_blocks()
    chosen = select_site_blocks(site, blocks)[:max_blocks]
    return find_retainers(chosen, user_ns=user_ns, max_chains=max_chains,
                          time_limit=time_limit, progress=progress)


# --------------------------------------------------------------------------------------------
# Text


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


def format_retainers(reports: Sequence[RetainerReport]) -> str:
    """A text view: blocks with the same description and chains are shown once, with
    their count and total size, then each chain and the command that frees it."""
    if not reports:
        return "No live sampled block to explain (freed, or none was sampled).\n"
    groups: dict[tuple, list[RetainerReport]] = {}
    for report in reports:
        key = (report.description, report.status, tuple(c.text for c in report.chains))
        groups.setdefault(key, []).append(report)
    lines: list[str] = []
    for (description, status, _), group in sorted(
        groups.items(), key=lambda item: -sum(r.size for r in item[1])
    ):
        total = sum(r.size for r in group)
        first = group[0]
        count = f"{len(group)} block{'s' if len(group) > 1 else ''}"
        lines.append(f"{count}, {_size(total)} ({first.allocator}) at {first.site}: "
                     f"{description}")
        lines.extend(chain_lines(first.chains))
        if status != "reachable" or not first.chains:
            lines.append(f"  {first.note}")
        elif len(first.commands) > 1:
            lines.append("  to free it, run all of: " + "; ".join(first.commands))
    lines.append(f"({len(reports)} block{'s' if len(reports) != 1 else ''} searched in "
                 f"{reports[0].elapsed:.2f} s)")
    return "\n".join(lines) + "\n"
