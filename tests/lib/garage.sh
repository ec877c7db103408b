# A real S3-compatible server for the tests and benchmarks: Garage
# (https://garagehq.deuxfleurs.fr, on crates.io), one node, SQLite metadata,
# S3 API on a loopback port. Source it, then call garage_setup /
# garage_teardown.
#
#   KSNAP_GARAGE_CACHE  where `cargo install` puts the binary; reused by
#                       later runs (default /var/cache/kafka-snapshot-tests/garage)
#   KSNAP_GARAGE_ROOT   where the server keeps its config, data and log
#                       (default: a new temporary dir under /var/tmp)
#
# garage_setup exports what the S3 tests read:
#   KSNAP_TEST_S3_ENDPOINT, KSNAP_TEST_S3_REGION, KSNAP_TEST_S3_BUCKET,
#   KSNAP_TEST_S3_KEY_ID, KSNAP_TEST_S3_SECRET   the bucket and a key allowed on it
#   KSNAP_TEST_GARAGE_BIN, KSNAP_TEST_GARAGE_CONFIG,
#   KSNAP_TEST_GARAGE_PIDFILE, KSNAP_TEST_GARAGE_LOG
#                       so a test can stop the server (SIGKILL) and start it again

GARAGE_VERSION=2.5.0
KSNAP_GARAGE_CACHE=${KSNAP_GARAGE_CACHE:-/var/cache/kafka-snapshot-tests/garage}

_garage_free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

_garage() {
    "$KSNAP_TEST_GARAGE_BIN" -c "$KSNAP_TEST_GARAGE_CONFIG" "$@"
}

# Builds Garage once into the cache (about 8 minutes on 2 cores).
garage_install() {
    KSNAP_TEST_GARAGE_BIN=$KSNAP_GARAGE_CACHE/bin/garage
    if [[ -x $KSNAP_TEST_GARAGE_BIN ]] && "$KSNAP_TEST_GARAGE_BIN" --version 2>/dev/null | grep -qF "$GARAGE_VERSION"; then
        return
    fi
    echo "building garage $GARAGE_VERSION into $KSNAP_GARAGE_CACHE (once; about 8 minutes on 2 cores)"
    mkdir -p "$KSNAP_GARAGE_CACHE"
    # Its own target dir: the project's CARGO_TARGET_DIR stays untouched.
    env -u CARGO_TARGET_DIR cargo install garage --version "$GARAGE_VERSION" --locked \
        --root "$KSNAP_GARAGE_CACHE" --quiet
}

# Starts the server (again) with the config garage_setup wrote.
garage_start() {
    # In a subshell, so that it is no job of this shell: the tests kill and
    # restart it, and the shell need not report that.
    (
        "$KSNAP_TEST_GARAGE_BIN" -c "$KSNAP_TEST_GARAGE_CONFIG" server >>"$KSNAP_TEST_GARAGE_LOG" 2>&1 </dev/null &
        echo $! >"$KSNAP_TEST_GARAGE_PIDFILE"
    )
    local i
    for i in $(seq 100); do
        if _garage status >/dev/null 2>&1; then
            return
        fi
        sleep 0.1
    done
    echo "garage did not start; its log:" >&2
    tail -n 30 "$KSNAP_TEST_GARAGE_LOG" >&2
    return 1
}

garage_setup() {
    garage_install
    KSNAP_GARAGE_ROOT=${KSNAP_GARAGE_ROOT:-$(mktemp -d /var/tmp/ksnap-garage.XXXXXX)}
    mkdir -p "$KSNAP_GARAGE_ROOT"
    KSNAP_TEST_GARAGE_CONFIG=$KSNAP_GARAGE_ROOT/garage.toml
    KSNAP_TEST_GARAGE_PIDFILE=$KSNAP_GARAGE_ROOT/garage.pid
    KSNAP_TEST_GARAGE_LOG=$KSNAP_GARAGE_ROOT/garage.log
    local s3_port rpc_port admin_port
    s3_port=$(_garage_free_port)
    rpc_port=$(_garage_free_port)
    admin_port=$(_garage_free_port)
    cat >"$KSNAP_TEST_GARAGE_CONFIG" <<EOF
metadata_dir = "$KSNAP_GARAGE_ROOT/meta"
data_dir = "$KSNAP_GARAGE_ROOT/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$rpc_port"
rpc_public_addr = "127.0.0.1:$rpc_port"
rpc_secret = "$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$s3_port"

[admin]
api_bind_addr = "127.0.0.1:$admin_port"
EOF
    garage_start
    local node
    node=$(_garage node id -q | cut -d@ -f1)
    _garage layout assign -z dc1 -c 20G "$node" >/dev/null
    _garage layout apply --version 1 >/dev/null

    KSNAP_TEST_S3_BUCKET=ksnap-test
    KSNAP_TEST_S3_KEY_ID=GK$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
    KSNAP_TEST_S3_SECRET=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
    # The layout takes a moment to be live: retry the first write.
    local i
    for i in $(seq 50); do
        if _garage bucket create "$KSNAP_TEST_S3_BUCKET" >/dev/null 2>&1; then
            break
        fi
        sleep 0.2
    done
    _garage bucket info "$KSNAP_TEST_S3_BUCKET" >/dev/null
    _garage key import --yes -n ksnap-test "$KSNAP_TEST_S3_KEY_ID" "$KSNAP_TEST_S3_SECRET" >/dev/null
    _garage bucket allow --read --write --owner "$KSNAP_TEST_S3_BUCKET" --key ksnap-test >/dev/null

    KSNAP_TEST_S3_ENDPOINT=http://127.0.0.1:$s3_port
    KSNAP_TEST_S3_REGION=garage
    export KSNAP_TEST_S3_ENDPOINT KSNAP_TEST_S3_REGION KSNAP_TEST_S3_BUCKET
    export KSNAP_TEST_S3_KEY_ID KSNAP_TEST_S3_SECRET
    export KSNAP_TEST_GARAGE_BIN KSNAP_TEST_GARAGE_CONFIG KSNAP_TEST_GARAGE_PIDFILE KSNAP_TEST_GARAGE_LOG
    echo "garage $GARAGE_VERSION: S3 at $KSNAP_TEST_S3_ENDPOINT, bucket $KSNAP_TEST_S3_BUCKET, data in $KSNAP_GARAGE_ROOT"
}

garage_teardown() {
    if [[ -n ${KSNAP_TEST_GARAGE_PIDFILE:-} && -f $KSNAP_TEST_GARAGE_PIDFILE ]]; then
        local pid
        pid=$(cat "$KSNAP_TEST_GARAGE_PIDFILE")
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -9 "$pid" 2>/dev/null || true
    fi
    if [[ -n ${KSNAP_GARAGE_ROOT:-} && $KSNAP_GARAGE_ROOT == /var/tmp/ksnap-garage.* ]]; then
        rm -rf "$KSNAP_GARAGE_ROOT"
    fi
}
