"""The docs' commands still work: every block marked ``# doc-test`` in README.md and docs/*.md
runs, and what it prints still holds the numbers the doc shows.

How to mark a block (the marker is an ordinary comment, so the block reads and pastes as is)::

    ```sh
    # doc-test
    cage annotate ../shared/media/single_face.jpg -o faces.parquet
    # expect: faces 1
    cage annotate missing.jpg -o x.parquet
    # exit: 2
    ```

* ```` ```sh ```` blocks: each command (with ``\\`` continuation lines and ``<<EOF``
  here-documents) runs in ``bash``; it must exit 0, or the code given by a ``# exit: N`` line
  after it. Each ``# expect: TEXT`` line after a command must appear in its stdout + stderr,
  compared with table borders (``│ ┃ ─`` ...) and runs of white space made single spaces, so
  ``# expect: faces 87`` matches the summary row ``│ faces │ 87 │``.
* ```` ```python ```` blocks run as one script; ``# expect:`` lines inside check its output.

A doc's marked blocks run in order, in one fresh folder that stands in for the repository
root: a copy of the files git tracks (``examples/``, ``docs/`` ...; not what a user made in the
clone, such as the quick start's ``faces.parquet``), and ``../shared/media`` holds the shared
test media, as beside a checkout. So a reader can run the same commands from the repository
root. Outputs (``faces.parquet``, ``ds/``...) stay in the temporary folder, and the test checks
that the clone itself is unchanged; ``cage`` is the one in this Python environment.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import ROOT

MARKER = "# doc-test"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_BORDERS = re.compile(r"[\u2500-\u257f]")  # box drawing: rich's table borders
_HEREDOC = re.compile(r"<<-?\s*(['\"]?)(\w+)\1")


@dataclass
class Step:
    """One command (or python script) of a doc, with what it must print and exit with."""

    doc: str
    line: int  # where it starts in the doc (1-based)
    lang: str  # sh | python
    code: str
    expect: list[str] = field(default_factory=list)
    exit: int = 0


def steps(path: Path) -> list[Step]:
    """The commands of the blocks marked ``# doc-test`` in a Markdown file, in order."""
    lines = path.read_text(encoding="utf-8").splitlines()
    out: list[Step] = []
    i = 0
    while i < len(lines):
        m = re.match(r"^```(sh|bash|python)\s*$", lines[i])
        if not m:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        body = lines[i + 1 : end]
        if body and body[0].strip() == MARKER:
            out += _block_steps(path.name, i + 2, "python" if m[1] == "python" else "sh", body)
        i = end + 1
    return out


def _block_steps(doc: str, first: int, lang: str, body: list[str]) -> list[Step]:
    """Split a block into steps (python: the whole block is one)."""
    if lang == "python":
        step = Step(doc, first, lang, "\n".join(body))
        step.expect = [ln.split("# expect:", 1)[1].strip() for ln in body if "# expect:" in ln]
        return [step]
    out: list[Step] = []
    k = 0
    while k < len(body):
        text, start = body[k], k
        k += 1
        comment = text.strip()
        if comment.startswith("# expect:") and out:
            out[-1].expect.append(comment.removeprefix("# expect:").strip())
            continue
        if comment.startswith("# exit:") and out:
            out[-1].exit = int(comment.removeprefix("# exit:"))
            continue
        if not comment or comment.startswith("#"):
            continue
        command = [text]
        while command[-1].endswith("\\") and k < len(body):  # continuation lines
            command.append(body[k])
            k += 1
        heredoc = _HEREDOC.search(" ".join(command))
        if heredoc:  # the document, up to its terminator line
            while k < len(body):
                command.append(body[k])
                k += 1
                if command[-1].strip() == heredoc[2]:
                    break
        out.append(Step(doc, first + start, lang, "\n".join(command)))
    return out


def normalize(text: str) -> str:
    """Table borders and runs of white space -> one space."""
    return " ".join(_BORDERS.sub(" ", text).split())


def run_step(step: Step, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200", "NO_COLOR": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    argv = ["bash", "-c", step.code] if step.lang == "sh" else [sys.executable, "-c", step.code]
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600,
                          stdin=subprocess.DEVNULL)


def stand_in_root(tmp_path: Path, root: Path = ROOT) -> Path:
    """A folder laid out like the repository root, with ../shared beside it: a copy of the
    files git tracks in ``root`` (as they are in the working tree), so nothing a user made in
    the clone (``faces.parquet``, ``faces_rendered/``, ``ds/`` ...) is seen and nothing a doc
    command writes reaches the clone. ``../shared`` is a folder of links to the shared data."""
    listed = subprocess.run(["git", "-C", str(root), "ls-files", "-z"], capture_output=True,
                            text=True)
    if listed.returncode != 0:
        pytest.skip(f"not a git checkout ({listed.stderr.strip()}): the doc tests copy the "
                    "files git tracks")
    shared = tmp_path / "shared"
    shared.mkdir(parents=True)
    for entry in (root.parent / "shared").iterdir():
        (shared / entry.name).symlink_to(entry)
    repo = tmp_path / "repo"
    for name in listed.stdout.split("\0"):
        src = root / name
        if name and src.is_file():  # (a tracked file deleted in the working tree: gone)
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, repo / name, follow_symlinks=False)
    return repo


def clone_state(root: Path = ROOT) -> dict[str, tuple[int, int]]:
    """What a doc command could leave in the clone: the untracked and ignored paths git
    reports (caches aside), the ignored ones with their modification time and size (a
    folder's changes when an entry is added or removed). Tracked files are left out: the
    commands run on copies of them, and a contributor may edit or commit meanwhile."""
    out = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "-z", "--ignored"],
                         capture_output=True, text=True, check=True).stdout
    state = {}
    for entry in filter(None, out.split("\0")):
        path = entry[3:]
        if entry[:2] in ("??", "!!") and not any(
                c in path for c in ("__pycache__", ".pytest_cache", ".ruff_cache")):
            st = (root / path).lstat() if entry[:2] == "!!" else None
            state[entry] = (st.st_mtime_ns, st.st_size) if st else (0, 0)
    return state


MARKED = [p for p in DOCS if steps(p)]


@pytest.mark.parametrize("doc", MARKED, ids=[p.name for p in MARKED])
def test_doc_commands_run_and_print_what_the_doc_says(doc: Path, tmp_path: Path) -> None:
    cwd = stand_in_root(tmp_path)
    before = clone_state()
    for step in steps(doc):
        r = run_step(step, cwd)
        where = f"{step.doc}:{step.line}: {step.code.splitlines()[0]}"
        output = r.stdout + r.stderr
        assert r.returncode == step.exit, \
            f"{where}\nexit {r.returncode}, the doc expects {step.exit}\n{output[-3000:]}"
        seen = normalize(output)
        for text in step.expect:
            assert normalize(text) in seen, f"{where}\nexpected {text!r} in:\n{output[-3000:]}"
    assert clone_state() == before, "a doc command changed the clone itself"


def test_stand_in_root_is_what_git_tracks(tmp_path: Path) -> None:
    """Files a user made in the clone (the quick start's outputs, datasets, runs) are not in
    the stand-in root, and writing there leaves the clone as it was (issue 32: a quick start's
    faces.parquet, linked in, made the doc tests fail with 'exists')."""
    clone = tmp_path / "clone"
    (clone / "examples").mkdir(parents=True)
    (tmp_path / "shared" / "media").mkdir(parents=True)
    (clone / "README.md").write_text("readme\n")
    (clone / "examples" / "a.jpg").write_bytes(b"jpeg")
    git = ["git", "-C", str(clone), "-c", "user.name=t", "-c", "user.email=t@t"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "x"]):
        subprocess.run([*git, *args], check=True, capture_output=True)
    made = ["faces.parquet", "faces.png", "faces_rendered/a.jpg", "ds/part-0.parquet",
            "runs/r1/model.pt", "examples/new.parquet"]
    for name in made:
        (clone / name).parent.mkdir(parents=True, exist_ok=True)
        (clone / name).write_bytes(b"user's")
    (clone / "README.md").write_text("edited, not committed\n")
    before = clone_state(clone)

    repo = stand_in_root(tmp_path / "t", clone)
    files = sorted(str(p.relative_to(repo)) for p in repo.rglob("*") if not p.is_dir())
    assert files == ["README.md", "examples/a.jpg"]
    assert not any(p.is_symlink() for p in repo.rglob("*"))
    assert (repo / "README.md").read_text() == "edited, not committed\n"  # the working tree
    assert (repo.parent / "shared" / "media").resolve() == (tmp_path / "shared" / "media")
    r = subprocess.run(["bash", "-c", "echo x > README.md; echo x > examples/a.jpg; "
                        "mkdir -p ds faces_rendered; echo x > faces.parquet; "
                        "echo x > ds/part-0.parquet"], cwd=repo)
    assert r.returncode == 0
    assert clone_state(clone) == before
    assert all((clone / name).read_bytes() == b"user's" for name in made)
    assert (clone / "examples" / "a.jpg").read_bytes() == b"jpeg"
    assert (clone / "README.md").read_text() == "edited, not committed\n"


def test_walkthroughs_are_marked() -> None:
    """The pre-labelling walkthrough and the schema recipes are checked, not just a few lines."""
    marked = {p.name: steps(p) for p in MARKED}
    assert len(marked["prelabel.md"]) >= 6 and len(marked["schema.md"]) >= 3
    assert all(s.expect for s in marked["prelabel.md"] if s.code.startswith("cage "))


def test_block_parsing(tmp_path: Path) -> None:
    """Continuations, here-documents, expect/exit lines; unmarked blocks are left alone."""
    doc = tmp_path / "x.md"
    doc.write_text("\n".join([
        "```sh", "cage annotate not-marked", "```",
        "```sh", MARKER, "# a comment", "cage a \\", "  --b", "# expect: faces 3",
        "# expect: files ok 1", "cat > f.csv <<'EOF'", "x,y", "# not a comment", "EOF",
        "false", "# exit: 1", "```",
        "```python", MARKER, "print(1)  # expect: 1", "```", ""]))
    got = [(s.line, s.lang, s.code, s.expect, s.exit) for s in steps(doc)]
    assert got == [
        (7, "sh", "cage a \\\n  --b", ["faces 3", "files ok 1"], 0),
        (11, "sh", "cat > f.csv <<'EOF'\nx,y\n# not a comment\nEOF", [], 0),
        (15, "sh", "false", [], 1),
        (19, "python", f"{MARKER}\nprint(1)  # expect: 1", ["1"], 0),
    ]
    assert normalize("│ faces          │ 87 │\n") == "faces 87"


def test_ci_runs_the_readme_quick_start() -> None:
    """.ci/run follows the README as a new user does: the quick start's commands (its marked
    block, then the plot and render it names), then the tests beside what they left."""
    ci = (ROOT / ".ci" / "run").read_text()
    quick = ci[ci.index("README, Quick start"):ci.index("README, Test")]
    ran = [line.strip() for line in quick.splitlines() if line.strip().startswith("cage ")]
    lines = (ROOT / "README.md").read_text().splitlines()
    first = lines.index("## Quick start")
    end = next(i for i in range(first + 1, len(lines)) if lines[i].startswith("## "))
    marked = [s.code for s in steps(ROOT / "README.md") if first < s.line <= end]
    assert marked and ran[: len(marked)] == marked
    named = "\n".join(lines[first:end])
    assert ran[len(marked):] == ["cage plot faces.parquet", "cage render faces.parquet"]
    assert all(f"`{command}`" in named for command in ran[len(marked):])
    assert ci.index("README, Quick start") < ci.index("python -m pytest -q")
