"""How a setting is declared: its environment variable, type and unit, default, one line of
help and the values it allows. settings_service.py, settings_shop.py and settings_limits.py
declare each setting once with these; parsing (config.Settings.from_env), README's table
and `serve --help` are read off the declarations."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import Field, dataclass, field
from typing import Any

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
FLAGS = {"1": True, "true": True, "yes": True, "on": True}
FLAGS |= {"0": False, "false": False, "no": False, "off": False}


class ConfigError(ValueError):
    """A setting in the environment has a value the server cannot use."""


def parse_duration(text: str) -> float:
    """Seconds from '0.5s', '30m', '2h', '30d', '250ms' or a bare number of seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*", text)
    if not match:
        raise ValueError(f"expected a duration like '30m', '0.5s' or '30d', got {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


def format_duration(seconds: float) -> str:
    """'30d', '2h', '0.5s', '250ms': the largest unit that writes it exactly."""
    for unit in ("d", "h", "m", "s"):
        count = seconds / _UNITS[unit]
        if count >= 1 and count.is_integer():
            return f"{int(count)}{unit}"
    return f"{seconds * 1000:g}ms" if seconds < 1 else f"{seconds:g}s"


@dataclass(frozen=True)
class Var:
    """One environment variable: what it is, what it allows, how it becomes a value."""

    env: str
    help: str
    shown: str  # the default, as the docs show it
    allowed: str  # "a whole number from 1 to 65535": what the error message says
    parse: Callable[[str], Any]  # raises ValueError on a value outside `allowed`
    # A default that follows other settings (declared before this one), by field name.
    derive: Callable[[Mapping[str, Any]], Any] | None = None
    show: Callable[[str], str] = repr  # a bad value, as the message echoes it
    hidden: bool = False  # a secret, or a URL that may hold one: never in a repr
    strip: bool = True
    unit: str = ""  # "s" for durations (float seconds), "bytes" for sizes

    def write(self, value: Any) -> str:
        """The value as this variable would be set to it."""
        if isinstance(value, bool):
            return str(int(value))
        if isinstance(value, tuple):
            return ",".join(value)
        if self.unit == "s":
            return format_duration(value)
        return str(value)

    def read(self, raw: str) -> Any:
        try:
            return self.parse(raw)
        except ValueError:
            raise ConfigError(f"{self.env} must be {self.allowed}; got {self.show(raw)}") from None


def secret_length(raw: str) -> str:
    return f"{len(raw)} characters"


def declared(var: Var, default: Any) -> Any:
    """The dataclass field of a setting; typed Any so that `x: int = integer(...)` checks."""
    return field(default=default, repr=not var.hidden, metadata={"var": var})


def var_of(f: Field[Any]) -> Var:
    var = f.metadata["var"]
    assert isinstance(var, Var)
    return var


def _code(value: object) -> str:
    return f"`{value}`"


def text(
    env: str,
    help: str,
    default: str = "",
    *,
    allowed: str = "any text",
    check: Callable[[str], str] | None = None,
    shown: str = "",
    secret: bool = False,
    show: Callable[[str], str] = repr,
    strip: bool = True,
) -> Any:
    """A string; `check` normalises it and raises ValueError on what is not allowed. A
    secret is never echoed nor in a repr; `show` echoes a bad value otherwise."""
    shown = shown or (_code(default) if default else "*(unset)*")
    show = secret_length if secret else show
    hidden = secret or show is not repr  # echoed redacted: a URL that may hold a password
    var = Var(env, help, shown, allowed, check or str, None, show, hidden, strip)
    return declared(var, default)


def choice(env: str, help: str, default: str, choices: tuple[str, ...], upper: bool = False) -> Any:
    """One of a few words, in either case."""

    def check(raw: str) -> str:
        word = raw.upper() if upper else raw.lower()
        if word not in choices:
            raise ValueError(raw)
        return word

    allowed = "one of " + ", ".join(choices)
    return declared(Var(env, help, _code(default), allowed, check), default)


def integer(
    env: str,
    help: str,
    default: int,
    *,
    minimum: int = 1,
    maximum: int | None = None,
    unit: str = "",
    shown: str = "",
    derive: Callable[[Mapping[str, Any]], Any] | None = None,
) -> Any:
    """A whole number (ASCII digits only) within [minimum, maximum]."""
    noun = f"a whole number of {unit}" if unit else "a whole number"
    allowed = f"{noun} from {minimum} to {maximum}" if maximum else f"{noun}, at least {minimum}"

    def check(raw: str) -> int:
        if not (raw.isascii() and raw.isdigit()):
            raise ValueError(raw)
        value = int(raw)
        if value < minimum or (maximum is not None and value > maximum):
            raise ValueError(raw)
        return value

    var = Var(env, help, shown or _code(default), allowed, check, derive, unit=unit)
    return declared(var, default)


def rate(env: str, help: str, default: float) -> Any:
    """Events per second: a positive, finite number."""

    def check(raw: str) -> float:
        value = float(raw)
        if not (0 < value and math.isfinite(value)):
            raise ValueError(raw)
        return value

    allowed = "a number per second above 0 (0.5, 20)"
    return declared(Var(env, help, _code(f"{default:g}"), allowed, check), default)


def duration(env: str, help: str, default: str, *, minimum: str = "") -> Any:
    """A time span in seconds (float), written '250ms', '0.5s', '30m', '2h', '30d' or '10'.
    Zero is refused unless a minimum allows it: every span here is a wait or a lifetime."""
    least = parse_duration(minimum) if minimum else 0.0
    bound = f"of at least {minimum}" if minimum else "above 0"
    allowed = f"a duration {bound}, like '30m', '0.5s' or '30d'"

    def check(raw: str) -> float:
        value = parse_duration(raw)
        if value < least or value <= 0:
            raise ValueError(raw)
        return value

    var = Var(env, help, _code(default), allowed, check, unit="s")
    return declared(var, parse_duration(default))


def flag(
    env: str,
    help: str,
    default: bool,
    *,
    shown: str = "",
    derive: Callable[[Mapping[str, Any]], Any] | None = None,
) -> Any:
    """On or off: 1/0, true/false, yes/no, on/off."""

    def check(raw: str) -> bool:
        return FLAGS[raw.lower()] if raw.lower() in FLAGS else _refuse(raw)

    allowed = "1 or 0 (also true/false, yes/no, on/off)"
    var = Var(env, help, shown or _code(int(default)), allowed, check, derive)
    return declared(var, default)


def listing(
    env: str,
    help: str,
    default: tuple[str, ...],
    *,
    allowed: str,
    item: Callable[[str], str],
    shown: str,
) -> Any:
    """Comma-separated entries; blanks between commas are skipped."""

    def check(raw: str) -> tuple[str, ...]:
        return tuple(item(entry.strip()) for entry in raw.split(",") if entry.strip())

    return declared(Var(env, help, shown, allowed, check), default)


def _refuse(raw: str) -> Any:
    raise ValueError(raw)


def markdown_table(declarations: list[Var]) -> str:
    """README's configuration table, one row per variable."""
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    rows += [f"| `{v.env}` | {v.shown} | {v.help} |" for v in declarations]
    return "\n".join(rows) + "\n"


def plain(markdown: str) -> str:
    """Help text for a terminal: links lose their targets, code its backticks."""
    no_links = re.sub(r"\[([^\]]+)\]\([^)]*\)", r"\1", markdown)
    return no_links.replace("`", "").replace("*(", "(").replace(")*", ")")
