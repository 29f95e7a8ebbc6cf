# `make test` needs nothing but python3 (3.11 or newer, for the pinned test tools; the
# server itself runs on 3.8) on PATH: it builds .venv itself.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SOURCES := select_server.py test_transcripts.py bench.py
PORT ?= 8000
FUZZ_SECONDS ?= 600

.PHONY: test ack broadcast record fuzz bench clean

test: $(VENV)/installed
	$(BIN)/ruff check --target-version py38 --line-length 100 --select E,W,F,I,UP,B,FA,SIM $(SOURCES)
	$(BIN)/ruff format --check --line-length 100 $(SOURCES)
	$(BIN)/mypy --strict $(SOURCES)
	$(BIN)/pytest -q -p no:cacheprovider test_transcripts.py

ack broadcast:
	$(PYTHON) select_server.py $@ --port $(PORT)

# Rewrites transcripts from what the server sends now: review with `git diff`.
record: $(VENV)/installed
	$(BIN)/python test_transcripts.py record $(T)

# Generated sessions for FUZZ_SECONDS (10 minutes), in rounds of 200 with new random
# seeds. A failure stops it and prints the shrunk session as a transcript to save.
fuzz: $(VENV)/installed
	@end=$$(( $$(date +%s) + $(FUZZ_SECONDS) )); round=0; \
	while [ $$(date +%s) -lt $$end ]; do \
	  round=$$((round + 1)); echo "fuzz round $$round: 200 generated sessions"; \
	  HYPOTHESIS_PROFILE=fuzz FUZZ_EXAMPLES=200 $(BIN)/pytest -q -p no:cacheprovider \
	    test_transcripts.py -k generated_sessions || exit 1; \
	done

# Side by side with the asyncio peer in bench.py and, when it is there, the select()
# ceiling peer next to this repository (an optional extra): each row three times, the
# servers taking turns to go first: four to five minutes. `make test` runs only --smoke.
CEILING := $(wildcard ../shared/peers/select_ceiling.py)
bench:
	$(PYTHON) bench.py --against asyncio $(if $(CEILING),--against 'python $(CEILING) {mode}') \
	  --repeat 3 --seconds 1 --warmup 0.5

$(VENV)/installed: requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis __pycache__
