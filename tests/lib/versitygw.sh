# A second S3-compatible server, for what Garage cannot do: per-user bucket
# policies (the least-privilege setup of agent/s3-bucket-policy.json) and
# S3 Object Lock. The Versity S3 Gateway (Apache-2.0, built from the Go
# module proxy), one process, posix backend with versioning, internal IAM,
# on a loopback port. Source it, then call versitygw_setup /
# versitygw_teardown.
#
#   KSNAP_VERSITYGW_CACHE  where `go install` puts the binary; reused by
#                          later runs (default /var/cache/kafka-snapshot-tests/versitygw)
#
# versitygw_setup exports what coordinator/tests/least_privilege.rs reads:
#   KSNAP_TEST_LOCKED_S3_ENDPOINT, KSNAP_TEST_LOCKED_S3_REGION,
#   KSNAP_TEST_LOCKED_S3_BUCKET     a bucket with Object Lock (GOVERNANCE,
#                                   1 day by default) and the policy
#   KSNAP_TEST_LOCKED_S3_AGENT_KEY_ID, KSNAP_TEST_LOCKED_S3_AGENT_SECRET
#                                   the agents' user: the policy's @AGENTS@
#   KSNAP_TEST_LOCKED_S3_COORDINATOR_KEY_ID, KSNAP_TEST_LOCKED_S3_COORDINATOR_SECRET
#                                   the coordinator's user: @COORDINATOR@
#   KSNAP_TEST_LOCKED_S3_ADMIN_KEY_ID, KSNAP_TEST_LOCKED_S3_ADMIN_SECRET
#                                   the gateway's root, to look behind the
#                                   policy (object versions)

VERSITYGW_VERSION=v1.8.0
KSNAP_VERSITYGW_CACHE=${KSNAP_VERSITYGW_CACHE:-/var/cache/kafka-snapshot-tests/versitygw}

_vgw_free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Builds the gateway once into the cache (about 2 minutes on 2 cores).
versitygw_install() {
    KSNAP_TEST_VERSITYGW_BIN=$KSNAP_VERSITYGW_CACHE/$VERSITYGW_VERSION/versitygw
    [[ -x $KSNAP_TEST_VERSITYGW_BIN ]] && return
    local go
    go=$(command -v go || echo /usr/local/go/bin/go)
    if [[ ! -x $go ]]; then
        echo "versitygw_install: needs Go (1.24 or newer) on PATH or in /usr/local/go" >&2
        return 1
    fi
    echo "building versitygw $VERSITYGW_VERSION into $KSNAP_VERSITYGW_CACHE (once; about 2 minutes)"
    mkdir -p "$KSNAP_VERSITYGW_CACHE/$VERSITYGW_VERSION"
    GOBIN=$KSNAP_VERSITYGW_CACHE/$VERSITYGW_VERSION GOFLAGS=-mod=mod \
        "$go" install "github.com/versity/versitygw/cmd/versitygw@$VERSITYGW_VERSION"
}

# curl signed as the gateway's root user.
_vgw_curl() {
    curl -sS --fail-with-body --aws-sigv4 "aws:amz:$KSNAP_TEST_LOCKED_S3_REGION:s3" \
        --user "$KSNAP_TEST_LOCKED_S3_ADMIN_KEY_ID:$KSNAP_TEST_LOCKED_S3_ADMIN_SECRET" "$@"
}

# PUT of a file as the body of `url`, with the hashes S3 wants for it.
_vgw_put_body() {
    local file=$1 url=$2
    _vgw_curl -X PUT --data-binary "@$file" \
        -H "Content-MD5: $(openssl md5 -binary "$file" | base64)" \
        -H "x-amz-content-sha256: $(sha256sum "$file" | cut -d' ' -f1)" "$url" >/dev/null
}

_vgw_secret() {
    head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n'
}

versitygw_setup() {
    versitygw_install
    KSNAP_VERSITYGW_ROOT=$(mktemp -d /var/tmp/ksnap-versitygw.XXXXXX)
    mkdir -p "$KSNAP_VERSITYGW_ROOT"/{data,iam,versions}
    local port admin_port
    port=$(_vgw_free_port)
    admin_port=$(_vgw_free_port)
    KSNAP_TEST_LOCKED_S3_ADMIN_KEY_ID=vgwroot
    KSNAP_TEST_LOCKED_S3_ADMIN_SECRET=$(_vgw_secret)
    KSNAP_TEST_LOCKED_S3_REGION=us-east-1
    KSNAP_TEST_LOCKED_S3_ENDPOINT=http://127.0.0.1:$port
    (
        ROOT_ACCESS_KEY=$KSNAP_TEST_LOCKED_S3_ADMIN_KEY_ID \
        ROOT_SECRET_KEY=$KSNAP_TEST_LOCKED_S3_ADMIN_SECRET \
            "$KSNAP_TEST_VERSITYGW_BIN" --port "127.0.0.1:$port" --admin-port "127.0.0.1:$admin_port" \
            --iam-dir "$KSNAP_VERSITYGW_ROOT/iam" --quiet \
            posix --versioning-dir "$KSNAP_VERSITYGW_ROOT/versions" "$KSNAP_VERSITYGW_ROOT/data" \
            >>"$KSNAP_VERSITYGW_ROOT/versitygw.log" 2>&1 </dev/null &
        echo $! >"$KSNAP_VERSITYGW_ROOT/versitygw.pid"
    )
    local i
    for i in $(seq 100); do
        if _vgw_curl -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" "$KSNAP_TEST_LOCKED_S3_ENDPOINT/" >/dev/null 2>&1; then
            break
        fi
        sleep 0.1
    done
    local admin=("$KSNAP_TEST_VERSITYGW_BIN" admin -a "$KSNAP_TEST_LOCKED_S3_ADMIN_KEY_ID"
        -s "$KSNAP_TEST_LOCKED_S3_ADMIN_SECRET" --er "http://127.0.0.1:$admin_port")
    KSNAP_TEST_LOCKED_S3_AGENT_KEY_ID=ksnap-agents
    KSNAP_TEST_LOCKED_S3_AGENT_SECRET=$(_vgw_secret)
    KSNAP_TEST_LOCKED_S3_COORDINATOR_KEY_ID=ksnap-coordinator
    KSNAP_TEST_LOCKED_S3_COORDINATOR_SECRET=$(_vgw_secret)
    "${admin[@]}" create-user --role user --access "$KSNAP_TEST_LOCKED_S3_AGENT_KEY_ID" \
        --secret "$KSNAP_TEST_LOCKED_S3_AGENT_SECRET" >/dev/null
    "${admin[@]}" create-user --role user --access "$KSNAP_TEST_LOCKED_S3_COORDINATOR_KEY_ID" \
        --secret "$KSNAP_TEST_LOCKED_S3_COORDINATOR_SECRET" >/dev/null

    KSNAP_TEST_LOCKED_S3_BUCKET=ksnap-locked
    local b=$KSNAP_TEST_LOCKED_S3_ENDPOINT/$KSNAP_TEST_LOCKED_S3_BUCKET
    _vgw_curl -X PUT -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" \
        -H "x-amz-bucket-object-lock-enabled: true" "$b" >/dev/null
    cat >"$KSNAP_VERSITYGW_ROOT/lock.xml" <<'EOF'
<ObjectLockConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><ObjectLockEnabled>Enabled</ObjectLockEnabled><Rule><DefaultRetention><Mode>GOVERNANCE</Mode><Days>1</Days></DefaultRetention></Rule></ObjectLockConfiguration>
EOF
    _vgw_put_body "$KSNAP_VERSITYGW_ROOT/lock.xml" "$b?object-lock="
    # The policy operators are told to use, as the repository has it.
    sed -e "s/@BUCKET@/$KSNAP_TEST_LOCKED_S3_BUCKET/g" \
        -e "s/@AGENTS@/$KSNAP_TEST_LOCKED_S3_AGENT_KEY_ID/g" \
        -e "s/@COORDINATOR@/$KSNAP_TEST_LOCKED_S3_COORDINATOR_KEY_ID/g" \
        agent/s3-bucket-policy.json >"$KSNAP_VERSITYGW_ROOT/policy.json"
    _vgw_put_body "$KSNAP_VERSITYGW_ROOT/policy.json" "$b?policy="

    export KSNAP_TEST_LOCKED_S3_ENDPOINT KSNAP_TEST_LOCKED_S3_REGION KSNAP_TEST_LOCKED_S3_BUCKET
    export KSNAP_TEST_LOCKED_S3_AGENT_KEY_ID KSNAP_TEST_LOCKED_S3_AGENT_SECRET
    export KSNAP_TEST_LOCKED_S3_COORDINATOR_KEY_ID KSNAP_TEST_LOCKED_S3_COORDINATOR_SECRET
    export KSNAP_TEST_LOCKED_S3_ADMIN_KEY_ID KSNAP_TEST_LOCKED_S3_ADMIN_SECRET
    echo "versitygw $VERSITYGW_VERSION: S3 at $KSNAP_TEST_LOCKED_S3_ENDPOINT, bucket $KSNAP_TEST_LOCKED_S3_BUCKET (Object Lock, agent policy), data in $KSNAP_VERSITYGW_ROOT"
}

versitygw_teardown() {
    if [[ -n ${KSNAP_VERSITYGW_ROOT:-} && -f $KSNAP_VERSITYGW_ROOT/versitygw.pid ]]; then
        kill "$(cat "$KSNAP_VERSITYGW_ROOT/versitygw.pid")" 2>/dev/null || true
        rm -rf "$KSNAP_VERSITYGW_ROOT"
    fi
}
