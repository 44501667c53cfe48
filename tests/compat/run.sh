#!/usr/bin/env bash
# The client compatibility suite: confluent-kafka, kafka-python, aiokafka and kcat against a
# real `strom server`. Installs what it needs: kcat and python3-venv from Debian when
# missing, the Python clients in a venv under target/ (rebuilt when requirements change).
set -euo pipefail
cd "$(dirname "$0")/../.."

if ! command -v kcat >/dev/null 2>&1 || ! python3 -m venv --help >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kcat python3-venv >/dev/null
fi

venv=target/compat-venv
stamp="$venv/.requirements.sha256"
want=$(sha256sum tests/compat/requirements.txt | cut -d' ' -f1)
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r tests/compat/requirements.txt
  echo "$want" >"$stamp"
fi

cargo build -q --ignore-rust-version -p strom
export STROM_BIN="$PWD/target/debug/strom"
exec "$venv/bin/python" -m pytest tests/compat -q -p no:cacheprovider -W ignore::DeprecationWarning "$@"
