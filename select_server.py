# SPDX-License-Identifier: 0BSD
"""A TCP server built on one select.select() loop, written to be read and copied.

    python select_server.py ack        # answer every chunk a client sends with b"ACK"
    python select_server.py broadcast  # relay every chunk to every *other* client

Try it with `nc localhost 8000` in two terminals. Standard library only, CPython 3.8+.
"""

from __future__ import annotations

import argparse
import errno
import os
import select
import signal
import socket
import sys
import time
from types import FrameType

# ---------------------------------------------------------------- settings

# The most bytes one recv() returns. The seed article read 1024; a bigger read means
# fewer ACKs for a big send (one per recv) and fewer, larger relays in broadcast.
RECV_SIZE = 65536

# How many bytes of each chunk the log shows.
LOG_PREVIEW = 32

# select() cannot watch a descriptor numbered FD_SETSIZE or higher (1024 on Linux and
# macOS). stdin, stdout, stderr, the listening socket and the wake-up pair take six below
# it; a client whose socket still lands too high (files our parent left open) is turned away.
FD_SETSIZE = 1024
MOST_CLIENTS = 1000

# accept() errors that mean "out of file descriptors or memory": wait for a client to
# leave, or, with none connected to leave, try again after ACCEPT_RETRY seconds.
OUT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
ACCEPT_RETRY = 1.0


# ---------------------------------------------------------------- arguments


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Read the command line; a bad one gets a usage message and exit status 2."""
    parser = argparse.ArgumentParser(
        description="A select.select() TCP server: ack or broadcast what clients send.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "mode",
        choices=["ack", "broadcast"],
        help='ack: answer every chunk with b"ACK"; broadcast: relay it to every other client',
    )
    parser.add_argument("--host", default="localhost", help="address to listen on")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    parser.add_argument("--quiet", action="store_true", help="don't log every chunk received")
    parser.add_argument(
        "--max-clients",
        type=int,
        default=MOST_CLIENTS,
        metavar="N",
        help=f"clients served at once, at most {MOST_CLIENTS}; more wait until one leaves",
    )
    parser.add_argument(
        "--max-buffer",
        type=int,
        default=1024 * 1024,
        metavar="BYTES",
        help="bytes one client may be owed; while it is owed more, what feeds it is not read",
    )
    parser.add_argument(
        "--grace",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="seconds a client may stay over --max-buffer before it is dropped",
    )
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error("--port must be between 0 and 65535")
    if not 1 <= args.max_clients <= MOST_CLIENTS:
        parser.error(f"--max-clients must be between 1 and {MOST_CLIENTS}")
    if args.max_buffer < 1:
        parser.error("--max-buffer must be at least 1")
    if not 0 <= args.grace <= 3600:
        parser.error("--grace must be between 0 and 3600 seconds")
    return args


# ---------------------------------------------------------------- logging


def log(message: str) -> None:
    """Print one line at once: a buffered log is lost if we die, and a pipe sees nothing.

    A plain blocking write: a log reader that stops reading (a terminal paused with
    Ctrl-S, `| less` left unscrolled) stops the server too, once the pipe is full.
    """
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
    """Show a chunk as a bytes literal (repr() is safe for any bytes), cut short if long."""
    if len(data) <= LOG_PREVIEW:
        return repr(data)
    return f"{data[:LOG_PREVIEW]!r}... ({len(data)} bytes)"


# ---------------------------------------------------------------- per-client state


class Client:
    """One connected client: its socket, its name in the log, and what we owe it."""

    def __init__(self, sock: socket.socket, name: str) -> None:
        self.sock = sock
        self.name = name  # "127.0.0.1:54321", for the log
        self.outbox = bytearray()  # bytes owed to this client, oldest first
        # It sent EOF: it gets what it is owed (nothing new), then it is closed.
        self.hung_up = False


# ---------------------------------------------------------------- the loop


class Server:
    """The listening socket, the clients, and the lists that select() watches."""

    def __init__(
        self, listener: socket.socket, wakeup: socket.socket, args: argparse.Namespace
    ) -> None:
        self.listener = listener
        self.wakeup = wakeup  # a signal writes a byte here, see install_signal_wakeup()
        self.mode: str = args.mode
        self.quiet: bool = args.quiet
        self.max_clients: int = args.max_clients
        self.max_buffer: int = args.max_buffer
        self.grace: float = args.grace
        self.clients: dict[socket.socket, Client] = {}
        self.over_limit: dict[Client, float] = {}  # client -> when it went over max_buffer
        self.accept_retry_at: float | None = None  # see stop_accepting()
        # Kept up to date as things happen, never rebuilt: a client joins or leaves,
        # starts or stops owing bytes. Only sockets that owe bytes are in outputs,
        # because a healthy socket is always writable and select() would never sleep.
        self.inputs: list[socket.socket] = [listener, wakeup]
        self.outputs: list[socket.socket] = []

    def serve(self) -> str:
        """Run the select() loop until a signal arrives; return the signal's name.

        Each round: 1. accept new clients, 2. read what clients sent and answer or relay
        it, 3. write what clients are still owed to sockets that can take it now, 4. drop
        the clients that have stayed over their limit for too long.
        """
        while True:
            # No exceptional list: SO_OOBINLINE (see open_listener) makes urgent data
            # ordinary.
            readable, writable, _ = select.select(
                self.sockets_to_read(), self.outputs, [], self.seconds_to_next_deadline()
            )
            if self.wakeup in readable:
                return signal.Signals(self.wakeup.recv(1)[0]).name

            # 1. accept new clients
            if self.listener in readable:
                self.accept()

            # 2. read what clients sent, and answer or relay it (asking may_read() each
            #    time: a read earlier in this round may have put a client over its limit)
            for sock in readable:
                client = self.clients.get(sock)
                if client is not None and self.may_read(client):
                    self.read_from(client)

            # 3. write what clients are still owed, to sockets select() found writable
            for sock in writable:
                client = self.clients.get(sock)
                if client is not None:  # None: dropped earlier in this round
                    self.write_to(client)

            # 4. drop the clients that have stayed over their limit for too long (and, if
            #    accept() ran out of resources with no client to leave, try it again)
            self.drop_stalled()
            if self.accept_retry_at is not None and time.monotonic() >= self.accept_retry_at:
                self.start_accepting()

    def sockets_to_read(self) -> list[socket.socket]:
        """inputs, less the clients that may not be read now (see may_read)."""
        if not self.over_limit:
            return self.inputs  # the usual case
        # Sockets that are not clients (the listener, the wake-up socket) are always read.
        return [s for s in self.inputs if s not in self.clients or self.may_read(self.clients[s])]

    def may_read(self, client: Client) -> bool:
        """False while a client that this one's bytes would go to is owed too much.

        Not reading a sender lets TCP flow control slow it down, instead of our memory
        growing: what it sends waits in the kernel's buffers, and then in the sender.
        """
        if not self.over_limit:
            return True
        if self.mode == "ack":
            return client not in self.over_limit  # its ACKs go to itself alone
        # Its chunks go to every other client that has not hung up.
        return all(other is client or other.hung_up for other in self.over_limit)

    def seconds_to_next_deadline(self) -> float | None:
        """How long select() may sleep: until the first over-limit client's grace ends,
        or until it is time to try accept() again; None: until something happens."""
        if not self.over_limit and self.accept_retry_at is None:
            return None  # the usual case: sleep until something happens
        deadlines = [since + self.grace for since in self.over_limit.values()]
        if self.accept_retry_at is not None:
            deadlines.append(self.accept_retry_at)
        return max(0.0, min(deadlines) - time.monotonic())

    def drop_stalled(self) -> None:
        """Drop the clients that have been owed more than max_buffer for over the grace."""
        if not self.over_limit:
            return  # the usual case
        now = time.monotonic()
        for client, since in list(self.over_limit.items()):
            if now - since < self.grace:
                continue
            # One last try first: a client that reads slowly may have made room that
            # select() has not reported yet (it says "writable" only once a third of the
            # socket's buffer is free, and that buffer can be megabytes).
            self.write_to(client)
            if client in self.over_limit:  # still over (and not dropped by the write)
                why = f"owed over {self.max_buffer} bytes for {self.grace} s"
                self.drop(client, f"{why}: not reading, or too slowly")

    # ------------------------------------------------------------ handlers

    def accept(self) -> None:
        """Accept every client waiting, up to max_clients: a crowd costs one round."""
        while len(self.clients) < self.max_clients:
            try:
                sock, address = self.listener.accept()
            except BlockingIOError:
                return  # no one else is waiting
            except ConnectionAbortedError:
                log("a client left before it was accepted")
                continue
            except OSError as error:
                if error.errno in OUT_OF_RESOURCES:
                    self.stop_accepting(str(error))
                else:
                    log(f"accept() failed: {error}")
                return
            if sock.fileno() >= FD_SETSIZE:  # select() would fail on it, and on every round
                why = f"descriptor {sock.fileno()} is past FD_SETSIZE"
                sock.close()
                self.stop_accepting(why)
                return
            self.add_client(sock, host_port(address))
        self.stop_accepting(f"{self.max_clients} clients, the most allowed")

    def add_client(self, sock: socket.socket, name: str) -> None:
        """Set up a new client's socket, and add it to clients and inputs."""
        sock.setblocking(False)  # a send or recv must never stop the whole loop
        client = Client(sock, name)
        self.clients[sock] = client
        self.inputs.append(sock)
        log(f"{client.name} connected ({len(self.clients)} online)")

    def stop_accepting(self, why: str) -> None:
        """Stop watching the listening socket: new clients wait in the kernel's queue
        until a client leaves (or, with none connected, for ACCEPT_RETRY seconds).

        A listening socket with a client waiting stays readable, so a loop that kept
        watching it while accept() could not succeed would spin.
        """
        self.inputs.remove(self.listener)
        if self.clients:
            log(f"not accepting new clients until one leaves: {why}")
        else:  # no one can leave to make room: try again in a while
            self.accept_retry_at = time.monotonic() + ACCEPT_RETRY
            log(f"not accepting new clients for {ACCEPT_RETRY} s: {why}")

    def start_accepting(self) -> None:
        """Watch the listening socket again."""
        self.inputs.append(self.listener)
        self.accept_retry_at = None
        log("accepting new clients again")

    def read_from(self, client: Client) -> None:
        """Read one chunk from client and send what it earns: an ACK, or a relay.
        A client whose recv() fails is dropped; one that sent EOF has hung up."""
        try:
            data = client.sock.recv(RECV_SIZE)
        except BlockingIOError:
            return  # nothing to read after all; select() will tell us again
        except OSError as error:  # e.g. ConnectionResetError: the client sent a reset
            self.drop(client, str(error))
            return
        if not data:
            self.hang_up(client)
            return
        if not self.quiet:
            log(f"{client.name} sent {describe(data)}")
        if self.mode == "ack":
            self.send(client, b"ACK")
        else:
            # A copy of the list: a receiver whose send() fails is dropped meanwhile.
            for other in list(self.clients.values()):
                if other is not client and not other.hung_up:
                    self.send(other, data)

    def hang_up(self, client: Client) -> None:
        """The client sent EOF: stop reading it, and close it once it has all it is owed."""
        client.hung_up = True
        self.inputs.remove(client.sock)
        if not client.outbox:
            self.drop(client, "closed by client")
        else:
            log(f"{client.name} hung up; first it gets the {len(client.outbox)} bytes it is owed")

    def send(self, client: Client, data: bytes) -> None:
        """Send data to client now if nothing is ahead of it (the socket almost always
        takes it all); whatever the socket does not take waits in client's outbox, which
        joins outputs, and may put the client over its limit. A failed send drops it."""
        if not client.outbox:
            sent = self.send_some(client, data)
            if sent is None or sent == len(data):
                return  # dropped, or all sent
            data = data[sent:]
            self.outputs.append(client.sock)  # it is owed bytes: watch for writable
        client.outbox += data
        if len(client.outbox) > self.max_buffer and client not in self.over_limit:
            self.over_limit[client] = time.monotonic()

    def write_to(self, client: Client) -> None:
        """Send client as much of its outbox as its socket takes now; an emptied outbox
        leaves outputs (and closes a client that hung up). A failed send drops it."""
        sent = self.send_some(client, client.outbox)
        if sent is None:
            return
        del client.outbox[:sent]
        if len(client.outbox) <= self.max_buffer:
            self.over_limit.pop(client, None)  # its feeders may be read again
        if not client.outbox:
            self.outputs.remove(client.sock)
            if client.hung_up:
                self.drop(client, "closed by client")

    def send_some(self, client: Client, data: bytes | bytearray) -> int | None:
        """send() what client's socket takes now; return how much, or None if it failed
        and the client was dropped. Never blocks: the socket is non-blocking."""
        try:
            return client.sock.send(data)
        except BlockingIOError:
            return 0  # no room at all right now
        except OSError as error:  # e.g. BrokenPipeError: the client is gone
            self.drop(client, str(error))
            return None

    def drop(self, client: Client, reason: str) -> None:
        """Forget client everywhere and close its socket: the only place that closes one."""
        del self.clients[client.sock]
        if not client.hung_up:
            self.inputs.remove(client.sock)
        if client.outbox:
            self.outputs.remove(client.sock)
        self.over_limit.pop(client, None)
        client.sock.close()
        log(f"{client.name} disconnected: {reason}")
        if self.listener not in self.inputs:  # there is room again
            self.start_accepting()

    def close_all(self) -> None:
        """Close every client and the listening socket, without sending what is owed."""
        for client in self.clients.values():
            client.sock.close()
        self.listener.close()


# ---------------------------------------------------------------- main


def open_listener(host: str, port: int) -> socket.socket:
    """Bind a non-blocking listening socket to host and port (IPv4 or IPv6)."""
    family, _, _, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    listener = socket.socket(family, socket.SOCK_STREAM)
    # Without SO_REUSEADDR a restart fails with "Address already in use" for as long
    # as the last run's connections linger in TIME_WAIT (a minute or more).
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Urgent (MSG_OOB) bytes arrive inline as ordinary data, so no socket ever sits in
    # select()'s exceptional list. Set here, every accepted socket inherits it, even one
    # whose urgent bytes arrive while it waits to be accepted.
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_OOBINLINE, 1)
    listener.bind(address)
    listener.listen(socket.SOMAXCONN)  # the kernel queues this many not yet accepted
    listener.setblocking(False)  # a client that connects and resets can't block accept()
    return listener


def do_nothing(signum: int, frame: FrameType | None) -> None:
    """A signal handler that returns: the byte Python writes for it does the work."""


def install_signal_wakeup() -> tuple[socket.socket, socket.socket]:
    """Make SIGINT and SIGTERM wake select() up; return (socket to read, socket written).

    Since PEP 475 select() simply restarts after a signal whose handler returns, so a
    handler that only sets a flag would never end the loop. Instead Python writes the
    signal's number into a socket that select() watches: it wakes, reads, and stops.
    """
    wakeup, wakeup_writer = socket.socketpair()
    wakeup_writer.setblocking(False)  # set_wakeup_fd() requires it
    signal.set_wakeup_fd(wakeup_writer.fileno())
    signal.signal(signal.SIGINT, do_nothing)
    signal.signal(signal.SIGTERM, do_nothing)
    return wakeup, wakeup_writer


def main(argv: list[str] | None = None) -> int:
    """Listen, serve until SIGINT or SIGTERM, close everything; return the exit status."""
    args = parse_args(argv)
    try:
        listener = open_listener(args.host, args.port)
    except (OSError, UnicodeError) as error:  # in use, no permission, no such host
        print(f"cannot listen on {args.host}:{args.port}: {error}", file=sys.stderr)
        return 1
    wakeup, wakeup_writer = install_signal_wakeup()  # before we announce the port
    server = Server(listener, wakeup, args)
    log(f"listening on {host_port(listener.getsockname())} ({args.mode} mode)")
    signal_name = server.serve()
    log(f"{signal_name}: closing {len(server.clients)} clients and exiting")
    server.close_all()
    signal.set_wakeup_fd(-1)  # before closing it: a late signal must not write elsewhere
    wakeup.close()
    wakeup_writer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
