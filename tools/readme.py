"""Whether a README is true: what it names exists, what it runs runs so, what it shows of
a program's output is what the program prints.

readme_problems() reads README.md, README.zh-CN.md or a page of docs/ and says what is not
so; guide_problems() holds the Chinese guide to the README's commands and code. Their
tests are in test_transcripts.py, with a stale README to show that they can fail.
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import errno
import functools
import importlib
import io
import os
import re
import select
import shlex
import signal
import socket
import subprocess
import sys
from typing import Iterator

import select_server
from tools.changes import CHANGES
from tools.harness import ROOT, TRANSCRIPTS
from tools.hostile import CASES

# The pages a reader reads, every one of them checked: the READMEs and docs/.
DOCUMENTS = [
    path.relative_to(ROOT).as_posix()
    for path in [*sorted(ROOT.glob("README*.md")), *sorted(ROOT.glob("docs/*.md"))]
]
# The files whose names a page may use: the server, the tests and the tools.
PYTHON_FILES = [
    path.relative_to(ROOT).as_posix()
    for path in [ROOT / "select_server.py", *sorted(ROOT.glob("*test*.py"))]
    + sorted(ROOT.glob("tools/*.py"))
]
FENCE = re.compile(r"^```(?P<lang>[\w-]*)\n(?P<body>.*?)^```$", re.M | re.S)
SPAN = re.compile(r"``(.+?)``|`([^`]+)`", re.S)
STDLIB = "asyncio|builtins|errno|os|select|selectors|signal|socket|sys"  # as `module.name`
# A span that names something, by its shape: the group that matches says what. Any other
# span (prose, bytes, an option, a lower-case word: too often an ordinary one) is no name.
NAME = re.compile(
    r"make (?P<make_command>.+)"
    r"|(?P<make_variable>[A-Z][A-Z0-9_]*)=\S*"
    r"|(?P<file>(?:transcripts/|docs/|tools/|\.ci/)?[\w.-]+\.(?:py|txt|md)|[a-z]+/|\.ci/run)"
    rf"|(?P<stdlib_name>(?:{STDLIB})(?:\.\w+)+)(?:\([^()]*\))?"
    r"|(?:[A-Za-z_][\w.]*\.)?(?P<function>[A-Za-z_]\w*)\([^()]*\)"  # sock.fileno(): ours
    r"|(?P<test>test_.*)"
    r"|(?P<transcript>(?:ack|broadcast)_\w+)"
    r"|(?P<name>[a-z]+(?:_[a-z0-9]+)+|[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)",
    re.S,
)
MAKE_RUN = re.compile(r"(?:^\s*(?:\$ )?|\bor: )(make [^#\n)]*)", re.M)  # "or: make ack"
# `python select_server.py ARGS` or `python -m tools.NAME ARGS` (in a comment too).
PYTHON_RUN = re.compile(r"\bpython3? (select_server\.py|-m tools\.\w+)((?: [^\s#'\"()]+)*)")


def known_names() -> dict[str, set[str]]:
    """What a README may name, by the group of NAME: read from the files, never by hand."""
    defs: set[str] = set()  # functions, methods and classes
    names: set[str] = set()  # every other identifier: variables, attributes, arguments
    for file in PYTHON_FILES:
        for node in ast.walk(ast.parse((ROOT / file).read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                defs.add(node.name)
            elif isinstance(node, (ast.Name, ast.Attribute, ast.arg)):  # its id, attr or arg
                names.update(getattr(node, field, "") for field in ("id", "attr", "arg"))
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    called = [builtins, socket, socket.socket, bytes, select, signal, os]  # send(), select()
    stdlib = {name for module in called for name in dir(module)}
    return {
        "make_variable": set(re.findall(r"\b[A-Z][A-Z0-9_]*\b", makefile)),
        "target": set(" ".join(re.findall(r"^([a-z][\w -]*):(?!=)", makefile, re.M)).split()),
        "function": defs | stdlib,
        "test": {name for name in defs if name.startswith("test_")},
        "transcript": {path.stem for path in TRANSCRIPTS.glob("*.txt")},
        "name": names | defs | stdlib | set(dir(errno)) | {"TIME_WAIT"},  # a TCP state
    }


def exists(kind: str, name: str, known: dict[str, set[str]]) -> bool:
    """Whether the name that a group of NAME matched is in the repository."""
    if kind == "make_command":  # TARGET... VARIABLE=value...
        words = [word.partition("=") for word in shlex.split(name)]  # (name, "=" or "", value)
        return all(w in known["make_variable" if is_set else "target"] for w, is_set, _ in words)
    if kind == "file":
        return (ROOT / name).exists()
    if kind != "stdlib_name":
        return name in known[kind]
    module, *attributes = name.split(".")
    with contextlib.suppress(AttributeError):  # module.name.name...: getattr, and again
        functools.reduce(getattr, attributes, importlib.import_module(module))
        return True
    return False


def readme_problems(text: str) -> Iterator[str]:
    """What a README names or shows that is not so: a name (in a span, or a make command
    in a block) that the repository lacks, a run of our files, or a program's output."""
    known = known_names()
    blocks = [body for _, body in FENCE.findall(text)]  # of (language, body) pairs
    prose = FENCE.sub("", re.sub(r"<!--.*?-->", "", text, flags=re.S))  # no blocks, comments
    spans = [" ".join((match[1] or match[2]).split()) for match in SPAN.finditer(prose)]
    makes = [match[1].strip() for body in blocks for match in MAKE_RUN.finditer(body)]
    for span in spans + makes:
        match = NAME.fullmatch(span)
        if match and match.lastgroup and not exists(match.lastgroup, match[match.lastgroup], known):
            yield f"`{span}`: no such {match.lastgroup.replace('_', ' ')}"
    for run in [match for part in blocks + spans for match in PYTHON_RUN.finditer(part)]:
        problem = run_problem(run[1], run[2].split())
        if problem is not None:
            yield f"`{run[0]}` {problem}"
    for body in blocks:
        yield from output_problems(body, known["transcript"])


@functools.lru_cache(maxsize=None)
def program_help(program: str) -> str:
    """What `python PROGRAM --help` prints at 80 columns (PROGRAM: a file, or -m and a
    module, with a subcommand after it if it has them)."""
    command = [sys.executable, *program.split(), "--help"]
    wide = {**os.environ, "COLUMNS": "80"}
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=30, env=wide)
    assert result.returncode == 0, f"{command} fails: {result.stdout + result.stderr}"
    text = result.stdout.replace("optional arguments:", "options:")  # argparse before 3.10
    if sys.platform == "win32":  # the README shows the limit of Linux and macOS
        text = text.replace(f"at most {select_server.MOST_CLIENTS}", "at most 1000")
        text = text.replace(f"(default: {select_server.MOST_CLIENTS})", "(default: 1000)")
    return text


def run_problem(program: str, args: list[str]) -> str | None:
    """What is wrong with `python PROGRAM ARGS...`: what the program refuses or lacks. In a
    make check command line, {mode} and {port} stand for a mode and a port."""
    args = [arg.replace("{mode}", "ack").replace("{port}", "8000") for arg in args]
    if program == "select_server.py":
        if "--help" in args:
            return None
        with contextlib.redirect_stderr(io.StringIO()) as said:
            try:
                select_server.parse_args(args)
            except SystemExit:
                return f"is refused: {said.getvalue().strip().splitlines()[-1]}"
        return None
    if program == "-m tools.changes":  # NAME[,NAME] MODE ..., --list or --table
        words = args[:1] if args[:1] not in ([], ["--list"], ["--table"], ["NAME"]) else []
        unknown = [name for word in words for name in word.split(",") if name not in CHANGES]
    elif program == "-m tools.transcript" and args[:1] == ["record"]:
        unknown = [path for path in args[1:] if not (ROOT / path).is_file()]
    else:
        printed = program_help(program)
        unknown = [arg for arg in args if arg.startswith("--") and arg not in printed]
    return f"has {unknown}, which it does not know" if unknown else None


def output_problems(body: str, transcripts: set[str]) -> Iterator[str]:
    """What is wrong with a block of a program's output: --help that it does not print, a
    transcript that is no file, a make check report that names what is no transcript of
    the mode it checks, or that does not add up."""
    usage = re.match(r"usage: (select_server\.py|python -m tools\.\w+)", body)
    if usage:
        program = usage[1].replace("python ", "")
        if body.split() != program_help(program).split():  # word by word: at any width
            yield f"the --help shown for {usage[1]} is not what it prints"
    files = [path.read_text(encoding="utf-8") for path in TRANSCRIPTS.glob("*")]
    if re.search(r"^mode (ack|broadcast)$", body, re.M) and body not in files:
        yield f"a transcript shown is no file of transcripts/:\n{body}"
    if body.startswith("$ make check"):
        yield from report_problems(body, transcripts)


def report_problems(body: str, transcripts: set[str]) -> Iterator[str]:
    """What is wrong with a make check report shown: a line that names a transcript that
    is no file, or not of the modes it checks, or a hostile case that is none, or under
    another pitfall or rule than its own; a last line that does not add up (a case that
    was not run, `skip`, counts neither way)."""
    modes = " ".join(re.findall(r"^checking \((.*) mode\)", body, re.M)).split()
    results = re.findall(r"^(pass|FAIL)  ([^:( \n]+)", body, re.M)
    named = {name for _, name in results} - {"generated"} - {case.name for case in CASES}
    of_modes = {name for name in transcripts if name.split("_")[0] in modes}
    if named - of_modes:
        yield f"a report names {sorted(named - of_modes)}: no transcripts of {modes}"
    shows = {case.name: case.shows for case in CASES}
    for name, said in re.findall(r"^(?:pass|FAIL|skip)  ([\w-]+) \(([^)]*)\):", body, re.M):
        if name in shows and said != shows[name]:
            yield f"a report says {name} shows {said}: it shows {shows[name]}"
    passed = [verdict for verdict, _ in results].count("pass")
    if not body.rstrip().endswith(f"{passed} passed, {len(results) - passed} failed"):
        yield f"a report does not end with '{passed} passed, {len(results) - passed} failed'"


def guide_problems(english: str, guide: str) -> Iterator[str]:
    """A block of README.zh-CN.md that README.md does not have (translations aside), the
    README's first block (the set-up) missing, or a link to the other file not on top."""

    def untranslated(language: str, body: str) -> tuple[str, str]:
        """A code block without what a guide may translate: comments, a diagram's labels."""
        if language == "mermaid":
            body = re.sub(r'"[^"]*"', '""', body)
        elif language in ("sh", "python"):
            body = "\n".join(re.sub(r"(^|\s+)#.*$", "", line) for line in body.splitlines())
        return language, body

    english_blocks = [untranslated(*block) for block in FENCE.findall(english)]
    guide_blocks = [untranslated(*block) for block in FENCE.findall(guide)]
    for _, body in set(guide_blocks) - set(english_blocks):
        yield f"the guide shows a block the README does not:\n{body}"
    if english_blocks[0] not in guide_blocks:
        yield "the guide does not show the README's first block"
    for text, other in [(english, "README.zh-CN.md"), (guide, "README.md")]:
        if f"({other})" not in "".join(text.splitlines()[:5]):
            yield f"{other} is not linked in the first lines of the other"
