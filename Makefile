# Polybus: the two set-up commands are `make demo` and `make test`.
SHELL := bash
.SHELLFLAGS := -euo pipefail -c

# A target directory outside the checkout survives fresh clones on the same machine, so CI
# and new worktrees build incrementally.
export CARGO_TARGET_DIR ?= $(HOME)/.cache/polybus/target
# The virtual environment the Python package is built and tested in.
export POLYBUS_VENV ?= $(HOME)/.cache/polybus/venv
CARGO ?= cargo

.PHONY: demo demo-rust test deps python lint brokers-up brokers-down test-all bench bench-smoke

## demo: the main job on the embedded in-memory broker (the Python quickstart)
demo: python
	$(POLYBUS_VENV)/bin/python examples/python/quickstart.py

## demo-rust: the same job written against the Rust core
demo-rust:
	$(CARGO) run --quiet -p polybus --example quickstart

## test: install and start what the tests need, lint, run the demos, then every test suite
test: deps lint brokers-up demo demo-rust test-all

deps:
	scripts/install-toolchain.sh
	scripts/install-php.sh

## python: the virtual environment with the package built into it (maturin develop)
python:
	scripts/python-env.sh

lint: python
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(POLYBUS_VENV)/bin/ruff check bindings-python examples/python benches
	$(POLYBUS_VENV)/bin/ruff format --check bindings-python examples/python benches

test-all: python
	scripts/run-tests.sh

## brokers-up / brokers-down: real servers on loopback for the broker backends
brokers-up:
	scripts/brokers.sh up

brokers-down:
	scripts/brokers.sh down

## bench: the benchmark suite, Polybus against the clients it replaces, on the real brokers
## (release builds; results in benches/results/, see benches/README.md). Options go in
## BENCH_ARGS, e.g. make bench BENCH_ARGS="--only 'py-kafka-*' --messages 20000"
BENCH_ARGS ?=
bench:
	scripts/bench.sh $(BENCH_ARGS)

## bench-smoke: every benchmark scenario once with tiny counts (part of `make test`)
bench-smoke:
	scripts/bench.sh --smoke $(BENCH_ARGS)
