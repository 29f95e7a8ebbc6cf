"""make check's hostile cases: clients that do what no transcript's client does, against
any server, judged from outside its process.

Each case starts a fresh server (check.py passes a CommandServer's start), loads it as one
of the README's pitfalls or rules says, and measures what any server shows to the outside:
what its clients receive and when, and, through psutil, its memory, CPU time, sockets and
file limit, summed over its process and every process it started. Each gives one line:
what was measured, and the bound it was held to, and why.

    stalled-reader      pitfall 5: one client stops reading; two others still chat
    memory              rules 2 and 3: clients that never read, and a flood
    send-and-close      rule 1: clients that send and close at once lose nothing
    past-fd-setsize     pitfall 8: 1,100 clients, more than select() can watch
    out-of-files        pitfall 9: the server's file limit lowered under a crowd
    slow-reader         rule 4: a reader too slow to keep, said as a fact
    clean-stop          pitfall 11: SIGINT, and no traceback
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import pexpect
import psutil

from tools.harness import (
    QUIET,
    WAIT,
    Client,
    ServerProcess,
    StartServer,
    can_open,
    last_line,
    processes,
    wait_until,
)
from tools.load import ChatRoom, Flood, Plan, introduce, what_is_wrong

# ---------------------------------------------------------------- the sizes, and why

CHAT_SECONDS = 1.0  # a chat message every CHAT_PACE s for this long, while the room floods
CHAT_PACE = 0.05
# The most a chat message may take. A server may hold the room while it decides to give up
# a client that stopped reading (this repository's holds it, rule 3, until its 2 s grace
# runs out, rule 4), but a chat that waits longer than this has, to its people, stopped.
CHAT_BOUND = 3.0
SLOW_RATE = 64 * 1024  # bytes/s: a quarter of the slowest reader this repository keeps
SLOW_SECONDS = 3.0  # the slow reader's room chats this long: past this repository's grace
# Clients that never read, one crowd per server. With the flooder, fewer than 100: some
# servers serve no more (ncat's default), and would turn the flooder away.
MEMORY_CROWDS = (10, 90)
MEMORY_SECONDS = 5.0  # the most a flood lasts (see flood_growth)
STALL = 0.3  # seconds in which a server that takes nothing more of a flood holds it back
# Megabytes the server may grow by while a flood meets clients that never read: 64 times
# this repository's limit of what one client is owed (1 MiB); a server that keeps a copy
# of each chunk for each of 90 clients holds 90 MB once each is owed 1 MiB.
MEMORY_BOUND = 64.0
# What more a client may cost in the larger crowd: a buffer of its own, not the flood.
MEMORY_PER_CLIENT = 64 / 1024  # MB
SENDERS = 400  # clients that send a message and close at once
SENDER_BATCH = 40  # of them connected at a time: some servers serve 100 at most (ncat)
PAST_FD_SETSIZE = 1100  # clients: more than select() can watch (0 to 1023), as pitfall 8 says
# Files open when the server starts, as a careless parent leaves them: with them, its
# 1,000th client's descriptor (this repository's most clients) is past FD_SETSIZE.
HELD_FILES = 64
SERVER_FILES = 4096  # the server's file limit: FD_SETSIZE, not the limit, is what bites
FILES_ROOM = 16  # out of files: descriptors left to the server beyond those it has open
FILES_WAITING = 32  # clients more than there is room for
# Seconds the server's CPU time is measured while clients wait: long enough to hold one
# try again of a server that waits a second before it retries accept().
SPIN_WINDOW = 1.0
# CPU seconds in that window that show a spinning loop: one that spins takes nearly all
# of it, less when its log blocks it or the machine is busy; one that sleeps takes none.
SPIN_LIMIT = 0.15
PROGRESS_WAIT = WAIT  # for a waiting client to be served once others left: SYN retries
SETTLE = 0.3  # seconds without another client served that show the server has served all
PACE_WAIT = 0.1  # seconds for each client of a crowd to be served, while the server accepts


class Failed(Exception):
    """The case failed: what was measured, and the bound it broke."""


class NotRun(Exception):
    """This machine, or the modes the check was given, cannot run the case: why."""


@dataclass(frozen=True)
class Case:
    """One hostile case: its name, the README's pitfall or rule it shows, the modes it runs
    in (the first one given is taken), and what runs it: given the check's way of starting
    a server, and the mode, it returns what it measured, or raises Failed or NotRun.
    A timed one holds the server to a bound in seconds of the clock, which a busy machine
    could break, so make test runs it with nothing else of its own beside it. (CPU time in
    a window is no such bound: a server that sleeps uses none however busy the machine,
    and one that spins uses a good part of a core even then.)"""

    name: str
    shows: str
    modes: tuple[str, ...]
    run: Callable[[StartServer, str], str]
    timed: bool = False  # a bound in seconds: make test runs it on its own


# ---------------------------------------------------------------- the server, from outside


def resident_mb(group: list[psutil.Process]) -> float:
    """The resident memory of these processes, in MB (those that have exited: none)."""
    total = 0
    for process in group:
        with contextlib.suppress(psutil.Error):
            total += process.memory_info().rss
    return total / (1 << 20)


def cpu_seconds(group: list[psutil.Process]) -> float:
    """The CPU time these processes have used, user and system."""
    total = 0.0
    for process in group:
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            total += times.user + times.system
    return total


def server_ends(group: list[psutil.Process]) -> set[int]:
    """The client ports of the connections the server has accepted and holds open (the
    kernel's table, through psutil)."""
    ports: set[int] = set()
    for process in group:
        with contextlib.suppress(psutil.Error):
            connections = process.net_connections("tcp")
            ports.update(c.raddr.port for c in connections if c.raddr)
    return ports


def wait_until_accepted(server: ServerProcess, clients: list[Client]) -> None:
    """Wait (bounded: WAIT) until the server has accepted every one of these clients, or
    has exited (then fail, saying so)."""
    group, ports = processes(server), {client.port for client in clients}
    gone = server.child.proc.poll
    wait_until(lambda: gone() is not None or ports <= server_ends(group), WAIT)
    if gone() is not None:
        assert_alive(server, f"as {plural(len(clients), 'client')} connected")


def server_closed(group: list[psutil.Process], client_port: int) -> bool:
    """Whether the server has closed its end of the connection from client_port: the
    kernel's table (psutil) shows none of its sockets still established to it."""
    for process in group:
        with contextlib.suppress(psutil.Error):
            for connection in process.net_connections("tcp"):
                if connection.raddr and connection.raddr.port == client_port:
                    return connection.status != psutil.CONN_ESTABLISHED
    return True


def exit_report(server: ServerProcess) -> str | None:
    """If the server has exited: its status and its last line of output; else None."""
    status = server.child.proc.poll()
    if status is None:
        return None
    return f"the server exited with status {status}; {last_words(server)}"


def last_words(server: ServerProcess) -> str:
    """The last line the server printed, once it has exited (bounded: QUIET)."""
    with contextlib.suppress(pexpect.TIMEOUT, pexpect.EOF):
        server.child.expect(pexpect.EOF, timeout=QUIET)
    return last_line(server)


def assert_alive(server: ServerProcess, when: str) -> None:
    """Fail the case, saying when, if the server has exited. Its clients see their sockets
    closed as it dies, before its shell has seen it exit and exited too: a moment's grace."""
    with contextlib.suppress(subprocess.TimeoutExpired):
        server.child.proc.wait(timeout=QUIET)
    report = exit_report(server)
    if report is not None:
        raise Failed(f"{when}, {report}")


def plural(count: int, thing: str) -> str:
    """'1 client', '20 clients', '1,100 clients'."""
    return f"{count:,} {thing}{'' if count == 1 else 's'}"


# ---------------------------------------------------------------- pitfall 5: a stalled reader


def chat_until(room: ChatRoom, seconds: float, watch: Callable[[], None]) -> None:
    """Send a chat message every CHAT_PACE s for seconds, calling watch() between."""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        room.chat()
        watch()
        time.sleep(CHAT_PACE)  # the chat's pace


def chat_delays(room: ChatRoom, bound: float) -> tuple[dict[int, float], list[int]]:
    """Wait (bounded: bound s after the last was sent) for the last chat message: once it
    has come, every one that will come has (they share a stream). Return each arrived
    one's delay, and the numbers of those that did not arrive within bound."""
    arrived, last = room.heard.arrived, len(room.sent_at) - 1
    wait_until(lambda: last in arrived, room.sent_at[last] + bound - time.monotonic())
    delays = {n: arrived[n] - sent for n, sent in enumerate(room.sent_at) if n in arrived}
    late = [n for n in range(len(room.sent_at)) if delays.get(n, bound) >= bound]
    return delays, late


def what_came(room: ChatRoom, delays: dict[int, float], late: list[int]) -> str:
    """Of the chat messages, how many came within CHAT_BOUND, and how many never came
    though later ones did: lost, not late."""
    came = f"{len(room.sent_at) - len(late)} of {len(room.sent_at)} came within {CHAT_BOUND:g} s"
    missing = lost(delays, late)
    if missing:
        came += f"; {plural(len(missing), 'message')} never came, though later ones did"
    return came


def lost(delays: dict[int, float], late: list[int]) -> list[int]:
    """The late chat messages that never came, though later ones did."""
    return [n for n in late if n not in delays and any(m > n for m in delays)]


def stalled_reader(start: StartServer, mode: str) -> str:
    """One client reads nothing while another floods: two others chat, and each message
    must arrive within CHAT_BOUND. A server whose send() blocks waits for the one that
    does not read, and every other client waits with it."""
    with start(mode) as server, ChatRoom(server, 0) as room:
        chat_until(room, CHAT_SECONDS, lambda: None)
        delays, late = chat_delays(room, CHAT_BOUND)
        assert_alive(server, "while one client did not read")
    while_ = "while one client read nothing and another flooded, of the chat between two others"
    if lost(delays, late):
        raise Failed(f"{while_}, {what_came(room, delays, late)}")
    if late:
        waits = "the room waits for the client that reads nothing"
        raise Failed(f"{while_}, {what_came(room, delays, late)}: {waits}")
    slowest = max(delays.values())
    every = f"every one of {len(room.sent_at)} came within {CHAT_BOUND:g} s"
    return f"{while_}, {every} (the slowest in {slowest:.2f} s)"


# ---------------------------------------------------------------- rules 2 and 3: memory


def flood_growth(start: StartServer, mode: str, crowd_size: int) -> tuple[float, int]:
    """A fresh server, crowd_size clients that never read, and one that floods until the
    server takes no more of it for STALL s (it holds the flood back, or is stuck), or has
    grown by MEMORY_BOUND, or MEMORY_SECONDS have passed. Return how much it grew, at its
    peak (resident size, summed over its processes, every 10 ms), in MB, and the bytes the
    flood sent. (First the kernel's buffers to each client fill: megabytes each.)"""
    with start(mode) as server:
        crowd = [Client(server, rcvbuf=4096) for _ in range(crowd_size)]  # fills at once
        flooder = Client(server)  # last: once its hello is read, the crowd has been accepted
        introduce(flooder, crowd)
        group = processes(server)
        before = peak = resident_mb(group)
        with Flood(flooder.sock, b".") as flood:
            started = took = time.monotonic()
            sent = 0
            while peak - before < MEMORY_BOUND and time.monotonic() - started < MEMORY_SECONDS:
                if flood.sent != sent:
                    sent, took = flood.sent, time.monotonic()
                elif time.monotonic() - took > STALL:
                    break
                peak = max(peak, resident_mb(group))
                time.sleep(0.01)  # a sample every 10 ms
            sent = flood.stop()
        peak = max(peak, resident_mb(group))
        assert_alive(server, f"while {plural(crowd_size, 'client')} did not read")
    return peak - before, sent


def memory(start: StartServer, mode: str) -> str:
    """A flood, and a crowd that never reads, twice: 10 clients, then 90. The server must
    grow by less than MEMORY_BOUND each time, and by no more than MEMORY_PER_CLIENT per
    client more with the larger crowd: a chunk owed to many is kept once (rule 2), and
    what one client is owed is bounded (rule 3)."""
    small, large = MEMORY_CROWDS
    grew_small, sent_small = flood_growth(start, mode, small)
    said = (
        f"a flood to clients that never read: the server grew by {grew_small:.1f} MB with "
        f"{small} of them ({sent_small / (1 << 20):.0f} MiB sent)"
    )
    if grew_small >= MEMORY_BOUND:  # no need for the larger crowd
        raise Failed(f"{said}: not under {MEMORY_BOUND:g} MB")
    grew_large, sent_large = flood_growth(start, mode, large)
    said += f", {grew_large:.1f} MB with {large} ({sent_large / (1 << 20):.0f} MiB sent)"
    most_more = (large - small) * MEMORY_PER_CLIENT
    if grew_large >= MEMORY_BOUND:
        raise Failed(f"{said}: not under {MEMORY_BOUND:g} MB")
    if grew_large - grew_small > most_more:
        more = f"{grew_large - grew_small:.1f} MB more with {large - small} more clients"
        raise Failed(f"{said}: {more}, over {most_more:g} MB: it grows with their number")
    return f"{said}: under {MEMORY_BOUND:g} MB, and not growing with the number of clients"


# ---------------------------------------------------------------- rule 1: send and close


def send_and_close(start: StartServer, mode: str) -> str:
    """SENDERS clients, SENDER_BATCH at a time, connect, then each in turn sends a numbered
    message and closes at once (`printf hi | nc -N`), as fast as they can: the client that
    stays must get every message, each once. The server meets many at once, so it relays
    one sender's message to others that have closed and whose own it has not read yet: a
    send() to them fails, and a server that then forgets them loses their messages."""
    with start(mode) as server:
        stays, greeter = Client(server), Client(server)
        introduce(greeter, [stays])  # stays is in the room before anyone sends
        greeter.close()
        plans = [Plan(1, "closes")] * SENDERS + [Plan(0, "stays")]
        received = b""
        for first in range(1, SENDERS + 1, SENDER_BATCH):
            numbers = range(first, min(first + SENDER_BATCH, SENDERS + 1))
            batch = [Client(server) for _ in numbers]
            wait_until_accepted(server, batch)  # so that the server meets them all at once
            for number, sender in zip(numbers, batch):
                with contextlib.suppress(OSError):  # reset: the server has died, say
                    sender.send(plans[number - 1].sends(number))
                sender.close()
            expected = sum(len(plans[number - 1].sends(number)) for number in numbers)
            came = stays.receive(expected, timeout=WAIT)
            received += came
            if len(came) < expected:
                break  # some were lost: no need for more batches
        received += stays.receive(1, timeout=QUIET)  # nothing more may arrive
        assert_alive(server, "as clients sent and closed")
    problems = what_is_wrong(len(plans), plans, received)
    did = f"{SENDERS} clients, {SENDER_BATCH} at a time, each sent a message and closed at once"
    if problems:
        counted = len(re.findall(rb"<c\d+m0>", received))
        got = f"the client that stayed got {counted} of their messages"
        raise Failed(f"{did}: {got} ({problems[0]})")
    return f"{did}: the one that stayed got every one, once"


# ---------------------------------------------------------------- pitfalls 8 and 9: a crowd


@dataclass
class Crowd:
    """Clients of a server, each sending one probe once connected: in ack mode b"?", which
    earns b"ACK"; in broadcast b"<k>", which the server relays to client 0, the observer,
    connected and served first. A client is connecting until its connection is made,
    served once the answer to its probe has come, closed once the server closed (or
    refused) it, and waiting until one of these."""

    server: ServerProcess
    mode: str
    socks: list[socket.socket] = field(default_factory=list)
    observed: bytearray = field(default_factory=bytearray)  # what the observer received
    connecting: set[int] = field(default_factory=set)
    served: set[int] = field(default_factory=set)
    closed: set[int] = field(default_factory=set)
    left: set[int] = field(default_factory=set)  # we closed these
    selector: selectors.BaseSelector = field(default_factory=selectors.DefaultSelector)

    def join(self, count: int) -> None:
        """count more clients, one at a time: each is served (bounded: PACE_WAIT) before
        the next connects, so that even a listen(5) backlog does not overflow while the
        server accepts (a dropped SYN is sent again only a second later). Once one is not
        served in time, the server has stopped accepting: the rest connect at once."""
        paced = True
        for _ in range(count):
            answered = functools.partial(self.answered, self.connect())
            if paced:
                paced = self.until(answered, PACE_WAIT)

    def connect(self) -> int:
        """One more client, its connection begun; return its index."""
        family = socket.AF_INET6 if ":" in self.server.host else socket.AF_INET
        sock = socket.socket(family)
        sock.setblocking(False)
        sock.connect_ex((self.server.host, self.server.port))
        index = len(self.socks)
        self.socks.append(sock)
        self.connecting.add(index)
        self.selector.register(sock, selectors.EVENT_WRITE, index)
        return index

    def answered(self, index: int) -> bool:
        """Whether this client has been served, or closed by the server."""
        return index in self.served or index in self.closed

    def waiting(self) -> set[int]:
        """The clients neither served nor closed, nor gone."""
        return set(range(len(self.socks))) - self.served - self.closed - self.left

    def progress(self) -> int:
        """How many things have happened: connections made, clients served or closed."""
        return len(self.socks) - len(self.connecting) + len(self.served) + len(self.closed)

    def pump(self, timeout: float) -> None:
        """One round: send the probe of each client that has just connected, and read what
        has come for each, noting who is served and who was closed."""
        for key, events in self.selector.select(timeout):
            index, sock = key.data, self.socks[key.data]
            if events & selectors.EVENT_WRITE:
                self.connected(index, sock)
            elif events & selectors.EVENT_READ:
                self.read(index, sock)

    def connected(self, index: int, sock: socket.socket) -> None:
        """The connection was made (or refused): send the probe, then read."""
        self.connecting.discard(index)
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            self.close_by_server(index)
            return
        probe = b"?" if self.mode == "ack" else b"<%d>" % index
        try:
            sock.send(probe)
        except OSError:
            self.close_by_server(index)
            return
        self.selector.modify(sock, selectors.EVENT_READ, index)

    def read(self, index: int, sock: socket.socket) -> None:
        """Read what came for a client: its ACK, or (the observer) others' probes."""
        try:
            chunk = sock.recv(1 << 16)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self.close_by_server(index)
        elif self.mode == "ack":
            self.served.add(index)  # its first bytes: the start of an ACK
        elif index == 0:  # the observer: each probe it receives is its sender's
            self.observed += chunk
            self.served.update(int(k) for k in re.findall(rb"<(\d+)>", self.observed))
            del self.observed[: self.observed.rfind(b">") + 1]

    def close_by_server(self, index: int) -> None:
        """The server closed (or refused) this client: note it, and stop watching it."""
        self.connecting.discard(index)
        self.closed.add(index)
        self.selector.unregister(self.socks[index])

    def until_progress(self, timeout: float) -> bool:
        """Pump (bounded) until something more happens; return whether it did."""
        before = self.progress()
        return self.until(lambda: self.progress() != before, timeout)

    def until(self, condition: Callable[[], bool], timeout: float) -> bool:
        """Pump (bounded) until condition() holds; return whether it did."""
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                return False
            self.pump(min(0.05, max(0.0, deadline - time.monotonic())))
        return True

    def settle(self, timeout: float) -> None:
        """Pump until nothing more happens (bounded: timeout): for SETTLE s once every
        connection is made, for PROGRESS_WAIT s while some are not (SYNs sent again)."""
        deadline = time.monotonic() + timeout
        while self.waiting() and time.monotonic() < deadline:
            quiet = PROGRESS_WAIT if self.connecting else SETTLE
            if not self.until_progress(min(quiet, deadline - time.monotonic())):
                return

    def leave(self) -> None:
        """The served clients leave (all but the observer, in broadcast)."""
        observer = {0} if self.mode == "broadcast" else set()
        leaving = self.served - self.left - self.closed - observer
        for index in leaving:
            self.selector.unregister(self.socks[index])
            self.socks[index].close()
        self.left |= leaving

    def close(self) -> None:
        for sock in self.socks:
            sock.close()
        self.selector.close()


@contextlib.contextmanager
def crowd_of(server: ServerProcess, mode: str, count: int) -> Iterator[Crowd]:
    """A Crowd of count clients; in broadcast, the observer (client 0) is first served."""
    crowd = Crowd(server, mode)
    try:
        if mode == "broadcast":  # the observer must be in before the others' probes come
            crowd.join(2)
            if not crowd.until(lambda: 1 in crowd.served, WAIT):
                raise Failed("the first client's probe never reached the second")
            crowd.served.add(0)  # the observer: its probe goes to the others
            count -= 2
        crowd.join(count)
        yield crowd
    finally:
        crowd.close()


def serve_as_others_leave(crowd: Crowd) -> str:
    """The served clients leave, again and again, until every waiting client is served
    (or the server closes it); fail if one still waits PROGRESS_WAIT s after others left,
    or if the server exits. Return what happened, in words."""
    waited, rounds = len(crowd.waiting()), 0
    while crowd.waiting():
        assert_alive(crowd.server, "while clients waited")
        crowd.leave()
        rounds += 1
        if not crowd.until_progress(PROGRESS_WAIT):
            still = plural(len(crowd.waiting()), "client")
            raise Failed(f"{still} still waited {PROGRESS_WAIT:g} s after others left")
        crowd.settle(PROGRESS_WAIT)
    assert_alive(crowd.server, "once every client was served")
    if not waited:
        return "none waited"
    return f"{waited} waited and were served as others left ({plural(rounds, 'round')} of leaving)"


def past_fd_setsize(start: StartServer, mode: str) -> str:
    """1,100 clients, the server started with SERVER_FILES files allowed and HELD_FILES
    open: it must stay up, serve some at once, and serve the rest (or close them) as others
    leave. A select() loop that accepts a 1,025th descriptor dies with 'filedescriptor
    out of range in select()'."""
    if sys.platform == "win32":
        raise NotRun("Windows has no file limit to raise, and select() counts sockets there")
    if not can_open(PAST_FD_SETSIZE + 2 * HELD_FILES):
        raise NotRun(f"this process may not open {PAST_FD_SETSIZE:,} sockets")
    starting = start(mode, open_files=SERVER_FILES, held_files=HELD_FILES)
    with starting as server, crowd_of(server, mode, PAST_FD_SETSIZE) as crowd:
        crowd.settle(2 * WAIT)
        assert_alive(server, f"as {PAST_FD_SETSIZE:,} clients connected")
        at_once, turned_away = len(crowd.served), len(crowd.closed)
        then = serve_as_others_leave(crowd)
    given = f"{SERVER_FILES:,} files allowed, {HELD_FILES} open"
    return (
        f"{PAST_FD_SETSIZE:,} clients ({given}): {at_once:,} served at once, "
        f"{turned_away} turned away, {then}"
    )


def out_of_files(start: StartServer, mode: str) -> str:
    """The server's file limit is lowered to what it has open and FILES_ROOM more, and
    FILES_WAITING clients more than that connect: it must not spin (its CPU time over
    SPIN_WINDOW s while they wait stays under SPIN_LIMIT s), and it must serve them as
    others leave. A loop that keeps watching a listening socket whose accept() fails
    with EMFILE spins; one that does not catch it dies."""
    if not hasattr(psutil.Process, "rlimit"):
        raise NotRun(f"psutil lowers another process's file limit on Linux, not {sys.platform}")
    limited = f"its file limit lowered to what it had open and {FILES_ROOM} more"
    with start(mode) as server:
        group = processes(server)
        lower_file_limits(group)
        with crowd_of(server, mode, FILES_ROOM + FILES_WAITING) as crowd:
            crowd.settle(WAIT)
            assert_alive(server, "as clients connected past its file limit")
            at_once, turned_away = len(crowd.served), len(crowd.closed)
            waiting = len(crowd.waiting())
            before = cpu_seconds(group)
            time.sleep(SPIN_WINDOW)  # measuring idleness takes time: nothing to wait for
            spent = cpu_seconds(group) - before
            if spent >= SPIN_LIMIT:
                raise Failed(
                    f"{limited}, and {waiting} clients waiting: it used {spent:.2f} s of CPU "
                    f"in {SPIN_WINDOW:g} s (at most {SPIN_LIMIT:g}): it spins"
                )
            then = serve_as_others_leave(crowd)
    return (
        f"{limited}: {at_once} served at once, {turned_away} turned away; {spent:.2f} s of "
        f"CPU in {SPIN_WINDOW:g} s while {waiting} waited; {then}"
    )


def lower_file_limits(group: list[psutil.Process]) -> None:
    """Set each process's file limit to the descriptors it has open and FILES_ROOM more;
    NotRun if the OS will not."""
    lowered = False
    for process in group:
        try:
            hard = process.rlimit(psutil.RLIMIT_NOFILE)[1]
            process.rlimit(psutil.RLIMIT_NOFILE, (process.num_fds() + FILES_ROOM, hard))
        except psutil.NoSuchProcess:
            continue  # the shell, gone once it started the server
        except (psutil.Error, OSError) as error:
            raise NotRun(f"the OS would not lower the server's file limit: {error}") from None
        lowered = True
    if not lowered:
        raise NotRun("the server's processes had gone before their limit could be lowered")


# ---------------------------------------------------------------- rule 4: a slow reader


def slow_reader(start: StartServer, mode: str) -> str:
    """A client reads SLOW_RATE bytes/s while another floods and two others chat: whether
    the server drops it (and how long after the flood began), or keeps it and makes the
    room wait, is its own policy, said as a fact. It fails only if the server dies, if a
    chat message is lost (no policy), or if the room freezes: no chat message comes within
    CHAT_BOUND s of the last, and the slow reader, if kept, receives nothing meanwhile
    either."""
    with start(mode) as server, ChatRoom(server, SLOW_RATE) as room:
        group = processes(server)
        dropped_after: list[float] = []

        def look() -> None:  # the kernel's table, at every other message
            if dropped_after or len(room.sent_at) % 2:
                return
            if server_closed(group, room.reader.port):  # counted from the flood's start,
                # before which no server owed the reader anything, so no clock of its ran
                dropped_after.append(time.monotonic() - room.flood_began)

        chat_until(room, SLOW_SECONDS, look)
        read_before = room.read.count
        delays, late = chat_delays(room, CHAT_BOUND)
        moving = room.read.count > read_before  # the room moves at the slow reader's pace
        assert_alive(server, "with a slow reader in the room")
    rate = f"a client reading {SLOW_RATE // 1024} KiB/s while another flooded"
    chat = f"of the chat between two others, {what_came(room, delays, late)}"
    if lost(delays, late) or (len(late) == len(room.sent_at) and not moving):
        raise Failed(f"{rate}: {chat}" + ("" if moving else ", and it got nothing: it froze"))
    fate = f"was kept all {SLOW_SECONDS:g} s"
    if dropped_after:
        fate = f"was dropped after {dropped_after[0]:.1f} s"
    if late:
        return f"{rate} {fate}, and the room waited for it: {chat}"
    waited = f"each of {len(room.sent_at)} came within {max(delays.values()):.2f} s"
    return f"{rate} {fate}; of the chat between two others meanwhile, {waited}"


# ---------------------------------------------------------------- pitfall 11: a clean stop


def clean_stop(start: StartServer, mode: str) -> str:
    """Two clients, one served; then SIGINT to the server's process group, as Ctrl-C in a
    terminal sends it: every process of the server must exit within WAIT s, with no
    traceback on its output. Its exit status is not judged: the command runs through
    /bin/sh, whose status may be the shell's own."""
    if sys.platform == "win32":
        raise NotRun("on Windows it would send Ctrl-Break, which could not be shown here")
    with start(mode) as server:
        alice, bob = Client(server), Client(server)
        if mode == "ack":
            alice.send(b"hi")
            assert alice.receive(3) == b"ACK", "before the signal, b'hi' earned no b'ACK'"
        else:
            introduce(bob, [alice])
        group = processes(server)
        started = time.monotonic()
        os.killpg(server.pid, signal.SIGINT)  # (not on Windows: see above)
        _, running = psutil.wait_procs(group, timeout=WAIT)
        took = time.monotonic() - started
        if running:
            raise Failed(f"after SIGINT, the server still ran {WAIT:g} s later")
        said = last_words(server)
    if "Traceback (most recent call last)" in server.output.getvalue():
        raise Failed(f"after SIGINT, a traceback on its output; {said}")
    return f"after SIGINT it exited in {took:.1f} s, with no traceback"


# ---------------------------------------------------------------- the cases, in order

CASES = [
    Case("stalled-reader", "pitfall 5", ("broadcast",), stalled_reader, timed=True),
    Case("memory", "rules 2 and 3", ("broadcast",), memory),
    Case("send-and-close", "rule 1", ("broadcast",), send_and_close),
    Case("past-fd-setsize", "pitfall 8", ("ack", "broadcast"), past_fd_setsize),
    Case("out-of-files", "pitfall 9", ("ack", "broadcast"), out_of_files),
    Case("slow-reader", "rule 4", ("broadcast",), slow_reader, timed=True),
    Case("clean-stop", "pitfall 11", ("ack", "broadcast"), clean_stop),
]


def run_case(case: Case, start: StartServer, mode: str) -> tuple[bool | None, str]:
    """Run a case: (True, what was measured), (False, why it failed), or (None, why it
    could not run). A harness error is a failure too, said in one line."""
    try:
        return True, case.run(start, mode)
    except NotRun as why:
        return None, f"not run: {why}"
    except Failed as why:
        return False, str(why)
    except AssertionError as why:  # a client did not receive what it had to (load.py)
        return False, str(why).splitlines()[0]
    except Exception as error:  # e.g. the server refused a connection: one line, no traceback
        return False, f"{type(error).__name__}: {error}".splitlines()[0]
