# fusionrank: two commands set everything up on a fresh machine.
#   make demo   - install (pinned) and run the main job on fashion44k
#   make test   - install (pinned) and run the test suite
#   make loop   - after make demo: serve -> simulated shoppers -> retrain -> interleave -> promote, 3 rounds
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)

.PHONY: install browser postgres demo loop serve test test-slow bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch==2.13.0 is pinned in pyproject and installed in the same command (CPU build)
	$(BIN)/pip install --quiet -e ".[all]"
	touch $(STAMP)

install: $(STAMP)

# Debian's Chromium for the web page's browser test (no browser download at test time)
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium >/dev/null; }

# Debian's PostgreSQL server binaries for the event store's PostgreSQL tests (a throwaway server per test run)
postgres:
	@ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq postgresql >/dev/null; }

demo: install
	$(BIN)/fusionrank demo

loop: install
	$(BIN)/fusionrank loop --serve

test: install browser postgres
	FUSIONRANK_REQUIRE_BROWSER=1 FUSIONRANK_REQUIRE_POSTGRES=1 $(BIN)/python -m pytest -q

test-slow: install
	$(BIN)/python -m pytest -q -m slow

clean:
	rm -rf $(VENV) .pytest_cache
