"""The embedded server's process: nx-27017, with each write command committed once, not once per document,
and a page cache that holds the working set.

nx-27017 keeps SQLite in autocommit mode and inserts, updates and deletes a command's documents one
at a time, so each document is a transaction of its own that writes every page it touched to the
WAL again: the table's and each index's (about 52 KB a context with the `contexts` indexes, 17 KB
without). Here an `insert`, `update` or `delete` command's documents go into one transaction: each
page is written once per command. An insert into `contexts` then costs the server about half its
CPU (benchmarks/README.md, submit.py), and so do a claim's update and a settle's bulk write
(server_cost.py).

What a client sees is unchanged, or stronger:
- nx-27017 already runs a command under its database's lock, so no other client's write joins
  the transaction, and nothing waits longer than it did (less: the command is faster).
- The documents are committed before the reply, so what was acknowledged is stored, as before. A
  server killed midway keeps none of the command's documents rather than some of them: the
  client got no reply either way (a claim or a settle cut off so is answered by neither, and the
  store treats it as such: io/queue.py).
- A duplicate key fails its own statement, not the transaction (SQLite's ABORT resolution), so
  `writeErrors` are reported as before and the other documents are written.
- A command of a client's own transaction (`autocommit: false`), or one sent while a transaction
  is open on the database, runs as nx-27017 runs it.
If nx-27017's internals are not the ones this relies on, the server runs as it ships.

Run as a script (`python -P this_file ARGS`), not as a module of the package: the server needs
nothing of ctxbatch, and importing the package would cost it a second and 100 MB.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from typing import Any

log = logging.getLogger("ctxbatch.embedded_server")

Handled = tuple[int, dict[str, Any]]


def _body(message: dict[str, Any]) -> dict[str, Any]:
    for kind, document in message.get("sections", ()):
        if kind == "body" and isinstance(document, dict):
            return document
    return {}


Handler = Callable[[Any, dict[str, Any]], Handled]
# Each database's SQLite page cache, in KiB (see with_page_cache).
PAGE_CACHE_KIB = 64 * 1024
# The commands of many documents that nx-27017's command handler writes one document at a time.
WRITE_COMMANDS = frozenset({"update", "delete"})


def commit_once(handle_insert: Handler, commands: frozenset[str] | None = None) -> Handler:
    """An nx-27017 handler, each command it handles in one SQLite transaction (see the module's note);
    with `commands`, only those commands (named by the body's first key), the others as they are."""
    from nx_27017.handler import _msg_db_name

    @functools.wraps(handle_insert)
    def handle(handler: Any, message: dict[str, Any]) -> Handled:
        body = _body(message)
        if commands is not None and next(iter(body), None) not in commands:
            return handle_insert(handler, message)
        if "autocommit" in body or "startTransaction" in body:
            return handle_insert(handler, message)
        name = _msg_db_name(message)
        # The lock nx-27017 takes for the command (re-entrant): nobody else's command runs until the commit.
        with handler._lock_for(name):
            try:
                sqlite = handler.get_database(name).db
            except Exception:  # an invalid database name: nx-27017 answers it
                return handle_insert(handler, message)
            if sqlite.in_transaction:
                return handle_insert(handler, message)
            sqlite.execute("BEGIN")
            try:
                handled = handle_insert(handler, message)
            except BaseException:
                if sqlite.in_transaction:
                    sqlite.execute("ROLLBACK")
                raise
            if sqlite.in_transaction:  # nx-27017 commits some commands itself (GridFS's)
                sqlite.execute("COMMIT")
            return handled

    return handle


def with_page_cache(configure: Callable[[Any], None]) -> Callable[[Any], None]:
    """neosqlite's set-up of a database's SQLite connection, then a page cache of PAGE_CACHE_KIB.

    SQLite's default is 2 MiB, a few thousand contexts' pages: past that, each update of a claim or
    a settle (whose contexts are spread over the table in priority order) reads back from the OS the
    pages of its row and of its entry in every index (SQLite rewrites them all: each is on `data`).
    The cache is per database, and grows only as far as the database is used.
    """

    @functools.wraps(configure)
    def configured(connection: Any) -> None:
        configure(connection)
        connection.db.execute(f"PRAGMA cache_size = -{PAGE_CACHE_KIB}")

    return configured


def patch() -> bool:
    """Install commit_once on nx-27017's handler, and a larger page cache on each database it opens;
    False (and the server as it ships) when they do not fit."""
    try:
        from neosqlite.connection import Connection
        from nx_27017.handler import NeoSQLiteHandler

        needed = ("handle_insert", "handle_command", "_lock_for", "get_database")
        if all(hasattr(NeoSQLiteHandler, name) for name in needed) and hasattr(Connection, "_configure_connection"):
            NeoSQLiteHandler.handle_insert = commit_once(NeoSQLiteHandler.handle_insert)
            NeoSQLiteHandler.handle_command = commit_once(NeoSQLiteHandler.handle_command, WRITE_COMMANDS)
            Connection._configure_connection = with_page_cache(Connection._configure_connection)
            return True
    except ImportError:
        pass
    log.warning("nx-27017 is not the version ctxbatch knows: each written document is committed on its own")
    return False


def main() -> None:
    patch()
    from nx_27017.nx_27017 import main as serve

    sys.argv[0] = "nx-27017"
    serve()


if __name__ == "__main__":
    main()
