"""Peak memory of `ctxbatch submit FILE` for a large JSON Lines file: flat, whatever its size.

One embedded server of its own (or --mongo-uri); files of the issue's shape (benchmarks/submit.py
writes them) of a tenth of N lines and of N lines; the console script runs as a subprocess and its
peak RSS (VmHWM) is read while it runs (it exits once its move into the queue is done). Flat:
the same peak at both sizes. Target: the same as before issue 22 (160 MB at 300,000 lines).

    python benchmarks/submit_memory.py [--contexts 300000] [--mongo-uri URI]
"""

from __future__ import annotations

import subprocess
import time

from _common import arguments, server  # benchmarks/ is on sys.path when run as a script
from submit import PeakMemory, ctxbatch_command, write_contexts


def main() -> None:
    options = arguments(__doc__, contexts=300_000, repeat=1)
    with server(options.mongo_uri) as (uri, workdir):
        print("| lines | wall s | contexts/s | peak RSS |")
        print("| --- | ---: | ---: | ---: |")
        for count in (options.contexts // 10, options.contexts):
            path = workdir / f"contexts-{count}.jsonl"
            line = write_contexts(path, count)
            command = [*ctxbatch_command(), "--mongo-uri", uri, "--database", f"memory{count}", "submit", str(path)]
            start = time.perf_counter()
            process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            memory = PeakMemory(process.pid)
            _, errors = process.communicate()
            wall = time.perf_counter() - start
            if process.returncode != 0:
                raise SystemExit(errors.decode())
            peak_mb = memory.megabytes
            print(f"| {count:,} lines of {line:.0f} bytes | {wall:.1f} | {count / wall:,.0f} | {peak_mb:.0f} MB |")


if __name__ == "__main__":
    main()
