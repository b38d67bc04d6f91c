"""Built-in engines, for the demo and the benchmarks; resolvable by the short aliases below.

- `text`: CPU-bound word statistics and hashing of `payload["text"]` (`ctxbatch.engines.text`).
- `service`: an async call to a simulated external service with a latency (`ctxbatch.engines.service`).
- `batched-call`: a batch engine with a fixed cost per call plus a cost per context (`ctxbatch.engines.service`).
- `echo`: the trivial engine the pipeline benchmark measures overhead with (`ctxbatch.engines.trivial`).

The table holds names, not objects, so resolving one alias imports only its module.
"""

BUILTIN_ENGINES: dict[str, str] = {
    "text": "ctxbatch.engines.text:text_stats",
    "service": "ctxbatch.engines.service:call_service",
    "batched-call": "ctxbatch.engines.service:batched_call",
    "echo": "ctxbatch.engines.trivial:echo",
}

__all__ = ["BUILTIN_ENGINES"]
