"""Tests for select_server.py: golden transcripts replayed against the real server.

Every file in transcripts/ is one test. The harness starts the server on a free port
with pexpect, plays each client's steps over real sockets, and checks the exact bytes
each client receives and the exact lines the server prints. The format is described
in README.md ("Transcripts").

    make test                                  # everything, including these
    make record                                # rewrite every transcript's expectations
    make record T=transcripts/ack_one_client.txt

Recording replays only the actions of a transcript (connects, sends, closes...) and
writes down what actually arrived; review the result with `git diff` like code.
"""

from __future__ import annotations

import ast
import io
import os
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pexpect
import pytest
from pexpect.popen_spawn import PopenSpawn
from pexpect.socket_pexpect import SocketSpawn

HERE = Path(__file__).resolve().parent
SERVER = HERE / "select_server.py"
TRANSCRIPTS = HERE / "transcripts"

WAIT = 5.0  # seconds: the most any single expectation waits before it fails
QUIET = 0.1  # seconds of silence that show nothing more is coming
RECORD_QUIET = 0.3  # recording waits this long for stragglers after each action

# ---------------------------------------------------------------- the transcript format

ACTIONS = {"connects", "sends", "sends-urgent", "half-closes", "closes", "resets"}
OBSERVATIONS = {"receives", "server"}
STEP = re.compile(r"(?P<actor>[a-z][a-z0-9_]*) (?P<verb>[a-z-]+)(?: (?P<arg>.*))?$")


@dataclass
class Step:
    """One line of a transcript: who does or sees what."""

    lineno: int
    text: str  # the line as written, for failure messages
    actor: str  # a client name, or "server"
    verb: str  # "connects", "sends", ..., "receives", or "server" for a log line
    data: bytes = b""  # what is sent or received
    eof: bool = False  # "receives EOF": the server closed the connection
    line: str = ""  # the log line the server prints, for "server:"

    @property
    def is_action(self) -> bool:
        return self.verb in ACTIONS


@dataclass
class Transcript:
    """A parsed transcript: the mode, the steps, and the lines as written."""

    name: str
    mode: str
    steps: list[Step]
    lines: list[str] = field(default_factory=list)


class TranscriptError(AssertionError):
    """A transcript line that is malformed, or whose expectation was not met."""


def parse_bytes(literal: str, where: str) -> bytes:
    """Turn a Python bytes literal (b'...' with any escapes) into bytes."""
    try:
        value = ast.literal_eval(literal)
    except (ValueError, SyntaxError) as error:
        raise TranscriptError(f"{where}: not a bytes literal: {literal}") from error
    if not isinstance(value, bytes):
        raise TranscriptError(f"{where}: not a bytes literal: {literal}")
    return value


def parse_step(lineno: int, text: str, where: str) -> Step:
    """Parse one step line; raise TranscriptError naming the line if it is not one."""
    if text.startswith("server: "):
        return Step(lineno, text, "server", "server", line=text[len("server: ") :])
    match = STEP.match(text)
    if match is None or match["verb"] not in ACTIONS | OBSERVATIONS:
        raise TranscriptError(f"{where}: not a step: {text}")
    actor, verb, arg = match["actor"], match["verb"], match["arg"]
    step = Step(lineno, text, actor, verb)
    if verb == "receives" and arg == "EOF":
        step.eof = True
    elif verb in ("sends", "sends-urgent", "receives"):
        step.data = parse_bytes(arg or "", where)
    elif arg is not None:
        raise TranscriptError(f"{where}: '{verb}' takes nothing after it: {text}")
    return step


def parse(text: str, name: str = "<transcript>") -> Transcript:
    """Parse a transcript: comments (#), blank lines, a mode line, then steps."""
    mode = ""
    steps = []
    lines = text.splitlines()
    for lineno, raw in enumerate(lines, start=1):
        line = raw.strip()
        where = f"{name}:{lineno}"
        if not line or line.startswith("#"):
            continue
        if line.startswith("mode "):
            mode = line[len("mode ") :]
            if mode not in ("ack", "broadcast"):
                raise TranscriptError(f"{where}: mode must be ack or broadcast: {line}")
            continue
        if not mode:
            raise TranscriptError(f"{where}: the first step must come after a mode line")
        steps.append(parse_step(lineno, line, where))
    if not mode:
        raise TranscriptError(f"{name}: no mode line")
    return Transcript(name, mode, steps, lines)


def bytes_text(data: bytes) -> str:
    """The bytes literal a transcript shows for data."""
    return repr(data)


# ---------------------------------------------------------------- the server under test


def host_port(address: tuple[str, int] | tuple[str, int, int, int]) -> str:
    """host:port as the server logs it, with IPv6 hosts in brackets."""
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


LISTENING = re.compile(r"listening on (?:\[(?P<v6>[^\]]+)\]|(?P<v4>[^\s:]+)):(?P<port>\d+)")


class ServerProcess:
    """The server started through pexpect (on a free port by default), read line by line.

    Its stdout is a pipe, not a terminal, so a line that was not flushed at once
    would not arrive and the test waiting for it would fail.
    """

    def __init__(
        self,
        mode: str,
        *extra_args: str,
        host: str = "127.0.0.1",
        port: int = 0,
        python: str = sys.executable,
        preexec_fn: Callable[[], None] | None = None,
    ) -> None:
        self.output = io.StringIO()  # everything the server printed, for failures
        command = [python, str(SERVER), mode, "--host", host, "--port", str(port), *extra_args]
        # Without PYTHONUNBUFFERED (set on some machines), a print() to a pipe that the
        # server forgot to flush would sit in its buffer, and this test would see it.
        environment = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
        self.child: PopenSpawn[str] = PopenSpawn(
            command,
            timeout=WAIT,
            env=environment,
            encoding="utf-8",
            codec_errors="replace",
            preexec_fn=preexec_fn,
        )
        self.child.logfile_read = self.output
        first = self.next_line()
        match = LISTENING.search(first)
        if match is None:
            raise AssertionError(f"expected 'listening on HOST:PORT', got {first!r}")
        self.announcement = first
        self.host = match["v6"] or match["v4"]
        self.port = int(match["port"])
        self.pid = self.child.proc.pid

    def next_line(self, timeout: float = WAIT) -> str:
        """Wait (bounded) for the server's next log line and return it."""
        try:
            self.child.expect_exact("\n", timeout=timeout)
        except (pexpect.TIMEOUT, pexpect.EOF):
            raise AssertionError(
                f"the server printed no line within {timeout} s; its output:\n"
                f"{self.output.getvalue()}"
            ) from None
        return str(self.child.before).rstrip("\r")

    def expect_line(self, pattern: str, timeout: float = WAIT) -> re.Match[str]:
        """Skip log lines until one matches the regex pattern; return the match."""
        deadline = time.monotonic() + timeout
        while True:
            line = self.next_line(max(0.0, deadline - time.monotonic()))
            match = re.search(pattern, line)
            if match is not None:
                return match

    def pending_output(self) -> str:
        """Whatever the server printed that no step has read yet (waits a millisecond)."""
        # Matching TIMEOUT hands over everything read so far as `before`.
        self.child.expect([pexpect.TIMEOUT, pexpect.EOF], timeout=0.001)
        return str(self.child.before)

    def stop(self, sig: int = signal.SIGINT) -> str:
        """Signal the server and check it exits cleanly; return what it printed last."""
        self.child.kill(sig)
        self.child.expect(pexpect.EOF, timeout=WAIT)
        last = str(self.child.before)
        status = self.child.proc.wait(timeout=WAIT)
        everything = self.output.getvalue()
        assert status == 0, f"exit status {status}; output:\n{everything}"
        assert "Traceback" not in everything, everything
        return last

    def kill(self) -> None:
        """Make sure the process is gone (after a failed test)."""
        if self.child.proc.poll() is None:
            self.child.proc.kill()
            self.child.proc.wait(timeout=WAIT)


# ---------------------------------------------------------------- clients


class Client:
    """One named client of a transcript: a socket driven through pexpect."""

    def __init__(self, name: str, server: ServerProcess) -> None:
        self.name = name
        self.sock = socket.create_connection((server.host, server.port), timeout=WAIT)
        self.address = host_port(self.sock.getsockname())
        self.spawn: SocketSpawn[bytes] = SocketSpawn(self.sock, timeout=WAIT, maxread=65536)
        self.closed = False  # we closed or reset it: nothing more can be read
        self.at_eof = False  # the server closed it and we read the EOF

    def take_unread(self) -> bytes:
        """Take the bytes that arrived and no step has accounted for, without waiting."""
        extra = self.spawn.buffer
        self.spawn.buffer = b""
        if self.closed or self.at_eof:
            return extra
        while True:
            ready, _, _ = select.select([self.sock], [], [], 0)
            if not ready:
                return extra
            try:
                chunk = self.sock.recv(65536)
            except OSError:
                return extra
            if not chunk:
                return extra
            extra += chunk

    def close(self, reset: bool = False) -> None:
        """Close the socket; with reset, the kernel sends RST instead of FIN."""
        if reset:
            # SO_LINGER on, with a zero timeout: close() discards and resets.
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()
        self.closed = True


# ---------------------------------------------------------------- replaying a transcript


class Session:
    """A server and the named clients of one transcript, with the steps they can take."""

    def __init__(
        self, transcript: Transcript, host: str = "127.0.0.1", python: str = sys.executable
    ) -> None:
        self.transcript = transcript
        self.server = ServerProcess(transcript.mode, host=host, python=python)
        self.clients: dict[str, Client] = {}

    def fail(self, step: Step | None, expected: str, arrived: str) -> TranscriptError:
        """An error that shows the transcript line, what was expected and what arrived."""
        where = f"{step.lineno}: {step.text}" if step else "after the last line"
        return TranscriptError(
            f"{self.transcript.name}:{where}\n"
            f"  expected: {expected}\n"
            f"  arrived:  {arrived}\n"
            f"server output so far:\n{self.server.output.getvalue()}"
        )

    def client(self, step: Step) -> Client:
        if step.actor not in self.clients:
            raise TranscriptError(
                f"{self.transcript.name}:{step.lineno}: {step.actor} never connected"
            )
        return self.clients[step.actor]

    def act(self, step: Step) -> None:
        """Carry out one action step."""
        if step.verb == "connects":
            self.clients[step.actor] = Client(step.actor, self.server)
            return
        client = self.client(step)
        stray = client.take_unread()  # whatever arrived and no step expected: fail here, not later
        if stray:
            raise self.fail(step, "nothing before this step", bytes_text(stray))
        if step.verb == "sends":
            client.sock.sendall(step.data)
        elif step.verb == "sends-urgent":
            client.sock.send(step.data, socket.MSG_OOB)
        elif step.verb == "half-closes":
            client.sock.shutdown(socket.SHUT_WR)
        elif step.verb == "closes":
            client.close()
        elif step.verb == "resets":
            client.close(reset=True)

    def check(self, step: Step) -> None:
        """Wait (bounded) for one observation step and compare it exactly."""
        if step.verb == "server":
            expected = self.with_addresses(step.line)
            line = self.server.next_line()
            if line != expected:
                raise self.fail(step, repr(expected), repr(line))
            return
        client = self.client(step)
        try:
            if step.eof:
                client.spawn.expect(pexpect.EOF)
                client.at_eof = True
            else:
                client.spawn.expect_exact(step.data)
        except pexpect.TIMEOUT:
            arrived = bytes_text(client.spawn.buffer)
            raise self.fail(step, self.shown(step), f"{arrived} and then nothing") from None
        except pexpect.EOF:
            client.at_eof = True
            arrived = bytes_text(client.spawn.before or b"")
            raise self.fail(step, self.shown(step), f"{arrived} and then EOF") from None
        except ConnectionResetError:
            raise self.fail(step, self.shown(step), "a reset (ECONNRESET)") from None
        before = client.spawn.before or b""
        if before:
            raise self.fail(step, self.shown(step), f"{bytes_text(before)} before it")

    @staticmethod
    def shown(step: Step) -> str:
        return "EOF" if step.eof else bytes_text(step.data)

    def with_addresses(self, line: str) -> str:
        """Replace {name} in an expected log line by that client's address."""
        for name, client in self.clients.items():
            line = line.replace("{" + name + "}", client.address)
        return line

    def with_names(self, line: str) -> str:
        """Replace each client's address in a log line by {name}."""
        for name, client in self.clients.items():
            line = line.replace(client.address, "{" + name + "}")
        return line

    def check_nothing_more(self) -> None:
        """After the last step: a short quiet window in which nothing more arrives."""
        time.sleep(QUIET)  # the one sleep: silence can only be shown by waiting
        for client in self.clients.values():
            extra = client.take_unread()
            if extra:
                raise self.fail(None, f"nothing more for {client.name}", bytes_text(extra))
        extra_log = self.server.pending_output()
        if extra_log:
            raise self.fail(None, "no more server lines", repr(self.with_names(extra_log)))

    def close(self) -> None:
        for client in self.clients.values():
            if not client.closed:
                client.close()
        self.server.kill()


def replay(transcript: Transcript, host: str = "127.0.0.1", python: str = sys.executable) -> None:
    """Play a transcript against a fresh server; raise TranscriptError where it differs."""
    session = Session(transcript, host, python)
    try:
        for step in transcript.steps:
            if step.is_action:
                session.act(step)
            else:
                session.check(step)
        session.check_nothing_more()
        last = session.server.stop()
        assert re.search(r"SIGINT: closing \d+ clients and exiting", last), last
    finally:
        session.close()


# ---------------------------------------------------------------- recording


def gather(session: Session) -> tuple[dict[str, bytes], set[str], list[str]]:
    """Collect what arrives until nothing has for RECORD_QUIET seconds (bounded)."""
    received = {name: b"" for name in session.clients}
    eof: set[str] = set()
    lines: list[str] = []
    quiet_since = time.monotonic()
    deadline = quiet_since + WAIT
    while time.monotonic() - quiet_since < RECORD_QUIET and time.monotonic() < deadline:
        time.sleep(0.01)
        for name, client in session.clients.items():
            chunk = client.take_unread()
            if chunk:
                received[name] += chunk
                quiet_since = time.monotonic()
            if not client.closed and not client.at_eof and is_at_eof(client):
                eof.add(name)
                client.at_eof = True
                quiet_since = time.monotonic()
        text = session.server.pending_output()
        if text:
            lines += [session.with_names(line) for line in text.splitlines()]
            quiet_since = time.monotonic()
    return received, eof, lines


def is_at_eof(client: Client) -> bool:
    """True when the server has closed this client (a read returns EOF or a reset)."""
    ready, _, _ = select.select([client.sock], [], [], 0)
    if not ready:
        return False
    try:
        return client.sock.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


def observations(session: Session, order: list[str]) -> list[str]:
    """The step lines for what arrived after the last actions: clients first, then the log."""
    received, eof, lines = gather(session)
    named = [name for name in dict.fromkeys(order) if name in received]  # once each
    names = named + sorted(name for name in received if name not in named)
    out = []
    for name in names:
        if received[name]:
            out.append(f"{name} receives {bytes_text(received[name])}")
        if name in eof:
            out.append(f"{name} receives EOF")
    return out + [f"server: {line}" for line in lines]


def record(transcript: Transcript) -> str:
    """Replay only the actions of a transcript and return it with new expectations.

    Comments, blank lines and actions stay where they are. Actions on consecutive
    lines happen at once; after each run of them come the observations of what
    actually arrived, in place of the ones that stood there.
    """
    session = Session(transcript)
    steps = {step.lineno: step for step in transcript.steps}
    out: list[str] = []
    pending: list[str] = []  # comments and blank lines waiting to be written
    order: list[str] = []  # clients in the order the replaced observations named them
    acted = False  # actions were replayed whose observations are not written yet
    try:
        for lineno, raw in enumerate(transcript.lines, start=1):
            step = steps.get(lineno)
            if step is None:
                pending.append(raw)
            elif not step.is_action:
                order.append(step.actor)
            else:
                if acted and order:  # the run of actions before this one has ended
                    out += observations(session, order)
                    acted, order = False, []
                out += [*pending, raw]
                pending = []
                session.act(step)
                acted = True
        if acted:
            out += observations(session, order)
        out += pending
        session.server.stop()
    finally:
        session.close()
    return "\n".join(out).rstrip("\n") + "\n"


# ---------------------------------------------------------------- the tests


def transcript_files() -> list[Path]:
    return sorted(TRANSCRIPTS.glob("*.txt"))


@pytest.mark.parametrize("path", transcript_files(), ids=lambda path: path.stem)
def test_transcript(path: Path) -> None:
    """Each client receives exactly the bytes the transcript says, and nothing more."""
    try:
        replay(parse(path.read_text(), path.name))
    except TranscriptError as error:
        pytest.fail(str(error), pytrace=False)


# ---------------------------------------------------------------- the harness itself

WRONG = {  # the last line of a transcript, where it fails, and the start of the complaint
    "a wrong expectation": ("alice receives b'ACK!'", "5: alice receives b'ACK!'", "b'ACK!'"),
    "an unexpected byte": ("server: {alice} sent 2 bytes: b'hi'", "after the last line", "nothing"),
    "a wrong server line": ("server: {alice} left", "5: server: {alice} left", "'127.0.0.1:"),
}


@pytest.mark.parametrize("wrong", WRONG, ids=list(WRONG))
def test_harness_fails_and_shows_the_line(wrong: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The harness can fail: a transcript that is wrong fails where it is wrong, saying
    what it expected and what arrived."""
    monkeypatch.setattr(sys.modules[__name__], "WAIT", 1.0)  # a wrong wait runs out sooner
    last_line, where, expected = WRONG[wrong]
    start = "mode ack\nalice connects\nserver: {alice} connected (1 online)\nalice sends b'hi'\n"
    with pytest.raises(TranscriptError) as failure:
        replay(parse(start + last_line, "wrong.txt"))
    lines = str(failure.value).splitlines()
    assert lines[0] == f"wrong.txt:{where}"
    assert lines[1].startswith(f"  expected: {expected}")
    assert lines[2].startswith("  arrived:  ")


@pytest.mark.parametrize(
    "text",
    [
        "alice connects\n",
        "mode echo\n",
        "mode ack\nalice shouts b'hi'\n",
        "mode ack\nalice sends 'hi'\n",
    ],
    ids=["no-mode", "unknown-mode", "unknown-verb", "not-bytes"],
)
def test_malformed_transcript_names_its_line(text: str) -> None:
    """A line the harness cannot read is an error naming that line, not a skipped step."""
    with pytest.raises(TranscriptError, match=r"^bad\.txt:\d"):
        parse(text, "bad.txt")


# ---------------------------------------------------------------- the command line and signals


def run_server(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the server to completion (it should exit at once) and capture its output."""
    command = [sys.executable, str(SERVER), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=WAIT)


@pytest.mark.parametrize(
    "args",
    [[], ["echo"], ["ack", "--port", "-1"], ["ack", "--port", "65536"], ["ack", "--port", "x"]],
    ids=["no-mode", "unknown-mode", "port-negative", "port-too-big", "port-not-a-number"],
)
def test_bad_arguments_give_usage_and_status_2(args: list[str]) -> None:
    """argparse answers a bad command line with a usage message and exit status 2."""
    result = run_server(*args)
    assert result.returncode == 2
    assert result.stderr.startswith("usage: ")
    assert "Traceback" not in result.stderr


def test_port_in_use_gives_one_line_and_status_1() -> None:
    """A port that cannot be bound gives one line on stderr and exit status 1."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = str(taken.getsockname()[1])
        result = run_server("ack", "--host", "127.0.0.1", "--port", port)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"cannot listen on 127.0.0.1:{port}: [Errno 98] Address already in use"
    ]
    assert result.stdout == ""


@pytest.mark.parametrize("host", ["no-such-host.invalid", "a..b"])
def test_unknown_host_gives_one_line_and_status_1(host: str) -> None:
    """A host name that does not resolve (or is not a name at all) is not a traceback."""
    result = run_server("ack", "--host", host, "--port", "0")
    assert result.returncode == 1
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith(f"cannot listen on {host}:0: ")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_right_after_listening_exits_cleanly(sig: signal.Signals) -> None:
    """The handlers are in place before the server says it listens: a signal sent the
    moment the line appears closes everything, logs one line and exits 0."""
    for _ in range(5):
        server = ServerProcess("broadcast")
        try:
            last = server.stop(sig)
        finally:
            server.kill()
        assert last.strip() == f"{sig.name}: closing 0 clients and exiting"


def test_signal_closes_connected_clients() -> None:
    """On SIGTERM every client sees its connection closed, and the exit is clean."""
    server = ServerProcess("ack")
    try:
        clients = [socket.create_connection((server.host, server.port)) for _ in range(3)]
        for _ in clients:
            server.expect_line(r"connected")
        last = server.stop(signal.SIGTERM)
        assert last.strip() == "SIGTERM: closing 3 clients and exiting"
        for sock in clients:
            sock.settimeout(WAIT)
            assert sock.recv(1) == b""
            sock.close()
    finally:
        server.kill()


def test_restart_on_the_same_port_works_at_once() -> None:
    """SO_REUSEADDR: the server closed its connections first (so they sit in
    TIME_WAIT on its side), yet a new server binds the same port straight away."""
    first = ServerProcess("ack")
    try:
        sock = socket.create_connection((first.host, first.port))
        sock.sendall(b"x")
        assert sock.recv(3) == b"ACK"
        first.stop()
        sock.close()
    finally:
        first.kill()
    second = ServerProcess("ack", port=first.port)
    try:
        assert second.port == first.port
        second.stop()
    finally:
        second.kill()


def test_server_outlives_the_reader_of_its_log() -> None:
    """When the pipe that reads the log closes (`| head`, or Ctrl-C in a pipeline), the
    server goes on serving, and still exits cleanly on a signal."""
    server = subprocess.Popen(
        [sys.executable, str(SERVER), "ack", "--host", "127.0.0.1", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        match = LISTENING.search(server.stdout.readline())
        assert match is not None
        server.stdout.close()  # the log's reader is gone
        with socket.create_connection(("127.0.0.1", int(match["port"])), timeout=WAIT) as sock:
            sock.sendall(b"anyone reading?")  # both lines this logs hit the closed pipe
            assert sock.recv(3) == b"ACK"
        server.send_signal(signal.SIGINT)
        _, errors = server.communicate(timeout=WAIT)
        assert server.returncode == 0
        assert errors == ""
    finally:
        server.kill()


def has_ipv6_loopback() -> bool:
    try:
        with socket.create_server(("::1", 0), family=socket.AF_INET6):
            return True
    except OSError:
        return False


@pytest.mark.skipif(not has_ipv6_loopback(), reason="this machine has no IPv6 loopback")
def test_ipv6_address_is_announced_in_brackets_and_served() -> None:
    """--host ::1 listens on IPv6, announces [::1]:PORT, and serves a transcript."""
    server = ServerProcess("ack", host="::1")
    try:
        assert server.announcement == f"listening on [::1]:{server.port} (ack mode)"
        server.stop()
    finally:
        server.kill()
    path = TRANSCRIPTS / "broadcast_three_clients.txt"
    replay(parse(path.read_text(), path.name), host="::1")


def find_python_3_8() -> str | None:
    """A CPython 3.8 that really runs (a pyenv shim on PATH may not), or None."""
    candidates = [
        shutil.which("python3.8"),
        *map(str, Path.home().glob(".pyenv/versions/3.8*/bin/python")),
    ]
    for candidate in filter(None, candidates):
        check = [candidate, "-c", "import sys; print(sys.version_info[:2] == (3, 8))"]
        result = subprocess.run(check, capture_output=True, text=True, timeout=WAIT)
        if result.stdout.strip() == "True":
            return candidate
    return None


PYTHON_3_8 = find_python_3_8()


@pytest.mark.skipif(PYTHON_3_8 is None, reason="no CPython 3.8 on this machine")
@pytest.mark.parametrize("name", ["ack_half_close", "broadcast_three_clients"])
def test_transcript_on_python_3_8(name: str) -> None:
    """The server keeps its promise to run on CPython 3.8, the oldest it supports."""
    assert PYTHON_3_8 is not None
    path = TRANSCRIPTS / f"{name}.txt"
    replay(parse(path.read_text(), path.name), python=PYTHON_3_8)


def test_clients_that_leave_at_once_are_dropped_alone() -> None:
    """Clients that connect and close, or reset, or send and close at once are each
    dropped with a log line saying why; a client connected all along is unaffected."""
    server = ServerProcess("ack")
    try:
        steady = socket.create_connection((server.host, server.port), timeout=WAIT)
        server.expect_line("connected")
        for how in ["close", "reset", "send-and-close"] * 5:
            sock = socket.create_connection((server.host, server.port))
            if how == "reset":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            if how == "send-and-close":
                sock.sendall(b"bye")
            sock.close()
            server.expect_line(r"disconnected: |a client left before it was accepted")
        steady.sendall(b"still here")
        assert steady.recv(16) == b"ACK"
        steady.close()
        server.stop()
    finally:
        server.kill()


def test_half_closed_client_gets_its_whole_backlog_first() -> None:
    """A client that is owed a backlog when it half-closes still receives every byte of
    it, in order, before the server closes the connection."""
    server = ServerProcess("broadcast", "--quiet")
    payload = bytes(range(256)) * 32768  # 8 MiB: the kernel holds about 4 MiB of it
    try:
        slow = socket.socket(server_family(server))
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # keep the kernel's share small
        slow.connect((server.host, server.port))
        server.expect_line("connected")
        sender = socket.create_connection((server.host, server.port), timeout=WAIT)
        server.expect_line("connected")
        sender.sendall(payload)
        sender.shutdown(socket.SHUT_WR)
        server.expect_line(r"disconnected: closed by client")  # all of it is queued for slow
        slow.shutdown(socket.SHUT_WR)
        assert receive_until_eof(slow) == payload
        sender.close()
        slow.close()
        server.stop()
    finally:
        server.kill()


def server_family(server: ServerProcess) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in server.host else socket.AF_INET


def receive_until_eof(sock: socket.socket, timeout: float = WAIT) -> bytes:
    """Read until the server closes the connection (bounded); return all of it."""
    sock.settimeout(timeout)
    chunks = []
    while chunk := sock.recv(1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def main(argv: list[str]) -> int:
    """`python test_transcripts.py record [FILE...]`: rewrite transcripts from the server."""
    if not argv or argv[0] != "record":
        print(__doc__)
        return 2
    paths = [Path(arg) for arg in argv[1:]] or transcript_files()
    for path in paths:
        new = record(parse(path.read_text(), path.name))
        changed = new != path.read_text()
        path.write_text(new)
        print(f"{'rewrote' if changed else 'unchanged'} {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
