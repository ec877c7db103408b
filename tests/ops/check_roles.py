"""Static checks of the Ansible roles and the files they share with the rest
of the repository, run by tests/ops.sh (venv Python: it reads YAML).

- Each role is self-contained (it is copied to Galaxy or another repository
  alone): no symlinks in it, and its copies of shared files (the systemd
  units, the filter plugin) are byte-identical to the originals, so they
  cannot drift apart.
- The agent's restart handler goes one host at a time.

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

if failures:
    print("role check FAILED:", *failures, sep="\n  ")
    sys.exit(1)
print("role check: ok")
