"""Checks a restored broker's log dirs against the snapshot's manifest.

    check_restored.py MANIFEST GUEST_ROOT KAFKA_UID KAFKA_GID

MANIFEST is the restored snapshot's manifest.json (from the store);
GUEST_ROOT is prepended to the manifest's log dir paths ("" when run on
the broker's host itself, as tests/deployed.sh does). Passes when:

- every entry of the manifest was recorded as owned by the kafka user
  (the snapshot saw the broker's files as they were);
- every entry that is still there after the restore (Kafka may have
  deleted or rolled some since it started again) has the manifest's
  owner, group and mode, and at least nine in ten are still there, not
  counting what a start removes by design (the clean-shutdown markers,
  the quorum-state a whole-cluster restore drops, and the metadata log's
  snapshots and checkpoints Kafka replaces);
- every file and dir in the restored log dirs belongs to the kafka user,
  whether it came from the snapshot or Kafka wrote it after the restore;
- each log dir that was replaced was moved aside (<dir>.pre-restore-*),
  not deleted.
"""

import glob
import json
import os
import stat
import sys


def main():
    manifest_path, guest_root, kafka_uid, kafka_gid = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    with open(manifest_path) as f:
        manifest = json.load(f)
    dirs = {d["archive_prefix"]: d["path"] for d in manifest["log_dirs"]}
    problems = []
    checked = missing = 0
    gone = []
    for e in manifest["entries"]:
        if (e["uid"], e["gid"]) != (kafka_uid, kafka_gid):
            problems.append(f"manifest: {e['path']} recorded as {e['uid']}:{e['gid']}, not kafka")
        prefix, _, rest = e["path"].partition("/")
        if prefix not in dirs:
            problems.append(f"manifest: {e['path']} is under no log dir of the manifest")
            continue
        host = os.path.join(guest_root + dirs[prefix], rest) if rest else guest_root + dirs[prefix]
        try:
            st = os.lstat(host)
        except FileNotFoundError:
            gone.append(e["path"])
            if not replaced_at_start(rest):
                missing += 1
            continue
        checked += 1
        got = (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode))
        want = (e["uid"], e["gid"], e["mode"] & 0o7777)
        if got != want:
            problems.append(
                f"{dirs[prefix]}/{rest}: owner {got[0]}:{got[1]} mode {got[2]:04o},"
                f" the snapshot had {want[0]}:{want[1]} mode {want[2]:04o}"
            )
    if checked == 0 or missing * 10 > checked + missing:
        problems.append(f"only {checked} of {checked + missing} entries of the manifest are in the restored log dirs")
    others = 0
    for d in dirs.values():
        top = guest_root + d
        for root, subdirs, files in os.walk(top):
            for name in [*subdirs, *files]:
                st = os.lstat(os.path.join(root, name))
                if (st.st_uid, st.st_gid) != (kafka_uid, kafka_gid):
                    others += 1
                    if others <= 5:
                        problems.append(f"{os.path.join(root, name)[len(guest_root):]}: owned by {st.st_uid}:{st.st_gid}, not kafka")
        if not glob.glob(glob.escape(top) + ".pre-restore-*"):
            problems.append(f"{d}: no {d}.pre-restore-* beside it (the dir the restore replaced)")
    if gone:
        print(f"  gone since the restore: {', '.join(gone[:12])}{' ...' if len(gone) > 12 else ''}")
    for p in problems:
        print(f"  {p}")
    print(
        f"  {checked} entries of snapshot {manifest['snapshot_id']} checked"
        f" (owner, group, mode), {missing} gone since, in {len(dirs)} log dirs"
    )
    sys.exit(1 if problems else 0)


def replaced_at_start(rest):
    """Whether a log dir entry is one a starting node removes by design."""
    name = os.path.basename(rest)
    if name in (".kafka_cleanshutdown", "quorum-state", ".lock"):
        return True
    return rest.startswith("__cluster_metadata-0/") and name.endswith((".snapshot", ".checkpoint"))


if __name__ == "__main__":
    main()
