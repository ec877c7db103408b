#!/usr/bin/env bash
# The benchmark: every figure beside a baseline measured in the same run.
#
#   tests/bench/run.sh [--quick] [--only archive|cycle|kafka|incremental] [--runs 3]
#                      [--size 2GiB] [--levels 3,1,9] [--fs ext4|xfs] [--s3]
#                      [--sizes 1GiB,8GiB] [--segment-size 1GiB]
#                      [--small-partitions 2000] [--throttle 20MiB]
#                      [--capture copy|reflink] [--encrypt] [--loop-io direct|buffered]
#
# Archive (archive_bench.py, --size of generated log dirs on --fs):
#   agent `archive create` at each of --levels against
#   `tar | zstd -T0 -L | tee | sha256sum`, and `archive extract` (full
#   verification, durable) against `zstd -d | tar -x` with and without a
#   final sync. --s3 adds create/extract through a local Garage server.
# Cycle (cycle_bench.py, a three-broker stand-in cluster on XFS with each
#   --sizes per broker: generated topics in segments of up to
#   --segment-size plus --small-partitions near-empty partitions):
#   broker downtime from the cluster's events (sigterm -> back in every
#   ISR) of `kafka-snapshot-agent snapshot` with reflink and with copy
#   capture, against the stand-in's own stop + start and `cp -a`; the
#   agent's peak RSS; its CPU and disk I/O while it archives from staging
#   with the broker serving, unthrottled and with --throttle as
#   `storage.bandwidth_limit`; one full rolling cycle of the three brokers
#   (coordinator + three agent daemons) with the time of each phase.
# Kafka (coordinator/benches/kafka_downtime.rs, real Apache Kafka from
#   tests/lib/kafka.sh, KRaft, three brokers on XFS with each --sizes per
#   broker): broker 1's downtime (stop command until back in every ISR) of
#   `kafka-snapshot-agent snapshot` against a plain stop + start of the
#   same broker, --runs pairs back to back, alternating which goes first.
# Incremental (incremental_bench.py, one broker of --size on --fs, seven
#   cycles with 10% of it appended in between): `--mode incremental`
#   against full snapshots of the same data, alternating: bytes uploaded
#   against bytes appended (compressed the same way), storage, archive
#   and restore time, peak RSS; then the same with incompressible data;
#   --runs times each. --capture reflink (needs --fs xfs) takes both
#   kinds of snapshot from reflink staging, where an appended active
#   segment is read only past the blocks its kept clone shares.
#   --encrypt: both kinds encrypted at rest (an age recipient, and for
#   the incremental one the cluster's object key), restored with the
#   identity.
#
# The scratch filesystems are loop-mounted images; --loop-io direct (the
#   default) has the loop devices read and write their images with direct
#   I/O, as a filesystem on a real disk does. Buffered (the only way before
#   2026-12-03) puts the host's page cache and its readahead of the image
#   file in between, which reads well past every small file read: restores
#   of many objects measured 2.5x slower that way, one large archive not.
# --quick: small sizes and one run, to check the benchmark itself.
# Needs root (loop-mounted scratch filesystems, dropping the page cache).
# Prints one table and writes it to target/bench/report.md (the JSON of
# each part beside it).
set -euo pipefail
cd "$(dirname "$0")/../.."

runs=3 size=2GiB levels=3,1,9 fs=ext4 s3= only= capture=copy loop_io=direct encrypt=
sizes=1GiB,8GiB segment_size=1GiB small_partitions=2000 throttle=20MiB
while (($#)); do
    case $1 in
        --quick)
            runs=1 size=256MiB sizes=256MiB,1GiB segment_size=256MiB small_partitions=300 throttle=10MiB
            shift ;;
        --only) only=$2; shift 2 ;;
        --runs) runs=$2; shift 2 ;;
        --size) size=$2; shift 2 ;;
        --level | --levels) levels=$2; shift 2 ;;
        --fs) fs=$2; shift 2 ;;
        --s3) s3=1; shift ;;
        --sizes) sizes=$2; shift 2 ;;
        --segment-size) segment_size=$2; shift 2 ;;
        --small-partitions) small_partitions=$2; shift 2 ;;
        --throttle) throttle=$2; shift 2 ;;
        --capture) capture=$2; shift 2 ;;
        --loop-io) loop_io=$2; shift 2 ;;
        --encrypt) encrypt=1; shift ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
case $only in '' | archive | cycle | kafka | incremental) ;; *) echo "--only must be archive, cycle, kafka or incremental" >&2; exit 2 ;; esac
case $loop_io in direct | buffered) ;; *) echo "--loop-io must be direct or buffered" >&2; exit 2 ;; esac
case $capture in copy) ;; reflink) [[ $fs == xfs ]] || { echo "--capture reflink needs --fs xfs" >&2; exit 2; } ;; *) echo "--capture must be copy or reflink" >&2; exit 2 ;; esac
if [[ $(id -u) -ne 0 ]]; then
    echo "tests/bench/run.sh needs root: it loop-mounts scratch filesystems and drops the page cache" >&2
    exit 2
fi

command -v zstd >/dev/null || { apt-get update -qq && apt-get install -y -qq zstd >/dev/null; }
command -v mkfs.xfs >/dev/null || { apt-get update -qq && apt-get install -y -qq xfsprogs >/dev/null; }
[[ -x /usr/bin/time ]] || { apt-get update -qq && apt-get install -y -qq time >/dev/null; }

cargo build --release --locked -p kafka-snapshot-agent -p kafka-snapshot-coordinator \
    -p kafka-snapshot-testkit -p kafka-snapshot-standin

# The XFS image holds three brokers' data at the largest size, one `cp -a`
# of a broker and the archives; it is sparse, so only what is used counts.
largest=$(python3 -c "
import sys; sys.path.insert(0, 'tests/bench')
from archive_bench import parse_size
print(max(parse_size(s) for s in '$sizes'.split(',')) // 2**30 + 1)")
export KSNAP_TEST_ROOT=${KSNAP_TEST_ROOT:-/var/tmp/kafka-snapshot-bench}
export KSNAP_XFS_SIZE=${KSNAP_XFS_SIZE:-$((largest * 6 + 8))G} KSNAP_EXT4_SIZE=${KSNAP_EXT4_SIZE:-24G}
KSNAP_LOOP_DIRECT_IO=$([[ $loop_io == direct ]] && echo 1 || echo 0)
export KSNAP_LOOP_DIRECT_IO
source tests/lib/filesystems.sh
trap test_fs_teardown EXIT
test_fs_setup
case $fs in
    xfs) work=$KSNAP_TEST_XFS ;;
    ext4) work=$KSNAP_TEST_EXT4 ;;
    *) echo "--fs must be xfs or ext4" >&2; exit 2 ;;
esac

s3_args=()
if [[ -n $s3 ]]; then
    source tests/lib/garage.sh
    KSNAP_GARAGE_ROOT=$work/garage
    trap 'garage_teardown; test_fs_teardown' EXIT
    garage_setup
    export AWS_ACCESS_KEY_ID=$KSNAP_TEST_S3_KEY_ID AWS_SECRET_ACCESS_KEY=$KSNAP_TEST_S3_SECRET
    export AWS_ENDPOINT_URL=$KSNAP_TEST_S3_ENDPOINT AWS_REGION=$KSNAP_TEST_S3_REGION
    s3_args=(--s3-url "s3://$KSNAP_TEST_S3_BUCKET/bench")
fi

target_dir=$(realpath "${CARGO_TARGET_DIR:-target}")
out=target/bench
mkdir -p "$out"
report_args=(--fs "$fs" --loop-io "$loop_io" --out "$out/report.md")
if [[ -z $only || $only == archive ]]; then
    python3 tests/bench/archive_bench.py \
        --work "$work" --size "$size" --runs "$runs" --levels "$levels" \
        --agent "$target_dir/release/kafka-snapshot-agent" \
        --gen "$target_dir/release/ksnap-gen-logdirs" \
        --out "$out/archive.json" "${s3_args[@]}"
    report_args+=(--archive "$out/archive.json")
    # Give the ext4 image's freed blocks back to the host disk before the
    # cycle part fills the XFS one.
    fstrim "$KSNAP_TEST_EXT4" 2>/dev/null || true
fi
if [[ -z $only || $only == cycle ]]; then
    python3 tests/bench/cycle_bench.py \
        --work "$KSNAP_TEST_XFS" --bin "$target_dir/release" --sizes "$sizes" --runs "$runs" \
        --level "${levels%%,*}" --segment-size "$segment_size" \
        --small-partitions "$small_partitions" --throttle "$throttle" \
        --out "$out/cycle.json"
    report_args+=(--cycle "$out/cycle.json")
    fstrim "$KSNAP_TEST_XFS" 2>/dev/null || true
fi
if [[ -z $only || $only == kafka ]]; then
    source tests/lib/kafka.sh
    kafka_setup
    KSNAP_TEST_XFS=$KSNAP_TEST_XFS \
        cargo bench --locked -p kafka-snapshot-coordinator --bench kafka_downtime -- \
        --sizes "$sizes" --pairs "$runs" --out "$PWD/$out/kafka.json"
    report_args+=(--kafka "$out/kafka.json")
fi
if [[ -z $only || $only == incremental ]]; then
    for ((run = 1; run <= runs; run++)); do
        for kind in compressible incompressible; do
            python3 tests/bench/incremental_bench.py \
                --work "$work" --size "$size" --level "${levels%%,*}" \
                --agent "$target_dir/release/kafka-snapshot-agent" \
                --gen "$target_dir/release/ksnap-gen-logdirs" \
                $([[ $kind == incompressible ]] && echo --incompressible) --capture "$capture" \
                ${encrypt:+--encrypt} --out "$out/incremental-$capture${encrypt:+-encrypted}-$kind-$run.json"
            report_args+=(--incremental "$out/incremental-$capture${encrypt:+-encrypted}-$kind-$run.json")
        done
    done
fi
python3 tests/bench/report.py "${report_args[@]}"
