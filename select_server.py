# SPDX-License-Identifier: 0BSD
"""A TCP server built on one select.select() loop, written to be read and copied.

    python select_server.py ack        # answer every chunk a client sends with b"ACK"
    python select_server.py broadcast  # relay every chunk to every *other* client
    python select_server.py broadcast --trace  # and log each round of the loop

Try it with `nc 127.0.0.1 8000` in two terminals. Standard library only, CPython 3.8+,
on Linux, macOS and Windows. A chunk is whatever one recv() returned: not a line, not a
message. TCP may join two sends into one chunk, or split one send into several.
"""

# Type hints such as list[int] and int | None are kept as text, never evaluated, so
# that CPython 3.8 and 3.9, which cannot evaluate them, run this file too.
from __future__ import annotations

import argparse
import contextlib
import errno
import heapq
import os
import select
import signal
import socket
import sys
import time
from collections import deque
from dataclasses import dataclass
from typing import Literal

# ---------------------------------------------------------------- settings

# The most bytes one recv() returns. The seed article read 1024; a bigger read means
# fewer ACKs for a big send (one per recv) and fewer, larger relays in broadcast.
RECV_SIZE = 65536

# How many bytes of each chunk the log shows.
LOG_PREVIEW = 32

ACK = b"ACK"

# While any client is owed bytes, select() wakes this often (seconds): to judge those
# clients in time (rule 4), and, while senders are held back, to try them all (rule 3).
RETRY = 0.02

# select() has a different limit on each OS (CPython's Modules/selectmodule.c). Linux
# and macOS: no descriptor numbered FD_SETSIZE (1024) or more, so a client whose socket
# lands that high (files our parent left open) is turned away. Windows: descriptors are
# handles and any number will do, but a list holds at most 512 sockets: inputs is the
# listening socket, the wake-up socket and every client, so 510 clients at most.
WINDOWS = sys.platform == "win32"
FD_SETSIZE = 1024
MOST_CLIENTS = 510 if WINDOWS else 1000

# accept() errors that mean "out of file descriptors or memory": wait for a client to
# leave, or, with none connected to leave, try again after ACCEPT_RETRY seconds.
# Windows says WSAEMFILE (10024; errno.EMFILE only since CPython 3.11, 3.10.5 and
# 3.9.13) or WSAENOBUFS (10055, never mapped).
OUT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
OUT_OF_RESOURCES |= {10024, 10055}
ACCEPT_RETRY = 1.0

# bind() to a port that another socket holds: EADDRINUSE, and on Windows WSAEADDRINUSE
# (10048, which CPython reports as the errno itself: Objects/exceptions.c before 3.11,
# PC/errmap.h since). The OS's own text differs (and Windows' is localised).
ADDRESS_IN_USE = {errno.EADDRINUSE, 10048}

# The signals that stop the server: Ctrl-C, `kill`, and Ctrl-Break on Windows (where
# SIGTERM cannot be caught: os.kill() ends the process there and then).
STOP_SIGNALS = [
    getattr(signal, name)
    for name in ("SIGINT", "SIGTERM", "SIGBREAK")
    if hasattr(signal, name)
]


# ---------------------------------------------------------------- arguments

Mode = Literal["ack", "broadcast"]


@dataclass(frozen=True)
class Settings:
    """What the command line sets, and its defaults: how the server behaves."""

    mode: Mode
    quiet: bool = False  # don't log every chunk received
    max_clients: int = MOST_CLIENTS
    max_buffer: int = 1024 * 1024  # B: no client is owed more than this, and one read
    grace: float = 2.0  # G: every G seconds, a client owed bytes must take B/2 of them


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Read the command line; a bad one gets a usage message and exit status 2."""
    parser = argparse.ArgumentParser(
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="A select.select() TCP server: ack or broadcast what clients send.",
    )
    parser.add_argument(
        "mode",
        choices=["ack", "broadcast"],
        help='ack: answer every chunk with b"ACK"; broadcast: relay it to every other '
        "client",
    )
    # Not "localhost": it is ::1 first on macOS and many Linux systems, 127.0.0.1 on
    # others.
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on; '' for all IPv4"
    )
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    parser.add_argument(
        "--quiet", action="store_true", help="don't log every chunk received"
    )
    parser.add_argument(
        "--trace",
        action="store_true",
        help="log each round: the lists select() watched and returned, and each step",
    )
    parser.add_argument(
        "--max-clients",
        type=int,
        default=MOST_CLIENTS,
        help=f"clients served at once, at most {MOST_CLIENTS}; more wait until one "
        "leaves",
    )
    parser.add_argument(
        "--max-buffer",
        type=int,
        default=Settings.max_buffer,
        help="the most bytes a client is owed, and one read; it must take half that "
        "(or all) every --grace s",
    )
    parser.add_argument(
        "--grace",
        type=float,
        default=Settings.grace,
        help="a client owed bytes must take --max-buffer/2 of them (or all) every "
        "this many s",
    )
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error("--port must be between 0 and 65535")
    if not 1 <= args.max_clients <= MOST_CLIENTS:
        parser.error(f"--max-clients must be between 1 and {MOST_CLIENTS}")
    if args.max_buffer < 2:
        parser.error("--max-buffer must be at least 2")
    if not 0 < args.grace <= 3600:
        parser.error("--grace must be more than 0 and at most 3600 seconds")
    return args


# ---------------------------------------------------------------- logging


def log(message: str) -> None:
    """Print one line, flushed: a buffered log is lost if we die, unseen by a pipe."""
    # A plain blocking write: a log reader that stops reading (a terminal paused with
    # Ctrl-S, `| less` left unscrolled) stops the server too, once the pipe is full.
    try:
        print(message, flush=True)
    except OSError:  # the log's reader has gone (`| head`), or its disk is full
        devnull = os.open(os.devnull, os.O_WRONLY)  # serve on, and log nowhere
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def host_port(address: tuple[str, int] | tuple[str, int, int, int]) -> str:
    """Write a socket address as host:port, with IPv6 hosts in brackets."""
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def describe(data: bytes) -> str:
    """Show a chunk as a bytes literal (safe for any bytes), cut short if long."""
    if len(data) <= LOG_PREVIEW:
        return repr(data)
    return f"{data[:LOG_PREVIEW]!r}... ({len(data)} bytes)"


def clients_counted(count: int) -> str:
    """A count of clients in words: "1 client", "2 clients"."""
    return "1 client" if count == 1 else f"{count} clients"


def failure_reason(error: OSError) -> str:
    """Say why a connection failed, in words that are the same on every OS."""
    # The error's own text is "[Errno 104] ..." on Linux, "[Errno 54] ..." on macOS, and
    # "[WinError 10054] ..." in the local language on Windows. Rarer errors are named by
    # their errno (ETIMEDOUT; WSAETIMEDOUT on Windows).
    reset = (ConnectionResetError, ConnectionAbortedError, BrokenPipeError)
    if isinstance(error, reset):
        return "connection reset"
    return errno.errorcode.get(error.errno or 0, type(error).__name__)


# ---------------------------------------------------------------- per-client state


class Client:
    """One connected client: its socket, its name in the log, and what we owe it."""

    def __init__(self, sock: socket.socket, name: str) -> None:
        self.sock = sock
        self.fd = sock.fileno()  # what select() is given: asking a socket costs a call
        self.name = name  # "127.0.0.1:54321", for the log
        # Bytes owed, oldest first: each round's chunks, joined once and shared by
        # every client they are owed to (a partly sent one is a memoryview of the rest:
        # no copy).
        self.outbox: deque[bytes | memoryview] = deque()
        self.owed = 0  # bytes in outbox
        self.reading = True  # until it sends EOF
        # Why nothing more is sent to it (a send() failed, or rule 4 gave up on it); it
        # is still read, for what it sent before, until read_until at the latest.
        self.failure = ""
        self.read_until = float("inf")
        self.deadline = 0.0  # rule 4: while owed bytes, when it must have taken B/2
        self.taken = 0  # rule 4: bytes it took since its clock started


# ---------------------------------------------------------------- the loop


class Server:
    """The listening socket, the clients, and the lists that select() watches."""

    def __init__(self, listener: socket.socket, settings: Settings) -> None:
        self.listener = listener
        # A stop signal writes a byte into wakeup_writer (see main), and select() wakes.
        self.wakeup, self.wakeup_writer = socket.socketpair()
        self.wakeup_writer.setblocking(False)  # signal.set_wakeup_fd() requires it
        self.settings = settings
        self.buffer = memoryview(bytearray(RECV_SIZE))  # see read_from()
        self.clients: dict[int, Client] = {}  # by descriptor number
        # Descriptor numbers, kept up to date as things happen: a client joins or
        # leaves, starts or stops being owed bytes. Only clients that are owed bytes are
        # in outputs, because a healthy socket is always writable and select() would
        # never sleep. inputs is never empty (Windows' select() refuses three empty
        # lists).
        self.listener_fd = listener.fileno()
        self.wakeup_fd = self.wakeup.fileno()
        self.inputs: list[int] = [self.listener_fd, self.wakeup_fd]
        self.outputs: list[int] = []
        # The rules' own state (see the rules, below).
        self.allowance = settings.max_buffer  # rule 3: the most the next round may read
        self.paused: list[Client] = []  # rule 3: senders taken out of inputs for now
        self.next_turn = -1  # rule 3: the sender a round that read enough stopped at

    def serve(self) -> str:
        """Run the select() loop until a stop signal arrives; return its name."""
        # Each round: 1. accept new clients, 2. read what clients sent, 3. answer or
        # relay it, and write what clients are owed, 4. drop the ones that are too slow.
        inputs, outputs = self.inputs, self.outputs  # the very lists, changed in place
        while True:
            # Sleep until a socket in inputs is readable or one in outputs is writable.
            # No exceptional list: SO_OOBINLINE (see open_listener) makes urgent data
            # ordinary, so exceptional is always empty.
            wait = RETRY if outputs else None  # rule 4: judge the clients owed in time
            readable, writable, exceptional = select.select(inputs, outputs, [], wait)
            self.show_round(readable, writable)  # --trace logs it; else it does nothing
            if self.wakeup_fd in readable:  # a stop signal (see main)
                return signal.Signals(self.wakeup.recv(1)[0]).name

            # 1. accept new clients
            if self.listener_fd in readable:
                self.accept()

            # 2. read what clients sent
            chunks = self.read(readable)

            # 3. answer or relay it, and write what clients are owed
            self.answer_or_relay(chunks)
            self.write(writable)

            # 4. drop the ones that are too slow: the rules, run only while a client is
            #    owed bytes or a sender is paused (the done ones are closed already)
            if outputs or self.paused:
                self.apply_the_rules()

    def show_round(self, readable: list[int], writable: list[int]) -> None:
        """Nothing; TracingServer (--trace) logs here what select() was given."""

    def close(self) -> None:
        """Close every socket: the listener, the wake-up pair and the clients'."""
        clients = [client.sock for client in self.clients.values()]
        for sock in [self.listener, self.wakeup, self.wakeup_writer, *clients]:
            sock.close()  # what clients are still owed is not sent

    # ------------------------------------------------------------ 1. accept

    def accept(self) -> None:
        """Accept every client waiting, up to max_clients: a crowd costs one round."""
        while len(self.clients) < self.settings.max_clients:
            try:
                sock, address = self.listener.accept()
            except BlockingIOError:
                return  # no one else is waiting
            except OSError as error:  # e.g. a client that reset before we got to it
                if error.errno in OUT_OF_RESOURCES:  # by number: Windows localises text
                    self.stop_accepting(failure_reason(error))
                else:
                    log(f"a client could not be accepted: {failure_reason(error)}")
                return
            if not WINDOWS and sock.fileno() >= FD_SETSIZE:  # select() would fail on it
                reason = f"descriptor {sock.fileno()} is past FD_SETSIZE"
                sock.close()
                self.stop_accepting(reason)
                return
            self.add_client(sock, host_port(address))
        most = clients_counted(self.settings.max_clients)
        self.stop_accepting(f"{most}, the most allowed")

    def add_client(self, sock: socket.socket, name: str) -> None:
        """Set up a new client's socket, and add it to clients and inputs."""
        sock.setblocking(False)  # a send or recv must never stop the whole loop
        # Send small chunks at once: without this, the kernel holds a small send back
        # until the previous one is acknowledged (Nagle's algorithm), and the loop
        # waits.
        with contextlib.suppress(OSError):  # macOS refuses it once the client reset
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client = Client(sock, name)
        self.clients[client.fd] = client
        self.inputs.append(client.fd)
        log(f"{client.name} connected ({len(self.clients)} online)")

    def stop_accepting(self, reason: str) -> None:
        """Stop watching the listener till a client leaves; new ones wait in a queue."""
        # A listening socket with a client waiting stays readable: a loop that kept
        # watching it while accept() could not succeed would spin.
        if self.clients:
            self.inputs.remove(self.listener_fd)
            log(f"not accepting new clients until one leaves: {reason}")
        else:  # no one can leave to free a slot, and no one else to serve: wait
            log(f"not accepting new clients for {ACCEPT_RETRY} s: {reason}")
            # (or until a stop signal)
            select.select([self.wakeup_fd], [], [], ACCEPT_RETRY)

    def start_accepting(self) -> None:
        """Watch the listening socket again."""
        self.inputs.append(self.listener_fd)
        log("accepting new clients again")

    # ------------------------------------------------------------ 2. read

    def read(self, readable: list[int]) -> list[tuple[Client, bytes]]:
        """Read one chunk (one whole recv()) from each readable client, in the order of
        inputs; return the chunks, each with its sender."""
        chunks = []
        allowance = self.allowance  # rule 3: what this round may read (and one read)
        self.allowance = self.settings.max_buffer  # rule 3: the next's, unless less
        for fd in readable:
            client = self.clients.get(fd)  # None: the listening or the wake-up socket
            if client is None:
                continue
            if allowance <= 0:  # rule 3: the round read enough; the next begins here
                self.begin_next_round_at(fd)
                break
            data = self.read_from(client)
            if data:
                chunks.append((client, data))
                allowance -= len(data)  # rule 3: a whole chunk, never cut to fit
        return chunks

    def read_from(self, client: Client) -> bytes:
        """Read one chunk from client; b"" after EOF, a failure or nothing to read."""
        try:
            # Into one buffer that every read reuses, then copied out at its real size:
            # recv(RECV_SIZE) would allocate 64 KiB each time, only to shrink it.
            data = self.buffer[: client.sock.recv_into(self.buffer)].tobytes()
        except BlockingIOError:
            return b""  # nothing to read after all; select() will tell us again
        except OSError as error:  # e.g. ConnectionResetError: the client sent a reset
            # The log gives the first thing that went wrong.
            self.drop(client, client.failure or failure_reason(error))
            return b""
        if not data:
            self.client_hung_up(client)
            return data
        if not self.settings.quiet:
            log(f"{client.name} sent {describe(data)}")
        if client.failure:  # nothing more is sent to it: is all it sent now read?
            self.close_once_all_is_read(client)
        return data

    def client_hung_up(self, client: Client) -> None:
        """The client sent EOF: stop reading it; close it once it has all it is owed."""
        client.reading = False
        self.inputs.remove(client.fd)
        if client.outbox:
            owed = f"the {client.owed} bytes it is owed"
            log(f"{client.name} hung up; first it gets {owed}")
        else:
            self.drop(client, client.failure or "closed by client")

    # ------------------------------------------------------------ 3. answer, write

    def answer_or_relay(self, chunks: list[tuple[Client, bytes]]) -> None:
        """ack: owe each sender an ACK per chunk; broadcast: owe others the chunk."""
        if self.settings.mode == "ack":
            for client, _ in chunks:
                self.owe(client, ACK)
        else:
            self.relay(chunks)

    def relay(self, chunks: list[tuple[Client, bytes]]) -> None:
        """Owe every client the chunks this round read from the others, in order."""
        # Rule 2: the chunks are joined into one object that all of them share (a sender
        # gets the parts before and after its own chunk), so a chunk owed to a thousand
        # clients is stored once, and each client is sent the round in one go.
        if not chunks:
            return
        joined = b"".join(data for _, data in chunks)  # of one chunk: that very object
        view = memoryview(joined)
        own_chunk_at = {}  # sender: where its own chunk starts and stops in joined
        start = 0
        for sender, data in chunks:
            own_chunk_at[sender] = (start, start + len(data))
            start += len(data)
        for client in list(self.clients.values()):  # a copy: a failed send drops one
            if client in own_chunk_at:
                start, stop = own_chunk_at[client]
                self.owe(client, view[:start])
                self.owe(client, view[stop:])
            else:
                self.owe(client, joined)

    def owe(self, client: Client, data: bytes | memoryview) -> None:
        """Send data to client now; what its socket won't take waits in its outbox."""
        # Sent at once if nothing is queued ahead of it: a healthy socket almost always
        # has space for it all. Whatever waits puts client in outputs until it is sent.
        if not (data and client.reading and not client.failure):
            return  # nothing to send, or a client that hung up: it gets nothing new
        if not client.outbox:  # nothing ahead of it
            sent = self.send_some(client, data)
            if sent is None or sent == len(data):
                return  # the send failed, or it is all sent
            data = memoryview(data)[sent:]  # the rest, without a copy
            self.outputs.append(client.fd)  # watch for writable until it is all sent
            self.start_clock(client)  # rule 4: G seconds to take B/2 of it, or all
        client.outbox.append(data)
        client.owed += len(data)

    def write(self, writable: list[int]) -> None:
        """Send every writable client as much of what it is owed as its socket takes."""
        for fd in writable:
            client = self.clients.get(fd)  # None: dropped earlier in this round
            if client is not None and client.outbox:  # empty: a send() to it failed
                self.write_to(client)

    def owed_clients(self) -> list[Client]:
        """The clients that are owed bytes: the ones in outputs."""
        return [self.clients[fd] for fd in self.outputs]

    def write_to(self, client: Client) -> None:
        """Send client as much of its outbox as its socket takes now; out of outputs
        once it is owed nothing, and closed then if it has hung up."""
        outbox = client.outbox
        while outbox:
            sent = self.send_some(client, outbox[0])
            if sent is None:
                return  # the send failed
            client.owed -= sent
            client.taken += sent  # rule 4: what it took since its clock started
            if sent < len(outbox[0]):
                outbox[0] = memoryview(outbox[0])[sent:]  # the rest, without a copy
                return
            outbox.popleft()
        self.outputs.remove(client.fd)  # owed nothing: no need to know it is writable
        if not client.reading:
            self.drop(client, client.failure or "closed by client")

    def send_some(self, client: Client, data: bytes | memoryview) -> int | None:
        """send() what client's socket takes now; how much, or None if send() failed."""
        try:
            return client.sock.send(data)
        except BlockingIOError:
            return 0  # no space at all right now
        except OSError as error:  # e.g. BrokenPipeError: the client is gone
            self.stop_sending(client, failure_reason(error))
            return None

    # ------------------------------------------------------------ a client that leaves

    def stop_sending(self, client: Client, reason: str) -> None:
        """Rule 1: send client nothing more (a send() to it failed, or rule 4 gave up on
        it) and forget what it is owed, but read on what it sent before it is closed."""
        # A client that sends and closes at once has a relay to it fail while its last
        # chunk waits to be read. The log gives the first thing that went wrong.
        client.failure = reason
        client.outbox.clear()
        client.owed = 0
        if client.fd in self.outputs:
            self.outputs.remove(client.fd)
        self.close_once_all_is_read(client)

    def close_once_all_is_read(self, client: Client) -> None:
        """Rule 1: close client, which is sent nothing more, if nothing it sent is left
        to read (or it has been read until read_until)."""
        all_read = not (client.reading and self.bytes_wait(client))
        if all_read or time.monotonic() >= client.read_until:
            self.drop(client, client.failure)  # else read on, in the coming rounds

    def bytes_wait(self, client: Client) -> bool:
        """Whether bytes from client wait to be read (a peek: recv() will get them)."""
        try:
            return bool(client.sock.recv(1, socket.MSG_PEEK))
        except OSError:  # BlockingIOError: nothing waits now; another: nothing will
            return False

    def drop(self, client: Client, reason: str) -> None:
        """Forget client everywhere and close its socket, saying why on the log."""
        # The one place a connected client is closed while the server runs (close()
        # closes the rest at exit), so no socket is removed twice or used after it is
        # closed.
        del self.clients[client.fd]
        if client.fd in self.inputs:  # not after its EOF, nor while rule 3 pauses it
            self.inputs.remove(client.fd)
        if client.fd in self.outputs:
            self.outputs.remove(client.fd)
        client.sock.close()
        log(f"{client.name} disconnected: {reason}")
        if self.listener_fd not in self.inputs:  # a slot is free again
            self.start_accepting()

    # ------------------------------------------------------------ the rules
    # What is owed, and when a client is given up: rules 3 and 4 of the README's four
    # (rule 1 is stop_sending()'s, rule 2 relay()'s). B is max_buffer, G is grace. They
    # are reached from serve()'s step 4, only while a client is owed bytes or held back,
    # and from the lines above that name them: read() keeps to the round's allowance,
    # owe() starts a client's clock and write_to() counts what it took.

    def apply_the_rules(self) -> None:
        """Step 4: write to everyone owed (while senders are held back), give up the too
        slow, and say what the next round may read and from whom."""
        if self.paused:
            self.try_every_client_owed()  # rule 3
        self.give_up_the_too_slow()  # rule 4
        self.hold_back_senders()  # rule 3

    # Rule 3: no client is owed more than B and one read. Not reading a sender lets TCP
    # flow control slow it down, instead of our memory growing: what it sends waits in
    # the kernel's buffers, and then in the sender.

    def hold_back_senders(self) -> None:
        """Rule 3: set what the next round may read, and pause (take out of inputs) the
        senders whose bytes would go to a client owed B or more; in ack mode, each
        sender that is still owed ACKs."""
        limit = self.settings.max_buffer  # B
        if self.settings.mode == "ack":
            # A sender's bytes earn ACKs for itself alone: not read while it waits.
            self.pause([c for c in self.owed_clients() if c.reading])
            return
        # broadcast: every client feeds every other, so a round may read only as much as
        # the client owed most can still take. One that hung up gets nothing new.
        owed = [(c.owed, c.fd) for c in self.owed_clients() if c.reading]
        two = heapq.nlargest(2, owed)  # the two owed most, if there are two
        most, fullest = two[0] if two else (0, -1)
        second = two[1][0] if len(two) == 2 else 0
        if most < limit:
            self.allowance = limit - most
            self.pause([])
            return
        # A client owed B or more holds the others back: only it is read (its bytes go
        # to the others, and its EOF must be seen), as much as the client owed most
        # after it can still take. Two such clients: no one, until rule 4 acts.
        self.allowance = limit - second
        if self.allowance > 0:
            self.pause([c for c in self.senders() if c.fd != fullest])
        else:
            self.pause(self.senders())

    def pause(self, senders: list[Client]) -> None:
        """Rule 3: keep these senders out of inputs; put the others paused back."""
        if senders == self.paused:
            return
        held = {client.fd for client in senders}
        back = [c.fd for c in self.paused if c.fd not in held and self.still_reading(c)]
        self.inputs[:] = [fd for fd in self.inputs if fd not in held] + back
        self.paused = senders
        if self.next_turn in self.inputs:  # inputs is rebuilt: keep whose turn is next
            self.begin_next_round_at(self.next_turn)

    def senders(self) -> list[Client]:
        """Rule 3: the clients that are read (once they are not paused)."""
        return [client for client in self.clients.values() if client.reading]

    def still_reading(self, client: Client) -> bool:
        """Whether client is still connected (not dropped while paused) and reading."""
        return self.clients.get(client.fd) is client and client.reading

    def begin_next_round_at(self, fd: int) -> None:
        """Rule 3: the round has read its allowance: put fd and what follows it first in
        inputs, so that the next round begins with them and no sender is starved."""
        self.next_turn = fd
        first = self.inputs.index(fd)
        self.inputs[:] = self.inputs[first:] + self.inputs[:first]

    def try_every_client_owed(self) -> None:
        """Rule 3: while senders are held back, write to every client owed, writable or
        not."""
        # select() says "writable" only once a good part of a socket's buffer, which can
        # be megabytes, is free: the senders would wait seconds for a client that has
        # long made space.
        for client in self.owed_clients():
            self.write_to(client)

    # Rule 4: every G seconds, a client owed bytes must take B/2 of them, or all it is
    # owed; if not, it is given up: sent nothing more (rule 1), so it holds no one back.

    def start_clock(self, client: Client) -> None:
        """Rule 4: give client G seconds to take B/2 of what it is owed (or all)."""
        client.deadline, client.taken = time.monotonic() + self.settings.grace, 0

    def give_up_the_too_slow(self) -> None:
        """Rule 4: give up each client whose G seconds are up before it took what it had
        to: it is sent nothing more, and what it sent is read for one more G at most."""
        now = time.monotonic()
        for client in [c for c in self.owed_clients() if c.deadline <= now]:
            self.write_to(client)  # one last try: select() may have missed its space
            if not client.outbox:
                continue  # it took all it was owed, or its connection failed
            if client.taken >= self.settings.max_buffer // 2:
                self.start_clock(client)  # it took enough: the next G seconds begin
                continue
            grace = self.settings.grace
            client.read_until = now + grace
            owed = f"still owed {client.owed} bytes after {grace} s"
            self.stop_sending(client, f"too slow: {owed}")


# ---------------------------------------------------------------- --trace


class TracingServer(Server):
    """The server that --trace runs: the same loop, and a log line for each round's call
    to select() and for what each step did. Server itself formats no trace line."""

    def __init__(self, listener: socket.socket, settings: Settings) -> None:
        super().__init__(listener, settings)
        self.round = 0

    def named(self, fds: list[int]) -> str:
        """Descriptors as the trace shows them: "[3 listener, 6 127.0.0.1:54321]"."""
        names = {self.listener_fd: "listener", self.wakeup_fd: "wake-up"}
        for fd, client in self.clients.items():
            names[fd] = client.name
        return "[" + ", ".join(f"{fd} {names.get(fd, 'gone')}" for fd in fds) + "]"

    def trace(self, step: str) -> None:
        """Log one line of the trace, with the round's number."""
        log(f"round {self.round}: {step}")

    def show_round(self, readable: list[int], writable: list[int]) -> None:
        """What select() was handed, and what it returned."""
        self.round += 1
        inputs, outputs = self.named(self.inputs), self.named(self.outputs)
        self.trace(f"select(inputs={inputs}, outputs={outputs})")
        returned = f"readable={self.named(readable)}, writable={self.named(writable)}"
        self.trace(f"select() returned {returned}")

    def accept(self) -> None:
        """Step 1, and who joined inputs."""
        before = set(self.clients)
        super().accept()
        accepted = [fd for fd in self.clients if fd not in before]
        self.trace(f"1. accept: {self.named(accepted)} join inputs")

    def read(self, readable: list[int]) -> list[tuple[Client, bytes]]:
        """Step 2, and each chunk read."""
        chunks = super().read(readable)
        for client, data in chunks:
            self.trace(f"2. read: {len(data)} bytes from {client.fd} {client.name}")
        return chunks

    def client_hung_up(self, client: Client) -> None:
        """An EOF read in step 2."""
        self.trace(f"2. read: EOF from {client.fd} {client.name}: it leaves inputs")
        super().client_hung_up(client)

    def owe(self, client: Client, data: bytes | memoryview) -> None:
        """Step 3's answer or relay: what was sent at once, and what waits."""
        owed_before = client.owed
        super().owe(client, data)
        if not (data and client.reading and not client.failure):
            return
        queued = client.owed - owed_before
        if queued == 0:
            done = "all sent at once"
        elif queued == len(data) and owed_before:
            done = f"queued behind {owed_before} bytes in its outbox"
        else:
            done = f"{len(data) - queued} sent at once, {queued} wait in its outbox"
            done += ": it joins outputs"
        self.trace(f"3. owe {client.fd} {client.name} {len(data)} bytes: {done}")

    def write(self, writable: list[int]) -> None:
        """Step 3's writes: what each writable client took."""
        owed = [(client, client.owed) for client in self.owed_clients()]
        super().write(writable)
        for client, before in owed:
            if client.fd in writable and client.owed != before:
                left = "it leaves outputs"
                if client.owed:
                    left = f"{client.owed} still owed"
                sent = before - client.owed
                to = f"{client.fd} {client.name}"
                self.trace(f"3. write: {sent} bytes to {to}; {left}")

    def apply_the_rules(self) -> None:
        """Step 4, and what the rules decided."""
        super().apply_the_rules()
        paused = self.named([client.fd for client in self.paused])
        owed = ", ".join(f"{c.fd} {c.name} {c.owed}" for c in self.owed_clients())
        allowance = f"the next round may read {self.allowance}"
        self.trace(f"4. rules: owed [{owed}], paused {paused}, {allowance}")


# ---------------------------------------------------------------- main


def open_listener(host: str, port: int) -> socket.socket:
    """Bind a non-blocking listening socket to host and port (IPv4 or IPv6)."""
    host = host.strip("[]") or "0.0.0.0"  # "[::1]" as we print it; "" as Python does
    stream, passive = socket.SOCK_STREAM, socket.AI_PASSIVE
    found = socket.getaddrinfo(host, port, type=stream, flags=passive)
    family, _, _, _, address = found[0]  # the first address that the name resolves to
    listener = socket.socket(family, socket.SOCK_STREAM)
    # Without SO_REUSEADDR a restart fails with "Address already in use" for as long as
    # the last run's connections linger in TIME_WAIT (a minute or more). Not on Windows,
    # where it lets a second server take a port that is in use (socket.create_server
    # does the same; we don't call it because SO_OOBINLINE must be set before listen()).
    if not WINDOWS:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Urgent (MSG_OOB) bytes arrive inline as ordinary data, so no socket ever sits in
    # select()'s exceptional list. Set here, every accepted socket inherits it, even one
    # whose urgent bytes arrive while it waits to be accepted.
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_OOBINLINE, 1)
    listener.bind(address)
    listener.listen(socket.SOMAXCONN)  # the kernel queues this many not yet accepted
    listener.setblocking(False)  # a client that connects and resets can't block
    return listener


def cannot_listen_reason(error: OSError | UnicodeError) -> str:
    """Why open_listener() failed, with what to do if the port is taken."""
    if isinstance(error, OSError) and error.errno in ADDRESS_IN_USE:
        advice = "is another server running? pick another port with --port"
        return f"address already in use; {advice}"
    return str(error)


def main(argv: list[str] | None = None) -> int:
    """Listen, serve until a stop signal, close everything; return the exit status."""
    args = parse_args(argv)
    try:
        listener = open_listener(args.host, args.port)
    except (OSError, UnicodeError) as error:  # in use, no permission, no such host
        where, why = f"{args.host}:{args.port}", cannot_listen_reason(error)
        print(f"cannot listen on {where}: {why}", file=sys.stderr)
        return 1
    settings = Settings(
        args.mode, args.quiet, args.max_clients, args.max_buffer, args.grace
    )
    server = (TracingServer if args.trace else Server)(listener, settings)
    if not WINDOWS and max(server.listener_fd, server.wakeup_fd) >= FD_SETSIZE:
        reason = f"select() needs descriptors below {FD_SETSIZE}"
        reason += "; files left open for us took them"
        print(f"cannot serve: {reason}", file=sys.stderr)
        return 1
    # Since PEP 475 select() simply restarts after a signal whose handler returns, so a
    # handler that only sets a flag would never end the loop. Instead Python writes the
    # signal's number into a socket that select() watches: it wakes, reads, and stops.
    signal.set_wakeup_fd(server.wakeup_writer.fileno())  # before we announce the port
    for sig in STOP_SIGNALS:  # a handler that returns: the byte Python writes does it
        signal.signal(sig, lambda signum, frame: None)
    log(f"listening on {host_port(server.listener.getsockname())} ({args.mode} mode)")
    signal_name = server.serve()
    # Ignored, not handled, from here on: as Python shuts down it puts back the default
    # handler (which kills the process) of every signal that has a handler, but not of
    # an ignored one.
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    log(f"{signal_name}: closing {clients_counted(len(server.clients))} and exiting")
    signal.set_wakeup_fd(-1)  # before its socket closes: a late signal writes nowhere
    server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
