"""ctxbatch: bulk processing of prioritised JSON contexts over MongoDB and Dask."""

import importlib
from typing import TYPE_CHECKING

from ctxbatch.config import Settings, load_config
from ctxbatch.errors import (
    BatchNotFound,
    ConfigError,
    ContextNotFound,
    CriticalError,
    CtxbatchError,
    DatabaseUnavailable,
    EngineError,
    FailNow,
    FileNotFound,
    FileRefused,
    IdempotencyKeyInUse,
    IdempotencyKeyReused,
    InputError,
    RetryLater,
    SubmitError,
)
from ctxbatch.io import Claim, ContextStore, Status, WriteReport, connect

# The run's names load on first use: importing Dask and distributed costs about half a second,
# which `ctxbatch status` and `ctxbatch submit` should not pay.
_LOADED_ON_USE = {
    "Pipeline": "ctxbatch.run",
    "RunReport": "ctxbatch.pipeline.report",
    "Subscriber": "ctxbatch.pipeline.events",
    "batch_engine": "ctxbatch.pipeline.engine",
    "estimate_tokens": "ctxbatch.pipeline.tokens",
}


def __getattr__(name: str) -> object:
    if name in _LOADED_ON_USE:
        return getattr(importlib.import_module(_LOADED_ON_USE[name]), name)
    raise AttributeError(f"module 'ctxbatch' has no attribute {name!r}")


__version__ = "0.1.0"

__all__ = [
    # Errors
    "BatchNotFound",
    "ConfigError",
    "ContextNotFound",
    "CriticalError",
    "CtxbatchError",
    "DatabaseUnavailable",
    "EngineError",
    "FileNotFound",
    "FileRefused",
    "IdempotencyKeyInUse",
    "IdempotencyKeyReused",
    "InputError",
    "FailNow",
    "RetryLater",
    "SubmitError",
    # Configuration
    "Settings",
    "load_config",
    # The store
    "Claim",
    "ContextStore",
    "Status",
    "WriteReport",
    "connect",
    # The pipeline
    "Pipeline",
    "RunReport",
    "Subscriber",
    "batch_engine",
    "estimate_tokens",
]

if TYPE_CHECKING:
    from ctxbatch.pipeline.engine import batch_engine
    from ctxbatch.pipeline.events import Subscriber
    from ctxbatch.pipeline.report import RunReport
    from ctxbatch.pipeline.tokens import estimate_tokens
    from ctxbatch.run import Pipeline
