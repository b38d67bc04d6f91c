"""Built-in engines, for the demo, benchmarks and calling services; resolved by short aliases (`ctxbatch.resolve`).

- `text`: CPU-bound word statistics and hashing of `payload["text"]` (`ctxbatch.engines.text`).
- `service`: an async call to a simulated external service with a latency (`ctxbatch.engines.service`).
- `batched-call`: a batch engine with a fixed cost per call plus a cost per context (`ctxbatch.engines.service`).
- `echo`: the trivial engine the pipeline benchmark measures overhead with (`ctxbatch.engines.trivial`).
- `http`: one request per context to the service in `http:` (`ctxbatch.engines.http`).
- `openai`: each payload a request of an OpenAI batch, sent to `openai.base_url` (`ctxbatch.engines.openai`).

`ctxbatch.engines.session` holds what `http` and `openai` share: one aiohttp session per worker, and
how a service's answer decides a context's fate.

Engines are user code written in-house: they import the public `ctxbatch` API only.
"""
