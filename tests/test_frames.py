"""The frame path: frames parse as websockets parses them, a tab's frames of one loop turn
leave in one write, and a socket that pushes back holds them up to the limit, then 1013."""

from __future__ import annotations

import asyncio

import pytest
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from server.errors import CLOSE_SERVICE_RESTART, CLOSE_TRY_AGAIN_LATER
from server.frames import Tab, broadcast, text_frame


class Socket:
    """A frames.Sink in memory: each write kept whole, and a switch to push back."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closes: list[int] = []
        self.full = False
        self.tab: Tab | None = None

    def write_frames(self, data: bytes) -> None:
        self.writes.append(data)

    def pushing_back(self) -> bool:
        return self.full

    def close_with(self, code: int, reason: str) -> None:
        assert reason  # every close the server asks for says why
        self.closes.append(code)

    def listen(self, tab: Tab | None) -> None:
        self.tab = tab

    def drain(self) -> None:
        self.full = False
        assert self.tab is not None
        self.tab.drained()


def parse(data: bytes) -> list[Frame]:
    """The frames in `data`, parsed the way a client does (unmasked, from a server)."""
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    found = []
    while reader.buffer:
        parser = Frame.parse(reader.read_exact, mask=False)
        try:
            while True:
                next(parser)
        except StopIteration as done:
            found.append(done.value)
    return found


async def turn() -> None:
    """Let the current loop turn end: what was sent in it is written then."""
    await asyncio.sleep(0)


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536, 200_000])
def test_a_text_frame_of_any_size_parses_back_to_its_payload(size: int) -> None:
    payload = b"x" * size
    (frame,) = parse(text_frame(payload))
    assert frame.opcode is Opcode.TEXT and frame.fin and frame.data == payload


async def test_the_frames_of_one_loop_turn_leave_in_one_write() -> None:
    socket = Socket()
    author, other = Tab("a", 10, socket), Tab("b", 10, Socket())
    broadcast([author, other], b'{"type":"patch","version":1}')
    author.send(b'{"type":"ack","id":"m1","version":1}')
    assert socket.writes == []  # not before the turn ends
    await turn()
    (write,) = socket.writes
    assert [f.data for f in parse(write)] == [
        b'{"type":"patch","version":1}',
        b'{"type":"ack","id":"m1","version":1}',
    ]
    author.send(b"{}")
    await turn()
    assert len(socket.writes) == 2  # the next turn: a write of its own


async def test_a_socket_that_pushes_back_holds_frames_until_it_drains() -> None:
    socket = Socket()
    tab = Tab("t", 3, socket)
    socket.full = True
    for n in range(3):
        tab.send(b"%d" % n)
    await turn()
    assert socket.writes == []
    socket.drain()
    assert [f.data for f in parse(socket.writes[0])] == [b"0", b"1", b"2"]
    assert tab.close_code is None


async def test_a_tab_over_its_limit_is_closed_with_1013_and_its_backlog_dropped() -> None:
    socket = Socket()
    tab = Tab("t", 3, socket)
    socket.full = True
    for n in range(4):
        tab.send(b"%d" % n)
    assert tab.close_code == CLOSE_TRY_AGAIN_LATER
    tab.send(b"after")  # ignored: the tab is closing
    assert socket.closes == []  # the close frame waits for the socket like any frame
    closed = asyncio.create_task(tab.closed())
    await turn()
    assert not closed.done()
    socket.drain()
    await asyncio.wait_for(closed, 1)
    assert socket.writes == [] and socket.closes == [CLOSE_TRY_AGAIN_LATER]


async def test_a_flushing_close_sends_what_was_queued_first() -> None:
    socket = Socket()
    tab = Tab("t", 10, socket)
    tab.send(b"last patch")
    tab.close(CLOSE_SERVICE_RESTART, flush=True)
    await asyncio.wait_for(tab.closed(), 1)
    assert [f.data for f in parse(socket.writes[0])] == [b"last patch"]
    assert socket.closes == [CLOSE_SERVICE_RESTART]
    assert socket.tab is None  # the connection no longer refers to its tab


async def test_a_lost_connection_takes_no_more_frames() -> None:
    socket = Socket()
    tab = Tab("t", 10, socket)
    socket.full = True
    tab.send(b"never read")
    waiting = asyncio.create_task(tab.closed())
    await turn()
    tab.lost()
    await asyncio.wait_for(waiting, 1)
    socket.full = False
    tab.send(b"too late")
    tab.close(CLOSE_SERVICE_RESTART, flush=True)
    await turn()
    assert socket.writes == [] and socket.closes == []
