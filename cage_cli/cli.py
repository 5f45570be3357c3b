"""The `cage` command line: a thin Typer layer over the library (cage_cli.annotate etc.)."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="cage",
    help="Annotate faces in photos and videos with facial expression, valence and arousal.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
