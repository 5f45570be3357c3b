"""The CLI reads like a manual: `cage --version`, metavars instead of Python types, an example in
every command's help, and a default model for `cage annotate` / `cage evaluate`.
Reads only examples/, so it runs in a bare clone too (conftest.EXAMPLES_ONLY)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer
from conftest import NOFACE, cage
from typer.testing import CliRunner

from cage_cli import DEFAULT_MODEL, __version__
from cage_cli.annotation.io.read import read_run_info
from cage_cli.cli import app

GROUP = typer.main.get_command(app)
COMMANDS = sorted(GROUP.commands)
PYTHON_TYPES = re.compile(r"<(str|bool|int|float|list|path|tuple)\b|\{[a-z_]+\}")


def help_text(*command: str) -> str:
    r = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    return r.output


def test_version_is_the_one_runs_record(tmp_path: Path) -> None:
    r = cage("--version")
    assert r.exit_code == 0 and r.stdout == f"cage {__version__}\n"
    out = tmp_path / "faces.parquet"
    assert cage("annotate", NOFACE, "-o", out, "-q").exit_code == 0
    assert read_run_info(out)[0]["tool_version"] == __version__


def test_all_commands_are_checked() -> None:
    assert {"annotate", "evaluate", "export", "models", "plot", "render", "summary",
            "train"} <= set(COMMANDS)


@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_help_names_values_and_shows_an_example(command: str) -> None:
    words = [command] if command else []
    text = help_text(*words)
    assert not PYTHON_TYPES.findall(text), f"`cage {command} --help` shows Python types"
    # At least one example invocation, as a line of its own.
    assert re.search(rf"^\s+cage {command}\S* ", text, re.M), f"no example in `cage {command}`"


def test_every_value_option_gets_a_metavar() -> None:
    """New options (also ones added on other branches) need a metavar: one list of misses."""
    missing = [f"cage {name} {p.opts[0]}" for name, cmd in GROUP.commands.items()
               for p in cmd.params if not getattr(p, "is_flag", False) and not p.metavar]
    assert not missing, "give these a metavar (PATH, FILE, N, SECONDS, ...): " + ", ".join(
        missing)


def test_defaults_are_shown() -> None:
    text = help_text("annotate")
    assert f"[default: {DEFAULT_MODEL}]" in text
    assert "[default: 960]" in text and "[default: (every frame)]" in text
    assert DEFAULT_MODEL in help_text("evaluate")


@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_help_shows_every_option_name_in_full_at_80_columns(command: str) -> None:
    """In a terminal 80 columns wide, every option of every command is named in full: rich
    cuts a word too long for its column with an ellipsis (issue 32: ``--no-ray-gpu-actor…``)."""
    words = [command] if command else []
    r = CliRunner().invoke(app, [*words, "--help"], env={"COLUMNS": "80"})
    assert r.exit_code == 0, r.output
    text = r.output
    assert max(map(len, text.splitlines())) <= 80
    cut = [line for line in text.splitlines() if "\u2026" in line]
    assert not cut, f"`cage {command} --help` cuts words at 80 columns: {cut}"
    cmd = GROUP.commands[command] if command else GROUP
    names = [name for p in cmd.params if p.param_type_name == "option" and not p.hidden
             for name in (*p.opts, *p.secondary_opts)] + ["--help"]
    missing = [n for n in names if not re.search(rf"(?<![\w-]){re.escape(n)}(?![\w-])", text)]
    assert not missing, f"`cage {command} --help` at 80 columns lacks {missing}"


def test_readme_model_table_is_the_registry() -> None:
    """README's "Which model runs" table names every model `cage models` lists, and no other
    (issue 32: it lacked cage-custom); the one marked (default) is the default."""
    from cage_cli.models import list_models

    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = text[text.index("## Which model runs"):]
    section = section[: section.index("\n## ")]
    rows = [line.split("|")[1] for line in section.splitlines()
            if line.startswith("| `")]
    named = [name for cell in rows for name in re.findall(r"`([^`]+)`", cell)]
    assert sorted(named) == sorted(list_models(None))  # expression and embedding models
    listed = CliRunner().invoke(app, ["models"], env={"COLUMNS": "200"}).output
    assert all(re.search(rf"^\W*{re.escape(n)}\b", listed, re.M) for n in list_models(None))
    assert [n for cell in rows if "(default)" in cell
            for n in re.findall(r"`([^`]+)`", cell)] == [DEFAULT_MODEL]
