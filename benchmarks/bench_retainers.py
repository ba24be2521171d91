"""Time ``find_retainers`` on a heap of N extra objects (lists of an int and a str).

One target block (a bytearray) sits inside one of the lists, reachable from a user name.
Three requests are timed, wall clock and CPU: the first chain, three chains, and a block
that is not there (which also runs the unreachable-cycle analysis). The peak RSS of the
process is printed last.

Run: ``python benchmarks/bench_retainers.py 1000000`` (and 10000000 for the large heap).
"""

from __future__ import annotations

import argparse
import gc
import resource
import time

from mprofile_ipy.retainers import find_retainers
from mprofile_ipy.retainers._layout import block_address


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("objects", type=int, nargs="?", default=1_000_000,
                        help="extra objects on the heap (default 1,000,000)")
    n = parser.parse_args().objects
    heap = [[i + 1000, str(i)] for i in range(n // 3)]
    target = bytearray(1000)
    heap[len(heap) // 2].append(target)
    address = block_address(target)
    del target
    ns = {"heap": heap}
    print(f"N={n:,}: gc objects {len(gc.get_objects()):,}")
    for label, blocks, chains in (
        ("found, 1 chain", [(address, 1057, 2)], 1),
        ("found, max_chains=3", [(address, 1057, 2)], 3),
        ("not found (+ unreachable analysis)", [(8, 64, 2)], 1),
    ):
        wall, cpu = time.perf_counter(), time.process_time()
        reports = find_retainers(blocks, user_ns=ns, max_chains=chains,
                                 progress=lambda p: None, time_limit=None)
        chain = reports[0].chains[0].text if reports[0].chains else ""
        print(f"  {label}: {time.perf_counter() - wall:.1f} s wall, "
              f"{time.process_time() - cpu:.1f} s CPU; {reports[0].status}; {chain}")
    print(f"  max RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
