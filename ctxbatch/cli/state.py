"""What every command shares: one-line errors, the group's options, and the store opened on first use."""

from __future__ import annotations

from typing import Any

import click
from pymongo.errors import PyMongoError

from ctxbatch.config import Settings, load_config
from ctxbatch.errors import CtxbatchError
from ctxbatch.io import ContextStore, connect, mask_uri
from ctxbatch.io.outage import short_reason


def say(message: str) -> None:
    click.echo(message, err=True)


class OneLineErrors(click.Group):
    """Turns the errors ctxbatch can explain into one line and exit code 1, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CtxbatchError as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            say("interrupted")
            ctx.exit(130)
        except PyMongoError as exc:
            uri = ctx.obj.uri if isinstance(ctx.obj, State) and ctx.obj.uri else "the database"
            raise click.ClickException(f"cannot talk to MongoDB at {mask_uri(uri)}: {short_reason(exc)}") from None


class State:
    """What the group's options set, handed to each command; the store opens on first use."""

    def __init__(self, uri: str | None, database: str | None, config_path: str | None) -> None:
        self.uri = uri
        self.database = database
        self.config_path = config_path
        self._config: Settings | None = None
        self._store: ContextStore | None = None

    @property
    def config(self) -> Settings:
        if self._config is None:
            self._config = load_config(self.config_path)
        return self._config

    @property
    def store(self) -> ContextStore:
        if self._store is None:
            # connect() reads CTXBATCH_MONGO_URI when no --mongo-uri was given (the one place it is read).
            self._store = connect(self.uri, self.database, config=self.config, announce=say)
            self.uri = self._store.uri
            # The next command that touches the database finishes or drops interrupted submissions.
            self._store.tidy_submissions()
        return self._store


pass_state = click.make_pass_decorator(State)
