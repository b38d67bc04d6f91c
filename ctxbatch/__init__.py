"""ctxbatch: bulk processing of prioritised JSON contexts over MongoDB and Dask."""

from ctxbatch.config import Settings, load_config
from ctxbatch.errors import (
    BatchNotFound,
    ConfigError,
    ContextNotFound,
    CriticalError,
    CtxbatchError,
    DatabaseUnavailable,
    EngineError,
    InputError,
    LeaseLost,
    SubmitError,
)
from ctxbatch.io import Claim, ContextStore, Status, WriteReport, connect
from ctxbatch.pipeline.engine import batch_engine

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
    # Engines
    "batch_engine",
]
