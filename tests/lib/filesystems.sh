# Loop-mounted test filesystems, shared by tests/run.sh, the demo and the
# benchmarks. Source it, then call test_fs_setup / test_fs_teardown.
#
#   KSNAP_TEST_ROOT   where images and mount points live
#                     (default /var/tmp/kafka-snapshot-tests)
#   KSNAP_XFS_SIZE    size of the XFS image (default 8G, sparse)
#   KSNAP_EXT4_SIZE   size of the ext4 image (default 6G, sparse)
#   KSNAP_LOOP_DIRECT_IO
#                     1: the loop devices read and write their images with
#                     direct I/O (the benchmarks): no second page cache and
#                     readahead of the image file between the filesystem and
#                     the disk, which a real disk does not have

KSNAP_TEST_ROOT=${KSNAP_TEST_ROOT:-/var/tmp/kafka-snapshot-tests}
KSNAP_TEST_XFS=$KSNAP_TEST_ROOT/xfs
KSNAP_TEST_EXT4=$KSNAP_TEST_ROOT/ext4

_test_fs_mount() { # image size mountpoint mkfs...
    local image=$1 size=$2 mnt=$3
    shift 3
    if mountpoint -q "$mnt"; then
        umount "$mnt"
    fi
    rm -f "$image"
    truncate -s "$size" "$image"
    "$@" "$image" >/dev/null
    mkdir -p "$mnt"
    mount -o loop "$image" "$mnt"
    if [[ ${KSNAP_LOOP_DIRECT_IO:-0} == 1 ]]; then
        local dev
        dev=$(findmnt -no SOURCE "$mnt")
        losetup --direct-io=on "$dev" ||
            { echo "cannot turn on direct I/O for $dev ($image)" >&2; return 1; }
    fi
}

test_fs_setup() {
    # From the root as it is now: callers may set it after sourcing.
    KSNAP_TEST_XFS=$KSNAP_TEST_ROOT/xfs
    KSNAP_TEST_EXT4=$KSNAP_TEST_ROOT/ext4
    mkdir -p "$KSNAP_TEST_ROOT"
    _test_fs_mount "$KSNAP_TEST_ROOT/xfs.img" "${KSNAP_XFS_SIZE:-8G}" "$KSNAP_TEST_XFS" \
        mkfs.xfs -q -f -m reflink=1
    _test_fs_mount "$KSNAP_TEST_ROOT/ext4.img" "${KSNAP_EXT4_SIZE:-6G}" "$KSNAP_TEST_EXT4" \
        mkfs.ext4 -q -F
    echo "test filesystems: xfs (reflink) at $KSNAP_TEST_XFS, ext4 at $KSNAP_TEST_EXT4"
}

test_fs_teardown() {
    for mnt in "$KSNAP_TEST_XFS" "$KSNAP_TEST_EXT4"; do
        if mountpoint -q "$mnt"; then
            umount "$mnt" || umount -l "$mnt"
        fi
    done
    rm -f "$KSNAP_TEST_ROOT/xfs.img" "$KSNAP_TEST_ROOT/ext4.img"
}
