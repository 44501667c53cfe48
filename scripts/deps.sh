# Sourced by scripts/test.sh and scripts/bench.sh: the Debian packages that building
# librdkafka (the rdkafka crate, used by the tests and the benchmark client) and the tests
# need, installed when missing.
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
  echo "installing ${need[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
