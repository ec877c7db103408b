#!/usr/bin/env bash
# Tests of what operates the binaries: the systemd units, the polkit rule
# and the Ansible roles. tests/run.sh calls it; it also runs alone.
#
# - the roles' filter plugin (unit tests); the roles are self-contained
#   (no symlinks, their copies of the units and of the filter plugin
#   byte-identical to the originals) and their comments agree with what
#   they install (tests/ops/check_roles.py); ansible-lint (production
#   profile), ansible-playbook --syntax-check;
# - the Prometheus alert rules: `promtool check rules` and the promtool
#   unit tests beside them (Debian's prometheus package brings promtool);
# - site.yml --check --diff into fresh roots (nothing installed, no users
#   yet): it passes, reports changes and writes nothing;
# - site.yml run for real against this machine (connection local) as three
#   brokers and a coordinator, each into its own temporary root, with
#   service management off: files, owners, modes, users and rendered
#   configs are checked, the configs pass the binaries' `validate`, the
#   installed units (with their drop-ins) pass `systemd-analyze verify`, a
#   config the agent rejects is never installed, and a second run changes
#   nothing; with a fake systemctl and three forks, the agents' restart
#   handler runs on one host at a time; the users, their groups and the
#   store's group get the pinned ids, also when the agent's group is the
#   store's group (the default). With a build that lacks the daemon, its config sections are
#   still rendered (check mode) and read back.
#
# Needs root (it creates the system users ksnap-test-agent and
# ksnap-test-coord and the group ksnap-test-store, and removes them at the
# end). Leaves nothing behind but
# a Python venv with ansible-core and ansible-lint in
# /var/cache/kafka-snapshot-tests/ops-venv.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

if [[ $(id -u) -ne 0 ]]; then
    echo "tests/ops.sh needs root: it creates system users and files owned by them" >&2
    exit 2
fi

# --- tools ----------------------------------------------------------------------
# Debian's own python3: the venv outlives pyenv shims and the like.
missing=()
command -v systemd-analyze >/dev/null || missing+=(systemd)
command -v promtool >/dev/null || missing+=(prometheus)
[[ -x /usr/bin/python3 ]] || missing+=(python3)
/usr/bin/python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
if ((${#missing[@]})); then
    echo "installing: ${missing[*]}"
    apt-get update -qq
    # --no-install-recommends: promtool is all we need of prometheus.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

source tests/lib/ansible.sh
ansible_venv_setup

cargo build --workspace --bins --locked --quiet
BIN=${CARGO_TARGET_DIR:-$REPO/target}/debug

T=$(mktemp -d /tmp/kafka-snapshot-ops.XXXXXX)
# Ansible's and ansible-lint's own files stay in the temporary dir too.
export ANSIBLE_HOME=$T/ansible-home ANSIBLE_LOCAL_TEMP=$T/ansible-tmp XDG_CACHE_HOME=$T/cache
export ANSIBLE_CONFIG=$REPO/ansible/ansible.cfg ANSIBLE_NOCOLOR=1 ANSIBLE_FORCE_COLOR=0
remove_test_users() {
    local u
    for u in ksnap-test-agent ksnap-test-coord ksnap-test-store; do
        if getent passwd "$u" >/dev/null; then userdel "$u"; fi
        if getent group "$u" >/dev/null; then groupdel "$u"; fi
    done
}
cleanup() {
    remove_test_users
    rm -rf "$T" "$REPO/ansible/.ansible"
}
trap cleanup EXIT
remove_test_users

pass=0
fail=0
ok() { echo "ok: $*"; pass=$((pass + 1)); }
not_ok() { echo "FAILED: $*"; fail=$((fail + 1)); }

# --- static checks --------------------------------------------------------------
if "$VENV/bin/python" tests/ops/test_filters.py 2>"$T/filters.log"; then
    ok "filter plugin unit tests"
else
    cat "$T/filters.log"
    not_ok "filter plugin unit tests"
fi
if "$VENV/bin/python" tests/ops/check_roles.py "$REPO"; then
    ok "roles are self-contained (no symlinks; units and filter plugin identical to the originals) and agree with the example configs"
else
    not_ok "roles: symlinks, drifted copies or drifted comments"
fi
if (cd ansible && ansible-lint --nocolor -q) >"$T/lint.log" 2>&1; then
    ok "ansible-lint (production profile)"
else
    cat "$T/lint.log"
    not_ok "ansible-lint"
fi
if (cd ansible && ansible-playbook -i inventory/example/hosts.yml --syntax-check site.yml) >"$T/syntax.log" 2>&1; then
    ok "ansible-playbook --syntax-check with the example inventory"
else
    cat "$T/syntax.log"
    not_ok "ansible-playbook --syntax-check"
fi

# --- alert rules -------------------------------------------------------------------
# That every metric the rules use exists is checked by the coordinator's
# integration tests (alert_rules_use_only_declared_metrics).
if promtool check rules coordinator/alerts/kafka-snapshot.rules.yml >"$T/promtool.log" 2>&1; then
    ok "promtool check rules: coordinator/alerts/kafka-snapshot.rules.yml"
else
    cat "$T/promtool.log"
    not_ok "promtool check rules"
fi
if (cd coordinator/alerts && promtool test rules kafka-snapshot.rules.test.yml) >"$T/promtool.log" 2>&1; then
    ok "promtool test rules: left-stopped, missing-snapshot and unverified alerts fire, and only then"
else
    cat "$T/promtool.log"
    not_ok "promtool test rules"
fi

# --- what the binaries of this build support -----------------------------------------
# The daemon's config sections and the coordinator's `validate` are written
# in parallel to these roles: use them as soon as the binaries have them.
if "$BIN/kafka-snapshot-agent" run --help >/dev/null 2>&1; then
    daemon=true
else
    daemon=false
    echo "note: this kafka-snapshot-agent has no 'run' command: agent.toml is rendered without [coordinator]/[metrics] (kafka_snapshot_agent_daemon_config=false)"
fi
if "$BIN/kafka-snapshot-coordinator" validate --help >/dev/null 2>&1; then
    coord_validate=true
else
    coord_validate=false
    echo "note: this kafka-snapshot-coordinator has no 'validate' command: coordinator.toml is checked by the test only, not by the binary"
fi

# --- a fleet on this machine ----------------------------------------------------------
# Pinned ids for the test users and groups (agent uid and gid, coordinator
# uid and gid, the store's gid): system ids that are free on this machine
# both as uids and as gids, and differ from one another.
ids=()
for ((id = 899; id > 100 && ${#ids[@]} < 5; id--)); do
    getent passwd "$id" >/dev/null || getent group "$id" >/dev/null || ids+=("$id")
done
read -r agent_uid agent_gid coord_uid coord_gid store_gid <<<"${ids[*]}"

# Encryption at rest: a recipient for every agent, and the identity on
# broker-b only (the host that restores).
recipient=$("$BIN/kafka-snapshot-agent" key generate --output "$T/identity.txt" 2>/dev/null)
identity=$(grep '^AGE-SECRET-KEY-' "$T/identity.txt")
# The cluster's object key (encrypted incremental snapshots): every agent.
"$BIN/kafka-snapshot-agent" key generate-object-key --output "$T/object.key" >/dev/null 2>&1
object_key=$(grep -v '^#' "$T/object.key")

mkdir -p "$T"/{broker-a,broker-b,coord}/etc/kafka "$T/broker-c/opt/kafka/config"
cat >"$T/broker-a/etc/kafka/server.properties" <<'PROPS'
# KRaft broker, two disks
process.roles=broker
node.id=1
log.dirs=/data/disk1/kafka-logs,/data/disk2/kafka-logs
listeners=PLAINTEXT://:9092
PROPS
cat >"$T/broker-b/etc/kafka/server.properties" <<'PROPS'
node.id = 2
log.dirs = /data/d1/kafka-logs,\
           /data/d2/kafka-logs
metadata.log.dir: /data/meta/kafka-meta
PROPS
cat >"$T/broker-c/opt/kafka/config/server.properties" <<'PROPS'
# ZooKeeper-era broker, one log dir
broker.id=3
log.dir=/var/lib/kafka/data
PROPS

cat >"$T/inventory.yml" <<INV
kafka_snapshot_agents:
  hosts:
    broker-a:
      kafka_snapshot_root: $T/broker-a
    broker-b:
      kafka_snapshot_root: $T/broker-b
      kafka_snapshot_agent_token: token-from-the-vault-for-broker-b
      kafka_snapshot_agent_encryption_identity: $identity
    broker-c:
      kafka_snapshot_root: $T/broker-c
      kafka_snapshot_agent_server_properties: /opt/kafka/config/server.properties
      kafka_snapshot_agent_kafka_unit: confluent-server.service
kafka_snapshot_coordinator:
  hosts:
    coord:
      kafka_snapshot_root: $T/coord
all:
  vars:
    ansible_connection: local
    ansible_python_interpreter: $VENV/bin/python
    ansible_become: false
    kafka_snapshot_manage_services: false
    kafka_snapshot_manage_packages: false
    kafka_snapshot_binary_src_dir: $BIN
    kafka_snapshot_agent_user: ksnap-test-agent
    kafka_snapshot_agent_group: ksnap-test-agent
    kafka_snapshot_agent_uid: $agent_uid
    kafka_snapshot_agent_gid: $agent_gid
    kafka_snapshot_coordinator_user: ksnap-test-coord
    kafka_snapshot_coordinator_group: ksnap-test-coord
    kafka_snapshot_coordinator_uid: $coord_uid
    kafka_snapshot_coordinator_gid: $coord_gid
    kafka_snapshot_storage_group: ksnap-test-store
    kafka_snapshot_storage_gid: $store_gid
    kafka_snapshot_storage:
      url: file:///mnt/kafka-snapshots
    kafka_snapshot_encryption_recipients: [$recipient]
    kafka_snapshot_encryption_object_key: "$object_key"
    kafka_snapshot_kafka:
      bootstrap_servers: [broker-a:9092, broker-b:9092]
    kafka_snapshot_coordinator_url: http://coord.test:9640
    kafka_snapshot_coordinator_listen: 127.0.0.1:9640
    kafka_snapshot_agent_broker_settings:
      stop_timeout: 15m
    kafka_snapshot_agent_daemon_config: $daemon
    kafka_snapshot_coordinator_validate: $coord_validate
INV

# One host at a time: the brokers share this machine's /etc/passwd.
playbook() { (cd ansible && ansible-playbook -i "$T/inventory.yml" --forks 1 site.yml "$@"); }

# --check on hosts that have nothing yet (no users, no files): it must get
# through every task, say what it would change, and write nothing.
if playbook --check --diff >"$T/check.log" 2>&1 &&
    recap=$(sed -n '/^PLAY RECAP/,$p' "$T/check.log") &&
    [[ $(grep -Ec 'changed=[1-9][0-9]* .*failed=0 ' <<<"$recap") -eq 4 ]] &&
    grep -q '^changed: \[broker-a\]' "$T/check.log" &&
    [[ ! -e $T/broker-a/etc/kafka-snapshot && ! -e $T/coord/etc/kafka-snapshot ]] &&
    ! getent passwd ksnap-test-agent >/dev/null; then
    ok "site.yml --check on fresh hosts: passes, reports changes on all 4, writes nothing"
else
    cat "$T/check.log"
    not_ok "site.yml --check on fresh hosts"
fi

if playbook >"$T/run1.log" 2>&1; then
    ok "site.yml: first run"
else
    cat "$T/run1.log"
    not_ok "site.yml: first run"
fi

if "$VENV/bin/python" tests/ops/check_install.py "$REPO" "$T" "$BIN" "$daemon" \
    "$agent_uid" "$agent_gid" "$coord_uid" "$coord_gid" "$store_gid" "$recipient" "$T/identity.txt" \
    "$T/object.key"; then
    ok "installed files, owners, modes, users and configs"
else
    not_ok "installed files, owners, modes, users and configs"
fi

for h in broker-a broker-b broker-c; do
    # The object key it names is read from the host's root.
    if "$BIN/kafka-snapshot-agent" validate --config "$T/$h/etc/kafka-snapshot/agent.toml" --root "$T/$h" >"$T/validate.log" 2>&1; then
        ok "kafka-snapshot-agent validate: $h's agent.toml"
    else
        cat "$T/validate.log"
        not_ok "kafka-snapshot-agent validate: $h's agent.toml"
    fi
done
if [[ $coord_validate == true ]]; then
    if "$BIN/kafka-snapshot-coordinator" validate --config "$T/coord/etc/kafka-snapshot/coordinator.toml" >"$T/validate.log" 2>&1; then
        ok "kafka-snapshot-coordinator validate: coordinator.toml"
    else
        cat "$T/validate.log"
        not_ok "kafka-snapshot-coordinator validate: coordinator.toml"
    fi
fi

# --- systemd-analyze verify on the installed units and drop-ins -----------------------
# verify resolves ExecStart= and the units' dependencies under --root.
verify_unit() { # root unit
    mkdir -p "$1/usr/lib/systemd" "$1/bin"
    [[ -d $1/usr/lib/systemd/system ]] || cp -a /usr/lib/systemd/system "$1/usr/lib/systemd/"
    # What every host's base system has and the units run: ExecReload=/bin/kill.
    [[ -e $1/bin/kill ]] || cp /bin/kill "$1/bin/kill"
    systemd-analyze verify --man=no --root="$1" "$2" 2>&1
}
for pair in broker-a:kafka-snapshot-agent.service coord:kafka-snapshot-coordinator.service; do
    root=$T/${pair%%:*} unit=${pair#*:}
    if out=$(verify_unit "$root" "$unit") && [[ -z $out ]]; then
        ok "systemd-analyze verify: $unit (installed on ${pair%%:*}, with its drop-in)"
    else
        echo "$out"
        not_ok "systemd-analyze verify: $unit"
    fi
done
# The check must be able to fail: a unit with a misspelt setting, or
# without its binary, is reported.
mkdir -p "$T/bad/etc/systemd/system" "$T/bad/usr/local/bin"
sed 's/^ProtectSystem=strict$/ProtectSystem=strictest/' systemd/kafka-snapshot-agent.service \
    >"$T/bad/etc/systemd/system/kafka-snapshot-agent.service"
cp "$BIN/kafka-snapshot-agent" "$T/bad/usr/local/bin/"
out=$(verify_unit "$T/bad" kafka-snapshot-agent.service || true)
if [[ $out == *strictest* ]]; then
    ok "systemd-analyze verify reports a bad setting"
else
    echo "$out"
    not_ok "systemd-analyze verify missed ProtectSystem=strictest"
fi
rm "$T/bad/usr/local/bin/kafka-snapshot-agent"
sed -i 's/^ProtectSystem=strictest$/ProtectSystem=strict/' "$T/bad/etc/systemd/system/kafka-snapshot-agent.service"
out=$(verify_unit "$T/bad" kafka-snapshot-agent.service || true)
if [[ $out == *"/usr/local/bin/kafka-snapshot-agent"* ]]; then
    ok "systemd-analyze verify reports a missing binary"
else
    echo "$out"
    not_ok "systemd-analyze verify missed the missing binary"
fi

# --- idempotence ------------------------------------------------------------------------
if playbook >"$T/run2.log" 2>&1 &&
    recap=$(sed -n '/^PLAY RECAP/,$p' "$T/run2.log") &&
    [[ $(grep -c 'changed=0 ' <<<"$recap") -eq 4 ]]; then
    ok "site.yml: second run changes nothing (4 hosts, changed=0)"
else
    cat "$T/run2.log"
    not_ok "site.yml: second run changed something"
fi

# --- agents restart one host at a time ---------------------------------------------------
# A change to every broker's agent.toml, with service management on, three
# forks and a fake systemctl (first in PATH) whose restart takes a second:
# the restarts must not overlap.
if [[ $daemon == true ]]; then
    mkdir -p "$T/fakebin"
    cat >"$T/fakebin/systemctl" <<FAKE
#!/bin/sh
# systemctl as ansible.builtin.systemd_service sees it: the unit is loaded,
# enabled and running; restarts are logged.
case "\$1" in
show) printf '%s\n' "Id=\$2" LoadState=loaded ActiveState=active SubState=running UnitFileState=enabled ;;
is-enabled) echo enabled ;;
restart)
    echo "begin \$2" >>"$T/restarts.log"
    sleep 1
    echo "end \$2" >>"$T/restarts.log" ;;
daemon-reload) ;;
*) echo "fake systemctl: unexpected: \$*" >>"$T/restarts.log"; exit 1 ;;
esac
FAKE
    chmod +x "$T/fakebin/systemctl"
    if PATH="$T/fakebin:$PATH" playbook --forks 3 --limit kafka_snapshot_agents \
        -e kafka_snapshot_manage_services=true -e kafka_snapshot_agent_poll_interval=11s \
        >"$T/run-restart.log" 2>&1 &&
        [[ $(grep -c '^begin kafka-snapshot-agent.service$' "$T/restarts.log") -eq 3 ]] &&
        [[ $(uniq "$T/restarts.log" | wc -l) -eq 6 ]]; then
        ok "agent restarts go one host at a time (3 forks, 3 restarts, none overlapping)"
    else
        cat "$T/run-restart.log" "$T/restarts.log"
        not_ok "agent restarts: overlapping, missing, or an unexpected systemctl call"
    fi
fi

# --- the daemon's sections, before the binary knows them ---------------------------------
# Without `run` the agent's validate rejects [coordinator]: render them in
# check mode (validate is not run there) and read the diff.
if [[ $daemon == false ]]; then
    if playbook --limit broker-a --check --diff -e kafka_snapshot_agent_daemon_config=true \
        >"$T/run-daemon.log" 2>&1 &&
        grep -qx '+\[coordinator\]' "$T/run-daemon.log" &&
        grep -qx '+url = "http://coord.test:9640"' "$T/run-daemon.log" &&
        grep -qx '+token_file = "/etc/kafka-snapshot/agent.token"' "$T/run-daemon.log" &&
        grep -qx '+state_file = "/var/lib/kafka-snapshot-agent/state.json"' "$T/run-daemon.log" &&
        grep -qx '+poll_interval = "10s"' "$T/run-daemon.log" &&
        grep -qx '+\[metrics\]' "$T/run-daemon.log" &&
        grep -qx '+listen = "127.0.0.1:9641"' "$T/run-daemon.log" &&
        ! grep -q '^+ca_file' "$T/run-daemon.log"; then
        ok "agent.toml with [coordinator] and [metrics] (rendered in check mode; not validated by this build)"
    else
        cat "$T/run-daemon.log"
        not_ok "agent.toml with [coordinator] and [metrics]"
    fi
fi

# --- a config the agent rejects is never installed -----------------------------------------
before=$(sha256sum <"$T/broker-a/etc/kafka-snapshot/agent.toml")
if playbook --limit broker-a -e '{"kafka_snapshot_agent_snapshot_settings": {"zstd_level": 42}}' \
    >"$T/run3.log" 2>&1; then
    not_ok "site.yml accepted zstd_level = 42"
elif grep -q 'snapshot.zstd_level' "$T/run3.log" &&
    [[ $(sha256sum <"$T/broker-a/etc/kafka-snapshot/agent.toml") == "$before" ]]; then
    ok "an agent.toml that fails validate is refused, naming the key, and the installed one kept"
else
    cat "$T/run3.log"
    not_ok "a rejected agent.toml: no message naming snapshot.zstd_level, or the file changed"
fi

# --- the agent's group is the store's group (the roles' default) ------------------------
# That group takes the store's gid; a different agent gid for it is refused.
if playbook --limit broker-a -e kafka_snapshot_agent_group=ksnap-test-store -e '{"kafka_snapshot_agent_gid": null}' \
    >"$T/run-group.log" 2>&1 &&
    [[ $(id -g ksnap-test-agent) -eq $store_gid ]] &&
    [[ $(stat -c %g "$T/broker-a/etc/kafka-snapshot/agent.toml") -eq $store_gid ]]; then
    ok "agent group = store group: the user's primary gid and agent.toml's group are the store's gid"
else
    cat "$T/run-group.log"
    not_ok "agent group = store group"
fi
if playbook --limit broker-a -e kafka_snapshot_agent_group=ksnap-test-store -e "kafka_snapshot_agent_gid=$agent_gid" \
    >"$T/run-group.log" 2>&1; then
    not_ok "a kafka_snapshot_agent_gid that differs from the store's gid, for the same group, was accepted"
elif grep -q 'kafka_snapshot_storage_gid only' "$T/run-group.log" &&
    [[ $(getent group ksnap-test-store | cut -d: -f3) -eq $store_gid ]]; then
    ok "an agent gid that differs from the store's gid, for the same group, is refused"
else
    cat "$T/run-group.log"
    not_ok "a conflicting agent gid: no message, or the store's gid changed"
fi

echo "ops: $pass passed, $fail failed"
((fail == 0))
