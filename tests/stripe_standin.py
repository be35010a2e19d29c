"""A local stand-in for the three Stripe Checkout endpoints the server calls, run in a
thread on 127.0.0.1. It records every request and behaves like Stripe where the server
relies on it: idempotency keys replay the first answer (and refuse other parameters),
`expires_at` must lie 30 minutes to 24 hours after creation, a paid session refuses to
expire. Failures can be scripted for the next create requests."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

MIN_EXPIRY = 30 * 60
MAX_EXPIRY = 24 * 3600


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]  # lower-cased names
    form: dict[str, str]  # the form body as sent: "line_items[0][quantity]" -> "1"


@dataclass
class StandIn:
    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[Recorded] = field(default_factory=list)
    # What the next create requests do, in order: "500", "400", "drop" (close the
    # connection unanswered), "drop_after_create" (make the session, then drop the answer).
    create_failures: list[str] = field(default_factory=list)
    create_delay: float = 0.0
    expire_delay: float = 0.0  # seconds before an expire request is handled
    clock_skew: float = 0.0  # seconds this "Stripe" runs ahead of the server's clock
    outage: bool = False  # every request answered 503, telling the library not to retry
    lock: threading.Lock = field(default_factory=threading.Lock)
    _keys: dict[str, tuple[dict[str, str], dict[str, Any]]] = field(default_factory=dict)
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    @property
    def base(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> StandIn:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                standin._handle(self)

            def do_POST(self) -> None:
                standin._handle(self)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # --- what tests look at and change ----------------------------------------------

    def creates(self) -> list[Recorded]:
        with self.lock:
            return [
                r for r in self.requests if r.method == "POST" and r.path == "/v1/checkout/sessions"
            ]

    def expires(self) -> list[Recorded]:
        with self.lock:
            return [r for r in self.requests if r.method == "POST" and r.path.endswith("/expire")]

    def pay(self, session_id: str, amount_total: int | None = None) -> dict[str, Any]:
        """The shopper paid on Stripe's page: the session is complete."""
        with self.lock:
            session = self.sessions[session_id]
            session.update(
                status="complete",
                payment_status="paid",
                payment_intent=f"pi_{uuid.uuid4().hex[:14]}",
            )
            if amount_total is not None:
                session["amount_total"] = amount_total
            return dict(session)

    # --- the HTTP side ----------------------------------------------------------------

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("content-length") or 0)
        body = h.rfile.read(length).decode() if length else ""
        path = urlsplit(h.path).path
        form = dict(parse_qsl(body, keep_blank_values=True))
        headers = {k.lower(): v for k, v in h.headers.items()}
        with self.lock:
            self.requests.append(Recorded(h.command, path, headers, form))
        if self.outage:
            unavailable = _error("api_error", "down for maintenance")
            return self._answer(h, 503, unavailable, {"stripe-should-retry": "false"})
        if h.headers.get("authorization", "") != "Bearer sk_test_standin":
            return self._answer(h, 401, _error("authentication_error", "bad key"))
        parts = path.strip("/").split("/")
        if h.command == "POST" and parts == ["v1", "checkout", "sessions"]:
            return self._create(h, form, headers.get("idempotency-key"))
        if parts[:3] == ["v1", "checkout", "sessions"] and len(parts) >= 4:
            if h.command == "POST" and parts[4:] == ["expire"] and self.expire_delay:
                time.sleep(self.expire_delay)  # not under the lock: other requests go on
            with self.lock:
                session = self.sessions.get(parts[3])
                if session is None:
                    return self._answer(h, 404, _error("invalid_request_error", "no such session"))
                if h.command == "GET" and len(parts) == 4:
                    return self._answer(h, 200, dict(session))
                if h.command == "POST" and parts[4:] == ["expire"]:
                    if session["status"] != "open":
                        message = f"session is {session['status']}, not open"
                        return self._answer(h, 400, _error("invalid_request_error", message))
                    session["status"] = "expired"
                    return self._answer(h, 200, dict(session))
        self._answer(h, 404, _error("invalid_request_error", f"unknown path {path}"))

    def _create(self, h: BaseHTTPRequestHandler, form: dict[str, str], key: str | None) -> None:
        if self.create_delay:
            time.sleep(self.create_delay)
        with self.lock:
            failure = self.create_failures.pop(0) if self.create_failures else None
            if failure == "drop":
                return self._drop(h)
            if failure == "500":
                return self._answer(h, 500, _error("api_error", "try again"))
            if failure == "400":
                return self._answer(h, 400, _error("invalid_request_error", "refused"))
            if key is not None and key in self._keys:
                first_form, first = self._keys[key]
                if first_form != form:
                    message = (
                        "Keys for idempotent requests can only be used with the same parameters"
                    )
                    return self._answer(h, 400, _error("idempotency_error", message))
                return self._answer(h, 200, dict(first), {"idempotent-replayed": "true"})
            now = int(time.time() + self.clock_skew)
            expires = int(form.get("expires_at", now + MAX_EXPIRY))
            if not MIN_EXPIRY <= expires - now <= MAX_EXPIRY:
                message = "expires_at must be 30 minutes to 24 hours after creation"
                return self._answer(h, 400, _error("invalid_request_error", message))
            session = _session(form, now, expires)
            self.sessions[session["id"]] = session
            if key is not None:
                self._keys[key] = (form, session)
            if failure == "drop_after_create":
                return self._drop(h)
            return self._answer(h, 200, dict(session))

    def _answer(
        self,
        h: BaseHTTPRequestHandler,
        status: int,
        doc: dict[str, Any],
        extra: dict[str, str] | None = None,
    ) -> None:
        raw = json.dumps(doc).encode()
        h.send_response(status)
        h.send_header("content-type", "application/json")
        h.send_header("content-length", str(len(raw)))
        h.send_header("request-id", f"req_{uuid.uuid4().hex[:12]}")
        for name, value in (extra or {}).items():
            h.send_header(name, value)
        h.end_headers()
        h.wfile.write(raw)

    def _drop(self, h: BaseHTTPRequestHandler) -> None:
        # As if the network failed after the request left: no status line at all.
        h.close_connection = True
        h.connection.shutdown(socket.SHUT_RDWR)


def _error(kind: str, message: str) -> dict[str, Any]:
    return {"error": {"type": kind, "message": message}}


def _session(form: dict[str, str], now: int, expires: int) -> dict[str, Any]:
    total = 0
    n = 0
    while f"line_items[{n}][quantity]" in form:
        unit = int(form[f"line_items[{n}][price_data][unit_amount]"])
        total += unit * int(form[f"line_items[{n}][quantity]"])
        n += 1
    session_id = f"cs_test_{uuid.uuid4().hex}"
    metadata = {
        key[len("metadata[") : -1]: value
        for key, value in form.items()
        if key.startswith("metadata[")
    }
    return {
        "id": session_id,
        "object": "checkout.session",
        "url": f"https://checkout.stripe.test/c/pay/{session_id}",
        "status": "open",
        "payment_status": "unpaid",
        "mode": form.get("mode"),
        "amount_total": total,
        "currency": form.get("line_items[0][price_data][currency]"),
        "client_reference_id": form.get("client_reference_id"),
        "metadata": metadata,
        "payment_intent": None,
        "created": now,
        "expires_at": expires,
        "success_url": form.get("success_url"),
        "cancel_url": form.get("cancel_url"),
    }


def signature(secret: str, payload: bytes, timestamp: int | None = None) -> str:
    """A Stripe-Signature header for `payload`, as Stripe computes it."""
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def event(kind: str, session: dict[str, Any], event_id: str | None = None, **changes: Any) -> bytes:
    """A Stripe event about a Checkout Session, as JSON bytes."""
    return json.dumps(
        {
            "id": event_id or f"evt_{uuid.uuid4().hex[:24]}",
            "object": "event",
            "type": kind,
            "created": int(time.time()),
            "livemode": False,
            "data": {"object": {**session, **changes}},
        }
    ).encode()
