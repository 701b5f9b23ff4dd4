# Two commands: `make run` and `make test`. Both create .venv from requirements if missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test bench clean-venv chromium screenshots

$(BIN)/.installed: requirements.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -r requirements.txt
	touch $@

$(BIN)/.test-installed: $(BIN)/.installed requirements-test.txt
	$(BIN)/pip install -q --disable-pip-version-check -r requirements-test.txt
	touch $@

run: $(BIN)/.installed
	$(BIN)/python app.py $(ARGS)

# The browser tests drive Debian's Chromium: installed here where we may (root with apt), else one line says how.
chromium:
	@command -v chromium >/dev/null 2>&1 || test -x /usr/bin/chromium || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing chromium for the browser tests (apt-get)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else \
	    echo "make test needs Chromium at /usr/bin/chromium: run 'sudo apt-get install chromium' (Debian/Ubuntu) and try again"; \
	    exit 1; \
	  fi; }

test: $(BIN)/.test-installed chromium
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -n 2 --durations=15 $(PYTEST_ARGS)

# The README's screenshots, taken by the browser tests from the real page.
screenshots: $(BIN)/.test-installed chromium
	WORKBENCH_SCREENSHOTS=$(CURDIR)/docs/screenshots HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m browser

bench: $(BIN)/.installed
	HF_HUB_OFFLINE=1 $(BIN)/python bench/txt2img.py

clean-venv:
	rm -rf $(VENV)
