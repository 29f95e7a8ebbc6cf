"""Clients that load a server: a flood, paced readers, a chat room, a crowd that sends
at once, and numbered messages whose every byte can be checked on arrival.

They stand on harness.py's ServerProcess and Client; the tests of the rules and, for any
server, make check's hostile cases use them.
"""

from __future__ import annotations

import ast
import contextlib
import math
import re
import selectors
import socket
import threading
import time
from dataclasses import dataclass
from typing import Callable

from tools.harness import (
    QUIET,
    WAIT,
    Client,
    ServerProcess,
    connect,
    dropped,
    frozen,
    memory_mb,
    peak_memory_mb,
    wait_for,
)

# ---------------------------------------------------------------- a flood, and a chat room


class Flood:
    """A thread that sends on sock, size bytes a send(), as fast as the server takes them,
    the stream whose byte k is unit[k % len(unit)], until it has sent total bytes (if given)
    or is stopped: by stop(), or by the end of its with block, however the test ends."""

    def __init__(
        self, sock: socket.socket, unit: bytes, total: int | None = None, size: int = 65536
    ) -> None:
        self.sock, self.unit, self.total, self.size = sock, len(unit), total, size
        self.stream = memoryview(unit * (size // len(unit) + 2))
        self.sent = 0  # bytes the kernel has taken so far
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        self.sock.settimeout(0.05)  # a send() the server holds up wakes to see stopping
        with contextlib.suppress(OSError):  # the server dropped the sender
            while not self.stopping.is_set() and self.sent != self.total:
                start = self.sent % self.unit
                size = self.size if self.total is None else min(self.size, self.total - self.sent)
                with contextlib.suppress(socket.timeout):
                    self.sent += self.sock.send(self.stream[start : start + size])

    def join(self, timeout: float = WAIT) -> int:
        """Wait (bounded) until the thread ends; return how many bytes were sent."""
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"the flood did not end within {timeout} s"
        return self.sent

    def stop(self) -> int:
        self.stopping.set()
        return self.join()

    def __enter__(self) -> Flood:
        return self

    def __exit__(self, *exception: object) -> None:  # before the server's kill() closes sock
        self.stopping.set()
        self.thread.join(timeout=WAIT)


class Reader:
    """A thread that reads sock at rate bytes per second (ahead of none, catching up after a
    stall; at once if hurry is set; at rate 0, not at all until hurried) until stop is set
    or the server closes sock. It counts the bytes, keeps all but the flood's b".", and
    notes when each b"<N>" came (arrived)."""

    def __init__(self, sock: socket.socket, stop: threading.Event, rate: float = math.inf) -> None:
        self.count = 0
        self.other = b""
        self.arrived: dict[int, float] = {}
        self.hurry = threading.Event()
        self.thread = threading.Thread(target=self.run, args=(sock, stop, rate))
        self.thread.start()

    def run(self, sock: socket.socket, stop: threading.Event, rate: float) -> None:
        started = time.monotonic()
        most = 4096 if rate < math.inf else 1 << 20  # bytes a recv() takes, unless hurried
        sock.settimeout(0.1)
        with contextlib.suppress(ConnectionResetError):
            while not stop.wait(self.pause(started, rate)):
                if rate == 0 and not self.hurry.is_set():
                    continue  # it does not read: look again for hurry
                with contextlib.suppress(socket.timeout):
                    chunk = sock.recv(1 << 20 if self.hurry.is_set() else most)
                    if not chunk:
                        return
                    self.count += len(chunk)
                    self.other += chunk.translate(None, b".")
                    now = time.monotonic()
                    for match in re.finditer(rb"<(\d+)>", self.other):
                        self.arrived.setdefault(int(match[1]), now)

    def pause(self, started: float, rate: float) -> float:
        """How long to wait before the next recv() to read at rate since started."""
        if self.hurry.is_set():
            return 0
        if rate == 0:
            return QUIET
        return max(0.0, started + self.count / rate - time.monotonic())


class ChatRoom:
    """A broadcast room: one client floods it with b".", a reader reads at reader_rate (0:
    never), and chat() sends the next numbered message from chat_from to a fourth (heard).
    The flood reaches the chat too, so both read as fast as it comes. All stop when the
    block ends. Any server will do: the flood begins once it has accepted all four."""

    def __init__(self, server: ServerProcess, reader_rate: float) -> None:
        self.reader = Client(server, rcvbuf=4096)
        flooder, self.chat_from, chat_to = Client(server), Client(server), Client(server)
        if server.judges_log:
            server.expect_lines("connected", 4)
        else:  # a server whose log is not judged: it relays between all four
            introduce(chat_to, [self.reader, flooder, self.chat_from])
        self.stop = threading.Event()
        self.read = Reader(self.reader.sock, self.stop, reader_rate)
        self.heard = Reader(chat_to.sock, self.stop)
        self.readers = [self.read, self.heard, Reader(self.chat_from.sock, self.stop)]
        self.sent_at: list[float] = []  # when each message was sent
        self.flood_began = time.monotonic()
        self.flood = Flood(flooder.sock, b".")

    def chat(self) -> None:
        self.sent_at.append(time.monotonic())
        self.chat_from.send(b"<%d>" % (len(self.sent_at) - 1))

    def delays(self) -> dict[int, float]:
        """Wait (bounded) for every chat message; return each one's delay, in seconds."""
        arrived = self.heard.arrived
        deadline = time.monotonic() + WAIT
        while len(arrived) < len(self.sent_at) and time.monotonic() < deadline:
            time.sleep(0.01)  # the chat's last messages are on their way
        lost = [n for n in range(len(self.sent_at)) if n not in arrived]
        assert not lost, f"chat messages {lost} never arrived"
        assert list(arrived) == sorted(arrived), f"out of order: {list(arrived)}"
        return {n: arrived[n] - sent for n, sent in enumerate(self.sent_at)}

    def __enter__(self) -> ChatRoom:
        return self

    def __exit__(self, *exception: object) -> None:
        self.flood.stopping.set()
        self.stop.set()
        for thread in [self.flood.thread, *(reader.thread for reader in self.readers)]:
            thread.join(timeout=WAIT)


HELLO = b"<hello>"  # what introduce() sends: no flood byte, no chat message


def introduce(speaker: Client, listeners: list[Client]) -> None:
    """speaker sends HELLO and each listener must receive it (bounded: the speaker's wait,
    in all): then a broadcast server has accepted them all and relays between them."""
    speaker.send(HELLO)
    deadline = time.monotonic() + speaker.wait
    for listener in listeners:
        heard = listener.receive(len(HELLO), timeout=max(0.001, deadline - time.monotonic()))
        assert heard == HELLO, f"one client sent {HELLO!r}, another received {heard!r}: no room"


def chat_past_a_paced_reader(
    server: ServerProcess, rate: float, seconds: float
) -> tuple[int, list[float]]:
    """Chat every 50 ms for seconds past a reader at rate; stop the flood; the reader must
    be kept and, hurried, get every byte, the chat in order. Return the bytes it read and
    the chat's delays (s), sorted."""
    with ChatRoom(server, rate) as room:
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            room.chat()
            time.sleep(0.05)  # the chat's pace
        sent = room.flood.stop()
        delays = sorted(room.delays().values())
        assert room.reader.address not in dropped(server)
        room.read.hurry.set()
        chat = b"".join(b"<%d>" % n for n in range(len(room.sent_at)))
        total = sent + len(chat)
        wait_for(lambda: room.read.count >= total, f"the reader to get all {total} bytes")
        time.sleep(QUIET)  # nothing more may arrive
    assert room.read.count == total and room.read.other == chat, room.read.other
    return total, delays


# ---------------------------------------------------------------- numbered messages


@dataclass(frozen=True)
class Plan:
    """One client of a broadcast session: how many numbered messages it sends, and whether
    it then stays, half-closes, closes or resets."""

    messages: int
    ending: str

    def sends(self, client: int) -> bytes:
        """Its messages, as client number `client` (from 1): b'<c1m0><c1m1>...'."""
        return b"".join(b"<c%dm%d>" % (client, number) for number in range(self.messages))


def what_is_wrong(me: int, plans: list[Plan], received: bytes) -> list[str]:
    """What the model finds wrong with what client number me received ([] if nothing): a
    client that stays gets every other client's messages, each sender's in order, none
    twice, none of its own, but only some first ones of a client that resets (the reset
    may overtake them); one that half-closes, some first of each (read before its EOF)."""
    tokens = re.findall(rb"<c\d+m\d+>", received)
    problems = [] if b"".join(tokens) == received else [f"not whole messages: {received!r}"]
    by_sender: dict[int, list[int]] = {}
    for token in tokens:
        sender, number = map(int, re.findall(rb"\d+", token))
        by_sender.setdefault(sender, []).append(number)
    for sender, plan in enumerate(plans, 1):
        got, every = by_sender.get(sender, []), list(range(plan.messages))
        if sender == me:
            if got:
                problems.append(f"c{me} received its own messages {got}")
        elif plans[me - 1].ending == "half-closes" or plan.ending == "resets":
            if got != every[: len(got)]:
                problems.append(f"c{me} received c{sender}'s {got}: not the first of {every}")
        elif got != every:
            problems.append(f"c{me} received c{sender}'s {got}, not {every}")
    return problems


END = b"<end>"  # sent last, by an observer: the bytes that end what a client receives
ENDINGS = ["stays", "half-closes", "closes", "resets"]


def wait_until_all_is_read(server: ServerProcess, plans: list[Plan], names: dict[str, str]) -> None:
    """Wait (bounded) until the log shows the server has read all it will: each client that
    leaves is logged as disconnected, and each byte of each that stays as sent."""
    leaving = {f"c{i}" for i, plan in enumerate(plans, 1) if plan.ending != "stays"}
    unread = {f"c{i}": len(p.sends(i)) for i, p in enumerate(plans, 1) if p.ending == "stays"}
    while leaving or any(unread.values()):
        line = server.expect_line(
            r"^(\S+) (?:(disconnected): |sent (b'.*?')(?:\.\.\. \((\d+) bytes\))?$)"
        )
        name = names.get(line[1], line[1])
        if line[2]:
            assert name in leaving, f"{name} was dropped: {line.string}"
            leaving.remove(name)
        elif name in unread:
            unread[name] -= int(line[4]) if line[4] else len(ast.literal_eval(line[3]))


# ---------------------------------------------------------------- a crowd that sends at once


def crowd_sends_at_once(
    server: ServerProcess, messages: list[bytes], close: bool, take: Callable[[int, bytes], None]
) -> float:
    """A client per message puts it in the kernel's buffers while the server is frozen; one
    selector loop then sends the rest (and half-closes, if close) and reads until each has
    its EOF (close) or all the others' messages, handing each chunk to take(client's index,
    chunk), which keeps what it checks (200 x 200 messages are too many to keep). Return
    how much the server grew, in MB."""
    crowd = [client.sock for client in connect(server, len(messages))]
    before = memory_mb(server.pid)
    expected = sum(len(message) for message in messages)
    counts = [0] * len(crowd)
    unsent = [memoryview(message) for message in messages]
    selector = selectors.DefaultSelector()
    for index, sock in enumerate(crowd):
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, index)

    def send_more(index: int) -> None:
        with contextlib.suppress(BlockingIOError):
            unsent[index] = unsent[index][crowd[index].send(unsent[index]) :]

    with frozen(server.pid):
        for index in range(len(crowd)):
            send_more(index)
    deadline = time.monotonic() + 3 * WAIT
    while selector.get_map():
        assert time.monotonic() < deadline, f"after {3 * WAIT} s, received {counts}"
        for key, events in selector.select(timeout=WAIT):
            index, sock = key.data, crowd[key.data]
            if events & selectors.EVENT_WRITE:
                send_more(index)
                if not unsent[index]:
                    selector.modify(sock, selectors.EVENT_READ, index)
                    if close:
                        sock.shutdown(socket.SHUT_WR)
            if events & selectors.EVENT_READ:
                with contextlib.suppress(BlockingIOError):
                    chunk = sock.recv(1 << 20)
                    take(index, chunk)
                    counts[index] += len(chunk)
                    done = not chunk if close else counts[index] == expected - len(messages[index])
                    if done:
                        selector.unregister(sock)
    return peak_memory_mb(server.pid) - before
