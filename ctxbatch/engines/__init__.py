"""Built-in engines, for the demo, benchmarks and calling services; resolved by short aliases.

Their names, what each imports and a line on what it does are in one registry,
`ctxbatch.resolve.BUILTIN_ENGINES`, which both resolving a name and `ctxbatch run --help` read.

`ctxbatch.engines.session` holds what `http` and `openai` share: one aiohttp session per worker, and
how a service's answer decides a context's fate.

Engines are user code written in-house: they import the public `ctxbatch` API only.
"""
