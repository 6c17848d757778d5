"""Run a command and record its wall time and peak resident memory: a tiny launcher for run.py.

    python benchmarks/measure.py RESULT.json COMMAND [ARGS...]

Why a launcher: on Linux a child's ``ru_maxrss`` starts from the high-water mark of the process that
spawned it (the kernel keeps the pre-exec memory's peak), so a child started straight from the
benchmark, which holds hundreds of MB itself, would report at least the benchmark's size. This
launcher imports only the standard library (about 10 MB), so ``RUSAGE_CHILDREN`` after its single
child exits is that child's own peak (children of the child included, e.g. Dagster's subprocesses).
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time


def main() -> int:
    result_path, argv = sys.argv[1], sys.argv[2:]
    started = time.perf_counter()
    rc = subprocess.call(argv)
    wall = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    own = resource.getrusage(resource.RUSAGE_SELF)
    with open(result_path, "w") as f:
        json.dump({"rc": rc, "wall_s": wall, "maxrss_kb": usage.ru_maxrss, "launcher_maxrss_kb": own.ru_maxrss,
                   "user_s": usage.ru_utime, "sys_s": usage.ru_stime}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
