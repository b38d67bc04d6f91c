"""The API token policy: where it comes from, which paths need it, which hosts are safe without it.

Free of web imports: `ctxbatch serve` checks its host with it before FastAPI is loaded.
"""

from __future__ import annotations

import os

from ctxbatch.config import Settings
from ctxbatch.hosts import is_loopback

TOKEN_VARIABLE = "CTXBATCH_API_TOKEN"
# Load balancers and orchestrators probe health without credentials.
OPEN_PATHS = frozenset({"/healthz"})


def resolve_token(settings: Settings) -> str | None:
    """CTXBATCH_API_TOKEN, else `api.token`; an empty value means none."""
    return os.environ.get(TOKEN_VARIABLE) or settings.api.token or None


__all__ = ["OPEN_PATHS", "TOKEN_VARIABLE", "is_loopback", "resolve_token"]
