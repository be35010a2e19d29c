"""What server/serving.py, server/connections.py and server/sockets.py take from uvicorn
and websockets beyond their public API, checked on the installed versions: an upgrade that
renames or removes one of these fails here, naming it, instead of as a stuck socket in
production.

The lists are read off the three modules: every `super().` of the classes that extend
uvicorn's and every `self.` they do not define, plus the objects they reach through.
test_the_lists_cover_what_the_modules_use parses the modules and fails on a name used
there and missing here."""

from __future__ import annotations

import ast
import asyncio
import base64
import inspect
import os
import re
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState

# serving.CartServer
SERVER_METHODS = ["startup", "shutdown", "run"]
SERVER_STATE = ["force_exit"]
CONFIG_KEYWORDS = [
    "http",  # a protocol class (connections.guarded_http), not only a name
    "ws",  # a protocol class (serving.stall_guarded)
    "ws_max_size",
    "ws_per_message_deflate",
    "ws_ping_interval",
    "ws_ping_timeout",
    "timeout_graceful_shutdown",
    "server_header",
    "proxy_headers",
]
# serving.StallGuardedProtocol: overridden, then called through super()
WS_METHODS = [
    "connection_made",
    "handle_connect",
    "pause_writing",  # not there in uvicorn 0.35: the stall guard would never start
    "resume_writing",
    "connection_lost",
    "send_receive_event_to_app",  # a text message to the tab's reader instead
]
WS_STATE = [  # read or written by StallGuardedProtocol.close_with and the rest
    "loop",
    "transport",
    "conn",
    "queue",
    "close_sent",
    "read_paused",
    "close_timeout",
    "close_timer",
    "frames",  # a message's frames, joined by send_receive_event_to_app
    "curr_msg_data_type",
]
WS_CONN = ["parser", "send_close", "data_to_send"]  # websockets' ServerProtocol; parser is private
# connections.HeadGuard and the two guarded parsers
HTTP_METHODS = ["connection_made", "connection_lost", "data_received", "on_response_complete"]
HTTPTOOLS_METHODS = ["on_message_begin", "on_headers_complete", "on_message_complete"]
HTTP_STATE = ["transport", "loop", "client", "server_state", "ws_protocol_class", "cycle", "flow"]
# Read off the request being answered (HeadGuard._answer) and off its flow control.
CYCLE_STATE = ["response_started", "response_complete", "scope", "transport"]
# What a request's cycle calls on its transport: connections.OneWrite, which stands in for
# it, has these and nothing else.
CYCLE_TRANSPORT = {"write", "close", "is_closing"}
FLOW_STATE = ["read_paused"]
H11_STATE = ["conn"]  # replaced in GuardedH11Protocol.__init__ with a larger head limit
H11_METHODS = ["handle_events"]  # makes a request's cycle: GuardedH11Protocol wraps it after
ROOT = Path(__file__).resolve().parent.parent
# Not uvicorn's: the constructor, and what connections.guarded_http sets on the class.
PROTOCOL_OWN = {"__init__", "sockets"}


def missing(obj: object, names: list[str]) -> list[str]:
    owner = obj.__name__ if isinstance(obj, type) else type(obj).__name__
    return [f"{owner}.{name}" for name in names if not hasattr(obj, name)]


async def app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "websocket.close", "code": 1000})


@pytest.fixture
async def config() -> uvicorn.Config:
    made = uvicorn.Config(app, lifespan="off", log_level="warning")
    made.load()
    return made


@pytest.fixture
async def sockets() -> AsyncIterator[tuple[socket.socket, socket.socket]]:
    ours, theirs = socket.socketpair()
    yield ours, theirs
    ours.close()
    theirs.close()


async def connected(protocol: asyncio.Protocol, sock: socket.socket) -> asyncio.Transport:
    """The protocol on a real socket: connection_made has run."""
    loop = asyncio.get_running_loop()
    transport, _ = await loop.connect_accepted_socket(lambda: protocol, sock)
    return transport


def test_the_server_and_its_config_have_what_serving_overrides_and_passes() -> None:
    gaps = missing(uvicorn.Server, SERVER_METHODS)
    gaps += missing(uvicorn.Server(uvicorn.Config(app)), SERVER_STATE)
    if "self.servers" not in inspect.getsource(uvicorn.Server.startup):
        gaps.append("Server.servers (the listening servers, made by startup)")
    gaps += missing(ServerState(), ["default_headers"])
    accepted = inspect.signature(uvicorn.Config).parameters
    gaps += [f"uvicorn.Config({name}=)" for name in CONFIG_KEYWORDS if name not in accepted]
    assert not gaps, f"uvicorn {uvicorn.__version__} lacks what server/serving.py uses: {gaps}"


async def test_the_websocket_protocol_has_what_the_stall_guard_uses(
    config: uvicorn.Config, sockets: tuple[socket.socket, socket.socket]
) -> None:
    ours, theirs = sockets
    protocol = WebSocketsSansIOProtocol(config, ServerState(), {})
    gaps = missing(WebSocketsSansIOProtocol, WS_METHODS)
    transport = await connected(protocol, ours)
    try:
        gaps += missing(protocol, WS_STATE) + missing(protocol.conn, WS_CONN)
        # The handshake makes the scope, whose extensions carry the frame sink.
        key = base64.b64encode(os.urandom(16)).decode()
        protocol.data_received(
            "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        scope = getattr(protocol, "scope", None)
        if not isinstance(scope, dict) or not isinstance(scope.get("extensions"), dict):
            gaps.append("WebSocketsSansIOProtocol.scope['extensions'] after handle_connect")
    finally:
        transport.abort()
        await asyncio.gather(*protocol.tasks, return_exceptions=True)
    assert not gaps, f"uvicorn {uvicorn.__version__} lacks what server/serving.py uses: {gaps}"


@pytest.mark.parametrize("parser", [HttpToolsProtocol, H11Protocol])
async def test_the_http_protocols_have_what_the_head_guard_uses(
    parser: type[HttpToolsProtocol] | type[H11Protocol],
    config: uvicorn.Config,
    sockets: tuple[socket.socket, socket.socket],
) -> None:
    ours, _ = sockets
    protocol = parser(config, ServerState(), {})
    methods = HTTP_METHODS + (HTTPTOOLS_METHODS if parser is HttpToolsProtocol else H11_METHODS)
    gaps = missing(parser, methods)
    transport = await connected(protocol, ours)
    try:
        state = HTTP_STATE + (H11_STATE if parser is H11Protocol else [])
        gaps += missing(protocol, state)
        if hasattr(protocol, "flow"):
            gaps += missing(protocol.flow, FLOW_STATE)
        cycle = inspect.getsource(inspect.getmodule(parser).RequestResponseCycle.__init__)
        gaps += [f"RequestResponseCycle.{x}" for x in CYCLE_STATE if f"self.{x} =" not in cycle]
        whole = inspect.getsource(inspect.getmodule(parser).RequestResponseCycle)
        called = set(re.findall(r"self\.transport\.(\w+)", whole))
        gaps += [f"RequestResponseCycle: transport.{x}" for x in called - CYCLE_TRANSPORT]
    finally:
        transport.abort()
    assert not gaps, f"uvicorn {uvicorn.__version__} lacks what server/connections.py uses: {gaps}"


# The classes that extend uvicorn's, and the lists above that cover what they inherit.
EXTENDING = {
    "server/serving.py": {"StallGuardedProtocol": WS_METHODS + WS_STATE + ["scope"]},
    "server/sockets.py": {"ReleasedOnClose": ["connection_made", "connection_lost"]},
    "server/connections.py": {
        "HeadGuard": HTTP_METHODS + HTTP_STATE,
        "GuardedHttpToolsProtocol": HTTPTOOLS_METHODS + ["cycle", "transport"],
        "GuardedH11Protocol": H11_STATE + H11_METHODS + ["cycle"],
    },
}


def inherited_names(tree: ast.Module, cls: str) -> set[str]:
    """`super().x` in the class, and `self.x` that no class of the module defines."""
    classes = [n for n in tree.body if isinstance(n, ast.ClassDef)]
    [node] = [n for n in classes if n.name == cls]
    body = [n for c in classes for n in c.body]
    own = {n.name for n in body if isinstance(n, ast.FunctionDef)}
    own |= {
        t.id
        for n in body
        if isinstance(n, ast.Assign)
        for t in n.targets
        if isinstance(t, ast.Name)
    }
    own |= {
        n.target.id
        for n in body
        if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name) and n.value is not None
    }
    used: set[str] = set()
    called: set[str] = set()  # through super(): the base's, even where the class overrides it
    for n in ast.walk(node):
        if not isinstance(n, ast.Attribute):
            continue
        target = n.value
        if isinstance(target, ast.Name) and target.id == "self":
            used.add(n.attr)
        elif (
            isinstance(target, ast.Call)
            and isinstance(target.func, ast.Name)
            and target.func.id == "super"
        ):
            called.add(n.attr)
    # The class's own state starts with _ (set in its __init__).
    return {name for name in used - own if not name.startswith("_")} | called


@pytest.mark.parametrize("module", list(EXTENDING))
def test_the_lists_cover_what_the_modules_use(module: str) -> None:
    tree = ast.parse((ROOT / module).read_text())
    unlisted = {
        f"{cls}.{name}"
        for cls, listed in EXTENDING[module].items()
        for name in inherited_names(tree, cls) - set(listed) - PROTOCOL_OWN
    }
    assert not unlisted, f"{module} uses these from uvicorn; list them above: {sorted(unlisted)}"
