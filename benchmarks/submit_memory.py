"""Peak memory of `ctxbatch submit FILE` for a large JSON Lines file: flat, whatever its size.

One embedded server of its own (or --mongo-uri), one file of N contexts (~0.5 KB payloads, as
benchmarks/submit.py writes them); the console script runs as a subprocess and its peak RSS is
read from getrusage(RUSAGE_CHILDREN) once it exits. Target: under 300 MB at 1,000,000 lines.

    python benchmarks/submit_memory.py [--contexts 1000000] [--mongo-uri URI]
"""

from __future__ import annotations

import resource
import subprocess
import time

from _common import arguments, server  # benchmarks/ is on sys.path when run as a script
from submit import ctxbatch_command, write_contexts


def main() -> None:
    options = arguments(__doc__, contexts=1_000_000, repeat=1)
    with server(options.mongo_uri) as (uri, workdir):
        path = workdir / "contexts.jsonl"
        line = write_contexts(path, options.contexts)
        command = [*ctxbatch_command(), "--mongo-uri", uri, "--database", "memory", "submit", str(path)]
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(done.stderr)
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(
            f"| {options.contexts:,} lines of {line:.0f} bytes | {wall:.1f} s | {options.contexts / wall:,.0f} | "
            f"{peak_mb:.0f} MB |"
        )


if __name__ == "__main__":
    main()
