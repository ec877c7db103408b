#!/usr/bin/env bash
# End-to-end demo on one machine: generates the log dirs of a three-broker
# demo cluster on a loop-mounted XFS filesystem, snapshots the brokers one
# after the other (reflink capture), lists and verifies the catalog, then
# loses broker 2's data and restores it.
#
# Needs root (loop mounts). Leaves nothing mounted behind.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ $(id -u) -ne 0 ]]; then
    echo "tests/demo.sh needs root: it loop-mounts a scratch XFS filesystem" >&2
    exit 2
fi
command -v mkfs.xfs >/dev/null || { apt-get update -qq && apt-get install -y -qq xfsprogs >/dev/null; }

cargo build --release --locked -p kafka-snapshot-agent -p kafka-snapshot-coordinator -p kafka-snapshot-testkit
agent=$PWD/target/release/kafka-snapshot-agent
coordinator=$PWD/target/release/kafka-snapshot-coordinator
gen=$PWD/target/release/ksnap-gen-logdirs

export KSNAP_TEST_ROOT=${KSNAP_TEST_ROOT:-/var/tmp/kafka-snapshot-demo}
source tests/lib/filesystems.sh
trap test_fs_teardown EXIT
test_fs_setup
root=$KSNAP_TEST_XFS
store=$root/cold-storage
mkdir -p "$store"
cluster=DemoClusterAAAAAAAAAAA

step() { printf '\n==> %s\n' "$*"; }

step "generating the log dirs of brokers 1, 2 and 3 (two disks each)"
for n in 1 2 3; do
    "$gen" --cluster-id "$cluster" --node-id "$n" \
        --dir "$root/broker-$n/disk1/kafka-logs" --dir "$root/broker-$n/disk2/kafka-logs" \
        --size 256MiB --segment-size 16MiB --topics 6 --partitions 6 --delete-dir --seed "$n"
    cat >"$root/broker-$n/server.properties" <<PROPS
process.roles=broker
node.id=$n
log.dirs=$root/broker-$n/disk1/kafka-logs,$root/broker-$n/disk2/kafka-logs
PROPS
done

step "rolling snapshot: one broker at a time (the brokers are stopped in this demo)"
for n in 1 2 3; do
    id=$("$agent" archive create --server-properties "$root/broker-$n/server.properties" \
        --store "file://$store" --capture auto)
    echo "broker $n -> snapshot $id"
done

step "catalog"
"$coordinator" catalog list --store "file://$store"

step "verifying every snapshot against its manifest"
for id in $("$agent" archive list --store "file://$store" --json | python3 -c \
    'import json,sys; print(" ".join(s["snapshot_id"] for s in json.load(sys.stdin) if s["complete"]))'); do
    "$agent" archive verify --store "file://$store" --snapshot "$id"
done

step "broker 2 loses a disk's worth of data"
before=$(cd "$root/broker-2" && find disk1/kafka-logs disk2/kafka-logs -path '*-delete' -prune -o -type f ! -name .lock -print0 \
    | sort -z | xargs -0 sha256sum | sha256sum)
rm -rf "$root/broker-2/disk1/kafka-logs/orders-0"
echo "removed $root/broker-2/disk1/kafka-logs/orders-0"

step "restoring broker 2 to its original paths"
id=$("$agent" archive list --store "file://$store" --broker 2 --json | python3 -c \
    'import json,sys; print([s for s in json.load(sys.stdin) if s["complete"]][-1]["snapshot_id"])')
"$agent" archive extract --store "file://$store" --snapshot "$id" --original-paths
after=$(cd "$root/broker-2" && find disk1/kafka-logs disk2/kafka-logs -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum)
if [[ $before == "$after" ]]; then
    echo "broker 2 restored: every file identical to the snapshot"
else
    echo "restored data differs from the original" >&2
    exit 1
fi
ls -d "$root"/broker-2/disk*/kafka-logs.pre-restore-* | sed 's/^/kept aside: /'
step "demo finished"
