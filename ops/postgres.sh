#!/usr/bin/env bash
# Makes sure a PostgreSQL server answers on 127.0.0.1:5432 for tests/cluster.rs and prints
# the server URL the tests use (without a database name) on stdout; everything else goes
# to stderr. Order: $INFERNO_TEST_POSTGRES when set and answering; else the `postgres`
# role without a password (trust, as on the development machines); else, when no server
# answers, Debian's `postgresql` package is installed if missing, its cluster started, and
# the `postgres` role given the password `inferno-test` for TCP logins from loopback.
# Usage: export INFERNO_TEST_POSTGRES="$(ops/postgres.sh)"
set -euo pipefail
host=127.0.0.1
port=5432
log() { echo "postgres: $*" >&2; }
answers() { psql "$1/postgres" -qtAc 'SELECT 1' >/dev/null 2>&1; }

if [ -n "${INFERNO_TEST_POSTGRES:-}" ] && answers "$INFERNO_TEST_POSTGRES"; then
  log "using \$INFERNO_TEST_POSTGRES"
  echo "$INFERNO_TEST_POSTGRES"
  exit 0
fi
trust="postgres://postgres@$host:$port"
withpw="postgres://postgres:inferno-test@$host:$port"
if command -v psql >/dev/null 2>&1; then
  for url in "$trust" "$withpw"; do
    if answers "$url"; then
      log "a PostgreSQL server answers on $host:$port"
      echo "$url"
      exit 0
    fi
  done
fi
if (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; then
  log "a server listens on $host:$port but refuses the postgres role without a password;" \
      "set INFERNO_TEST_POSTGRES=postgres://USER:PASSWORD@$host:$port"
  exit 1
fi

SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
if ! command -v pg_ctlcluster >/dev/null 2>&1; then
  log "installing postgresql"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >/dev/null
fi
version="$(ls /etc/postgresql | sort -V | tail -n 1)"
log "starting the PostgreSQL $version cluster"
$SUDO pg_ctlcluster "$version" main start 2>/dev/null || true
for _ in $(seq 1 100); do
  $SUDO -u postgres psql -qtAc 'SELECT 1' >/dev/null 2>&1 && break
  sleep 0.1
done
$SUDO -u postgres psql -qc "ALTER ROLE postgres PASSWORD 'inferno-test'" >&2
for _ in $(seq 1 50); do
  if answers "$withpw"; then
    log "started"
    echo "$withpw"
    exit 0
  fi
  sleep 0.1
done
log "PostgreSQL did not answer on $host:$port"
exit 1
