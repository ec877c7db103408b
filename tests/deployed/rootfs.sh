# The Debian tree the guests boot: built once with debootstrap into
# /var/cache/kafka-snapshot-tests/deployed-rootfs-<hash of the package
# list>, reused by later runs. Source it, then call deployed_rootfs.
DEPLOYED_SUITE=bookworm
DEPLOYED_MIRROR=${DEPLOYED_MIRROR:-http://deb.debian.org/debian}
DEPLOYED_DEBS=/var/cache/kafka-snapshot-tests/deployed-debs
# systemd as PID 1 with D-Bus and polkit (the agent's rule), Java for Kafka,
# Python for Ansible's modules, and the tools the checks use.
# libpam-systemd: logind, which polkitd depends on (debootstrap does not
# resolve the virtual package default-logind itself).
DEPLOYED_PACKAGES=systemd,systemd-sysv,dbus,libpam-systemd,polkitd,openjdk-17-jre-headless,python3,procps,iproute2,libcap2-bin,util-linux,sqlite3

deployed_rootfs() {
    local key
    key=$(printf '%s\n' "$DEPLOYED_SUITE" "$DEPLOYED_PACKAGES" "v1" | sha256sum | cut -c1-12)
    DEPLOYED_ROOTFS=/var/cache/kafka-snapshot-tests/deployed-rootfs-$key
    if [[ -f $DEPLOYED_ROOTFS/.complete ]]; then
        return
    fi
    echo "building the guests' Debian tree in $DEPLOYED_ROOTFS (once)"
    rm -rf "$DEPLOYED_ROOTFS" "$DEPLOYED_ROOTFS.tmp"
    mkdir -p "$DEPLOYED_ROOTFS.tmp"
    # The .debs stay in a cache of their own: a rebuild for a new package
    # list downloads only what is new.
    mkdir -p "$DEPLOYED_DEBS"
    debootstrap --variant=minbase --include="$DEPLOYED_PACKAGES" --cache-dir="$DEPLOYED_DEBS" \
        "$DEPLOYED_SUITE" "$DEPLOYED_ROOTFS.tmp" "$DEPLOYED_MIRROR" >"$DEPLOYED_ROOTFS.log" 2>&1 || {
        tail -20 "$DEPLOYED_ROOTFS.log" >&2
        return 1
    }
    # Each guest gets its own machine-id at boot (nspawn passes one).
    rm -f "$DEPLOYED_ROOTFS.tmp/etc/machine-id"
    rm -rf "$DEPLOYED_ROOTFS.tmp/var/cache/apt/archives/"*.deb
    mv "$DEPLOYED_ROOTFS.tmp" "$DEPLOYED_ROOTFS"
    touch "$DEPLOYED_ROOTFS/.complete"
}
