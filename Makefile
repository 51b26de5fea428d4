# One entry point. `make run` and `make test` each install everything first (idempotent, quick when done).
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup run test test-unit test-host test-vm lint proto bench clean

setup:
	@bash scripts/setup.sh

run: setup
	$(VENV)/bin/hostwarden daemon

# All three tiers: unit + host on this kernel, then vm inside one QEMU boot of Debian's stock kernel.
test: setup lint test-unit test-host test-vm

test-unit: setup
	$(PY) -m pytest -m unit $(PYTEST_ARGS) tests/unit

test-host: setup
	$(PY) -m pytest -m host $(PYTEST_ARGS) tests/host

test-vm: setup
	tests/vm/run -- $(PY) -m pytest -m vm -p no:cacheprovider $(PYTEST_ARGS) tests/vm

lint: setup
	$(VENV)/bin/ruff check .

proto: setup
	$(PY) proto/generate.py

bench: setup
	$(PY) bench/run_all.py --quick

clean:
	rm -rf $(VENV) .vm-cache build *.egg-info
