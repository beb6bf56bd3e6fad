# Polybus: the two set-up commands are `make demo` and `make test`.
SHELL := bash
.SHELLFLAGS := -euo pipefail -c

# A target directory outside the checkout survives fresh clones on the same machine, so CI
# and new worktrees build incrementally.
export CARGO_TARGET_DIR ?= $(HOME)/.cache/polybus/target
CARGO ?= cargo

.PHONY: demo test deps lint test-all brokers-up brokers-down

## demo: the main job on the embedded in-memory broker
demo:
	$(CARGO) run --quiet -p polybus --example quickstart

## test: install and start what the tests need, lint, run the demo, then every test suite
test: deps lint brokers-up demo test-all

deps:
	scripts/install-toolchain.sh

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

test-all:
	scripts/run-tests.sh

## brokers-up / brokers-down: real servers on loopback for the broker backends
brokers-up:
	scripts/brokers.sh up

brokers-down:
	scripts/brokers.sh down
