# SPDX-License-Identifier: 0BSD
"""Measure select_server.py over loopback, and optionally other servers side by side.

    python -m tools.bench                      # every row: about two minutes
    python -m tools.bench --smoke              # four tiny rows in about 2 s (for a test)
    python -m tools.bench --against asyncio    # and the asyncio server below, row by row
    python -m tools.bench --against 'python other_server.py {mode}' --against asyncio
    python -m tools.bench --rows 'broadcast|memory' --seconds 5 --warmup 2
    python -m tools.bench --against asyncio --repeat 3 --seconds 1 --warmup 0.5   # make bench
    python -m tools.bench --serve-asyncio broadcast --port 8000   # just run the asyncio server

Each row starts a fresh server (`--server CMD`, default `python select_server.py {mode}
--quiet`, run from the repository with `--host 127.0.0.1 --port 0` appended; a leading
`python` means the interpreter running the bench), primes it with one connection, drives it
from load-generator processes (this file run with --worker) and prints one line:

- ack N clients: each client in lock-step (send 16 bytes, wait for exactly b"ACK");
  round trips per second, p50/p99 latency.
- ack 1 + N idle: one such client while N others stay connected and silent: what
  select() pays for every socket it watches.
- broadcast RxS: R receivers and S senders; delivered bytes and messages per second (one
  message arriving at one client), and a check that every client got every byte of every
  other sender, in order. A client dropped by the server fails the row.
- crowd NxSIZE: N clients each send one SIZE message at the same moment and read all the
  others' as fast as they can: a room that gets busy at once. Time until every byte has
  arrived (p50/p99: until a client has all of it), how many clients the server dropped,
  and its peak memory. Every byte checked as in a broadcast row; a dropped client is
  counted, not a failure.
- chat: what a chat-room user feels. 4 clients each send a 64-byte message every 20 ms,
  each stamped with its send time; p50/p99 of the delay until it reaches each other client
  (as seen by the load generator: one process reads for every client, so its own delays
  count). "chat + slow reader" adds a client that reads only 64 KiB/s and one that sends
  128-byte messages as fast as the room takes them, and measures only after 3.5 s: long
  enough for select_server.py to have dropped the slow reader (it must keep up with
  --max-buffer / 2 per --grace, 256 KiB/s by default, after a 2 s grace). A server that
  keeps it is measured as it is. "chat + 1.15x floor" is the same with a reader that
  reads 1.15 times that floor (294 KiB/s): kept, and the room waits for it whenever it
  is owed --max-buffer. Every byte is checked, the slow reader's too.
- memory 1000 idle: the server's RSS before and after 1,000 clients connect, per client.

Every row also shows the server's own CPU time per operation (from /proc/PID/stat over the
measured window), its peak RSS (VmHWM), and the load generator's CPU share: on a small
machine both share the cores, so operations per second alone measure the pair. CPU is
read for the process started, so CMD must run the server itself, not a shell around it.
`--against CMD` (repeatable) runs another server of the same command-line shape, row by
row, the servers taking turns, and prints a ratio line for it. `--against asyncio` is
short for `--against 'python -m tools.bench --serve-asyncio {mode}'`: the idiomatic asyncio
Protocol/Transport server of the same protocol, in this file (see serve_asyncio), so a
clone of this repository can always compare with something. Exit status: 0, or 1 if any
row failed. Linux only.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import random
import re
import select
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from array import array
from dataclasses import dataclass, field
from types import FrameType
from typing import IO, Any, Callable, NamedTuple, Protocol, Sequence, cast

# ---------------------------------------------------------------- settings

HOST = "127.0.0.1"
DEFAULT_SERVER = "python select_server.py {mode} --quiet"
ASYNCIO_PEER = "python -m tools.bench --serve-asyncio {mode}"  # --against asyncio
HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository

ACK = b"ACK"
PAYLOAD = b"0123456789abcdef"  # what an ack client sends each round trip
PAYLOAD_SIZE = len(PAYLOAD)
MESSAGE_SIZE = 128  # a broadcast message
PATTERN_MESSAGES = 509  # a sender's bytes repeat after this many (a prime: no buffer size)
WINDOW_TOTAL = 512 * 1024  # bytes all senders together may have in flight (see window)
RECV_SIZE = 65536
PROBE = b"\xff"  # the one byte value no sender uses: marks the start-up probe

CHAT_CLIENTS = 4  # in a chat row, clients that send a chat message every CHAT_INTERVAL
CHAT_SIZE = 64  # bytes of a chat message: its send time, its number, and filler
CHAT_INTERVAL = 0.020  # seconds between one client's chat messages
# The slowest reader select_server.py keeps with its defaults: --max-buffer/2 per --grace.
FLOOR_RATE = 1024 * 1024 // 2 // 2
SLOW_RATE = 64 * 1024  # bytes per second that "chat + slow reader"'s slow reader reads
NEAR_FLOOR_RATE = FLOOR_RATE * 115 // 100  # and "chat + 1.15x floor"'s: kept, just
SLOW_TICK = 0.05  # seconds between its reads
SLOW_WARMUP = 3.5  # seconds before "chat + slow reader" measures: our server's grace (2 s)
SLOW_SECONDS = 3.5  # after the slow reader's buffers fill, and some to spare; then this long
CROWD_CLIENTS = 120  # clients in the crowd row: at most 127 (see CrowdLoad)
CROWD_SIZE = 128 * 1024  # the one message each of them sends
CROWD_TIMEOUT = 60.0  # for a crowd's every byte to arrive
# How far the flood may run ahead of the slow reader: a server that never drops it holds
# up to this much for it (a safety limit, far above what select_server.py lets it be owed).
FLOOD_AHEAD = 256 * 1024 * 1024

START_TIMEOUT = 10.0  # for a server to say where it listens
SETUP_TIMEOUT = 30.0  # for the workers to connect every client
DRAIN_TIMEOUT = 10.0  # for the last broadcast bytes to arrive after the window
STOP_TIMEOUT = 5.0  # for a process to exit after being told to


# Every process we start, so that whatever happens, none outlives us (see main).
CHILDREN: list[subprocess.Popen[bytes]] = []


class RowFailed(Exception):
    """A row cannot report a number: a client was dropped, a byte was wrong, a timeout..."""


# ---------------------------------------------------------------- the rows


@dataclass
class Row:
    """One line of the table: what to run against a fresh server."""

    label: str
    mode: str  # the server's mode: "ack" or "broadcast"
    kind: str  # the worker's job: "ack", "broadcast", "crowd", "chat" or "connect" (memory)
    active: int = 0  # ack: clients in lock-step
    idle: int = 0  # ack: clients that stay silent; connect: clients to open
    receivers: int = 0  # broadcast
    senders: int = 0  # broadcast; crowd: its clients, each a sender and a receiver
    size: int = 0  # crowd: the one message each client sends
    slow_rate: int = 0  # chat: with a reader this slow (bytes per second) and a flooder
    seconds: float | None = None  # the window and warm-up, if not the command line's
    warmup: float | None = None


def default_rows() -> list[Row]:
    """Every row of a default run, in order."""
    rows = [
        Row(f"ack {n} client{'s' if n > 1 else ''}", "ack", "ack", active=n)
        for n in (1, 10, 100, 1000)
    ]
    rows += [Row(f"ack 1 + {n} idle", "ack", "ack", active=1, idle=n) for n in (0, 250, 500, 900)]
    rows += [
        Row(f"broadcast {r}x{s}", "broadcast", "broadcast", receivers=r, senders=s)
        for r, s in ((10, 1), (100, 10))
    ]
    rows.append(crowd_row(CROWD_CLIENTS, CROWD_SIZE))
    # Chat latency needs samples: 3 s give each client's messages 150 deliveries per peer.
    rows.append(Row("chat 4 clients", "broadcast", "chat", seconds=3.0, warmup=0.5))
    for label, rate in (("chat + slow reader", SLOW_RATE), ("chat + 1.15x floor", NEAR_FLOOR_RATE)):
        rows.append(
            Row(
                label, "broadcast", "chat", slow_rate=rate, seconds=SLOW_SECONDS, warmup=SLOW_WARMUP
            )
        )
    rows.append(Row("memory 1000 idle", "ack", "connect", idle=1000))
    return rows


def crowd_row(clients: int, size: int) -> Row:
    """A crowd of clients that each send one message of size bytes at the same moment."""
    return Row(f"crowd {clients}x{size >> 10}KiB", "broadcast", "crowd", senders=clients, size=size)


def smoke_rows() -> list[Row]:
    """The four tiny rows of --smoke."""
    return [
        Row("broadcast 3x1", "broadcast", "broadcast", receivers=3, senders=1),
        Row("ack 2 clients", "ack", "ack", active=2),
        Row("chat 4 clients", "broadcast", "chat"),
        crowd_row(8, 64 * 1024),
    ]


# ================================================================ worker side
#
# A worker is this file run with --worker. It reads a JSON job on stdin, connects its
# clients, prints {"ready": true}, waits for "T0 T1" (time.monotonic() values: the clock
# is system-wide on Linux, so the parent's and ours agree), runs until T1 counting only
# what happens from T0, prints its result as one JSON line, and exits when stdin closes
# (holding its connections open until then, for the memory row).


class WorkerError(Exception):
    """Something the server did wrong, seen by a worker: reported to the parent."""


def emit(message: dict[str, Any]) -> None:
    """Send one JSON line to the parent."""
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def connect_all(port: int, count: int, deadline: float) -> list[socket.socket]:
    """Open count connections to the server: non-blocking, with Nagle off."""
    socks = []
    for _ in range(count):
        sock = socket.create_connection((HOST, port), timeout=max(0.1, deadline - time.monotonic()))
        # Each send leaves at once, as an interactive client's would, not held for Nagle.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        socks.append(sock)
    return socks


def round_trip_all(socks: Sequence[socket.socket], deadline: float) -> None:
    """Send one byte on every ack connection and wait for every b"ACK".

    An answer proves the server accepted the connection (it accepts one per loop round,
    so connections can wait in the kernel's queue for a while after connect() returns).
    """
    epoll = select.epoll()
    replies: dict[int, bytes] = {}
    for sock in socks:
        epoll.register(sock.fileno(), select.EPOLLIN)
        replies[sock.fileno()] = b""
        sock.send(b"x")
    by_fd = {sock.fileno(): sock for sock in socks}
    while replies:
        if time.monotonic() > deadline:
            raise WorkerError(f"{len(replies)} of {len(socks)} connections got no ACK in time")
        for fd, _ in epoll.poll(0.1):
            data = by_fd[fd].recv(16)
            if not data:
                raise WorkerError("the server closed a connection while it was set up")
            replies[fd] += data
            if not ACK.startswith(replies[fd]):
                raise WorkerError(f"expected b'ACK', got {replies[fd]!r}")
            if replies[fd] == ACK:
                del replies[fd]
                epoll.unregister(fd)
    epoll.close()


def megabytes(size: float) -> str:
    """A size in MB, to three significant digits (whole kB below 1 MB)."""
    if size < 1e6:
        return f"{size / 1e3:.0f} kB"
    return f"{size / 1e6:,.{2 if size < 1e7 else 1 if size < 1e8 else 0}f} MB"


def matching_length(
    expected: bytes | bytearray,
    start: int,
    view: memoryview,
    position: int,
    message_size: int = MESSAGE_SIZE,
) -> int:
    """How many bytes of view, from position on, equal those of expected from start on.

    Each step is one memcmp() (startswith() at an offset), so a run costs a few Python
    steps rather than one per byte. The usual run is the rest of the chunk: one step.
    Else a run usually ends where a message does (the server relays what one recv()
    returned, and senders send whole messages), so a binary search tries the ends of
    messages first, and goes byte by byte only within the one message after that.
    """
    rest = len(view) - position
    if expected.startswith(view[position:], start):
        return rest
    to_end = -start % message_size  # bytes to the end of the message we are in
    # Message ends at to_end + k * message_size: end k_low matches, ends past k_high don't.
    k_low, k_high = -1, (rest - 1 - to_end) // message_size
    while k_low < k_high:
        k = (k_low + k_high + 1) // 2
        if expected.startswith(view[position : position + to_end + k * message_size], start):
            k_low = k
        else:
            k_high = k - 1
    low = to_end + k_low * message_size if k_low >= 0 else 0  # known to match
    if view[position + low] != expected[start + low]:
        return low  # the usual case: the run ends at the end of a message
    high = min(low + message_size, rest) - 1  # the next message end did not match
    while low < high:
        middle = (low + high + 1) // 2
        if expected.startswith(view[position : position + middle], start):
            low = middle
        else:
            high = middle - 1
    return low


class AckLoad:
    """Lock-step ack clients, plus idle connections that only stay open."""

    def __init__(self, job: dict[str, Any]) -> None:
        deadline = time.monotonic() + SETUP_TIMEOUT
        self.socks = connect_all(job["port"], job["active"] + job["idle"], deadline)
        round_trip_all(self.socks, deadline)
        self.active = self.socks[: job["active"]]

    def run(self, t0: float, t1: float) -> dict[str, Any]:
        """Run every active client in lock-step until t1; time the round trips from t0."""
        # select.epoll itself, not selectors: selectors adds ~0.4 us per ready socket
        # (a key lookup and a tuple), about 4% of the generator's cost per round trip.
        epoll = select.epoll()
        size = max([s.fileno() for s in self.socks], default=0) + 1
        # Lists indexed by file descriptor, and bound methods looked up once: this loop
        # runs once per round trip, so every dict lookup and attribute fetch counts.
        # (len is only a placeholder for descriptors that are not active clients.)
        sends: list[Callable[[bytes], int]] = [len] * size
        recv_intos: list[Callable[[bytearray], int]] = [len] * size
        sent_at = [0.0] * size
        for sock in self.active:
            fd = sock.fileno()
            epoll.register(fd, select.EPOLLIN)
            sends[fd], recv_intos[fd] = sock.send, sock.recv_into
        partial: dict[int, bytes] = {}  # fd -> the start of an ACK that came in pieces
        buffer = bytearray(64)  # recv_into() target: no new bytes object per reply
        latencies: array[float] = array("d")
        record = latencies.append
        monotonic = time.monotonic
        now = monotonic()
        for sock in self.active:
            sent_at[sock.fileno()] = now
            sock.send(PAYLOAD)
        measuring = False
        while now < t1:
            measuring = measuring or now >= t0
            for fd, _ in epoll.poll(0.05):
                got = recv_intos[fd](buffer)
                # The usual case, with no copy: exactly b"ACK" in one piece.
                if (
                    got != 3 or partial or not buffer.startswith(ACK)
                ) and not self.piece_completes_ack(fd, bytes(buffer[:got]), partial):
                    continue  # only a piece of an ACK so far
                now = monotonic()
                if measuring:
                    record(now - sent_at[fd])
                sent_at[fd] = now
                if sends[fd](PAYLOAD) != PAYLOAD_SIZE:
                    raise WorkerError("a 16-byte send() was cut short")
            now = monotonic()
        epoll.close()
        encoded = base64.b64encode(latencies.tobytes()).decode()
        return {"ops": len(latencies), "latencies": encoded}

    def piece_completes_ack(self, fd: int, data: bytes, partial: dict[int, bytes]) -> bool:
        """Handle a reply that is not exactly b"ACK": a piece of one, or an error."""
        if not data:
            raise WorkerError("the server closed an ack connection")
        so_far = partial.pop(fd, b"") + data
        if not ACK.startswith(so_far):
            raise WorkerError(f"expected one b'ACK' per round trip, got {so_far!r}")
        if so_far == ACK:
            return True
        partial[fd] = so_far
        return False


class ConnectLoad:
    """The memory row: open connections, one round trip each, then hold them open."""

    def __init__(self, job: dict[str, Any]) -> None:
        self.port: int = job["port"]
        self.count: int = job["idle"]
        self.socks: list[socket.socket] = []

    def run(self, t0: float, t1: float) -> dict[str, Any]:
        """Connect every client now (t0 and t1 are not used) and wait for each ACK."""
        deadline = time.monotonic() + SETUP_TIMEOUT
        self.socks = connect_all(self.port, self.count, deadline)
        round_trip_all(self.socks, deadline)
        return {"ops": self.count}


class BroadcastLoad:
    """R receivers and S senders, every byte checked, senders kept within a window.

    The server relays whatever one recv() returned, so chunks from different senders
    may interleave anywhere, even inside a message. So each sender uses its own range of
    byte values (255 is the start-up probe): the first byte of a run says whose it is.
    Each sender's stream is a fixed pseudo-random sequence, so every byte is checked
    against what was sent, in order (see check), and the counts must match at the end.
    """

    def __init__(self, job: dict[str, Any]) -> None:
        self.receivers: int = job["receivers"]
        self.senders: int = job["senders"]
        # Each sender may be at most this far ahead of its slowest receiver, so no client
        # is ever owed much more than WINDOW_TOTAL: half the server's --max-buffer.
        self.window = max(MESSAGE_SIZE, WINDOW_TOTAL // self.senders)
        clients = self.receivers + self.senders  # senders are clients 0..S-1
        self.period = MESSAGE_SIZE * PATTERN_MESSAGES
        # Sender s's bytes run from lo(s) to lo(s + 1) - 1; 255 belongs to the probe.
        self.sender_of_byte = [self.senders] * 256
        for s in range(self.senders):
            self.sender_of_byte[self.lo(s) : self.lo(s + 1)] = [s] * (self.lo(s + 1) - self.lo(s))
        self.patterns = [self.make_pattern(s) for s in range(self.senders)]
        self.messages = [
            [p[i : i + MESSAGE_SIZE] for i in range(0, self.period, MESSAGE_SIZE)]
            for p in self.patterns
        ]
        self.sent = [0] * self.senders
        # got[s][c]: bytes of sender s that client c received. got[s][s] follows sent[s],
        # so min(got[s]) is what every other client has received from s.
        self.got = [[0] * clients for _ in range(self.senders)]
        self.floor = [0] * self.senders  # min(got[s]) when last computed
        self.blocked = [False] * self.senders  # waiting for room in the socket buffer
        self.delivered = 0  # bytes received by all clients together
        self.buffer = bytearray(RECV_SIZE)  # every recv_into() goes here: no allocation
        self.view = memoryview(self.buffer)  # slices of it for startswith() copy nothing
        deadline = time.monotonic() + SETUP_TIMEOUT
        self.socks = connect_all(job["port"], clients, deadline)
        self.client_of_fd = {sock.fileno(): c for c, sock in enumerate(self.socks)}
        self.epoll = select.epoll()
        for sock in self.socks:
            self.epoll.register(sock.fileno(), select.EPOLLIN)
        self.sync(deadline)

    def lo(self, sender: int) -> int:
        """The lowest byte value that sender uses (lo(S) = 255, the probe)."""
        return sender * 255 // self.senders

    def make_pattern(self, sender: int) -> bytes:
        """Sender's byte sequence: one period, repeated so that a chunk read from any
        offset in the first period fits (startswith() must not run off the end)."""
        letters = range(self.lo(sender), self.lo(sender + 1))
        period = bytes(random.Random(sender).choices(letters, k=self.period))
        return period * (2 + RECV_SIZE // self.period)

    def sync(self, deadline: float) -> None:
        """Wait until the server has accepted every client: each has heard client 0's probe.

        A client not yet accepted misses what is relayed before, so client 0 sends a probe
        byte every 50 ms until every other client has received one.
        """
        heard = [False] * len(self.socks)
        heard[0] = True
        next_probe = 0.0
        while not all(heard):
            now = time.monotonic()
            if now > deadline:
                raise WorkerError(f"only {sum(heard)} of {len(heard)} clients were accepted")
            if now >= next_probe:
                self.socks[0].send(PROBE)
                next_probe = now + 0.05
            for fd, _ in self.epoll.poll(0.01):
                client = self.client_of_fd[fd]
                data = self.socks[client].recv(RECV_SIZE)
                if not data or data.strip(PROBE):
                    raise WorkerError(f"client {client} got {data!r} instead of the probe")
                heard[client] = True

    def run(self, t0: float, t1: float) -> dict[str, Any]:
        """Send until t1, counting delivered bytes from t0; then wait for the rest, check."""
        readable = select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR
        poll, client_of_fd, receive = self.epoll.poll, self.client_of_fd, self.receive
        start = end = None
        while True:
            now = time.monotonic()
            if start is None and now >= t0:
                start = self.delivered
            if end is None and now >= t1:
                end = self.delivered
            if end is None:
                for s in range(self.senders):
                    if not self.blocked[s]:
                        self.pump(s)
            elif self.all_delivered():
                break
            elif now > t1 + DRAIN_TIMEOUT:
                missing = sum(sent * len(got) - sum(got) for got, sent in zip(self.got, self.sent))
                raise WorkerError(f"{missing} bytes never arrived (waited {DRAIN_TIMEOUT} s)")
            for fd, events in poll(0.02):
                client = client_of_fd[fd]
                if events & select.EPOLLOUT:  # a sender's socket buffer has room again
                    self.blocked[client] = False
                    self.epoll.modify(fd, select.EPOLLIN)
                if events & readable:
                    receive(client)
        assert start is not None and end is not None  # t0 <= t1, and the loop ends after t1
        window_bytes = end - start
        return {
            "ops": window_bytes / MESSAGE_SIZE,
            "bytes": window_bytes,
            "checked": self.delivered,
        }

    def pump(self, s: int) -> None:
        """Send sender s's next messages, one send() each, as far as its window allows."""
        limit = self.floor[s] + self.window
        if self.sent[s] >= limit:
            self.floor[s] = self.room_floor(s)  # computed only when needed: O(clients)
            limit = self.floor[s] + self.window
        sock, own = self.socks[s], self.got[s]
        while self.sent[s] < limit:
            offset = self.sent[s] % self.period
            if offset % MESSAGE_SIZE == 0:  # the usual case: a whole, prebuilt message
                message = self.messages[s][offset // MESSAGE_SIZE]
            else:  # the rest of a message that an earlier send() cut short
                message = self.patterns[s][offset : offset - offset % MESSAGE_SIZE + MESSAGE_SIZE]
            try:
                sent = sock.send(message)
            except BlockingIOError:
                sent = 0
            self.sent[s] += sent
            own[s] = self.sent[s]
            if sent < len(message):  # the socket buffer is full: wait until it has room
                self.blocked[s] = True
                self.epoll.modify(sock.fileno(), select.EPOLLIN | select.EPOLLOUT)
                return

    def room_floor(self, s: int) -> int:
        """What every client has received from sender s: its window starts there."""
        return min(self.got[s])

    def receive(self, client: int) -> None:
        """Read one chunk for client, and check it."""
        size = self.socks[client].recv_into(self.buffer)
        if not size:
            raise WorkerError(f"the server closed client {client} (dropped?)")
        self.check_chunk(client, size)

    def check_chunk(self, client: int, size: int) -> None:
        """Check the chunk of size bytes in self.buffer that client received, run by run:
        one run per sender."""
        view = self.view[:size]
        position = 0
        while position < size:
            sender = self.sender_of_byte[view[position]]
            if sender == self.senders:  # a late start-up probe: skip it
                position += 1
            else:
                position += self.check(client, sender, view, position)

    def check(self, client: int, sender: int, view: memoryview, position: int) -> int:
        """Check the run of sender's bytes at position in client's chunk; return its length.

        A run ends where another sender's bytes start (no byte is in two ranges), or at
        the first byte that is not what sender sent next: then the next run starts with
        one of sender's bytes that matches nothing, and fails here.
        """
        column = self.got[sender]
        offset = column[client]
        if sender == client:
            raise WorkerError(f"sender {sender} received its own bytes back")
        length = matching_length(self.patterns[sender], offset % self.period, view, position)
        if length == 0:
            raise WorkerError(
                f"client {client}: byte {offset} from sender {sender} is not what it sent "
                "(lost, repeated, reordered or mixed)"
            )
        if offset + length > self.sent[sender]:
            raise WorkerError(f"client {client} got more bytes from sender {sender} than it sent")
        column[client] = offset + length
        self.delivered += length
        return length

    def all_delivered(self) -> bool:
        """Has every client received every byte every other sender sent?"""
        return all(min(column) == sent for column, sent in zip(self.got, self.sent))


class ChatLoad(BroadcastLoad):
    """A chat room: CHAT_CLIENTS clients each send a CHAT_SIZE-byte message every
    CHAT_INTERVAL, and every message carries its send time (time.monotonic_ns(), in the
    sender's byte range), so each client that receives it knows how long it took.

    With job["flood"] one more client sends MESSAGE_SIZE-byte messages as fast as the room
    lets it (at most WINDOW_TOTAL ahead of any other reader, and FLOOD_AHEAD of the slow
    one); with job["slow_rate"] one more client reads only that many bytes per second. Every
    client reads everything else, and every byte is checked, the slow reader's too: it may
    be dropped by the server (it then reads to the end: what it got must be right), but no
    other client may be. Latency counts the messages sent between T0 and T1, at every
    client but the slow reader, however late they arrive.
    """

    def __init__(self, job: dict[str, Any]) -> None:
        self.chatters: int = job["chatters"]
        self.slow_rate: int = job["slow_rate"]
        senders = self.chatters + (1 if self.slow_rate else 0)  # the flooder comes last
        super().__init__(dict(job, senders=senders, receivers=1 if self.slow_rate else 0))
        self.window = WINDOW_TOTAL  # the flooder is the only sender that needs one
        self.flooder = self.chatters if self.slow_rate else None
        self.slow = len(self.socks) - 1 if self.slow_rate else None
        self.fast = [c for c in range(len(self.socks)) if c != self.slow]
        if self.slow is not None:  # it reads on a timer, not when epoll says it may
            self.epoll.unregister(self.socks[self.slow].fileno())
        # A chat message: 16 hex digits of its send time in ns, 8 of its number, 40 bytes
        # of filler, each byte in its sender's range (hex digit d is byte lo(s) + d).
        digits = b"0123456789abcdef"
        ranges = [bytes(range(self.lo(s), self.lo(s) + 16)) for s in range(self.chatters)]
        if any(r[-1] >= self.lo(s + 1) for s, r in enumerate(ranges)):
            raise WorkerError("too many senders for 16 byte values each")
        self.encode = [bytes.maketrans(digits, r) for r in ranges]
        self.decode = [bytes.maketrans(r, digits) for r in ranges]
        self.filler = [self.patterns[s][:40] for s in range(self.chatters)]
        self.streams = [bytearray() for _ in range(self.chatters)]  # all they sent
        self.counted = 0.0  # delivered: chat messages, and flood bytes / MESSAGE_SIZE
        self.latencies: array[float] = array("d")
        self.t0 = self.t1 = 0.0
        self.slow_budget = 0.0  # bytes the slow reader may read now
        self.slow_last = 0.0  # when that was last computed
        self.slow_got = 0  # bytes the slow reader has read in all
        self.slow_end = ""  # how the server ended the slow reader's connection, if it did
        self.flood_held = False  # has FLOOD_AHEAD held the flooder back?

    def run(self, t0: float, t1: float) -> dict[str, Any]:
        """Chat (and flood) until t1, timing messages sent from t0; then wait for the rest."""
        self.t0, self.t1 = t0, t1
        readable = select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR
        monotonic = time.monotonic
        now = self.slow_last = monotonic()
        # Each client on its own beat: the room's messages are spread over the interval.
        next_chat = [now + CHAT_INTERVAL * c / self.chatters for c in range(self.chatters)]
        next_slow = now if self.slow is not None else float("inf")
        start: tuple[int, float] | None = None  # (bytes, messages) delivered at t0
        end = (0, 0.0)  # and at t1
        sending = True
        while True:
            now = monotonic()
            if start is None and now >= t0:
                start = (self.delivered, self.counted)
            if sending and now >= t1:
                end = (self.delivered, self.counted)
                sending = False
                if self.slow is not None and not self.slow_end:  # now it reads all it can
                    self.epoll.register(self.socks[self.slow].fileno(), select.EPOLLIN)
            for c in range(self.chatters):
                if sending and now >= next_chat[c]:
                    self.chat(c)
                    next_chat[c] += CHAT_INTERVAL
                    if next_chat[c] < now:  # we fell behind: keep the beat, not the count
                        next_chat[c] = now + CHAT_INTERVAL
                elif self.sent[c] < len(self.streams[c]):  # what a send() left
                    self.push(c)
            if sending:
                if self.flooder is not None and not self.blocked[self.flooder]:
                    self.pump(self.flooder)
                if self.slow is not None and now >= next_slow:
                    self.read_slowly(now, draining=False)
                    next_slow = now + SLOW_TICK
            elif self.all_delivered():
                break
            elif now > t1 + DRAIN_TIMEOUT:
                raise WorkerError(f"chat bytes still missing {DRAIN_TIMEOUT} s after the end")
            timeout = min(next_chat + [next_slow]) - now if sending else 0.02
            for fd, events in self.epoll.poll(min(max(timeout, 0.0), 0.02)):
                client = self.client_of_fd[fd]
                if events & select.EPOLLOUT:  # the flooder's socket buffer has room again
                    self.blocked[client] = False
                    self.epoll.modify(fd, select.EPOLLIN)
                if client == self.slow:
                    self.read_slowly(now, draining=True)
                elif events & readable:
                    self.receive(client)
        assert start is not None  # t0 <= t1, and the loop ends after t1
        return {
            "ops": end[1] - start[1],
            "bytes": end[0] - start[0],
            "checked": self.delivered,
            "latencies": base64.b64encode(self.latencies.tobytes()).decode(),
            "slow": self.slow_note(),
        }

    def slow_note(self) -> str:
        """What became of the slow reader, for the row's note."""
        if self.slow is None:
            return ""
        held = f", flood held to {FLOOD_AHEAD >> 20} MiB ahead of it" if self.flood_held else ""
        if not self.slow_end:
            return f"slow reader kept (read {megabytes(self.slow_got)} in all){held}"
        return f"slow reader {self.slow_end} by the server after {megabytes(self.slow_got)}{held}"

    def chat(self, c: int) -> None:
        """Client c writes its next message, stamped with the time now."""
        stream = self.streams[c]
        header = f"{time.monotonic_ns():016x}{len(stream) // CHAT_SIZE:08x}".encode()
        stream += header.translate(self.encode[c]) + self.filler[c]
        self.push(c)

    def push(self, c: int) -> None:
        """Send what client c has written and not yet sent, as far as its socket takes it."""
        try:
            self.sent[c] += self.socks[c].send(self.streams[c][self.sent[c] :])
        except BlockingIOError:
            return  # the rest goes on the next round
        self.got[c][c] = self.sent[c]

    def read_slowly(self, now: float, draining: bool) -> None:
        """The slow reader reads what its rate allows by now; when draining, all it can.

        The server may have dropped it: it then reads to the end of what it was sent.
        """
        assert self.slow is not None
        rate = self.slow_rate
        self.slow_budget = min(
            self.slow_budget + rate * (now - self.slow_last), rate * 2 * SLOW_TICK
        )
        self.slow_last = now
        sock = self.socks[self.slow]
        while (draining or self.slow_budget >= 1) and not self.slow_end:
            size = RECV_SIZE if draining else min(RECV_SIZE, int(self.slow_budget))
            try:
                got = sock.recv_into(self.buffer, size)
            except BlockingIOError:
                return
            except ConnectionResetError:
                got = -1
            if got <= 0:
                self.slow_end = "reset" if got else "closed"
                if draining:  # else epoll would report its end on every poll
                    self.epoll.unregister(sock.fileno())
                return
            self.slow_got += got
            self.slow_budget -= got
            self.check_chunk(self.slow, got)

    def room_floor(self, s: int) -> int:
        """The flooder's window starts at what every fast reader has received, and ends at
        most FLOOD_AHEAD past what the slow reader has (see pump)."""
        floor = min(self.got[s][c] for c in self.fast)
        if self.slow is not None and self.got[s][self.slow] + FLOOD_AHEAD - self.window < floor:
            self.flood_held = True
            floor = self.got[s][self.slow] + FLOOD_AHEAD - self.window
        return floor

    def check(self, client: int, sender: int, view: memoryview, position: int) -> int:
        """Check the run of sender's bytes at position in client's chunk; return its length.

        The flooder's bytes are checked as in a broadcast row. A chat run is checked
        against what the sender sent; each chat message it completes is timed.
        """
        if sender == self.flooder:
            length = super().check(client, sender, view, position)
            self.counted += length / MESSAGE_SIZE
            return length
        column = self.got[sender]
        offset = column[client]
        if sender == client:
            raise WorkerError(f"chat client {sender} received its own bytes back")
        unsent = self.sent[sender] - offset
        end = position + min(unsent, len(view) - position)  # nothing past what was sent
        length = (
            0
            if unsent <= 0
            else matching_length(self.streams[sender], offset, view[:end], position, CHAT_SIZE)
        )
        if length == 0:
            raise WorkerError(
                f"client {client}: byte {offset} from chat client {sender} is not what it "
                "sent (lost, repeated, reordered, mixed, or more than it sent)"
            )
        column[client] = offset + length
        self.delivered += length
        self.arrived(client, sender, offset, offset + length)
        return length

    def arrived(self, client: int, sender: int, start: int, end: int) -> None:
        """Bytes start to end of sender's chat stream have reached client: count and time
        every message they complete (the slow reader's are counted, not timed)."""
        first, last = start // CHAT_SIZE, end // CHAT_SIZE  # messages first..last-1
        if first == last:
            return
        self.counted += last - first
        if client == self.slow:
            return
        now = time.monotonic()
        stream, decode = self.streams[sender], self.decode[sender]
        for k in range(first, last):
            stamp = stream[k * CHAT_SIZE : k * CHAT_SIZE + 16].translate(decode)
            sent_at = int(stamp, 16) / 1e9
            if self.t0 <= sent_at < self.t1:
                self.latencies.append(now - sent_at)

    def all_delivered(self) -> bool:
        """Has every fast reader received every byte every other client sent, and the
        slow reader too, unless the server ended its connection?"""
        readers = self.fast if self.slow_end or self.slow is None else range(len(self.socks))
        return all(all(self.got[s][c] == sent for c in readers) for s, sent in enumerate(self.sent))


class CrowdLoad(BroadcastLoad):
    """A crowd: every client sends one job["size"]-byte message at the same moment and
    reads everything the others send, as fast as it can, every byte checked.

    Its bytes are checked as in a broadcast row: each sender's byte values are its own, so
    there can be at most 127 of them (two values each, at least, for their order to show).
    A client the server drops is counted and read to its end (what it got must be right);
    the crowd ends when every other client has every byte of every sender that was not
    dropped, and the same number of bytes of each sender that was.
    """

    def __init__(self, job: dict[str, Any]) -> None:
        if not 2 <= job["senders"] <= 127:
            raise WorkerError("a crowd has 2 to 127 clients")
        super().__init__(dict(job, receivers=0))
        size: int = job["size"]
        self.size = size
        repeats = size // self.period + 1
        self.outgoing = [memoryview(p[: self.period] * repeats)[:size] for p in self.patterns]
        self.dropped: set[int] = set()
        self.last_byte = [0.0] * len(self.socks)  # when each client last received a byte
        self.next_check = 0.0  # see all_delivered

    def run(self, t0: float, t1: float) -> dict[str, Any]:
        """At t0 every client sends its message; read until all is delivered (by t1)."""
        readable = select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR
        sleep_until(t0)
        unsent = set(range(self.senders))
        while unsent or not self.all_delivered():
            unsent -= self.dropped
            for s in [s for s in unsent if not self.blocked[s]]:
                if self.send_rest(s):
                    unsent.discard(s)
            if time.monotonic() > t1:
                raise WorkerError(f"not all delivered in {t1 - t0:g} s")
            for fd, events in self.epoll.poll(0.02):
                client = self.client_of_fd[fd]
                if events & select.EPOLLOUT:  # a sender's socket buffer has room again
                    self.blocked[client] = False
                    self.epoll.modify(fd, select.EPOLLIN)
                if events & readable:
                    self.receive(client)
        finished = [self.last_byte[c] - t0 for c in range(self.senders) if c not in self.dropped]
        return {
            "ops": self.delivered / self.size,
            "bytes": self.delivered,
            "checked": self.delivered,
            "seconds": max(finished, default=0.0),
            "latencies": base64.b64encode(array("d", finished).tobytes()).decode(),
            "dropped": len(self.dropped),
        }

    def send_rest(self, s: int) -> bool:
        """Send what sender s's socket takes of the rest of its message: True once all is
        sent (or the server dropped it)."""
        try:
            self.sent[s] += self.socks[s].send(self.outgoing[s][self.sent[s] :])
        except BlockingIOError:
            pass
        except (BrokenPipeError, ConnectionResetError):
            self.drop(s)
            return True
        self.got[s][s] = self.sent[s]
        if self.sent[s] == self.size:
            return True
        self.blocked[s] = True
        self.epoll.modify(self.socks[s].fileno(), select.EPOLLIN | select.EPOLLOUT)
        return False

    def receive(self, client: int) -> None:
        """Read one chunk for client and check it; note if the server ended its connection."""
        try:
            size = self.socks[client].recv_into(self.buffer)
        except ConnectionResetError:
            size = 0
        if not size:
            self.drop(client)
            return
        self.last_byte[client] = time.monotonic()
        self.check_chunk(client, size)

    def drop(self, client: int) -> None:
        """The server has ended client's connection: count it, and read it no more."""
        if client not in self.dropped:
            self.dropped.add(client)
            self.epoll.unregister(self.socks[client].fileno())

    def all_delivered(self) -> bool:
        """Has every client that was not dropped every byte of every sender that was not,
        and the same number of bytes of each sender that was?"""
        if not self.dropped:  # the usual case, in O(1): every client has every other's
            return self.delivered == self.senders * (self.senders - 1) * self.size
        now = time.monotonic()
        if now < self.next_check:  # else O(clients^2) on every round
            return False
        self.next_check = now + 0.05
        kept = [c for c in range(self.senders) if c not in self.dropped]
        for s, column in enumerate(self.got):
            others = [column[c] for c in kept if c != s]
            wanted = self.size if s not in self.dropped else others[0] if others else 0
            if any(got != wanted for got in others):
                return False
        return True


class Load(Protocol):
    """What a worker runs: built from its job (connecting its clients), then run once."""

    def run(self, t0: float, t1: float) -> dict[str, Any]: ...


LOADS: dict[str, Callable[[dict[str, Any]], Load]] = {
    "ack": AckLoad,
    "broadcast": BroadcastLoad,
    "connect": ConnectLoad,
    "chat": ChatLoad,
    "crowd": CrowdLoad,
}


def worker_main() -> int:
    """Run one worker: read its job, connect, report ready, run when told, report."""
    job = json.loads(sys.stdin.readline())
    try:
        load = LOADS[job["kind"]](job)
        emit({"ready": True})
        words = sys.stdin.readline().split()
        if len(words) != 2:
            return 1  # the parent has gone
        result = load.run(float(words[0]), float(words[1]))
    except (WorkerError, OSError) as error:
        emit({"error": f"{type(error).__name__}: {error}"})
        return 1
    emit(result)
    sys.stdin.read()  # keep the connections open until the parent closes our stdin
    return 0


# ================================================================ the asyncio peer
#
# What a Python programmer would write instead of a select() loop: asyncio's low-level
# Protocol/Transport API, the idiomatic way, with no tuning. `--against asyncio` runs it
# as `python -m tools.bench --serve-asyncio {mode}`, in a process of its own. Like any asyncio
# server it gives every accepted socket TCP_NODELAY, and it never drops a client: what a
# client cannot take yet waits in its transport's buffer, however much that grows.


class AckPeer(asyncio.Protocol):
    """ack mode: answer every chunk a client sends (every data_received()) with b"ACK"."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport to answer on."""
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        """One chunk in, one b"ACK" out."""
        self.transport.write(ACK)


class BroadcastPeer(asyncio.Protocol):
    """broadcast mode: relay every chunk a client sends to every other client in the room."""

    def __init__(self, room: set[BroadcastPeer]) -> None:
        self.room = room  # every connected client's protocol, shared by all of them

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Join the room."""
        self.transport = cast(asyncio.Transport, transport)
        self.room.add(self)

    def data_received(self, data: bytes) -> None:
        """Write the chunk to everyone else; the transports buffer what cannot go yet."""
        for other in self.room:
            if other is not self:
                other.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        """Leave the room (after EOF, a reset, or the server closing us)."""
        self.room.discard(self)


async def serve_asyncio(mode: str, host: str, port: int) -> None:
    """Listen, say where, and serve until SIGINT or SIGTERM."""
    loop = asyncio.get_running_loop()
    room: set[BroadcastPeer] = set()
    factory: Callable[[], asyncio.Protocol] = AckPeer
    if mode == "broadcast":
        factory = lambda: BroadcastPeer(room)  # noqa: E731 (one room for every client)
    # backlog=1024: the 1,000-client rows connect faster than a default backlog of 100.
    server = await loop.create_server(factory, host.strip("[]") or None, port, backlog=1024)
    address = server.sockets[0].getsockname()
    print(f"listening on {address[0]}:{address[1]}", flush=True)
    stopped: asyncio.Future[None] = loop.create_future()

    def stop() -> None:
        if not stopped.done():  # a second signal finds it stopped already
            stopped.set_result(None)

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop)
    async with server:
        await stopped


# ================================================================ parent side


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()  # the name may hold spaces
    ticks = int(fields[11]) + int(fields[12])  # fields 14 and 15 in proc(5)
    return ticks / os.sysconf("SC_CLK_TCK")


def proc_status_kb(pid: int, key: str) -> int:
    """One "kB" line of /proc/PID/status, e.g. VmRSS or VmHWM (peak RSS)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RowFailed(f"no {key} in /proc/{pid}/status")


def stop_process(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    """Signal a process, wait a bounded time, then kill it."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class LineReader:
    """Reads lines from a child's stdout pipe, each within a deadline."""

    def __init__(self, stream: IO[bytes], name: str) -> None:
        self.fd = stream.fileno()
        self.name = name
        self.buffer = bytearray()

    def readline(self, deadline: float) -> bytes:
        """The next line, without its newline; RowFailed on timeout or end of output."""
        while b"\n" not in self.buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RowFailed(f"timed out waiting for {self.name}")
            ready, _, _ = select.select([self.fd], [], [], remaining)
            if ready:
                chunk = os.read(self.fd, 1 << 20)
                if not chunk:
                    raise RowFailed(f"{self.name} exited")
                self.buffer += chunk
        line, _, rest = bytes(self.buffer).partition(b"\n")
        self.buffer = bytearray(rest)
        return line


class ServerProcess:
    """A server under test: started, its port read, its log drained by a thread."""

    def __init__(self, argv: list[str]) -> None:
        self.argv = argv
        self.proc = subprocess.Popen(
            argv,
            cwd=HERE,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        CHILDREN.append(self.proc)
        self.pid = self.proc.pid
        self.head = b""  # the start of its log, up to the first newline
        self.tail = b""  # the end of its log, to show when a row fails
        self.first_line = threading.Event()
        # The server blocks once its log pipe is full, so a thread keeps reading it.
        self.drainer = threading.Thread(target=self.drain, daemon=True)
        self.drainer.start()

    def wait_for_port(self) -> int:
        """The port from the server's first line: `listening on HOST:PORT`."""
        if not self.first_line.wait(START_TIMEOUT):
            raise RowFailed("the server did not say where it listens")
        match = re.search(rb"listening on \S*:(\d+)", self.head)
        if not match:
            raise RowFailed("no 'listening on HOST:PORT' from the server")
        return int(match.group(1))

    def drain(self) -> None:
        """Read the server's output until it ends, keeping the last few kilobytes."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while True:
            chunk = os.read(fd, 65536)
            self.tail = (self.tail + chunk)[-4096:]
            if not self.first_line.is_set():
                self.head += chunk
                if b"\n" in chunk or not chunk:
                    self.first_line.set()
            if not chunk:
                return

    def check_alive(self) -> None:
        """RowFailed if the server has exited on its own."""
        if self.proc.poll() is not None:
            raise RowFailed(f"the server exited with status {self.proc.returncode}")

    def stop(self) -> None:
        """SIGTERM, a bounded wait, then SIGKILL; then close its log once fully read."""
        stop_process(self.proc)
        self.drainer.join(STOP_TIMEOUT)
        # Closing the pipe under a thread that still reads it could read another file
        # that reuses the descriptor: if the thread is stuck, leave the pipe open.
        if not self.drainer.is_alive() and self.proc.stdout is not None:
            self.proc.stdout.close()


class Worker:
    """A load-generator process: this file run with --worker."""

    def __init__(self, name: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            start_new_session=True,  # Ctrl-C in the terminal is ours to handle, not its
        )
        CHILDREN.append(self.proc)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.pid = self.proc.pid
        self.lines = LineReader(self.proc.stdout, name)

    def tell(self, line: str) -> None:
        """Write one line to the worker's stdin."""
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(line.encode() + b"\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise RowFailed(f"{self.lines.name} exited") from None

    def receive(self, deadline: float) -> dict[str, Any]:
        """The worker's next JSON message; RowFailed if it reports an error."""
        line = self.lines.readline(deadline)
        try:
            message: dict[str, Any] = json.loads(line)
        except ValueError:
            raise RowFailed(f"{self.lines.name} said {line[:200]!r}") from None
        if "error" in message:
            raise RowFailed(f"{self.lines.name}: {message['error']}")
        return message

    def stop(self) -> None:
        """Close its stdin (it then exits), wait a bounded time, then end it."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        with contextlib.suppress(BrokenPipeError):  # it may have exited already
            self.proc.stdin.close()
        try:
            self.proc.wait(1.0)  # a worker that has reported exits at once
        except subprocess.TimeoutExpired:  # one still running (a row that failed)
            stop_process(self.proc)
        self.proc.stdout.close()


def prime(port: int, mode: str) -> None:
    """One connect, one round trip, one close, before measuring any server.

    A fresh CPython 3.11 asyncio server reallocates its receive buffer on every read
    until its first client has left, which would make it look several times slower.
    """
    deadline = time.monotonic() + START_TIMEOUT
    with contextlib.ExitStack() as closing:
        a = closing.enter_context(socket.create_connection((HOST, port), START_TIMEOUT))
        b = a  # in ack mode a hears its own reply; in broadcast, a second client does
        if mode == "broadcast":
            b = closing.enter_context(socket.create_connection((HOST, port), START_TIMEOUT))
        b.settimeout(0.05)
        while time.monotonic() < deadline:
            a.sendall(b"p")  # in broadcast, again until b is accepted and hears it
            try:
                if b.recv(16):
                    return
                raise RowFailed("the server closed the priming connection")
            except socket.timeout:
                continue
        raise RowFailed("the server did not answer the priming connection")


@dataclass
class Result:
    """What one row measured against one server."""

    ops: float  # round trips, delivered messages, or connections
    seconds: float  # the window the workers counted them in
    cpu_wall: float  # the wall-clock seconds between the two CPU snapshots
    server_cpu: float  # CPU seconds, user + system, between the snapshots
    generator_cpu: float
    peak_rss_kb: int = 0
    latencies: list[float] = field(default_factory=list)  # seconds, sorted
    delivered_bytes: int | None = None  # broadcast: in the window
    checked_bytes: int = 0  # broadcast: every byte received, window or not
    slow_note: str = ""  # chat: whether the server ended the slow reader's connection
    dropped: int = 0  # crowd: clients whose connection the server ended
    note: str = ""


class Snapshot(NamedTuple):
    """When, and how many CPU seconds the server and all workers had used by then."""

    at: float
    server: float
    generator: float


def snapshot(server: ServerProcess, workers: list[Worker]) -> Snapshot:
    """Read the server's and the workers' CPU time from /proc."""
    generator = sum(proc_cpu_seconds(w.pid) for w in workers)
    return Snapshot(time.monotonic(), proc_cpu_seconds(server.pid), generator)


def result_between(start: Snapshot, end: Snapshot, ops: float, seconds: float) -> Result:
    """A Result with the CPU used between two snapshots."""
    return Result(
        ops=ops,
        seconds=seconds,
        cpu_wall=end.at - start.at,
        server_cpu=end.server - start.server,
        generator_cpu=end.generator - start.generator,
    )


def split_job(row: Row, port: int, workers: int) -> list[dict[str, Any]]:
    """The jobs for the workers: ack clients split between them; else one worker."""
    job: dict[str, Any] = {"kind": row.kind, "port": port, "idle": row.idle}
    if row.kind == "chat":
        return [dict(job, chatters=CHAT_CLIENTS, slow_rate=row.slow_rate)]
    if row.kind == "crowd":
        return [dict(job, senders=row.senders, size=row.size)]
    if row.kind == "broadcast":  # its window needs every client's progress: one process
        return [dict(job, receivers=row.receivers, senders=row.senders)]
    if row.kind == "connect" or workers == 1:
        return [dict(job, active=row.active)]
    return [
        dict(job, active=row.active * (i + 1) // workers - row.active * i // workers,
             idle=row.idle * (i + 1) // workers - row.idle * i // workers)
        for i in range(workers)
    ]  # fmt: skip


def sleep_until(moment: float) -> None:
    """Sleep until time.monotonic() reaches moment."""
    time.sleep(max(0.0, moment - time.monotonic()))


def measure(row: Row, argv: list[str], args: argparse.Namespace) -> Result:
    """Run one row against a fresh server started with argv."""
    try:
        server = ServerProcess(argv)
    except OSError as error:
        raise RowFailed(f"cannot start the server: {error}") from None
    workers: list[Worker] = []
    try:
        port = server.wait_for_port()
        prime(port, row.mode)
        rss_before = proc_status_kb(server.pid, "VmRSS")
        for i, job in enumerate(split_job(row, port, args.workers)):
            workers.append(Worker(f"worker {i}"))
            workers[-1].tell(json.dumps(job))
        ready_by = time.monotonic() + SETUP_TIMEOUT
        for worker in workers:
            worker.receive(ready_by)
        if row.kind == "crowd":
            result = measure_crowd(server, workers)
        elif row.kind == "connect":
            result = measure_connect(server, workers)
            rss_after = proc_status_kb(server.pid, "VmRSS")
            growth = (rss_after - rss_before) / row.idle
            result.note = f"RSS {rss_before / 1024:.1f} -> {rss_after / 1024:.1f} MB, "
            result.note += f"{growth:+.2f} kB/conn"
        else:
            seconds = args.seconds if row.seconds is None else row.seconds
            warmup = args.warmup if row.warmup is None else row.warmup
            result = measure_window(server, workers, seconds, warmup)
        if row.kind == "broadcast":
            clients = row.receivers + row.senders
            result.note = f"all {result.checked_bytes / 1e6:,.0f} MB checked, {clients} clients"
        if row.kind == "crowd":
            result.note = f"all {megabytes(result.checked_bytes)} checked, "
            result.note += f"all delivered in {milliseconds(result.seconds)} ms, "
            result.note += f"{result.dropped} dropped"
        if row.kind == "chat":
            result.note = f"all {megabytes(result.checked_bytes)} checked"
            result.note += f", {len(result.latencies)} messages timed" + result.slow_note
        result.peak_rss_kb = proc_status_kb(server.pid, "VmHWM")
        server.check_alive()
        return result
    except (RowFailed, OSError) as failure:
        log = server.tail.decode(errors="replace").strip().splitlines()[-5:]
        raise RowFailed("\n    ".join([str(failure), "server log ends:", *log])) from None
    finally:
        for worker in workers:
            worker.stop()
        server.stop()


def measure_window(
    server: ServerProcess, workers: list[Worker], seconds: float, warmup: float
) -> Result:
    """Warm up, then measure from T0 to T1: CPU from /proc, counts from the workers."""
    t0 = time.monotonic() + warmup
    t1 = t0 + seconds
    for worker in workers:
        worker.tell(f"{t0!r} {t1!r}")
    sleep_until(t0)
    start = snapshot(server, workers)
    sleep_until(t1)
    end = snapshot(server, workers)
    reports = [w.receive(t1 + DRAIN_TIMEOUT + STOP_TIMEOUT) for w in workers]
    result = result_between(start, end, sum(r["ops"] for r in reports), seconds)
    for report in reports:
        if "latencies" in report:
            samples: array[float] = array("d")
            samples.frombytes(base64.b64decode(report["latencies"]))
            result.latencies += samples
        if "bytes" in report:
            result.delivered_bytes = (result.delivered_bytes or 0) + report["bytes"]
            result.checked_bytes += report["checked"]
        if report.get("slow"):
            result.slow_note = f", {report['slow']}"
    result.latencies.sort()
    return result


def measure_crowd(server: ServerProcess, workers: list[Worker]) -> Result:
    """The crowd row: from the moment every client sends until the last byte arrives."""
    (worker,) = workers
    t0 = time.monotonic() + 0.1  # time for the worker to hear it
    worker.tell(f"{t0!r} {t0 + CROWD_TIMEOUT!r}")
    sleep_until(t0)
    start = snapshot(server, workers)
    report = worker.receive(t0 + CROWD_TIMEOUT + STOP_TIMEOUT)
    end = snapshot(server, workers)
    result = result_between(start, end, report["ops"], report["seconds"])
    result.delivered_bytes = report["bytes"]
    result.checked_bytes = report["checked"]
    result.dropped = report["dropped"]
    samples: array[float] = array("d")
    samples.frombytes(base64.b64decode(report["latencies"]))
    result.latencies = sorted(samples)
    return result


def measure_connect(server: ServerProcess, workers: list[Worker]) -> Result:
    """The memory row: the window is the time the workers take to connect everyone."""
    start = snapshot(server, workers)
    for worker in workers:
        worker.tell("0 0")
    reports = [w.receive(start.at + SETUP_TIMEOUT) for w in workers]
    end = snapshot(server, workers)
    return result_between(start, end, sum(r["ops"] for r in reports), end.at - start.at)


# ---------------------------------------------------------------- the table

COLUMNS = [
    ("row", 18),
    ("server", 17),
    ("ops/s", 9),
    ("MB/s", 7),
    ("p50 ms", 7),
    ("p99 ms", 7),
    ("srv us/op", 9),
    ("srv CPU", 7),
    ("gen CPU", 7),
    ("peak RSS", 9),
    ("", 0),
]


def format_line(cells: Sequence[str]) -> str:
    """Cells padded to the column widths: the first two left-aligned, the rest right."""
    parts = []
    for i, (cell, (_, width)) in enumerate(zip(cells, COLUMNS)):
        parts.append(cell.ljust(width) if i < 2 else cell.rjust(width))
    return "  ".join(parts).rstrip()


def percentile(sorted_values: list[float], fraction: float) -> float:
    """The nearest-rank percentile of an already sorted list."""
    return sorted_values[min(len(sorted_values) - 1, int(fraction * len(sorted_values)))]


def milliseconds(seconds: float) -> str:
    """A latency in ms, to three significant digits (or to the ms, from 100 ms)."""
    ms = seconds * 1000
    return f"{ms:,.{3 if ms < 1 else 2 if ms < 10 else 1 if ms < 100 else 0}f}"


def result_cells(label: str, who: str, r: Result) -> list[str]:
    """One table line for one result."""
    latency = ["-", "-"]
    if r.latencies:
        latency = [milliseconds(percentile(r.latencies, q)) for q in (0.5, 0.99)]
    megabytes = "-" if r.delivered_bytes is None else f"{r.delivered_bytes / r.seconds / 1e6:.1f}"
    per_op = f"{r.server_cpu / r.ops * 1e6:.2f}" if r.ops else "-"
    return [
        label,
        who,
        f"{r.ops / r.seconds:,.0f}",
        megabytes,
        *latency,
        per_op,
        f"{r.server_cpu / r.cpu_wall:.0%}",
        f"{r.generator_cpu / r.cpu_wall:.0%}",
        f"{r.peak_rss_kb / 1024:.1f} MB",
        r.note,
    ]


def median(results: list[Result], row: Row) -> Result:
    """The result with the median server CPU per operation (the lower one of two); in a
    chat row, the one with the median p99 latency, and in a crowd row the one with the
    median time until all was delivered: what those rows are about."""

    def key(r: Result) -> float:
        if row.kind == "chat" and r.latencies:
            return percentile(r.latencies, 0.99)
        if row.kind == "crowd":
            return r.seconds
        return r.server_cpu / r.ops if r.ops else float("inf")

    return sorted(results, key=key)[(len(results) - 1) // 2]


def ratio_cells(ours: Result, theirs: Result, who: str) -> list[str]:
    """A peer's ratio line: throughput ours/theirs, server CPU per op theirs/ours."""
    cells = ["", f"vs {who}", "", "", "", "", "", "", "", "", ""]
    if theirs.ops and ours.ops:
        cells[2] = f"x{(ours.ops / ours.seconds) / (theirs.ops / theirs.seconds):.2f}"
    if theirs.ops and ours.ops and ours.server_cpu:
        cells[6] = f"x{(theirs.server_cpu / theirs.ops) / (ours.server_cpu / ours.ops):.2f}"
    return cells


def machine_line() -> str:
    """CPU model, core count, Python version and kernel."""
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    python = f"{sys.implementation.name} {sys.version.split()[0]}"
    return f"machine: {model}, {os.cpu_count()} cores, {python}, Linux {os.uname().release}"


def load_line(when: str) -> str:
    """The machine's load average: on a shared machine, how busy the others kept it."""
    one, five, fifteen = os.getloadavg()
    return f"load average {when}: {one:.2f}, {five:.2f}, {fifteen:.2f} (1, 5, 15 min)"


def chat_legend(row: Row, args: argparse.Namespace) -> str:
    """What a chat row does, and when it measures."""
    seconds = args.seconds if row.seconds is None else row.seconds
    warmup = args.warmup if row.warmup is None else row.warmup
    legend = (
        f"{row.label}: {CHAT_CLIENTS} clients each send a {CHAT_SIZE}-byte message every "
        f"{CHAT_INTERVAL * 1000:g} ms, stamped with its send time; p50/p99: its delay to each "
        f"other client;\n    {seconds:g} s window after {warmup:g} s"
    )
    if not row.slow_rate:
        return legend
    legend += (
        f"; with a client that reads {row.slow_rate / 1024:.0f} KiB/s and one that sends "
        f"{MESSAGE_SIZE}-byte messages as fast as the room takes them.\n"
        "    Our server keeps a reader that takes --max-buffer/2 per --grace "
        f"({FLOOR_RATE >> 10} KiB/s by default), after a 2 s grace: "
    )
    if row.slow_rate < FLOOR_RATE:
        return legend + (
            "the warm-up is long enough\n    for it to drop this one. A server that keeps it "
            "is reported as is"
        )
    return legend + (
        f"this one reads {row.slow_rate / FLOOR_RATE:.2f}x that,\n    so it is kept, and "
        "the room waits for it whenever it is owed --max-buffer"
    )


def crowd_legend(row: Row) -> str:
    """What a crowd row does."""
    return (
        f"{row.label}: {row.senders} clients each send one {row.size >> 10} KiB message at the "
        "same moment and read all the others' as fast as they can;\n    ops: messages "
        "delivered per second until the last byte arrived; p50/p99: the time until a client "
        "has every byte"
    )


def print_header(
    commands: list[tuple[str, list[str]]], rows: list[Row], args: argparse.Namespace
) -> None:
    """The machine, the exact commands, the settings, the legend and the column titles."""
    print(machine_line())
    print(load_line("at the start"))
    print(f"run: {shlex.join(['python', *sys.argv])}")
    for who, argv in commands:
        command = shlex.join(argv).replace("'{mode}'", "{mode}")
        print(f"{who}: (cd {shlex.quote(HERE)} && {command})")
    print(
        f"window {args.seconds:g} s after {args.warmup:g} s of warm-up (unless a row says "
        "otherwise); a fresh, primed server per row;\n"
        f"load generator: {args.workers} process(es) for ack rows, 1 for the others"
    )
    if args.repeat > 1:
        print(
            f"each row measured {args.repeat} times, interleaved, the servers taking turns to go "
            "first;\nshown: the median by srv us/op (chat rows: by p99, crowd: by time), and each "
            "pair's srv us/op ratio"
        )
    print(
        "ops: ack = round trips; broadcast, chat = messages delivered (one message arriving "
        "at one client);\n     memory = connections opened (connect + one round trip)\n"
        "srv us/op: server CPU time (user + sys) per op; srv CPU, gen CPU: CPU seconds of the "
        "server, of the load generator, per second"
    )
    for row in rows:
        if row.kind == "chat":
            print(chat_legend(row, args))
        if row.kind == "crowd":
            print(crowd_legend(row))
    if len(commands) > 1:
        print("vs PEER: ops/s ours / peer's, srv us/op peer's / ours (above 1: ours is better)")
    print()
    print(format_line([title for title, _ in COLUMNS]))
    sys.stdout.flush()


# ---------------------------------------------------------------- main


def server_argv(command: str, mode: str) -> list[str]:
    """A server command with {mode} filled in and where to listen appended."""
    argv = [word.replace("{mode}", mode) for word in shlex.split(command)]
    if argv and argv[0] == "python":  # the interpreter running the bench, not PATH's
        argv[0] = sys.executable
    return argv + ["--host", HOST, "--port", "0"]


def raise_file_limit(wanted: int) -> None:
    """Raise our soft RLIMIT_NOFILE toward the hard limit: 1,000+ clients need > 1024.

    Children inherit it, so the workers and the server get it too (set here rather than
    in preexec_fn, which is unsafe once threads run: we drain server logs in threads).
    """
    if sys.platform == "win32":
        return  # no RLIMIT_NOFILE: sockets are handles, not C descriptors
    import resource  # Linux and macOS only

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < wanted:
        print(
            f"warning: only {target} file descriptors allowed; big rows may fail", file=sys.stderr
        )


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """--help shows the module docstring as written, and every option's default."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m tools.bench", description=__doc__, formatter_class=HelpFormatter
    )
    parser.add_argument("--server", default=DEFAULT_SERVER, metavar="CMD", help="our server")
    parser.add_argument(
        "--against",
        action="append",
        default=[],
        metavar="CMD",
        help="another server to compare, row by row (repeatable); 'asyncio': the one in here",
    )
    parser.add_argument("--seconds", type=float, default=3.0, help="measured window per row")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before the window")
    parser.add_argument("--rows", metavar="REGEX", help="only rows whose label matches")
    parser.add_argument(
        "--repeat", type=int, default=1, help="measure each row this often; print the median"
    )
    parser.add_argument("--workers", type=int, choices=(1, 2), default=1, help="for ack rows")
    parser.add_argument(
        "--smoke", action="store_true", help="four tiny rows: --seconds 0.2 --warmup 0.05"
    )
    parser.add_argument(
        "--serve-asyncio",
        choices=("ack", "broadcast"),
        metavar="MODE",
        help="don't measure: run the asyncio peer (ack or broadcast) with --host and --port",
    )
    # SUPPRESS: the attribute is set only if given (checked below), and no "(default: None)".
    parser.add_argument("--host", default=argparse.SUPPRESS, help=f"with --serve-asyncio: {HOST}")
    parser.add_argument(
        "--port", type=int, default=argparse.SUPPRESS, help="with --serve-asyncio: 8000"
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.serve_asyncio and ("host" in args or "port" in args):
        parser.error("--host and --port go with --serve-asyncio")
    if args.seconds <= 0 or args.warmup < 0:
        parser.error("--seconds must be positive and --warmup not negative")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.smoke:
        args.seconds, args.warmup = 0.2, 0.05
    return args


def interrupted(signum: int, frame: FrameType | None) -> None:
    """Ctrl-C or SIGTERM: stop here, and let a second one not cut the cleanup short."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def name_contenders(ours: str, against: list[str]) -> list[tuple[str, str]]:
    """("ours", CMD) and a short, unique name for each --against CMD: "asyncio" for the
    peer in this file, else the name of the first .py file (or program) in CMD."""
    contenders = [("ours", ours)]
    for command in against:
        if command == "asyncio":
            name, command = "asyncio", ASYNCIO_PEER
        else:
            words = shlex.split(command) or ["?"]
            program = next((w for w in words if w.endswith(".py")), words[0])
            name = os.path.splitext(os.path.basename(program))[0][:14]
        taken = {who for who, _ in contenders}
        unique, number = name, 2
        while unique in taken:
            unique, number = f"{name}-{number}", number + 1
        contenders.append((unique, command))
    return contenders


def run(args: argparse.Namespace) -> int:
    """Run the rows, printing each as it is measured; return the exit status."""
    rows = smoke_rows() if args.smoke else default_rows()
    if args.rows:
        rows = [row for row in rows if re.search(args.rows, row.label)]
    contenders = name_contenders(args.server, args.against)
    print_header([(who, server_argv(cmd, "{mode}")) for who, cmd in contenders], rows, args)
    failed = 0
    for row in rows:
        results: dict[str, list[Result]] = {who: [] for who, _ in contenders}
        failures: dict[str, str] = {}
        for repeat in range(args.repeat):
            # Take turns at going first, so that a drift of the machine favours no one.
            turn = repeat % len(contenders)
            for who, command in contenders[turn:] + contenders[:turn]:
                if who in failures:
                    continue
                try:
                    results[who].append(measure(row, server_argv(command, row.mode), args))
                except RowFailed as failure:
                    failures[who] = str(failure)
        for who, _ in contenders:
            if who in failures:
                failed += 1
                print(f"{format_line([row.label, who])}  FAILED: {failures[who]}", flush=True)
            else:
                cells = result_cells(row.label, who, median(results[who], row))
                print(format_line(cells), flush=True)
        for who, _ in contenders[1:]:
            if "ours" in failures or who in failures:
                continue
            ours, theirs = results["ours"], results[who]
            cells = ratio_cells(median(ours, row), median(theirs, row), who)
            if args.repeat > 1:  # every pair's own ratio, to show the spread
                pairs = [ratio_cells(o, t, who)[6] or "-" for o, t in zip(ours, theirs)]
                cells[-1] = "pairs: " + " ".join(pairs)
            print(format_line(cells), flush=True)
    if rows:
        print(load_line("at the end"))
    else:
        print(f"no row matches {args.rows!r}", file=sys.stderr)
    if failed:
        print(f"{failed} row(s) FAILED", file=sys.stderr)
    return 1 if failed or not rows else 0


def main(argv: list[str] | None = None) -> int:
    """Parse the command line; run as the benchmark or as one of its workers."""
    args = parse_args(argv)
    if args.worker:
        return worker_main()
    if args.serve_asyncio:
        host, port = getattr(args, "host", HOST), getattr(args, "port", 8000)
        asyncio.run(serve_asyncio(args.serve_asyncio, host, port))
        return 0
    signal.signal(signal.SIGINT, interrupted)
    signal.signal(signal.SIGTERM, interrupted)
    raise_file_limit(4096)  # 1,000 clients in one worker, and some to spare
    try:
        return run(args)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    finally:  # measure() stops its processes, unless a signal cut that short
        for child in CHILDREN:
            if child.poll() is None:
                child.kill()
                child.wait()


if __name__ == "__main__":
    sys.exit(main())
