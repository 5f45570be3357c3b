"""Shared test helpers. The small media come from examples/ (in the repository); the larger
ones (interview.mp4, the portraits) from ../shared/media (read-only, never copied here)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from cage_cli.cli import app

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
MEDIA = ROOT.parent / "shared" / "media"
DATA = ROOT.parent / "shared" / "data"
SINGLE = EXAMPLES / "single_face.jpg"
MULTI = EXAMPLES / "multiface.jpg"
NOFACE = EXAMPLES / "no_faces.jpg"
CLIP = EXAMPLES / "short_clip.mp4"
INTERVIEW = MEDIA / "interview.mp4"

#: Test modules that read only examples/: they also run in a clone without ../shared/media.
EXAMPLES_ONLY = {"test_cli_help.py"}


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Without ../shared/media, the modules that need it are not even imported..."""
    name = collection_path.name
    if not MEDIA.is_dir() and name.startswith("test_") and name.endswith(".py"):
        return name not in EXAMPLES_ONLY
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """...and the run stops with one line saying why, unless only those modules were asked for
    (``pytest tests/test_cli_help.py``)."""
    asked = {Path(arg.split("::")[0]).name for arg in config.args}
    if not MEDIA.is_dir() and not asked <= EXAMPLES_ONLY:  # pragma: no cover
        pytest.exit(f"test media not found at {MEDIA} (only {', '.join(sorted(EXAMPLES_ONLY))} "
                    "runs without it)", returncode=2)


def cage(*args: str | Path, input: str | None = None):
    """Run the CLI in-process; returns click's Result (exit_code, stdout, stderr)."""
    return CliRunner().invoke(app, [str(a) for a in args], input=input)


def read(path: Path) -> pa.Table:
    return pq.read_table(path)


@pytest.fixture(scope="module")
def local(request, tmp_path_factory) -> pa.Table:
    """The reference the --ray tests compare with: an ordinary local run over the shared media,
    with the test module's ``SAMPLING`` options."""
    out = tmp_path_factory.mktemp("local") / "local.parquet"
    r = cage("annotate", MEDIA, "-o", out, *request.module.SAMPLING)
    assert r.exit_code == 0, r.stderr
    return read(out)


@pytest.fixture(scope="session")
def s3():
    """A real S3 API on 127.0.0.1 (moto's server) with a bucket ``bkt``: yields the URI of a
    key in it (credentials and endpoint in the URI, so Ray's workers reach it too) and a
    pyarrow S3FileSystem to look inside."""
    from pyarrow.fs import S3FileSystem

    moto_server = pytest.importorskip("moto.server")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        fs = S3FileSystem(access_key="k", secret_key="s", endpoint_override=f"{host}:{port}",
                          scheme="http", allow_bucket_creation=True)
        fs.create_dir("bkt")
        yield (lambda key: f"s3://k:s@bkt/{key}?endpoint_override={host}:{port}&scheme=http",
               fs)
    finally:
        server.stop()


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """A folder with links to the three example photos (the originals stay untouched)."""
    d = tmp_path / "photos"
    d.mkdir()
    for p in (SINGLE, MULTI, NOFACE):
        (d / p.name).symlink_to(p)
    return d


@pytest.fixture
def copy_of(tmp_path: Path):
    def _copy(src: Path, name: str | None = None) -> Path:
        dst = tmp_path / (name or src.name)
        shutil.copyfile(src, dst)
        return dst

    return _copy
