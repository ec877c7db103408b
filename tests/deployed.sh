#!/usr/bin/env bash
# What Ansible installs, run as it would run: under a real systemd.
#
# Three Debian guests booted with systemd-nspawn (systemd as their PID 1,
# overlays of one Debian tree cached in /var/cache/kafka-snapshot-tests),
# sharing this machine's network. Each runs a Kafka broker as kafka.service
# (user kafka, UMask=0077, two log dirs on a reflink XFS); the first also
# runs the KRaft controller. Then, from this machine:
#
# - site.yml --check into the fresh guests: passes, reports changes,
#   writes nothing; site.yml for real, with service management on (the
#   roles enable and start the units); a second run changes nothing;
# - every service is active under systemd as its unit says: Type=notify
#   (READY=1 received), its User=, its capabilities and nothing more
#   (CapEff/CapAmb/CapBnd), NoNewPrivs, a seccomp filter, ProtectSystem
#   (the agent's /etc is read-only, its log dirs' parents writable),
#   InaccessiblePaths, and no restart by the watchdog while it ran;
# - the polkit rule: the agent's user may stop and start kafka.service,
#   and nothing else (another unit, or restart of kafka.service, refused);
# - the rolling snapshot cycle the coordinator starts at its first start
#   ends done (the agents stop and start their brokers through systemd and
#   polkit), reflink capture, every snapshot verified by the coordinator;
#   the snapshots are incremental: the content objects the agents' user
#   wrote are 0440 in 2770 dirs of the store's group, every manifest
#   references some, each agent's hash record is its user's, 0600;
# - restore --broker 2 ends done: the restored files have the owner,
#   group and mode the manifest recorded (the kafka user's), the replaced
#   log dirs were moved aside (and status lists them with their size, as
#   the agent measured them under its sandbox), broker 2 leads partitions
#   again with every replica in sync, and every record produced before is
#   read back;
# - after a second cycle (a newer complete snapshot set), prune, run as
#   the coordinator's user, deletes broker 2's older snapshot from the
#   store and the catalog;
# - restore --cluster is refused while the cluster serves; with --force
#   it restores every broker from the newest set at once (the agents stop
#   and start kafka.service through polkit): broker 2's files belong to
#   kafka with the snapshot's modes and every record produced before the
#   set is read back;
# - at the end, minutes later, no daemon was restarted (the watchdog was
#   fed).
#
# Needs root. Installs what it needs with apt-get;
# leaves nothing behind but its caches (the Debian tree, the .debs, the
# Kafka jars, the Ansible venv): the guests are powered off, the overlays
# and the XFS image unmounted, the temporary dir removed, also on failure.
#
#   KSNAP_DEPLOYED_BIN   a dir with kafka-snapshot-agent and
#                        kafka-snapshot-coordinator to deploy (default:
#                        cargo build, debug, like tests/ops.sh)
#   KSNAP_DEPLOYED_KEEP  1: on failure, keep the guests running and print
#                        how to enter them (then clean up by hand)
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

if [[ $(id -u) -ne 0 ]]; then
    echo "tests/deployed.sh needs root: it boots containers and mounts filesystems" >&2
    exit 2
fi

# --- tools ----------------------------------------------------------------------
missing=()
command -v systemd-nspawn >/dev/null || missing+=(systemd-container)
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v mkfs.xfs >/dev/null || missing+=(xfsprogs)
command -v nsenter >/dev/null || missing+=(util-linux)
command -v ss >/dev/null || missing+=(iproute2)
[[ -x /usr/bin/python3 ]] || missing+=(python3)
/usr/bin/python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
# The test's Kafka client (tests/deployed/RoundTrip.java) runs as a
# single-file source program: that needs the JDK's compiler.
command -v javac >/dev/null || missing+=(openjdk-17-jdk-headless)
command -v mvn >/dev/null || missing+=(maven)
if ((${#missing[@]})); then
    echo "installing: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

source tests/lib/ansible.sh
ansible_venv_setup

source tests/lib/kafka.sh
kafka_setup
KAFKA=$KSNAP_TEST_KAFKA_HOME
source tests/deployed/rootfs.sh
deployed_rootfs
echo "guests' Debian tree: $DEPLOYED_ROOTFS"

if [[ -n ${KSNAP_DEPLOYED_BIN:-} ]]; then
    BIN=$KSNAP_DEPLOYED_BIN
else
    cargo build --locked --quiet -p kafka-snapshot-agent -p kafka-snapshot-coordinator --bins
    BIN=${CARGO_TARGET_DIR:-$REPO/target}/debug
fi
for b in kafka-snapshot-agent kafka-snapshot-coordinator; do
    [[ -x $BIN/$b ]] || { echo "no $BIN/$b" >&2; exit 2; }
done

# --- ports (the guests share this machine's network) -------------------------------
CONTROLLER_PORT=29100
broker_port() { echo $((29090 + $1)); }
COORD_PORT=29640
metrics_port() { echo $((29640 + $1)); }
BOOTSTRAP=127.0.0.1:29091,127.0.0.1:29092,127.0.0.1:29093
busy=$(ss -Hltn | awk '{print $4}' | grep -E ':(29100|2909[1-3]|2964[0-3])$' || true)
if [[ -n $busy ]]; then
    echo "ports this test needs are in use: $busy" >&2
    exit 2
fi

# Ids inside the guests (their own /etc/passwd; the same on every guest, as
# the roles' pinned ids would be on a fleet sharing a store).
KAFKA_UID=600
STORE_GID=640
AGENT_UID=641
COORD_UID=642
COORD_GID=642
GUESTS=(b1 b2 b3)

# --- cleanup ------------------------------------------------------------------------
DEPLOYED_T=$(mktemp -d /var/tmp/ksnap-deployed.XXXXXX)
T=$DEPLOYED_T
source tests/deployed/guest.sh
export ANSIBLE_HOME=$T/ansible-home ANSIBLE_LOCAL_TEMP=$T/ansible-tmp XDG_CACHE_HOME=$T/cache
export ANSIBLE_CONFIG=$REPO/ansible/ansible.cfg ANSIBLE_NOCOLOR=1 ANSIBLE_FORCE_COLOR=0
export ANSIBLE_CONNECTION_PLUGINS=$REPO/tests/deployed/connection_plugins

pass=0
fail=0
cleanup() {
    local rc=$?
    trap - EXIT
    if [[ ${KSNAP_DEPLOYED_KEEP:-} == 1 && ($rc -ne 0 || $fail -ne 0) ]]; then
        echo "KSNAP_DEPLOYED_KEEP=1: guests left running in $T:"
        for g in "${!GUEST_INIT[@]}"; do
            echo "  $g: nsenter --target ${GUEST_INIT[$g]} --all (systemd-nspawn pid ${GUEST_NSPAWN[$g]})"
        done
        exit "$rc"
    fi
    guest_teardown_all
    if mountpoint -q "$T/xfs"; then
        umount "$T/xfs" || umount -l "$T/xfs"
    fi
    rm -rf "$T" "$REPO/ansible/.ansible"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ok() { echo "ok: $*"; pass=$((pass + 1)); }
not_ok() { echo "FAILED: $*"; fail=$((fail + 1)); }
die() {
    echo "FAILED: $*"
    fail=$((fail + 1))
    echo "deployed: $pass passed, $fail failed (stopped early)"
    exit 1
}

# --- filesystems -----------------------------------------------------------------------
# The brokers' log dirs on XFS with reflink, as in production; the store on
# this machine's filesystem, shared by every guest.
truncate -s 3G "$T/xfs.img"
mkfs.xfs -q -f -m reflink=1 "$T/xfs.img"
mkdir -p "$T/xfs"
mount -o loop "$T/xfs.img" "$T/xfs"
mkdir -p "$T/store"
chown "0:$STORE_GID" "$T/store"
chmod 2770 "$T/store"

# --- the guests' own files, before they boot ---------------------------------------------
# What `kafka-storage random-uuid` prints: never starting with '-', which
# StorageTool's argument parser would take for an option.
CLUSTER_ID=$(python3 -c '
import base64, uuid
while True:
    id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    if not id.startswith("-"):
        print(id)
        break')
JAVA_FLAGS="-Xms128m -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true"
for i in 1 2 3; do
    g=b$i
    guest_prepare "$g"
    r=$(guest_root "$g")
    chroot "$r" groupadd --system --gid "$KAFKA_UID" kafka
    chroot "$r" useradd --system --uid "$KAFKA_UID" --gid kafka --home-dir /var/lib/kafka \
        --no-create-home --shell /usr/sbin/nologin kafka
    mkdir -p "$r/etc/kafka"
    sed -e "s/@ID@/$i/g" -e "s/@PORT@/$(broker_port "$i")/g" -e "s/@CONTROLLER_PORT@/$CONTROLLER_PORT/g" \
        tests/deployed/server.properties >"$r/etc/kafka/server.properties"
    sed -e "s|@JAVA_FLAGS@|$JAVA_FLAGS|" tests/deployed/kafka.service >"$r/etc/systemd/system/kafka.service"
    # A unit that is not the broker's: the polkit rule must not let the
    # agent's user stop it.
    cp tests/deployed/ksnap-probe.service "$r/etc/systemd/system/"
    for d in disk1 disk2; do
        install -d -m 0755 "$T/xfs/$g/$d"
        install -d -m 0700 -o "$KAFKA_UID" -g "$KAFKA_UID" "$T/xfs/$g/$d/kafka-logs"
    done
done
r=$(guest_root b1)
sed -e "s/@CONTROLLER_PORT@/$CONTROLLER_PORT/g" tests/deployed/controller.properties >"$r/etc/kafka/controller.properties"
sed -e "s|@JAVA_FLAGS@|$JAVA_FLAGS|" tests/deployed/kafka-controller.service \
    >"$r/etc/systemd/system/kafka-controller.service"

# --- boot ----------------------------------------------------------------------------------
for i in 1 2 3; do
    g=b$i
    guest_boot "$g" \
        --bind="$T/xfs/$g/disk1:/data/disk1" --bind="$T/xfs/$g/disk2:/data/disk2" \
        --bind="$T/store:/mnt/kafka-snapshots" --bind-ro="$KAFKA:/opt/kafka" ||
        die "guest $g: systemd-nspawn --boot did not get to a running system"
done
ok "3 guests booted with systemd-nspawn: systemd is their PID 1 and says 'running'"

# --- Kafka ----------------------------------------------------------------------------------
kafka_format() { # guest properties
    guest_as "$1" kafka sh -c "umask 0077 && exec java -Xmx128m -XX:TieredStopAtLevel=1 \
        -Dlog4j2.configurationFile=/opt/kafka/log4j2.properties -Dksnap.log=/dev/null \
        -cp '/opt/kafka/libs/*' kafka.tools.StorageTool format -t $CLUSTER_ID -c $2" >/dev/null
}
guest_exec b1 install -d -m 0700 -o kafka -g kafka /var/lib/kafka-controller
kafka_format b1 /etc/kafka/controller.properties || die "formatting the controller's storage"
guest_exec b1 systemctl enable --quiet --now kafka-controller.service
for g in "${GUESTS[@]}"; do
    kafka_format "$g" /etc/kafka/server.properties || die "formatting $g's log dirs"
    guest_exec "$g" systemctl enable --quiet --now kafka.service
    guest_exec "$g" systemctl start ksnap-probe.service
done
roundtrip() { java -cp "$KAFKA/libs/*" tests/deployed/RoundTrip.java "$@"; }
created=false
for _ in $(seq 60); do
    if roundtrip create "$BOOTSTRAP" deployed 3 >"$T/create.log" 2>&1; then
        created=true
        break
    fi
    sleep 2
done
if [[ $created == true ]] && roundtrip produce "$BOOTSTRAP" deployed 3000 before >>"$T/create.log" 2>&1; then
    ok "Kafka runs in the guests (kafka.service as user kafka): topic 'deployed' (3 partitions, RF 3) created, 3000 records produced"
else
    cat "$T/create.log"
    for g in "${GUESTS[@]}"; do guest_exec "$g" tail -20 /var/log/kafka/server.log || true; done
    die "Kafka cluster in the guests"
fi

# --- Ansible -------------------------------------------------------------------------------------
init_pid() { echo "${GUEST_INIT[$1]}"; }
cat >"$T/inventory.yml" <<INV
kafka_snapshot_agents:
  hosts:
    b1:
      ansible_host: "$(init_pid b1)"
      kafka_snapshot_agent_metrics_listen: 127.0.0.1:$(metrics_port 1)
    b2:
      ansible_host: "$(init_pid b2)"
      kafka_snapshot_agent_metrics_listen: 127.0.0.1:$(metrics_port 2)
    b3:
      ansible_host: "$(init_pid b3)"
      kafka_snapshot_agent_metrics_listen: 127.0.0.1:$(metrics_port 3)
kafka_snapshot_coordinator:
  hosts:
    b1:
all:
  vars:
    ansible_connection: nsenter
    ansible_python_interpreter: /usr/bin/python3
    ansible_become: false
    # polkitd is in the guests' tree already; the guests have no apt lists.
    kafka_snapshot_manage_packages: false
    kafka_snapshot_binary_src_dir: $BIN
    kafka_snapshot_agent_uid: $AGENT_UID
    kafka_snapshot_coordinator_uid: $COORD_UID
    kafka_snapshot_coordinator_gid: $COORD_GID
    kafka_snapshot_storage_gid: $STORE_GID
    kafka_snapshot_storage:
      url: file:///mnt/kafka-snapshots
    kafka_snapshot_kafka:
      bootstrap_servers: [$BOOTSTRAP]
    kafka_snapshot_coordinator_url: http://127.0.0.1:$COORD_PORT
    kafka_snapshot_coordinator_listen: 127.0.0.1:$COORD_PORT
    # A coordinator's first cycle is due at its first start; the next
    # scheduled one (1 January, 03:00) does not come during the test.
    kafka_snapshot_coordinator_schedule:
      schedule: "0 3 1 1 *"
      starting_deadline: 1h
    # One snapshot per broker is kept, and only an explicit prune deletes.
    kafka_snapshot_coordinator_retention:
      keep_last: 1
      max_age: null
      prune_after_cycle: false
    kafka_snapshot_agent_broker_settings:
      stop_timeout: 3m
    # Incremental snapshots (the default), as the service users: files of
    # 4 KiB and more (the test's partitions hold little data) as content
    # objects shared by every broker, in 64 KiB chunks.
    kafka_snapshot_agent_snapshot_settings:
      object_min_size: 4KiB
      object_chunk_size: 64KiB
INV
playbook() { (cd ansible && ansible-playbook -i "$T/inventory.yml" site.yml "$@"); }
recap_count() { # log regex: PLAY RECAP lines matching
    sed -n '/^PLAY RECAP/,$p' "$1" | grep -Ec "$2" || true
}

if playbook --check --diff >"$T/check.log" 2>&1 &&
    [[ $(recap_count "$T/check.log" 'changed=[1-9][0-9]* .*failed=0 ') -eq 3 ]] &&
    ! guest_exec b1 test -e /etc/kafka-snapshot &&
    ! guest_exec b2 test -e /etc/kafka-snapshot &&
    ! guest_exec b2 getent passwd kafka-snapshot >/dev/null; then
    ok "site.yml --check on the fresh guests: passes, reports changes on all 3, writes nothing"
else
    tail -60 "$T/check.log"
    not_ok "site.yml --check on the fresh guests"
fi

if playbook >"$T/run1.log" 2>&1 && [[ $(recap_count "$T/run1.log" 'failed=0 ') -eq 3 ]]; then
    ok "site.yml: first run, services managed (enabled and started under systemd)"
else
    tail -80 "$T/run1.log"
    die "site.yml: first run"
fi
# --- the first cycle ----------------------------------------------------------------------------------
# The coordinator starts its first rolling cycle at its first start: the
# agents stop and start their brokers through systemd, one at a time.
coord() { guest_exec b1 kafka-snapshot-coordinator "$@"; }
status_json() { coord status --json; }
jq_py() { python3 -c "import json, sys; d = json.load(sys.stdin); $1"; }
# wait_cycle ID: until the cycle ends (finishing: every broker is through,
# the final in-sync check is still to come); prints its state.
wait_cycle() {
    local state=
    for _ in $(seq 600); do
        state=$(status_json | jq_py "c = d['cycle']; print(c['state'] if c and c['id'] == $1 else 'other')")
        case $state in running | finishing | other) sleep 1 ;; *) break ;; esac
    done
    echo "$state"
}
# wait_verified N: until N snapshots are in the catalog, each verified.
wait_verified() {
    local n=
    for _ in $(seq 120); do
        n=$(coord snapshots --json | jq_py "print(sum(1 for s in d if s['verify_ok'] is True))")
        [[ $n -ge $1 ]] && return 0
        sleep 1
    done
    return 1
}

cycle=
for _ in $(seq 60); do
    cycle=$(status_json | jq_py "print(d['cycle']['id'] if d['cycle'] else '')") || true
    [[ -n $cycle ]] && break
    sleep 1
done
if [[ -n $cycle && $(wait_cycle "$cycle") == done ]]; then
    ok "the coordinator's first cycle ($cycle, brokers 1, 2, 3) ends done"
else
    coord status || true
    for g in "${GUESTS[@]}"; do guest_exec "$g" journalctl -u kafka-snapshot-agent --no-pager | tail -30 || true; done
    die "the first snapshot cycle"
fi
if wait_verified 3 &&
    [[ $(coord snapshots --json | jq_py "print(sorted((s['broker'], s['capture']) for s in d))") == "[(1, 'reflink'), (2, 'reflink'), (3, 'reflink')]" ]]; then
    ok "the coordinator verified one snapshot of each broker, each captured by reflink"
else
    coord snapshots || true
    not_ok "snapshots not all verified"
fi
# The content objects: written by the agents' user, readable by the
# coordinator's group (2770 dirs, objects 0440 once committed), every
# manifest referencing some; each agent's hash record its user's only.
objects_problems=()
objects_dir=$T/store/$CLUSTER_ID/objects
n_objects=$(find "$objects_dir" -type f -name '*.zst' 2>/dev/null | wc -l)
((n_objects > 0)) || objects_problems+=("no content object under $objects_dir")
bad=$(find "$objects_dir" -type f -name '*.zst' \( ! -uid $AGENT_UID -o ! -gid $STORE_GID -o ! -perm 0440 \) 2>/dev/null | head -3)
[[ -z $bad ]] || objects_problems+=("objects not $AGENT_UID:$STORE_GID 0440: $bad")
bad=$(find "$objects_dir" -type d ! -perm 2770 2>/dev/null | head -3)
[[ -z $bad ]] || objects_problems+=("object dirs not 2770: $bad")
for m in "$T"/store/"$CLUSTER_ID"/broker-*/*/manifest.json; do
    python3 -c 'import json, sys; m = json.load(open(sys.argv[1])); sys.exit(0 if m.get("objects") and any(e.get("chunks") for e in m["entries"]) else 1)' "$m" ||
        objects_problems+=("$m references no content object")
done
[[ $(guest_exec b2 stat -c '%U %a' /var/lib/kafka-snapshot-agent/hash-cache.json 2>&1) == "kafka-snapshot 600" ]] ||
    objects_problems+=("b2's hash record is not kafka-snapshot 600: $(guest_exec b2 stat -c '%U %a' /var/lib/kafka-snapshot-agent/hash-cache.json 2>&1)")
if ((${#objects_problems[@]} == 0)); then
    ok "incremental snapshots as the service users: $n_objects content objects, $AGENT_UID:$STORE_GID 0440 in 2770 dirs, referenced by every manifest; b2's hash record kafka-snapshot 0600"
else
    not_ok "incremental snapshots: ${objects_problems[*]}"
fi

if playbook >"$T/run2.log" 2>&1 && [[ $(recap_count "$T/run2.log" 'changed=0 .*failed=0 ') -eq 3 ]]; then
    ok "site.yml: second run changes nothing (3 hosts, changed=0)"
else
    grep -E '^(changed|failed|fatal)|RECAP|changed=' "$T/run2.log" | head -40
    not_ok "site.yml: second run changed something"
fi

# --- the services, as systemd runs them ----------------------------------------------------------
unit_prop() { guest_exec "$1" systemctl show --value -p "$3" "$2"; }
# Capabilities as /proc shows them: CHOWN(0) DAC_OVERRIDE(1)
# DAC_READ_SEARCH(2) FOWNER(3) for the agent, none for the coordinator.
check_service() { # guest unit user caps
    local g=$1 unit=$2 user=$3 caps=$4 pid st problems=()
    [[ $(unit_prop "$g" "$unit" Type) == notify ]] || problems+=("Type is not notify")
    [[ $(unit_prop "$g" "$unit" ActiveState)/$(unit_prop "$g" "$unit" SubState) == active/running ]] ||
        problems+=("not active/running: $(unit_prop "$g" "$unit" ActiveState)/$(unit_prop "$g" "$unit" SubState)")
    pid=$(unit_prop "$g" "$unit" MainPID)
    if [[ $pid == 0 ]]; then
        problems+=("no main process")
    else
        st=$(guest_exec "$g" cat "/proc/$pid/status")
        local uid
        uid=$(guest_exec "$g" id -u "$user")
        grep -Eq "^Uid:\s+$uid\s+$uid\s+$uid\s+$uid$" <<<"$st" || problems+=("not running as $user ($uid): $(grep ^Uid: <<<"$st")")
        for c in CapEff CapPrm CapAmb CapBnd; do
            grep -Eq "^$c:\s+$caps$" <<<"$st" || problems+=("$(grep "^$c:" <<<"$st"), want $caps")
        done
        grep -Eq '^NoNewPrivs:\s+1$' <<<"$st" || problems+=("NoNewPrivs is not 1")
        grep -Eq '^Seccomp:\s+2$' <<<"$st" || problems+=("no seccomp filter")
    fi
    if ((${#problems[@]})); then
        not_ok "$g $unit: ${problems[*]}"
        guest_exec "$g" systemctl status --no-pager "$unit" | tail -20 || true
    else
        ok "$g $unit: Type=notify and active (READY=1), runs as $user, CapEff=CapPrm=CapAmb=CapBnd=$caps, NoNewPrivs, seccomp; status: $(unit_prop "$g" "$unit" StatusText)"
    fi
}
AGENT_CAPS=000000000000000f
COORD_CAPS=0000000000000000
for g in "${GUESTS[@]}"; do
    check_service "$g" kafka-snapshot-agent.service kafka-snapshot "$AGENT_CAPS"
done
check_service b1 kafka-snapshot-coordinator.service kafka-snapshot-coordinator "$COORD_CAPS"
kpid=$(unit_prop b2 kafka.service MainPID)
if [[ $(guest_exec b2 stat -c %U "/proc/$kpid") == kafka ]]; then
    ok "b2 kafka.service runs as user kafka"
else
    not_ok "b2 kafka.service does not run as kafka"
fi

# The agent's filesystem sandbox, seen from inside its mount namespace.
apid=$(unit_prop b2 kafka-snapshot-agent.service MainPID)
in_agent_ns() { guest_exec b2 nsenter --target "$apid" --mount -- "$@"; }
problems=()
out=$(in_agent_ns touch /etc/ksnap-probe 2>&1) && problems+=("/etc is writable")
[[ $out == *"Read-only file system"* ]] || problems+=("touch /etc: $out")
in_agent_ns sh -c 'touch /data/disk1/.ksnap-probe && rm /data/disk1/.ksnap-probe' ||
    problems+=("/data/disk1 (a log dir's parent) is not writable")
in_agent_ns sh -c 'touch /mnt/kafka-snapshots/.ksnap-probe && rm /mnt/kafka-snapshots/.ksnap-probe' ||
    problems+=("the store is not writable")
[[ $(in_agent_ns stat -c '%a %s' /etc/shadow) == "0 0" ]] || problems+=("/etc/shadow is not hidden")
if ((${#problems[@]})); then
    not_ok "the agent's sandbox (b2): ${problems[*]}"
else
    ok "the agent's sandbox (b2): /etc read-only, log dirs' parents and the store writable, /etc/shadow hidden"
fi

# --- polkit: start and stop of kafka.service, nothing else -----------------------------------------
as_agent() { guest_as b3 kafka-snapshot "$@"; }
problems=()
as_agent systemctl --no-ask-password stop kafka.service >"$T/polkit.log" 2>&1 || problems+=("stop kafka.service refused: $(cat "$T/polkit.log")")
[[ $(unit_prop b3 kafka.service ActiveState) == inactive ]] || problems+=("kafka.service still $(unit_prop b3 kafka.service ActiveState) after stop")
as_agent systemctl --no-ask-password start kafka.service >"$T/polkit.log" 2>&1 || problems+=("start kafka.service refused: $(cat "$T/polkit.log")")
[[ $(unit_prop b3 kafka.service ActiveState) == active ]] || problems+=("kafka.service $(unit_prop b3 kafka.service ActiveState) after start")
if as_agent systemctl --no-ask-password stop ksnap-probe.service >"$T/polkit.log" 2>&1; then
    problems+=("stop ksnap-probe.service allowed")
fi
grep -qi 'access denied\|authentication required' "$T/polkit.log" || problems+=("stop ksnap-probe.service: $(cat "$T/polkit.log")")
[[ $(unit_prop b3 ksnap-probe.service ActiveState) == active ]] || problems+=("ksnap-probe.service was stopped")
if as_agent systemctl --no-ask-password restart kafka.service >"$T/polkit.log" 2>&1; then
    problems+=("restart kafka.service allowed")
fi
if ((${#problems[@]})); then
    not_ok "polkit rule: ${problems[*]}"
else
    ok "polkit rule: user kafka-snapshot may stop and start kafka.service; stopping another unit and restarting kafka.service are refused"
fi

# --- restore of broker 2 ----------------------------------------------------------------------------------
roundtrip produce "$BOOTSTRAP" deployed 1000 after-snapshot >/dev/null
snap2=$(coord snapshots --broker 2 --json | jq_py "print(d[0]['snapshot_id'])")
if coord restore --broker 2 --yes >"$T/restore.log" 2>&1 && grep -q 'done' "$T/restore.log"; then
    ok "restore --broker 2 ends done ($(tail -1 "$T/restore.log"))"
else
    cat "$T/restore.log"
    guest_exec b2 journalctl -u kafka-snapshot-agent --no-pager | tail -40 || true
    die "restore of broker 2"
fi
manifest=/mnt/kafka-snapshots/$CLUSTER_ID/broker-2/$snap2/manifest.json
if guest_exec b2 python3 - "$manifest" "" "$KAFKA_UID" "$KAFKA_UID" <tests/deployed/check_restored.py >"$T/owners.log" 2>&1; then
    ok "restored files of broker 2 belong to kafka with the snapshot's modes; the old log dirs were moved aside: $(tail -1 "$T/owners.log" | sed 's/^ *//')"
else
    cat "$T/owners.log"
    not_ok "owners and modes of broker 2's restored files"
fi
# What the restore moved aside, as the agent (its user, its sandbox)
# measures and reports it: status lists it with its size.
moved=
for _ in $(seq 60); do
    moved=$(status_json | jq_py "print(' '.join(m['path'] + ':' + str(m['bytes']) for b in d['brokers'] if b['broker'] == 2 for m in b['moved_aside']))")
    [[ -n $moved ]] && break
    sleep 1
done
if [[ $moved == *.pre-restore-* ]] && coord status | grep -q 'moved aside by restores' &&
    guest_exec b2 sh -c "ls -d /data/*/*.pre-restore-*" >/dev/null 2>&1; then
    ok "status lists what the restore moved aside on b2, measured by the agent: $moved"
else
    coord status || true
    not_ok "status does not list broker 2's moved-aside data (got: '$moved')"
fi
if roundtrip lead "127.0.0.1:$(broker_port 2)" deployed 2 >"$T/serve.log" 2>&1 &&
    roundtrip consume "127.0.0.1:$(broker_port 2)" deployed before 3000 >>"$T/serve.log" 2>&1 &&
    roundtrip consume "127.0.0.1:$(broker_port 2)" deployed after-snapshot 1000 >>"$T/serve.log" 2>&1 &&
    roundtrip produce "127.0.0.1:$(broker_port 2)" deployed 500 after-restore >>"$T/serve.log" 2>&1 &&
    roundtrip consume "127.0.0.1:$(broker_port 2)" deployed after-restore 500 >>"$T/serve.log" 2>&1; then
    ok "broker 2 serves again: it leads a partition, every ISR is whole, every record produced before and after the snapshot is read back through it, and a new round trip works"
else
    cat "$T/serve.log"
    not_ok "broker 2 after the restore"
fi

# --- prune as the coordinator's user ----------------------------------------------------------------------
# A second cycle of every broker: a newer complete set, so the first
# set's snapshots may go (retention keeps the newest complete verified set).
if out=$(coord run-now 2>&1) && cycle=$(grep -oE 'cycle [0-9]+' <<<"$out" | cut -d' ' -f2) &&
    [[ $(wait_cycle "$cycle") == done ]] && wait_verified 6; then
    ok "run-now: a second cycle of every broker, verified (a second complete snapshot set)"
else
    echo "$out"
    coord status || true
    die "second cycle"
fi
# Brokers 1 and 3 were not restored in between: their second snapshots
# read the active segments only from near where the first ended them,
# proven against the clones kept from the first (as the service user,
# with the unit's capabilities).
resumed_problems=()
for b in 1 3; do
    newest=$(ls -d "$T/store/$CLUSTER_ID/broker-$b"/*/ | sort | tail -1)
    read -r resumed hashed <<<"$(python3 -c 'import json, sys; o = json.load(open(sys.argv[1]))["objects"]; print(o.get("resumed", 0), o["hashed"])' "${newest}manifest.json")"
    ((resumed > 0)) || resumed_problems+=("broker $b's $(basename "$newest") read all $hashed files it hashed from their start")
done
if ((${#resumed_problems[@]} == 0)); then
    ok "second cycle: brokers 1 and 3 read their active segments only from near their old ends (kept clones)"
else
    for g in b1 b3; do guest_exec "$g" journalctl -u kafka-snapshot-agent --no-pager | grep -iE 'kept|content objects' | tail -10 || true; done
    not_ok "second cycle: ${resumed_problems[*]}"
fi
if guest_as b1 kafka-snapshot-coordinator kafka-snapshot-coordinator prune >"$T/prune.log" 2>&1 &&
    grep -q "deleted broker 2 snapshot $snap2" "$T/prune.log" &&
    [[ ! -e $T/store/$CLUSTER_ID/broker-2/$snap2/manifest.json ]] &&
    [[ $(coord snapshots --broker 2 --json | jq_py "print(len(d))") == 1 ]]; then
    ok "prune as user kafka-snapshot-coordinator deletes broker 2's older snapshot from the store and the catalog"
else
    cat "$T/prune.log"
    ls -la "$T/store/$CLUSTER_ID/broker-2" || true
    not_ok "prune of broker 2's older snapshot"
fi

# --- whole-cluster restore as the deployed users --------------------------------------------------------------
# Every broker at once from the newest set (the controller, without an
# agent here, keeps its metadata): the agents stop and start kafka.service
# through polkit and restore the kafka user's files with CAP_CHOWN.
roundtrip produce "$BOOTSTRAP" deployed 300 after-set >/dev/null
set_id=$(coord snapshots --sets --json | jq_py "print([s for s in d if s['complete'] and s['verified']][-1]['set_id'])")
snap2=$(coord snapshots --sets --json |
    jq_py "print([n['snapshot_id'] for s in d if s['set_id'] == '$set_id' for n in s['nodes'] if n['node'] == 2][0])")
if coord restore --cluster --yes >"$T/cluster.log" 2>&1; then
    not_ok "restore --cluster while the cluster serves was not refused: $(cat "$T/cluster.log")"
elif grep -q 'serving clients' "$T/cluster.log"; then
    ok "restore --cluster is refused while the cluster serves clients, naming what it sees"
else
    not_ok "restore --cluster refused for another reason: $(cat "$T/cluster.log")"
fi
if coord restore --cluster --set "$set_id" --yes --force >"$T/cluster.log" 2>&1 && grep -q 'done' "$T/cluster.log"; then
    ok "restore --cluster --force of set $set_id ends done ($(tail -1 "$T/cluster.log"))"
else
    cat "$T/cluster.log"
    for g in b1 b2 b3; do guest_exec "$g" journalctl -u kafka-snapshot-agent --no-pager | tail -20 || true; done
    die "whole-cluster restore"
fi
manifest=/mnt/kafka-snapshots/$CLUSTER_ID/broker-2/$snap2/manifest.json
if guest_exec b2 python3 - "$manifest" "" "$KAFKA_UID" "$KAFKA_UID" <tests/deployed/check_restored.py >"$T/owners.log" 2>&1 &&
    roundtrip consume "$BOOTSTRAP" deployed before 3000 >"$T/serve.log" 2>&1 &&
    roundtrip consume "$BOOTSTRAP" deployed after-snapshot 1000 >>"$T/serve.log" 2>&1 &&
    roundtrip consume "$BOOTSTRAP" deployed after-restore 500 >>"$T/serve.log" 2>&1; then
    ok "after the whole-cluster restore: broker 2's files belong to kafka with the snapshot's modes, and every record produced before the set is read back"
else
    cat "$T/owners.log" "$T/serve.log"
    not_ok "the cluster after the whole-cluster restore"
fi

# --- nothing restarted along the way ------------------------------------------------------------------------
# Minutes have passed, more than either unit's WatchdogSec: a daemon that
# did not ping the watchdog would have been killed and restarted.
problems=()
for pair in b1:kafka-snapshot-coordinator.service b1:kafka-snapshot-agent.service \
    b2:kafka-snapshot-agent.service b3:kafka-snapshot-agent.service; do
    g=${pair%%:*} u=${pair#*:}
    n=$(unit_prop "$g" "$u" NRestarts)
    [[ $n == 0 && $(unit_prop "$g" "$u" ActiveState) == active ]] || problems+=("$g $u: NRestarts=$n, $(unit_prop "$g" "$u" ActiveState)")
    [[ -n $(unit_prop "$g" "$u" WatchdogUSec) && $(unit_prop "$g" "$u" WatchdogUSec) != 0 ]] || problems+=("$g $u: no watchdog")
done
if ((${#problems[@]})); then
    not_ok "watchdog: ${problems[*]}"
else
    ok "every agent and the coordinator still active with their watchdog on, never restarted (up for ${SECONDS}s of this test)"
fi

echo "deployed: $pass passed, $fail failed"
((fail == 0))
