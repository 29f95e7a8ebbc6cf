"""The server as a process, and its clients: what every test and tool here stands on.

ServerProcess starts select_server.py (or a server changed on purpose, see changes.py) on
a free port and reads its log through a pipe; Client is one real socket connected to it,
each of its waits bounded. Nothing here knows the transcript format.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import pexpect
import psutil
from pexpect.popen_spawn import PopenSpawn

import select_server
from select_server import host_port
from tools.changes import BROKEN_SERVER, changed

ROOT = Path(__file__).resolve().parent.parent  # the repository
SERVER = ROOT / "select_server.py"
TRANSCRIPTS = ROOT / "transcripts"

WAIT = 5.0  # seconds: the most any single expectation waits before it fails
START_WAIT = 10.0  # seconds: the most a server takes to say it listens (a loaded machine)
QUIET = 0.05  # seconds of silence that show nothing more is coming (on loopback)

LISTENING = re.compile(r"listening on (?:\[(?P<v6>[^\]]+)\]|(?P<v4>[^\s:]+)):(?P<port>\d+)")

# How the harness stops a server. Windows: PopenSpawn starts it in a process group of its
# own (CREATE_NEW_PROCESS_GROUP), and kill(SIGBREAK) sends that group CTRL_BREAK_EVENT
# (os.kill: GenerateConsoleCtrlEvent), which the server handles as SIGBREAK, as CPython's
# own test_os does (Win32KillTests.test_CTRL_BREAK_EVENT). Wine 8.0 sends only
# CTRL_C_EVENT, which a process started in a new group ignores until it calls
# SetConsoleCtrlHandler(NULL, FALSE): under Wine the server is started through CTRL_C_ON,
# which does, and stopped with Ctrl-C (SIGINT).
if sys.platform == "win32":
    import ctypes

    WINE = hasattr(ctypes.WinDLL("ntdll"), "wine_get_version")
    STOP = signal.SIGINT if WINE else signal.SIGBREAK
else:
    WINE = False
    STOP = signal.SIGINT
WINE_DIFFERS = (
    "under Wine a server stops on Ctrl-C (SIGINT), not Ctrl-Break: "
    "Wine 8.0 sends no CTRL_BREAK_EVENT"
)
CTRL_C_ON = (  # python -c CTRL_C_ON FILE ARGS... or -m MODULE ARGS..., from the repository
    "import ctypes, runpy, sys; ctypes.windll.kernel32.SetConsoleCtrlHandler(None, False); "
    "sys.path.insert(0, ''); del sys.argv[0]; "
    "runpy.run_module(sys.argv.pop(1), run_name='__main__', alter_sys=True) "
    "if sys.argv[0] == '-m' else runpy.run_path(sys.argv[0], run_name='__main__')"
)

# ---------------------------------------------------------------- the server, as a process


def with_broken(changes: Sequence[str]) -> list[str]:
    """changes, and those that $BROKEN_SERVER names (see changes.py)."""
    return [*changes, *filter(None, os.environ.get(BROKEN_SERVER, "").split(","))]


def console_for_stop_events() -> None:
    """Under Wine: give this process a console of its own, which the servers it starts
    share. The one Wine gives a process whose standard handles are pipes cannot carry
    console control events (GenerateConsoleCtrlEvent fails: ERROR_INVALID_ACCESS)."""
    if sys.platform == "win32" and WINE:
        kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
        kernel32.FreeConsole()
        assert kernel32.AllocConsole(), f"AllocConsole: error {ctypes.get_last_error()}"


def server_command(interpreter: list[str] | None = None, changes: Sequence[str] = ()) -> list[str]:
    """The command that runs the server with interpreter (["python3.8"], a Wine wrapper...),
    changed by changes; $BROKEN_SERVER changes only sys.executable's (it needs tools/). A
    changed server is `python -m tools.changes`, so it runs from the repository (ROOT)."""
    if interpreter is None:
        interpreter, changes = [sys.executable], with_broken(changes)
    if WINE and interpreter == [sys.executable]:
        interpreter = [sys.executable, "-c", CTRL_C_ON]
    if not changes:
        return [*interpreter, str(SERVER)]
    return [*interpreter, "-m", "tools.changes", ",".join(changes)]


# Held while a server starts and while a client closes: the fork that starts a process copies
# every descriptor of this one, and the copy lives until the child runs the server, so a client
# closed meanwhile in another thread (make check and the CPython test replay side by side)
# would send its FIN or reset only then, after the steps that follow it.
STARTING = threading.Lock()


class ServerProcess:
    """The server, on a free port by default, its output read through a pipe (a line it does
    not flush does not arrive); as a context manager, killed at the end with its clients.
    Its log is judged line by line (see CommandServer in check.py for a server whose log is
    not), and each expectation of its clients waits up to `wait` seconds."""

    judges_log = True
    wait = WAIT

    def __init__(
        self,
        mode: str,
        *args: str,
        host: str | None = "127.0.0.1",
        port: int = 0,
        interpreter: list[str] | None = None,
        changes: Sequence[str] = (),
        preexec_fn: Callable[[], None] | None = None,
    ) -> None:
        hosts = [] if host is None else ["--host", host]  # None: the server's default
        command = [*server_command(interpreter, changes), mode, *hosts, "--port", str(port)]
        # Without PYTHONUNBUFFERED (set on some machines), a print() to a pipe that the
        # server forgot to flush would sit in its buffer, and this test would see it.
        environment = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
        self.start([*command, *args], environment, preexec_fn)
        try:
            self.announcement = self.next_line(START_WAIT)
            match = LISTENING.search(self.announcement)
            assert match, f"expected 'listening on HOST:PORT', got {self.announcement!r}"
        except BaseException:
            self.kill()  # no test holds it yet to clean it up
            raise
        self.host, self.port = match["v6"] or match["v4"], int(match["port"])

    def start(self, command: list[str] | str, env: dict[str, str], preexec_fn: Any = None) -> None:
        """Start the process in the repository, its stdout and stderr read through pexpect."""
        self.output = io.StringIO()  # everything the server printed, for failures
        self.clients: list[Client] = []  # connected to it; closed by kill()
        with STARTING:  # see STARTING
            self.child: PopenSpawn[str] = PopenSpawn(
                command,
                WAIT,
                cwd=str(ROOT),
                env=env,  # type: ignore[arg-type, unused-ignore]  # 3.8's stub: os.environ only
                encoding="utf-8",
                codec_errors="replace",
                preexec_fn=preexec_fn,
            )
        self.child.logfile_read = self.output
        self.pid = self.child.proc.pid

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exception: object) -> None:
        self.kill()

    def next_line(self, timeout: float | None = None) -> str:
        """Wait (bounded: WAIT seconds unless told) for the server's next log line."""
        timeout = WAIT if timeout is None else timeout
        try:
            self.child.expect_exact("\n", timeout=timeout)
        except (pexpect.TIMEOUT, pexpect.EOF):
            output = self.output.getvalue()
            raise AssertionError(f"no line within {timeout} s; the output:\n{output}") from None
        return str(self.child.before).rstrip("\r")

    def expect_line(self, pattern: str, timeout: float | None = None) -> re.Match[str]:
        """Skip log lines until one matches the regex pattern; return the match."""
        deadline = time.monotonic() + (WAIT if timeout is None else timeout)
        while True:
            match = re.search(pattern, self.next_line(max(0.0, deadline - time.monotonic())))
            if match is not None:
                return match

    def expect_lines(self, pattern: str, count: int, timeout: float | None = None) -> None:
        for _ in range(count):
            self.expect_line(pattern, timeout)

    def new_lines(self) -> list[str]:
        """The whole lines the server printed that no step has read yet (no waiting)."""
        lines = []
        while self.child.expect_exact(["\n", pexpect.TIMEOUT, pexpect.EOF], timeout=0.001) == 0:
            lines.append(str(self.child.before).rstrip("\r"))
        return lines

    def wait_until_settled(self, client_ports: list[int], wait: float) -> str:
        """For a server whose log is not judged: wait until it has taken in what the clients
        did; return what it has still not done. Ours says so in its log: nothing to do."""
        return ""

    def stop(self, sig: int = STOP) -> str:
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
        """Make sure the process is gone, and its clients' sockets closed."""
        for client in self.clients:
            client.close()  # under STARTING, as every close is
        self.child.proc.kill()  # nothing, if it has exited
        self.child.proc.wait(timeout=WAIT)


StartServer = Callable[..., ServerProcess]  # ServerProcess's arguments; see conftest.py


@dataclass
class InProcess:
    """A select_server.Server running in a thread of this process, and its clients."""

    server: select_server.Server
    host: str
    port: int
    clients: list[Client] = field(default_factory=list)


@contextlib.contextmanager
def server_in_this_process(
    mode: select_server.Mode, changes: Sequence[str] = ()
) -> Iterator[InProcess]:
    """select_server's loop in a thread of this process, for the tests that must step in
    where no client can: between select() and what follows, or into a socket option."""
    with changed(with_broken(changes)):
        listener = select_server.open_listener("127.0.0.1", 0)
        server = select_server.Server(listener, select_server.Settings(mode))
        running = InProcess(server, "127.0.0.1", listener.getsockname()[1])
        thread = threading.Thread(target=server.serve, daemon=True)
        thread.start()
        try:
            yield running
        finally:
            server.wakeup_writer.send(bytes([signal.SIGINT]))  # what a signal writes
            thread.join(timeout=WAIT)
            server.close()  # as main() does
            for client in running.clients:
                client.close()


# ---------------------------------------------------------------- its clients


class Client:
    """One client: a socket connected to a server, each wait on it bounded (by wait, else
    WAIT), and what has arrived for it that no one has read yet. Its server closes it."""

    def __init__(
        self, server: ServerProcess | InProcess, name: str = "", rcvbuf: int = 0, wait: float = 0
    ) -> None:
        self.name, self.wait = name, wait or WAIT
        self.sock = socket.socket(socket.AF_INET6 if ":" in server.host else socket.AF_INET)
        if rcvbuf:  # before connect(), so that the window it advertises is small
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(self.wait)
        try:
            self.sock.connect((server.host, server.port))
        except OSError:
            self.sock.close()
            raise
        server.clients.append(self)
        self.address = host_port(self.sock.getsockname())  # as the server logs it
        self.port: int = self.sock.getsockname()[1]  # to find its connection in the kernel
        self.pending = b""  # read from the socket, not yet taken by a step
        self.closed = False  # we closed or reset it: nothing more can be read
        self.half_closed = False  # it sent EOF: the server owes it a close
        self.at_eof = False  # the server closed (or reset) it, and we read that

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def half_close(self) -> None:
        """shutdown(SHUT_WR): send EOF, and go on reading."""
        self.sock.shutdown(socket.SHUT_WR)
        self.half_closed = True

    def close(self, reset: bool = False) -> None:
        """Close the socket; with reset, the kernel sends RST instead of FIN."""
        if reset:  # SO_LINGER on, with a zero timeout: close() discards and resets
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        with STARTING:  # see STARTING
            self.sock.close()
        self.closed = True

    def unread(self) -> bytes:
        """Take the bytes that have arrived and no one has read, without waiting; note
        (at_eof) the close or reset that followed them, if it has come."""
        data, self.pending = self.pending, b""
        if self.closed or self.at_eof:
            return data
        self.sock.setblocking(False)
        try:
            while chunk := self.sock.recv(1 << 20):
                data += chunk
            self.at_eof = True
        except BlockingIOError:
            pass  # nothing more, for now
        except OSError:
            self.at_eof = True  # a reset: the next read finds an EOF
        return data

    def read_more(self, deadline: float) -> bytes:
        """Wait until deadline at most for bytes; raise socket.timeout if none came,
        EOFError if the server closed, ConnectionResetError if it reset."""
        self.sock.settimeout(max(0.001, deadline - time.monotonic()))
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            self.at_eof = True
            raise EOFError
        return chunk

    def receive(self, size: int = -1, end: bytes = b"", timeout: float = 0) -> bytes:
        """Wait (bounded: timeout, else the client's wait) for size bytes, or until what
        came ends with end, or else for the server to close; return what came, less if the
        server closed or the time ran out first (waiting in vain for a close fails)."""
        data = bytearray(self.unread())
        deadline = time.monotonic() + (timeout or self.wait)
        while (len(data) < size or size < 0) and not (end and data.endswith(end)):
            try:
                data += self.read_more(deadline)
            except EOFError:
                break
            except socket.timeout:
                assert size >= 0 or end, f"the server did not close it; {len(data)} bytes came"
                break
        if 0 <= size < len(data):
            self.pending, data = bytes(data[size:]), data[:size]  # the rest, for the next one
        return bytes(data)


def connect(server: ServerProcess, count: int) -> list[Client]:
    """count clients, each connected and logged as connected."""
    clients = [Client(server) for _ in range(count)]
    server.expect_lines("connected", count)
    return clients


def assert_acked(client: Client, data: bytes) -> None:
    client.send(data)
    assert client.receive(3) == b"ACK"


def assert_quiet(*clients: Client) -> None:
    """Nothing more (no byte, no EOF) arrives for any of these clients within QUIET s."""
    # Not select.select(): some tests hold descriptors above FD_SETSIZE. DefaultSelector is
    # epoll or kqueue there, and select() on Windows, which has no select.poll().
    with selectors.DefaultSelector() as selector:
        for client in clients:
            selector.register(client.sock, selectors.EVENT_READ)
        ready = [key.fd for key, _ in selector.select(QUIET)]
    extra = {c.address: c.unread() or b"EOF" for c in clients if c.sock.fileno() in ready}
    assert not extra, f"unexpected bytes: {extra}"


def too_slow(reason: str) -> tuple[int, float]:
    """The bytes still owed and the grace in a "too slow" drop's reason; fail if not one."""
    match = re.fullmatch(r"too slow: still owed (\d+) bytes after (\S+) s", reason)
    assert match is not None, f"not a 'too slow: still owed N bytes after G s' reason: {reason}"
    return int(match[1]), float(match[2])


def dropped(server: ServerProcess) -> dict[str, str]:
    """Whom the server's new log lines (see new_lines) say it dropped: address -> reason."""
    lines = (re.fullmatch(r"(\S+) disconnected: (.*)", line) for line in server.new_lines())
    return {match[1]: match[2] for match in lines if match}


def free_port() -> int:
    """A TCP port that nothing listens on now."""
    with socket.create_server(("127.0.0.1", 0)) as probe:
        return int(probe.getsockname()[1])


def reachable(host: str) -> str:
    """Where to connect to a server that listens on host: loopback for 'any address'."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)


def has_ipv6_loopback() -> bool:
    try:
        with socket.create_server(("::1", 0), family=socket.AF_INET6):
            return True
    except OSError:
        return False


# ---------------------------------------------------------------- other processes


# Windows: a process in a group of its own, that send_stop() can reach (see STOP).
NEW_GROUP: dict[str, Any] = {}
if sys.platform == "win32":
    NEW_GROUP["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP


def send_stop(pid: int) -> None:
    """Send STOP to a server that popen() started: a console event on Windows."""
    if sys.platform == "win32":
        os.kill(pid, signal.CTRL_C_EVENT if WINE else signal.CTRL_BREAK_EVENT)
    else:
        os.kill(pid, STOP)


@contextlib.contextmanager
def popen(command: list[str], **options: Any) -> Iterator[subprocess.Popen[str]]:
    """subprocess.Popen, text in and out (on Windows in a group of its own), and killed at
    the end if it still runs."""
    with subprocess.Popen(command, text=True, **NEW_GROUP, **options) as process:
        try:
            yield process
        finally:
            process.kill()


def wait_for(condition: Callable[[], bool], what: str) -> None:
    """Wait (bounded) until condition() holds."""
    assert wait_until(condition, WAIT), f"waited {WAIT} s for {what}"


def wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    """Wait (bounded) until condition() holds; return whether it did."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)  # polling state that this process, or psutil, gathers
    return True


def last_line(server: ServerProcess) -> str:
    """The last line that the server has printed, as a report says it."""
    lines = [line for line in server.output.getvalue().splitlines() if line.strip()]
    return f"its last line: {lines[-1][:200]!r}" if lines else "it printed nothing"


# What a process does is asked of psutil, which knows how each OS tells it.


def cpu_seconds(pid: int) -> float:
    """The CPU time (user and system) a process has used so far."""
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def idle_cpu_seconds(server: ServerProcess, seconds: float = 0.3) -> float:
    """CPU time the server uses while the test waits and does nothing: nearly all of it
    if its loop spins; a clock tick is 0.01 s on Linux."""
    before = cpu_seconds(server.pid)
    time.sleep(seconds)  # measuring idleness takes time; nothing here waits for an event
    return cpu_seconds(server.pid) - before


def memory_mb(pid: int) -> float:
    """The resident memory a process uses now, in MB."""
    return float(psutil.Process(pid).memory_info().rss) / (1 << 20)


def peak_memory_mb(pid: int) -> float:
    """The most resident memory a process has used, in MB: Linux's VmHWM, which only its
    /proc tells, or Windows' peak working set; elsewhere (macOS) what it uses now."""
    if sys.platform.startswith("linux"):
        status = Path(f"/proc/{pid}/status").read_text()
        match = re.search(r"VmHWM:\s+(\d+) kB", status)
        assert match is not None, status
        return int(match[1]) / 1024
    info = psutil.Process(pid).memory_info()
    return float(getattr(info, "peak_wset", info.rss)) / (1 << 20)


def processes(server: ServerProcess) -> list[psutil.Process]:
    """The server's process and every process it started (a command may run through a
    shell, which starts the server as a child); [] once it has exited."""
    with contextlib.suppress(psutil.Error):
        top = psutil.Process(server.pid)
        return [top, *top.children(recursive=True)]
    return []


@contextlib.contextmanager
def frozen(pid: int) -> Iterator[None]:
    """The process stopped (SIGSTOP; on Windows, its threads suspended) until the block
    ends, so that all the block does meets it at once."""
    process = psutil.Process(pid)
    process.suspend()
    try:
        wait_for(lambda: process.status() == psutil.STATUS_STOPPED, "the server to stop")
        yield
    finally:
        process.resume()


def nofile_limit(limit: int) -> Callable[[], None]:
    """A preexec_fn that sets the server's RLIMIT_NOFILE (its file descriptor limit)."""
    import resource  # Linux and macOS only

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))


def set_open_files_limit(pid: int, limit: int) -> None:
    """Set another process's RLIMIT_NOFILE (Linux)."""
    import resource  # Linux and macOS only

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (limit, hard))


def can_open(at_least: int) -> bool:
    """Let this process open at_least files and sockets; False if its hard limit forbids."""
    if sys.platform == "win32":
        return True  # no RLIMIT_NOFILE: sockets are handles, not C descriptors
    import resource  # Linux and macOS only

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < at_least:
        if hard != resource.RLIM_INFINITY and hard < at_least:
            return False
        resource.setrlimit(resource.RLIMIT_NOFILE, (at_least, hard))
    return True


# ---------------------------------------------------------------- the CPythons it runs on

# The server promises CPython 3.8 and newer: the transcripts run on each such version found
# (pyenv's, or python3.X on PATH), side by side, since each has a server of its own.
PYENV = Path.home() / ".pyenv" / "versions"
MINORS = set(range(8, 14)) | {int(path.name.split(".")[1]) for path in PYENV.glob("3.*.*")}
PYTHON_VERSIONS = [f"3.{minor}" for minor in sorted(MINORS) if minor >= 8]
THIS_VERSION = f"{sys.version_info[0]}.{sys.version_info[1]}"


def find_python(version: str) -> str | None:
    """A CPython of this version ("3.8") that really runs (a pyenv shim may not), or None."""
    if version == THIS_VERSION:
        return sys.executable
    pyenv = sorted(map(str, PYENV.glob(f"{version}.*/bin/python{version}")))
    says = "import sys; print('%d.%d' % sys.version_info[:2])"
    for candidate in [*pyenv, *filter(None, [shutil.which(f"python{version}")])]:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            result = subprocess.run([candidate, "-c", says], capture_output=True, timeout=WAIT)
            if result.stdout.decode().strip() == version:
                return candidate
    return None


def pythons_line() -> str:
    """Which CPythons the transcripts run on here, and which are missing, in one line."""
    found = {version: find_python(version) for version in PYTHON_VERSIONS}
    ran = ", ".join(f"{version} ({path})" for version, path in found.items() if path)
    missing = ", ".join(version for version, path in found.items() if not path)
    return f"transcripts run on CPython {ran}; not on this machine: {missing or 'none'}"


# Windows' CPython under Wine: `make test-windows` names in WINDOWS_PYTHONS a script per
# version that runs its python.exe under Wine, as python is run.
WINE_WAIT = 6 * WAIT  # seconds: CPython under Wine starts slowly


def find_windows_pythons() -> dict[str, str]:
    """{version: command} of each Windows CPython in WINDOWS_PYTHONS, asked its version."""
    found = {}
    ask = "import platform, sys; print(platform.python_version(), sys.platform)"
    for command in os.environ.get("WINDOWS_PYTHONS", "").split():
        asking = [command, "-c", ask]
        result = subprocess.run(asking, capture_output=True, text=True, timeout=WINE_WAIT)
        version, _, platform = result.stdout.strip().rpartition(" ")
        assert platform == "win32", f"{command} is no Windows CPython: {result.stdout!r}"
        found[f"windows-{version}"] = command
    return found
