"""make check: any server, judged on the wire against the transcripts and generated sessions,
and then from outside its process in the hostile cases.

    python -m tools.check --server 'python3 my_server.py {mode} --port {port}'
    python -m tools.check --ack 'python3 ack.py {port}' --broadcast 'node relay.js {port}'

Each transcript, then generated sessions (model.py), is replayed against a fresh server
started from the command line given, and judged only on what its clients receive: every
byte, every EOF, and that nothing more arrives. The server's log is not compared: at each
`server:` line the check waits until the kernel shows that the server has taken in what
the clients did (Linux; elsewhere, a pause). Then each hostile case (hostile.py) loads a
fresh server as a README pitfall or rule says and measures it. One line per transcript or
case, `pass` or its first difference (`skip` for a case this machine cannot run), and last
`N passed, M failed`; the exit status is 0 only when all passed. docs/check.md says more.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import math
import os
import re
import shlex
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import pexpect
import psutil
from hypothesis import Verbosity, given, settings
from hypothesis.errors import Flaky

from tools.harness import (
    LISTENING,
    WAIT,
    ServerProcess,
    free_port,
    last_line,
    nofile_limit,
    processes,
    reachable,
    server_command,
)
from tools.hostile import CASES, Case, run_case
from tools.model import Action, generated_transcript, sessions
from tools.transcript import (
    Transcript,
    TranscriptError,
    parse,
    read_transcript,
    replay,
    transcript_files,
)

CHECK_WAIT = 2.0  # seconds: the most one expectation waits when checking another server
STOP_WAIT = 1.0  # seconds another server has to exit on SIGINT before it is killed
SETTLE_PAUSE = 0.1  # seconds given to a server to take in what came, where none can ask
STILL_RUNNING = "gone back to sleep (does its loop spin?)"


class StartError(AssertionError):
    """Another server did not start: it exited, or did not listen in time."""


class CommandServer(ServerProcess):
    """Any server, from a shell command line with {mode} and {port} filled in, judged on
    the wire only: its output is kept for messages, not compared; at each `server:` line a
    replay waits until it has settled (wait_until_settled). A hostile case may start it
    with a file descriptor limit (open_files) and with held_files files already open."""

    judges_log = False
    wait = CHECK_WAIT

    def __init__(
        self, command: str, mode: str, open_files: int | None = None, held_files: int = 0
    ) -> None:
        port = free_port()
        line = command.replace("{mode}", mode).replace("{port}", str(port))
        # Through a shell, so that any command line works (`cd dir && ./server`), in a
        # session of its own, so that a signal to its process group reaches all it starts
        # (Windows: cmd.exe, and PopenSpawn's process group).
        if sys.platform == "win32":
            shell = f'{os.environ.get("COMSPEC", "cmd.exe")} /d /s /c "{line}"'
            self.start(shell, dict(os.environ))
        else:
            argv = ["/bin/sh", "-c", line]
            if held_files:  # as a careless parent leaves them: they push its sockets' numbers up
                argv = [sys.executable, "-c", HOLD_FILES, str(held_files), *argv]
            self.start(argv, dict(os.environ), in_a_session_of_its_own(open_files))
        self.spins = False  # once it did not go back to sleep in time, that is not waited for
        self.host, self.port = self.find(port, port_given="{port}" in command)
        self.group = [p.pid for p in processes(self)]  # the shell and the server: asleep?

    def find(self, port: int, port_given: bool) -> tuple[str, int]:
        """Wait (bounded: WAIT) for a 'listening on HOST:PORT' line, or for {port} to listen;
        if the server exits first, or never listens, kill it and fail, saying which."""
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            for line in self.new_lines():
                match = re.search(LISTENING.pattern, line, re.IGNORECASE)
                if match is not None:
                    return reachable(match["v6"] or match["v4"]), int(match["port"])
            status = self.child.proc.poll()
            if status is not None:
                with contextlib.suppress(pexpect.TIMEOUT, pexpect.EOF):
                    self.child.expect(pexpect.EOF, timeout=WAIT)  # for its last words
                raise self.not_started(f"the server exited with status {status} before it listened")
            host = listening_host(port) if port_given else None
            if host is not None:
                return host, port
            time.sleep(0.01)  # a port that begins to listen sends no word: ask again
        where = "on the port put in {port}" if port_given else "(no {port} in the command)"
        raise self.not_started(
            f"the server did not listen within {WAIT} s: it printed no 'listening on "
            f"HOST:PORT' line, and nothing listens {where}"
        )

    def not_started(self, why: str) -> StartError:
        """Kill the server; the error says why it did not start, and its last line."""
        self.kill()
        return StartError(f"{why}; {last_line(self)}")

    def wait_until_settled(self, client_ports: list[int], wait: float) -> str:
        """Wait (bounded) until the kernel shows that the server has taken in what the clients
        on these ports did and gone back to sleep (Linux; elsewhere, a pause); return what it
        has still not done, or ""."""
        if not sys.platform.startswith("linux"):
            time.sleep(SETTLE_PAUSE)  # nothing to ask, only time to give
            return ""
        deadline = time.monotonic() + wait
        while self.child.proc.poll() is None:  # once it has exited, the next step says so
            still = self.unsettled(client_ports)
            if not still or time.monotonic() > deadline:
                self.spins = self.spins or still == STILL_RUNNING
                return still
            time.sleep(0.001)
        return ""

    def unsettled(self, client_ports: list[int]) -> str:
        """What the server has still not done that wait_until_settled waits for, or ""."""
        table = tcp_table(self.port)
        theirs = [e for e in table if e.local_port == self.port]  # its listeners, its ends
        ours = [e for e in table if e.remote_port == self.port and e.local_port in client_ports]
        accepted = {e.remote_port for e in theirs}
        if any(e.state == TCP_SYN_RECV or (e.state == TCP_LISTEN and e.rx_queue) for e in theirs):
            return "accepted every connection"
        if any(e.state == TCP_ESTABLISHED and e.local_port not in accepted for e in ours):
            return "accepted every connection"
        if any(e.state != TCP_LISTEN and e.rx_queue for e in theirs):
            return "read every byte sent to it"
        if any(e.tx_queue or e.state in (TCP_SYN_SENT, TCP_FIN_WAIT1) for e in ours):
            return "received every byte and FIN sent to it"
        # Our end is gone at once when we reset, but a busy kernel may not yet have delivered
        # the reset to the server's end, which stays established till then.
        reset = set(client_ports) - {e.local_port for e in ours}
        if any(e.state == TCP_ESTABLISHED and e.remote_port in reset for e in theirs):
            return "received every reset sent to it"
        # Asked after the table: asleep now, it has acted on all that the table showed read.
        if not self.spins and any(is_running(pid) for pid in self.group):
            return STILL_RUNNING
        return ""

    def kill(self) -> None:
        """Close the clients and end the server's process group, not judging how it exits."""
        for client in self.clients:
            client.close()  # under STARTING, as every close is
        if sys.platform == "win32":  # the shell and all it started: no process groups to kill
            with contextlib.suppress(psutil.Error):
                shell = psutil.Process(self.pid)
                for process in [*shell.children(recursive=True), shell]:
                    with contextlib.suppress(psutil.Error):
                        process.kill()
            self.child.proc.wait(timeout=STOP_WAIT)
            return
        for sig in (signal.SIGINT, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.child.proc.wait(timeout=STOP_WAIT)


# Opens argv[1] files that its children inherit, then runs the rest of argv in its place.
HOLD_FILES = (
    "import os, sys\n"
    "for _ in range(int(sys.argv[1])):\n"
    "    os.set_inheritable(os.open(os.devnull, os.O_RDONLY), True)\n"
    "os.execv(sys.argv[2], sys.argv[2:])"
)


def in_a_session_of_its_own(open_files: int | None) -> Callable[[], None]:
    """A preexec_fn: the server in a session (and process group) of its own, with SIGINT
    as a terminal gives it (a check run in the background, `make check &`, has it ignored,
    and an ignored signal stays ignored across exec: the server would never see it), and,
    if given, with a file descriptor limit of open_files (Linux and macOS)."""
    set_limit = None if open_files is None else nofile_limit(open_files)

    def start_session() -> None:  # in the child, before it runs the command: nothing to import
        os.setsid()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if set_limit is not None:
            set_limit()

    return start_session


# Connection states (include/net/tcp_states.h), and what asks the kernel for its TCP sockets
# over netlink, as `ss` does (include/uapi/linux/netlink.h, sock_diag.h and inet_diag.h).
TCP_ESTABLISHED, TCP_SYN_SENT, TCP_SYN_RECV, TCP_FIN_WAIT1, TCP_TIME_WAIT = 1, 2, 3, 4, 6
TCP_LISTEN = 10
NETLINK_SOCK_DIAG, NLMSG_ERROR, NLMSG_DONE, SOCK_DIAG_BY_FAMILY = 4, 2, 3, 20
NLM_F_DUMP_REQUEST = 0x301  # NLM_F_REQUEST | NLM_F_DUMP: every socket that matches


@dataclass(frozen=True)
class TcpEntry:
    """One TCP socket, as the kernel sees it."""

    local_address: str
    local_port: int
    remote_port: int
    state: int
    tx_queue: int  # bytes sent and not yet acknowledged by the other end
    rx_queue: int  # bytes received and not yet read; on a listener, connections not accepted


def tcp_table(port: int) -> list[TcpEntry]:
    """The TCP sockets with port at either end (Linux), but those in TIME_WAIT. /proc/net/tcp
    lists TIME_WAIT too: after a test run, thousands of lines, over 10 ms to read."""
    entries = [*tcp_sockets(socket.AF_INET), *tcp_sockets(socket.AF_INET6)]
    return [entry for entry in entries if port in (entry.local_port, entry.remote_port)]


def tcp_sockets(family: int) -> Iterator[TcpEntry]:
    """Every TCP socket of family but those in TIME_WAIT, from the netlink messages (each an
    inet_diag_msg) that answer a dump request."""
    states = 0x1FFF & ~(1 << TCP_TIME_WAIT)  # a bit per state: all 13 (NEW_SYN_RECV too) but one
    header = struct.pack("=IHHII", 72, SOCK_DIAG_BY_FAMILY, NLM_F_DUMP_REQUEST, 0, 0)
    request = struct.pack("=BBxxI48x", family, socket.IPPROTO_TCP, states)  # inet_diag_req_v2
    size = 4 if family == socket.AF_INET else 16  # of an address
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG) as diag:
        diag.send(header + request)
        while True:
            reply = diag.recv(1 << 20)
            while reply:  # messages, each 4-byte aligned, each a header and then its body
                length, kind = struct.unpack_from("=IH", reply)
                if kind == NLMSG_DONE:
                    return
                if kind == NLMSG_ERROR:
                    raise OSError(-struct.unpack_from("=i", reply, 16)[0], "inet_diag failed")
                state, local_port, remote_port = reply[17], *struct.unpack_from("!HH", reply, 20)
                address = socket.inet_ntop(family, reply[24 : 24 + size])
                rx_queue, tx_queue = struct.unpack_from("=II", reply, 72)
                yield TcpEntry(address, local_port, remote_port, state, tx_queue, rx_queue)
                reply = reply[(length + 3) & ~3 :]


def listening_host(port: int) -> str | None:
    """Where to connect to whatever listens on port, or None if nothing does yet: on Linux
    from the kernel's table, without connecting; elsewhere by connecting."""
    if sys.platform.startswith("linux"):
        listeners = [e for e in tcp_table(port) if e.local_port == port and e.state == TCP_LISTEN]
        return reachable(listeners[0].local_address) if listeners else None
    for host in ("127.0.0.1", "::1"):
        with contextlib.suppress(OSError), socket.create_connection((host, port), 0.1):
            return host
    return None


def is_running(pid: int) -> bool:
    """True while any thread of the process is running or about to (state R). psutil reads
    a thread as a process of its own on Linux, the one OS where this is asked."""
    with contextlib.suppress(psutil.Error):  # it has exited: not running
        threads = [psutil.Process(thread.id) for thread in psutil.Process(pid).threads()]
        return any(thread.status() == psutil.STATUS_RUNNING for thread in threads)
    return False


# ---------------------------------------------------------------- make check: any server

CHECK_SECONDS = 45.0  # a check this old stops generating (or shrinking) sessions: under a minute
GENERATED = 20  # generated sessions per check (the same ones every time)
SHRINK_SECONDS = math.inf  # how long a failing session is shrunk: until the time is up
MODES_OF = {"server": ("ack", "broadcast"), "ack": ("ack",), "broadcast": ("broadcast",)}


class OutOfTime(BaseException):
    """Ends hypothesis's search at once (with why, if not the time): as an Exception, it
    would be a failure to shrink."""


def check(
    commands: list[tuple[str, tuple[str, ...]]],
    examples: int,
    say: Callable[[str], None],
    cases: Sequence[Case] = CASES,
    transcripts: bool = True,
) -> int:
    """Check each (command, modes): its modes' transcripts and generated sessions (unless not
    transcripts), then the hostile cases (hostile.py) of its modes, saying each result once
    known, as docs/check.md shows; return 0 only when all passed. A case that cannot run
    here, or in the modes given, is said, and counts neither way."""
    passes: list[bool] = []
    noted: set[str] = set()  # each note is said once
    given = {mode for _, modes in commands for mode in modes}
    for command, modes in commands:
        say(f"checking ({' and '.join(modes)} mode): {command}")
        start = Starter(command)
        if transcripts:
            deadline = time.monotonic() + CHECK_SECONDS / len(commands)  # a fair share each
            for name, difference, notes in results(start, modes, examples, deadline):
                passes.append(difference is None)
                say(result_line(name, difference, notes, noted))
        for case in cases:
            mode = next((mode for mode in case.modes if mode in modes), None)
            if mode is not None:
                passed, said = run_case(case, start, mode)
            elif given.isdisjoint(case.modes):  # else another command runs it
                passed, said = None, f"not run: no {' or '.join(case.modes)} server given"
            else:
                continue
            if passed is not None:
                passes.append(passed)
            verdict = "skip" if passed is None else "pass" if passed else "FAIL"
            say(f"{verdict}  {case.name} ({case.shows}): {said}")
    say(f"{sum(passes)} passed, {len(passes) - sum(passes)} failed")
    return 0 if passes and all(passes) else 1


def result_line(name: str, difference: str | None, notes: list[str], noted: set[str]) -> str:
    """The report's line of a transcript or of the generated sessions, with the notes not
    said before (which it adds to noted); a shrunk session goes below it."""
    new = [note for note in dict.fromkeys(notes) if note not in noted]
    noted.update(new)
    line = f"pass  {name}" if difference is None else f"FAIL  {name}: {difference}"
    first, newline, shrunk = line.partition("\n")
    return first + (f" (note: {'; '.join(new)})" if new else "") + newline + shrunk


class Starter:
    """Starts a CommandServer of command (mode, and its other arguments); once one did not
    start, every later one fails at once, saying so."""

    def __init__(self, command: str) -> None:
        self.command = command
        self.failed = False

    def __call__(self, mode: str, **how: Any) -> ServerProcess:
        if self.failed:
            raise StartError(NOT_STARTED)
        try:
            return CommandServer(self.command, mode, **how)
        except StartError:
            self.failed = True
            raise


NOT_STARTED = "not run: the server did not start"


def results(
    start: Starter, modes: tuple[str, ...], examples: int, deadline: float
) -> Iterator[tuple[str, str | None, list[str]]]:
    """(name, first difference or None, notes) of each transcript of these modes against
    start's command, then of generated sessions; once the server does not start, none is
    run."""
    transcripts = transcripts_of(modes)
    names = [t.name for t in transcripts] + ([generated_name(modes)] if examples else [])
    for index, transcript in enumerate(transcripts):
        try:
            notes = replay(transcript, start)
        except StartError as error:
            yield transcript.name, str(error), []
            for name in names[index + 1 :]:
                yield name, NOT_STARTED, []
            return
        except TranscriptError as error:
            yield transcript.name, error.summary, error.notes
        except Exception as error:  # a harness error is reported too, not a traceback
            yield transcript.name, first_line(error), []
        else:
            yield transcript.name, None, notes
    if examples:
        yield generated_result(start.command, modes, examples, deadline)


def transcripts_of(modes: Sequence[str]) -> list[Transcript]:
    """The transcripts of these modes, each named by its file's stem."""
    transcripts = [read_transcript(path, path.stem) for path in transcript_files()]
    return [transcript for transcript in transcripts if transcript.mode in modes]


def generated_name(modes: tuple[str, ...]) -> str:
    """The report's name for the generated sessions of these modes."""
    return f"generated sessions ({' and '.join(modes)})"


def first_line(error: BaseException) -> str:
    """A harness error, as one line of the report."""
    return f"{type(error).__name__}: {error}".splitlines()[0]


def generated_result(
    command: str, modes: tuple[str, ...], examples: int, deadline: float
) -> tuple[str, str | None, list[str]]:
    """Generated sessions against command, as the model predicts; a failing one, shrunk until
    deadline (at most SHRINK_SECONDS), ends the difference as a transcript to save."""
    failures: list[tuple[tuple[int, int], str, TranscriptError]] = []  # (size, text, error)
    ran = 0

    @settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        verbosity=Verbosity.quiet,
        report_multiple_bugs=False,  # one failure, shrunk, is what the report shows
    )
    @given(sessions(modes))
    def replay_generated(session: tuple[str, list[Action]]) -> None:
        """Replay one session against command, keeping it if it fails, until deadline."""
        nonlocal ran, deadline
        if time.monotonic() > deadline:
            raise OutOfTime
        ran += 1
        mode, actions = session
        text = generated_transcript(mode, actions, found_by=f"make check, against {command}")
        try:
            replay(parse(text, "generated.txt"), functools.partial(CommandServer, command))
        except TranscriptError as error:
            size = (len(actions), sum(len(action.data) for action in actions))
            failures.append((size, text, error))
            deadline = min(deadline, time.monotonic() + SHRINK_SECONDS)
            raise
        except StartError as error:  # a failure, but not of this session: don't shrink it
            raise OutOfTime(f"session {ran}: {error}".splitlines()[0]) from None

    stopped: BaseException | None = None
    try:
        replay_generated()
    except (OutOfTime, Exception) as error:  # the time, a failure, or hypothesis: unsteady
        stopped = error
    name = generated_name(modes)
    if failures:
        _, text, smallest = min(failures, key=lambda failure: failure[0])
        flaky = ["it did not fail every time it was replayed"] if isinstance(stopped, Flaky) else []
        shrunk = textwrap.indent(text, "    ").rstrip("\n")
        return name, f"{smallest.summary}; the session, shrunk:\n{shrunk}", smallest.notes + flaky
    if isinstance(stopped, OutOfTime) and stopped.args:  # the server did not start
        return name, stopped.args[0], []
    if isinstance(stopped, Exception):  # not a difference on the wire: the harness failed
        return name, first_line(stopped), []
    notes = [] if ran >= examples else [f"only {ran} of {examples} ran in the time"]
    return f"{name}: {ran}, each as the model predicts", None, notes


def main(argv: list[str] | None = None) -> int:
    """The command line of __doc__: --server CMD, or --ack CMD and/or --broadcast CMD."""
    parser = argparse.ArgumentParser(
        prog="python -m tools.check",
        description="Check any server against the transcripts and generated sessions, on "
        "the wire only. CMD is a shell command line; {mode} becomes ack or broadcast, "
        "{port} a free port. A server that prints 'listening on HOST:PORT' is found there.",
    )
    for option, modes in MODES_OF.items():
        what = f"a server of {' and '.join(modes)} mode"
        parser.add_argument(f"--{option}", metavar="CMD", help=what)
    what = "generated sessions per command (0: none)"
    parser.add_argument("--examples", type=int, default=GENERATED, metavar="N", help=what)
    what = "the transcripts and generated sessions alone, not the hostile cases"
    parser.add_argument("--transcripts-only", action="store_true", help=what)
    args = vars(parser.parse_args(argv))
    commands = [(args[option], modes) for option, modes in MODES_OF.items() if args[option]]
    if not commands:
        parser.error("give --server CMD, or --ack CMD and/or --broadcast CMD")
    cases = [] if args["transcripts_only"] else CASES
    say = functools.partial(print, flush=True)
    try:  # every server it starts, it stops
        return check(commands, args["examples"], say, cases)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the report's reader has gone (`| head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def command_line(words: Sequence[str]) -> str:
    """words quoted for the shell that runs a server's command: cmd.exe on Windows, sh
    elsewhere, as CommandServer starts it."""
    join = subprocess.list2cmdline if sys.platform == "win32" else shlex.join
    return join(words)


def our_command(changes: Sequence[str] = ()) -> str:
    """The command line that make check takes to run our server, changed by changes (see
    changes.py), run from the repository as make check is."""
    return command_line(server_command(changes=changes)) + " {mode} --port {port}"


if __name__ == "__main__":
    sys.exit(main())
