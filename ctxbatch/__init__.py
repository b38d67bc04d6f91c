"""ctxbatch: bulk processing of prioritised JSON contexts over MongoDB and Dask."""

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
    InputError,
    LeaseLost,
    RetryLater,
    SubmitError,
)
from ctxbatch.io import Claim, ContextStore, Status, WriteReport, connect

# The pipeline's names load on first use: importing Dask and distributed costs about half a
# second, which `ctxbatch status` and `ctxbatch submit` should not pay.
_PIPELINE_NAMES = {"Pipeline", "RunReport", "Subscriber", "batch_engine"}


def __getattr__(name: str) -> object:
    if name in _PIPELINE_NAMES:
        import ctxbatch.pipeline

        return getattr(ctxbatch.pipeline, name)
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
    "InputError",
    "LeaseLost",
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
]

if TYPE_CHECKING:
    from ctxbatch.pipeline import Pipeline, RunReport, Subscriber, batch_engine
