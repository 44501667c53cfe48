#!/usr/bin/env bash
# The client compatibility suite: confluent-kafka, kafka-python, aiokafka and kcat against a
# real `strom server` (each pytest session starts its own; see conftest.py), then again
# against a three-node cluster that the clients know by one node's address
# (STROM_COMPAT_CLUSTER=3; set it yourself to run only that).
#
# Installs what it needs, as root on Debian 12: kcat, python3 and python3-venv from Debian
# when missing; the pinned Python clients (requirements.txt) in a venv at target/compat-venv,
# rebuilt only when requirements.txt changed. Builds target/debug/strom when it is missing or
# older than the sources. Extra arguments go to pytest (e.g. -k kcat, -x, -v).
# Exits with pytest's status: non-zero when a test failed.
set -euo pipefail
cd "$(dirname "$0")/../.."

apt_updated=0
apt_install() {
  echo "compat: installing $* from Debian"
  if [ "$apt_updated" = 0 ]; then
    apt-get update -qq
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

command -v kcat >/dev/null 2>&1 || apt_install kcat
command -v python3 >/dev/null 2>&1 || apt_install python3

venv=target/compat-venv
stamp="$venv/.requirements.sha256"
want=$(sha256sum tests/compat/requirements.txt | cut -d' ' -f1)
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c '' 2>/dev/null || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "compat: creating $venv"
  rm -rf "$venv"
  if ! python3 -m venv "$venv" >/dev/null 2>&1; then
    # Debian's python3 makes venvs with pip only once python3-venv is installed.
    rm -rf "$venv"
    apt_install python3-venv
    python3 -m venv "$venv"
  fi
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -r tests/compat/requirements.txt
  echo "$want" >"$stamp"
fi

bin=target/debug/strom
if [ ! -x "$bin" ] || [ -n "$(find Cargo.toml Cargo.lock crates -newer "$bin" \
    \( -name '*.rs' -o -name Cargo.toml -o -name build.rs \) -not -path '*/tests/*' -not -path '*/benches/*' \
    -print -quit 2>/dev/null)" ] || [ Cargo.lock -nt "$bin" ]; then
  echo "compat: building $bin"
  cargo build --ignore-rust-version -p strom
fi

export STROM_BIN="$PWD/$bin"
export PYTHONDONTWRITEBYTECODE=1
pytest=("$venv/bin/python" -m pytest tests/compat -q -p no:cacheprovider -W ignore::DeprecationWarning "$@")
if [ -n "${STROM_COMPAT_CLUSTER:-}" ]; then
  exec "${pytest[@]}"
fi
echo "compat: one node"
"${pytest[@]}"
echo "compat: a three-node cluster"
STROM_COMPAT_CLUSTER=3 "${pytest[@]}"
