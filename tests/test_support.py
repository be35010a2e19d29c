"""The suite's own rule for what a test needs and does not find: skipped on a developer's
machine, a failure in CI (CI=true), decided in one place."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support import unavailable

TESTS = Path(__file__).parent


@pytest.mark.parametrize("value", ["true", "1", "yes", "TRUE", "True"])
def test_in_ci_what_is_missing_fails(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.fail.Exception, match=r"Redis is gone \(CI must provide it\)"):
        unavailable("Redis is gone")


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
