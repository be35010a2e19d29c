"""Smoke tests of the load generator: every mode, tiny and bounded, against a real server;
the JSON line it prints must add up. Figures are not judged here (never a timed test)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bench import disk
from bench.harness import Probe, cpu_line, cpu_spent
from tests.support import ServerProcess

ROOT = Path(__file__).resolve().parent.parent


def run_bench(args: tuple[str, ...], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run `python -m bench ARGS` to the end."""
    return subprocess.run(
        [sys.executable, "-m", "bench", *args],
        cwd=ROOT,
        env=os.environ,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def last_json(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def bench(*args: str, timeout: float = 90) -> dict[str, Any]:
    """Run `python -m bench ARGS` to the end; its one JSON line."""
    proc = run_bench(args, timeout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = last_json(proc)
    assert result["machine"]["cores"] >= 1 and result["machine"]["python"]
    return result


def against(server: ServerProcess) -> tuple[str, ...]:
    assert server.proc is not None
    return ("--url", server.url, "--pid", str(server.proc.pid))


def assert_clean_fanout(run: dict[str, Any], mutations: int) -> None:
    assert run["mutations"] == mutations
    assert run["completed"] == mutations and run["unfinished"] == 0
    assert run["errors"] == run["gaps"] == run["duplicates"] == run["out_of_order"] == 0
    lat = run["latency_ms"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert run["server_cpu_ms_per_mutation"] > 0
    assert 0 <= run["server_loop_cpu_ms_per_mutation"] <= run["server_cpu_ms_per_mutation"]


def test_fanout_over_two_generator_processes(server: ServerProcess) -> None:
    args = ("--carts", "6", "--tabs", "2", "--rate", "100", "--seconds", "1", "--warmup", "0.2")
    result = bench(*against(server), "fanout", *args, "--procs", "2")
    assert result["tabs_failed"] == 0
    assert_clean_fanout(result, 100)
    assert result["deliveries_per_s"] > result["achieved_rate"] > 0
    # The server's own count of its commits over the run: every mutation among them.
    commits = result["commits"]
    assert commits["transactions"] * commits["writes_per_transaction"] >= 100
    assert commits["writes_per_transaction"] >= 1 and commits["transaction_ms_mean"] > 0
    assert commits["commit_ms_mean"] > 0 and 0 <= commits["writes_over_5_ms"] <= 1


def test_max_reports_the_last_step_that_held(server: ServerProcess) -> None:
    # Steps of 50 and 100 mutations: fewer (25 at 50/s) can use less than the one clock
    # tick /proc counts CPU in, and read as none.
    steps = ("--start", "100", "--step", "100", "--max-rate", "200", "--seconds", "0.5")
    # A bound no step misses (one fsync the disk holds up for 20 ms is a half-second
    # step's p99): this is about the steps, the bound's own test is the next one.
    steps += ("--p99", "10000")
    result = bench(*against(server), "max", "--carts", "4", "--tabs", "2", *steps)
    assert [s["offered_rate"] for s in result["steps"]] == [100, 200]
    assert result["max_rate"] == 200 and result["stopped_by"] == "reached --max-rate"
    for step, mutations in zip(result["steps"], (50, 100), strict=True):
        assert step["failed"] is None
        assert_clean_fanout(step, mutations)


def test_max_stops_at_the_first_step_over_the_bound(server: ServerProcess) -> None:
    steps = ("--start", "50", "--step", "50", "--max-rate", "200", "--seconds", "0.5")
    result = bench(*against(server), "max", "--carts", "2", "--tabs", "1", *steps, "--p99", "0.001")
    assert len(result["steps"]) == 1 and result["max_rate"] is None
    assert "p99" in result["stopped_by"]


def test_rest_clients_each_add_to_their_own_cart(server: ServerProcess) -> None:
    result = bench(*against(server), "rest", "--clients", "4", "--seconds", "1", "--warmup", "0.2")
    assert result["ok"] == result["requests"] > 0 and result["errors"] == 0
    assert set(result["statuses"]) == {"200"}
    assert result["requests_per_s"] == result["ok"] / 1.0
    assert 0 < result["latency_ms"]["p50"] <= result["latency_ms"]["max"]
    assert result["server_cpu_ms_per_request"] > 0
    assert 0 <= result["server_loop_cpu_ms_per_request"] <= result["server_cpu_ms_per_request"]


BUSY = """
import sys, threading, time
def spin(seconds):
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass
if sys.argv[1] == "thread":  # the main thread waits; another one works
    worker = threading.Thread(target=spin, args=(0.5,))
    worker.start()
    worker.join()
else:
    spin(0.5)
print("done", flush=True)
sys.stdin.read()  # held open until the test has read its CPU
"""


@pytest.mark.parametrize("where", ["thread", "main"])
def test_probe_tells_the_event_loops_cpu_from_the_other_threads(where: str) -> None:
    # The server's event loop runs on its main thread: Probe reads that thread's CPU apart
    # from the process's, and the bench reports the rest as the other threads' (the
    # SQLite writer's above all).
    proc = subprocess.Popen(
        [sys.executable, "-c", BUSY, where], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"done\n"
        probe = Probe(proc.pid)
        total, loop = probe.cpu_seconds(), probe.loop_cpu_seconds()
    finally:
        proc.communicate(b"", timeout=10)
    assert total >= 0.45
    if where == "thread":
        assert loop < 0.2  # the interpreter's start, not the spin
    else:
        assert loop >= 0.45 and total - loop < 0.2
    line = cpu_line(total * 1000, loop * 1000, "run")
    assert f"{total * 1000:.3f} ms per run: {loop * 1000:.3f} on the event loop" in line
    assert f"{(total - loop) * 1000:.3f} on other threads" in line
    assert cpu_line(None, None, "run") == "n/a (no --pid)"


class _Ticks(Probe):
    """A probe whose reads are given: (process, main thread) CPU, in seconds."""

    def __init__(self, *reads: tuple[float, float]) -> None:
        self.reads = list(reads)

    def cpu_split(self) -> tuple[float, float]:
        return self.reads.pop(0)


def test_the_loops_cpu_is_never_reported_over_the_whole() -> None:
    # Why a read can show the loop over the whole: see cpu_spent (measured: 271 reads in
    # 90,691 of a process busy on its main thread). The split reports the whole then.
    probe = _Ticks((1.00, 0.90), (1.50, 1.41))
    before = probe.cpu_split()
    assert cpu_spent(probe, before) == pytest.approx((0.50, 0.50))
    probe = _Ticks((1.00, 0.90), (1.50, 1.20))  # the other threads' 0.2 s stay theirs
    assert cpu_spent(probe, probe.cpu_split()) == pytest.approx((0.50, 0.30))
    assert cpu_spent(None, None) == (None, None)


def test_tabs_measures_rss_then_fans_out_beside_the_idle_tabs(server: ServerProcess) -> None:
    result = bench(
        *against(server),
        "tabs",
        *("--carts", "20", "--tabs", "3", "--active", "5", "--rate", "50"),
        *("--seconds", "1", "--warmup", "0.2", "--idle", "0.5", "--procs", "2"),
    )
    assert result["opened"] == 60 and result["failed"] == 0 and result["capped"] is None
    assert result["rss_tabs_bytes"] > result["rss_start_bytes"] > 0
    assert result["rss_per_tab_bytes"] is not None
    assert result["fanout"]["active_carts"] == 5
    assert_clean_fanout(result["fanout"], 50)
    pings = result["ping_rtt_ms"]
    assert pings["pings"] > 10 and pings["error"] is None
    assert 0 < pings["p50"] <= pings["p99"] <= pings["max"]
    assert result["gc_pause_max_ms"] is not None and result["gc_pause_max_ms"] >= 0


def test_a_closed_loop_keeps_a_window_in_flight_per_cart(server: ServerProcess) -> None:
    args = ("--carts", "3", "--tabs", "2", "--window", "2", "--seconds", "1", "--warmup", "0.2")
    result = bench(*against(server), "fanout", *args)
    assert result["window"] == 2 and result["mutations"] > 6
    assert_clean_fanout(result, result["mutations"])
    assert result["achieved_rate"] > 0


def test_the_floor_speaks_what_the_generator_measures() -> None:
    # 400, not 50: the floor's CPU for 50 mutations can stay under one clock tick (10 ms),
    # which /proc reports as none at all.
    result = bench("--floor", "fanout", "--carts", "3", "--tabs", "2", "--rate", "400",
                   "--seconds", "1", "--warmup", "0.2")  # fmt: skip
    assert_clean_fanout(result, 400)
    assert result["commits"] is None  # the floor stores nothing and has no /metrics
    rest = bench("--floor", "rest", "--clients", "2", "--seconds", "0.5", "--warmup", "0.1")
    assert rest["ok"] == rest["requests"] > 0 and set(rest["statuses"]) == {"200"}


def test_side_reports_each_figure_for_both_and_their_ratio() -> None:
    result = bench("side", "--reps", "1", "--seconds", "0.5", "--warmup", "0.1", timeout=240)
    figures = result["figures"]
    assert len(figures) == 5
    for figure in figures.values():
        assert figure["server"] > 0 and figure["floor"] > 0
        assert figure["ratio"] == pytest.approx(figure["server"] / figure["floor"])
    [run] = result["disk"]  # one round, one run of the disk alone
    assert run["syncs"] > 0 and 0 < run["sync_ms"]["p50"] <= run["sync_ms"]["max"]


def test_disk_syncs_on_schedule_in_the_directory_given(tmp_path: Path) -> None:
    result = bench("disk", "--seconds", "0.3", "--rate", "100", "--size", "8192",
                   "--dir", str(tmp_path))  # fmt: skip
    assert result["dir"] == str(tmp_path) and result["size"] == 8192
    # On schedule: never more than the rate allows (one late sync is not made up for).
    assert 0 < result["syncs"] <= 0.3 * 100 + 1
    ms = result["sync_ms"]
    assert 0 < ms["p50"] <= ms["p99"] <= ms["max"]
    assert 0 <= result["stalled_share"] < 1
    assert list(tmp_path.iterdir()) == []  # its file is gone


def test_writer_counts_the_frames_each_batch_writes_and_stores_every_edit() -> None:
    args = ("writer", "--carts", "5", "--edits", "8", "--warm", "3", "--batches", "6")
    result = bench(*args)
    assert result["batches"] == 6 and result["edits_per_batch"] == 8
    assert result["stored_as_applied"] is True  # each cart's stored version is its last edit's
    # Each batch changes a cart row, a line, a patch and a mutation id: pages of each.
    assert 4 <= result["frames_per_batch"] <= result["frames_per_batch_max"]
    assert result["cpu_ms_per_batch"]["user"] + result["cpu_ms_per_batch"]["system"] > 0
    assert 0 < result["wall_ms"]["p50"] <= result["wall_ms"]["max"]
    # The same seed writes the same pages, whatever the machine is doing meanwhile.
    assert bench(*args)["frames_per_batch"] == result["frames_per_batch"]


def test_writer_weighs_each_kind_of_row_by_leaving_it_out() -> None:
    args = ("writer", "--carts", "5", "--edits", "8", "--warm", "80", "--batches", "6")
    full = bench(*args)["frames_per_batch"]
    frames = {}
    for kinds in (["keys"], ["patches"], ["trims"], ["keys", "patches"]):
        result = bench(*args, *(arg for kind in kinds for arg in ("--without", kind)))
        assert result["without"] == sorted(kinds)
        assert result["stored_as_applied"] is True  # the carts' rows are still written
        frames[",".join(kinds)] = result["frames_per_batch"]
    # The same batches (same seed) with a kind of row left out write fewer pages; and
    # trims are a part of the patches' pages (80 warm batches of 8 take carts past the
    # history, so they run).
    assert frames["keys"] < full and frames["patches"] < frames["trims"] < full
    assert frames["keys,patches"] < min(frames["keys"], frames["patches"])


def test_disk_counts_the_stalls_and_the_time_they_take(tmp_path: Path) -> None:
    # A clock that only the syncs move: each takes the next of these, in seconds.
    durations = iter([0.001, 0.002, 0.050, 0.001, 0.020, 0.001, 0.001, 0.001, 0.001, 0.001])
    now = [0.0]
    synced: list[int] = []

    def sync(fd: int) -> None:
        synced.append(fd)
        now[0] += next(durations)

    def pause(seconds: float) -> None:
        now[0] += seconds

    result = disk.probe(str(tmp_path), 0.2, rate=50, size=4096, sync=sync,
                        clock=lambda: now[0], pause=pause)  # fmt: skip
    # Ten slots of 20 ms in 0.2 s; the 50 ms sync pushes the schedule back and is not made
    # up for, so the later syncs come 20 ms apart again: 0 .. 0.2 s holds 9 of them.
    assert result["syncs"] == len(synced) == 9
    assert result["stalls"] == 2  # the 50 ms and the 20 ms syncs: 10 ms or more
    assert result["stalled_share"] == pytest.approx(0.070 / now[0])
    assert result["sync_ms"]["max"] == pytest.approx(50.0)
    assert result["sync_ms"]["p50"] == pytest.approx(1.0)
    assert list(tmp_path.iterdir()) == []


def test_cold_restarts_its_own_server() -> None:
    result = bench("cold", "--carts", "5", "--lines", "3")
    assert result["how"] == "server restarted" and result["confirmed_cold"] is True
    assert result["wrong_snapshots"] == 0
    assert result["cold_ms"]["p50"] > 0 and result["warm_ms"]["p50"] > 0


def test_cold_waits_for_an_external_server_to_evict(
    make_server: Callable[..., ServerProcess],
) -> None:
    server = make_server({"ROOM_IDLE": "1s"}).start()
    result = bench(*against(server), "cold", "--carts", "3", "--lines", "2", "--evict-wait", "20")
    assert result["confirmed_cold"] is True and result["rooms_loaded_before_measuring"] == 0
    assert result["wrong_snapshots"] == 0


def test_catalog_loads_lists_and_times_a_change_to_the_tabs() -> None:
    args = ("--products", "300", "--requests", "3", "--changes", "3", "--carts", "2", "--tabs", "2")
    result = bench("catalog", *args)
    assert result["listed"] == 300 + 100  # the bench server's own catalog, and these
    assert 0 < result["whole_gzip_bytes"] < result["whole_bytes"]
    assert result["tabs"] == 4 and result["changes"] == 3
    for kind in ("whole_ms", "whole_304_ms", "page_100_ms", "ids_20_ms", "change_to_all_tabs_ms"):
        assert 0 < result[kind]["p50"] <= result[kind]["max"], kind


def test_attack_counts_held_and_refused_connections() -> None:
    # Its own server: 200 sockets per address (twice MAX_CONNECTIONS_PER_IP), 2 s for a head.
    args = ("--half-open", "250", "--probes", "5", "--header-mib", "2", "--timeout", "30")
    result = bench("--server-env", "HEADER_TIMEOUT=2s", "attack", *args)
    stall, huge = result["half_open"], result["huge_header"]
    assert stall["connected"] == 250
    assert stall["held"] == stall["held_answers_408"] == 200 and stall["refused"] == 50
    assert stall["held_still_open"] == 0 and stall["held_closed_after_s"] > 0
    assert stall["healthz_ok"] == stall["healthz_probes"] == 5
    assert huge["header_bytes"] == 2 * 1024 * 1024
    assert huge["answer"] == "HTTP/1.1 431 Request Header Fields Too Large"
    assert huge["healthz_ok"] == huge["healthz_probes"]


def test_counters_times_each_way_of_counting_and_counts_every_call() -> None:
    result = bench("counters", "--calls", "1000", "--repeat", "2")
    for case in ("labelled", "unlabelled"):
        run = result[case]
        assert run["dict_ns"] > 0 and run["counter_ns"] > 0 and run["metrics_ns"] > 0
        assert run["counted"] == 2000  # every timed call of Metrics.inc landed in /metrics


def bench_any(*args: str, timeout: float = 120) -> tuple[int, dict[str, Any]]:
    """Like bench(), for modes that exit 1 with a verdict: the code and the JSON line."""
    proc = run_bench(args, timeout)
    return proc.returncode, last_json(proc)


def test_churn_samples_every_growing_table_and_says_whether_they_level_off() -> None:
    # Too short to level off (the carts' TTL is 1 min): the samples and the verdict are there.
    code, run = bench_any("churn", "--minutes", "0.25", "--rate", "10", "--every", "2")
    assert run["outcomes"] == {"ok": 150}
    assert len(run["samples"]) >= 5
    last = run["samples"][-1]
    assert last["cart_sessions"] > 0 and last["applied_mutations"] > 0
    assert last["cart_database_bytes"] > 0 and last["rss"] > 0
    assert set(run["levelled"]) >= {"cart_events", "payment_events", "RSS", "database size"}
    assert code == (0 if all(run["levelled"].values()) else 1)


def test_soak_checks_every_ack_and_every_tab() -> None:
    code, run = bench_any(
        "soak", "--minutes", "0.25", "--shoppers", "4", "--rate", "10", "--every", "2"
    )
    failures = run["failures"]
    assert failures["acknowledged but not stored"] == 0, run["examples"]
    assert failures["tab or long-poll saw a version out of order"] == 0, run["examples"]
    assert failures["tab behind at the end"] == 0, run["examples"]
    assert run["acked"] > 50 and run["actions"]["ws_edit"] > 0
    assert len(run["samples"]) >= 5
    assert {"cart_event_loop_lag_seconds", "cart_outbox_pending"} <= set(run["samples"][0])
    assert code == (0 if not any(failures.values()) else 1)  # growth judged on long runs
