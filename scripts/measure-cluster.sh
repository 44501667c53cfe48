#!/usr/bin/env bash
# Cluster figures (see measure-cluster.py): metadata propagation, controller failover after
# SIGKILL, broker fencing after SIGSTOP, idle RSS per node; three release `strom server`
# processes in combined mode on this machine. Uses confluent-kafka from the compat suite's
# venv (target/compat-venv, made by tests/compat/run.sh when missing).
# STROM=/path/to/strom measures that binary instead of building target/release/strom.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${STROM:-}" ]; then
  cargo build --release --ignore-rust-version -p strom >/dev/null 2>&1
  STROM=$PWD/target/release/strom
fi
if [ ! -x target/compat-venv/bin/python ]; then
  bash tests/compat/run.sh -k nothing-matches >/dev/null 2>&1 || true
fi
STROM=$STROM exec target/compat-venv/bin/python scripts/measure-cluster.py
