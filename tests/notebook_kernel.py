"""Run a notebook of notebooks/ in a real IPython kernel (nbclient), as `jupyter nbconvert --execute` does."""

from __future__ import annotations

import copy
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import nbformat
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
# Per cell: a notebook as a whole finishes well inside a minute on two quiet cores; the bound is
# for a machine shared with other work, where a cell that starts a cluster can take minutes.
CELL_TIMEOUT = 240


def use_this_python(directory: Path) -> dict[str, str]:
    """An environment whose `python3` kernel is this interpreter (JUPYTER_PATH comes before any other kernelspec)."""
    spec = directory / "kernels" / "python3"
    spec.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    spec.joinpath("kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": "Python 3", "language": "python"})
    )
    return {"JUPYTER_PATH": os.pathsep.join([str(directory), os.environ.get("JUPYTER_PATH", "")]).rstrip(os.pathsep)}


def execute(name: str, workdir: Path) -> tuple[nbformat.NotebookNode, list[dict[str, Any]]]:
    """Execute notebooks/NAME in `workdir` (a copy, so the repository stays clean).

    Returns the executed notebook and every message the kernel sent on IOPub, in order (the
    notebook's outputs alone do not show whether a display was updated in place or repeated).
    The kernel inherits this process's environment: CTXBATCH_HOME and CTXBATCH_MONGO_URI point
    it at the test's server.
    """
    path = workdir / name
    shutil.copy(NOTEBOOKS / name, path)
    notebook = nbformat.read(path, as_version=4)
    messages: list[dict[str, Any]] = []
    client = NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT,
        kernel_name="python3",
        resources={"metadata": {"path": str(workdir)}},
    )
    original = client.process_message

    def record(msg: dict[str, Any], cell: Any, cell_index: int) -> Any:
        messages.append(copy.deepcopy(msg))  # nbclient rewrites an update's msg_type as it applies it
        return original(msg, cell, cell_index)

    client.process_message = record  # type: ignore[method-assign]
    client.execute()
    return notebook, messages


def outputs(notebook: nbformat.NotebookNode, kind: str = "text/plain") -> list[str]:
    """The text of every output of the given MIME type (streams count as text/plain), in order."""
    found = []
    for cell in notebook.cells:
        for out in cell.get("outputs", []):
            if out["output_type"] == "stream" and kind == "text/plain":
                found.append(out["text"])
            elif kind in out.get("data", {}):
                found.append(out["data"][kind])
    return found
