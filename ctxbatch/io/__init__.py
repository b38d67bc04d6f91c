"""Everything that talks to MongoDB."""

from ctxbatch.display import json_default
from ctxbatch.io.claims import Claim, WriteReport
from ctxbatch.io.schema import ContextRequest, Status, error_record, utcnow
from ctxbatch.io.stats import Stats
from ctxbatch.io.store import ContextStore, connect, mask_uri
from ctxbatch.io.tenants import TenantShares
from ctxbatch.io.usage import usage_of
from ctxbatch.io.views import BatchStatus, derive_status

__all__ = [
    "BatchStatus",
    "Claim",
    "ContextRequest",
    "ContextStore",
    "Stats",
    "Status",
    "TenantShares",
    "WriteReport",
    "connect",
    "derive_status",
    "error_record",
    "json_default",
    "mask_uri",
    "usage_of",
    "utcnow",
]
