"""The command line's quick commands load none of the heavy libraries: they answer in well under a second."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("pandas", "numpy", "pyarrow", "httpx", "dask", "distributed", "bokeh", "fastapi")
COMMAND = """
import contextlib, json, sys
from ctxbatch.cli import main
with contextlib.suppress(SystemExit), contextlib.redirect_stdout(sys.stderr):
    main({words!r})
print(json.dumps(sorted(name for name in {heavy!r} if name in sys.modules)))
"""


@pytest.mark.parametrize("words", [["--help"], ["db", "status"], ["run", "--help"], ["submit", "--help"]])
def test_a_quick_command_imports_no_heavy_library(words: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, "-c", COMMAND.format(words=words, heavy=HEAVY)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []
