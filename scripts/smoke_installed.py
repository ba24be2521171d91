"""Smoke test of an *installed* mprofile-ipy (a wheel in a fresh venv), run by scripts/test.sh.

    python scripts/smoke_installed.py full    # the plain `pip install` of a notebook user
    python scripts/smoke_installed.py lean    # `pip install --no-deps mprofile-ipy cffi`

Run it from a folder outside the repository, with the venv's python: it checks that the
package comes from that venv's site-packages, not from a source tree.

Both: import, start (seeded), a 50 MB allocation, snapshot, statistics, the traced-memory
estimate, dump and load of the snapshot, stop. ``lean`` also checks that the notebook
dependencies really are absent (so the test means what it says). ``full`` also loads the
IPython extension in a real ``InteractiveShell``, runs one ``%%mprofile`` cell and checks
that the report names the cell's line, and writes and reads back a pprof profile.
Exits non-zero, saying what failed, on any difference.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import sys
import sysconfig
import tempfile

NOTEBOOK_DEPENDENCIES = ("IPython", "ipywidgets", "pandas", "matplotlib", "google.protobuf")


def check(condition: bool, message: str) -> None:
    if not condition:
        raise SystemExit(f"smoke test FAILED: {message}")


def check_installed_copy() -> None:
    import mprofile_ipy

    site = os.path.realpath(sysconfig.get_paths()["purelib"])
    platsite = os.path.realpath(sysconfig.get_paths()["platlib"])
    where = os.path.realpath(mprofile_ipy.__file__)
    check(where.startswith((site, platsite)),
          f"mprofile_ipy imported from {where}, not from this venv's site-packages")
    print(f"imported {where}")


def check_api(workdir: str) -> None:
    """start / snapshot / statistics / traced memory / dump / load / stop, as in tracemalloc."""
    import mprofile_ipy as mp

    mp.start(seed=1)
    check(mp.is_tracing(), "is_tracing() is false after start()")
    data = [bytes(1000) for _ in range(50_000)]          # about 51 MB in 1 KiB objects
    snapshot = mp.take_snapshot()
    top = snapshot.statistics("lineno")[0]
    print(f"top statistic: {top}")
    check(top.traceback[0].filename == os.path.abspath(__file__),
          f"top site is {top.traceback[0]}, not this file")
    check(40e6 < top.size < 62e6, f"estimated {top.size} B for about 51 MB")
    current, peak = mp.get_traced_memory()
    check(40e6 < current <= peak, f"get_traced_memory() = {(current, peak)}")
    path = os.path.join(workdir, "smoke.mprof")
    snapshot.dump(path)
    loaded = mp.Snapshot.load(path)
    check(loaded.statistics("lineno")[0].size == top.size, "dump/load changed the top site")
    mp.stop()
    check(not mp.is_tracing(), "still tracing after stop()")
    del data


def check_ipython(workdir: str) -> None:
    """%load_ext and one %%mprofile cell in a real InteractiveShell."""
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        shell.run_cell("%load_ext mprofile_ipy").raise_error()
        shell.run_cell("%%mprofile --seed 3\n"
                       "keep = [bytearray(2048) for _ in range(30_000)]\n").raise_error()
    text = out.getvalue()
    print(text)
    check("keep = [bytearray(2048)" in text, "the %%mprofile report does not name the line")
    check("MiB" in text, "the %%mprofile report shows no size")

    import mprofile_ipy as mp
    from mprofile_ipy.export.pprof import load_pprof

    mp.start(seed=2)
    blob = [str(i) * 50 for i in range(100_000)]
    path = os.path.join(workdir, "heap.pb.gz")
    mp.take_snapshot().to_pprof(path)
    mp.stop()
    reloaded = load_pprof(path)
    check(reloaded.statistics("lineno")[0].size > 5e6, "the pprof round trip lost the sizes")
    print(f"pprof round trip: {reloaded.statistics('lineno')[0]}")
    del blob


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[1] not in ("full", "lean"):
        print(__doc__, file=sys.stderr)
        return 2
    check_installed_copy()
    if argv[1] == "lean":
        present = [m for m in NOTEBOOK_DEPENDENCIES if importlib.util.find_spec(m.split(".")[0])]
        check(not present, f"the lean venv has {present}: the test would prove nothing")
    with tempfile.TemporaryDirectory(prefix="mprofile-smoke-") as workdir:
        check_api(workdir)
        if argv[1] == "full":
            check_ipython(workdir)
    print(f"smoke test ({argv[1]} install) passed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
