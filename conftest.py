"""pytest's set-up for test_transcripts.py: the start_server fixture, the markers, and
hypothesis's profiles. The machinery itself is in tools/."""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any, Iterator

import pytest
from hypothesis import settings

from tools.harness import (
    WINE,
    WINE_DIFFERS,
    ServerProcess,
    StartServer,
    can_open,
    console_for_stop_events,
    has_ipv6_loopback,
    pythons_line,
)

MARKERS = {
    "timing": "its server must act in time: run one after another on one xdist worker",
    "linux_only(why)": "needs what only Linux has (why): skipped elsewhere, saying so",
    "posix_only(why)": "needs what Windows lacks (why): skipped there, saying so",
    "ipv6": "needs an IPv6 loopback (::1)",
    "open_files(n)": "opens n files and sockets at once: skipped where the limit forbids",
}

# make test: 20 generated sessions, the same every run; make fuzz: new ones, many more.
FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "200"))  # per round of `make fuzz`
settings.register_profile("test", max_examples=20, derandomize=True, deadline=None)
settings.register_profile("fuzz", max_examples=FUZZ_EXAMPLES, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "test"))


def pytest_configure(config: pytest.Config) -> None:
    for marker, meaning in MARKERS.items():
        config.addinivalue_line("markers", f"{marker}: {meaning}")
    console_for_stop_events()


def pytest_report_header() -> list[str]:
    return [pythons_line(), *([WINE_DIFFERS] if WINE else [])]


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tests whose server must act in time (within a grace, or a chat's delay) run one
    after another on one pytest-xdist worker (make test's --dist loadgroup), so that none
    slows another down."""
    for item in items:
        if item.get_closest_marker("timing"):
            item.add_marker(pytest.mark.xdist_group("timing"))


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip, saying why, a test that this machine cannot run."""
    linux = item.get_closest_marker("linux_only")
    if linux and not sys.platform.startswith("linux"):
        pytest.skip(f"needs Linux: {linux.args[0]}")
    posix = item.get_closest_marker("posix_only")
    if posix and sys.platform == "win32":
        pytest.skip(f"not on Windows: {posix.args[0]}")
    if item.get_closest_marker("ipv6") and not has_ipv6_loopback():
        pytest.skip("no IPv6 loopback")
    files = item.get_closest_marker("open_files")
    if files and not can_open(files.args[0]):
        pytest.skip(f"this process may not open {files.args[0]} files and sockets")


@pytest.fixture
def start_server() -> Iterator[StartServer]:
    """Start servers (ServerProcess's arguments), each killed with its clients at the end."""
    with contextlib.ExitStack() as started:

        def start(mode: str, *args: str, **options: Any) -> ServerProcess:
            return started.enter_context(ServerProcess(mode, *args, **options))

        yield start
