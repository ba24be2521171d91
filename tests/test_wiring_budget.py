"""Issue 13 wired: ``%mprofile budget``, ``%%mprofile --budget``, ``%mprofile postmortem`` and
the safety net at ``%load_ext``, in a real InteractiveShell and in real kernels
(jupyter_client): values checked (limits in bytes, the cell and line named, sizes within
10%), bad input is a UsageError, the report of a stopped cell is shown and the exception
propagates with the user's variables intact."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from IPython.core.error import UsageError

import mprofile_ipy
from mprofile_ipy import budget as B
from mprofile_ipy import recorder as R
from mprofile_ipy.errors import MemoryBudgetExceeded
from mprofile_ipy.units import format_size

MiB = 2**20
pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/statm"),
                                reason="the budget reads RSS from /proc (Linux)")


@pytest.fixture
def ip(ipython_shell, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))  # this test's records only
    ipython_shell.run_line_magic("load_ext", "mprofile_ipy")
    yield ipython_shell
    ipython_shell.run_line_magic("unload_ext", "mprofile_ipy")
    assert not mprofile_ipy.is_tracing()


def test_load_ext_turns_the_safety_net_and_recorder_on_and_unload_off(ip):
    status = B.status()
    assert status.safety_net and status.limit is None and status.watching
    assert R.is_recording()
    ip.run_line_magic("unload_ext", "mprofile_ipy")
    assert not B.status().safety_net and not R.is_recording()
    ip.run_line_magic("load_ext", "mprofile_ipy")
    assert B.status().safety_net


def test_budget_command_sets_shows_and_removes(ip, run_cell):
    # a budget above what this (long-lived test) process already holds
    limit = (B.read_memory().rss // 10**6 + 512) * 10**6
    _, _, out = run_cell(ip, f"%mprofile budget {limit // 10**6}MB")
    assert B.get_budget() == limit and B.status().safety_net
    assert f"memory budget {format_size(limit)}; safety net on" in out.stdout
    _, _, out = run_cell(ip, "%mprofile budget")  # show: unchanged
    assert B.get_budget() == limit
    assert f"memory budget {format_size(limit)}" in out.stdout
    assert "resident memory now" in out.stdout
    rss = B.read_memory().rss
    run_cell(ip, "%mprofile budget +1GB")
    assert abs(B.get_budget() - (rss + 10**9)) < 200 * MiB
    _, _, out = run_cell(ip, "%mprofile budget off")
    status = B.status()
    assert status.limit is None and not status.safety_net
    assert "no memory budget, safety net off" in out.stdout
    _, _, out = run_cell(ip, "%mprofile budget")
    assert "no memory budget; safety net off" in out.stdout


@pytest.mark.parametrize("line, message", [
    ("budget lots", "%mprofile budget: .*cannot read 'lots' as a size"),
    ("budget 1GB 2GB", "unrecognized arguments: 2GB"),
])
def test_bad_budget_is_a_usage_error(ip, line, message):
    with pytest.raises(UsageError, match=message):
        ip.run_line_magic("mprofile", line)
    assert B.get_budget() is None


@pytest.mark.parametrize("option, message", [
    ("--budget lots", "--budget: cannot read 'lots' as a size"),
    ("--budget 0", "--budget must be a positive size"),
    ("--budget", "expected one argument"),
])
def test_bad_cell_budget_is_refused_before_the_cell_runs(ip, run_cell, option, message):
    ip.user_ns.pop("ran", None)
    _, result, _ = run_cell(ip, f"%%mprofile {option}\nran = True\n")
    assert isinstance(result.error_in_exec, UsageError)
    assert message in str(result.error_in_exec)
    assert "ran" not in ip.user_ns and not mprofile_ipy.is_tracing()


def test_cell_budget_stops_the_cell_shows_its_report_and_keeps_variables(ip, run_cell):
    run_cell(ip, "precious = {'answer': 42}")
    number, result, out = run_cell(ip, "%%mprofile -o stopped --budget +150MB\n"
                                       "parts = []\n"
                                       "for i in range(1000):\n"
                                       "    parts.append(bytearray(10 * 2**20))\n")
    # THEN the exception propagates ...
    error = result.error_in_exec
    assert isinstance(error, MemoryBudgetExceeded) and error.kind == "budget"
    assert error.location.startswith(f"In [{number}], line 4")
    # ... after the report of what was allocating at the interrupt
    res = ip.user_ns["stopped"]
    top = res.sites()[0]
    assert (top.frame.file, top.frame.line) == (f"In [{number}], line 4".split(",")[0], 4)
    assert top.size >= 100 * MiB
    assert res.error.startswith("MemoryBudgetExceeded: memory budget exceeded:")
    assert ("resident memory" in res.error) or ("traced memory" in res.error)
    assert res.timeline and len(res.timeline) >= 2  # memory over the last seconds
    html = out.outputs[0].data["text/html"]
    assert "MemoryBudgetExceeded" in html and "parts.append(bytearray(10 * 2**20))" in html
    # the kernel keeps every variable, the cell's budget is gone, the next cell runs
    assert ip.user_ns["precious"] == {"answer": 42}
    assert 10 <= len(ip.user_ns["parts"]) < 1000
    assert B.status().block_limits == () and B.get_budget() is None
    _, result, _ = run_cell(ip, "del parts; import gc; gc.collect(); x = sum(range(10))")
    assert result.success


CHILD = """
import sys, time
from IPython.testing import globalipapp
globalipapp.start_ipython()
ip = globalipapp.get_ipython()
ip.run_line_magic("load_ext", "mprofile_ipy")
ip.run_line_magic("mprofile", "start --seed 4")
ip.run_cell("import time\\nkeep = []\\nfor i in range(150):\\n    keep.append(b'p' * 1_000_000)\\n"
            "print('ready', flush=True)\\ntime.sleep(60)\\n", store_history=True)
"""


def test_postmortem_of_a_killed_process_is_a_normal_report(ip, run_cell, tmp_path):
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    state = tmp_path / "dead"
    script = tmp_path / "child.py"
    script.write_text("import time\n" + CHILD)
    env = {**os.environ, "PYTHONPATH": str(root), "XDG_STATE_HOME": str(state)}
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                            env=env, cwd=str(tmp_path))
    try:
        while proc.stdout.readline().strip() != "ready":
            assert proc.poll() is None, "the child died before its cell ran"
        folder = state / "mprofile-ipy"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not list(folder.glob("*.record.json.gz")):
            time.sleep(0.1)
        time.sleep(2.5)  # the recorder writes at most once a second
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    _, result, out = run_cell(ip, f"%mprofile postmortem {folder} -o pm -n 3")
    assert result.success, result.error_in_exec
    facts, report = out.outputs
    assert f"Post-mortem of pid {proc.pid}" in facts.data["text/plain"]
    assert "running: In [1], line 6: time.sleep(60)" in facts.data["text/plain"]
    res = ip.user_ns["pm"]
    top = res.sites()[0]
    assert top.frame.file == "In [1]" and top.frame.line == 4
    assert top.frame.source == "keep.append(b'p' * 1_000_000)"
    assert abs(top.size - 150e6) < 0.1 * 150e6
    assert res.peak >= 150e6 * 0.9
    assert "data-kind='profile'" in report.data["text/html"]
    with pytest.raises(UsageError, match="is neither a record file nor a directory"):
        ip.run_line_magic("mprofile", f"postmortem {tmp_path / 'nowhere'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no record of a dead process"):
        ip.run_line_magic("mprofile", f"postmortem {tmp_path / 'empty'}")


@pytest.mark.flaky(reruns=2)  # a real kernel: failed once only inside the full CI run
def test_budget_and_postmortem_in_a_real_kernel(tmp_path):
    pytest.importorskip("jupyter_client")
    from test_budget import Kernel

    first = Kernel(tmp_path)
    try:
        first.ok("%load_ext mprofile_ipy\n")
        first.ok("precious = 7")
        out = first.run("%%mprofile -v text --budget +120MB\nrows = []\n"
                        "for i in range(10_000):\n    rows.append(b'x' * 1_000_000)\n")
        assert out["status"] == "error" and out["ename"] == "MemoryBudgetExceeded", out
        cell = out["count"]
        assert f"In [{cell}], line 4: rows.append(b'x' * 1_000_000)" in out["text"]
        assert "The code raised MemoryBudgetExceeded" in out["text"]  # the report came first
        assert first.ok("print(precious, len(rows) > 10)").split() == ["7", "True"]
        first.ok("del rows\n%mprofile start --seed 2\nimport time")
        first.kc.execute("hold = []\nfor i in range(200):\n    hold.append(b'k' * 1_000_000)\n"
                         "time.sleep(120)\n")
        folder = Path(tmp_path) / "mprofile-ipy"
        time.sleep(4)  # running, recorded at most once a second
        os.kill(first.pid, signal.SIGKILL)  # what the OOM killer does
        first.km.provisioner.process.wait()
    finally:
        first.shutdown()
    assert list(folder.glob("*.record.json.gz"))
    second = Kernel(tmp_path)
    try:
        text = second.ok("%load_ext mprofile_ipy\n%mprofile postmortem -v text -o pm\n")
        sizes = second.ok("print(pm.sites()[0].size, pm.sites()[0].frame.line)")
    finally:
        second.shutdown()
    assert "running: In [" in text and "time.sleep(120)" in text
    assert "line 3: hold.append(b'k' * 1_000_000)" in text
    size, line = sizes.split()
    assert abs(float(size) - 200e6) < 0.1 * 200e6 and line == "3"
