"""The `ctxbatch` command line (click): the queue's commands, `batches`, `stats` and `top`, `db`, `serve`,
and `sizing`.

Errors become one line on stderr and a non-zero exit (`state.OneLineErrors`).
"""

from ctxbatch.cli.commands import main
from ctxbatch.cli.db import db
from ctxbatch.cli.listing import batches
from ctxbatch.cli.monitor import stats, top
from ctxbatch.cli.serve import serve
from ctxbatch.cli.sizing import sizing

main.add_command(batches)
main.add_command(stats)
main.add_command(top)
main.add_command(db)
main.add_command(serve)
main.add_command(sizing)

__all__ = ["main"]
