"""Settings, read once from the environment. Each is declared once, with its variable,
type and unit, default, help and what it allows, in settings_service.py, settings_shop.py
and settings_limits.py; README's configuration table is printed from those declarations
by `python -m server settings --markdown`."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from .settings_limits import LimitSettings
from .settings_service import ServiceSettings, redact, sqlite_path
from .settings_shop import ShopSettings
from .variables import ConfigError, Var, markdown_table, parse_duration, var_of

__all__ = ["ConfigError", "Settings", "parse_duration", "redact", "sqlite_path"]

PACKAGE_DIR = Path(__file__).resolve().parent
# Installed wheels carry static/ and schema.sql inside the package; a source checkout
# keeps them at the repository root.
_ROOT = PACKAGE_DIR if (PACKAGE_DIR / "schema.sql").exists() else PACKAGE_DIR.parent
SCHEMA_PATH = _ROOT / "schema.sql"
STATIC_DIR = _ROOT / "static"


@dataclass(frozen=True)
class Settings(LimitSettings, ShopSettings, ServiceSettings):
    """Every setting; fields come in the order of README's table (the service's, the
    shop's, then the limits). Durations are float seconds."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Settings from environment variables; a blank one is unset. The first bad value
        raises ConfigError, one line naming the variable and what it allows."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            var = var_of(f)
            raw = env.get(var.env, "")
            raw = raw.strip() if var.strip or not raw.strip() else raw
            if raw:
                values[f.name] = var.read(raw)
            else:
                values[f.name] = var.derive(values) if var.derive else f.default
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        """What one variable alone cannot say: the rules between them, and the disk."""
        if self.max_sockets_per_ip < self.max_connections_per_ip:
            raise ConfigError(
                f"MAX_SOCKETS_PER_IP ({self.max_sockets_per_ip}) must be at least"
                f" MAX_CONNECTIONS_PER_IP ({self.max_connections_per_ip}): every WebSocket"
                " and long-poll is a socket too"
            )
        if self.events_webhook_url and not self.events_secret:
            raise ConfigError("CART_EVENTS_WEBHOOK_URL is set: CART_EVENTS_SECRET must be too")
        if self.stripe_secret_key and not self.public_url:
            # Stripe's success and cancel URLs are absolute: never built from a Host header.
            raise ConfigError("STRIPE_SECRET_KEY is set: PUBLIC_URL must be too (https://shop…)")
        if not self.database_url.lower().startswith("sqlite"):
            if not self.secret:  # every process must sign cart ids alike
                raise ConfigError(
                    "DATABASE_URL is PostgreSQL: CART_SECRET must be set, the same in every"
                    " process (a long random string)"
                )
            return
        folder = Path(sqlite_path(self.database_url)).parent
        if not folder.is_dir():
            raise ConfigError(
                f"DATABASE_URL names a SQLite file in {str(folder)!r}, which is not a"
                " directory: create it, or name a file in one that exists"
            )


def declarations() -> list[Var]:
    return [var_of(f) for f in fields(Settings)]


def settings_table() -> str:
    """README's configuration table: `python -m server settings --markdown` prints it."""
    return markdown_table(declarations())
