"""The suite's own rule for what a test needs and does not find: skipped on a developer's
machine, a failure in CI (CI=true), decided in one place."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests import browser_support
from tests.support import unavailable

TESTS = Path(__file__).parent


def raised(call: Callable[[], object]) -> pytest.ExceptionInfo[BaseException]:
    """What `call` raised, a skip included: caught here, so that a skip where a failure
    is due fails this test instead of skipping it."""
    with pytest.raises(BaseException) as outcome:
        call()
    return outcome


@pytest.mark.parametrize("value", ["true", "1", "yes", "TRUE", "True"])
def test_in_ci_what_is_missing_fails(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("CI", value)
    outcome = raised(lambda: unavailable("Redis is gone"))
    assert outcome.type is pytest.fail.Exception  # a skip here would pass in CI unseen
    assert str(outcome.value) == "Redis is gone (CI must provide it)"


@pytest.mark.parametrize("value", [None, "", "false", "0", "no"])
def test_elsewhere_what_is_missing_is_skipped(
    monkeypatch: pytest.MonkeyPatch, value: str | None
) -> None:
    if value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.skip.Exception, match="Redis is gone"):
        unavailable("Redis is gone")


def lines_outside_support(pattern: str) -> list[str]:
    """`module:line` of every line of the test modules (support.py and this one aside)
    that `pattern` matches."""
    found = re.compile(pattern)
    return [
        f"{path.name}:{n}"
        for path in sorted(TESTS.glob("*.py"))
        if path.name not in {"support.py", "test_support.py"}
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if found.search(line)
    ]


def test_no_test_module_reads_ci_on_its_own() -> None:
    own = lines_outside_support(r"""environ(\.get)?\s*[\[(]\s*["']CI["']|getenv\(\s*["']CI["']""")
    assert not own, f"use tests.support.unavailable / in_ci instead: {own}"


def test_the_only_skip_is_unavailable() -> None:
    """A skip anywhere else (a marker, importorskip, an xfail) would pass in CI with the
    feature it covers missing; unavailable() is the one that fails there instead."""
    found = lines_outside_support(
        r"pytest\.(skip\b|importorskip|xfail)|mark\.(skip|skipif|xfail)\b"
    )
    assert not found, f"use tests.support.unavailable instead: {found}"
    assert "pytest.skip(" in (TESTS / "support.py").read_text()  # the one, in unavailable()


# The three things a test may find missing, each taken away for real: CI fails, a
# developer's machine skips. Each runs the suite's own modules in a pytest of its own.
ROOT = TESTS.parent
BROWSER_MODULES = sorted(str(p.relative_to(ROOT)) for p in TESTS.glob("test_browser*.py"))
CLOSED = "127.0.0.1:9"  # the discard port: nothing listens there


def fake_playwright(tmp_path: Path) -> dict[str, str]:
    """An importable `playwright` that is not there: its import fails as a missing one."""
    (tmp_path / "playwright").mkdir()
    (tmp_path / "playwright" / "__init__.py").write_text("raise ImportError('no playwright')\n")
    return {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    }


MISSING: dict[str, tuple[list[str], Callable[[Path], dict[str, str]]]] = {
    "playwright": (["--collect-only", *BROWSER_MODULES], fake_playwright),
    "postgres": (
        ["tests/test_store.py::test_unknown_cart_loads_as_none", "-k", "postgres"],
        lambda _: {"TEST_POSTGRES_URL": f"postgresql://postgres@{CLOSED}/test"},
    ),
    "redis": (
        ["tests/test_bus.py::test_messages_reach_subscribers_in_order"],
        lambda _: {"TEST_REDIS_URL": f"redis://{CLOSED}/0"},
    ),
}


def run_suite(args: list[str], env: dict[str, str], ci: bool) -> tuple[int, str]:
    # Wide enough that pytest's summary lines are never cut short.
    environ = {k: v for k, v in os.environ.items() if k != "CI"} | env | {"COLUMNS": "1000"}
    if ci:
        environ["CI"] = "true"
    # Without the plugins none of these runs uses: loading them is half of each run.
    lean = ["-p", "no:cacheprovider", "-p", "no:schemathesis", "-p", "no:hypothesispytest"]
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", *lean, *args],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.returncode, done.stdout + done.stderr


@pytest.mark.parametrize("missing", sorted(MISSING))
def test_what_ci_lacks_fails_there_and_is_skipped_elsewhere(tmp_path: Path, missing: str) -> None:
    args, make_env = MISSING[missing]
    env = make_env(tmp_path)
    targets = [arg.split("::")[0] for arg in args if arg.startswith("tests/")]
    code, out = run_suite(args, env, ci=True)
    # Each module fails on its own, by name: one that skipped instead would be missing.
    failing = r"^ERROR (tests/\S+?\.py)\S* - Failed: .*\(CI must provide it\)$"
    failed = re.findall(failing, out, re.M)
    assert code != 0 and sorted(failed) == sorted(targets), out
    assert "skipped" not in out.lower(), out
    code, out = run_suite(args, env, ci=False)
    assert code in (0, 5), out  # 5: every module skipped
    assert re.search(rf"\b{len(targets)} skipped|SKIPPED \[{len(targets)}\]", out), out
    assert "CI must provide it" not in out and not re.search(r"\d+ (failed|error)", out), out


def test_in_ci_a_skip_from_anywhere_fails_the_run(tmp_path: Path) -> None:
    # A parametrization that finds nothing to run (a list of routes, files or pages that
    # came up empty) is skipped by pytest itself, with no unavailable() in sight.
    lost = tmp_path / "test_lost.py"
    lost.write_text("import pytest\n\n\n@pytest.mark.parametrize('page', [])\n"
                    "def test_every_page(page):\n    pass\n")  # fmt: skip
    args = ["-p", "tests.support", str(lost)]
    code, out = run_suite(args, {}, ci=True)
    assert code == pytest.ExitCode.TESTS_FAILED, out
    assert "skipped in CI: " in out and "test_every_page" in out, out
    code, out = run_suite(args, {}, ci=False)
    assert code == pytest.ExitCode.OK and "1 skipped" in out, out


def test_without_chromium_the_browser_tests_fail_in_ci(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Debian's Chromium is a file at a fixed path: moved aside here, not on the machine.
    monkeypatch.setattr(browser_support, "CHROMIUM", tmp_path / "chromium")
    monkeypatch.setenv("CI", "true")
    outcome = raised(browser_support.require_chromium)
    assert outcome.type is pytest.fail.Exception
    assert re.search(r"chromium is missing.*CI must provide it", str(outcome.value))
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="chromium is missing"):
        browser_support.require_chromium()
