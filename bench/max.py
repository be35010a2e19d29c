"""max: the fan-out at a rising offered rate, step by step on the same tabs, until a step
fails (p99 over the bound, any error, gap or unfinished mutation, or achieved < 95% of
offered); the answer is the highest rate that held."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import uvloop

from . import fanout
from .harness import Target, products, report
from .http import open_carts
from .pool import Pool

MAX_STEPS = 40


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--carts", type=int, default=100)
    parser.add_argument("--tabs", type=int, default=3, help="tabs per cart")
    parser.add_argument("--start", type=float, default=1000.0, help="first offered rate (/s)")
    parser.add_argument("--step", type=float, default=1000.0, help="added to the rate each step")
    parser.add_argument("--max-rate", type=float, default=20_000.0, help="last step at most")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured time per step")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured time per step")
    parser.add_argument("--p99", type=float, default=20.0, help="bound on p99 (ms)")
    fanout.procs_argument(parser)


def check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    steps = int((args.max_rate - args.start) / args.step) + 1 if args.step > 0 else 0
    if not (0 < args.start <= args.max_rate and 0 < steps <= MAX_STEPS):
        parser.error(f"--start, --step and --max-rate must give 1..{MAX_STEPS} steps")
    if not 0 < args.seconds <= 60 or args.max_rate * args.seconds > 2_000_000:
        parser.error("a step is bounded: at most 60 s and 2,000,000 mutations")
    if not (0 < args.carts <= 50_000 and 0 < args.tabs <= 64 and 0 < args.procs <= 32):
        parser.error("--carts 1..50000, --tabs 1..64, --procs 1..32")


def failure(step: dict[str, Any], p99_bound: float) -> str | None:
    """Why a step did not hold, or None."""
    if step["errors"] or step["unfinished"]:
        return f"{step['errors']} errors, {step['unfinished']} unfinished"
    if step["gaps"] or step["duplicates"] or step["out_of_order"]:
        return "gaps, duplicates or out-of-order patches"
    if step["achieved_rate"] < 0.95 * step["offered_rate"]:
        return "achieved < 95% of offered"
    if not step["latency_ms"]["p99"] <= p99_bound:  # NaN (nothing completed) fails too
        return f"p99 over {p99_bound:g} ms"
    return None


def _step_line(step: dict[str, Any]) -> str:
    lat = step["latency_ms"]
    return (
        f"{step['offered_rate']:>7,.0f}/s  achieved {step['achieved_rate']:>7,.0f}/s"
        f"  p50 {lat['p50']:6.2f}  p99 {lat['p99']:7.2f}  max {lat['max']:7.1f} ms"
        f"  {step['failed'] or 'held'}"
    )


def main(args: argparse.Namespace, target: Target) -> None:
    ids = products(target.url, fanout.PRODUCTS)
    signed = uvloop.run(open_carts(target.url, args.carts))
    steps: list[dict[str, Any]] = []
    held: dict[str, Any] | None = None
    with Pool(target.urls, signed, args.tabs, args.procs, ids) as pool:
        pool.open()
        rate = args.start
        while rate <= args.max_rate + 1e-9:
            raw = pool.run(rate, args.seconds, args.warmup, args.carts, target.pid)
            step = fanout.summarize(raw, rate, args.tabs)
            step["failed"] = failure(step, args.p99)
            steps.append(step)
            print(f"  step {_step_line(step)}", file=sys.stderr, flush=True)
            if step["failed"]:
                break
            held = step
            rate += args.step
    best = held["offered_rate"] if held else None
    result = {
        "carts": args.carts,
        "tabs_per_cart": args.tabs,
        "procs": args.procs,
        "p99_bound_ms": args.p99,
        "seconds_per_step": args.seconds,
        "max_rate": best,
        "max_deliveries_per_s": held["deliveries_per_s"] if held else None,
        "stopped_by": steps[-1]["failed"] or "reached --max-rate",
        "steps": steps,
    }
    table = [
        ("carts x tabs", f"{args.carts} x {args.tabs} ({args.procs} generator procs)"),
        ("bound", f"p99 <= {args.p99:g} ms, no errors/gaps, achieved >= 95% of offered"),
        (
            "highest rate held",
            f"{best:,.0f} mutations/s ({held['deliveries_per_s']:,.0f} patch deliveries/s)"
            if held
            else "none (the first step failed)",
        ),
        ("stopped by", result["stopped_by"]),
    ]
    table += [(f"step {n + 1}", _step_line(step)) for n, step in enumerate(steps)]
    report("max", table, result)
