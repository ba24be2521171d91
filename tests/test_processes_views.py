"""The process and task dimensions in the views (report, text, HTML, DataFrames).

GIVEN a merged snapshot whose samples carry processes and Dask task labels, loaded from a
file (no measures from the magic) WHEN a result is made of it THEN every view shows each
process's and each task's part, with the snapshot's own figures.
"""

from __future__ import annotations

import pytest
from test_processes_labels import merged

from mprofile_ipy.result import ProfileResult
from mprofile_ipy.storage import load_snapshot


@pytest.fixture
def result(tmp_path):
    path = tmp_path / "merged.mprof"
    merged().dump(path)
    return ProfileResult(load_snapshot(path), show_all=True)


def test_report_rows_per_task_and_per_process(result):
    tasks = {t.label: (t.size, t.allocated, t.kind) for t in result.tasks}
    assert tasks == {"read_parquet": (3000, 5000, "task"), "sum": (1900, 3800, "task"),
                     "(outside tasks)": (2064, 2000, "task")}
    procs = {p.label: (p.kind, p.pid, p.address, p.size) for p in result.processes}
    assert procs["worker tcp://127.0.0.1:4002"] == ("worker", 42, "tcp://127.0.0.1:4002", 1400)
    assert sum(t.share for t in result.tasks) == pytest.approx(1.0)


def test_text_html_interactive_and_dataframes_show_the_tasks(result):
    from mprofile_ipy.renderers import html, text

    shown = "\n".join(text.process_rows(result.report, 100, by="task"))
    assert "Per Dask task (3)" in shown and "read_parquet" in shown
    assert "Per Dask task (3)" in html.render_report(result.report)
    rows = result.report.to_dict()["groupings"]["task"]["rows"]
    assert [r["label"] for r in rows] == ["read_parquet", "(outside tasks)", "sum"]
    pytest.importorskip("pandas")
    df = result.shares_dataframe("task")
    assert list(df.index) == ["read_parquet", "(outside tasks)", "sum"]
    assert df.loc["sum", "allocated"] == 3800
    assert result.shares_dataframe("process").loc["kernel (pid 10)", "pid"] == 10
    with pytest.raises(ValueError, match="'process' or 'task'"):
        result.shares_dataframe("thread")


def test_a_snapshot_without_dimensions_has_no_such_sections():
    from test_processes_labels import kernel

    plain = ProfileResult(kernel())
    assert plain.tasks == [] and plain.processes == []
    assert "task" not in plain.report.to_dict()["groupings"]
