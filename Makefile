# Two commands: `make run` and `make test`. Both create .venv from requirements if missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test bench clean-venv

$(BIN)/.installed: requirements.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -r requirements.txt
	touch $@

$(BIN)/.test-installed: $(BIN)/.installed requirements-test.txt
	$(BIN)/pip install -q --disable-pip-version-check -r requirements-test.txt
	touch $@

run: $(BIN)/.installed
	$(BIN)/python app.py $(ARGS)

test: $(BIN)/.test-installed
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(BIN)/.installed
	HF_HUB_OFFLINE=1 $(BIN)/python bench/txt2img.py

clean-venv:
	rm -rf $(VENV)
