"""Outbox delivery: signed POSTs to CART_EVENTS_WEBHOOK_URL, retried until a 2xx, once."""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from server.config import ConfigError, Settings
from server.outbox import retry_delay, signature
from tests.lifecycle_support import epoch, events, query, until
from tests.support import ServerProcess, passes, rest

EVENTS_SECRET = "whsec-cart-events-for-tests"


def verify(secret: str, header: str, body: bytes, tolerance: float = 300.0) -> bool:
    """What a shop does with Cart-Signature (as in the README's snippet)."""
    fields = dict(part.split("=", 1) for part in header.split(","))
    timestamp = int(fields["t"])
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    fresh = abs(time.time() - timestamp) <= tolerance
    return fresh and hmac.compare_digest(expected.hexdigest(), fields["v1"])


class Receiver:
    """A webhook endpoint on 127.0.0.1 that answers 500 to the first `failures` POSTs."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (the stdlib's name)
                body = self.rfile.read(int(self.headers["content-length"]))
                status = 500 if len(receiver.calls) < receiver.failures else 200
                receiver.calls.append(
                    {
                        "at": time.time(),
                        "headers": dict(self.headers),
                        "body": body,
                        "status": status,
                    }
                )
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.http.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http.server_address[1]}/hooks/cart"

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    made = Receiver(failures=2)
    yield made
    made.close()


async def test_an_event_is_retried_until_accepted_then_delivered_once_with_a_valid_signature(
    make_server: Callable[..., ServerProcess], receiver: Receiver
) -> None:
    server = make_server(
        {
            "ABANDON_AFTER": "0.3s",
            "CART_EVENTS_WEBHOOK_URL": receiver.url,
            "CART_EVENTS_SECRET": EVENTS_SECRET,
        }
    ).start()
    async with rest(server) as client:
        cart = (await client.post("/api/cart/items", json={"product_id": "p-005"})).json()

    def delivered() -> list[dict[str, Any]] | None:
        rows = events(server.db, cart["id"])
        return rows if rows and rows[0]["delivered_at"] else None

    [event] = await until(delivered, 10, "the event to be delivered")
    assert [call["status"] for call in receiver.calls] == [500, 500, 200]
    assert event["attempts"] == 3
    ok = receiver.calls[-1]
    assert epoch(event["delivered_at"]) >= ok["at"] - 0.002  # marked after the 200, not before
    for call in receiver.calls:  # every try: the same event, body and a valid signature
        headers = {k.lower(): v for k, v in call["headers"].items()}
        assert headers["content-type"] == "application/json"
        assert headers["cart-event-id"] == str(event["id"])
        assert headers["cart-event-type"] == "abandoned"
        assert verify(EVENTS_SECRET, headers["cart-signature"], call["body"])
        assert not verify("another secret", headers["cart-signature"], call["body"])
        assert not verify(EVENTS_SECRET, headers["cart-signature"], call["body"] + b" ")
        assert call["body"].decode() == _raw_payload(server, event["id"])
    # Capped exponential backoff: 0.5 s, then 1 s, between tries.
    first, second, third = (call["at"] for call in receiver.calls)
    assert 0.45 <= second - first < 1.5
    assert 0.95 <= third - second < 2.5
    report_delay = ok["at"] - epoch(event["created_at"])
    print(f"\n[timing] event created -> delivered after 2 failures: {report_delay * 1000:.0f} ms")

    # Delivered exactly once: no more POSTs while the sender keeps polling.
    await passes([server], "cart_outbox_polls_total", 4)
    assert len(receiver.calls) == 3
    listed = server.cli("events", "--undelivered")
    assert listed.returncode == 0 and listed.stdout == ""


def _raw_payload(server: ServerProcess, event_id: int) -> str:
    [(payload,)] = query(server.db, "SELECT payload FROM cart_events WHERE id = ?", event_id)
    text: str = payload
    return text


def test_a_webhook_url_needs_a_secret() -> None:
    with pytest.raises(ConfigError, match="CART_EVENTS_SECRET"):
        Settings.from_env({"CART_EVENTS_WEBHOOK_URL": "https://shop.example/hooks/cart"})
    settings = Settings.from_env(
        {"CART_EVENTS_WEBHOOK_URL": "https://shop.example/h", "CART_EVENTS_SECRET": " sEcReT "}
    )
    assert (settings.events_webhook_url, settings.events_secret) == (
        "https://shop.example/h",
        "sEcReT",
    )
    assert "sEcReT" not in repr(settings)  # never logged with the settings


@pytest.mark.parametrize("url", ["shop.example/hooks", "ftp://shop.example/h", "https://"])
def test_a_webhook_url_must_be_http(url: str) -> None:
    env = {"CART_EVENTS_WEBHOOK_URL": url, "CART_EVENTS_SECRET": "s"}
    with pytest.raises(ConfigError, match="http:// or https://"):
        Settings.from_env(env)


def test_the_server_refuses_to_start_with_a_url_and_no_secret(
    make_server: Callable[..., ServerProcess],
) -> None:
    server = make_server({"CART_EVENTS_WEBHOOK_URL": "http://127.0.0.1:9/hooks"}, catalog=False)
    result = server.cli("--port", "9")
    assert result.returncode == 2
    assert "CART_EVENTS_WEBHOOK_URL is set: CART_EVENTS_SECRET must be too" in result.stderr


def test_signature_and_backoff_values() -> None:
    header = signature("secret", 1_800_000_000, b'{"a":1}')
    expected = hmac.new(b"secret", b'1800000000.{"a":1}', hashlib.sha256).hexdigest()
    assert header == f"t=1800000000,v1={expected}"
    assert [retry_delay(n) for n in (1, 2, 3, 4, 10, 11, 50)] == [
        0.5,
        1.0,
        2.0,
        4.0,
        256.0,
        300.0,
        300.0,
    ]
