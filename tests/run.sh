#!/usr/bin/env bash
# The project's single test command. On a fresh Debian machine (as root) it
# installs what the tests need, prepares real filesystems on loop devices
# (XFS with reflink for reflink capture, ext4 for copy capture), then runs
# formatting, lints and every test of the workspace. It also starts two
# real S3-compatible servers, built once into a cache dir: Garage for the
# s3:// backend's tests, and the Versity S3 gateway for a bucket with
# Object Lock and the agents' least-privilege policy. Last, tests/ops.sh checks the systemd units and runs the
# Ansible roles into temporary roots, and tests/deployed.sh runs what the
# roles install under a real systemd.
#
#   tests/run.sh              everything (what CI runs); the real-Kafka
#                             tests run on Kafka 4.0.2, then 4.4.0 (every
#                             snapshot encrypted at rest), 3.9.1 (KRaft,
#                             full snapshots) and 3.9.1 with ZooKeeper
#                             (encrypted, full snapshots); the others are
#                             incremental, the default
#                             (KSNAP_KAFKA_OTHER_VERSIONS: space-separated
#                             VERSION[:zookeeper][:encrypted][:full],
#                             empty for none)
#   tests/run.sh --soak N     the same setup, then only the fault matrix
#                             (coordinator/tests/faults.rs), N times over;
#                             stops at the first failure
set -euo pipefail
cd "$(dirname "$0")/.."

soak=
case ${1:-} in
    "") ;;
    --soak)
        soak=${2:-}
        [[ $soak =~ ^[1-9][0-9]*$ ]] || { echo "usage: tests/run.sh [--soak ROUNDS]" >&2; exit 2; }
        ;;
    *) echo "usage: tests/run.sh [--soak ROUNDS]" >&2; exit 2 ;;
esac

if [[ $(id -u) -ne 0 ]]; then
    echo "tests/run.sh needs root: it installs packages and loop-mounts test filesystems" >&2
    exit 2
fi

# --- packages -------------------------------------------------------------
missing=()
command -v mkfs.xfs >/dev/null || missing+=(xfsprogs)
command -v mkfs.ext4 >/dev/null || missing+=(e2fsprogs)
command -v zstd >/dev/null || missing+=(zstd)
command -v losetup >/dev/null || missing+=(mount)
# Building Garage (once) needs a C toolchain and make (bundled libsodium).
command -v cc >/dev/null || missing+=(gcc)
command -v make >/dev/null || missing+=(make)
# The locked S3 bucket's requests (tests/lib/versitygw.sh).
command -v curl >/dev/null || missing+=(curl)
command -v openssl >/dev/null || missing+=(openssl)
command -v python3 >/dev/null || missing+=(python3)
# Real Kafka: a JDK (17+, Kafka 4.x) and Maven to resolve its jars.
command -v java >/dev/null || missing+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || missing+=(maven)
if ((${#missing[@]})); then
    echo "installing: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# --- filesystems ----------------------------------------------------------
source tests/lib/filesystems.sh
source tests/lib/garage.sh
source tests/lib/versitygw.sh
source tests/lib/kafka.sh
trap 'garage_teardown; versitygw_teardown; test_fs_teardown' EXIT
test_fs_setup
export KSNAP_TEST_XFS KSNAP_TEST_EXT4

# --- S3-compatible servers ---------------------------------------------------
garage_setup
# Bucket policies and Object Lock, which Garage lacks
# (coordinator/tests/least_privilege.rs).
versitygw_setup

# --- Apache Kafka (coordinator/tests/real_kafka.rs) ---------------------------
kafka_setup

if [[ -n $soak ]]; then
    for round in $(seq "$soak"); do
        echo "=== soak round $round of $soak"
        cargo test --locked -p kafka-snapshot-coordinator --test faults
    done
    exit 0
fi

# --- checks ---------------------------------------------------------------
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
python3 tests/lint/module_cycles.py
# Fault scenarios and hostile-input cases record themselves here when they
# pass; tests/report.py turns that into the README's "What we test" figures.
export KSNAP_TEST_REPORT=$PWD/target/test-report
rm -rf "$KSNAP_TEST_REPORT"
cargo test --workspace --locked
# The other Kafka releases operators run, and 3.9 in ZooKeeper mode: the
# real-Kafka tests again (the gate conditions, a rolling cycle and a
# restore under load) on each; 4.4 with encrypted incremental snapshots,
# 3.9 with full snapshots (KRaft, and ZooKeeper encrypted). The workspace
# run above tested the default release (KRaft, incremental) fully.
for other in ${KSNAP_KAFKA_OTHER_VERSIONS-4.4.0:encrypted 3.9.1:full 3.9.1:zookeeper:encrypted:full}; do
    KSNAP_KAFKA_VERSION=${other%%:*}
    mode=kraft
    encrypt=0
    snapshots=incremental
    [[ :$other: == *:zookeeper:* ]] && mode=zookeeper
    [[ :$other: == *:encrypted:* ]] && encrypt=1
    [[ :$other: == *:full:* ]] && snapshots=full
    kafka_setup
    KSNAP_TEST_KAFKA_MODE=$mode KSNAP_TEST_ENCRYPT=$encrypt KSNAP_TEST_SNAPSHOT_MODE=$snapshots \
        cargo test --locked -p kafka-snapshot-coordinator --test real_kafka
done
python3 tests/report.py --report "$KSNAP_TEST_REPORT" --readme README.md

# --- systemd units, polkit rule, Ansible roles ------------------------------
./tests/ops.sh
# What those roles install, run under a real systemd (systemd-nspawn
# guests with a real Kafka): users, capabilities, sandbox, polkit, a cycle
# and a restore with kafka-owned files.
./tests/deployed.sh
