"""Built-in engines, for the demo and the benchmarks; resolvable by short aliases (`ctxbatch.resolve`).

- `text`: CPU-bound word statistics and hashing of `payload["text"]` (`ctxbatch.engines.text`).
- `service`: an async call to a simulated external service with a latency (`ctxbatch.engines.service`).
- `batched-call`: a batch engine with a fixed cost per call plus a cost per context (`ctxbatch.engines.service`).
- `echo`: the trivial engine the pipeline benchmark measures overhead with (`ctxbatch.engines.trivial`).

Engines are user code written in-house: they import the public `ctxbatch` API only.
"""
