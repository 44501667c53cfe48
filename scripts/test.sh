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

# Debian packages: cmake and the curl/ssl headers build librdkafka for the rdkafka crate.
need=()
command -v cmake >/dev/null 2>&1 || need+=(cmake)
# kcat (librdkafka 2.0.2 on Debian 12): an old client, and a group member the tests can kill.
command -v kcat >/dev/null 2>&1 || need+=(kcat)
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
dpkg -s libssl-dev >/dev/null 2>&1 || need+=(libssl-dev)
dpkg -s zlib1g-dev >/dev/null 2>&1 || need+=(zlib1g-dev)
dpkg -s libcurl4-openssl-dev >/dev/null 2>&1 || dpkg -s libcurl4-gnutls-dev >/dev/null 2>&1 || need+=(libcurl4-openssl-dev)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

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
