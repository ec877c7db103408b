#!/usr/bin/env python3
"""Times the agent's archive create of full snapshots (at each zstd level
asked for; incremental ones are incremental_bench.py's) and
extract against shell baselines on the same data, alternating runs, and
records times and peak RSS as JSON for report.py. With --s3-url it also
times create/extract through an S3 server (credentials and endpoint from
the AWS_* environment variables)."""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import json


# CPU seconds (user + system, the command and every process it waited for)
# of the last run().
last_cpu = 0.0


# GNU time (Debian package `time`) forks the command from its own small
# process and reports the command's peak RSS. Taken from wait4() here, a
# child's ru_maxrss would also count this Python process: Linux records the
# memory of the process image an exec replaces (the forked copy of this
# one) in the new program's peak.
GNU_TIME = "/usr/bin/time"


def run(cmd, shell=False):
    """Runs a command; returns (seconds, peak RSS in KiB of the largest
    process, stdout) and leaves its CPU seconds in `last_cpu`."""
    global last_cpu
    if not os.path.exists(GNU_TIME):
        sys.exit(f"{GNU_TIME} is missing: apt-get install time (it measures peak RSS)")
    with tempfile.NamedTemporaryFile("r", prefix="ksnap-rss-") as rss_file:
        wrapped = [GNU_TIME, "-f", "%M", "-o", rss_file.name]
        wrapped += ["/bin/sh", "-c", cmd] if shell else list(cmd)
        start = time.monotonic()
        proc = subprocess.Popen(wrapped, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        _, status, rusage = os.wait4(proc.pid, 0)
        elapsed = time.monotonic() - start
        out = proc.stdout.read()
        err = proc.stderr.read()
        if os.waitstatus_to_exitcode(status) != 0:
            sys.exit(f"command failed: {cmd}\n{err.decode(errors='replace')}")
        maxrss = int(rss_file.read().strip().splitlines()[-1])
    last_cpu = rusage.ru_utime + rusage.ru_stime
    return elapsed, maxrss, out


def drop_caches():
    subprocess.run(["sync"], check=True)
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


UNITS = {"": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2, "mib": 1024**2,
         "g": 1000**3, "gb": 1000**3, "gib": 1024**3}


def parse_size(s):
    """`8GiB`, `512MiB`, `1G`, `1000`: bytes (as the testkit reads them)."""
    num = s.rstrip("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
    unit = s[len(num):].lower()
    if not num or unit not in UNITS:
        sys.exit(f"bad size {s!r}")
    return int(float(num) * UNITS[unit])


def tree_bytes(path):
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            total += os.lstat(os.path.join(root, f)).st_size
    return total


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--size", default="2GiB")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--levels", default="3", help="zstd levels of create, comma-separated; extract uses the first")
    ap.add_argument("--agent", required=True)
    ap.add_argument("--gen", required=True)
    ap.add_argument("--out", required=True, help="JSON results")
    ap.add_argument("--s3-url", help="also time create/extract through this s3:// store")
    a = ap.parse_args()
    levels = [int(x) for x in a.levels.split(",")]

    data = os.path.join(a.work, "data", "kafka-logs")
    store = os.path.join(a.work, "store")
    out_dir = os.path.join(a.work, "out")
    shutil.rmtree(os.path.join(a.work, "data"), ignore_errors=True)
    os.makedirs(store, exist_ok=True)
    os.makedirs(out_dir, exist_ok=True)
    subprocess.run(
        [a.gen, "--cluster-id", "BenchClusterAAAAAAAAAA", "--node-id", "1", "--dir", data,
         "--size", a.size, "--segment-size", "64MiB", "--topics", "12", "--partitions", "8",
        ],
        check=True,
    )
    nbytes = tree_bytes(data)
    baseline_archive = os.path.join(out_dir, "baseline.tar.zst")
    os.environ["KAFKA_SNAPSHOT_LOG"] = "warn"

    # Encryption at rest: one key for the run; the encrypted archive is
    # timed against the agent's unencrypted one of the same run.
    key = os.path.join(a.work, "bench.key")
    if os.path.exists(key):
        os.remove(key)
    recipient = subprocess.run([a.agent, "key", "generate", "--output", key],
                               check=True, capture_output=True, text=True).stdout.strip()
    enc = {"create": [], "create_cpu": [], "create_rss_kib": [], "archive_bytes": [],
           "extract": [], "extract_cpu": [], "extract_rss_kib": []}
    create = {lv: {"baseline": [], "agent": [], "rss_kib": [], "archive_bytes": []} for lv in levels}
    extract = {"baseline": [], "baseline_sync": [], "agent": [], "rss_kib": []}
    s3 = {"create": [], "create_rss_kib": [], "extract": [], "extract_rss_kib": [], "archive_bytes": []}
    for i in range(a.runs):
        snapshot_id = None
        for lv in levels:
            # Archive: both read the same (cold) dirs and write to the same disk.
            drop_caches()
            t, rss, _ = run(
                f"tar -cf - -C {os.path.dirname(data)} {os.path.basename(data)} "
                f"| zstd -q -T0 -{lv} | tee {baseline_archive} | sha256sum",
                shell=True,
            )
            create[lv]["baseline"].append(t)
            create[lv].setdefault("baseline_rss_kib", []).append(rss)
            create[lv].setdefault("baseline_cpu", []).append(last_cpu)
            if lv != levels[0]:
                os.remove(baseline_archive)
            shutil.rmtree(store)
            os.makedirs(store)
            drop_caches()
            t, rss, out = run(
                [a.agent, "archive", "create", "--log-dirs", data, "--store", f"file://{store}",
                 "--capture", "copy", "--mode", "full", "--zstd-level", str(lv), "--json"]
            )
            create[lv]["agent"].append(t)
            create[lv]["rss_kib"].append(rss)
            create[lv].setdefault("agent_cpu", []).append(last_cpu)
            created = json.loads(out)
            create[lv]["archive_bytes"].append(created["archive_bytes"])
            if lv == levels[0]:
                snapshot_id = created["snapshot_id"]
                # Keep the first level's archives for the extract runs.
                keep_store = store + "-extract"
                shutil.rmtree(keep_store, ignore_errors=True)
                os.rename(store, keep_store)
                os.makedirs(store)
                keep_baseline = baseline_archive + ".keep"
                os.rename(baseline_archive, keep_baseline)

        # Extract: the baseline neither verifies nor syncs; the agent does both.
        target = os.path.join(out_dir, "restore")
        for p in (target, target + "-base"):
            shutil.rmtree(p, ignore_errors=True)
        os.makedirs(target + "-base")
        drop_caches()
        t, _, _ = run(f"zstd -q -d -c {keep_baseline} | tar -x -C {target}-base", shell=True)
        extract["baseline"].append(t)
        extract.setdefault("baseline_cpu", []).append(last_cpu)
        shutil.rmtree(target + "-base")
        os.makedirs(target + "-base")
        drop_caches()
        # The same, made durable as the agent's restore is before it renames
        # the restored dir into place.
        t, _, _ = run(f"zstd -q -d -c {keep_baseline} | tar -x -C {target}-base && sync -f {target}-base",
                      shell=True)
        extract["baseline_sync"].append(t)
        drop_caches()
        t, rss, _ = run(
            [a.agent, "archive", "extract", "--store", f"file://{keep_store}", "--snapshot", snapshot_id,
             "--into", target, "--no-owner"]
        )
        extract["agent"].append(t)
        extract["rss_kib"].append(rss)
        extract.setdefault("agent_cpu", []).append(last_cpu)
        shutil.rmtree(target, ignore_errors=True)
        shutil.rmtree(target + "-base", ignore_errors=True)

        # The same create and extract, encrypted (tar -> zstd -> age).
        enc_store = store + "-encrypted"
        shutil.rmtree(enc_store, ignore_errors=True)
        os.makedirs(enc_store)
        drop_caches()
        t, rss, out = run(
            [a.agent, "archive", "create", "--log-dirs", data, "--store", f"file://{enc_store}",
             "--capture", "copy", "--mode", "full", "--zstd-level", str(levels[0]), "--recipient", recipient, "--json"]
        )
        enc["create"].append(t)
        enc["create_cpu"].append(last_cpu)
        enc["create_rss_kib"].append(rss)
        created = json.loads(out)
        enc["archive_bytes"].append(created["archive_bytes"])
        drop_caches()
        t, rss, _ = run(
            [a.agent, "archive", "extract", "--store", f"file://{enc_store}", "--snapshot",
             created["snapshot_id"], "--identity", key, "--into", target, "--no-owner"]
        )
        enc["extract"].append(t)
        enc["extract_cpu"].append(last_cpu)
        enc["extract_rss_kib"].append(rss)
        shutil.rmtree(target, ignore_errors=True)
        shutil.rmtree(enc_store)

        if a.s3_url:
            # The same through the S3 server: upload, then download + verify.
            url = f"{a.s3_url}/run{i}"
            drop_caches()
            t, rss, out = run(
                [a.agent, "archive", "create", "--log-dirs", data, "--store", url,
                 "--capture", "copy", "--mode", "full", "--zstd-level", str(levels[0]), "--json"]
            )
            s3["create"].append(t)
            s3["create_rss_kib"].append(rss)
            s3["archive_bytes"].append(json.loads(out)["archive_bytes"])
            s3_id = json.loads(out)["snapshot_id"]
            drop_caches()
            t, rss, _ = run(
                [a.agent, "archive", "extract", "--store", url, "--snapshot", s3_id,
                 "--into", target, "--no-owner"]
            )
            s3["extract"].append(t)
            s3["extract_rss_kib"].append(rss)
            shutil.rmtree(target, ignore_errors=True)
        os.remove(keep_baseline)
        shutil.rmtree(keep_store)

    res = {"data_bytes": nbytes, "size": a.size, "runs": a.runs, "levels": levels,
           "create": {str(k): v for k, v in create.items()}, "extract": extract, "encrypted": enc}
    if a.s3_url:
        res["s3"] = s3
    with open(a.out, "w") as f:
        json.dump(res, f, indent=1)
    shutil.rmtree(os.path.join(a.work, "data"), ignore_errors=True)


if __name__ == "__main__":
    main()
