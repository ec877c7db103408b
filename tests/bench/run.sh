#!/usr/bin/env bash
# Archive benchmark: agent `archive create` / `archive extract` against
# `tar | zstd -T0 | sha256sum` and `zstd -d | tar -x` on the same generated
# Kafka-like log dirs, written to the same disk, in the same run.
#
#   tests/bench/run.sh [--size 2GiB] [--runs 3] [--level 3] [--fs xfs|ext4] [--s3]
#
# --s3 also runs create/extract through a local Garage S3 server
# (tests/lib/garage.sh) whose data lives on the same scratch filesystem.
#
# Needs root (loop-mounted scratch filesystems). Prints a table and writes
# it to target/bench/archive.md.
set -euo pipefail
cd "$(dirname "$0")/../.."

size=2GiB runs=3 level=3 fs=ext4 s3=
while (($#)); do
    case $1 in
        --size) size=$2; shift 2 ;;
        --runs) runs=$2; shift 2 ;;
        --level) level=$2; shift 2 ;;
        --fs) fs=$2; shift 2 ;;
        --s3) s3=1; shift ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done

command -v zstd >/dev/null || { apt-get update -qq && apt-get install -y -qq zstd >/dev/null; }
command -v mkfs.xfs >/dev/null || { apt-get update -qq && apt-get install -y -qq xfsprogs >/dev/null; }

cargo build --release --locked -p kafka-snapshot-agent -p kafka-snapshot-testkit

export KSNAP_TEST_ROOT=${KSNAP_TEST_ROOT:-/var/tmp/kafka-snapshot-bench}
export KSNAP_XFS_SIZE=${KSNAP_XFS_SIZE:-24G} KSNAP_EXT4_SIZE=${KSNAP_EXT4_SIZE:-24G}
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

target_dir=${CARGO_TARGET_DIR:-target}
mkdir -p target/bench
python3 tests/bench/archive_bench.py \
    --work "$work" --size "$size" --runs "$runs" --level "$level" \
    --agent "$target_dir/release/kafka-snapshot-agent" \
    --gen "$target_dir/release/ksnap-gen-logdirs" \
    --out target/bench/archive.md "${s3_args[@]}"
