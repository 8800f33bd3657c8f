#!/usr/bin/env bash
# Makes sure a NATS server with JetStream answers on 127.0.0.1:4222 (tests/nats.rs uses it).
# When none answers: installs Debian's `nats-server` package if it is missing, and starts
# `nats-server -a 127.0.0.1 -p 4222 -js -sd DIR` in the background, its store and log
# (nats.log) in DIR = $HOME/.cache/inferno/nats. It keeps running after the tests.
# Usage: ops/nats.sh
set -euo pipefail
host=127.0.0.1
port=4222

# The first line a NATS server sends is `INFO {...}`; JetStream shows as "jetstream":true.
info() {
  timeout 2 bash -c "exec 3<>/dev/tcp/$host/$port && head -n 1 <&3" 2>/dev/null || true
}

line="$(info)"
if [[ "$line" == INFO* ]]; then
  if [[ "$line" != *'"jetstream":true'* ]]; then
    echo "nats: the NATS server on $host:$port runs without JetStream (start it with -js)" >&2
    exit 1
  fi
  echo "nats: a NATS server with JetStream answers on $host:$port"
  exit 0
fi

bin="$(command -v nats-server || true)"
[ -z "$bin" ] && [ -x /usr/sbin/nats-server ] && bin=/usr/sbin/nats-server
if [ -z "$bin" ]; then
  echo "nats: installing nats-server"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nats-server >/dev/null
  bin="$(command -v nats-server || echo /usr/sbin/nats-server)"
fi

dir="$HOME/.cache/inferno/nats"
mkdir -p "$dir"
echo "nats: starting $bin on $host:$port (JetStream store $dir)"
nohup "$bin" -a "$host" -p "$port" -js -sd "$dir" >>"$dir/nats.log" 2>&1 </dev/null &
disown || true
for _ in $(seq 1 100); do
  line="$(info)"
  if [[ "$line" == *'"jetstream":true'* ]]; then
    echo "nats: started"
    exit 0
  fi
  sleep 0.1
done
echo "nats: nats-server did not answer on $host:$port; see $dir/nats.log" >&2
exit 1
