#!/usr/bin/env bash
# Runs every test of strom: the Rust workspace (unit, property, crash and integration tests
# against real server processes) and, once present, the compatibility suite of real clients.
# Installs what the tests need by itself.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "cargo-nextest missing: installing it"
  cargo install --locked cargo-nextest
fi

cargo nextest run --workspace --no-fail-fast --cargo-profile test "$@"
