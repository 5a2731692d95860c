"""Run ``deploy/serve.sh N`` (N Streamlit replicas behind HAProxy) from Python, and watch its processes.

Shared by ``tests/test_deploy.py`` and ``bench/load.py --replicas``. Everything binds to 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests import server

SERVE_SH = server.ROOT / "deploy" / "serve.sh"
HAPROXY_CONFIG = server.ROOT / "deploy" / "haproxy.cfg"
#: The affinity cookie's name (deploy/serve.sh's default); its value names the replica (r1, r2, ...).
COOKIE = "CAM_REPLICA"
REQUIRE_HAPROXY_ENV = server.REQUIRE_BROWSER_ENV  # CI requires the balancer test like the browser ones
_REPLICA = re.compile(r"serve\.sh: replica (r\d+) pid (\d+) on [^:]+:(\d+), log (.+)$")
_HAPROXY = re.compile(r"serve\.sh: haproxy pid (\d+) on ")
_READY = re.compile(r"serve\.sh: ready: (http://\S+)")


@dataclass
class Replica:
    name: str
    pid: int
    port: int
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@dataclass
class Deployment:
    """A running ``deploy/serve.sh``: the balancer's URL and the processes behind it."""

    url: str
    proc: subprocess.Popen
    replicas: dict[str, Replica]
    haproxy_pid: int
    log_dir: Path
    output: list[str] = field(default_factory=list)  # serve.sh's own lines (stdout and stderr)

    def pids(self) -> list[int]:
        """The replicas' and HAProxy's process ids."""
        return [r.pid for r in self.replicas.values()] + [self.haproxy_pid]


def haproxy_path() -> str | None:
    """HAProxy, if installed (Debian: ``/usr/sbin/haproxy``, often not on a user's PATH)."""
    return shutil.which("haproxy") or next((p for p in ("/usr/sbin/haproxy",) if os.path.exists(p)), None)


def require_haproxy() -> str:
    """HAProxy's path; otherwise skip the test, or fail it where CAM_EXPLORER_REQUIRE_BROWSER is set."""
    import pytest

    path = haproxy_path()
    if path is None:
        message = "HAProxy is not installed (apt-get install haproxy)"
        if server.browser_required():
            pytest.fail(f"{message}, and {REQUIRE_HAPROXY_ENV} requires the browser tests")
        pytest.skip(message)
    return path


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, dead but not yet reaped by its parent, counts as gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] not in ("Z", "X")


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time the processes have used so far (Linux /proc), in seconds."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime (fields 14, 15 of stat)
    return total


def _pump(stream, lines: queue.Queue, keep: list[str]) -> None:
    for line in iter(stream.readline, ""):
        keep.append(line.rstrip("\n"))
        lines.put(line.rstrip("\n"))
    lines.put(None)


@contextlib.contextmanager
def serve(n: int, log_dir: Path, timeout: float = 300.0, config: Path | None = None,
          extra_env: dict[str, str] | None = None) -> Iterator[Deployment]:
    """Run ``deploy/serve.sh n`` on free 127.0.0.1 ports; yield once it says ready; stop it afterwards.

    ``config`` replaces deploy/haproxy.cfg (to check that a broken one is noticed).
    """
    haproxy = haproxy_path()
    if haproxy is None:
        raise RuntimeError("no HAProxy (apt-get install haproxy)")
    ports: set[int] = set()
    while len(ports) < n + 1:
        ports.add(server.free_port())
    port, *replica_ports = sorted(ports)
    env = dict(os.environ, PORT=str(port), HOST="127.0.0.1", REPLICA_HOST="127.0.0.1",
               REPLICA_PORTS=" ".join(map(str, replica_ports)), LOG_DIR=str(log_dir), HAPROXY=haproxy,
               PYTHON=os.environ.get("PYTHON", "python3"), PYTHONPATH=str(server.ROOT), **(extra_env or {}))
    if config is not None:
        env["HAPROXY_CFG"] = str(config)
    # Its own process group, so that a test failure can still stop everything it started.
    proc = subprocess.Popen(["bash", str(SERVE_SH), str(n)], cwd=server.ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: queue.Queue = queue.Queue()
    output: list[str] = []
    threading.Thread(target=_pump, args=(proc.stdout, lines, output), daemon=True).start()
    replicas: dict[str, Replica] = {}
    haproxy_pid = 0
    url = ""
    try:
        deadline = time.monotonic() + timeout
        while not url:
            try:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise RuntimeError(f"serve.sh not ready after {timeout:.0f} s: {output}") from None
            if line is None:
                raise RuntimeError(f"serve.sh exited ({proc.wait()}) before it was ready: {output}")
            if m := _REPLICA.search(line):
                replicas[m[1]] = Replica(m[1], int(m[2]), int(m[3]), Path(m[4]))
            elif m := _HAPROXY.search(line):
                haproxy_pid = int(m[1])
            elif m := _READY.search(line):
                url = m[1]
        yield Deployment(url, proc, replicas, haproxy_pid, log_dir, output)
    finally:
        stop(proc)


def stop(proc: subprocess.Popen, timeout: float = 30.0) -> int:
    """SIGTERM to serve.sh (it stops its replicas and HAProxy); the whole group is killed if it hangs."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # only this serve.sh's own group (start_new_session)
    return proc.wait()
