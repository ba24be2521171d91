"""Why is it still alive: block -> object mapping per CPython version, reference chains from
each kind of root in a real IPython shell, the suggested command frees the site, no user
code runs, no reference is left behind; cross-checked with objgraph."""

from __future__ import annotations

import gc
import sys
import threading
import types
import weakref

import pytest
from IPython.testing import globalipapp
from IPython.utils.capture import capture_output

import mprofile_ipy as mp
from mprofile_ipy.retainers import (
    CLASS_ATTRIBUTE,
    CLOSURE,
    DEFAULT_ARGUMENT,
    EXCEPTION,
    MODULE_GLOBAL,
    OUTPUT_HISTORY,
    THREAD_FRAME,
    UNREACHABLE_CYCLE,
    USER_NS,
    find_retainers,
    format_retainers,
    retainers_for_site,
    select_site_blocks,
)
from mprofile_ipy.retainers._layout import block_address, preheader_size
from mprofile_ipy.sampler import live_blocks

np = pytest.importorskip("numpy")


@pytest.fixture(scope="module")
def ip():
    globalipapp.start_ipython()
    shell = globalipapp.get_ipython()
    yield shell
    shell.run_line_magic("reset", "-f out")


@pytest.fixture
def tracing():
    mp.start(sample_rate=1)
    yield
    mp.stop()


def run(ip, source):
    """Run a cell as the user would; return its execution number."""
    number = ip.execution_count
    with capture_output():
        result = ip.run_cell(source, store_history=True)
    assert result.error_in_exec is None or source.startswith("#fails"), result.error_in_exec
    return number


def cell_site(number, line):
    """The (filename, lineno) of line ``line`` of cell ``number`` as live blocks name it."""
    for block in live_blocks():
        for frame in block.frames:
            if f"-{number}-" in frame[0] and frame[0].startswith("<ipython-input"):
                return frame[0], line
    raise AssertionError(f"no live block from cell {number}")


def big_blocks(site, min_size=10_000):
    return [b for b in select_site_blocks(site, live_blocks()) if b.size >= min_size]


def why(ip, site, **kwargs):
    blocks = [b for b in live_blocks() if b.size >= 10_000]
    return retainers_for_site(site, blocks=blocks, user_ns=ip.user_ns,
                              progress=lambda p: None, **kwargs)


def gone_after(ip, site, command):
    run(ip, command)
    gc.collect()
    left = big_blocks(site)
    if left:  # say what still holds them
        print(format_retainers(find_retainers(left, user_ns=ip.user_ns,
                                              progress=lambda p: None)))
    return left == []


# --------------------------------------------------------------------------------------------
# Block -> object, per version


def test_block_address_is_the_allocators_address(tracing):
    # GIVEN objects of every layout: GC and not, managed dict (3.11+), slots, var-sized
    class WithDict:
        pass

    class WithSlots:
        __slots__ = ("a",)

    # (lists, dicts and tuples come from free lists until those are drained)
    many = [([i], {"a": i}, (i, [i], *range(30))) for i in range(400)]
    objs = [WithDict(), WithSlots(), *many[-1], {1, 2}, bytes(300),
            bytearray(300), 10**40, lambda: 1, type("Dyn", (), {}), np.ones(3)]
    blocks = {b.address: b for b in live_blocks()}
    # THEN the block the sampler recorded starts exactly id(obj) - pre-header before it
    for obj in objs:
        assert block_address(obj) in blocks, (type(obj), preheader_size(type(obj)))
        assert blocks[block_address(obj)].allocator == 2  # OBJ
    gc_head = 16
    assert preheader_size(list) == gc_head
    assert preheader_size(bytes) == 0
    managed = 16 if sys.version_info >= (3, 11) else 0
    assert preheader_size(WithDict) == gc_head + managed
    assert preheader_size(WithSlots) == gc_head  # no __dict__, no __weakref__: no pre-header


# --------------------------------------------------------------------------------------------
# Each root kind in a real shell


def test_user_namespace_and_output_history(ip, tracing):
    n = run(ip, "keep_me = [bytearray(200_000)]")
    run(ip, "keep_me")  # displayed: Out[n+1], _ and _N hold the list too
    site = cell_site(n, 1)
    reports = why(ip, site)
    assert len(reports) >= 1
    report = max(reports, key=lambda r: r.size)
    assert report.kind == "buffer" and report.owner_type == "bytearray"
    chain = report.chains[0]
    assert chain.root_kind == USER_NS and chain.root_name == "keep_me"
    assert [str(s) for s in chain.steps] == ["list[0]", "bytearray.<byte buffer>"]
    assert f"Out[{n + 1}]" in chain.also_named
    assert chain.command == "%xdel keep_me"
    assert "keep_me -> list[0]" in format_retainers(reports)
    assert gone_after(ip, site, chain.command)


def test_output_history_only(ip, tracing):
    n = run(ip, "[bytearray(150_000), 'x']")
    site = cell_site(n, 1)
    reports = why(ip, site)
    report = next(r for r in reports if r.owner_type == "bytearray")
    # IPython also keeps the text of the output: named as such, with its own command
    text = [r for r in reports if r.object_type == "str"]
    assert text and text[0].chains[0].root_name == f"the text of Out[{n}]"
    chain = report.chains[0]
    assert chain.root_kind == OUTPUT_HISTORY, format_retainers([report])
    assert chain.root_name == f"Out[{n}]"
    assert str(chain.steps[0]) == "list[0]"
    assert chain.command == "%reset -f out"
    # `%reset -f out` may leave `_` in IPython's hidden namespace: later chains say so
    for later in report.chains[1:]:
        assert later.root_name.endswith("(IPython's hidden namespace)"), later
    assert text[0].chains[0].command.startswith("del get_ipython().history_manager.")
    for command in text[0].commands:
        run(ip, command)
    for command in report.commands[:-1]:
        run(ip, command)
    assert gone_after(ip, site, report.commands[-1])


def test_module_global_and_objgraph_agrees(ip, tracing):
    import objgraph

    mod = types.ModuleType("retain_demo_mod")
    mod.CACHE = {}
    sys.modules["retain_demo_mod"] = mod
    try:
        run(ip, "import retain_demo_mod as rdm")
        n = run(ip, "rdm.CACHE['k'] = [bytes(120_000)]")
        site = cell_site(n, 1)
        report = max(why(ip, site, max_chains=1), key=lambda r: r.size)
        chain = report.chains[0]
        assert chain.root_kind == MODULE_GLOBAL
        assert chain.root_name == "retain_demo_mod.CACHE"
        assert [str(s) for s in chain.steps] == ["dict['k']", "list[0]"]
        assert chain.command == "del rdm.CACHE['k']"
        # objgraph finds the same references from the same root
        target = mod.CACHE["k"][0]
        found = objgraph.find_backref_chain(target, lambda x: x is mod.CACHE, max_depth=5)
        assert found[0] is mod.CACHE and len(found) - 1 == len(chain.steps)
        del target, found
        assert gone_after(ip, site, chain.command)
    finally:
        del sys.modules["retain_demo_mod"]
        ip.user_ns.pop("rdm", None)


def test_closure_cell(ip, tracing):
    n = run(ip, "def make_reader():\n    payload = [bytes(90_000)]\n"
                "    def reader():\n        return payload\n    return reader\n"
                "reader = make_reader()")
    site = cell_site(n, 2)
    chain = max(why(ip, site, max_chains=1), key=lambda r: r.size).chains[0]
    assert chain.root_kind == CLOSURE and chain.root_name == "reader"
    assert chain.steps[0].label == ".<closure 'payload'>"
    assert chain.command == "%xdel reader"
    assert gone_after(ip, site, chain.command)


def test_default_argument(ip, tracing):
    n = run(ip, "def accumulate(x, acc=[bytes(80_000)]):\n    return acc")
    site = cell_site(n, 1)
    chain = max(why(ip, site, max_chains=1), key=lambda r: r.size).chains[0]
    assert chain.root_kind == DEFAULT_ARGUMENT and chain.root_name == "accumulate"
    assert chain.steps[0].label == ".<default 'acc'>"
    assert gone_after(ip, site, chain.command)


def test_class_attribute(ip, tracing):
    n = run(ip, "class Registry:\n    blobs = {}\nRegistry.blobs['a'] = bytes(70_000)")
    site = cell_site(n, 3)
    chain = max(why(ip, site, max_chains=1), key=lambda r: r.size).chains[0]
    assert chain.root_kind == CLASS_ATTRIBUTE and chain.root_name == "Registry"
    assert [str(s) for s in chain.steps] == ["class Registry.blobs", "dict['a']"]
    assert gone_after(ip, site, chain.command)


def test_last_exception_keeps_frame_locals(ip, tracing):
    n = run(ip, "#fails\ndef crash():\n    scratch = bytes(110_000)\n    1 / 0\ncrash()")
    site = cell_site(n, 3)
    report = max(why(ip, site), key=lambda r: r.size)
    chain = report.chains[0]
    assert chain.root_kind == EXCEPTION, format_retainers([report])
    assert chain.root_name.startswith("sys.last_")
    assert any(step.label == ".<local 'scratch'>" for step in chain.steps)
    assert chain.command.startswith("import sys; ")
    # IPython keeps the traceback for %debug as well: a chain of its own
    names = [c.root_name for c in report.chains]
    assert "the traceback IPython keeps for %debug" in names, names
    for command in report.commands[:-1]:
        run(ip, command)
    assert gone_after(ip, site, report.commands[-1])


def test_thread_frame_local(ip, tracing):
    release = threading.Event()
    started = threading.Event()

    def worker():
        buffer = bytes(130_000)  # noqa: F841 - kept alive by this frame
        started.set()
        release.wait(30)

    thread = threading.Thread(target=worker, name="retain-worker")
    thread.start()
    try:
        started.wait(10)
        blocks = [b for b in live_blocks() if b.size >= 130_000
                  and any(len(f) > 2 and str(f[2]).endswith("worker") for f in b.frames)]
        reports = find_retainers(blocks, user_ns={}, progress=lambda p: None)
        assert reports and reports[0].chains
        chain = reports[0].chains[0]
        assert chain.root_kind == THREAD_FRAME
        assert "retain-worker" in chain.root_name and "local 'buffer'" in chain.root_name
    finally:
        release.set()
        thread.join()


def test_unreachable_cycle(ip, tracing):
    gc.disable()
    try:
        n = run(ip, "class Knot:\n    pass\na, b = Knot(), Knot()\na.other, b.other = b, a\n"
                    "a.payload = bytes(60_000)\ndel a, b")
        site = cell_site(n, 5)
        report = max(why(ip, site, max_chains=1), key=lambda r: r.size)
        assert report.status == "cycle"
        assert report.chains[0].root_kind == UNREACHABLE_CYCLE
        assert report.chains[0].command == "import gc; gc.collect()"
        assert gone_after(ip, site, report.chains[0].command)
    finally:
        gc.enable()


# --------------------------------------------------------------------------------------------
# NumPy and pandas, buffers


def test_numpy_data_followed_to_dataframe_in_output_history(ip, tracing):
    pytest.importorskip("pandas")
    run(ip, "import numpy as np, pandas as pd")
    n = run(ip, "frame = pd.DataFrame(np.ones((400, 100)))")
    run(ip, "frame")
    run(ip, "del frame")
    site = cell_site(n, 1)
    reports = why(ip, site)
    data = [r for r in reports if r.allocator == "NUMPY"]
    assert data, format_retainers(reports)
    report = data[0]
    assert report.kind == "buffer" and report.what == "data" and report.owner_type == "ndarray"
    assert report.holder == "DataFrame"
    chain = report.chains[0]
    assert chain.root_kind == OUTPUT_HISTORY and chain.root_name == f"Out[{n + 1}]"
    assert chain.steps[0].container_type == "DataFrame"
    assert [str(s) for s in chain.steps[:2]] == ["DataFrame._mgr", "BlockManager.blocks"]
    for command in report.commands[:-1]:
        run(ip, command)
    assert gone_after(ip, site, report.commands[-1])


def test_list_item_array_is_not_an_object(ip, tracing):
    n = run(ip, "numbers = list(range(50_000))")
    site = cell_site(n, 1)
    report = max(why(ip, site, max_chains=1), key=lambda r: r.size)
    assert report.allocator == "MEM" and report.kind == "buffer"
    assert report.what == "item array" and report.object_type is None
    assert "not a Python object" in report.description
    assert report.chains[0].root_name == "numbers"
    assert gone_after(ip, site, "%xdel numbers")


def test_several_roots_in_order(ip, tracing):
    mod = types.ModuleType("retain_demo_two")
    mod.KEEP = []
    sys.modules["retain_demo_two"] = mod
    try:
        n = run(ip, "shared = bytearray(100_000)\nimport retain_demo_two\n"
                    "retain_demo_two.KEEP.append(shared)")
        site = cell_site(n, 1)
        report = max(why(ip, site), key=lambda r: r.size)
        roots = [c.root_name for c in report.chains]
        assert roots[:2] == ["shared", "retain_demo_two.KEEP"], roots
        for command in report.commands:
            run(ip, command)
        assert big_blocks(site) == []
    finally:
        del sys.modules["retain_demo_two"]
        ip.user_ns.pop("retain_demo_two", None)


# --------------------------------------------------------------------------------------------
# Contract: no user code, no references left, honest answers, bad input


class Hostile:
    """Every hook a careless search could call raises and records."""

    calls: list[str] = []

    def __eq__(self, other):
        Hostile.calls.append("eq")
        raise AssertionError("__eq__ ran")

    def __hash__(self):
        Hostile.calls.append("hash")
        return 1

    def __repr__(self):
        Hostile.calls.append("repr")
        raise AssertionError("__repr__ ran")

    def __getattr__(self, name):
        Hostile.calls.append("getattr " + name)
        raise AttributeError(name)

    @property
    def __dict__(self):  # noqa: PLW3201
        Hostile.calls.append("__dict__")
        raise AssertionError("property ran")


def test_runs_no_user_code_and_keeps_no_reference(tracing):
    key = Hostile()
    holder = {key: bytearray(40_000)}
    namespace = {"holder": holder, "key": key}
    target = holder[key]
    before = sys.getrefcount(target)
    probe = weakref.ref(key)
    blocks = [b for b in live_blocks() if b.address == block_address(target)]
    assert blocks
    Hostile.calls.clear()
    reports = find_retainers(blocks, user_ns=namespace, progress=lambda p: None)
    assert Hostile.calls == []
    assert sys.getrefcount(target) == before
    chain = reports[0].chains[0]
    assert chain.root_name == "holder" and chain.steps[0].label == "[<Hostile key>]"
    del key, namespace["key"], holder
    namespace.clear()
    assert probe() is None


_FREED_FUTURE_ITERATOR = """
import asyncio, gc
import mprofile_ipy as mp
from mprofile_ipy.retainers import find_retainers
loop = asyncio.new_event_loop()
it = iter(loop.create_future())
del it  # its memory goes to _asyncio's free list
mp.start(sample_rate=1)
kept = [bytearray(1000) for _ in range(5)]
reports = find_retainers(mp.sampler.live_blocks()[:20], user_ns={"kept": kept},
                         progress=lambda p: None)
assert any(c.root_name == "kept" for r in reports for c in r.chains), reports
gc.collect()
print("collected")
"""


def test_heap_walk_leaves_the_asyncio_free_list_alone():
    # CPython 3.12.0-3.12.4 (gh-122695): gc.get_referents(_asyncio) hands out freed
    # FutureIter objects; dropping them corrupted the free list and the next
    # gc.collect() looped forever: `%mprofile why` hung a kernel that had run asyncio.
    import subprocess

    proc = subprocess.run([sys.executable, "-c", _FREED_FUTURE_ITERATOR],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "collected", proc.stderr


def test_not_a_python_object_is_said_so():
    reports = find_retainers([(8, 64, 0), (16, 64, 4)], user_ns={}, progress=lambda p: None)
    assert [r.kind for r in reports] == ["unknown", "unknown"]
    assert "raw memory" in reports[0].description
    assert "native code" in reports[1].description
    assert reports[0].status == "not_found" and reports[0].note


def test_bad_arguments():
    with pytest.raises(ValueError):
        find_retainers([(1, 2, 2)], max_chains=0)
    with pytest.raises(ValueError):
        find_retainers([(-1, 2, 2)])
    with pytest.raises(TypeError):
        find_retainers([object()])
    with pytest.raises(TypeError):
        find_retainers([(1, 2, 2)], user_ns=[])
    with pytest.raises(TypeError):
        select_site_blocks(3.5, [])
    assert find_retainers([]) == []


def test_progress_and_time_limit():
    seen = []
    reports = find_retainers([(8, 64, 2)], user_ns={}, progress=seen.append,
                             time_limit=1e-6)
    assert reports[0].status == "timeout"
    assert "time limit" in reports[0].note
    assert seen and seen[-1].phase == "done"


# --------------------------------------------------------------------------------------------
# A real kernel: the walkthrough notebook


def test_notebook_in_a_real_kernel(tmp_path):
    import os
    from pathlib import Path

    nbformat = pytest.importorskip("nbformat")
    NotebookClient = pytest.importorskip("nbclient").NotebookClient
    pytest.importorskip("pandas")
    root = Path(__file__).resolve().parents[1]
    nb = nbformat.read(root / "notebooks" / "why_alive.ipynb", as_version=4)
    env_path = os.environ.get("PYTHONPATH", "")
    os.environ["PYTHONPATH"] = str(root) + (os.pathsep + env_path if env_path else "")
    try:
        NotebookClient(nb, timeout=300, startup_timeout=60, kernel_name="python3",
                       resources={"metadata": {"path": str(tmp_path)}}).execute()
    finally:
        if env_path:
            os.environ["PYTHONPATH"] = env_path
        else:
            del os.environ["PYTHONPATH"]

    def output(prefix):
        cell = next(c for c in nb.cells if c.cell_type == "code" and c.source.startswith(prefix))
        return "\n".join(o.get("text", "") or o.get("data", {}).get("text/plain", "")
                         for o in cell.outputs)

    # the user namespace and the output history of a real kernel are named, with commands
    why = output("from mprofile_ipy.model import Allocator")
    assert "CACHE -> dict['sales'] -> DataFrame._mgr" in why
    assert "free it with: del CACHE['sales']" in why
    assert "Out[3] -> DataFrame._mgr" in why and "free it with: %reset -f out" in why
    assert "held by a DataFrame" in why
    # after the suggested commands, the memory is gone and nothing is left to explain
    after = output('print(f"{alive_mib():.1f} MiB still alive")')
    assert float(after.split(" MiB")[0]) < 5
    assert "No live sampled block" in after
    # %%mprofile --why: the cell's report shows each site's chains when a site is unfolded
    # (server-rendered HTML), and the result keeps them
    cell = next(c for c in nb.cells if c.source.startswith("%%mprofile --why"))
    page = "".join(o.get("data", {}).get("text/html", "") for o in cell.outputs)
    assert page.count("<div class='mpr-why'>") == 1, page[:2000]
    assert "history -&gt; list[0] -&gt; ndarray.&lt;data&gt; -&gt; NumPy data" in page
    assert "free it with <code class='mpr-cmd'>%xdel history</code>" in page
    kept = output("why = res.retention(0)")
    assert "history -> list[2] -> ndarray.<data> -> NumPy data | free it with: %xdel history" \
        in kept
    assert "LATEST -> dict['rows'] -> ndarray.<data> -> NumPy data | free it with: " \
        "del LATEST['rows']" in kept


def test_site_from_a_snapshot_statistic(ip, tracing):
    # GIVEN a snapshot statistic grouped by traceback, as a user would pick it
    n = run(ip, "site_demo = bytearray(300_000)")
    snapshot = mp.take_snapshot()
    stat = next(s for s in snapshot.statistics("traceback")
                if s.size >= 300_000 and f"-{n}-" in s.traceback[-1].filename)
    # WHEN asking about that site
    reports = retainers_for_site(stat, user_ns=ip.user_ns, progress=lambda p: None,
                                 max_chains=1)
    # THEN its live block is the bytearray's buffer, kept by its name
    big = [r for r in reports if r.size >= 300_000]
    assert big and big[0].owner_type == "bytearray" and big[0].what == "byte buffer"
    assert big[0].chains[0].root_name == "site_demo"
    assert gone_after(ip, (stat.traceback[-1].filename, stat.traceback[-1].lineno),
                      big[0].chains[0].command)


def test_snapshot_retainers_names_the_user_name():
    """Snapshot.retainers(statistic) answers for the site of one of its statistics."""
    import mprofile_ipy as mp

    mp.start(sample_rate=1)
    try:
        kept = [bytearray(4096) for _ in range(3)]  # SNAPSHOT RETAINERS LINE
        snap = mp.take_snapshot()
        stat = next(s for s in snap.statistics("lineno")
                    if s.traceback[0].filename == __file__ and s.size >= 3 * 4096)
        reports = snap.retainers(stat, user_ns={"kept": kept})
    finally:
        mp.stop()
    assert reports, "no live block found at the site"
    assert any(chain.text.startswith("kept") for r in reports for chain in r.chains)
