#!/usr/bin/env python3
"""Times the agent's archive create/extract against shell baselines on the
same data, alternating runs, and reports medians, ratios and peak RSS. With
--s3-url it also times create/extract through an S3 server (credentials and
endpoint from the AWS_* environment variables)."""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
import json


def run(cmd, shell=False):
    """Runs a command; returns (seconds, peak RSS in KiB of the largest process)."""
    start = time.monotonic()
    proc = subprocess.Popen(cmd, shell=shell, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, rusage = os.wait4(proc.pid, 0)
    elapsed = time.monotonic() - start
    out = proc.stdout.read()
    err = proc.stderr.read()
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"command failed: {cmd}\n{err.decode(errors='replace')}")
    return elapsed, rusage.ru_maxrss, out


def drop_caches():
    subprocess.run(["sync"], check=True)
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


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
    ap.add_argument("--level", type=int, default=3)
    ap.add_argument("--agent", required=True)
    ap.add_argument("--gen", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--s3-url", help="also time create/extract through this s3:// store")
    a = ap.parse_args()

    data = os.path.join(a.work, "data", "kafka-logs")
    store = os.path.join(a.work, "store")
    out_dir = os.path.join(a.work, "out")
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
    agent_env = dict(os.environ, KAFKA_SNAPSHOT_LOG="warn")

    create_base, create_agent, rss_create = [], [], []
    extract_base, extract_base_sync, extract_agent, rss_extract = [], [], [], []
    create_s3, rss_create_s3, extract_s3, rss_extract_s3, archive_bytes = [], [], [], [], []
    snapshot_id = None
    for i in range(a.runs):
        # Archive: both read the same (cold) dirs and write to the same disk.
        drop_caches()
        t, _, _ = run(
            f"tar -cf - -C {os.path.dirname(data)} {os.path.basename(data)} "
            f"| zstd -q -T0 -{a.level} | tee {baseline_archive} | sha256sum",
            shell=True,
        )
        create_base.append(t)
        shutil.rmtree(store)
        os.makedirs(store)
        drop_caches()
        t, rss, out = run(
            [a.agent, "archive", "create", "--log-dirs", data, "--store", f"file://{store}",
             "--capture", "copy", "--zstd-level", str(a.level), "--json"]
        )
        create_agent.append(t)
        rss_create.append(rss)
        created = json.loads(out)
        snapshot_id = created["snapshot_id"]
        archive_bytes.append(created["archive_bytes"])

        # Extract: the baseline neither verifies nor syncs; the agent does both.
        target = os.path.join(out_dir, "restore")
        for p in (target, target + "-base"):
            shutil.rmtree(p, ignore_errors=True)
        os.makedirs(target + "-base")
        drop_caches()
        t, _, _ = run(f"zstd -q -d -c {baseline_archive} | tar -x -C {target}-base", shell=True)
        extract_base.append(t)
        shutil.rmtree(target + "-base")
        os.makedirs(target + "-base")
        drop_caches()
        # The same, made durable as the agent's restore is before it renames
        # the restored dir into place.
        t, _, _ = run(f"zstd -q -d -c {baseline_archive} | tar -x -C {target}-base && sync -f {target}-base", shell=True)
        extract_base_sync.append(t)
        drop_caches()
        t, rss, _ = run(
            [a.agent, "archive", "extract", "--store", f"file://{store}", "--snapshot", snapshot_id,
             "--into", target, "--no-owner"]
        )
        extract_agent.append(t)
        rss_extract.append(rss)
        shutil.rmtree(target, ignore_errors=True)
        shutil.rmtree(target + "-base", ignore_errors=True)

        if a.s3_url:
            # The same through the S3 server: upload, then download + verify.
            url = f"{a.s3_url}/run{i}"
            drop_caches()
            t, rss, out = run(
                [a.agent, "archive", "create", "--log-dirs", data, "--store", url,
                 "--capture", "copy", "--zstd-level", str(a.level), "--json"]
            )
            create_s3.append(t)
            rss_create_s3.append(rss)
            s3_id = json.loads(out)["snapshot_id"]
            drop_caches()
            t, rss, _ = run(
                [a.agent, "archive", "extract", "--store", url, "--snapshot", s3_id,
                 "--into", target, "--no-owner"]
            )
            extract_s3.append(t)
            rss_extract_s3.append(rss)
            shutil.rmtree(target, ignore_errors=True)

    med = statistics.median
    mib = nbytes / (1 << 20)
    cb, ca, eb, ea = med(create_base), med(create_agent), med(extract_base), med(extract_agent)
    es = med(extract_base_sync)
    with open(f"/proc/cpuinfo") as f:
        cpus = sum(1 for line in f if line.startswith("processor"))
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1 << 30)
    lines = [
        f"Archive benchmark, {time.strftime('%Y-%m-%d')}, {cpus} CPUs, {mem_gib:.0f} GiB RAM, "
        f"{mib:.0f} MiB of Kafka-like log data, zstd level {a.level}, median of {a.runs} runs, caches dropped before each run",
        "",
        "| operation | baseline | baseline MiB/s | agent MiB/s | ratio (agent/baseline) | agent peak RSS |",
        "|---|---|---:|---:|---:|---:|",
        f"| create | `tar -cf - \\| zstd -T0 -{a.level} \\| tee \\| sha256sum` | {mib / cb:.0f} | {mib / ca:.0f} | "
        f"{cb / ca:.2f} | {max(rss_create) / 1024:.1f} MiB |",
        f"| extract + verify | `zstd -d \\| tar -x` | {mib / eb:.0f} | {mib / ea:.0f} | {eb / ea:.2f} | "
        f"{max(rss_extract) / 1024:.1f} MiB |",
        f"| extract + verify | `zstd -d \\| tar -x && sync -f` (durable, as the agent) | {mib / es:.0f} | {mib / ea:.0f} | "
        f"{es / ea:.2f} | {max(rss_extract) / 1024:.1f} MiB |",
        "",
        f"raw seconds: create baseline {create_base}, agent {create_agent}; "
        f"extract baseline {extract_base}, baseline+sync {extract_base_sync}, agent {extract_agent}",
    ]
    if a.s3_url:
        cs, xs = med(create_s3), med(extract_s3)
        amib = med(archive_bytes) / (1 << 20)
        lines += [
            "",
            f"Cold storage: file:// (same disk) against s3:// ({a.s3_url.split('/')[2]} bucket on a local "
            f"server), archive {amib:.0f} MiB; MiB/s of log data (of archive bytes moved)",
            "",
            "| operation | file:// MiB/s | s3:// MiB/s | s3:// archive MiB/s | s3:// peak RSS |",
            "|---|---:|---:|---:|---:|",
            f"| create (upload) | {mib / ca:.0f} | {mib / cs:.0f} | {amib / cs:.0f} | "
            f"{max(rss_create_s3) / 1024:.1f} MiB |",
            f"| extract + verify (download) | {mib / ea:.0f} | {mib / xs:.0f} | {amib / xs:.0f} | "
            f"{max(rss_extract_s3) / 1024:.1f} MiB |",
            "",
            f"raw seconds: s3 create {create_s3}, s3 extract {extract_s3}",
        ]
    text = "\n".join(lines) + "\n"
    print(text)
    with open(a.out, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
