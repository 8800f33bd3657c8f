# Shared by the load-test scripts (sourced; the caller has `set -euo pipefail` and is in the
# repository root): a private `inferno serve` on a free loopback port with its own temp data
# dir, stopped and removed on exit, and the admin's JWT and an API key for the load.
#
#   load_setup NAME            wrk installed, INFERNO_BIN built (unless set), $work, $port,
#                              $base, $password, and the exit trap
#   load_serve [VAR=value...]  starts the server with extra environment, waits for /ready
#   load_login                 prints the admin's JWT
#   load_key TOKEN NAME PERMS  prints a new API key (PERMS: a JSON array of permission names)

load_setup() {
    LOAD_NAME="$1"
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/inferno/target}"
    if ! command -v wrk >/dev/null; then
        echo "$LOAD_NAME: installing wrk"
        if [[ $EUID -eq 0 ]]; then apt-get install -y wrk; else sudo apt-get install -y wrk; fi
    fi
    if [[ -z "${INFERNO_BIN:-}" ]]; then
        cargo build --bin inferno
        INFERNO_BIN="$CARGO_TARGET_DIR/debug/inferno"
    fi
    work="$(mktemp -d -t "inferno-$LOAD_NAME.XXXXXX")"
    server_pid=""
    trap load_cleanup EXIT
    trap 'exit 130' INT TERM
    port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
    base="http://127.0.0.1:$port"
    password="$LOAD_NAME-admin-$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    mkdir -p "$work/models"
}

load_cleanup() {
    if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2>/dev/null; then
        kill -TERM "$server_pid" 2>/dev/null || true
        for _ in $(seq 1 40); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.5; done
        kill -KILL "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}

load_serve() {
    env INFERNO_ADMIN_PASSWORD="$password" "$@" \
        "$INFERNO_BIN" serve --bind "127.0.0.1:$port" --data-dir "$work/data" --models-dir "$work/models" \
        >"$work/server.log" 2>&1 &
    server_pid=$!
    for _ in $(seq 1 120); do
        curl -fsS "$base/ready" >/dev/null 2>&1 && break
        kill -0 "$server_pid" 2>/dev/null || { echo "$LOAD_NAME: server exited:"; cat "$work/server.log"; exit 1; }
        sleep 0.5
    done
    curl -fsS "$base/ready" >/dev/null || { echo "$LOAD_NAME: server not ready"; cat "$work/server.log"; exit 1; }
}

json_field() { python3 -c "import json,sys; print(json.load(sys.stdin)[sys.argv[1]])" "$1"; }

load_login() {
    curl -fsS -X POST "$base/api/v1/auth/login" -H 'Content-Type: application/json' \
        -d "{\"username\":\"admin\",\"password\":\"$password\"}" | json_field token
}

load_key() {
    curl -fsS -X POST "$base/api/v1/auth/api-keys" -H 'Content-Type: application/json' \
        -H "Authorization: Bearer $1" \
        -d "{\"name\":\"$2\",\"permissions\":$3}" | json_field key
}
