"""Static checks of the Ansible roles and the files they share with the rest
of the repository, run by tests/ops.sh (venv Python: it reads YAML).

- Each role is self-contained (it is copied to Galaxy or another repository
  alone): no symlinks in it, and its copies of shared files (the systemd
  units, the filter plugin) are byte-identical to the originals, so they
  cannot drift apart.
- The agent's restart handler goes one host at a time.
- Comments and example configs agree with what the roles install: no
  variable named that no role defines, schedules in UTC, the token files,
  CA file and port of the example configs are the roles'.
- Both units hide other processes' /proc entries.

usage: check_roles.py REPO
"""

import pathlib
import re
import sys

import yaml

REPO = pathlib.Path(sys.argv[1])
ROLES = REPO / "ansible/roles"
AGENT = ROLES / "kafka_snapshot_agent"
COORD = ROLES / "kafka_snapshot_coordinator"
failures = []


def check(cond, what):
    if not cond:
        failures.append(what)


def load(path):
    return yaml.safe_load(path.read_text()) or {}


# --- self-contained roles -------------------------------------------------------
for role in (AGENT, COORD):
    for p in sorted(role.rglob("*")):
        check(not p.is_symlink(), f"{p.relative_to(REPO)} is a symlink (-> {p.readlink() if p.is_symlink() else ''}): a role copied alone loses it")
    units = sorted((role / "files").glob("*.service"))
    check(units, f"{role.name}: no systemd unit in files/")
    for unit in units:
        original = REPO / "systemd" / unit.name
        check(original.is_file(), f"{unit.relative_to(REPO)}: no systemd/{unit.name} to compare with")
        if original.is_file() and not unit.is_symlink():
            check(unit.read_bytes() == original.read_bytes(), f"{unit.relative_to(REPO)} differs from systemd/{unit.name}: copy it again")

plugins = [r / "filter_plugins/kafka_snapshot.py" for r in (AGENT, COORD)]
for p in plugins:
    check(p.is_file() and not p.is_symlink(), f"{p.relative_to(REPO)}: missing or a symlink")
if all(p.is_file() for p in plugins):
    check(plugins[0].read_bytes() == plugins[1].read_bytes(), "the roles' filter_plugins/kafka_snapshot.py differ: copy the agent role's to the coordinator role")

# --- rolling agent restarts -----------------------------------------------------------
handlers = {h["name"]: h for h in load(AGENT / "handlers/main.yml")}
restart = handlers.get("Restart kafka-snapshot-agent", {})
check(restart.get("throttle") == 1, f"agent handler 'Restart kafka-snapshot-agent': throttle {restart.get('throttle')}, want 1 (one host at a time)")

# --- variables named in comments, templates and tasks exist -----------------------------
defined = set()
for role in (AGENT, COORD):
    for f in ("defaults/main.yml", "vars/main.yml"):
        text = (role / f).read_text()
        defined |= set(load(role / f))
        # Documented, commented-out settings ("# kafka_snapshot_agent_broker_id: 1").
        defined |= set(re.findall(r"^#\s*(kafka_snapshot_\w+):", text, re.M))
        # Shared inventory names the defaults read ("kafka_snapshot_root | default('/')").
        defined |= set(re.findall(r"\{\{\s*(kafka_snapshot_\w+)", text))
    for f in sorted((role / "tasks").glob("*.yml")):
        text = f.read_text()
        defined |= set(re.findall(r"^\s*register:\s*(kafka_snapshot_\w+)", text, re.M))
        for task in load(f) or []:
            facts = task.get("ansible.builtin.set_fact") or {}
            if isinstance(facts, dict):
                defined |= set(facts)
# Not variables: the roles, the inventory groups, the filters.
defined |= {AGENT.name, COORD.name, "kafka_snapshot_agents"}
defined |= set(re.findall(r'"(kafka_snapshot_\w+)":', (AGENT / "filter_plugins/kafka_snapshot.py").read_text()))
named_in = [p for role in (AGENT, COORD) for p in sorted(role.rglob("*")) if p.is_file() and p.suffix in (".yml", ".j2", ".py")]
named_in += [REPO / "systemd/polkit/50-kafka-snapshot.rules"]
named_in += sorted((REPO / "ansible/inventory/example").rglob("*.yml"))
for p in named_in:
    for name in sorted(set(re.findall(r"(?<![\w.])(kafka_snapshot_[a-z0-9_]*[a-z0-9])", p.read_text()))):
        check(name in defined, f"{p.relative_to(REPO)} names {name}, which no role defines")

# --- comments and examples agree with the roles ------------------------------------------
local_time = []
for p in [REPO / "README.md", REPO / "agent/agent.example.toml", REPO / "coordinator/coordinator.example.toml"] + named_in:
    for n, line in enumerate(p.read_text().splitlines(), 1):
        if re.search(r"local\s+time", line, re.I):
            local_time.append(f"{p.relative_to(REPO)}:{n}")
check(not local_time, f"schedules are UTC, but these lines say local time: {local_time}")

agent_vars = load(AGENT / "vars/main.yml")
coord_vars = load(COORD / "vars/main.yml")
coord_defaults = load(COORD / "defaults/main.yml")


def commented(path, section, key):
    """The string value of `key` in `[section]` of an example config,
    commented out (`# key = "..."`) or not."""
    current = None
    for line in path.read_text().splitlines():
        header = re.match(r"^#?\s*\[\[?([\w.]+)\]\]?\s*$", line)
        if header:
            current = header.group(1)
            continue
        m = re.match(r'^#?\s*(\w+)\s*=\s*"([^"]*)"', line)
        if m and current == section and m.group(1) == key:
            return m.group(2)
    return None


agent_example = REPO / "agent/agent.example.toml"
coord_example = REPO / "coordinator/coordinator.example.toml"
got = commented(agent_example, "coordinator", "token_file")
check(got == agent_vars["kafka_snapshot_agent_token_path"], f"agent.example.toml: token_file {got!r}, the role installs {agent_vars['kafka_snapshot_agent_token_path']}")
got = commented(agent_example, "coordinator", "ca_file")
check(got == agent_vars["kafka_snapshot_agent_ca_path"], f"agent.example.toml: ca_file {got!r}, the role installs {agent_vars['kafka_snapshot_agent_ca_path']}")
got = commented(agent_example, "coordinator", "state_file")
want = agent_vars["kafka_snapshot_agent_state_dir"] + "/state.json"
check(got == want, f"agent.example.toml: state_file {got!r}, the role writes {want}")
port = coord_defaults["kafka_snapshot_coordinator_listen"].rsplit(":", 1)[1]
got = commented(agent_example, "coordinator", "url") or ""
check(got.endswith(":" + port), f"agent.example.toml: coordinator url {got!r} is not on the coordinator's port {port}")
got = commented(coord_example, "server", "listen") or ""
check(got.endswith(":" + port), f"coordinator.example.toml: listen {got!r}, the role's port is {port}")
got = commented(coord_example, "server", "admin_token_file")
check(got == coord_vars["kafka_snapshot_coordinator_admin_token_path"], f"coordinator.example.toml: admin_token_file {got!r}, the role installs {coord_vars['kafka_snapshot_coordinator_admin_token_path']}")
for key in ("tls_cert", "tls_key"):
    got = commented(coord_example, "server", key)
    want = coord_vars[f"kafka_snapshot_coordinator_{key}_path"]
    check(got == want, f"coordinator.example.toml: {key} {got!r}, the role installs {want}")

# --- the units' sandbox ----------------------------------------------------------------
for unit in ("kafka-snapshot-agent.service", "kafka-snapshot-coordinator.service"):
    text = (REPO / "systemd" / unit).read_text()
    check(re.search(r"^ProtectProc=invisible$", text, re.M) is not None, f"systemd/{unit}: no ProtectProc=invisible")

if failures:
    print("role check FAILED:", *failures, sep="\n  ")
    sys.exit(1)
print("role check: ok")
