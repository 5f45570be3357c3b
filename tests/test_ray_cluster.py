"""`cage annotate --ray-address` on real two-node clusters started here with `ray start` on
this machine (a head node and a second node, one CPU each), as a user starts them: one with
token authentication on the default address, one on --node-ip-address=127.0.0.1 without.
Connecting without the token fails in one line; losing the second node mid-run keeps exactly
a local run's rows. Ports 6470-6499; every process started is stopped by its id."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import MEDIA
from test_runs import assert_same_rows

from cage_cli.annotation.running.cluster import have_ray

pytestmark = pytest.mark.skipif(not have_ray(), reason="ray is not installed")
SAMPLING = ["--max-frames", "12"]
TOKEN = "cage-test-token-0123456789abcdef"
ROOT = Path(__file__).resolve().parent.parent


class Cluster:
    """A head node and a second node (custom resource ``node2``) started by `ray start` in
    a private temporary folder and home (so no ~/.ray/auth_token of this machine's user is
    used or written), on ports ``port`` to ``port + 14``."""

    def __init__(self, port: int, token: bool, loopback: bool):
        self.port, self.token = port, token
        self.dir = Path(tempfile.mkdtemp(prefix="cage-ray-", dir="/tmp"))  # short socket paths
        (self.dir / "home").mkdir()
        self.env = {**os.environ, "HOME": str(self.dir / "home"),
                    "RAY_AUTH_MODE": "token" if token else "disabled"}
        self.env.pop("RAY_ADDRESS", None)
        if token:
            self.env["RAY_AUTH_TOKEN"] = TOKEN
        self.ip = ["--node-ip-address=127.0.0.1"] if loopback else []
        self.address = f"127.0.0.1:{port}"

    def start(self) -> None:
        common = [*self.ip, f"--temp-dir={self.dir / 'ray'}", "--num-cpus=1",
                  "--object-store-memory=100000000", "--disable-usage-stats"]
        p = self.port
        self._ray("start", "--head", f"--port={p}", "--include-dashboard=false",
                  f"--min-worker-port={p + 1}", f"--max-worker-port={p + 6}",
                  f"--dashboard-agent-listen-port={p + 13}", *common)
        self._ray("start", f"--address={self.address}", '--resources={"node2": 1}',
                  f"--min-worker-port={p + 7}", f"--max-worker-port={p + 12}",
                  f"--dashboard-agent-listen-port={p + 14}", *common)

    def _ray(self, *args: str) -> None:
        r = subprocess.run([sys.executable, "-m", "ray.scripts.scripts", *args], env=self.env,
                           capture_output=True, text=True, timeout=180)
        assert r.returncode == 0, r.stdout + r.stderr

    def processes(self) -> list:
        """Every process of this cluster (or run against it): those with its private home
        in their environment (Ray's daemons, its workers, cage's drivers)."""
        import psutil

        home = self.env["HOME"]
        found = []
        for p in psutil.process_iter():
            try:
                if p.pid != os.getpid() and p.environ().get("HOME") == home:
                    found.append(p)
            except (psutil.Error, OSError):
                pass
        return found

    def second_raylet(self):  # noqa: ANN201 - a psutil.Process
        for p in self.processes():
            cmd = p.cmdline()
            if cmd and cmd[0].endswith("raylet") and any(
                    a.startswith("--static_resource_list=node2,") for a in cmd):
                return p
        raise AssertionError("the second node's raylet is not running")

    def stop(self) -> None:
        import psutil

        procs = self.processes()
        for p in procs:
            try:
                p.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(procs, timeout=30)
        shutil.rmtree(self.dir, ignore_errors=True)

    def driver(self, out: str, *extra: str, token: bool = True, home: Path | None = None,
               tmp: Path | None = None) -> subprocess.Popen:
        """`cage annotate MEDIA -o out --ray-address` in a process of its own (with the
        cluster's token, unless not ``token``; its $HOME and $TMPDIR can be set)."""
        env = {**self.env, "PYTHONPATH": str(ROOT)}
        if home is not None:
            env["HOME"] = str(home)
        if tmp is not None:
            env["TMPDIR"] = str(tmp)
        if not token:
            env.pop("RAY_AUTH_TOKEN", None)
            env.pop("RAY_AUTH_MODE", None)
        return subprocess.Popen(
            [sys.executable, "-m", "cage_cli", "annotate", str(MEDIA), "-o", str(out),
             *SAMPLING, "--ray-address", self.address, *extra],
            cwd=str(ROOT), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def cluster(port: int, token: bool, loopback: bool) -> Iterator[Cluster]:
    c = Cluster(port, token, loopback)
    try:
        c.start()
        yield c
    finally:
        c.stop()


def kill_second_node(c: Cluster, killed: list[float]) -> None:
    """SIGKILL the second node's raylet as soon as one of its workers runs an
    ``annotate_task`` (so a task is in flight there when the node goes)."""
    raylet = c.second_raylet()
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            busy = [w for w in raylet.children(recursive=True)
                    if (w.cmdline() or [""])[0].startswith("ray::annotate_task")]
        except Exception:  # noqa: BLE001 - a worker that just exited
            busy = []
        if busy:
            os.kill(raylet.pid, signal.SIGKILL)
            killed.append(time.monotonic())
            return
        time.sleep(0.05)


def lose_node_mid_run(c: Cluster, local: pa.Table, out: Path, *extra: str,
                      tmp: Path | None = None) -> tuple[str, str]:
    """Run over the media into the folder ``out`` while the second node is killed with a
    task on it: exit 0 and exactly the local run's rows (same ids, no duplicates). Returns
    stdout, stderr."""
    killed: list[float] = []
    killer = threading.Thread(target=kill_second_node, args=(c, killed))
    killer.start()
    proc = c.driver(f"{out}/", *extra, tmp=tmp)
    try:
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        proc.kill()
        killer.join()
    assert killed, "no task ran on the second node"
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert_same_rows(pa.concat_tables(pq.read_table(p) for p in out.glob("part-*.parquet")),
                     local)
    return stdout, stderr


class TestTokenCluster:
    """`ray start --head` with RAY_AUTH_MODE=token, nodes on their default address."""

    @pytest.fixture(scope="class")
    @classmethod
    def c(cls) -> Iterator[Cluster]:
        yield from cluster(6470, token=True, loopback=False)

    def test_without_the_token_one_line_fast(self, c: Cluster, tmp_path: Path) -> None:
        """No token in the environment nor in ~/.ray/auth_token: one line that says what to
        set, exit 2, in seconds (Ray alone retries for a minute, a line each second); a
        wrong token: one line too; nothing written."""
        (tmp_path / "home").mkdir()
        t0 = time.monotonic()
        proc = c.driver(str(tmp_path / "o.parquet"), token=False, home=tmp_path / "home")
        stdout, stderr = proc.communicate(timeout=120)
        took = time.monotonic() - t0
        assert proc.returncode == 2 and stdout == ""
        assert stderr == (
            f"cage: error: the Ray cluster at {c.address} needs its authentication token: "
            "set RAY_AUTH_MODE=token, and RAY_AUTH_TOKEN to the cluster's token (or "
            "RAY_AUTH_TOKEN_PATH to a file holding it, or put it in ~/.ray/auth_token); "
            "`ray get-auth-token` on the head node prints it\n")
        assert took < 30, took  # the process's start and model load included
        assert not (tmp_path / "o.parquet.cage-partial").exists()

        env_token = c.env["RAY_AUTH_TOKEN"]
        c.env["RAY_AUTH_TOKEN"] = "not-the-token"
        try:
            proc = c.driver(str(tmp_path / "o.parquet"))
        finally:
            c.env["RAY_AUTH_TOKEN"] = env_token
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 2
        assert stderr.startswith(f"cage: error: the Ray cluster at {c.address} rejected this "
                                 "machine's authentication token") and stderr.count("\n") == 1

    def test_node_lost_mid_run(self, c: Cluster, local: pa.Table, tmp_path: Path) -> None:
        """With the token; the second node lost with a task on it: the local rows, and one
        cage line for the event (Ray's messages in the log file)."""
        _, stderr = lose_node_mid_run(c, local, tmp_path / "ds", tmp=tmp_path)
        lines = [x for x in stderr.splitlines() if x.startswith("cage:")]
        assert len(lines) == 1 and lines[0].startswith("cage: a Ray node was lost (")
        assert lines[0].endswith(f"Ray's messages are in {tmp_path}/cage-ray.log")
        assert "Raylet is terminated" in (tmp_path / "cage-ray.log").read_text()


class TestLoopbackCluster:
    """Nodes started with --node-ip-address=127.0.0.1, no token authentication."""

    @pytest.fixture(scope="class")
    @classmethod
    def c(cls) -> Iterator[Cluster]:
        yield from cluster(6485, token=False, loopback=True)

    def test_node_lost_mid_run_quiet(self, c: Cluster, local: pa.Table,
                                     tmp_path: Path) -> None:
        """Under --quiet nothing at all on the terminal; the local rows."""
        stdout, stderr = lose_node_mid_run(c, local, tmp_path / "ds", "-q")
        assert stdout == "" and stderr == ""
