#!/usr/bin/env bash
# The test command: `bash tests/run.sh [extra cargo test args]`.
#
# 1. Makes sure the services the end-to-end tests talk to are up, starting the ones that
#    are down (RabbitMQ, PostgreSQL, MariaDB on their standard local ports).
# 2. Creates or updates the Python venv at .venv with the real peers of tests/requirements.txt
#    (oslo.messaging, Keystone clients), only when that file changed: installing is slow.
# 3. Builds the `quartet` binary the tests start, then runs every test of the workspace.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)
LOG_DIR=${TMPDIR:-/tmp}/quartet-run
mkdir -p "$LOG_DIR"

say() { printf 'run.sh: %s\n' "$*" >&2; }

# True when something accepts TCP connections on HOST:PORT.
port_open() {
    timeout 2 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null
}

# ensure_service NAME HOST PORT START_COMMAND
# Starts NAME with START_COMMAND when nothing listens on HOST:PORT, then waits up to 60 s
# for the port. Fails with a message that says what is missing and how it was started.
ensure_service() {
    local name=$1 host=$2 port=$3 start=$4
    if port_open "$host" "$port"; then
        say "$name is up on $host:$port"
        return 0
    fi
    say "$name is down on $host:$port; starting it: $start"
    if ! bash -c "$start" >"$LOG_DIR/$name.log" 2>&1; then
        say "the start command of $name failed (see $LOG_DIR/$name.log); waiting for the port anyway"
    fi
    local waited=0
    while ! port_open "$host" "$port"; do
        if ((waited >= 120)); then
            say "error: $name did not come up on $host:$port within 60 s."
            say "  started with: $start"
            say "  its output: $LOG_DIR/$name.log"
            say "  the end-to-end tests need it; start it by hand and run again."
            tail -n 20 "$LOG_DIR/$name.log" >&2 || true
            return 1
        fi
        sleep 0.5
        waited=$((waited + 1))
    done
    say "$name is up on $host:$port"
}

ensure_service rabbitmq 127.0.0.1 5672 "rabbitmq-server -detached"
ensure_service postgresql 127.0.0.1 5432 \
    "pg_ctlcluster --skip-systemctl-redirect \$(ls /etc/postgresql | head -n 1) main start"
ensure_service mariadb 127.0.0.1 3306 \
    "start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd -- --user=mysql"

# Debian packages the tests use: Chromium renders a drill's HTML report; docker-compose
# checks compose.yaml (this machine has the docker client but no compose v2 plugin).
ensure_command() {
    local command=$1 package=$2
    if command -v "$command" >/dev/null 2>&1; then
        return 0
    fi
    say "$command is missing; installing the Debian package $package"
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$package"; } \
        >"$LOG_DIR/apt-$package.log" 2>&1; then
        say "error: could not install $package (see $LOG_DIR/apt-$package.log); install it by hand and run again."
        return 1
    fi
}
ensure_command chromium chromium
ensure_command docker-compose docker-compose
ensure_command qemu-img qemu-utils

# The Python peers, in .venv, reinstalled only when tests/requirements.txt changes.
VENV=$ROOT/.venv
REQUIREMENTS=$ROOT/tests/requirements.txt
STAMP=$VENV/.requirements.sha256
want=$(sha256sum "$REQUIREMENTS" | cut -d' ' -f1)
have=$(cat "$STAMP" 2>/dev/null || true)
if [[ ! -x $VENV/bin/python || $want != "$have" ]]; then
    say "installing the Python peers of tests/requirements.txt into .venv (once; it takes a while)"
    python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REQUIREMENTS"
    echo "$want" >"$STAMP"
else
    say "the Python peers in .venv are up to date"
fi
export QUARTET_VENV=$VENV

# The tests start the binary as a user does; it must be built first.
cargo build -p quartet
cargo test --workspace "$@"
