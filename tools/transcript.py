"""The transcript format, and replaying and recording a transcript against a server.

A transcript (transcripts/*.txt, described in README.md) is a mode line and steps: what
each client does, what it receives, and what the server logs. replay() plays one against a
fresh server and raises TranscriptError at the first difference; record() plays only its
actions and writes down what arrived instead of its expectations.

    python -m tools.transcript record [FILE...]   # what `make record` runs

Which server a replay starts is the caller's: by default our own, as ServerProcess starts
it; make check (check.py) gives a command line's server, whose log is not judged.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import re
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tools.harness import LISTENING, QUIET, STOP, TRANSCRIPTS, WAIT, Client, ServerProcess

RECORD_QUIET = 0.3  # recording waits this long for stragglers after each action
SLOW = 0.5  # seconds: a wait longer than this is worth a note when checking another server

# ---------------------------------------------------------------- the format

ACTIONS = {"connects", "sends", "sends-urgent", "half-closes", "closes", "resets"}
VERBS = ACTIONS | {"receives"}  # of a client; the server's lines are "server: ..."
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
    lines: list[str]


class TranscriptError(AssertionError):
    """A transcript line that is malformed, or whose expectation was not met."""

    def __init__(self, message: str, summary: str = "", notes: list[str] | None = None) -> None:
        super().__init__(message)
        self.summary = summary or message  # one line: the transcript line, expected, arrived
        self.notes = notes or []  # differences seen before this one that are not failures


def parse_bytes(literal: str, where: str) -> bytes:
    """Turn a Python bytes literal (b'...' with any escapes) into bytes."""
    try:
        value = ast.literal_eval(literal)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):  # {[]}: TypeError
        value = None
    if not isinstance(value, bytes):
        raise TranscriptError(f"{where}: not a bytes literal: {literal}")
    return value


def parse_step(lineno: int, text: str, where: str) -> Step:
    """Parse one step line; raise TranscriptError naming the line if it is not one."""
    if text.startswith("server: "):
        return Step(lineno, text, "server", "server", line=text[len("server: ") :])
    match = STEP.match(text)
    if match is None or match["verb"] not in VERBS:
        raise TranscriptError(f"{where}: not a step: {text}")
    step, arg = Step(lineno, text, match["actor"], match["verb"]), match["arg"]
    if step.verb == "receives" and arg == "EOF":
        step.eof = True
    elif step.verb in ("sends", "sends-urgent", "receives"):
        step.data = parse_bytes(arg or "", where)
    elif arg is not None:
        raise TranscriptError(f"{where}: '{step.verb}' takes nothing after it: {text}")
    return step


def parse(text: str, name: str = "<transcript>") -> Transcript:
    """Parse a transcript: comments (#), blank lines, a mode line, then steps."""
    mode = ""
    steps: list[Step] = []
    gone: set[str] = set()  # clients that closed or reset: they can do or see nothing more
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
        elif not mode:
            raise TranscriptError(f"{where}: the first step must come after a mode line")
        else:
            steps.append(parse_step(lineno, line, where))
            if steps[-1].actor in gone:
                raise TranscriptError(f"{where}: {steps[-1].actor} has closed: {line}")
            if steps[-1].verb in ("closes", "resets"):
                gone.add(steps[-1].actor)
    if not mode:
        raise TranscriptError(f"{name}: no mode line")
    return Transcript(name, mode, steps, lines)


def transcript_files() -> list[Path]:
    return sorted(TRANSCRIPTS.glob("*.txt"))


def read_transcript(path: Path, name: str = "") -> Transcript:
    return parse(path.read_text(encoding="utf-8"), name or path.name)


# ---------------------------------------------------------------- replaying and recording

StartServer = Callable[[str], ServerProcess]  # a server of this mode, started


class Session:
    """A server and the named clients of one transcript, and the steps they take. A server
    whose log is not judged (server.judges_log) is waited for at its `server:` lines
    instead (see settle)."""

    def __init__(self, transcript: Transcript, start: StartServer) -> None:
        self.transcript = transcript
        self.server = start(transcript.mode)
        self.judges_log = self.server.judges_log
        self.wait = self.server.wait  # the most each expectation waits
        self.clients: dict[str, Client] = {}  # the server's kill() closes them
        self.notes: list[str] = []  # differences from our server that are not failures

    def fail(
        self, step: Step | None, expected: str, arrived: str, ended: bool = False
    ) -> TranscriptError:
        """The error at step (None: after the last), with the server's exit status if it has
        exited; ended: the connection ended, which a dying server causes a moment before."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.server.child.proc.wait(timeout=QUIET if ended else 0)
        status = self.server.child.proc.poll()
        if status is not None:
            arrived += f" (the server had exited, status {status})"
        where = f"{step.lineno}: {step.text}" if step else "after the last line"
        line = f"line {step.lineno} `{step.text}`" if step else "after the last line"
        return TranscriptError(
            f"{self.transcript.name}:{where}\n  expected: {expected}\n  arrived:  {arrived}\n"
            f"server output so far:\n{self.server.output.getvalue()}",
            summary=f"{line}: expected {expected}, arrived {arrived}",
            notes=list(self.notes),
        )

    def note(self, step: Step, text: str) -> None:
        """Note a difference that is not a failure, naming the line."""
        self.notes.append(f"line {step.lineno} `{step.text}` {text}")

    def client(self, step: Step) -> Client:
        """The client that step names, which must have connected."""
        if step.actor not in self.clients:
            raise TranscriptError(f"{self.transcript.name}:{step.lineno}: no {step.actor} yet")
        return self.clients[step.actor]

    def connect(self, step: Step) -> Client:
        """Connect a new client. Another server may say it listens a moment before it
        does: its refusals are retried (bounded), with a note."""
        started, refused = time.monotonic(), False
        while True:
            try:
                client = Client(self.server, step.actor, wait=self.wait)
                break
            except ConnectionRefusedError as error:
                late = time.monotonic() - started > self.wait
                if self.judges_log or late or self.server.child.proc.poll() is not None:
                    raise self.fail(step, "a connection", f"{error.strerror}", True) from None
                refused = True
                time.sleep(0.01)  # nothing to wait on: a refused connect leaves no trace
            except OSError as error:
                raise self.fail(step, "a connection", repr(error), True) from None
        if refused:
            took = time.monotonic() - started
            self.note(step, f"was refused for {took:.1f} s: it needed a moment to accept")
        return client

    def act(self, step: Step, check_unread: bool = True, closes_next: bool = False) -> None:
        """Carry out one action step; with check_unread, first fail on bytes no step expected.
        closes_next: a send goes out with the FIN that follows, in one segment (Linux), so
        that the server reads both in the same round however busy the machine is."""
        if step.verb == "connects":
            self.clients[step.actor] = self.connect(step)
            return
        client = self.client(step)
        stray = client.unread() if check_unread else b""
        if stray:
            raise self.fail(step, "nothing before this step", repr(stray))
        try:
            if step.verb == "sends" and closes_next and hasattr(socket, "TCP_CORK"):
                client.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)  # FIN sends it
            if step.verb == "sends":
                client.send(step.data)
            elif step.verb == "sends-urgent":
                client.sock.send(step.data, socket.MSG_OOB)
            elif step.verb == "half-closes":
                client.half_close()
            else:
                client.close(reset=step.verb == "resets")
        except OSError as error:  # the server reset it, or has gone
            raise self.fail(step, "no error", f"{type(error).__name__}: {error}", True) from None

    def check_line(self, step: Step) -> None:
        """Wait (bounded) for the server's next log line, and compare it exactly."""
        expected = self.with_addresses(step.line)
        line = self.server.next_line()
        if line != expected:
            raise self.fail(step, repr(expected), repr(line))

    def receive(self, step: Step) -> None:
        """Wait (bounded) until the client has received exactly step.data next, or for
        `receives EOF` the close and nothing before it; fail as soon as a byte differs."""
        client = self.client(step)
        arrived, expected = client.unread(), "EOF" if step.eof else repr(step.data)
        started = time.monotonic()
        deadline = started + client.wait
        while step.eof or not arrived.startswith(step.data):
            if not step.data.startswith(arrived):  # a wrong byte, or any byte before an EOF
                raise self.fail(step, expected, repr(arrived))
            so_far = "" if step.eof else f"{arrived!r} and then "
            try:
                arrived += client.read_more(deadline)
            except socket.timeout:
                raise self.fail(step, expected, f"{so_far}nothing") from None
            except EOFError:
                if step.eof:
                    break
                raise self.fail(step, expected, f"{so_far}EOF", True) from None
            except ConnectionResetError:
                raise self.fail(step, expected, f"{so_far}a reset (ECONNRESET)", True) from None
        client.pending = arrived[len(step.data) :]  # for the next step
        took = time.monotonic() - started
        if took > SLOW:
            later = step.eof and client.half_closed
            why = ": the server closed the half-closed client later" if later else ""
            self.note(step, f"came after {took:.1f} s{why}")

    def settle(self, step: Step) -> None:
        """At a `server:` line when the log is not judged: wait until the server has taken
        in what the clients did (see wait_until_settled), so the next action cannot overtake
        it."""
        started = time.monotonic()
        ports = [client.port for client in self.clients.values()]
        still = self.server.wait_until_settled(ports, self.wait)
        took = time.monotonic() - started
        if still:
            self.note(step, f"waited {took:.1f} s: the server had still not {still}")
        elif took > SLOW:
            self.note(step, f"waited {took:.1f} s for the server to take in what came before")

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
            extra = client.unread()
            if extra:
                raise self.fail(None, f"nothing more for {client.name}", repr(extra))
        extra_lines = [self.with_names(line) for line in self.server.new_lines()]
        if extra_lines and self.judges_log:
            raise self.fail(None, "no more server lines", repr(extra_lines))


def closes_next(step: Step, following: Step | None) -> bool:
    """True where the next step is the same client's close or half-close."""
    if following is None or following.actor != step.actor:
        return False
    return following.verb in ("half-closes", "closes")


def replay(transcript: Transcript, start: StartServer = ServerProcess) -> list[str]:
    """Play a transcript against a fresh server, by default ours (start: a server of this mode;
    one whose log is not judged is not judged on its exit either); raise TranscriptError
    where it differs, else return the notes."""
    session = Session(transcript, start)
    steps = transcript.steps
    try:
        for previous, step, following in zip([None, *steps], steps, [*steps[1:], None]):
            if step.is_action:
                # Right after another action, bytes it caused may already be here, and
                # the observations after this one will account for them.
                after_action = previous is not None and previous.is_action
                session.act(step, not after_action, closes_next(step, following))
            elif step.verb != "server":
                session.receive(step)
            elif session.judges_log:
                session.check_line(step)
            else:
                session.settle(step)
        session.check_nothing_more()
        if session.judges_log:
            last = session.server.stop()
            assert re.search(rf"{STOP.name}: closing \d+ clients? and exiting", last), last
        elif not re.search(LISTENING.pattern, session.server.output.getvalue(), re.I):
            session.notes.append(
                "it printed no 'listening on HOST:PORT' line: "
                "the check waited for the port in {port} to listen"
            )
    finally:
        session.server.kill()
    return session.notes


def observations(session: Session, order: list[str]) -> list[str]:
    """The step lines for what arrives until nothing has for RECORD_QUIET s (at most WAIT):
    each client's (first those that order names, in its order), then the server's lines."""
    clients = session.clients
    received = dict.fromkeys(clients, b"")
    at_eof_before = {name for name, client in clients.items() if client.at_eof}
    lines: list[str] = []
    quiet_since = time.monotonic()
    deadline = quiet_since + WAIT
    while time.monotonic() - quiet_since < RECORD_QUIET and time.monotonic() < deadline:
        time.sleep(0.01)  # what will arrive is not known: only quiet ends the wait
        for name, client in clients.items():
            was_at_eof = client.at_eof
            chunk = client.unread()
            received[name] += chunk
            if chunk or client.at_eof != was_at_eof:
                quiet_since = time.monotonic()
        new = session.server.new_lines()
        if new:
            lines += [session.with_names(line) for line in new]
            quiet_since = time.monotonic()
    named = [name for name in dict.fromkeys(order) if name in clients]
    out = []
    for name in named + sorted(set(clients) - set(named)):
        if received[name]:
            out.append(f"{name} receives {received[name]!r}")
        if clients[name].at_eof and name not in at_eof_before:
            out.append(f"{name} receives EOF")
    return out + [f"server: {line}" for line in lines]


def record(transcript: Transcript) -> str:
    """The transcript with new expectations: its actions replayed, and after each run of them
    what arrived, in place of the observations that stood there (their clients' order kept)."""
    session = Session(transcript, ServerProcess)
    steps = {step.lineno: step for step in transcript.steps}
    out: list[str] = []
    pending: list[str] = []  # comments and blank lines not written yet
    order: list[str] = []  # the clients that the replaced observations named
    try:
        for lineno, raw in enumerate(transcript.lines, start=1):
            step = steps.get(lineno)
            if step is None:
                pending.append(raw)
            elif not step.is_action:
                order.append(step.actor)
            else:
                if order and session.clients:  # the run of actions before this one has ended
                    out += observations(session, order)
                    order = []
                out += [*pending, raw]
                pending = []
                session.act(step, check_unread=False)  # observations() reads everything
        if session.clients:
            out += observations(session, order)
        session.server.stop()
    finally:
        session.server.kill()
    return "\n".join(out + pending).rstrip("\n") + "\n"


def record_files(files: list[Path]) -> int:
    """Rewrite each transcript (every one if none is named) from what the server does now."""
    paths = files or transcript_files()
    try:
        transcripts = {path: read_transcript(path) for path in paths}
    except (OSError, TranscriptError) as error:  # before any is rewritten
        print(f"record: {error}", file=sys.stderr)
        return 1
    for path, transcript in transcripts.items():
        new = record(transcript)
        old = path.read_text(encoding="utf-8")
        print(f"{'unchanged' if new == old else 'rewrote'} {path}", flush=True)
        path.write_text(new, encoding="utf-8")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.transcript",
        description="The golden transcripts of transcripts/ (their format: README.md).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    recording = commands.add_parser(
        "record",
        help="rewrite transcripts' expectations from what the server sends and logs now",
        description="Replay only the actions of each transcript against select_server.py and "
        "write down what arrived in place of its expectations; review with `git diff`.",
    )
    recording.add_argument("files", nargs="*", type=Path, metavar="FILE", help="default: all")
    args = parser.parse_args(argv)
    return record_files(args.files)


if __name__ == "__main__":
    sys.exit(main())
