"""An OpenAI batch file against an OpenAI-compatible server: ctxbatch, a hand-written loop, the bound.

The server (tests/openai_server.py in a subprocess): 200 ms a call, 64 calls at once, 429 +
Retry-After: 1 beyond. The file: `--contexts` chat requests (OpenAI batch lines). Rows, each on a
fresh database and a fresh server:

  (a)  ctxbatch, nothing tuned: `ctxbatch submit FILE` then `ctxbatch run --engine openai
       --until-empty` (OPENAI_BASE_URL and OPENAI_API_KEY set, no config), then `ctxbatch results
       ID --format openai -o ... --errors-output ...`; the wall of all three
  (b)  a hand-written aiohttp loop of the shape people copy (after the OpenAI cookbook's parallel
       processor): the file read whole, requests and tokens per minute tracked in memory, a semaphore
       of 64 (it knows the server's capacity), a 429 retried after its Retry-After, the answers
       written as OpenAI output lines. No database: a crash loses everything
  (c)  the bound: contexts / (64 / 0.2 s)

Then the peak RSS of `ctxbatch results ID --format openai` at `--memory-lines` lines (1,000,000) and
at a tenth of that: flat memory means the same peak at both.

    python benchmarks/openai_batch.py --contexts 10000 --repeat 3 [--memory-lines 1000000]
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
from _common import arguments, server  # benchmarks/ is on sys.path when run as a script
from submit import ctxbatch_command

from ctxbatch.io import ContextStore, Status

LATENCY, CAPACITY = 0.2, 64
REQUESTS_PER_MINUTE = CAPACITY / LATENCY * 60  # the hand loop is told the server's true rate
TOKENS_PER_MINUTE = 10_000_000
SERVER = Path(__file__).resolve().parent.parent / "tests" / "openai_server.py"


def request(i: int) -> dict[str, Any]:
    text = f"Summarise item {i}: " + "lorem ipsum " * 20
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}], "max_tokens": 32}
    return {"custom_id": f"request-{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}


def write_file(path: Path, count: int) -> Path:
    with path.open("w") as out:
        for i in range(count):
            out.write(json.dumps(request(i)) + "\n")
    return path


@contextmanager
def openai_server() -> Iterator[tuple[str, dict[str, Any]]]:
    """(base URL, the server's counts once it stopped): tests/openai_server.py in a subprocess."""
    command = [sys.executable, str(SERVER), "--latency", str(LATENCY), "--capacity", str(CAPACITY)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    counts: dict[str, Any] = {}
    try:
        yield process.stdout.readline().strip(), counts
    finally:
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=30)
        counts.update(json.loads(out.strip().splitlines()[-1]))


def ctxbatch_row(uri: str, workdir: Path, source: Path) -> tuple[float, dict[str, Any], int]:
    """(wall seconds of submit + run + results, the server's counts with each step's seconds, output lines)."""
    base = [*ctxbatch_command(), "--mongo-uri", uri, "--database", f"openai_{time.monotonic_ns()}"]
    output, errors = workdir / "output.jsonl", workdir / "errors.jsonl"
    with openai_server() as (base_url, counts):
        env = {**os.environ, "OPENAI_BASE_URL": base_url, "OPENAI_API_KEY": "sk-bench"}
        steps = [time.perf_counter()]
        batch_id = run([*base, "submit", str(source)], env).strip()
        steps.append(time.perf_counter())
        run([*base, "run", "--engine", "openai", "--until-empty"], env)
        steps.append(time.perf_counter())
        run([*base, "results", batch_id, "--format", "openai", "-o", str(output), "--errors-output", str(errors)], env)
        steps.append(time.perf_counter())
    counts["steps"] = [later - earlier for earlier, later in itertools.pairwise(steps)]
    return steps[-1] - steps[0], counts, sum(1 for _ in output.open())


def run(command: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command[-4:])} failed:\n{done.stderr}")
    return done.stdout


class MinuteBudget:
    """Requests and tokens per minute, refilled continuously (the cookbook's capacity tracking)."""

    def __init__(self, requests: float, tokens: float) -> None:
        self.per_second = (requests / 60, tokens / 60)
        self.limits = (requests, tokens)
        self.available = [requests, tokens]
        self.updated = time.monotonic()

    async def take(self, tokens: int) -> None:
        while True:
            now = time.monotonic()
            for kind in (0, 1):
                refill = self.available[kind] + (now - self.updated) * self.per_second[kind]
                self.available[kind] = min(self.limits[kind], refill)
            self.updated = now
            if self.available[0] >= 1 and self.available[1] >= tokens:
                self.available[0] -= 1
                self.available[1] -= tokens
                return
            await asyncio.sleep(0.001)


async def hand_loop(base_url: str, source: Path, output: Path) -> None:
    lines = [json.loads(line) for line in source.open()]
    budget = MinuteBudget(REQUESTS_PER_MINUTE, TOKENS_PER_MINUTE)
    gate = asyncio.Semaphore(CAPACITY)
    headers = {"Authorization": "Bearer sk-bench"}
    connector = aiohttp.TCPConnector(limit=CAPACITY)
    answers: list[dict[str, Any]] = []

    async def call(session: aiohttp.ClientSession, line: dict[str, Any]) -> None:
        tokens = len(json.dumps(line["body"]["messages"])) // 4 + line["body"]["max_tokens"]
        while True:
            await budget.take(tokens)
            async with gate, session.post(base_url + line["url"].removeprefix("/v1"), json=line["body"]) as answer:
                body = await answer.json()
                if answer.status == 429:
                    await asyncio.sleep(float(answer.headers.get("Retry-After", "1")))
                    continue
                response = {"status_code": answer.status, "request_id": answer.headers.get("x-request-id")}
                answers.append({"custom_id": line["custom_id"], "response": {**response, "body": body}})
                return

    async with aiohttp.ClientSession(headers=headers, connector=connector) as session:
        await asyncio.gather(*(call(session, line) for line in lines))
    with output.open("w") as out:
        for answer in answers:
            out.write(json.dumps(answer) + "\n")


def hand_row(workdir: Path, source: Path) -> tuple[float, dict[str, Any], int]:
    output = workdir / "hand.jsonl"
    with openai_server() as (base_url, counts):
        start = time.perf_counter()
        asyncio.run(hand_loop(base_url, source, output))
        wall = time.perf_counter() - start
    return wall, counts, sum(1 for _ in output.open())


def results_peak_mb(uri: str, lines: int, workdir: Path) -> tuple[float, float]:
    """(peak RSS in MB, wall seconds) of `ctxbatch results --format openai` over a batch of `lines` completed."""
    database = f"memory_{lines}"
    store = ContextStore(uri, database)
    try:
        batch_id = store.submit((request(i) for i in range(lines)), name="memory")
        answer = {"status_code": 200, "request_id": "req_0", "body": {"choices": [{"message": {"content": "x" * 200}}]}}
        store.contexts.update_many(
            {"batch_id": {"$eq": batch_id}}, {"$set": {"status": Status.COMPLETED.value, "result": answer}}
        )
    finally:
        store.close()
    out = workdir / f"memory-{lines}.jsonl"
    command = [*ctxbatch_command(), "--mongo-uri", uri, "--database", database, "results", batch_id]
    command += ["--format", "openai", "-o", str(out)]
    # A wrapper process of its own, so RUSAGE_CHILDREN's peak is this command's alone.
    wrapper = (
        "import resource, subprocess, sys, time; start = time.perf_counter(); "
        "subprocess.run(sys.argv[1:], check=True, capture_output=True); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, time.perf_counter() - start)"
    )
    done = subprocess.run([sys.executable, "-c", wrapper, *command], capture_output=True, text=True, check=True)
    written = sum(1 for _ in out.open())
    assert written == lines, f"{written} lines written of {lines}"
    peak, wall = done.stdout.split()
    return float(peak), float(wall)


def main() -> None:
    options = arguments(__doc__, contexts=10_000, repeat=3, memory_lines=1_000_000)
    memory_lines = options.memory_lines
    bound = options.contexts / (CAPACITY / LATENCY)
    rows: dict[str, list[tuple[float, dict[str, Any], int]]] = {"ctxbatch": [], "hand": []}
    with server(options.mongo_uri) as (uri, workdir):
        source = write_file(workdir / "batch.jsonl", options.contexts)
        for turn in range(options.repeat):
            rows["ctxbatch"].append(ctxbatch_row(uri, workdir, source))
            rows["hand"].append(hand_row(workdir, source))
            submit, loop, results = rows["ctxbatch"][-1][1]["steps"]
            print(
                f"turn {turn + 1}: ctxbatch {rows['ctxbatch'][-1][0]:.1f} s (submit {submit:.1f}, run {loop:.1f}, "
                f"results {results:.1f}), hand {rows['hand'][-1][0]:.1f} s"
            )
        print()
        print("| row | wall s (each) | requests/s | x bound | x hand loop | 429s | output lines |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        hand = statistics.median(wall for wall, _, _ in rows["hand"])
        for name, label in (("ctxbatch", "(a) ctxbatch, nothing tuned"), ("hand", "(b) hand-written aiohttp loop")):
            walls = [wall for wall, _, _ in rows[name]]
            wall = statistics.median(walls)
            turned = statistics.median(counts.get("turned_away", 0) for _, counts, _ in rows[name])
            lines = min(n for _, _, n in rows[name])
            each = ", ".join(f"{w:.1f}" for w in walls)
            print(
                f"| {label} | {wall:.1f} ({each}) | {options.contexts / wall:.0f} | {bound / wall:.2f} | "
                f"{hand / wall:.2f} | {turned:.0f} | {lines:,} |"
            )
        print(f"| (c) bound, {CAPACITY} / {LATENCY} s | {bound:.1f} | {options.contexts / bound:.0f} | 1.00 | | | |")
        print()
        print("| results --format openai | wall s | peak RSS |")
        print("| --- | ---: | ---: |")
        for lines in (memory_lines // 10, memory_lines):
            peak, wall = results_peak_mb(uri, lines, workdir)
            print(f"| {lines:,} lines | {wall:.1f} | {peak:.0f} MB |")


if __name__ == "__main__":
    main()
