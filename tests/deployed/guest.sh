# Guests for tests/deployed.sh: Debian trees booted by systemd-nspawn, each
# an overlay of the cached tree (tests/deployed/rootfs.sh) so that nothing
# a run writes reaches the cache. Source it; the caller sets DEPLOYED_T
# (the run's temporary dir) and DEPLOYED_ROOTFS.
#
# A guest shares the host's network (distinct ports per guest) and has
# systemd as its PID 1; every command the test runs in it goes through
# nsenter into the namespaces of that PID 1 (guest_exec), as the Ansible
# connection in tests/deployed/connection_plugins does.

declare -A GUEST_NSPAWN=() GUEST_INIT=()

guest_dir() { echo "$DEPLOYED_T/guests/$1"; }
guest_root() { echo "$DEPLOYED_T/guests/$1/root"; }

# guest_prepare NAME: the overlay mount, before boot; write the guest's
# files into $(guest_root NAME) after this.
guest_prepare() {
    local d
    d=$(guest_dir "$1")
    mkdir -p "$d"/{upper,work,root}
    mount -t overlay "ksnap-deployed-$1" \
        -o "lowerdir=$DEPLOYED_ROOTFS,upperdir=$d/upper,workdir=$d/work" "$d/root"
    echo "$1" >"$d/root/etc/hostname"
}

# guest_boot NAME NSPAWN-ARGS...: boots it in the background and waits
# until its systemd says the system is running.
guest_boot() {
    local name=$1 d pid init state
    shift
    d=$(guest_dir "$name")
    # --register=no --keep-unit: this machine's PID 1 is not systemd, so
    # there is no machined to register with and no systemd to ask for a
    # scope (without them nspawn fails: "Failed to open system bus").
    systemd-nspawn --boot --quiet --directory="$d/root" --machine="ksnap-deployed-$name" \
        --register=no --keep-unit --link-journal=no --console=read-only "$@" \
        </dev/null >"$d/console.log" 2>&1 &
    pid=$!
    GUEST_NSPAWN[$name]=$pid
    echo "$pid" >"$d/nspawn.pid"
    # The guest's init: the process in a new PID namespace where it is 1,
    # among nspawn's descendants.
    init=
    for _ in $(seq 100); do
        init=$(guest_find_init "$pid") && break
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "guest $name: systemd-nspawn exited:" >&2
            cat "$d/console.log" >&2
            return 1
        fi
        sleep 0.2
    done
    if [[ -z $init ]]; then
        echo "guest $name: no init process under systemd-nspawn ($pid)" >&2
        cat "$d/console.log" >&2
        return 1
    fi
    GUEST_INIT[$name]=$init
    # Until systemd listens on its socket, systemctl cannot reach it: it
    # says "offline" or that it failed to connect.
    local deadline=$((SECONDS + 180))
    while :; do
        state=$(timeout 180 nsenter --target "$init" --all -- systemctl is-system-running --wait 2>&1) || true
        [[ ($state == offline || $state == *"Failed to connect to bus"*) && $SECONDS -lt $deadline ]] || break
        sleep 0.5
    done
    if [[ $state != running ]]; then
        echo "guest $name: systemd says '$state' after boot" >&2
        guest_exec "$name" systemctl --failed --no-pager >&2 || true
        tail -40 "$d/console.log" >&2
        return 1
    fi
}

guest_find_init() { # nspawn-pid
    local p nspid
    for p in $(pgrep -P "$1") $(for c in $(pgrep -P "$1"); do pgrep -P "$c"; done); do
        nspid=$(awk '/^NSpid:/ {print $NF}' "/proc/$p/status" 2>/dev/null) || continue
        if [[ $nspid == 1 ]]; then
            echo "$p"
            return 0
        fi
    done
    return 1
}

# guest_exec NAME CMD...: runs CMD in the guest as root (outside any unit).
guest_exec() {
    local name=$1
    shift
    nsenter --target "${GUEST_INIT[$name]}" --all -- \
        env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 HOME=/root "$@"
}

# guest_as NAME USER CMD...: runs CMD in the guest as USER with its groups
# and no capabilities, as a login of that user would.
guest_as() {
    local name=$1 user=$2
    shift 2
    guest_exec "$name" setpriv --reuid="$user" --regid="$user" --init-groups \
        --inh-caps=-all --bounding-set=-all -- "$@"
}

# Powers every guest off (SIGTERM to nspawn: an orderly shutdown of the
# guest's systemd), kills what is left after 60s, unmounts the overlays.
guest_teardown_all() {
    local name pid d deadline
    for name in "${!GUEST_NSPAWN[@]}"; do
        kill -TERM "${GUEST_NSPAWN[$name]}" 2>/dev/null || true
    done
    deadline=$((SECONDS + 60))
    for name in "${!GUEST_NSPAWN[@]}"; do
        pid=${GUEST_NSPAWN[$name]}
        while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do
            sleep 0.5
        done
        if kill -0 "$pid" 2>/dev/null; then
            echo "guest $name did not power off within 60s: killing it" >&2
            kill -KILL "$pid" 2>/dev/null || true
            if [[ -n ${GUEST_INIT[$name]:-} ]]; then
                kill -KILL "${GUEST_INIT[$name]}" 2>/dev/null || true
            fi
            wait "$pid" 2>/dev/null || true
        fi
    done
    if [[ -d $DEPLOYED_T/guests ]]; then
        for d in "$DEPLOYED_T"/guests/*/root; do
            if mountpoint -q "$d"; then
                umount "$d" || umount -l "$d"
            fi
        done
    fi
}
