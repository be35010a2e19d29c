"""What every benchmark mode shares: a server to measure, percentiles, the machine, output."""

from __future__ import annotations

import json
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any

import httpx

READY = "Uvicorn running on"
PRODUCTS = 100


def raise_nofile() -> tuple[int, int]:
    """Raise this process's open-file limit (soft) to its hard limit; (soft, hard) after.
    Thousands of sockets need thousands of descriptors; only the hard limit is a real cap."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


class Probe:
    """Reads a server process's memory, CPU and fd limit from /proc (same machine only)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def cpu_seconds(self) -> float:
        """User + system CPU the process (all its threads) has used so far."""
        return _cpu(Path(f"/proc/{self.pid}/stat"))

    def loop_cpu_seconds(self) -> float:
        """The same, of its main thread alone: the event loop's. The rest of the process's
        is its other threads' (the SQLite writer, checkpoints, the reader)."""
        return _cpu(Path(f"/proc/{self.pid}/task/{self.pid}/stat"))

    def cpu_split(self) -> tuple[float, float]:
        """(cpu_seconds, loop_cpu_seconds), the second read right after the first."""
        return self.cpu_seconds(), self.loop_cpu_seconds()

    def nofile(self) -> int:
        """The process's soft limit on open files."""
        for line in Path(f"/proc/{self.pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                return int(line.split()[3])
        return 0


def _cpu(stat: Path) -> float:
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class LocalServer:
    """`python -m server` on a fresh SQLite file in a temp dir, with a deep-stock catalog."""

    def __init__(self, env: dict[str, str] | None = None, workdir: Path | None = None) -> None:
        self.dir = workdir or Path(tempfile.mkdtemp(prefix="cart-bench-"))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.env = {
            **os.environ,
            "DATABASE_URL": f"sqlite:///{self.dir / 'bench.db'}",
            "CART_SECRET": "bench",
            "DEMO_CATALOG": "0",
            "LOG_LEVEL": "warning",
            # A load generator is one address driving carts far faster than people do.
            "MAX_CONNECTIONS_PER_IP": "100000",
            "CART_RATE_LIMIT": "1000000",
            "CART_RATE_BURST": "1000000",
            "CONNECTION_RATE_LIMIT": "1000000",
            "CONNECTION_RATE_BURST": "1000000",
            "NEW_CART_RATE": "1000000",
            "NEW_CART_BURST": "1000000",
            "MAX_CHECKOUTS_PER_IP": "1000000",
            **(env or {}),
        }
        catalog = [
            {
                "id": f"b-{n:03d}",
                "sku": f"B-{n:03d}",
                "name": f"Bench {n}",
                "price_cents": 1000 + n,
                "stock": 10_000_000,
            }
            for n in range(PRODUCTS)
        ]
        (self.dir / "catalog.json").write_text(json.dumps(catalog))
        subprocess.run(
            [sys.executable, "-m", "server", "import", str(self.dir / "catalog.json")],
            env=self.env,
            check=True,
            capture_output=True,
        )
        self.proc: subprocess.Popen[str] | None = None
        self.startups: list[float] = []  # seconds from spawn to listening, per start
        self.lines: list[str] = []  # the output of the current (or last) run

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> LocalServer:
        ready = threading.Event()
        env = {**self.env, "LOG_LEVEL": "info"}  # the ready line is logged at info
        started = time.perf_counter()
        proc = self.proc = subprocess.Popen(
            [sys.executable, "-m", "server", "--port", str(self.port)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            preexec_fn=raise_nofile,  # a server holding 20,000 tabs needs as many fds
        )
        self.lines = []

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                self.lines.append(line)
                if READY in line:
                    ready.set()
                elif " ERROR " in line or "Traceback" in line:
                    sys.stderr.write(f"server: {line}")
            ready.set()

        self._pump = threading.Thread(target=pump, daemon=True)
        self._pump.start()
        if not ready.wait(30) or proc.poll() is not None:
            raise RuntimeError("the server did not start:\n" + "".join(self.lines))
        self.startups.append(time.perf_counter() - started)
        return self

    def probe(self) -> Probe:
        assert self.proc is not None
        return Probe(self.proc.pid)

    def restart(self) -> LocalServer:
        """Stop and start again on the same database and port: every room starts cold."""
        self.stop()
        return self.start()

    def remove(self) -> None:
        """Stop, and delete the temp dir with its database."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        """Signal the server and wait for it; its exit code."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        proc.send_signal(sig)
        try:
            code = proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        self._pump.join(5)  # it ends at the pipe's end of file
        assert proc.stdout is not None
        proc.stdout.close()
        return code

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


class FloorServer:
    """bench/floor.py in a child process: the in-memory floor on the same stack."""

    def __init__(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FloorServer:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench", "floor", "--port", str(self.port)],
            preexec_fn=raise_nofile,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                httpx.get(f"{self.url}/api/products", trust_env=False, timeout=1)
                return self
            except httpx.TransportError:
                time.sleep(0.1)
        self.remove()
        raise RuntimeError("the floor server did not start")

    def remove(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class Target:
    """The server under test: one this run started, or --url (--pid to read its CPU and RSS)."""

    def __init__(
        self,
        urls: list[str],
        server: LocalServer | FloorServer | None = None,
        pid: int | None = None,
    ) -> None:
        self.urls = urls  # --url repeated: several processes of one deployment
        self.url = urls[0]
        self.server = server
        self._pid = pid

    @property
    def pid(self) -> int | None:
        if self.server is not None and self.server.proc is not None:
            return self.server.proc.pid
        return self._pid

    @property
    def probe(self) -> Probe | None:
        pid = self.pid
        return Probe(pid) if pid else None


def percentiles(samples: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99/max of `samples` (seconds), in milliseconds."""
    if not samples:
        return {"p50": float("nan"), "p90": float("nan"), "p99": float("nan"), "max": float("nan")}
    ordered = sorted(samples)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    return {"p50": at(0.50), "p90": at(0.90), "p99": at(0.99), "max": ordered[-1] * 1000}


def latency_line(lat: dict[str, float]) -> str:
    return (
        f"p50 {lat['p50']:.2f} ms  p90 {lat['p90']:.2f} ms"
        f"  p99 {lat['p99']:.2f} ms  max {lat['max']:.2f} ms"
    )


def cpu_spent(
    probe: Probe | None, before: tuple[float, float] | None
) -> tuple[float | None, float | None]:
    """The server's CPU since `before` (Probe.cpu_split): the process's and its event
    loop's; None, None without a server to read."""
    if probe is None or before is None:
        return None, None
    total, loop = probe.cpu_split()
    total, loop = total - before[0], loop - before[1]
    # The kernel rounds a process's CPU and its thread's each to clock ticks, and the two
    # are read a moment apart: a process that runs on its main thread alone (the floor)
    # can show its loop a tick over its whole.
    return total, min(loop, total)


def per(cpu_seconds: float | None, count: int) -> float | None:
    """Milliseconds of CPU per mutation (or request); None without a server to read."""
    return cpu_seconds * 1000 / count if cpu_seconds is not None and count else None


def cpu_line(total: float | None, loop: float | None, each: str) -> str:
    """The server's CPU per `each`, and how much of it was its event loop's: the rest is
    its other threads' (this server's SQLite writer above all; the floor has none), on
    another core if there is one."""
    if total is None or loop is None:
        return "n/a (no --pid)"
    rest = total - loop
    return f"{total:.3f} ms per {each}: {loop:.3f} on the event loop, {rest:.3f} on other threads"


def products(url: str, count: int) -> list[str]:
    """Ids of `count` products with the deepest stock, so a long run does not sell out."""
    with httpx.Client(base_url=url, trust_env=False, timeout=30) as client:
        listed = client.get("/api/products").raise_for_status().json()["products"]
    listed.sort(key=lambda p: (-p["stock"], p["id"]))
    found = [p["id"] for p in listed[:count]]
    if not found:
        raise RuntimeError(f"{url} lists no products to add")
    return found


def machine() -> dict[str, Any]:
    packages = {}
    for name in ("uvicorn", "starlette", "websockets", "msgspec", "uvloop", "httptools"):
        try:
            packages[name] = version(name)
        except Exception:
            packages[name] = "?"
    return {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "sqlite": __import__("sqlite3").sqlite_version,
        "loadavg_1m": os.getloadavg()[0],  # others on the machine make figures noisy
        **packages,
    }


def report(mode: str, table: list[tuple[str, str]], result: dict[str, Any]) -> None:
    """A human table, then one JSON line with everything."""
    width = max(len(k) for k, _ in table)
    print(f"\n{mode}")
    for key, value in table:
        print(f"  {key:<{width}}  {value}")
    line = {"mode": mode, **result, "machine": machine()}
    print(json.dumps(_finite(line), allow_nan=False), flush=True)


def _finite(value: Any) -> Any:
    """NaN (no samples) as null: the JSON line stays valid JSON."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value
