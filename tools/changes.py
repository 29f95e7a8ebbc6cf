"""Servers changed on purpose: select_server.py with a function or constant replaced.

The one way to change the server, for a test that needs another machine or a server with
a mistake in it: a Change replaces attributes of select_server (or of the socket module)
with the real functions below. Nothing reads or edits the server's text.

    python -m tools.changes --list                  # every changed server, by name
    python -m tools.changes NAME[,NAME] MODE [ARGS]  # run one: select_server.main(), changed
    python -m tools.changes --table                  # which tests fail on each broken one
    BROKEN_SERVER=NAME pytest test_transcripts.py    # every test against one

It imports nothing but the server and the standard library, so a changed server starts
as fast as the real one.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import select_server
from select_server import Client, Server

BROKEN_SERVER = "BROKEN_SERVER"  # names changes that every server of every test gets


@dataclass(frozen=True)
class Change:
    """What a changed server does, the (object, attribute, replacement) triples, and, for a
    broken one, where its mistake shows on the wire: shown_in matches (re.M) the text of
    each transcript that it fails, in the mode shown_in names; hostile names the hostile
    cases of make check (tools/hostile.py) whose measurements show it: it fails each."""

    does: str
    replacements: list[tuple[object, str, object]]
    shown_in: str = ""
    hostile: tuple[str, ...] = ()


@contextlib.contextmanager
def changed(names: Sequence[str]) -> Iterator[None]:
    """Apply the changes of these names (see CHANGES), and undo them at the end."""
    with contextlib.ExitStack() as stack:
        for name in names:
            for target, attribute, new in CHANGES[name].replacements:
                stack.enter_context(replaced(target, attribute, new))
        yield


@contextlib.contextmanager
def replaced(target: object, attribute: str, new: object) -> Iterator[None]:
    """target.attribute is new until the end; then what it was, or inherited again (as
    unittest.mock.patch.object does, without the 30 ms that importing it costs a server)."""
    own = vars(target)
    was, had = own.get(attribute), attribute in own
    setattr(target, attribute, new)
    try:
        yield
    finally:
        if had:
            setattr(target, attribute, was)
        else:
            delattr(target, attribute)


# ---------------------------------------------------------------- the machine around it

OPEN_LISTENER = select_server.open_listener
SETSOCKOPT = socket.socket.setsockopt


def without_option(level: int, option: int, refuse: bool = False) -> tuple[object, str, object]:
    """socket.setsockopt that skips one option: quietly, or with macOS's EINVAL (refuse)."""

    def setsockopt(sock: socket.socket, at: int, name: int, value: Any) -> None:
        if (at, name) != (level, option):
            SETSOCKOPT(sock, at, name, value)
        elif refuse:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))

    return (socket.socket, "setsockopt", setsockopt)


def opening_after_files_up_to(last: int) -> tuple[object, str, object]:
    """open_listener, once files hold every descriptor up to last: as a careless parent."""

    def open_listener(host: str, port: int) -> socket.socket:
        while os.open(os.devnull, os.O_RDONLY) < last:
            pass
        return OPEN_LISTENER(host, port)

    return (select_server, "open_listener", open_listener)


def with_small_send_buffer(host: str, port: int) -> socket.socket:
    """open_listener, with a 4 KiB kernel send buffer, which Linux copies into every
    accepted socket: else the kernel would absorb a million 3-byte ACKs first."""
    listener = OPEN_LISTENER(host, port)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    return listener


def signal_on_announce(sig: signal.Signals) -> tuple[object, str, object]:
    """log() that sends the server sig as it says it listens: earlier than any test could."""
    log = select_server.log

    def log_then_signal(message: str) -> None:
        log(message)
        if message.startswith("listening on"):
            signal.raise_signal(sig)  # os.kill(os.getpid(), sig) on Windows: TerminateProcess

    return (select_server, "log", log_then_signal)


# ---------------------------------------------------------------- broken in its policy: these
# replace the Server methods that decide what a client is owed and when it is given up, and
# are the ones to retarget when those change.

OWE, RELAY, SEND_SOME = Server.owe, Server.relay, Server.send_some


def owe_at_the_write_step(server: Server, client: Client, data: bytes | memoryview) -> None:
    """owe() that never sends at once: a reply waits for select() to say "writable"."""
    if data and client.reading and not client.failure:
        if not client.outbox:
            server.outputs.append(client.fd)
            server.start_clock(client)
        client.outbox.append(data)
        client.owed += len(data)


def hold_back_no_one(server: Server) -> None:
    """hold_back_senders() without back-pressure: every client is read, whatever it feeds."""


def close_at_eof(server: Server, client: Client) -> None:
    """client_hung_up() that closes the client at once, before it is sent what it is owed."""
    server.drop(client, "closed by client")


def relay_to_the_sender_too(server: Server, chunks: list[tuple[Client, bytes]]) -> None:
    """relay(), and each sender is owed its own chunk back too."""
    RELAY(server, chunks)
    for sender, data in chunks:
        server.owe(sender, data)


def owe_reversed(server: Server, client: Client, data: bytes | memoryview) -> None:
    """owe() of every chunk reversed: the bytes arrive, but not the right ones."""
    OWE(server, client, bytes(data)[::-1])


def owe_a_private_copy(server: Server, client: Client, data: bytes | memoryview) -> None:
    """owe() of a copy of the chunk for this client alone (bytes() of a view is new)."""
    OWE(server, client, bytes(memoryview(data)))


def send_some_forgetting_the_rest(
    server: Server, client: Client, data: bytes | memoryview
) -> int | None:
    """send_some() that says it sent all of data when send() took only part of it."""
    return None if SEND_SOME(server, client, data) is None else len(data)


def send_some_dropping_on_failure(
    server: Server, client: Client, data: bytes | memoryview
) -> int | None:
    """send_some() that drops the client when send() fails, not reading what it sent."""
    try:
        return client.sock.send(data)
    except BlockingIOError:
        return 0
    except OSError as error:
        server.drop(client, select_server.failure_reason(error))
        return None


def why_by_dying(error: OSError) -> str:
    """failure_reason() that raises the error instead: a reset kills the server, as in the seed."""
    raise error


SOL = socket.SOL_SOCKET
CHANGES = {  # the machine around the server
    "pretend-windows": Change(
        "believes it runs on Windows (sys.platform win32, which it reads once)",
        [(select_server, "WINDOWS", True), (select_server, "MOST_CLIENTS", 510)],
    ),
    "every-low-descriptor-taken": Change(
        "starts with descriptors 3 to 1023 open", [opening_after_files_up_to(1023)]
    ),
    "1010-descriptors-taken": Change(
        "starts with 1,010 files open (3 to 1012)", [opening_after_files_up_to(1012)]
    ),
    "small-send-buffer": Change(
        "every client socket has a 4 KiB send buffer",
        [(select_server, "open_listener", with_small_send_buffer)],
    ),
    "nodelay-refused": Change(
        "refused TCP_NODELAY, as macOS refuses it for a client that reset before accept()",
        [without_option(socket.IPPROTO_TCP, socket.TCP_NODELAY, refuse=True)],
    ),
    "sigint-on-announce": Change("SIGINT at once", [signal_on_announce(signal.SIGINT)]),
    "sigterm-on-announce": Change("SIGTERM at once", [signal_on_announce(signal.SIGTERM)]),
}
BROKEN = {  # mistakes of the seed's or a tutorial's; `python -m tools.changes --table`
    "no-reuseaddr": Change("no SO_REUSEADDR", [without_option(SOL, socket.SO_REUSEADDR)]),
    "ack-with-newline": Change(
        'sends b"ACK\\n"',
        [(select_server, "ACK", b"ACK\n")],
        shown_in=r"^mode ack$(?s:.*) receives b'ACK'",  # wherever an ACK arrives
    ),
    "echoes-to-sender": Change(
        "relays a chunk to its sender too",
        [(Server, "relay", relay_to_the_sender_too)],
        shown_in=r"^mode broadcast$(?s:.*)^\w+ sends",  # wherever a client sends
    ),
    "closes-at-eof": Change(
        "closes a client at its EOF, before it is sent what it is owed",
        [(Server, "client_hung_up", close_at_eof)],
    ),
    "closes-before-paying": Change(
        "the seed's pitfall 2: a reply waits for the write step, a client is read while "
        "its ACK waits, and closed at its EOF before it is sent what it is owed",
        [
            (Server, "owe", owe_at_the_write_step),
            (Server, "hold_back_senders", hold_back_no_one),
            (Server, "client_hung_up", close_at_eof),
        ],
        shown_in=r"^mode ack$(?s:.*)^(\w+) sends .*\n\1 half-closes$",  # and hangs up at once
    ),
    "no-oobinline": Change("no SO_OOBINLINE", [without_option(SOL, socket.SO_OOBINLINE)]),
    "no-back-pressure": Change(
        "reads senders always",
        [(Server, "hold_back_senders", hold_back_no_one)],
        hostile=("memory",),  # what clients that never read are owed grows with the flood
    ),
    "no-fd-setsize-check": Change(
        "no FD_SETSIZE check",
        [(select_server, "FD_SETSIZE", 1 << 30)],
        hostile=("past-fd-setsize",),  # it dies at the client whose descriptor is 1024
    ),
    "no-emfile-pause": Change(
        "no pause on EMFILE",
        [(select_server, "OUT_OF_RESOURCES", set())],
        hostile=("out-of-files",),  # it spins on a listening socket it cannot accept from
    ),
    "drops-rest-of-send": Change(  # (it costs stalled-reader's chat a message most runs)
        "drops the rest of a partial send",
        [(Server, "send_some", send_some_forgetting_the_rest)],
    ),
    "failed-send-forgets": Change(
        "forgets a client whose send() failed, without reading it",
        [(Server, "send_some", send_some_dropping_on_failure)],
        hostile=("send-and-close",),  # messages of clients that sent and closed are lost
    ),
    "copy-per-client": Change(
        "a private copy of each chunk per client",
        [(Server, "owe", owe_a_private_copy)],
        hostile=("memory",),  # 90 clients that never read, owed 1 MiB each, hold 90 MB
    ),
    "no-tcp-nodelay": Change(
        "no TCP_NODELAY", [without_option(socket.IPPROTO_TCP, socket.TCP_NODELAY)]
    ),
    "reset-kills-server": Change(
        "dies at a reset, as the seed did",
        [(select_server, "failure_reason", why_by_dying)],
        shown_in=r"^mode broadcast$(?s:.*)^\w+ resets$",  # (in ack too; one mode is enough)
        hostile=("send-and-close",),  # a relay to a client that has closed is reset
    ),
    "reversing-relay": Change("relays every chunk reversed", [(Server, "owe", owe_reversed)]),
}
CHANGES.update(BROKEN)


def run_changed_server(names: str, argv: list[str]) -> int:
    """select_server.main(argv), with the changes of these names (NAME,NAME...) applied."""
    unknown = [name for name in names.split(",") if name not in CHANGES]
    if unknown:
        print(f"no such changed server: {', '.join(unknown)} (see --list)", file=sys.stderr)
        return 2
    sys.argv[0] = "select_server.py"  # so that argparse calls itself by the server's name
    with changed(names.split(",")):
        return select_server.main(argv)


def table() -> int:
    """Run every test against each broken server in turn, and say which fail (minutes)."""
    root = Path(__file__).resolve().parent.parent
    for name, change in BROKEN.items():
        command = [sys.executable, "-m", "pytest", "-qrf", "-n2", "--dist=loadgroup"]
        env = {**os.environ, BROKEN_SERVER: name}
        result = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)
        failed = re.findall(r"^FAILED \S+::(\S+)", result.stdout, re.M)
        print(f"{name} ({change.does}): {len(failed)} failed", *failed, sep="\n    ", flush=True)
    return 0


def main(argv: list[str]) -> int:
    """The command line of __doc__."""
    if argv[:1] == ["--list"]:
        for name, change in CHANGES.items():
            print(f"{name:26} {change.does}")
        return 0
    if argv[:1] == ["--table"]:
        return table()
    if not argv or argv[0].startswith("-"):
        print(__doc__)
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    return run_changed_server(argv[0], argv[1:])  # no MODE: the server's usage message


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
