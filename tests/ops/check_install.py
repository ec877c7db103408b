"""Checks what site.yml installed into the temporary roots of tests/ops.sh:
files, owners, modes, users and the rendered configs.

usage: check_install.py REPO TMP BIN_DIR DAEMON_CONFIG(true|false)
       AGENT_UID AGENT_GID COORD_UID COORD_GID STORE_GID RECIPIENT IDENTITY_FILE
       OBJECT_KEY_FILE
"""

import grp
import hashlib
import pathlib
import pwd
import re
import sys
import tomllib

repo, tmp, bin_dir, daemon = sys.argv[1:5]
agent_uid, agent_gid, coord_uid, coord_gid, store_gid = map(int, sys.argv[5:10])
RECIPIENT = sys.argv[10]
IDENTITY = pathlib.Path(sys.argv[11]).read_text().splitlines()[-1]
OBJECT_KEY = pathlib.Path(sys.argv[12]).read_text().splitlines()[-1]
REPO = pathlib.Path(repo)
TMP = pathlib.Path(tmp)
BIN = pathlib.Path(bin_dir)
DAEMON = daemon == "true"

AGENT_USER = "ksnap-test-agent"
COORD_USER = "ksnap-test-coord"
STORE_GROUP = "ksnap-test-store"
VAULT_TOKEN = "token-from-the-vault-for-broker-b"
failures = []


def check(cond, what):
    if not cond:
        failures.append(what)


def owner_mode(path, user, group, mode):
    st = path.stat()
    got = (pwd.getpwuid(st.st_uid).pw_name, grp.getgrgid(st.st_gid).gr_name, st.st_mode & 0o7777)
    check(got == (user, group, mode), f"{path}: owner/group/mode {got[0]}:{got[1]} {oct(got[2])}, want {user}:{group} {oct(mode)}")


# --- users --------------------------------------------------------------------
# The inventory pins every id; both users are members of the store's group.
store = grp.getgrnam(STORE_GROUP)
check(store.gr_gid == store_gid, f"group {STORE_GROUP}: gid {store.gr_gid}, want {store_gid}")
for name, uid, gid in ((AGENT_USER, agent_uid, agent_gid), (COORD_USER, coord_uid, coord_gid)):
    pw = pwd.getpwnam(name)
    check(pw.pw_shell == "/usr/sbin/nologin", f"user {name}: shell {pw.pw_shell}")
    check(pw.pw_uid == uid, f"user {name}: uid {pw.pw_uid}, want {uid}")
    check(pw.pw_gid == gid, f"user {name}: primary gid {pw.pw_gid}, want {gid}")
    check(grp.getgrnam(name).gr_gid == gid, f"group {name}: gid {grp.getgrnam(name).gr_gid}, want {gid}")
    check(name in store.gr_mem, f"user {name}: not a member of {STORE_GROUP} ({store.gr_mem})")

# --- brokers ------------------------------------------------------------------
brokers = {
    # host: (broker id, log dirs from its server.properties)
    "broker-a": (1, ["/data/disk1/kafka-logs", "/data/disk2/kafka-logs"]),
    "broker-b": (2, ["/data/d1/kafka-logs", "/data/d2/kafka-logs", "/data/meta/kafka-meta"]),
    "broker-c": (3, ["/var/lib/kafka/data"]),
}
# The broker's unit, kafka.service unless the inventory says otherwise.
kafka_units = {"broker-c": "confluent-server.service"}
static_unit = (REPO / "systemd/kafka-snapshot-agent.service").read_bytes()
static_rule = (REPO / "systemd/polkit/50-kafka-snapshot.rules").read_text()
agent_bin = (BIN / "kafka-snapshot-agent").read_bytes()
tokens = {}
for host, (broker_id, log_dirs) in brokers.items():
    root = TMP / host
    b = root / "usr/local/bin/kafka-snapshot-agent"
    owner_mode(b, "root", "root", 0o755)
    check(b.read_bytes() == agent_bin, f"{b}: not the built binary")
    owner_mode(root / "etc/kafka-snapshot", "root", "root", 0o755)
    owner_mode(root / "var/lib/kafka-snapshot-agent", AGENT_USER, AGENT_USER, 0o750)

    token_file = root / "etc/kafka-snapshot/agent.token"
    owner_mode(token_file, AGENT_USER, AGENT_USER, 0o600)
    tokens[host] = token_file.read_text()
    if host == "broker-b":
        check(tokens[host] == VAULT_TOKEN, f"{token_file}: not the inventory's token")
    else:
        check(re.fullmatch(r"[A-Za-z0-9]{43}", tokens[host]) is not None, f"{token_file}: not a generated token")

    kafka_unit = kafka_units.get(host, "kafka.service")
    cfg_path = root / "etc/kafka-snapshot/agent.toml"
    owner_mode(cfg_path, "root", AGENT_USER, 0o640)
    cfg = tomllib.loads(cfg_path.read_text())
    check(cfg["broker"]["log_dirs"] == log_dirs, f"{cfg_path}: log_dirs {cfg['broker']['log_dirs']}")
    # process.roles of a KRaft broker (or none, ZooKeeper mode): a broker.
    check(cfg["broker"].get("role") == "broker", f"{cfg_path}: role {cfg['broker'].get('role')}")
    check(cfg["broker"]["stop_command"] == f"systemctl stop --no-block {kafka_unit}", f"{cfg_path}: stop_command")
    check(cfg["broker"]["start_command"] == f"systemctl start {kafka_unit}", f"{cfg_path}: start_command")
    check(cfg["broker"]["stop_timeout"] == "15m", f"{cfg_path}: broker settings from the inventory")
    check(cfg["storage"] == {"url": "file:///mnt/kafka-snapshots"}, f"{cfg_path}: storage {cfg['storage']}")
    check(cfg["kafka"]["bootstrap_servers"] == ["broker-a:9092", "broker-b:9092"], f"{cfg_path}: kafka")
    # Every agent encrypts to the inventory's recipient; only broker-b,
    # which restores, has the identity, readable by the agent alone.
    enc = cfg.get("encryption", {})
    check(enc.get("recipients") == [RECIPIENT], f"{cfg_path}: encryption.recipients {enc.get('recipients')}")
    identity_file = root / "etc/kafka-snapshot/identity.txt"
    if host == "broker-b":
        check(enc.get("identity_file") == "/etc/kafka-snapshot/identity.txt", f"{cfg_path}: identity_file {enc.get('identity_file')}")
        owner_mode(identity_file, AGENT_USER, AGENT_USER, 0o400)
        check(identity_file.read_text().strip() == IDENTITY, f"{identity_file}: not the inventory's identity")
    else:
        check("identity_file" not in enc, f"{cfg_path}: identity_file on a host that has none")
        check(not identity_file.exists(), f"{identity_file}: installed on a host with no identity in the inventory")
    # The cluster's object key: on every agent, the same, readable by the
    # agent alone.
    object_key_file = root / "etc/kafka-snapshot/object.key"
    check(enc.get("object_key_file") == "/etc/kafka-snapshot/object.key", f"{cfg_path}: object_key_file {enc.get('object_key_file')}")
    owner_mode(object_key_file, AGENT_USER, AGENT_USER, 0o400)
    check(object_key_file.read_text().strip() == OBJECT_KEY, f"{object_key_file}: not the inventory's object key")
    if DAEMON:
        check(
            cfg.get("coordinator")
            == {
                "url": "http://coord.test:9640",
                "token_file": "/etc/kafka-snapshot/agent.token",
                "state_file": "/var/lib/kafka-snapshot-agent/state.json",
                "poll_interval": "10s",
            },
            f"{cfg_path}: [coordinator] {cfg.get('coordinator')}",
        )
        check(cfg.get("metrics") == {"listen": "127.0.0.1:9641"}, f"{cfg_path}: [metrics]")
    else:
        check("coordinator" not in cfg and "metrics" not in cfg, f"{cfg_path}: daemon sections rendered")

    unit_dir = root / "etc/systemd/system"
    unit = unit_dir / "kafka-snapshot-agent.service"
    owner_mode(unit, "root", "root", 0o644)
    check(unit.read_bytes() == static_unit, f"{unit}: differs from systemd/")
    dropin = (unit_dir / "kafka-snapshot-agent.service.d/50-host.conf").read_text()
    rw = re.findall(r"^ReadWritePaths=(.*)$", dropin, re.M)
    want_rw = sorted({d.rsplit("/", 1)[0] for d in log_dirs} | {"/mnt/kafka-snapshots"})
    check(sorted(rw) == want_rw, f"{host} drop-in: ReadWritePaths {rw}, want {want_rw}")
    check(re.search(r"^User=ksnap-test-agent$", dropin, re.M) is not None, f"{host} drop-in: User=")
    check(re.search(r"^RequiresMountsFor=/mnt/kafka-snapshots$", dropin, re.M) is not None, f"{host} drop-in: RequiresMountsFor=")
    check(re.search(r"^TimeoutStopSec=20min$", dropin, re.M) is not None, f"{host} drop-in: TimeoutStopSec=")
    after = re.findall(r"^After=(.*)$", dropin, re.M)
    check(after == ([] if kafka_unit == "kafka.service" else [kafka_unit]), f"{host} drop-in: After={after}")

    rule = root / "etc/polkit-1/rules.d/50-kafka-snapshot.rules"
    owner_mode(rule, "root", "root", 0o644)
    rule_text = rule.read_text()
    check(
        rule_text == static_rule.replace('"kafka-snapshot"', f'"{AGENT_USER}"').replace('"kafka.service"', f'"{kafka_unit}"'),
        f"{rule}: differs from systemd/polkit/ beyond the user and unit names",
    )
    # The rule's own names: this host's agent user and broker unit.
    check(f'subject.user === "{AGENT_USER}"' in rule_text, f"{rule}: does not name user {AGENT_USER}")
    check(f'action.lookup("unit") === "{kafka_unit}"' in rule_text, f"{rule}: does not name unit {kafka_unit}")

check(len(set(tokens.values())) == len(tokens), "two brokers got the same token")

# --- coordinator ----------------------------------------------------------------
root = TMP / "coord"
b = root / "usr/local/bin/kafka-snapshot-coordinator"
owner_mode(b, "root", "root", 0o755)
check(b.read_bytes() == (BIN / "kafka-snapshot-coordinator").read_bytes(), f"{b}: not the built binary")
owner_mode(root / "var/lib/kafka-snapshot-coordinator", COORD_USER, COORD_USER, 0o750)
admin = root / "etc/kafka-snapshot/admin.token"
owner_mode(admin, "root", COORD_USER, 0o640)
check(re.fullmatch(r"[A-Za-z0-9]{43}", admin.read_text()) is not None, f"{admin}: not a generated token")
cfg_path = root / "etc/kafka-snapshot/coordinator.toml"
owner_mode(cfg_path, "root", COORD_USER, 0o640)
cfg = tomllib.loads(cfg_path.read_text())
want_agents = [
    {
        "broker": broker_id,
        "role": "broker",
        "token_sha256": hashlib.sha256(tokens[host].encode()).hexdigest(),
    }
    for host, (broker_id, _) in sorted(brokers.items(), key=lambda kv: kv[1][0])
]
check(cfg.get("agents") == want_agents, f"{cfg_path}: agents {cfg.get('agents')}, want {want_agents}")
check(
    cfg.get("server")
    == {
        "listen": "127.0.0.1:9640",
        "database": "/var/lib/kafka-snapshot-coordinator/state.db",
        "admin_token_file": "/etc/kafka-snapshot/admin.token",
    },
    f"{cfg_path}: server {cfg.get('server')}",
)
check(cfg.get("schedule") == {"schedule": "@every 24h", "starting_deadline": "1h", "suspend": False}, f"{cfg_path}: schedule")
check(cfg.get("lease") == {"ttl": "60s"}, f"{cfg_path}: lease")
check(cfg.get("retention") == {"keep_last": 7, "max_age": "30d"}, f"{cfg_path}: retention")
check(cfg.get("storage") == {"url": "file:///mnt/kafka-snapshots"}, f"{cfg_path}: storage")
unit = root / "etc/systemd/system/kafka-snapshot-coordinator.service"
check(unit.read_bytes() == (REPO / "systemd/kafka-snapshot-coordinator.service").read_bytes(), f"{unit}: differs from systemd/")
dropin = (root / "etc/systemd/system/kafka-snapshot-coordinator.service.d/50-host.conf").read_text()
check(re.findall(r"^ReadWritePaths=(.*)$", dropin, re.M) == ["/mnt/kafka-snapshots"], "coordinator drop-in: ReadWritePaths")
check(re.search(r"^User=ksnap-test-coord$", dropin, re.M) is not None, "coordinator drop-in: User=")
check(not (root / "etc/polkit-1").exists(), "coordinator host got a polkit rule")

if failures:
    print("install check FAILED:", *failures, sep="\n  ")
    sys.exit(1)
print(f"install check: ok ({len(brokers)} agents and a coordinator)")
