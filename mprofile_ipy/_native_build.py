"""cffi builder for ``mprofile_ipy._native`` (out-of-line API mode).

The C sources live in ``native/``; ``native/mprofile.h`` is both the cdef that cffi parses
and the header the C code includes, so the two cannot disagree. Warnings are on.
"""

from __future__ import annotations

from pathlib import Path

from cffi import FFI

ROOT = Path(__file__).resolve().parent.parent
NATIVE = ROOT / "native"
SOURCES = ["state.c", "sampler.c", "table.c", "stacks.c", "hooks.c", "api.c",
           "capture_common.c", "numpy_handler.c", "native_wrappers.c", "got_patch.c",
           "dlopen_search.c", "fork.c"]

ffibuilder = FFI()
ffibuilder.cdef((NATIVE / "mprofile.h").read_text())
ffibuilder.set_source(
    "mprofile_ipy._native",
    '#include "core.h"',
    sources=[str((NATIVE / name).relative_to(ROOT)) for name in SOURCES],
    include_dirs=[str(NATIVE.relative_to(ROOT))],
    extra_compile_args=["-std=gnu11", "-O2", "-fvisibility=hidden", "-Wall", "-Wextra",
                        "-Wno-unused-parameter",
                        "-Wno-missing-field-initializers"],
    libraries=["m"],
    # The sampler reads interpreter internals that differ per version: never abi3.
    py_limited_api=False,
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
