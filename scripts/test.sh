#!/usr/bin/env bash
# Runs every test of strom: the Rust workspace (unit, property, crash, hostile-input and
# integration tests against real server processes with librdkafka) and the compatibility
# suite of real clients (tests/compat: confluent-kafka, kafka-python, aiokafka, kcat;
# tests/compat-js: kafkajs).
# Installs what the tests need by itself.
set -euo pipefail
cd "$(dirname "$0")/.."

# krabka-protocol (the request decoder) declares rust-version 1.98.1 but builds on 1.95.
CARGO_FLAGS=(--ignore-rust-version)

. scripts/deps.sh

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "cargo-nextest missing: installing it"
  cargo install --locked cargo-nextest
fi

cargo nextest run "${CARGO_FLAGS[@]}" --workspace --no-fail-fast "$@"

if [ -f tests/compat/run.sh ]; then
  bash tests/compat/run.sh
fi

if [ -f tests/compat-js/run.sh ]; then
  bash tests/compat-js/run.sh
fi
