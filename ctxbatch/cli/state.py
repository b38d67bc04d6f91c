"""What every command shares: one-line errors, the group's options, and the store opened on first use.

The group's options (`--mongo-uri`, `--database`, `--config`) are taken before the command or after
it: `ctxbatch --database d status ID` and `ctxbatch status ID --database d` are the same command.
`Main`, the `ctxbatch` group, gives them to every command added to it, so a new command cannot
forget them; given in both places with different values, the command is refused rather than one
silently winning.
"""

from __future__ import annotations

import shlex
from typing import Any, NamedTuple

import click
from click.core import ParameterSource
from pymongo.errors import PyMongoError

from ctxbatch.config import Settings, load_config
from ctxbatch.errors import CtxbatchError
from ctxbatch.io import ContextStore, connect, mask_uri
from ctxbatch.io.outage import short_reason


def say(message: str) -> None:
    click.echo(message, err=True)


class Common(NamedTuple):
    """One of the group's options: its flag, the State attribute it sets, its help, its variable."""

    flag: str
    name: str
    help: str
    envvar: str | None = None
    type: click.ParamType | None = None


# The environment is read once, by the group: after the command a value can only come from the command line.
# (CTXBATCH_MONGO_URI is read where the store connects, the one place that reads it.)
COMMON = (
    Common("--mongo-uri", "uri", "MongoDB URI (default: $CTXBATCH_MONGO_URI, else the embedded server)."),
    Common("--database", "database", "Database name (default: ctxbatch).", "CTXBATCH_DATABASE"),
    Common("--config", "config_path", "YAML configuration file.", "CTXBATCH_CONFIG", click.Path(dir_okay=False)),
)


def common_options(*, envvars: bool) -> list[click.Option]:
    """The group's options, as a command (or the group) declares them; their values go to the State."""
    return [
        click.Option(
            [common.flag, common.name],
            type=common.type,
            envvar=common.envvar if envvars else None,
            help=common.help,
            expose_value=False,
            callback=_keep,
        )
        for common in COMMON
    ]


def _keep(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    state = ctx.ensure_object(State)
    if value is not None:
        on_command_line = ctx.get_parameter_source(param.name or "") is ParameterSource.COMMANDLINE
        state.take(param, value, on_command_line)


def give_common_options(command: click.Command) -> None:
    """`command` (and, for a group, each command under it) takes the group's options after its name."""
    if any(getattr(param, "callback", None) is _keep for param in command.params):
        return  # given already (added to the group twice)
    taken = {opt for param in command.params for opt in param.opts}
    clashes = taken & {common.flag for common in COMMON}
    if clashes:
        raise TypeError(f"command {command.name!r} declares {', '.join(sorted(clashes))}: the ctxbatch group gives it")
    command.params.extend(common_options(envvars=False))
    for sub in getattr(command, "commands", {}).values():
        give_common_options(sub)


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


class Main(OneLineErrors):
    """The `ctxbatch` group: takes the group's options, and gives them to every command added to it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.params.extend(common_options(envvars=True))

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        give_common_options(cmd)
        super().add_command(cmd, name)


class State:
    """What the group's options set, handed to each command; the store opens on first use."""

    def __init__(self, uri: str | None = None, database: str | None = None, config_path: str | None = None) -> None:
        self.uri = uri
        self.database = database
        self.config_path = config_path
        # What the command line said, by State attribute: hints repeat it (`command_line`).
        self.given: dict[str, str] = {}
        self._config: Settings | None = None
        self._store: ContextStore | None = None

    def take(self, param: click.Parameter, value: str, on_command_line: bool) -> None:
        """One of the group's options, given before the command or after it (or by its variable)."""
        name = param.name or ""
        if on_command_line:
            earlier = self.given.get(name)
            if earlier is not None and earlier != value:
                raise click.UsageError(
                    f"{param.opts[0]} is given twice, as {earlier!r} and as {value!r}; give it once, "
                    "before the command or after it"
                )
            self.given[name] = value
        setattr(self, name, value)

    def use_database(self, name: str) -> None:
        """The database this command uses when none was given (the demo's own); hints name it."""
        if self.database is None:
            self.database = self.given["database"] = name

    def command_line(self, *words: str) -> str:
        """`ctxbatch WORDS...` for a shell, after them the group's options this command was given: it reaches
        the same database. The environment it ran in is the next command's too, so variables are not repeated."""
        options: list[str] = []
        for common in COMMON:
            value = self.given.get(common.name)
            if value is not None:
                # Never print a password, even in a hint: such a URI is shown masked.
                options += [common.flag, mask_uri(value) if common.name == "uri" else value]
        return shlex.join(["ctxbatch", *words, *options])

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


pass_state = click.make_pass_decorator(State, ensure=True)
