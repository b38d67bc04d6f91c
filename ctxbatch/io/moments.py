"""A submission's named moments, where a test may stop the submitting process to kill it there.

Test-only: with CTXBATCH_TEST_PAUSE_AT set to a moment's name, the process that reaches that moment
says so on stderr and stops for good, so that a test's SIGKILL lands exactly there rather than
where a sleep happened to end. Unset (always, outside tests), a moment costs one lookup.
"""

from __future__ import annotations

import os
import sys
import threading

PAUSE_VARIABLE = "CTXBATCH_TEST_PAUSE_AT"
STAGING = "staging"  # a chunk staged, before the commit
COMMIT = "commit"  # just before the commit's update
ACKNOWLEDGED = "acknowledged"  # committed and answered; the move into the queue not begun
MOVE = "move"  # the first chunk moved into the queue, the rest not
MOMENTS = (STAGING, COMMIT, ACKNOWLEDGED, MOVE)


def reached(moment: str) -> None:
    """Mark the moment: stop here for good when CTXBATCH_TEST_PAUSE_AT names it."""
    if os.environ.get(PAUSE_VARIABLE) == moment:
        sys.stderr.write(f"ctxbatch: paused at {moment}\n")
        sys.stderr.flush()
        threading.Event().wait()
