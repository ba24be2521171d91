"""The quickstart notebook runs headlessly in a real kernel (nbclient), without errors, and
shows what it promises: cells named In [N] with the right lines, the leak found by a diff."""

from __future__ import annotations

from pathlib import Path

import pytest
from _notebooks import execute_notebook, text_of

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "notebooks" / "quickstart.ipynb"


def cell_starting(nb, prefix: str):
    return next(c for c in nb.cells if c.cell_type == "code" and c.source.startswith(prefix))


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    work = tmp_path_factory.mktemp("notebook")
    temp = tmp_path_factory.mktemp("kernel-tmp")  # the kernel's temporary files go here
    nb = execute_notebook(QUICKSTART, work, env={"TMPDIR": str(temp)}, timeout=120)
    nb.metadata["mprofile_test_tmp"] = str(temp)
    return nb


def test_every_cell_ran_without_error(executed):
    code = [c for c in executed.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in code)
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]


def test_cells_are_named_with_their_lines(executed):
    cell = cell_starting(executed, "%%mprofile -o np_res")
    number = cell.execution_count
    report = text_of(cell)
    assert f"mprofile In [{number}]:" in report
    assert f'In [{number}], line 4: labels = [f"point-{{i}}"' in report
    assert "ipykernel_" not in report and "<ipython-input" not in report
    html = cell.outputs[0].data["text/html"]
    assert f"In [{number}], line 4" in html


def test_chart_view_is_an_image(executed):
    cell = cell_starting(executed, "%%mprofile -o pd_res")
    assert "peak" in cell.outputs[0].data["text/html"]
    assert "image/png" in cell.outputs[1].data
    flame = cell_starting(executed, 'pd_res.plot("flame")')
    assert "image/png" in flame.outputs[0].data


def test_statement_magic_returns_its_value(executed):
    cell = cell_starting(executed, "def make_table")
    assert cell.outputs[-1].data["text/plain"] == "50000"
    assert f"In [{cell.execution_count}], line 2" in text_of(cell)


def test_the_leak_is_found_by_comparing_snapshots(executed):
    leak_cell = cell_starting(executed, "_cache = {}")
    compare = text_of(cell_starting(executed, "%mprofile compare before after"))
    first_change = next(line for line in compare.splitlines() if line.strip().startswith("+"))
    assert f"In [{leak_cell.execution_count}], line 6: _cache[key] = [key] * 1_000" \
        in first_change
    assert "temporary" not in compare  # allocated and freed: not a leak


def test_export_reloads(executed):
    printed = text_of(cell_starting(executed, "reloaded = load_pprof"))
    leak_cell = cell_starting(executed, "_cache = {}")
    assert printed.splitlines()[0].startswith(f"In [{leak_cell.execution_count}]:6:")


def test_widget_has_a_static_fallback(executed):
    data = cell_starting(executed, "pd_res.widget()").outputs[0].data
    assert "application/vnd.jupyter.widget-view+json" in data
    assert data["text/html"].startswith("<div class='mprofile-report'")


def test_the_notebook_cleans_up_its_files(executed):
    temp = Path(executed.metadata["mprofile_test_tmp"])
    assert list(temp.glob("mprofile-quickstart-*")) == []


def test_dataframes_display_readably(executed):
    cell = cell_starting(executed, "np_res.to_dataframe()")
    shown = cell.outputs[0].data["text/plain"]
    assert "MiB" in shown and "e+0" not in shown and "±" in shown


PROCESSES = ROOT / "notebooks" / "processes.ipynb"


@pytest.fixture(scope="module")
def processes_nb(tmp_path_factory):
    import time

    # The walkthrough starts a Dask cluster: an optional integration.
    pytest.importorskip("dask.dataframe")
    pytest.importorskip("distributed")
    work = tmp_path_factory.mktemp("processes-notebook")
    started = time.perf_counter()
    nb = execute_notebook(PROCESSES, work, timeout=120)
    nb.metadata["mprofile_seconds"] = time.perf_counter() - started
    return nb


def test_processes_walkthrough_runs_in_a_minute(processes_nb):
    errors = [o for c in processes_nb.cells if c.cell_type == "code" for o in c.outputs
              if o.output_type == "error"]
    assert not errors
    assert processes_nb.metadata["mprofile_seconds"] < 60


def test_processes_walkthrough_merges_the_pool_and_the_workers(processes_nb):
    pool = cell_starting(processes_nb, "%%mprofile --children")
    text = text_of(pool)
    assert "8 batches" in text and "Per process (3)" in text
    assert text.count("[child]") == 2
    shares = text_of(cell_starting(processes_nb, "for p in pool_res.processes"))
    allocated = [float(line.split("allocated")[1].split()[0])
                 for line in shares.splitlines() if " child " in line]
    # the arrays (near exact: 4 MB blocks are always sampled) plus what else the workers
    # allocated (pickled tasks and results, NumPy's temporaries): seen +0.5 to +6.7 MiB
    expected = 8 * 8e6 / 2**20
    assert len(allocated) == 2 and 0.95 * expected < sum(allocated) < 1.2 * expected
    assert "steps = rng.standard_normal((500, 1000))" in shares
    dask = cell_starting(processes_nb, "%%mprofile --dask")
    html = next(o.data["text/html"] for o in dask.outputs if o.output_type == "display_data")
    assert "data-kind='profile'" in html and "worker tcp://" in html
    workers = text_of(cell_starting(processes_nb, "for p in dask_res.processes"))
    assert workers.count(" worker ") == 2
    tasks = text_of(cell_starting(processes_nb, "from mprofile_ipy.processes import group_totals"))
    assert "groupby" in tasks
    back = text_of(cell_starting(processes_nb, "from mprofile_ipy import load_pprof"))
    assert "worker tcp://" in back and "groupby" in back
