"""The API token policy: where it comes from, which paths need it, which hosts are safe without it.

Free of web imports: `ctxbatch serve` checks its host with it before FastAPI is loaded.
"""

from __future__ import annotations

import ipaddress
import os

from ctxbatch.config import Settings

TOKEN_VARIABLE = "CTXBATCH_API_TOKEN"
# Load balancers and orchestrators probe health without credentials.
OPEN_PATHS = frozenset({"/healthz"})


def resolve_token(settings: Settings) -> str | None:
    """CTXBATCH_API_TOKEN, else `api.token`; an empty value means none."""
    return os.environ.get(TOKEN_VARIABLE) or settings.api.token or None


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps the API on this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
