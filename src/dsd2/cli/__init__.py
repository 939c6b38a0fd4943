"""The ``dsd2`` command line: thin wrappers that parse, call, print and set the exit code.

User errors (``UserError``) print one line and exit 2; ``--debug`` shows the traceback.
The commands live by area (``runs``, ``explore``, ``results``, ``sweep``), what they draw in
``render``; this module builds the app, lists the commands in their ``--help`` order and runs them.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable
from typing import Any

import typer
import typer.core
from rich.text import Text

from dsd2.cli import explore, render, results, runs, sweep
from dsd2.cli.render import console, dip_rich_table, err_console, round_line, rounds_table, strategy_rich_table
from dsd2.errors import UserError

__all__ = ["app", "console", "dip_rich_table", "err_console", "main", "round_line", "rounds_table", "strategy_rich_table"]


def _no_bool_placeholder(params: list[Any]) -> list[Any]:
    # typer's help shows a flag (--quiet, --help) as taking a "<bool>" value, which it does not
    for p in params:
        if getattr(p, "is_flag", False) and p.metavar is None:
            p.metavar = ""
    return params


class _Command(typer.core.TyperCommand):
    def get_params(self, ctx: Any) -> list[Any]:
        return _no_bool_placeholder(super().get_params(ctx))


class _Group(typer.core.TyperGroup):
    def get_params(self, ctx: Any) -> list[Any]:
        return _no_bool_placeholder(super().get_params(ctx))


app = typer.Typer(
    cls=_Group,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Study and dodge sparse double descent (DSD²).",
)
_STATE = {"debug": False}


def _version(value: bool) -> None:
    if value:
        from dsd2 import __version__

        render.console.print(f"dsd2 {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    _STATE["debug"] = debug


# (name, function), in the order `dsd2 --help` lists them; every command's --help without "<bool>" (see _Command)
_COMMANDS: list[tuple[str, Callable[..., Any]]] = [
    ("run", runs.run),
    ("resume", runs.resume),
    ("show", runs.show),
    ("config", explore.config_cmd),
    ("presets", explore.presets),
    ("models", explore.models),
    ("stop", results.stop),
    ("stop-rules", results.stop_rules_cmd),
    ("compare", results.compare_cmd),
    ("pipeline", runs.pipeline_cmd),
    ("fetch", sweep.fetch),
    ("demo", runs.demo),
    ("estimate", explore.estimate),
    ("sweep", sweep.sweep),
    ("report", results.report),
    ("export", results.export_cmd),
]


def _flowed(doc: str | None) -> str:
    """A docstring with each paragraph on one line: rich help keeps a docstring's line breaks, which
    broke `dsd2 --help`'s command list raggedly at 80 columns; the terminal wraps it instead."""
    return "\n\n".join(" ".join(p.split()) for p in inspect.cleandoc(doc or "").split("\n\n"))


for _name, _fn in _COMMANDS:
    app.command(_name, cls=_Command, help=_flowed(_fn.__doc__))(_fn)


def main(argv: list[str] | None = None) -> int:
    render.RESUME["how"] = None  # set by the command once it knows its run
    render.RESUME["command"] = next((a for a in (sys.argv[1:] if argv is None else argv) if not a.startswith("-")), None)
    try:
        code = app(args=argv, standalone_mode=False)
        if code == 130:  # typer's answer to Ctrl-C when it does not exit itself
            render.err_console.print(render.interrupted_message(), highlight=False, soft_wrap=True)
        if isinstance(code, int) and code:
            return code
    except UserError as err:
        if _STATE["debug"]:
            raise
        # soft_wrap: no newline inserted into a message (a command it quotes stays copyable)
        render.err_console.print(Text.assemble(("error:", "bold red"), " ", str(err)), highlight=False, soft_wrap=True)
        return 2
    except (KeyboardInterrupt, typer.Abort):  # click may turn Ctrl-C into Abort
        render.err_console.print(render.interrupted_message(), highlight=False, soft_wrap=True)
        return 130
    except typer.TyperException as err:  # usage errors: unknown option, missing argument
        show = getattr(err, "show", None)
        if show is not None:
            show()
        return int(getattr(err, "exit_code", 2))
    return 0
