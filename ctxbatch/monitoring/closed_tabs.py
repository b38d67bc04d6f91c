"""A dashboard tab that closes is no error: bokeh's race on it logged at debug, off the user's terminal.

Bokeh's server pings every open tab (twice a second: distributed sets `keep_alive_milliseconds:
500`). A ping that finds a tab's socket already closed drops the tab's session (bokeh's
`_keep_alive`, since bokeh PR 13655); tornado then calls the handler's `on_close`, which asks for
that session: AssertionError. tornado.application logs it as a 25-line "Uncaught exception GET
/ctxbatch/ws" traceback on the scheduler's stderr, which for a run's own cluster is the run's output,
after about one short visit in two (of /ctxbatch or of Dask's /status; a `chromium --headless
--screenshot` is one). Nothing is lost: the tab had gone, and bokeh has let go of it.
"""

from __future__ import annotations

import logging
import os
import traceback

log = logging.getLogger("ctxbatch.monitoring")

TORNADO_LOG = "tornado.application"  # where tornado reports a handler's uncaught exception
_ON_CLOSE = os.path.join("bokeh", "server", "views", "ws.py")  # WSHandler.on_close
_SESSION = os.path.join("bokeh", "server", "connection.py")  # ServerConnection.session, the assert


class ClosedTabAtDebug(logging.Filter):
    """Drops tornado's record of bokeh's closed-tab AssertionError after a debug line; passes any other."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not closed_tab_race(record):
            return True
        request = record.getMessage().splitlines()[0].removeprefix("Uncaught exception ")
        log.debug("a dashboard tab closed as bokeh pinged it: %s", request)
        return False


def closed_tab_race(record: logging.LogRecord) -> bool:
    """Whether the record is tornado's report of that AssertionError, raised where bokeh's race raises it."""
    if not (record.exc_info and isinstance(record.exc_info[1], AssertionError)):
        return False
    if not str(record.msg).startswith("Uncaught exception"):
        return False
    frames = traceback.extract_tb(record.exc_info[2])
    raised = frames[-1] if frames else None
    return (
        raised is not None
        and raised.filename.endswith(_SESSION)
        and raised.name == "session"
        and any(frame.filename.endswith(_ON_CLOSE) and frame.name == "on_close" for frame in frames)
    )


def quiet_closed_tabs() -> None:
    """Install the filter in this process, where the dashboard's server logs (idempotent)."""
    tornado_log = logging.getLogger(TORNADO_LOG)
    if not any(isinstance(f, ClosedTabAtDebug) for f in tornado_log.filters):
        tornado_log.addFilter(ClosedTabAtDebug())
