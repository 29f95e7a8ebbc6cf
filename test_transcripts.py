"""The tests of select_server.py, in the order of its README: the golden transcripts, the
rules, case by case, the command line and the platforms; then that the README is true,
and the tools (the benchmark, make check) do what they say.

Every file in transcripts/ is one test; the machinery that replays it, and every other
tool the tests use, is in tools/ (its __init__.py says which module does what), and the
fixtures and markers are in conftest.py.
"""

from __future__ import annotations

import ast
import contextlib
import errno
import hashlib
import os
import random
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Sequence

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import select_server
from select_server import Server, Settings
from tools import check, hostile
from tools.changes import BROKEN
from tools.check import CommandServer, our_command, transcripts_of
from tools.harness import (
    LISTENING,
    PYTHON_VERSIONS,
    ROOT,
    SERVER,
    STOP,
    THIS_VERSION,
    TRANSCRIPTS,
    WAIT,
    WINE,
    WINE_WAIT,
    Client,
    ServerProcess,
    StartServer,
    assert_acked,
    assert_quiet,
    connect,
    dropped,
    find_python,
    find_windows_pythons,
    free_port,
    frozen,
    idle_cpu_seconds,
    nofile_limit,
    peak_memory_mb,
    popen,
    reachable,
    send_stop,
    server_command,
    server_in_this_process,
    set_open_files_limit,
    too_slow,
    wait_for,
)
from tools.hostile import CASES, Case
from tools.load import (
    END,
    ENDINGS,
    ChatRoom,
    Flood,
    Plan,
    Reader,
    chat_past_a_paced_reader,
    crowd_sends_at_once,
    wait_until_all_is_read,
    what_is_wrong,
)
from tools.model import Action, Unpredictable, canonical, generated_transcript, predict, sessions
from tools.readme import DOCUMENTS, FENCE, PYTHON_RUN, guide_problems, readme_problems
from tools.transcript import TranscriptError, parse, read_transcript, replay, transcript_files

# ================================================================ the transcripts


@pytest.mark.parametrize("path", transcript_files(), ids=lambda path: path.stem)
def test_transcript(path: Path) -> None:
    """Each client receives exactly the bytes the transcript says, and nothing more (under
    Wine, a reset is read as a close: see as_under_wine)."""
    try:
        replay(parse(as_under_wine(path), path.name) if WINE else read_transcript(path))
    except TranscriptError as error:
        pytest.fail(str(error), pytrace=False)


@pytest.mark.parametrize("version", [v for v in PYTHON_VERSIONS if v != THIS_VERSION])
def test_every_transcript_on_cpython(version: str) -> None:
    """The server promises CPython 3.8 and newer: the transcripts run on each such version
    found (pyenv's, or python3.X on PATH), side by side, since each has a server of its own."""
    python = find_python(version)
    if python is None:
        pytest.skip(f"no CPython {version} on this machine")
    paths = transcript_files()
    start = partial(ServerProcess, interpreter=[python])
    with ThreadPoolExecutor(6) as pool:  # a replay that raises has failed
        runs = [pool.submit(replay, read_transcript(path), start) for path in paths]
    errors = [(path.stem, run.exception()) for path, run in zip(paths, runs)]
    failed = [f"{name}: {error}" for name, error in errors if error is not None]
    assert not failed, f"on {python}:\n" + "\n\n".join(failed)


@pytest.mark.parametrize("path", transcript_files(), ids=lambda path: path.stem)
def test_model_predicts_each_hand_written_transcript(path: Path) -> None:
    """The model says what the README says: from a transcript's actions (each one right after
    another is at once) it predicts the transcript's lines, or says why it cannot."""
    written = read_transcript(path)
    try:
        predicted = predict(written)
    except Unpredictable as why:
        pytest.skip(str(why))
    assert canonical(predicted) == canonical(written.steps)


def test_model_says_which_transcript_it_cannot_predict() -> None:
    """An ACK owed to a client that closed at once: the kernel may answer it with a reset."""
    text = "mode ack\nalice connects\nalice sends b'bye'\nalice closes\n"
    with pytest.raises(Unpredictable, match=r"^bye\.txt: alice's ACK is owed to a socket"):
        predict(parse(text, "bye.txt"))


@given(sessions())
def test_generated_sessions_match_the_model(session: tuple[str, list[Action]]) -> None:
    text = generated_transcript(*session, found_by="test_generated_sessions_match_the_model")
    try:
        replay(parse(as_wine_reads(text) if WINE else text, "generated.txt"))
    except TranscriptError as error:
        raise AssertionError(
            f"{error}\n\nThe session, shrunk; save it under transcripts/ as a regression:\n\n{text}"
        ) from None


WRONG = {  # the last line of a transcript, where it fails, and the start of the complaint
    "a wrong expectation": ("alice receives b'ACK!'", "5: alice receives b'ACK!'", "b'ACK!'"),
    "an unexpected byte": ("server: {alice} sent b'hi'", "after the last line", "nothing"),
    "a wrong server line": ("server: {alice} left", "5: server: {alice} left", "'127.0.0.1:"),
}


@pytest.mark.parametrize("wrong", WRONG, ids=list(WRONG))
def test_harness_fails_and_shows_the_line(wrong: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ServerProcess, "wait", 0.3)  # a wrong wait runs out sooner
    last_line, where, expected = WRONG[wrong]
    start = "mode ack\nalice connects\nserver: {alice} connected (1 online)\nalice sends b'hi'\n"
    with pytest.raises(TranscriptError) as failure:
        replay(parse(start + last_line, "wrong.txt"))
    lines = str(failure.value).splitlines()
    assert lines[0] == f"wrong.txt:{where}"
    assert lines[1].startswith(f"  expected: {expected}")
    assert lines[2].startswith("  arrived:  ")


MALFORMED = {
    "no-mode": "alice connects\n",
    "unknown-mode": "mode echo\n",
    "unknown-verb": "mode ack\nalice shouts b'hi'\n",
    "not-bytes": "mode ack\nalice sends 'hi'\n",
    "not-a-literal": "mode ack\nalice sends {[]}\n",
    "server-verb": "mode ack\nalice server\n",
    "after-close": "mode ack\nalice connects\nalice closes\nalice receives b'ACK'\n",
}


@pytest.mark.parametrize("text", MALFORMED.values(), ids=MALFORMED)
def test_malformed_transcript_names_its_line(text: str) -> None:
    with pytest.raises(TranscriptError, match=r"^bad\.txt:\d"):
        parse(text, "bad.txt")


# ================================================================ what is owed, and when a
# ================================================================ client is given up (rules)

# Rules 3 and 4 with a small limit and grace: a client owed bytes must take RULE_BUFFER / 2
# of them every RULE_GRACE seconds (or all it is owed), so the slowest reader that stays
# reads SLOWEST_KEPT bytes per second (256 KiB/s), plus what the kernel's buffers absorb.
RULE_BUFFER = 262144
RULE_GRACE = 0.5
RULE_ARGS = ("--quiet", "--max-buffer", str(RULE_BUFFER), "--grace", str(RULE_GRACE))
SLOWEST_KEPT = RULE_BUFFER / 2 / RULE_GRACE


# ---------------------------------------------------------------- rule 1: nothing sent is lost


def test_clients_that_send_and_close_at_once_lose_nothing(start_server: StartServer) -> None:
    """Broadcast: 400 clients in turn send a message and close at once (`printf hi | nc
    -N`). A client that left is still read to its end, even when a relay to it failed
    first: the client that stays gets each message exactly once."""
    server = start_server("broadcast", "--quiet")
    plans = [Plan(1, "closes")] * 400 + [Plan(0, "stays")]
    [stays] = connect(server, 1)
    for sender in range(1, 401):
        leaving = Client(server)
        leaving.send(plans[sender - 1].sends(sender))
        leaving.close()
    server.expect_lines("disconnected: ", 400)  # each, once read to its end
    received = stays.receive(sum(len(plan.sends(i)) for i, plan in enumerate(plans, 1)))
    assert_quiet(stays)
    problems = what_is_wrong(len(plans), plans, received)
    assert not problems, f"{len(problems)} wrong, the first: {problems[:10]}"
    server.stop()


@pytest.mark.posix_only("it freezes the server with SIGSTOP")
@given(
    st.lists(st.builds(Plan, st.integers(1, 4), st.sampled_from(ENDINGS)), min_size=2, max_size=5)
)
def test_concurrent_generated_sessions_lose_nothing(plans: list[Plan]) -> None:
    """Broadcast: while the server is stopped (SIGSTOP), 2-5 clients send their numbered
    messages and end as planned; each gets what the model can still predict (see
    what_is_wrong)."""
    with ServerProcess("broadcast") as server:  # not --quiet: the log shows what it read
        observer, *clients = connect(server, 1 + len(plans))
        names = {client.address: f"c{i}" for i, client in enumerate(clients, 1)}
        with frozen(server.pid):  # so that every send and ending meets the server at once
            for i, (client, plan) in enumerate(zip(clients, plans), 1):
                client.send(plan.sends(i))
                if plan.ending == "half-closes":
                    client.half_close()
                elif plan.ending in ("closes", "resets"):
                    client.close(reset=plan.ending == "resets")
        wait_until_all_is_read(server, plans, names)
        observer.send(END)  # relayed after everything the server has read so far
        received: dict[int, bytes] = {}
        for i, (client, plan) in enumerate(zip(clients, plans), 1):
            if plan.ending == "half-closes":
                received[i] = client.receive()
            elif plan.ending == "stays":
                data = client.receive(end=END)
                assert data.endswith(END), f"c{i} received {data!r} and then nothing"
                received[i] = data[: -len(END)]
        # Nothing more may arrive after END: a duplicate, or a stray message.
        assert_quiet(*(client for client, plan in zip(clients, plans) if plan.ending == "stays"))
        problems = [p for i in received for p in what_is_wrong(i, plans, received[i])]
        assert not problems, "\n".join(
            [*problems, "received:", *(f"  c{i}: {data!r}" for i, data in received.items())]
        )
        server.stop()


def test_a_reset_that_send_finds_first_is_logged_as_a_reset(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Broadcast: bob resets just after select() returns, so the relay's send() finds the
    reset and recv() then reads an EOF. The log gives the first thing that went wrong,
    "connection reset", not "closed by client"."""
    lines: list[str] = []
    monkeypatch.setattr(select_server, "log", lines.append)
    reset_bob: list[Client] = []

    def select_then_reset(*args: Any) -> tuple[list[int], list[int], list[int]]:
        ready = select.select(*args)
        for bob in reset_bob[:1]:  # once, the moment it is asked to
            bob.close(reset=True)
            time.sleep(0.05)  # for the reset to arrive before the relay
        reset_bob.clear()
        return ready

    monkeypatch.setattr(select_server, "select", SimpleNamespace(select=select_then_reset))
    with server_in_this_process("broadcast") as running:
        alice, bob = Client(running), Client(running)
        wait_for(lambda: len(running.server.clients) == 2, "both clients to be accepted")
        reset_bob.append(bob)
        alice.send(b"hi")
        wait_for(lambda: any("disconnected" in line for line in lines), "bob to be dropped")
    assert f"{bob.address} disconnected: connection reset" in lines, lines


@pytest.mark.timing
@pytest.mark.linux_only("its numbers are sized to Linux's loopback socket buffers")
def test_two_clients_that_hold_the_others_back_lose_nothing_when_given_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Broadcast, B 256 KiB, G 1 s: x and y never read, and a flood fills them until it is
    held back (rule 3); then each sends a message and half-closes. Neither is read while
    they hold the others back, so their EOFs are not seen; rule 4 gives both up after G:
    they are sent nothing more and hold no one back, and what they sent is still read and
    relayed (rule 1) before they are closed."""
    lines: list[str] = []
    monkeypatch.setattr(select_server, "log", lines.append)
    rules = partial(Settings, quiet=True, max_buffer=RULE_BUFFER, grace=1.0)
    monkeypatch.setattr(select_server, "Settings", rules)
    with server_in_this_process("broadcast", ["small-send-buffer"]) as running:
        x, y = Client(running, rcvbuf=4096), Client(running, rcvbuf=4096)
        hears, flooder = Client(running), Client(running)
        wait_for(lambda: len(running.server.clients) == 4, "the four to be accepted")
        stop = threading.Event()
        heard = Reader(hears.sock, stop)
        try:
            with Flood(flooder.sock, b".") as flood:

                def held_back() -> bool:  # the flood sends nothing for a tenth of a second
                    sent = flood.sent
                    time.sleep(0.1)
                    return flood.sent == sent

                wait_for(held_back, "the flood to be held back")
                for number, client in enumerate([x, y], 1):
                    client.send(b"<%d>" % number)
                    client.half_close()
                wait_for(lambda: {1, 2} <= set(heard.arrived), "x's and y's messages")
        finally:
            stop.set()
            heard.thread.join(timeout=WAIT)
    for client in (x, y):
        reasons = [line for line in lines if line.startswith(f"{client.address} disconn")]
        assert len(reasons) == 1 and "disconnected: too slow: still owed" in reasons[0], lines


# ---------------------------------------------------------------- rule 2: a chunk is kept once


@pytest.mark.open_files(700)
@pytest.mark.linux_only("peak memory (VmHWM), and buffers sized to Linux's")
def test_memory_does_not_grow_with_the_number_of_clients(start_server: StartServer) -> None:
    """Broadcast: 500 non-readers, and a client that sends flat out. A chunk owed to many is
    kept once: peak memory under 64 MB (a copy each: about 500 MB); all are dropped as too
    slow."""
    # Small kernel buffers: else each non-reader's takes megabytes before it is owed a byte.
    options = {"changes": ["small-send-buffer"], "preexec_fn": nofile_limit(1024)}
    server = start_server("broadcast", "--quiet", "--grace", "0.5", **options)
    sender = Client(server)
    crowd = [Client(server, rcvbuf=4096) for _ in range(500)]
    server.expect_lines("connected", 1 + len(crowd))
    with Flood(sender.sock, bytes(range(256))) as flood:
        # Bounded, but generous for the first: a server that copies takes seconds.
        first = server.expect_line("disconnected: (.*)", timeout=3 * WAIT)[1]
        reasons = {first} | {server.expect_line("disconnected: (.*)")[1] for _ in crowd[1:]}
        sent = flood.stop()
    peak = peak_memory_mb(server.pid)
    assert peak < 64, f"peak RSS {peak:.0f} MB, {len(crowd)} non-readers, {sent >> 20} MiB sent"
    assert all(reason.startswith("too slow: ") for reason in reasons), reasons
    server.stop()


@pytest.mark.open_files(200)
@pytest.mark.linux_only("peak memory (VmHWM), and buffers sized to Linux's")
def test_a_crowd_that_never_reads_cannot_pin_memory(start_server: StartServer) -> None:
    """Broadcast, --max-buffer 8 MiB: 100 clients are owed megabytes each, the same bytes,
    kept once (under 64 MB); they half-close unread and are dropped after their grace."""
    server = start_server("broadcast", "--quiet", "--max-buffer", str(8 << 20), "--grace", "0.5")
    sender = Client(server)
    crowd = [Client(server, rcvbuf=4096) for _ in range(100)]
    server.expect_lines("connected", 1 + len(crowd))
    # 7.5 MiB: the kernel's buffers take about 3 MiB per client (Linux, loopback), so
    # each is owed about 4.5 MiB, just under the limit whatever the kernel takes.
    sender.send(bytes(15 << 19))
    sender.half_close()
    line = server.expect_line("disconnected: ")  # the sender, read to its end
    assert line.string.startswith(sender.address), line.string
    for client in crowd:
        client.half_close()
    # Two newcomers chat: by then the server has seen every half-close (sent earlier).
    late, later = connect(server, 2)
    late.send(b"still serving?")
    assert later.receive(14) == b"still serving?"
    peak = peak_memory_mb(server.pid)
    assert peak < 64, f"peak RSS {peak:.0f} MB, {len(crowd)} clients sent 7.5 MiB each"
    reasons: dict[str, str] = {}
    while len(reasons) < len(crowd):  # each grace began when the kernel refused bytes
        who, reason = server.expect_line(r"^(\S+) disconnected: (.*)$").groups()
        reasons[who] = reason
    assert set(reasons) == {client.address for client in crowd}, reasons
    for reason in reasons.values():
        too_slow(reason)
    server.stop()


# ---------------------------------------------------------------- rule 3: no one owed more than B


def test_a_round_that_reads_its_allowance_lets_the_next_begin_where_it_stopped() -> None:
    """Five clients always have more to send than a round's allowance (two chunks): each
    round begins with the first client the last did not read, so three rounds read all
    (the same order every round would read the first two again and again)."""
    server = Server(select_server.open_listener("127.0.0.1", 0), select_server.Settings("ack"))
    senders = []
    for _ in range(5):
        ours, theirs = socket.socketpair()
        theirs.setblocking(False)
        with contextlib.suppress(BlockingIOError):  # as much as its buffers take
            while True:
                theirs.send(bytes(65536))
        server.add_client(ours, f"client {ours.fileno()}")
        senders.append(theirs)
    read: set[int] = set()
    for _ in range(3):
        server.allowance = 2 * select_server.RECV_SIZE
        readable = [fd for fd in server.inputs if fd in server.clients]  # as select() does
        chunks = server.read(readable)
        read.update(client.fd for client, _ in chunks)
    assert read == set(server.clients), f"read {sorted(read)} of {sorted(server.clients)}"
    server.close()
    for sock in senders:
        sock.close()


@pytest.mark.posix_only("it freezes the server with SIGSTOP")
def test_a_chunk_sent_in_one_piece_is_not_cut_to_fit_a_round(start_server: StartServer) -> None:
    """Broadcast, B 64 KiB: while the server is stopped, s sends 60,000 bytes, c a 10,002
    byte message, d 1,000 bytes. The round reads s, then c whole though only 5,536 bytes
    of its allowance are left (never a part, with d's bytes between the parts), then the
    next round reads d: a reader gets s's bytes, c's message whole, then d's."""
    server = start_server("broadcast", "--quiet", "--max-buffer", "65536")
    s, c, d, reader = connect(server, 4)  # in this order in inputs, so read in it
    message = b"<" + b"c" * 10000 + b">"
    with frozen(server.pid):  # so that all three are waiting when the round begins
        s.send(b"s" * 60000)
        c.send(message)
        d.send(b"d" * 1000)
    received = reader.receive(60000 + len(message) + 1000)
    assert received == b"s" * 60000 + message + b"d" * 1000, (
        f"c's message is cut: {received[59990:60010]!r}...{received[-1010:-990]!r}"
    )
    server.stop()


def test_a_round_takes_one_whole_read_past_its_allowance_and_no_more() -> None:
    """Rule 3's bound, at each side: a receiver owed B - 1 leaves a round an allowance of
    one byte, and the sender's 64 KiB chunk is read whole, so it is owed B + 65,535 bytes,
    the most any client can be (B and one read, less a byte); then the sender is paused
    (out of inputs), so that no round adds a byte more."""
    limit = 65536  # B
    settings = select_server.Settings("broadcast", quiet=True, max_buffer=limit)
    server = Server(select_server.open_listener("127.0.0.1", 0), settings)
    (receiver, _receiver_end), (sender, sender_end) = socket.socketpair(), socket.socketpair()
    server.add_client(receiver, "receiver")
    server.add_client(sender, "sender")
    owed = server.clients[receiver.fileno()]
    while not owed.outbox:  # its socket's buffers are full: the rest waits, counted
        server.owe(owed, bytes(1024))
    server.owe(owed, bytes(limit - 1 - owed.owed))
    server.apply_the_rules()
    assert (owed.owed, server.allowance) == (limit - 1, 1)
    sender_end.sendall(bytes(select_server.RECV_SIZE))  # one send, one chunk
    server.answer_or_relay(server.read([sender.fileno()]))
    assert owed.owed == limit + select_server.RECV_SIZE - 1, owed.owed
    server.apply_the_rules()
    assert sender.fileno() not in server.inputs, "a sender to a full client is still read"
    assert owed.owed == limit + select_server.RECV_SIZE - 1, owed.owed
    server.close()
    for sock in (_receiver_end, sender_end):
        sock.close()


@pytest.mark.timing
@pytest.mark.linux_only("its numbers are sized to Linux's loopback socket buffers")
def test_ack_client_that_never_reads_its_acks_is_dropped_alone(start_server: StartServer) -> None:
    """Ack, --grace 1: a flooder that never reads its ACKs is not read while an ACK of its
    own waits, and is dropped after the grace, saying why; another client's round trips
    are never held up meanwhile."""
    server = start_server("ack", "--quiet", "--grace", "1", changes=["small-send-buffer"])
    flooder = Client(server, rcvbuf=2048)
    healthy = Client(server)
    server.expect_lines("connected", 2)
    drops: dict[str, str] = {}
    slowest, round_trips = 0.0, 0
    deadline = time.monotonic() + 2 * WAIT
    # A byte a send(), so that each earns an ACK of its own and the flooder's buffers soon
    # fill (64 KiB a send() earns one: 2 runs in 20 were not dropped in time).
    with Flood(flooder.sock, b"x", size=1) as flood:
        while not drops and time.monotonic() < deadline:
            started = time.monotonic()
            assert_acked(healthy, b"still served?")
            slowest = max(slowest, time.monotonic() - started)
            round_trips += 1
            drops.update(dropped(server))
        flood.join()  # it ends when the server drops the flooder: else this fails
    assert list(drops) == [flooder.address], drops
    owed, grace = too_slow(drops[flooder.address])
    assert 0 < owed <= 3 and grace == 1.0, drops  # the rest of one ACK
    assert slowest < 1.0, f"a round trip took {slowest:.2f} s while the flooder was paused"
    assert round_trips > 10
    server.stop()


@pytest.mark.timing
@pytest.mark.linux_only("its numbers are sized to Linux's loopback socket buffers")
def test_hung_up_client_over_its_limit_holds_up_no_one(start_server: StartServer) -> None:
    """A client over its limit that hangs up gets nothing new, so the client that fed it is
    read again at once (here, to its end), not after the grace."""
    server = start_server("broadcast", "--quiet", "--max-buffer", "65536", "--grace", "1")
    slow = Client(server, rcvbuf=4096)
    sender = Client(server)
    server.expect_lines("connected", 2)
    with Flood(sender.sock, bytes(65536), total=8 << 20) as flood:
        time.sleep(0.3)  # time to fill the kernel's buffers; the next line shows it did
        slow.half_close()
        owed = server.expect_line(r"hung up; first it gets the (\d+) bytes it is owed")
        # B, and at most one read more: the rounds read up to the limit, and their last
        # read is never cut to fit (rule 3).
        most = 65536 + select_server.RECV_SIZE - 1
        assert 65536 <= int(owed[1]) <= most, f"slow was owed {owed[1]} when it hung up"
        flood.join()
    sender.half_close()
    first = server.expect_line("disconnected: (.*)")
    assert first.string.startswith(sender.address), first.string
    assert first[1] == "closed by client"
    second = server.expect_line("disconnected: ")  # at the end of its grace, at best
    assert second.string.startswith(slow.address), second.string
    server.stop()


CROWD = 200  # clients that send at the same moment
# The crowd reads as fast as it can, but one loop reads its 200 clients in turn, so on a
# loaded machine it comes back to each only so often: the default grace (2 s), not rule 4's
# 0.5 s, leaves it room. B, the limit that bounds memory, is 256 KiB.
CROWD_ARGS = ("--quiet", "--max-buffer", "262144")


@pytest.mark.timing
@pytest.mark.linux_only("peak memory (VmHWM), and buffers sized to Linux's")
@pytest.mark.open_files(300)
def test_a_crowd_that_sends_at_once_is_served_whole_and_none_is_dropped(
    start_server: StartServer,
) -> None:
    """Broadcast: 200 clients send 32 KiB each at once. None is owed more than B, so none is
    dropped, each gets the others' messages whole, and the server grows by under 8 MB
    (reading a chunk of each held 6.4 MB, twice)."""
    server = start_server("broadcast", *CROWD_ARGS)
    echoed: set[int] = set()  # each byte value is one client's: none may get its own
    whole = {0: bytearray(), CROWD - 1: bytearray()}  # two clients' bytes, counted after

    def take(index: int, chunk: bytes) -> None:
        if bytes([index]) in chunk:
            echoed.add(index)
        if index in whole:
            whole[index] += chunk

    messages = [bytes([index]) * 32768 for index in range(CROWD)]
    grown = crowd_sends_at_once(server, messages, close=False, take=take)
    assert not echoed, f"clients sent their own message: {sorted(echoed)}"
    for index, everything in whole.items():  # every other client's message, whole
        counts = [everything.count(bytes([other])) for other in range(CROWD)]
        assert counts == [0 if other == index else 32768 for other in range(CROWD)], index
    assert not dropped(server)
    assert grown < 8, f"the server's memory grew by {grown:.1f} MB"
    server.stop()


@pytest.mark.timing
@pytest.mark.linux_only("peak memory (VmHWM), and buffers sized to Linux's")
@pytest.mark.open_files(300)
def test_an_ack_crowd_that_sends_at_once_is_answered_in_bounded_memory(
    start_server: StartServer,
) -> None:
    """Ack: 200 clients send 1 MiB each at once, then half-close. A round reads at most B in
    all, so the server grows by under 8 MB (reading a chunk of each held 12.8 MB); each
    gets whole ACKs, one per 64 KiB at least, then EOF."""
    server = start_server("ack", *CROWD_ARGS)
    received = [bytearray() for _ in range(CROWD)]
    messages = [bytes(1 << 20)] * CROWD
    grown = crowd_sends_at_once(server, messages, True, lambda i, chunk: received[i].extend(chunk))
    for index, acks in enumerate(received):
        assert acks == select_server.ACK * (len(acks) // 3), f"client {index}: {acks[:30]!r}"
        assert len(acks) >= 3 * 16, f"client {index}: {len(acks) // 3} ACKs for 1 MiB"
    assert grown < 8, f"the server's memory grew by {grown:.1f} MB"
    server.stop()


@pytest.mark.timing
@pytest.mark.linux_only("its numbers are sized to Linux's loopback socket buffers")
def test_reader_just_above_the_slowest_rate_is_kept_and_the_chat_stays_fast(
    start_server: StartServer,
) -> None:
    """A reader at 1.15 times the slowest rate is kept with every byte. While it is owed B
    no one else is read, but it is tried every 20 ms: 9 chat messages in 10 take under
    300 ms, none a whole grace (select() alone: about one)."""
    server = start_server("broadcast", *RULE_ARGS)
    _, delays = chat_past_a_paced_reader(server, 1.15 * SLOWEST_KEPT, 6 * RULE_GRACE)
    p90, longest = delays[len(delays) * 9 // 10], delays[-1]
    assert p90 < 0.3 and longest < RULE_GRACE, f"chat p90 {p90:.3f} s, longest {longest:.3f} s"
    server.stop()


# ---------------------------------------------------------------- rule 4: owed bytes are taken


@pytest.mark.timing
@pytest.mark.linux_only("its numbers are sized to Linux's loopback socket buffers")
def test_reader_four_times_the_slowest_rate_is_kept_and_gets_every_byte(
    start_server: StartServer,
) -> None:
    """While the room floods, the reader falls behind again and again, each time gets
    back to half the limit in time, and gets every byte."""
    server = start_server("broadcast", *RULE_ARGS)
    read, _ = chat_past_a_paced_reader(server, 4 * SLOWEST_KEPT, 4 * RULE_GRACE)
    assert read > 3 * RULE_BUFFER, f"the reader read only {read} bytes: not behind often"
    server.stop()


@pytest.mark.timing
@pytest.mark.linux_only("its numbers are sized to Linux's loopback socket buffers")
def test_reader_an_eighth_of_the_slowest_rate_is_dropped_and_the_room_moves_on(
    start_server: StartServer,
) -> None:
    """While the reader is behind, no one who feeds it is read, so the chat waits; after the
    grace it is dropped as too slow, and within grace + 1 s the chat takes under 50 ms."""
    server = start_server("broadcast", *RULE_ARGS)
    reason, dropped_after = "", 0.0
    with ChatRoom(server, SLOWEST_KEPT / 8) as room:
        started = time.monotonic()
        while (elapsed := time.monotonic() - started) < RULE_GRACE + 1.5:
            room.chat()
            if not reason and room.reader.address in (drops := dropped(server)):
                reason, dropped_after = drops[room.reader.address], elapsed
                room.flood.stopping.set()  # what is left to show: the chat moves on
            time.sleep(0.02)  # the chat's pace: one message every 20 ms
        delays = room.delays()
    assert reason, f"the slow reader was not dropped: {server.output.getvalue()}"
    assert dropped_after >= RULE_GRACE, f"dropped after {dropped_after:.2f} s, before the grace"
    late = {
        n: round(1000 * delay)
        for n, delay in delays.items()
        if room.sent_at[n] - started >= RULE_GRACE + 1.0 and delay >= 0.05
    }
    assert not late, f"dropped after {dropped_after:.2f} s; then chat took (ms): {late}"
    owed, grace = too_slow(reason)
    assert owed > 0 and grace == RULE_GRACE, reason
    server.stop()


@pytest.mark.timing
@pytest.mark.linux_only("peak memory (VmHWM), and buffers sized to Linux's")
def test_flood_drops_the_non_reader_and_keeps_the_slow_reader(start_server: StartServer) -> None:
    """--grace 1: 32 MiB sent flat out. The slow reader, pausing, gets every byte in order;
    the non-reader is dropped within two graces; memory stays under 40 MB; then it idles."""
    server = start_server("broadcast", "--quiet", "--grace", "1")
    block = random.Random(2).getrandbits(8 << 20).to_bytes(1 << 20, "little")  # randbytes: 3.9+
    total = 32 * len(block)
    never_reads = Client(server, rcvbuf=4096)
    slow, sender = Client(server), Client(server)
    server.expect_lines("connected", 3)
    received = hashlib.sha256()
    count = 0

    def read_slowly() -> None:  # about 50 MB/s, and three pauses of a quarter grace
        nonlocal count
        slow.sock.settimeout(3 * WAIT)
        pauses = {total // 4, total // 2, 3 * total // 4}
        while count < total:
            chunk = slow.sock.recv(65536)
            assert chunk, "the slow reader was disconnected"
            received.update(chunk)
            count += len(chunk)
            if any(count - len(chunk) < mark <= count for mark in pauses):
                time.sleep(0.25)
            time.sleep(len(chunk) / 50e6)

    started = time.monotonic()
    reader = threading.Thread(target=read_slowly)
    reader.start()
    with Flood(sender.sock, block, total) as flood:
        line = server.expect_line(r"disconnected: (.*)", timeout=3 * WAIT)
        dropped_after = time.monotonic() - started
        flood.join(timeout=6 * WAIT)
    reader.join(timeout=WAIT)
    assert not reader.is_alive(), f"the slow reader has {count} of {total} bytes"
    assert line.string.startswith(never_reads.address), line.string
    assert re.fullmatch(r"too slow: still owed \d+ bytes after 1.0 s", line[1]), line[1]
    # Two graces at most: the server's last try before dropping may find room the kernel
    # made (its buffer grows), which gets the non-reader under once.
    assert dropped_after < 2 * 1.0 + 1.5, f"non-reader dropped after {dropped_after:.1f} s"
    assert count == total and received.hexdigest() == hashlib.sha256(block * 32).hexdigest()
    peak = peak_memory_mb(server.pid)
    assert peak < 40, f"peak RSS {peak:.0f} MB"
    assert idle_cpu_seconds(server) < 0.05  # no backlog, no socket in outputs: it sleeps
    server.stop()


@pytest.mark.timing
@pytest.mark.linux_only("its numbers are sized to Linux's loopback socket buffers")
def test_a_client_given_up_that_sends_on_is_closed_after_one_more_grace(
    start_server: StartServer,
) -> None:
    """Broadcast, B 256 KiB, G 0.5 s: x never reads and sends flat out; a feeder floods
    the others, reading as it goes. Given up after G, x is still read (its bytes reach
    the others), but for one more G only: closed within two graces and a second."""
    server = start_server("broadcast", *RULE_ARGS, changes=["small-send-buffer"])
    x = Client(server, rcvbuf=4096)
    feeder, hears = Client(server), Client(server)
    server.expect_lines("connected", 3)
    stop = threading.Event()
    readers = [Reader(feeder.sock, stop), Reader(hears.sock, stop)]
    started = time.monotonic()
    try:
        with Flood(x.sock, b"x"), Flood(feeder.sock, b"."):
            line = server.expect_line(r"^(\S+) disconnected: (.*)$", timeout=3 * WAIT)
            dropped_after = time.monotonic() - started
    finally:
        stop.set()
        for reader in readers:
            reader.thread.join(timeout=WAIT)
    assert line[1] == x.address, line.string
    too_slow(line[2])
    assert RULE_GRACE <= dropped_after < 2 * RULE_GRACE + 1.0, f"after {dropped_after:.2f} s"
    assert b"x" in readers[1].other, "x's bytes never reached the others"
    server.stop()


# ================================================================ case by case


def test_one_mebibyte_in_ack_mode_earns_only_whole_acks(start_server: StartServer) -> None:
    """Read in chunks: one whole ACK per chunk the server logged; the chunks add up to 1 MiB."""
    server = start_server("ack")
    client = Client(server)
    client.send(bytes(1 << 20))
    client.half_close()
    answer = client.receive()
    chunks = []  # the size of each chunk the server logged
    pattern = r"sent (b'.*?')(?:\.\.\. \((\d+) bytes\))?$|disconnected"
    while (match := server.expect_line(pattern))[1]:
        chunks.append(int(match[2]) if match[2] else len(ast.literal_eval(match[1])))
    assert answer == b"ACK" * len(chunks)
    assert sum(chunks) == 1 << 20
    server.stop()


def test_one_mebibyte_in_broadcast_mode_reaches_every_other_client_whole(
    start_server: StartServer,
) -> None:
    server = start_server("broadcast", "--quiet")
    payload = random.Random(1).getrandbits(8 << 20).to_bytes(1 << 20, "little")
    sender, *receivers = connect(server, 3)
    sender.send(payload)
    for receiver in receivers:
        assert receiver.receive(len(payload)) == payload
    assert_quiet(sender, *receivers)
    server.stop()


def test_urgent_data_is_read_inline_without_spinning(start_server: StartServer) -> None:
    """Each urgent (MSG_OOB) byte earns an ACK, others are served, and the idle server then
    uses next to no CPU (no busy loop)."""
    server = start_server("ack", "--quiet")
    urgent, other = Client(server), Client(server)
    for _ in range(3):
        urgent.sock.send(b"!", socket.MSG_OOB)
        assert urgent.receive(3, timeout=1) == b"ACK"  # a lost urgent byte earns nothing
    assert_acked(other, b"me too")
    assert idle_cpu_seconds(server) < 0.05
    assert_quiet(urgent, other)
    server.stop()


def test_urgent_data_sent_before_accept_is_kept(start_server: StartServer) -> None:
    """Urgent bytes that arrive while a client waits to be accepted are read inline too
    (the listening socket's SO_OOBINLINE is inherited), and relayed."""
    server = start_server("broadcast", "--quiet", "--max-clients", "2")
    receiver, other = Client(server), Client(server)
    server.expect_line("not accepting new clients")
    waiting = Client(server)  # in the kernel's queue, not yet accepted
    for byte in (b"!", b"?"):
        waiting.sock.send(byte, socket.MSG_OOB)
    waiting.send(b"tail")
    other.close()  # makes room: waiting is accepted and read
    assert receiver.receive(6, timeout=1) == b"!?tail"
    assert_quiet(receiver)
    server.stop()


def assert_served_up_to(server: ServerProcess, limit: int, waiting: int, wait: float) -> None:
    """limit + waiting clients connect: limit are served, the rest wait in the kernel's queue
    (not refused or reset) and are served as the first leave; then a clean stop."""
    clients = [Client(server) for _ in range(limit + waiting)]
    server.expect_line(rf"connected \({limit} online\)", timeout=wait)
    server.expect_line(rf"not accepting new clients until one leaves: {limit} clients")
    assert_acked(clients[0], b"served")
    last = clients[-1]
    last.send(b"waiting")  # sits in the kernel until the server accepts it
    assert_quiet(last)
    for client in clients[:waiting]:
        client.close()
    assert last.receive(3) == b"ACK"
    for client in clients[waiting:-1]:
        assert_acked(client, b"all served?")
    server.stop()


@pytest.mark.open_files(1200)
@pytest.mark.posix_only("it sets the server's file descriptor limit (RLIMIT_NOFILE)")
def test_more_clients_than_select_can_watch_wait_their_turn(start_server: StartServer) -> None:
    """4096 file descriptors allowed, 1,100 clients: 1,000 (--max-clients, under select()'s
    FD_SETSIZE of 1024) are served, the rest wait their turn, no crash."""
    server = start_server("ack", "--quiet", preexec_fn=nofile_limit(4096))
    assert_served_up_to(server, 1000, 100, 3 * WAIT)


def assert_accepts_again_when_one_leaves(server: ServerProcess, clients: list[Client]) -> None:
    """The server, not accepting, still serves; when a client leaves it accepts one that
    waits; then a clean stop."""
    assert_acked(clients[0], b"still serving")
    clients[0].close()
    server.expect_line("accepting new clients again")
    server.expect_line("connected")  # a waiting client took the freed place
    server.stop()


@pytest.mark.posix_only("it sets the server's file descriptor limit (RLIMIT_NOFILE)")
def test_client_past_fd_setsize_is_turned_away_not_a_crash(start_server: StartServer) -> None:
    """A client whose socket is numbered FD_SETSIZE (1024) or more is closed and the server
    stops accepting, instead of crashing with 'filedescriptor out of range in select()'."""
    changes = ["1010-descriptors-taken"]
    server = start_server("ack", "--quiet", changes=changes, preexec_fn=nofile_limit(2048))
    clients = [Client(server) for _ in range(12)]
    server.expect_line(r"not accepting new clients until one leaves: descriptor 1024 is")
    assert_accepts_again_when_one_leaves(server, clients)


@pytest.mark.posix_only("it sets the server's file descriptor limit (RLIMIT_NOFILE)")
def test_out_of_file_descriptors_waits_without_spinning(start_server: StartServer) -> None:
    """64 file descriptors, 100 clients: accept() fails with EMFILE, and the server says so
    once and uses next to no CPU until a client leaves."""
    server = start_server("ack", "--quiet", preexec_fn=nofile_limit(64))
    clients = [Client(server) for _ in range(100)]
    server.expect_line(r"not accepting new clients until one leaves: EMFILE$")
    assert idle_cpu_seconds(server) < 0.05
    assert not [line for line in server.new_lines() if "not accepting" in line]  # said once
    assert_accepts_again_when_one_leaves(server, clients)


@pytest.mark.linux_only("it raises a running server's file descriptor limit (prlimit)")
def test_accept_is_retried_when_no_client_can_leave(start_server: StartServer) -> None:
    """Out of file descriptors with no client to leave, the server tries accept() again
    every second, without spinning, and serves the client once it can."""
    server = start_server("ack", "--quiet", preexec_fn=nofile_limit(6))
    client = Client(server)
    server.expect_line(r"not accepting new clients for 1.0 s: EMFILE$")
    assert idle_cpu_seconds(server) < 0.05
    set_open_files_limit(server.pid, 64)  # room again
    server.expect_line("connected")
    assert_acked(client, b"at last")
    server.stop()


def test_fifty_broadcasters_each_get_all_the_others_in_order(start_server: StartServer) -> None:
    """50 clients each send 100 numbered messages at once; each gets the others', not its own."""
    server = start_server("broadcast", "--quiet")
    socks = [client.sock for client in connect(server, 50)]
    outgoing = {sock: [b"c%02dm%03d;" % (i, m) for m in range(100)] for i, sock in enumerate(socks)}
    incoming = {sock: bytearray() for sock in socks}
    deadline = time.monotonic() + 3 * WAIT
    while any(len(data) < 49 * 100 * 8 for data in incoming.values()):
        assert time.monotonic() < deadline, "not everything arrived in time"
        senders = [sock for sock in socks if outgoing[sock]]
        readable, writable, _ = select.select(socks, senders, [], WAIT)
        for sock in writable:
            sock.sendall(outgoing[sock].pop(0))
        for sock in readable:
            incoming[sock] += sock.recv(65536)
    assert_quiet(*server.clients)
    for i, sock in enumerate(socks):
        records = re.findall(rb"c(\d\d)m(\d\d\d);", bytes(incoming[sock]))
        assert len(records) * 8 == len(incoming[sock])  # nothing but whole records
        by_sender: dict[int, list[int]] = {}
        for sender, number in records:
            by_sender.setdefault(int(sender), []).append(int(number))
        assert by_sender == {j: list(range(100)) for j in range(50) if j != i}
    server.stop()


@pytest.mark.open_files(400)
def test_two_hundred_clients_in_lock_step_get_one_ack_per_message(
    start_server: StartServer,
) -> None:
    """200 clients each send and wait for their ACK, 20 times: one ACK per message, no more."""
    server = start_server("ack", "--quiet")
    clients = connect(server, 200)
    for _ in range(20):
        for client in clients:
            client.send(b"ping")
        for client in clients:
            assert client.receive(3) == b"ACK"
    assert_quiet(*clients)
    server.stop()


def test_idle_server_with_a_hundred_silent_clients_uses_no_cpu(start_server: StartServer) -> None:
    server = start_server("broadcast", "--quiet")
    connect(server, 100)
    assert idle_cpu_seconds(server) < 0.05  # it sleeps in select()
    server.stop()


def test_clients_that_leave_at_once_are_dropped_alone(start_server: StartServer) -> None:
    """Clients that connect and close, reset, or send and close at once are each dropped
    with a log line saying why; a client connected all along is unaffected."""
    server = start_server("ack")
    [steady] = connect(server, 1)
    for how in ["close", "reset", "send-and-close"] * 5:
        leaving = Client(server)
        if how == "send-and-close":
            leaving.send(b"bye")
        leaving.close(reset=how == "reset")
        # Wine's accept() of a connection reset before it was accepted: WSAENOTCONN.
        reset = "(connection reset|WSAENOTCONN)" if WINE else "connection reset"
        server.expect_line(rf"disconnected: |a client could not be accepted: {reset}")
    assert_acked(steady, b"still here")
    server.stop()


def test_half_closed_client_gets_its_whole_backlog_first(start_server: StartServer) -> None:
    """A client owed a backlog when it half-closes still receives all of it, in order, and
    nothing sent after it hung up, before the server closes it."""
    # Small kernel buffers, so that most of the 512 KiB waits in the server. It is owed less
    # than B/2, so rule 4 wants it all taken within the grace: 10 s, however busy the machine.
    server = start_server("broadcast", "--quiet", "--grace", "10", changes=["small-send-buffer"])
    payload = bytes(range(256)) * 2048
    slow = Client(server, rcvbuf=4096)
    sender, late = Client(server), Client(server)
    server.expect_lines("connected", 3)
    sender.send(payload)
    sender.half_close()
    server.expect_line(r"disconnected: closed by client")  # all of it is queued for slow
    slow.half_close()
    server.expect_line(r"hung up; first it gets the \d+ bytes it is owed")
    late.send(b"sent after slow hung up")  # not for slow: it gets nothing new
    assert slow.receive() == payload
    server.stop()


@pytest.mark.posix_only("it freezes the server with SIGSTOP")
def test_receiver_reset_while_a_relay_is_sent_is_dropped_alone(start_server: StartServer) -> None:
    """A receiver resets as another client sends: send() to it fails mid-relay, it alone is
    dropped, and the rest of the relay, and all after it, still arrives."""
    server = start_server("broadcast", "--quiet")
    sender, gone, stays = connect(server, 3)
    # Freeze the server so that one select() sees both the reset and the chunk; the
    # sender connected first, so its chunk is read (and relayed) first.
    with frozen(server.pid):
        gone.close(reset=True)
        sender.send(b"to whoever is left")
    assert stays.receive(18) == b"to whoever is left"
    line = server.expect_line("disconnected: (.*)")
    assert line.string.startswith(gone.address)
    assert line[1] == "connection reset"  # as send() found it, not the EOF read after
    stays.send(b"still relaying")
    assert sender.receive(14) == b"still relaying"
    assert_quiet(sender, stays)
    server.stop()


def serve_and_exit_cleanly(server: subprocess.Popen[str], port: int) -> None:
    """An ack round trip on port (logging it fails), then SIGINT: status 0, no stderr."""
    deadline = time.monotonic() + WAIT
    while True:  # nothing may tell us it listens: try until it does
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
            break
        except ConnectionRefusedError:
            assert time.monotonic() < deadline, "the server never listened"
            time.sleep(0.01)
    with sock:
        sock.sendall(b"anyone logging?")
        assert sock.recv(3) == b"ACK"
    send_stop(server.pid)
    assert server.wait(timeout=WAIT) == 0  # not communicate(): on Windows it reads stdout
    assert server.stderr is not None and server.stderr.read() == ""


def test_server_outlives_the_reader_of_its_log() -> None:
    """When the log's reader is gone (`| head`), the server serves on, and exits cleanly."""
    command = [*server_command(), "ack", "--port", "0"]
    with popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as server:
        assert server.stdout is not None
        match = LISTENING.search(server.stdout.readline())
        assert match is not None
        server.stdout.close()  # the log's reader is gone
        serve_and_exit_cleanly(server, int(match["port"]))


@pytest.mark.linux_only("/dev/full, a disk that is always full")
def test_server_outlives_a_full_disk_for_its_log() -> None:
    """Nor does ENOSPC (/dev/full is a disk that is always full) stop it or its clean exit."""
    port = free_port()  # the log that would say which port is lost
    command = [*server_command(), "ack", "--port", str(port)]
    options: dict[str, Any] = {"cwd": ROOT, "stderr": subprocess.PIPE}
    with open("/dev/full", "w") as full, popen(command, stdout=full, **options) as server:
        serve_and_exit_cleanly(server, port)


# ================================================================ the command line, signals
# ================================================================ and platforms


def run_server(
    *args: str, changes: Sequence[str] = (), interpreter: list[str] | None = None, **options: Any
) -> subprocess.CompletedProcess[str]:
    """Run the server to completion (it should exit at once) and capture its output."""
    command = [*server_command(interpreter, changes), *args]
    wait = WAIT if interpreter is None else WINE_WAIT
    return subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=wait, **options
    )


def assert_usage_error(result: subprocess.CompletedProcess[str], message: str = "") -> None:
    """Status 2, a usage message with message in it, no traceback (under Wine: on stdout)."""
    output = result.stderr or result.stdout
    assert result.returncode == 2, output
    assert output.startswith("usage: "), output
    assert message in output, output
    assert "Traceback" not in output, output


@pytest.mark.parametrize(
    "args",
    [[], ["echo"], ["ack", "--port", "-1"], ["ack", "--port", "65536"], ["ack", "--port", "x"]],
    ids=["no-mode", "unknown-mode", "port-negative", "port-too-big", "port-not-a-number"],
)
def test_bad_arguments_give_usage_and_status_2(args: list[str]) -> None:
    assert_usage_error(run_server(*args))


@pytest.mark.parametrize(
    ("host", "ending"),
    [
        (
            "127.0.0.1",
            "address already in use; is another server running? pick another port with --port",
        ),
        ("no-such-host.invalid", ""),
        ("a..b", ""),
    ],
    ids=["port-in-use", "unknown-host", "not-a-host"],
)
def test_cannot_listen_gives_one_line_and_status_1(host: str, ending: str) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = run_server("ack", "--host", host, "--port", str(port))
    assert (result.returncode, result.stdout) == (1, ""), result.stderr
    assert result.stderr.count("\n") == 1, result.stderr  # one line, not a traceback
    assert result.stderr.startswith(f"cannot listen on {host}:{port}: "), result.stderr
    assert result.stderr.endswith(f"{ending}\n"), result.stderr


def test_a_port_in_use_is_told_the_same_on_windows() -> None:
    """Windows' WSAEADDRINUSE (10048, as CPython reports it), in whatever language its
    text is, gets the same advice as Linux's EADDRINUSE."""
    for code in (errno.EADDRINUSE, 10048):
        reason = select_server.cannot_listen_reason(OSError(code, "localised text"))
        assert reason == (
            "address already in use; is another server running? pick another port with --port"
        )
    denied = OSError(errno.EACCES, "denied")
    assert select_server.cannot_listen_reason(denied) == str(denied)  # the OS's own words


@pytest.mark.parametrize(
    ("host", "announced"),
    [
        (None, "127.0.0.1"),
        ("", "0.0.0.0"),
        pytest.param("::1", "[::1]", marks=pytest.mark.ipv6),
        pytest.param("[::1]", "[::1]", marks=pytest.mark.ipv6),
    ],
    ids=["default", "empty", "ipv6", "brackets"],
)
def test_host_is_the_same_everywhere_and_takes_what_the_server_prints(
    host: str | None, announced: str, start_server: StartServer
) -> None:
    """127.0.0.1 by default on every OS ("localhost" is ::1 first on macOS); '' is every IPv4
    interface, as in Python's socket module; IPv6 is announced in brackets, and may be so given."""
    server = start_server("ack", host=host)
    assert server.announcement == f"listening on {announced}:{server.port} (ack mode)"
    server.host = reachable(server.host)
    assert_acked(Client(server), b"here?")
    server.stop()


@pytest.mark.ipv6
def test_a_transcript_holds_over_ipv6() -> None:
    """--host ::1: a transcript's every byte and log line, client addresses in brackets."""
    transcript = read_transcript(TRANSCRIPTS / "broadcast_three_clients.txt")
    replay(transcript, partial(ServerProcess, host="::1"))


@pytest.mark.posix_only("it sets the server's file descriptor limit (RLIMIT_NOFILE)")
def test_started_with_every_low_descriptor_taken_it_refuses_in_one_line() -> None:
    """Descriptors 3 to 1023 taken, select() could watch no socket: exit 1, unannounced."""
    changes = ["every-low-descriptor-taken"]
    result = run_server("ack", "--port", "0", changes=changes, preexec_fn=nofile_limit(2048))
    assert (result.returncode, result.stdout) == (1, ""), result.stderr
    assert result.stderr == (
        "cannot serve: select() needs descriptors below 1024; files left open for us took them\n"
    )


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_right_after_listening_exits_cleanly(sig: signal.Signals) -> None:
    """The handlers are in place before the server says it listens: a signal right after
    that line closes everything, logs one line and exits 0."""
    result = run_server("broadcast", "--port", "0", changes=[f"{sig.name.lower()}-on-announce"])
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
    assert result.stdout.splitlines()[1:] == [f"{sig.name}: closing 0 clients and exiting"]


@pytest.mark.posix_only("SIGTERM, which on Windows ends a process at once")
def test_a_storm_of_stop_signals_still_exits_0() -> None:
    """40 SIGTERMs 1 ms apart at a busy server: exit 0, no traceback. After its loop it
    ignores them: at shutdown Python restores the default handler, which would kill it."""
    for _ in range(5):
        with ServerProcess("ack", "--quiet") as server:
            client = Client(server)
            for _ in range(40):
                with contextlib.suppress(OSError):  # the server may have closed it already
                    client.send(b"busy")
                os.kill(server.pid, signal.SIGTERM)
                time.sleep(0.001)  # the storm's own pace, not a wait for anything
            assert server.child.proc.wait(timeout=WAIT) == 0, server.output.getvalue()
            assert "Traceback" not in server.output.getvalue()


def test_restart_on_the_same_port_works_at_once(start_server: StartServer) -> None:
    """On SIGTERM the server closes every client first (so the connections sit in TIME_WAIT
    on its side), yet with SO_REUSEADDR a new server binds the same port straight away."""
    first = start_server("ack", "--quiet")
    clients = connect(first, 3)
    assert_acked(clients[0], b"x")
    # Windows has no SIGTERM to send: os.kill(pid, SIGTERM) there is TerminateProcess.
    sig = STOP if sys.platform == "win32" else signal.SIGTERM
    assert first.stop(sig).strip() == f"{sig.name}: closing 3 clients and exiting"
    for client in clients:
        assert client.receive() == b""
    assert start_server("ack", port=first.port).port == first.port


def test_one_client_is_counted_as_one_client(start_server: StartServer) -> None:
    server = start_server("ack", "--quiet")
    connect(server, 1)
    assert server.stop().strip() == f"{STOP.name}: closing 1 client and exiting"


def test_trace_shows_each_round_select_and_what_each_step_did() -> None:
    """--trace, broadcast, alice and bob: each round logs the lists handed to select() and
    what it returned, each socket by descriptor and name, then what each step did; the
    usual log lines stay where they were. (Descriptors are read from the trace: on Windows
    they are handles, of any number.)"""
    with ServerProcess("broadcast", "--trace") as server:
        alice = Client(server)
        lines = [server.next_line() for _ in range(4)]
        both = re.search(r"inputs=\[((\d+) listener, (\d+) wake-up)\]", lines[0])
        assert both is not None, lines
        bob = Client(server)
        lines += [server.next_line() for _ in range(4)]
        alice.send(b"hi\n")
        assert bob.receive(3) == b"hi\n"
        lines += [server.next_line() for _ in range(5)]
        alice.half_close()
        assert alice.receive() == b""
        lines += [server.next_line() for _ in range(4)]
        last = server.stop()
    joined = [re.search(r"accept: \[(\d+) ", line) for line in (lines[3], lines[7])]
    a, b = [f"{match[1]} {client.address}" for match, client in zip(joined, (alice, bob)) if match]
    listener, wakeup = f"{both[2]} listener", f"{both[3]} wake-up"
    assert lines == [
        f"round 1: select(inputs=[{both[1]}], outputs=[])",
        f"round 1: select() returned readable=[{listener}], writable=[]",
        f"{alice.address} connected (1 online)",
        f"round 1: 1. accept: [{a}] join inputs",
        f"round 2: select(inputs=[{both[1]}, {a}], outputs=[])",
        f"round 2: select() returned readable=[{listener}], writable=[]",
        f"{bob.address} connected (2 online)",
        f"round 2: 1. accept: [{b}] join inputs",
        f"round 3: select(inputs=[{both[1]}, {a}, {b}], outputs=[])",
        f"round 3: select() returned readable=[{a}], writable=[]",
        f"{alice.address} sent b'hi\\n'",
        f"round 3: 2. read: 3 bytes from {a}",
        f"round 3: 3. owe {b} 3 bytes: all sent at once",
        f"round 4: select(inputs=[{both[1]}, {a}, {b}], outputs=[])",
        f"round 4: select() returned readable=[{a}], writable=[]",
        f"round 4: 2. read: EOF from {a}: it leaves inputs",
        f"{alice.address} disconnected: closed by client",
    ], "\n".join(lines)
    assert last.splitlines() == [
        f"round 5: select(inputs=[{both[1]}, {b}], outputs=[])",
        f"round 5: select() returned readable=[{wakeup}], writable=[]",
        f"{STOP.name}: closing 1 client and exiting",
    ], last


def assert_serves_510_as_on_windows(start_server: StartServer, wait: float, **how: Any) -> None:
    """510 clients served (with the listening and wake-up sockets, the 512 one select() list
    holds on Windows), 50 more wait; --max-clients 511 is a usage error."""
    too_many = run_server("ack", "--max-clients", "511", **how)
    assert_usage_error(too_many, "--max-clients must be between 1 and 510")
    assert_served_up_to(start_server("ack", "--quiet", **how), 510, 50, wait)


@pytest.mark.posix_only("it sets the server's file descriptor limit (RLIMIT_NOFILE)")
@pytest.mark.open_files(700)
def test_on_windows_510_clients_are_served_and_the_rest_wait(start_server: StartServer) -> None:
    """Linux's CPython, told it is on Windows."""
    assert_serves_510_as_on_windows(
        start_server, 3 * WAIT, changes=["pretend-windows"], preexec_fn=nofile_limit(1024)
    )


def test_accepted_sockets_send_small_chunks_at_once() -> None:
    """Every accepted socket has TCP_NODELAY: a small relay is not held back (Nagle's
    algorithm) until the previous one is acknowledged, which costs a chat tens of ms."""
    with server_in_this_process("broadcast") as running:
        Client(running)
        wait_for(lambda: len(running.server.clients) == 1, "the client to be accepted")
        accepted = next(iter(running.server.clients.values())).sock
        assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


def test_a_client_refused_tcp_nodelay_is_served_all_the_same(start_server: StartServer) -> None:
    """As macOS refuses TCP_NODELAY (EINVAL) for a client that reset before accept()."""
    server = start_server("ack", changes=["nodelay-refused"])
    assert_acked(Client(server), b"still served?")
    server.stop()


def readme_client(port: int, folder: Path) -> list[str]:
    """The one-line client that README.md shows (`python -c "import socket ..."`), aimed
    at port, run as pasted into a shell: sh, or on Windows cmd.exe (from a .cmd file)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r'^python (-c "import socket.*")$', readme, re.M)
    assert match is not None, "README.md shows no one-line python -c client"
    line = f"{subprocess.list2cmdline([sys.executable])} {match[1].replace('8000', str(port))}"
    if sys.platform != "win32":
        return ["/bin/sh", "-c", line]
    script = folder / "client.cmd"
    script.write_text(f"@echo off\r\n{line}\r\n", encoding="utf-8")
    return ["cmd", "/d", "/c", str(script)]


def test_readme_client_sends_piped_input_and_prints_until_the_server_closes(
    start_server: StartServer, tmp_path: Path
) -> None:
    """Like `nc -N`: it sends what is piped in, half-closes, and prints what arrives."""
    server = start_server("ack")
    command = readme_client(server.port, tmp_path)
    result = subprocess.run(command, input="hello\n", capture_output=True, text=True, timeout=WAIT)
    assert (result.returncode, result.stdout, result.stderr) == (0, "b'ACK'\n", "")
    server.stop()


def test_readme_client_outlives_the_server_without_a_traceback(
    start_server: StartServer, tmp_path: Path
) -> None:
    server = start_server("ack")
    pipes = {name: subprocess.PIPE for name in ("stdin", "stdout", "stderr")}
    with popen(readme_client(server.port, tmp_path), **pipes) as client:
        server.expect_line("connected")
        server.stop()
        out, err = client.communicate("anyone there?\n", timeout=WAIT)
    assert client.returncode == 0, err
    assert "Traceback" not in out + err, out + err


def test_readme_client_says_in_one_line_that_no_server_answered(tmp_path: Path) -> None:
    command = readme_client(free_port(), tmp_path)
    result = subprocess.run(command, input="", capture_output=True, text=True, timeout=WAIT)
    assert result.returncode == 1, result
    assert (result.stdout.count("\n"), result.stderr) == (1, ""), result
    assert re.match(r"\[(Errno|WinError) \d+\] ", result.stdout), result.stdout


# ---------------------------------------------------------------- Windows, under Wine
# `make test-windows` runs the tests named *_under_wine on each Windows CPython that
# WINDOWS_PYTHONS names: a script that runs its python.exe under Wine, as python is run.


WINDOWS_PYTHONS = find_windows_pythons()
under_wine = pytest.mark.skipif(not WINDOWS_PYTHONS, reason="make test-windows runs these")
windows_pythons = pytest.mark.parametrize(
    "python", list(WINDOWS_PYTHONS.values()), ids=list(WINDOWS_PYTHONS)
)


def as_under_wine(path: Path) -> str:
    """The transcript's text, with each reset logged as Wine reads it (as_wine_reads)."""
    return as_wine_reads(path.read_text(encoding="utf-8"))


def as_wine_reads(text: str) -> str:
    """A transcript's text, with each reset logged as Wine reads it. Wine 8.0's recv()
    returns b"" after a reset, where Windows' raises ConnectionResetError (README.md says
    why), so there a client that resets is "closed by client"."""
    for name in re.findall(r"^(\w+) resets$", text, re.M):
        line = f"server: {{{name}}} disconnected: "
        text = text.replace(f"{line}connection reset\n", f"{line}closed by client\n")
    return text


@under_wine
@windows_pythons
@pytest.mark.parametrize("path", transcript_files(), ids=lambda path: path.stem)
def test_transcript_under_wine(python: str, path: Path) -> None:
    """Each client gets the transcript's bytes, the server logs its lines (a reset as Wine
    reads it) and exits on Ctrl-C."""
    try:
        replay(parse(as_under_wine(path), path.name), partial(ServerProcess, interpreter=[python]))
    except TranscriptError as error:
        pytest.fail(str(error), pytrace=False)


@under_wine
@windows_pythons
@given(sessions())
def test_generated_sessions_match_the_model_under_wine(
    python: str, session: tuple[str, list[Action]]
) -> None:
    """Not those with a reset: the model says 'connection reset', Wine 'closed by client'."""
    assume(all(action.verb != "resets" for action in session[1]))
    found_by = "test_generated_sessions_match_the_model_under_wine"
    text = generated_transcript(*session, found_by=found_by)
    try:
        replay(parse(text, "generated.txt"), partial(ServerProcess, interpreter=[python]))
    except TranscriptError as error:
        raise AssertionError(f"{error}\n\nThe session, shrunk:\n\n{text}") from None


@under_wine
@windows_pythons
@pytest.mark.parametrize("args", [["echo"], ["ack", "--port", "65536"]], ids=["mode", "port"])
def test_bad_arguments_give_usage_and_status_2_under_wine(python: str, args: list[str]) -> None:
    assert_usage_error(run_server(*args, interpreter=[python]))


@under_wine
@windows_pythons
@pytest.mark.open_files(700)
def test_510_clients_are_served_and_the_rest_wait_under_wine(
    python: str, start_server: StartServer
) -> None:
    """With Windows CPython's real select.pyd."""
    assert_serves_510_as_on_windows(start_server, WINE_WAIT, interpreter=[python])


# ================================================================ the README is true, and
# ================================================================ the tools do what they say

# ---------------------------------------------------------------- the README and docs/
# These fail when a page names in backticks what is not in the repository, or shows in a
# code block a command that no longer runs so, or output that the program does not print.


@pytest.mark.parametrize("name", DOCUMENTS)
def test_readme_names_only_what_exists_and_runs_as_shown(name: str) -> None:
    problems = sorted(set(readme_problems((ROOT / name).read_text(encoding="utf-8"))))
    assert not problems, f"{name} is not true:\n" + "\n".join(problems)


def test_readme_set_up_commands_start_the_server_and_run_the_tests() -> None:
    """The first block's servers announce the defaults the README and its `nc` lines give, and
    exit 0 on SIGINT; its `make test` runs pytest here (a dry run: make test runs this test)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    _, first = FENCE.findall(text)[0]
    servers = [run[2].split() for run in PYTHON_RUN.finditer(first) if run[1] == SERVER.name]
    assert servers, f"the README's first block starts no server:\n{first}"
    for mode, *args in servers:  # interpreter given: the real server, even with $BROKEN_SERVER
        with ServerProcess(mode, *args, host=None, interpreter=[sys.executable]) as server:
            assert server.announcement == f"listening on 127.0.0.1:{server.port} ({mode} mode)"
            server.stop()
    defaults = select_server.parse_args(["ack"])
    assert f"`{defaults.host}:{defaults.port}`" in text
    nc_lines = re.findall(r"^nc (\S+) (\d+)", text, re.M)
    assert set(nc_lines) == {(defaults.host, str(defaults.port))}, nc_lines
    assert re.search(r"^make test\b", first, re.M), first
    if shutil.which("make") is None:
        pytest.skip("no make here")
    command = ["make", "-n", "test", f"PYTHON={sys.executable}"]
    dry_run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert dry_run.returncode == 0, dry_run.stdout + dry_run.stderr
    assert re.search(r"pytest .*test_transcripts\.py", dry_run.stdout), dry_run.stdout


def test_chinese_guide_shows_the_readmes_commands_and_code() -> None:
    english, guide = [(ROOT / name).read_text(encoding="utf-8") for name in DOCUMENTS[:2]]
    problems = list(guide_problems(english, guide))
    assert not problems, "\n".join(problems)


STALE = """Run `make tests`, `make check SERVERS=x` or `GONE=1`: the server calls `pay_nobody()`,
`select.poll_forever()` and `stop_writing`; `test_that_was_removed` shows it, and `ack_gone`;
see `no_such_file.py`.
```sh
python select_server.py chat
python -m tools.bench --no-such-option
python -m tools.changes no-such-server ack
make lint
```
```
usage: select_server.py [-h] {ack,broadcast,chat}
```
```
$ make check BROADCAST='x {port}'
checking (broadcast mode): x {port}
pass  broadcast_three_clients
pass  ack_one_client
pass  memory (pitfall 5): grew by 1 MB
skip  out-of-files (pitfall 9): not run: not on this machine
2 passed, 1 failed
```
"""


def test_readme_checks_fail_on_a_stale_readme() -> None:
    """The checks above can fail: each stale thing in a README or its guide is reported."""
    guide = "```sh\nmake lint\n```\n"
    problems = "\n".join([*readme_problems(STALE), *guide_problems(STALE, guide)])
    names = re.findall(r"`([^`]+)`", STALE.split("```")[0])  # each span of its prose is stale
    for stale in [f"`{name}`" for name in names] + [
        "`make lint`",
        "`python select_server.py chat` is refused",
        "`python -m tools.bench --no-such-option`",
        "`python -m tools.changes no-such-server ack` has ['no-such-server']",
        "the --help shown for select_server.py is not what it prints",
        "a report names ['ack_one_client']: no transcripts of ['broadcast']",
        "a report says memory shows pitfall 5: it shows rules 2 and 3",
        "'3 passed, 0 failed'",
        "the guide shows a block the README does not:\nmake lint\n",
        "the guide does not show the README's first block",
        "README.zh-CN.md is not linked",
        "README.md is not linked",
    ]:
        assert stale in problems, problems


# ---------------------------------------------------------------- the benchmark's smoke run


def run_bench(*args: str, status: int = 0) -> str:
    """What `python -m tools.bench --smoke` printed, its exit status checked. If it overruns,
    SIGTERM stops it and so its server and workers (a SIGKILL would leave them behind)."""
    command = [sys.executable, "-m", "tools.bench", "--smoke", *args]
    with popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as bench:
        try:
            out, err = bench.communicate(timeout=12 * WAIT)
        except subprocess.TimeoutExpired:
            bench.terminate()
            bench.communicate(timeout=WAIT)
            raise
    assert bench.returncode == status, out + err
    return out


@pytest.mark.linux_only("the bench's load generator uses epoll")
def test_bench_smoke_run_checks_every_byte_and_compares_with_its_own_asyncio_peer() -> None:
    """Tiny broadcast, ack and chat rows of the real server and of the bench's asyncio peer:
    every relayed byte checked, chat messages timed, the peer's rows and a ratio printed."""
    out = run_bench("--against", "asyncio")
    assert re.search(r"^broadcast 3x1 +ours .* all [\d,]+ MB checked", out, re.M), out
    assert re.search(r"^ack 2 clients +ours +[\d,]+ ", out, re.M), out
    chat = r"^chat 4 clients +ours +[\d,]+ .* all [\d.,]+ [kM]B checked, [1-9]\d* messages timed"
    assert re.search(chat, out, re.M), out
    assert re.search(r"^asyncio: .* tools\.bench --serve-asyncio \{mode\} ", out, re.M), out
    assert re.search(r"^chat 4 clients +asyncio +[\d,]+ .* messages timed", out, re.M), out
    assert re.search(r"^ +vs asyncio +x\d", out, re.M), out


@pytest.mark.linux_only("the bench's load generator uses epoll")
def test_bench_smoke_run_fails_when_relayed_bytes_are_wrong() -> None:
    """Against a relay that reverses every chunk, the broadcast row says FAILED, status 1."""
    reversing = check.command_line(server_command(changes=["reversing-relay"]))
    out = run_bench("--rows", "broadcast", "--server", reversing + " {mode} --quiet", status=1)
    failed = r"^broadcast 3x1 +ours +FAILED: .* is not what it sent"  # not: did not start
    assert re.search(failed, out, re.M), out


# ---------------------------------------------------------------- make check
# With the broken servers of tools/changes.py: each says where its mistake shows (shown_in).

SHOWN_BY_CHECK = {name: change.shown_in for name, change in BROKEN.items() if change.shown_in}
HOSTILE = {case.name: case for case in CASES}
SIZED_FOR_LINUX = "make check's hostile cases are sized to Linux's socket buffers and file limits"
SHOWN_BY_CASES = [(name, HOSTILE[case]) for name, c in BROKEN.items() for case in c.hostile]


def shown_in(pattern: str) -> set[str]:
    """The names of the transcripts whose text the pattern matches (a Change's shown_in)."""
    texts = {path.stem: path.read_text(encoding="utf-8") for path in transcript_files()}
    return {name for name, text in texts.items() if re.search(pattern, text, re.M)}


def without_slowness_notes(line: str) -> str:
    """A report's line without its note if all it notes is slowness (a busy machine's)."""
    result, _, note = line.partition(" (note: ")
    slow = all(re.search(r"(waited|came after) [\d.]+ s", part) for part in note.split("; "))
    return result if note and slow else line


def modes_shown_in(name: str) -> tuple[str, ...]:
    """The modes of the transcripts in which the broken server of this name fails."""
    return tuple(sorted({name.split("_")[0] for name in shown_in(SHOWN_BY_CHECK[name])}))


def checked(name: str) -> list[str]:
    """The report of a check of the broken server of this name, in the modes where its
    mistake shows, without generated sessions or hostile cases."""
    report: list[str] = []
    check.check([(our_command([name]), modes_shown_in(name))], 0, report.append, cases=[])
    return report


def checked_by_case(case: Case, changes: Sequence[str] = ()) -> list[str]:
    """The report of one hostile case, alone, against our server changed by changes, in
    the first mode it runs in."""
    report: list[str] = []
    command = our_command(changes)
    check.check([(command, case.modes[:1])], 0, report.append, [case], transcripts=False)
    return report


def test_check_passes_our_own_server() -> None:
    """`python -m tools.check --transcripts-only --examples 1` against this server: every
    transcript and the generated sessions pass, no hostile case runs, the report ends with
    the counts, and the exit status is 0."""
    ours = our_command()
    command = [sys.executable, "-m", "tools.check", "--server", ours, "--examples", "1"]
    command.append("--transcripts-only")
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=90)
    assert result.returncode == 0, result.stdout + result.stderr
    names = [path.stem for path in transcript_files()]
    assert [without_slowness_notes(line) for line in result.stdout.splitlines()] == [
        f"checking (ack and broadcast mode): {ours}",
        *(f"pass  {name}" for name in names),
        "pass  generated sessions (ack and broadcast): 1, each as the model predicts",
        f"{len(names) + 1} passed, 0 failed",
    ]


@pytest.mark.linux_only("make check waits on Linux's TCP table (netlink); elsewhere it pauses")
def test_check_fails_each_broken_server_on_exactly_the_transcripts_that_show_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each fails on one line with what was expected and what arrived. Against the one that
    answers b"ACK\n", the generated sessions fail too, with the session, shrunk, as a
    transcript: it passes against our server and fails against that one."""
    monkeypatch.setattr(CommandServer, "wait", 1.0)  # a missing byte: sooner
    monkeypatch.setattr(check, "SHRINK_SECONDS", 1.0)
    command = our_command(["ack-with-newline"])
    with ThreadPoolExecutor(len(SHOWN_BY_CHECK) + 1) as pool:
        reports = {name: pool.submit(checked, name) for name in SHOWN_BY_CHECK}
        # It may take a few sessions to fail (bounded: 30 s); then it has 1 s to shrink.
        deadline = time.monotonic() + 30
        generated = pool.submit(check.generated_result, command, ("ack",), 20, deadline)
    for name, pattern in SHOWN_BY_CHECK.items():
        report, failing = reports[name].result(), shown_in(pattern)
        failed = dict(re.findall(r"^FAIL  (\S+): (.*)", "\n".join(report), re.M))
        assert set(failed) == failing, "\n".join(report)
        for difference in failed.values():
            assert re.match(r"line \d+ `.*`: expected .*, arrived ", difference), difference
        passed = len(transcripts_of(modes_shown_in(name))) - len(failing)
        assert report[-1] == f"{passed} passed, {len(failing)} failed", "\n".join(report)
    name, difference, _ = generated.result()
    _, _, shrunk = str(difference).partition("; the session, shrunk:\n")
    assert name == "generated sessions (ack)" and shrunk, difference
    session = parse(textwrap.dedent(shrunk), "shrunk.txt")
    replay(session)
    with pytest.raises(TranscriptError):
        replay(session, partial(CommandServer, command))


def test_check_fails_fast_when_the_server_never_listens(monkeypatch: pytest.MonkeyPatch) -> None:
    """A command that runs but never listens fails the first transcript after WAIT
    seconds (not a hang), saying so plainly; the rest, and the hostile cases of its mode,
    are not run, and fail too; those of the other mode are not run, and said so."""
    monkeypatch.setattr(check, "WAIT", 0.5)
    sleeper = check.command_line([sys.executable, "-c", "import time; time.sleep(60)"])
    sleeper += " {port}"
    first, second, *_ = [transcript.name for transcript in transcripts_of(["ack"])]
    report: list[str] = []
    started = time.monotonic()
    assert check.check([(sleeper, ("ack",))], check.GENERATED, report.append) == 1
    assert time.monotonic() - started < 0.5 + 3.0
    assert report[1] == (
        f"FAIL  {first}: the server did not listen within 0.5 s: it printed no "
        "'listening on HOST:PORT' line, and nothing listens on the port put in {port}; "
        "it printed nothing"
    )
    assert report[2] == f"FAIL  {second}: not run: the server did not start"
    of_ack = [case for case in CASES if "ack" in case.modes]
    ruled_out = {case.name: ruled_out_here(case) for case in of_ack}
    assert report[-len(CASES) - 1 : -1] == [
        f"skip  {case.name} ({case.shows}): not run: no broadcast server given"
        if case not in of_ack
        else f"skip  {case.name} ({case.shows}): not run: {ruled_out[case.name]}"
        if ruled_out[case.name]
        else f"FAIL  {case.name} ({case.shows}): not run: the server did not start"
        for case in CASES
    ]
    failed = len(transcripts_of(["ack"])) + 1 + sum(not why for why in ruled_out.values())
    assert report[-1] == f"0 passed, {failed} failed"


def ruled_out_here(case: Case) -> str | None:
    """Why this machine does not run case, said before it starts a server (Windows has no
    file limit to lower, for example), or None where it would start one."""

    def never_starts(mode: str, **how: Any) -> ServerProcess:
        raise check.StartError(check.NOT_STARTED)

    try:
        case.run(never_starts, case.modes[0])
    except hostile.NotRun as why:
        return str(why)
    except check.StartError:
        return None
    raise AssertionError(f"{case.name} ran without a server")


def test_check_fails_at_once_when_the_server_exits() -> None:
    """A server that exits before it listens (here: our own, given an option it does not
    know) fails the check at once, with its last line in the report."""
    first = transcripts_of(["ack"])[0].name
    report: list[str] = []
    command = our_command() + " --no-such-option"
    assert check.check([(command, ("ack",))], 0, report.append, cases=[]) == 1
    assert report[1] == (
        f"FAIL  {first}: the server exited with status 2 before it listened; "
        "its last line: 'select_server.py: error: unrecognized arguments: --no-such-option'"
    )


# ---------------------------------------------------------------- make check's hostile cases
# Each case of tools/hostile.py passes this server; each broken server of tools/changes.py
# fails the cases that its Change names (hostile).


@pytest.mark.linux_only(SIZED_FOR_LINUX)
@pytest.mark.parametrize(
    "case", [pytest.param(c, marks=[pytest.mark.timing] * c.timed, id=c.name) for c in CASES]
)
def test_each_hostile_case_passes_our_own_server(case: Case) -> None:
    """One line, `pass`, naming the README pitfall or rule the case shows, and what was
    measured; the slow reader is dropped, and not before our grace."""
    report = checked_by_case(case)
    if report[1].startswith("skip  "):
        pytest.skip(report[1])
    assert report == [
        f"checking ({case.modes[0]} mode): {our_command()}",
        report[1],
        "1 passed, 0 failed",
    ]
    assert report[1].startswith(f"pass  {case.name} ({case.shows}): "), report[1]
    if case.name == "slow-reader":  # our policy: a reader this slow is dropped after 2 s
        dropped = re.search(r" was dropped after ([\d.]+) s;", report[1])
        assert dropped and float(dropped[1]) >= Settings("broadcast").grace, report[1]


@pytest.mark.linux_only(SIZED_FOR_LINUX)
def test_check_fails_each_broken_server_on_the_hostile_cases_that_show_it() -> None:
    """Each broken server fails each hostile case its Change names (it dies, spins, grows
    past the bound, or loses a message), all at once, a thread each; none of them is a
    timed case, which would measure against the clock."""
    assert SHOWN_BY_CASES, "no broken server names a hostile case"
    timed = [f"{name}: {case.name}" for name, case in SHOWN_BY_CASES if case.timed]
    assert not timed, f"a timed case would run here beside others: {timed}"
    with ThreadPoolExecutor(len(SHOWN_BY_CASES)) as pool:
        reports = [pool.submit(checked_by_case, case, [name]) for name, case in SHOWN_BY_CASES]
    for (name, case), report in zip(SHOWN_BY_CASES, reports):
        lines = report.result()
        assert lines[1].startswith(f"FAIL  {case.name} ({case.shows}): "), (name, lines)
        assert lines[-1] == "0 passed, 1 failed", (name, lines)


@pytest.mark.linux_only(SIZED_FOR_LINUX)
def test_check_fails_a_copy_per_client_that_stays_under_the_memory_bound() -> None:
    """A copy of each chunk per client, each owed 256 KiB at most: under the bound with 90
    clients, but the memory case fails it all the same, for growing with their number."""
    report: list[str] = []
    small_copies = our_command(["copy-per-client"]) + " --max-buffer 262144"
    memory = HOSTILE["memory"]
    check.check([(small_copies, ("broadcast",))], 0, report.append, [memory], False)
    assert re.match(r"FAIL  memory \(rules 2 and 3\): .*: it grows with their number$", report[1])


def test_check_says_which_hostile_cases_it_cannot_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """A case of a mode no server was given for, or one the machine does not allow, is said
    (`skip`, why) and counted neither way; no server is started for it."""
    monkeypatch.setattr(hostile, "can_open", lambda files: False)
    broadcast_only = [case for case in CASES if "ack" not in case.modes]
    past_fd_setsize = HOSTILE["past-fd-setsize"]
    report: list[str] = []
    never_started = "false {mode} {port}"  # no server: /bin/false exits at once
    cases = [*broadcast_only, past_fd_setsize]
    assert check.check([(never_started, ("ack",))], 0, report.append, cases, False) == 1
    not_allowed = (
        "Windows has no file limit to raise, and select() counts sockets there"
        if sys.platform == "win32"
        else "this process may not open 1,100 sockets"
    )
    assert report[1:] == [
        *(
            f"skip  {c.name} ({c.shows}): not run: no broadcast server given"
            for c in broadcast_only
        ),
        f"skip  {past_fd_setsize.name} ({past_fd_setsize.shows}): not run: {not_allowed}",
        "0 passed, 0 failed",
    ]


# ---------------------------------------------------------------- the README's core, checked


CORE = re.compile(r"^```python\n(?P<code>(?:(?!^```).)*?^class Server\b.*?)^```$", re.M | re.S)


@pytest.fixture
def readme_core(tmp_path: Path) -> str:
    """make check's command line for the README's core listing (its python block that
    holds class Server), taken from README.md into a file."""
    match = CORE.search((ROOT / "README.md").read_text(encoding="utf-8"))
    assert match is not None, "README.md shows no core (a python block with class Server)"
    core = tmp_path / "core.py"
    core.write_text(match["code"], encoding="utf-8")
    return f"{check.command_line([sys.executable, str(core)])} {{mode}} --port {{port}}"


def test_readme_core_passes_every_transcript_and_the_generated_sessions(readme_core: str) -> None:
    """The core the README shows, as make check runs it: every transcript and the 20
    generated sessions, judged on the wire."""
    report: list[str] = []
    modes = ("ack", "broadcast")
    everything = check.check([(readme_core, modes)], check.GENERATED, report.append, [])
    assert everything == 0 and report[-1].endswith(" passed, 0 failed"), "\n".join(report)


@pytest.mark.linux_only(SIZED_FOR_LINUX)
def test_readme_core_fails_the_hostile_cases_the_readme_says_it_fails(readme_core: str) -> None:
    """What the README says the core leaves out, make check finds: the cases the README
    names (`it fails NAME`) fail, and every other case that is not timed passes."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    said = set(re.findall(r"it\s+fails `([a-z-]+)`", readme))
    assert said, "README.md names no case that its core fails"
    cases = [case for case in CASES if not case.timed or case.name in said]
    report: list[str] = []
    check.check([(readme_core, ("ack", "broadcast"))], 0, report.append, cases, False)
    lines = re.findall(r"^(pass|FAIL)  ([a-z-]+) ", "\n".join(report), re.M)
    verdicts = {name: verdict for verdict, name in lines}
    assert set(verdicts) == {case.name for case in cases}, "\n".join(report)
    assert {name for name, verdict in verdicts.items() if verdict == "FAIL"} == said, report
