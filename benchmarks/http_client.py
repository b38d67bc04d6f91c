"""The HTTP client the http engine calls with: httpx.AsyncClient against aiohttp.ClientSession.

A local aiohttp service (this file with `--serve PORT`, in a subprocess) answers every POST after
100 ms, any number at once, so the bound is (calls in flight) / 0.1 s. Each client makes `--calls`
POSTs of a small JSON body with a semaphore of 40, then of 200, calls in flight, its pool sized to
match; the two clients alternate which goes first, `--repeat` times. Medians of calls/s.

    python benchmarks/http_client.py [--calls 2000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import time
from collections.abc import Awaitable, Callable

import aiohttp
import httpx
from _common import served  # benchmarks/ is on sys.path when run as a script
from aiohttp import web

SECONDS = 0.1
IN_FLIGHT = (40, 200)


def serve(port: int) -> None:
    async def echo(request: web.Request) -> web.Response:
        body = await request.json()
        await asyncio.sleep(SECONDS)
        return web.json_response(body)

    app = web.Application()
    app.router.add_post("/", echo)
    app.router.add_get("/", lambda request: web.json_response({}))  # type: ignore[arg-type,return-value]
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def service() -> contextlib.AbstractContextManager[str]:
    """The service in a subprocess; its URL."""
    return served(__file__)


async def timed(calls: int, in_flight: int, call: Callable[[int], Awaitable[None]]) -> float:
    """Calls per second of `calls` calls, at most `in_flight` at once."""
    gate = asyncio.Semaphore(in_flight)

    async def one(i: int) -> None:
        async with gate:
            await call(i)

    start = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(calls)))
    return calls / (time.perf_counter() - start)


async def with_httpx(url: str, calls: int, in_flight: int) -> float:
    limits = httpx.Limits(max_connections=in_flight, max_keepalive_connections=in_flight)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:

        async def call(i: int) -> None:
            response = await client.post(url, json={"i": i})
            response.raise_for_status()
            response.json()

        return await timed(calls, in_flight, call)


async def with_aiohttp(url: str, calls: int, in_flight: int) -> float:
    connector = aiohttp.TCPConnector(limit=in_flight, limit_per_host=in_flight)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:

        async def call(i: int) -> None:
            async with session.post(url, json={"i": i}) as response:
                response.raise_for_status()
                await response.json()

        return await timed(calls, in_flight, call)


CLIENTS = {"httpx.AsyncClient": with_httpx, "aiohttp.ClientSession": with_aiohttp}


def measure(url: str, calls: int, repeat: int) -> dict[tuple[str, int], list[float]]:
    runs: dict[tuple[str, int], list[float]] = {(name, n): [] for name in CLIENTS for n in IN_FLIGHT}
    for r in range(repeat):
        for n in IN_FLIGHT:
            names = list(CLIENTS) if r % 2 == 0 else list(reversed(CLIENTS))
            for name in names:
                rate = asyncio.run(CLIENTS[name](url, calls, n))
                runs[(name, n)].append(rate)
                print(f"{name}, {n} in flight: {rate:.0f} calls/s", file=sys.stderr)
    return runs


def table(runs: dict[tuple[str, int], list[float]], calls: int) -> str:
    lines = [
        f"{calls:,} POSTs per run, service of {SECONDS * 1000:.0f} ms per call, medians of calls/s",
        "",
        "| in flight | bound | httpx.AsyncClient | runs | aiohttp.ClientSession | runs | aiohttp / httpx |",
        "|---:|---:|---:|---|---:|---|---:|",
    ]
    for n in IN_FLIGHT:
        slow, fast = runs[("httpx.AsyncClient", n)], runs[("aiohttp.ClientSession", n)]
        ratio = statistics.median(fast) / statistics.median(slow)
        lines.append(
            f"| {n} | {n / SECONDS:.0f} | {statistics.median(slow):.0f} | {', '.join(f'{x:.0f}' for x in slow)} "
            f"| {statistics.median(fast):.0f} | {', '.join(f'{x:.0f}' for x in fast)} | {ratio:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    with service() as url:
        print(table(measure(url, args.calls, args.repeat), args.calls))


if __name__ == "__main__":
    main()
