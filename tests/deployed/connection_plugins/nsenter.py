# Ansible connection to a container booted by systemd-nspawn on this
# machine: every command runs in the namespaces of the container's PID 1
# (its systemd), through nsenter. tests/deployed.sh uses it to run site.yml
# into its guests for real: the modules see the guest's filesystem, users
# and systemd, exactly as they would over ssh, without an ssh server in
# each guest.
#
# ansible_host is the PID of the guest's init, as systemd-nspawn started it
# (the script reads it from the guest's cgroup, see tests/deployed.sh).

import os
import shlex
import subprocess

from ansible.errors import AnsibleConnectionFailure, AnsibleError
from ansible.module_utils.common.text.converters import to_bytes
from ansible.plugins.connection import ConnectionBase

DOCUMENTATION = """
name: nsenter
short_description: run commands in a local container's namespaces with nsenter
description:
  - Runs every command inside the namespaces (mount, PID, network, ...) of
    the process whose PID is the host address, a container's init.
options:
  remote_addr:
    description: PID of the container's init on this machine.
    vars:
      - name: ansible_host
"""

# The environment of every command: the guest's own PATH, nothing of the
# control host's (its venv, its TMPDIR).
GUEST_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "HOME": "/root",
}


class Connection(ConnectionBase):
    transport = "nsenter"
    has_pipelining = True

    def _pid(self):
        pid = str(self.get_option("remote_addr"))
        if not pid.isdigit() or not os.path.isdir(f"/proc/{pid}"):
            raise AnsibleConnectionFailure(f"nsenter: no process {pid!r} (ansible_host must be the guest init's PID)")
        return pid

    def _connect(self):
        self._pid()
        self._connected = True
        return self

    def _run(self, argv, stdin):
        cmd = ["nsenter", "--target", self._pid(), "--all", "--", *argv]
        try:
            proc = subprocess.run(cmd, input=stdin, capture_output=True, env=GUEST_ENV, check=False)
        except OSError as e:
            raise AnsibleConnectionFailure(f"nsenter: {e}") from e
        return proc.returncode, proc.stdout, proc.stderr

    def exec_command(self, cmd, in_data=None, sudoable=True):
        super().exec_command(cmd, in_data=in_data, sudoable=sudoable)
        return self._run(["/bin/sh", "-c", cmd], in_data)

    def put_file(self, in_path, out_path):
        super().put_file(in_path, out_path)
        with open(in_path, "rb") as f:
            data = f.read()
        rc, _, err = self._run(["/bin/sh", "-c", f"cat > {shlex.quote(out_path)}"], data)
        if rc != 0:
            raise AnsibleError(f"nsenter: could not write {out_path} in the guest: {err.decode(errors='replace')}")

    def fetch_file(self, in_path, out_path):
        super().fetch_file(in_path, out_path)
        rc, out, err = self._run(["cat", "--", in_path], None)
        if rc != 0:
            raise AnsibleError(f"nsenter: could not read {in_path} in the guest: {err.decode(errors='replace')}")
        with open(to_bytes(out_path), "wb") as f:
            f.write(out)

    def close(self):
        self._connected = False
