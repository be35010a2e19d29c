"""Settings from the environment, durations and database URLs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

import pytest

from server.config import (
    ConfigError,
    Settings,
    declarations,
    parse_duration,
    redact,
    settings_table,
    sqlite_path,
)
from server.variables import var_of
from tests.support import ServerProcess


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0.5s", 0.5),
        ("30m", 1800.0),
        ("2h", 7200.0),
        ("30d", 2_592_000.0),
        ("250ms", 0.25),
        ("10", 10.0),
        ("1.5", 1.5),
        (" 5 s ", 5.0),
        ("0", 0.0),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "soon", "-5s", "5x", "1.5.5s", "s", "10 minutes", "1e3"])
def test_parse_duration_errors(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_defaults_from_an_empty_environment() -> None:
    settings = Settings.from_env({})
    assert settings == Settings()
    assert settings.database_url == "sqlite:///cart.db"
    assert settings.secret == ""
    assert settings.allowed_origins == ()
    assert settings.currency == "usd"
    assert settings.max_body_bytes == 16 * 1024
    assert settings.max_frame_bytes == 4 * 1024
    assert settings.ws_send_queue == 256
    assert settings.patch_history == 100
    assert settings.abandon_after_seconds == 1800.0
    assert settings.cart_ttl_seconds == 30 * 86400.0
    assert settings.sqlite_synchronous == "FULL"
    assert settings.demo_catalog is True
    assert settings.access_log is False
    # Limits: generous for people, far below what a loop or a bot does.
    assert settings.max_tabs_per_cart == 20
    assert settings.max_connections_per_ip == 100
    assert (settings.cart_rate, settings.cart_burst) == (50.0, 100)
    assert (settings.connection_rate, settings.connection_burst) == (20.0, 40)
    assert settings.ws_send_timeout_seconds == 5.0
    assert settings.ws_send_buffer == 256 * 1024
    assert settings.long_poll_max_seconds == 25.0
    # The connection layer.
    assert settings.max_sockets_per_ip == 200
    assert settings.header_timeout_seconds == 10.0
    assert settings.max_header_bytes == 32 * 1024
    assert settings.forwarded_allow_ips == ("127.0.0.1",)
    assert settings.forwarded_hops == 1


def test_connection_settings_are_read() -> None:
    settings = Settings.from_env(
        {
            "MAX_CONNECTIONS_PER_IP": "7",
            "HEADER_TIMEOUT": "2s",
            "MAX_HEADER_BYTES": "8192",
            "FORWARDED_ALLOW_IPS": " 10.0.0.1, 10.1.0.0/16 ,::1",
            "FORWARDED_HOPS": "2",
        }
    )
    assert settings.max_sockets_per_ip == 14  # twice MAX_CONNECTIONS_PER_IP unless set
    assert settings.header_timeout_seconds == 2.0
    assert settings.max_header_bytes == 8192
    assert settings.forwarded_allow_ips == ("10.0.0.1", "10.1.0.0/16", "::1")
    assert settings.forwarded_hops == 2
    assert Settings.from_env({"FORWARDED_ALLOW_IPS": "*"}).forwarded_allow_ips == ("*",)
    assert Settings.from_env({"MAX_SOCKETS_PER_IP": "300"}).max_sockets_per_ip == 300
    with pytest.raises(ConfigError, match="MAX_SOCKETS_PER_IP .* MAX_CONNECTIONS_PER_IP"):
        Settings.from_env({"MAX_SOCKETS_PER_IP": "50"})


def test_limits_are_read() -> None:
    settings = Settings.from_env(
        {
            "MAX_TABS_PER_CART": "5",
            "MAX_CONNECTIONS_PER_IP": "7",
            "CART_RATE_LIMIT": "2.5",
            "CART_RATE_BURST": "9",
            "CONNECTION_RATE_LIMIT": "0.5",
            "CONNECTION_RATE_BURST": "3",
            "WS_SEND_TIMEOUT": "500ms",
            "WS_SEND_BUFFER": "65536",
            "LONG_POLL_MAX": "50s",
        }
    )
    assert settings.max_tabs_per_cart == 5
    assert settings.max_connections_per_ip == 7
    assert (settings.cart_rate, settings.cart_burst) == (2.5, 9)
    assert (settings.connection_rate, settings.connection_burst) == (0.5, 3)
    assert settings.ws_send_timeout_seconds == 0.5
    assert settings.ws_send_buffer == 65536
    assert settings.long_poll_max_seconds == 50.0


def test_blank_values_fall_back_to_defaults() -> None:
    settings = Settings.from_env({"PATCH_HISTORY": "  ", "ABANDON_AFTER": "", "CURRENCY": " "})
    assert settings.patch_history == 100
    assert settings.abandon_after_seconds == 1800.0
    assert settings.currency == "usd"


def test_values_are_read_and_normalised() -> None:
    settings = Settings.from_env(
        {
            "DATABASE_URL": "sqlite:////var/lib/cart.db",
            "CART_SECRET": "s",
            "CURRENCY": "EUR",
            "WS_SEND_QUEUE": "32",
            "PATCH_HISTORY": " 5 ",
            "ABANDON_AFTER": "10m",
            "CART_TTL": "7d",
            "IDEMPOTENCY_TTL": "2h",
            "CATALOG_REFRESH": "250ms",
            "ROOM_IDLE": "30",
            "SQLITE_SYNCHRONOUS": "normal",
            "DEMO_CATALOG": "no",
            "ACCESS_LOG": "TRUE",
            "LOG_LEVEL": "DEBUG",
        }
    )
    assert settings.database_url == "sqlite:////var/lib/cart.db"
    assert settings.secret == "s"
    assert settings.currency == "eur"
    assert settings.ws_send_queue == 32
    assert settings.patch_history == 5
    assert settings.abandon_after_seconds == 600.0
    assert settings.cart_ttl_seconds == 7 * 86400.0
    assert settings.idempotency_ttl_seconds == 7200.0
    assert settings.catalog_refresh_seconds == 0.25
    assert settings.room_idle_seconds == 30.0
    assert settings.sqlite_synchronous == "NORMAL"
    assert settings.demo_catalog is False
    assert settings.access_log is True
    assert settings.log_level == "debug"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("WS_SEND_QUEUE", "-1"),
        ("WS_SEND_QUEUE", "0"),
        ("WS_SEND_QUEUE", "lots"),
        ("WS_SEND_QUEUE", "\u00b2"),  # a superscript two: a digit to str.isdigit, not to int
        ("MAX_BODY_BYTES", "16k"),
        ("MAX_FRAME_BYTES", "1.5"),
        ("WS_MAX_SIZE", "-4096"),
        ("PATCH_HISTORY", "0"),
        ("ABANDON_AFTER", "soon"),
        ("CART_TTL", "-1d"),
        ("IDEMPOTENCY_TTL", "1 day"),
        ("CATALOG_REFRESH", "5y"),
        ("ROOM_IDLE", "x"),
        ("SQLITE_SYNCHRONOUS", "OFF"),
        ("SQLITE_SYNCHRONOUS", "0"),
        ("DEMO_CATALOG", "maybe"),
        ("ACCESS_LOG", "2"),
        ("MAX_TABS_PER_CART", "0"),
        ("MAX_CONNECTIONS_PER_IP", "many"),
        ("CART_RATE_LIMIT", "0"),
        ("CART_RATE_LIMIT", "-5"),
        ("CART_RATE_LIMIT", "nan"),
        ("CART_RATE_LIMIT", "inf"),
        ("CONNECTION_RATE_LIMIT", "fast"),
        ("CONNECTION_RATE_BURST", "2.5"),
        ("WS_SEND_TIMEOUT", "forever"),
        ("WS_SEND_BUFFER", "256k"),
        ("LONG_POLL_MAX", "-1"),
        ("LOG_LEVEL", "verbose"),
        ("HEADER_TIMEOUT", "0"),
        ("HEADER_TIMEOUT", "never"),
        ("MAX_HEADER_BYTES", "32k"),
        ("MAX_SOCKETS_PER_IP", "0"),
        ("FORWARDED_HOPS", "0"),
        ("FORWARDED_ALLOW_IPS", "proxy.internal"),
        ("FORWARDED_ALLOW_IPS", "10.0.0.1, 10.0.0.300"),
    ],
)
def test_bad_values_raise_config_error_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({name: value})
    assert name in str(info.value)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("", ()),
        ("https://shop.example", ("https://shop.example",)),
        (
            " https://shop.example/ , http://localhost:3000/,,  ",
            ("https://shop.example", "http://localhost:3000"),
        ),
        ("https://a.example//", ("https://a.example",)),
    ],
)
def test_allowed_origins_parsing(raw: str, expected: tuple[str, ...]) -> None:
    assert Settings.from_env({"ALLOWED_ORIGINS": raw}).allowed_origins == expected


@pytest.mark.parametrize(
    ("url", "path"),
    [("sqlite:///cart.db", "cart.db"), ("sqlite:////abs/cart.db", "/abs/cart.db")],
)
def test_sqlite_path(url: str, path: str) -> None:
    assert sqlite_path(url) == path


@pytest.mark.parametrize(
    "url", ["sqlite://", "sqlite:///", "sqlite:///:memory:", "postgresql://h/db", "cart.db"]
)
def test_sqlite_path_errors(url: str) -> None:
    with pytest.raises(ConfigError, match="DATABASE_URL"):
        sqlite_path(url)


def test_scale_out_settings() -> None:
    assert Settings.from_env({}).redis_url == ""  # in-process fan-out by default
    settings = Settings.from_env(
        {
            "DATABASE_URL": "postgresql://app@db.internal/cart",
            "CART_SECRET": "s",
            "DATABASE_POOL": "4",
            "REDIS_URL": "rediss://:pw@redis.internal:6380",
            "REDIS_VERIFY_TLS": "0",
            "BUS_CHECK": "500ms",
            "PRESENCE_TTL": "1m",
        }
    )
    assert settings.database_url == "postgresql://app@db.internal/cart"
    assert settings.database_pool == 4
    assert settings.redis_url == "rediss://:pw@redis.internal:6380"
    assert settings.redis_verify_tls is False
    assert settings.bus_check_seconds == 0.5
    assert settings.presence_ttl_seconds == 60.0
    with pytest.raises(ConfigError, match="DATABASE_POOL"):
        Settings.from_env({"DATABASE_POOL": "0"})


def test_unknown_url_schemes_are_refused_without_showing_the_password() -> None:
    with pytest.raises(ConfigError, match="DATABASE_URL must be sqlite:///path or post") as info:
        Settings.from_env({"DATABASE_URL": "mysql://app:hunter2@db/cart"})
    assert "hunter2" not in str(info.value) and "app:***@db" in str(info.value)
    with pytest.raises(ConfigError, match="REDIS_URL must be a redis:// or rediss:// URL") as info:
        Settings.from_env({"REDIS_URL": "amqp://guest:guest@mq"})
    assert "guest:guest" not in str(info.value)
    postgres = Settings.from_env({"DATABASE_URL": "postgres://h/db", "CART_SECRET": "s"})
    assert postgres.database_url == "postgres://h/db"


def test_redact_hides_only_the_password() -> None:
    assert (
        redact("postgresql://app:s3cret@db:5432/cart?x=1")
        == "postgresql://app:***@db:5432/cart?x=1"
    )
    assert redact("redis://db:6379/0") == "redis://db:6379/0"


def test_a_heroku_dyno_with_sqlite_warns_loudly_at_start(
    make_server: Callable[..., ServerProcess],
) -> None:
    server = make_server({"DYNO": "web.1"}).start()
    server.stop()
    warnings = [line for line in server.lines if "DYNO=web.1 with a SQLite store" in line]
    assert len(warnings) == 1 and "WARNING" in warnings[0]
    assert "Add Heroku Postgres" in warnings[0]


def test_no_dyno_warning_off_heroku_or_with_postgres(caplog: pytest.LogCaptureFixture) -> None:
    from server.app import warn_ephemeral_disk

    with caplog.at_level("WARNING", logger="server"):
        warn_ephemeral_disk(Settings.from_env({}))
        postgres = {"DYNO": "web.1", "DATABASE_URL": "postgres://x/y", "CART_SECRET": "s"}
        warn_ephemeral_disk(Settings.from_env(postgres))
        assert caplog.records == []
        warn_ephemeral_disk(Settings.from_env({"DYNO": "web.2"}))
    assert [r.getMessage().startswith("!!! DYNO=web.2") for r in caplog.records] == [True]


def test_readme_table_is_the_declarations() -> None:
    """README's configuration table is `python -m server settings --markdown`: a setting
    added, renamed or re-described without regenerating the table fails here."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert settings_table() in readme, (
        "README.md's configuration table differs from the declarations:"
        " paste the output of `python -m server settings --markdown` over it"
    )


def test_every_setting_is_declared_once_with_its_variable() -> None:
    names = [var.env for var in declarations()]
    assert len(names) == len(set(names)) == len(fields(Settings))
    assert all(re.fullmatch(r"[A-Z][A-Z0-9_]+", name) for name in names)
    for var in declarations():
        assert var.help and var.shown and var.allowed, var.env


def test_durations_are_float_seconds_named_alike() -> None:
    """Every duration reads '30m', '0.5s', '30d' and lands in a float field whose name
    says seconds the same way."""
    durations = [f for f in fields(Settings) if var_of(f).unit == "s"]
    rates = [f for f in fields(Settings) if "per second" in var_of(f).allowed]
    floats = [f for f in fields(Settings) if f.type == "float"]
    assert len(durations) >= 14 and floats == sorted(durations + rates, key=floats.index)
    for f in durations:
        assert f.type == "float" and f.name.endswith("_seconds"), f.name
        env = var_of(f).env
        assert getattr(Settings.from_env({env: "1.5h"}), f.name) == 5400.0
    assert all(not f.name.endswith("_seconds") for f in rates)


@pytest.mark.parametrize(
    ("name", "value", "allowed"),
    [
        ("PORT", "84545", "from 1 to 65535"),
        ("PORT", "abc", "from 1 to 65535"),
        ("PORT", "0", "from 1 to 65535"),
        ("CURRENCY", "dollars", "3-letter ISO 4217"),
        ("CURRENCY", "xyz", "3-letter ISO 4217"),
        ("CART_TTL", "0", "at least 1m"),
        ("CART_TTL", "30s", "at least 1m"),
        ("ABANDON_AFTER", "0", "above 0"),
        ("MAX_BODY_BYTES", "-5", "whole number of bytes, at least 1"),
        ("NEW_CART_RATE", "0", "per second above 0"),
        ("ROOM_IDLE", "abc", "like '30m', '0.5s' or '30d'"),
        ("DEMO_LOGIN", "maybe", "1 or 0"),
        ("CHECKOUT_PRICE", "cheapest", "snapshot, current"),
        ("ALLOWED_ORIGINS", "shop.example", "origins like https://shop.example"),
        ("ROOT_PATH", "/a/../b", "a path like /cart"),
        ("STRIPE_API_BASE", "localhost:12111", "http:// or https://"),
        ("ADMIN_TOKEN", "hunter2", "at least 16 characters"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_variable_and_what_is_allowed(
    name: str, value: str, allowed: str
) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({name: value})
    message = str(info.value)
    assert message.startswith(f"{name} must be ") and allowed in message
    assert "\n" not in message
    if name == "ADMIN_TOKEN":
        assert value not in message  # a secret is never echoed


def test_rules_between_settings_and_the_disk(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="DATABASE_URL is PostgreSQL: CART_SECRET must be"):
        Settings.from_env({"DATABASE_URL": "postgresql://app@db/cart"})
    missing = f"sqlite:///{tmp_path}/nowhere/cart.db"
    with pytest.raises(ConfigError, match="DATABASE_URL names a SQLite file in .*nowhere"):
        Settings.from_env({"DATABASE_URL": missing})
    assert Settings.from_env({"DATABASE_URL": f"sqlite:///{tmp_path}/cart.db"})


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"PORT": "84545"}, "error: PORT must be a whole number from 1 to 65535; got '84545'"),
        ({"PORT": "abc"}, "error: PORT must be a whole number from 1 to 65535; got 'abc'"),
        ({"DATABASE_URL": "postgresql://app:pw@127.0.0.1:1/cart"}, "CART_SECRET must be set"),
        ({"DATABASE_URL": "sqlite:///no/such/dir/cart.db"}, "not a directory"),
        ({"CURRENCY": "dollars"}, "error: CURRENCY must be a 3-letter ISO 4217 currency code"),
        ({"CART_TTL": "0"}, "error: CART_TTL must be a duration of at least 1m"),
    ],
)
def test_the_server_stops_with_one_line_and_status_2(
    tmp_path: Path, env: dict[str, str], says: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "server"],
        env={**os.environ, **env},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert says in result.stderr
    assert "pw@" not in result.stderr


def test_a_port_option_is_checked_like_the_variable(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "server", "--port", "70000"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (result.returncode, result.stderr.count("\n")) == (2, 1)
    assert "PORT must be a whole number from 1 to 65535; got '70000'" in result.stderr


def test_settings_command_prints_values_and_hides_secrets(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "CART_TTL": "7d",
        "ADMIN_TOKEN": "a-secret-admin-token-0123",
        "REDIS_URL": "redis://:hunter2@cache:6379",
        "ALLOWED_HOSTS": "Shop.example,*.shop.example",
    }
    listed = subprocess.run(
        [sys.executable, "-m", "server", "settings"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert len(lines) == len(declarations())
    assert "CART_TTL=7d" in lines and "PORT=8000" in lines and "DEMO_LOGIN=0" in lines
    assert "ADMIN_TOKEN=(set)" in lines and "REDIS_URL=redis://:***@cache:6379" in lines
    assert "ALLOWED_HOSTS=shop.example,*.shop.example" in lines
    assert "hunter2" not in listed.stdout and "0123" not in listed.stdout


def test_serve_help_lists_every_variable() -> None:
    from server.__main__ import variables_help

    text = variables_help()
    for var in declarations():
        assert f"  {var.env} (default " in text
