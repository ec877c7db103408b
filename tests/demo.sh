#!/usr/bin/env bash
# The whole product on one machine: a three-broker stand-in Kafka cluster
# (real processes speaking the Kafka protocol, log dirs on a loop-mounted
# XFS filesystem with reflink), one coordinator, one agent daemon per broker
# and file:// cold storage. It runs one rolling snapshot cycle, restores
# broker 2 from its snapshot, and prints `status` and the snapshot list.
#
# Needs root (loop mounts). Leaves nothing running or mounted behind; the
# logs stay in $KSNAP_DEMO_LOGS (default /var/tmp/kafka-snapshot-demo-logs).
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ $(id -u) -ne 0 ]]; then
    echo "tests/demo.sh needs root: it loop-mounts a scratch XFS filesystem" >&2
    exit 2
fi
missing=()
command -v mkfs.xfs >/dev/null || missing+=(xfsprogs)
command -v mkfs.ext4 >/dev/null || missing+=(e2fsprogs)
command -v python3 >/dev/null || missing+=(python3)
command -v cc >/dev/null || missing+=(gcc)
command -v make >/dev/null || missing+=(make)
if ((${#missing[@]})); then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

step() { printf '\n==> %s\n' "$*"; }

step "building (release)"
cargo build --release --locked -p kafka-snapshot-agent -p kafka-snapshot-coordinator -p kafka-snapshot-standin
bin=$PWD/target/release
agent=$bin/kafka-snapshot-agent
coordinator=$bin/kafka-snapshot-coordinator

export KSNAP_TEST_ROOT=${KSNAP_TEST_ROOT:-/var/tmp/kafka-snapshot-demo}
logs=${KSNAP_DEMO_LOGS:-/var/tmp/kafka-snapshot-demo-logs}
rm -rf "$logs"
mkdir -p "$logs"
source tests/lib/filesystems.sh

pids=()
cleanup() {
    # Agents first (on SIGTERM a broker they stopped is started again
    # before they exit), then the coordinator, then the cluster.
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    test_fs_teardown
}
trap cleanup EXIT
test_fs_setup
root=$KSNAP_TEST_XFS/demo
rm -rf "$root"
mkdir -p "$root/store" "$root/etc"

step "starting a three-broker stand-in Kafka cluster (log dirs on XFS)"
"$bin/ksnap-standin-cluster" --dir "$root/cluster" --data-root "$root/data" --size 64MiB \
    --info "$root/cluster.json" >"$logs/cluster.log" 2>&1 &
cluster_pid=$!
pids=("$cluster_pid")
for _ in $(seq 600); do
    [[ -s $root/cluster.json ]] && break
    kill -0 "$cluster_pid" 2>/dev/null || { cat "$logs/cluster.log" >&2; exit 1; }
    sleep 0.2
done
[[ -s $root/cluster.json ]] || { echo "the stand-in cluster did not start" >&2; exit 1; }
info() { python3 -c "import json; d=json.load(open('$root/cluster.json')); print($1)"; }
broker() { info "next(b for b in d['brokers'] if b['node_id']==$1)['$2']"; }
bootstrap=$(info 'json.dumps(d["bootstrap"].split(","))')
echo "bootstrap servers $(info 'd["bootstrap"]'), cluster.id $(info 'd["cluster_id"]')"

step "configuring the coordinator and three agents (one token each)"
umask 077
head -c 24 /dev/urandom | base64 | tr -d '/+=\n' >"$root/etc/admin.token"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
agents_toml=""
for n in 1 2 3; do
    head -c 24 /dev/urandom | base64 | tr -d '/+=\n' >"$root/etc/agent-$n.token"
    sum=$(sha256sum <"$root/etc/agent-$n.token" | cut -d' ' -f1)
    agents_toml+="[[agents]]
broker = $n
token_sha256 = \"$sum\"
"
done
cat >"$root/etc/coordinator.toml" <<EOF
[server]
listen = "127.0.0.1:$port"
database = "$root/coordinator/state.db"
admin_token_file = "$root/etc/admin.token"

$agents_toml
[schedule]
schedule = "@every 24h"
suspend = true          # the demo starts its cycle with run-now
gate_timeout = "5m"

[lease]
ttl = "15s"
poll_interval = "1s"

[retention]
keep_last = 3

[storage]
url = "file://$root/store"

[kafka]
bootstrap_servers = $bootstrap

[gate]
check_interval = "1s"
EOF
"$coordinator" validate --config "$root/etc/coordinator.toml"
for n in 1 2 3; do
    cat >"$root/etc/agent-$n.toml" <<EOF
[broker]
log_dirs = $(info "json.dumps(next(b for b in d['brokers'] if b['node_id']==$n)['log_dirs'])")
stop_command = "$(broker "$n" stop_script)"
start_command = "$(broker "$n" start_script)"
stop_timeout = "2m"
recovery_timeout = "5m"

[snapshot]
capture = "reflink"

[storage]
url = "file://$root/store"

[kafka]
bootstrap_servers = $bootstrap

[gate]
stable_checks = 2
check_interval = "1s"

[coordinator]
url = "http://127.0.0.1:$port"
token_file = "$root/etc/agent-$n.token"
state_file = "$root/agent-$n/state.json"
poll_interval = "1s"

[metrics]
listen = "127.0.0.1:0"
EOF
    "$agent" validate --config "$root/etc/agent-$n.toml"
done
umask 022

step "starting the coordinator and the agents (logs in $logs)"
"$coordinator" serve --config "$root/etc/coordinator.toml" >"$logs/coordinator.log" 2>&1 &
pids=("$!" "${pids[@]}")
c() { "$coordinator" "$@" --config "$root/etc/coordinator.toml"; }
for _ in $(seq 100); do
    c status >/dev/null 2>&1 && break
    sleep 0.2
done
for n in 1 2 3; do
    "$agent" run --config "$root/etc/agent-$n.toml" >"$logs/agent-$n.log" 2>&1 &
    pids=("$!" "${pids[@]}")
done

cycle_state() {
    c status --json | python3 -c 'import json,sys; print((json.load(sys.stdin).get("cycle") or {}).get("state", ""))'
}

step "one rolling cycle: one broker at a time, each back in every ISR before the next"
c run-now
state=""
for _ in $(seq 900); do
    state=$(cycle_state)
    case $state in done | partial | failed) break ;; esac
    sleep 1
done
c status
[[ $state == done ]] || { echo "the cycle ended $state; see $logs" >&2; exit 1; }

step "snapshots in the catalog"
c snapshots

step "restoring broker 2 from its newest snapshot (its current log dirs are moved aside)"
c restore --broker 2 --yes
ls -d "$root"/data/broker-2/*.pre-restore-* | sed 's/^/kept aside: /'

step "status after the restore"
c status
step "demo finished (logs in $logs)"
