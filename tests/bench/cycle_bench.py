#!/usr/bin/env python3
"""Broker downtime, agent memory, impact on the running broker and the full
rolling cycle, measured on a three-broker stand-in Kafka cluster whose log
dirs live on a loop-mounted XFS filesystem (reflink).

Downtime is read from the cluster's own events log (`events.jsonl`,
CLOCK_MONOTONIC, the clock of time.monotonic()): from the broker's `sigterm`
to its `caught_up` (back in the ISR of every partition). Baselines, measured
in the same run and alternated with the agent's runs:

- the stand-in's own stop + start: stop script, wait for the `exited`
  event, start script, wait for `caught_up`, with no agent in between;
- `cp -a --reflink=never` of the broker's log dirs (what a copy takes).

Writes its results as JSON for report.py."""

import argparse
import hashlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

from archive_bench import drop_caches, parse_size, tree_bytes

BROKER = 1  # the broker the downtime runs snapshot


def log(msg):
    print(f"[cycle-bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Cluster:
    """A running `ksnap-standin-cluster` and its events log."""

    def __init__(self, bin_dir, root, size, segment_size, topics, partitions, small):
        self.root = root
        shutil.rmtree(root, ignore_errors=True)
        os.makedirs(root)
        self.info_path = os.path.join(root, "cluster.json")
        self.log = open(os.path.join(root, "cluster.log"), "wb")
        started = time.monotonic()
        self.proc = subprocess.Popen(
            [os.path.join(bin_dir, "ksnap-standin-cluster"), "--dir", os.path.join(root, "cluster"),
             "--data-root", os.path.join(root, "data"), "--size", size,
             "--segment-size", segment_size, "--topics", str(topics), "--partitions", str(partitions),
             "--small-partitions", str(small), "--append-interval-ms", "1000",
             "--info", self.info_path],
            stdout=self.log, stderr=subprocess.STDOUT,
        )
        while not os.path.exists(self.info_path):
            if self.proc.poll() is not None:
                sys.exit(f"the stand-in cluster did not start; see {root}/cluster.log")
            time.sleep(0.2)
        self.setup_seconds = time.monotonic() - started
        with open(self.info_path) as f:
            self.info = json.load(f)
        self.events_path = os.path.join(root, "cluster", "state", "events.jsonl")

    def broker(self, n):
        return next(b for b in self.info["brokers"] if b["node_id"] == n)

    def events(self, broker, since):
        out = []
        with open(self.events_path) as f:
            for line in f:
                e = json.loads(line)
                if e["broker"] == broker and e["mono_ns"] / 1e9 >= since:
                    out.append(e)
        return out

    def wait_event(self, broker, kind, since, timeout=600):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for e in self.events(broker, since):
                if e["kind"] == kind:
                    return e["mono_ns"] / 1e9
            time.sleep(0.01)
        sys.exit(f"broker {broker}: no {kind} event within {timeout} s")

    def downtime(self, broker, since):
        """sigterm -> caught_up of the first stop after `since`."""
        ev = self.events(broker, since)
        stop = next(e["mono_ns"] for e in ev if e["kind"] == "sigterm")
        up = next(e["mono_ns"] for e in ev if e["kind"] == "caught_up" and e["mono_ns"] > stop)
        return (up - stop) / 1e9

    def all_in_sync(self, since):
        for n in (b["node_id"] for b in self.info["brokers"]):
            ev = [e["kind"] for e in self.events(n, 0)]
            last = [k for k in ev if k in ("caught_up", "sigterm", "started")]
            if not last or last[-1] != "caught_up":
                return False
        return True

    def close(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait()
        self.log.close()


class Monitor:
    """Samples a process's CPU time and I/O bytes every 50 ms."""

    def __init__(self, pid):
        self.pid = pid
        self.samples = []  # (monotonic, cpu seconds, read bytes, write bytes)
        self.tick = os.sysconf("SC_CLK_TCK")
        # The process's own peak RSS (VmHWM: its memory since its exec).
        # wait4()'s ru_maxrss would also count the benchmark's own Python
        # process, which Linux records at the exec of the forked copy.
        self.hwm_kib = 0
        self.done = False
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def sample(self):
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            cpu = (int(fields[11]) + int(fields[12])) / self.tick
            io = {}
            with open(f"/proc/{self.pid}/io") as f:
                for line in f:
                    k, v = line.split(":")
                    io[k] = int(v)
            with open(f"/proc/{self.pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        self.hwm_kib = max(self.hwm_kib, int(line.split()[1]))
            return (time.monotonic(), cpu, io["read_bytes"], io["write_bytes"])
        except (OSError, IndexError, KeyError, ValueError):
            return None

    def run(self):
        while not self.done:
            s = self.sample()
            if s is None:
                break
            self.samples.append(s)
            time.sleep(0.05)

    def stop(self):
        self.done = True
        self.thread.join()

    def window(self, start):
        """CPU seconds, read and written bytes from `start` to the last sample."""
        after = [s for s in self.samples if s[0] >= start]
        if len(after) < 2:
            return None
        a, b = after[0], after[-1]
        return {"seconds": b[0] - a[0], "cpu": b[1] - a[1], "read": b[2] - a[2], "write": b[3] - a[3]}


def run_agent(cmd, env=None):
    """Runs the agent with a monitor; returns (seconds, rusage, stdout, monitor)."""
    start = time.monotonic()
    out_path = "/tmp/ksnap-bench-agent.out"
    err_path = "/tmp/ksnap-bench-agent.err"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        mon = Monitor(proc.pid)
        # Samples stop once the process is a zombie (/proc/PID/io goes away
        # only after wait4), so stop the monitor first.
        while True:
            pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            time.sleep(0.02)
        proc.returncode = os.waitstatus_to_exitcode(status)
        mon.stop()
    elapsed = time.monotonic() - start
    with open(out_path) as f:
        stdout = f.read()
    if proc.returncode != 0:
        with open(err_path) as f:
            sys.exit(f"command failed: {' '.join(cmd)}\n{f.read()}")
    return elapsed, rusage, stdout, mon


def write_agent_config(path, cluster, n, store, capture, level, limit=None, coordinator=None):
    b = cluster.broker(n)
    boot = json.dumps(cluster.info["bootstrap"].split(","))
    text = f"""[broker]
log_dirs = {json.dumps(b["log_dirs"])}
stop_command = "{b["stop_script"]}"
start_command = "{b["start_script"]}"
stop_timeout = "5m"
recovery_timeout = "10m"

[snapshot]
capture = "{capture}"
# Full snapshots, as in the rows measured before incremental became the
# default; incremental ones are incremental_bench.py's.
mode = "full"
zstd_level = {level}

[storage]
url = "file://{store}"
"""
    if limit:
        text += f'bandwidth_limit = "{limit}"\n'
    text += f"""
[kafka]
bootstrap_servers = {boot}

[gate]
stable_checks = 1
check_interval = "200ms"
"""
    if coordinator:
        text += f"""
[coordinator]
url = "{coordinator["url"]}"
token_file = "{coordinator["token_file"]}"
state_file = "{coordinator["state_file"]}"
poll_interval = "200ms"

[metrics]
listen = "127.0.0.1:{coordinator["metrics_port"]}"
"""
    with open(path, "w") as f:
        f.write(text)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_cluster_in_sync(cluster):
    for _ in range(6000):
        if cluster.all_in_sync(0):
            return
        time.sleep(0.05)
    sys.exit("the stand-in cluster is not in sync")


def baseline_stop_start(cluster, n):
    """The stand-in's own stop + start, no agent: sigterm -> caught_up,
    from the same cache state as the agent's runs."""
    b = cluster.broker(n)
    settle(cluster, n)
    cold_data_warm_metadata(b["log_dirs"])
    t0 = time.monotonic()
    subprocess.run([b["stop_script"]], check=True, stdout=subprocess.DEVNULL)
    cluster.wait_event(n, "exited", t0)
    subprocess.run([b["start_script"]], check=True)
    cluster.wait_event(n, "caught_up", t0)
    return cluster.downtime(n, t0)


def settle(cluster, n, seconds=3.0):
    """Waits until the cluster is in sync and broker n has served for
    `seconds`: a broker restarted a moment ago is still opening its
    partitions (the stand-in's first round of appends after a start reads
    every led partition's index and segment tail), and a stop then waits
    for that."""
    wait_cluster_in_sync(cluster)
    ups = [e["mono_ns"] / 1e9 for e in cluster.events(n, 0) if e["kind"] == "caught_up"]
    if ups:
        time.sleep(max(0.0, ups[-1] + seconds - time.monotonic()))


def cold_data_warm_metadata(dirs):
    """Drops the page cache, then stats every file again and reads the tail
    of every segment: a running Kafka broker keeps its segments and indexes
    open and appends to its active segments, so their inodes and tails are
    cached when it stops, while most of their data is not. (Without the
    tails, the stand-in's next round of appends after the drop reads them
    from disk and holds up its shutdown by up to a second.)"""
    drop_caches()
    for d in dirs:
        for root, _, files in os.walk(d):
            for f in files:
                p = os.path.join(root, f)
                size = os.lstat(p).st_size
                if f.endswith(".log") and size:
                    with open(p, "rb") as fh:
                        fh.seek(max(0, size - 65536))
                        fh.read()


def snapshot_run(a, cluster, cfg, store):
    """One `kafka-snapshot-agent snapshot`: downtime from the cluster's view,
    peak RSS, and the agent's CPU and I/O while the broker serves again."""
    shutil.rmtree(store, ignore_errors=True)
    os.makedirs(store)
    settle(cluster, BROKER)
    cold_data_warm_metadata(cluster.broker(BROKER)["log_dirs"])
    t0 = time.monotonic()
    env = dict(os.environ, KAFKA_SNAPSHOT_LOG="warn")
    elapsed, rusage, out, mon = run_agent(
        [os.path.join(a.bin, "kafka-snapshot-agent"), "snapshot", "--config", cfg, "--gate-timeout", "5m"], env
    )
    res = json.loads(out)
    up = cluster.wait_event(BROKER, "caught_up", t0)
    stop = cluster.wait_event(BROKER, "sigterm", t0)
    w = mon.window(up)
    return {
        "downtime": cluster.downtime(BROKER, t0),
        "agent_downtime_ms": res["broker_downtime_ms"],
        "seconds": elapsed,
        "gate_seconds": stop - t0,
        "rss_kib": mon.hwm_kib,
        "cpu": rusage.ru_utime + rusage.ru_stime,
        "after_up": w,
        "archive_bytes": res["archive_bytes"],
        "data_bytes": res["data_bytes"],
        "files": res["files"],
    }


def cp_baseline(cluster, n, scratch):
    """`cp -a` of the broker's log dirs (broker stopped, so they are still)."""
    shutil.rmtree(scratch, ignore_errors=True)
    os.makedirs(scratch)
    dirs = cluster.broker(n)["log_dirs"]
    cold_data_warm_metadata(dirs)
    start = time.monotonic()
    subprocess.run(["cp", "-a", "--reflink=never", *dirs, scratch], check=True)
    # The copy counts once it is on disk, as the agent's archive does.
    subprocess.run(["sync", "-f", scratch], check=True)
    t = time.monotonic() - start
    shutil.rmtree(scratch)
    return t


def downtime_size(a, size, results, last):
    log(f"generating a three-broker cluster with {size} per broker")
    root = os.path.join(a.work, "cycle")
    cluster = Cluster(a.bin, root, size, a.segment_size, a.topics, a.partitions, a.small_partitions)
    try:
        data_dirs = cluster.broker(BROKER)["log_dirs"]
        nbytes = sum(tree_bytes(d) for d in data_dirs)
        nfiles = sum(len(fs) for d in data_dirs for _, _, fs in os.walk(d))
        log(f"cluster up in {cluster.setup_seconds:.0f} s; broker {BROKER}: {nbytes / 2**30:.2f} GiB, {nfiles} files")
        store = os.path.join(a.work, "cycle-store")
        etc = os.path.join(root, "etc")
        os.makedirs(etc)
        cfg = {}
        for capture in ("reflink", "copy"):
            cfg[capture] = os.path.join(etc, f"agent-{capture}.toml")
            write_agent_config(cfg[capture], cluster, BROKER, store, capture, a.level)
        r = {"size": size, "data_bytes": nbytes, "files": nfiles, "standin": [], "reflink": [], "copy": [], "cp": []}
        wait_cluster_in_sync(cluster)
        for i in range(a.runs):
            log(f"{size} run {i + 1}/{a.runs}: stand-in stop + start")
            r["standin"].append(baseline_stop_start(cluster, BROKER))
            log(f"{size} run {i + 1}/{a.runs}: agent snapshot, reflink")
            r["reflink"].append(snapshot_run(a, cluster, cfg["reflink"], store))
            log(f"{size} run {i + 1}/{a.runs}: cp -a")
            # cp -a reads the log dirs while the broker runs and appends a
            # little: like for like, stop it, as the agent's copy capture does.
            b = cluster.broker(BROKER)
            settle(cluster, BROKER)
            t0 = time.monotonic()
            subprocess.run([b["stop_script"]], check=True, stdout=subprocess.DEVNULL)
            cluster.wait_event(BROKER, "exited", t0)
            r["cp"].append(cp_baseline(cluster, BROKER, os.path.join(a.work, "cp-scratch")))
            subprocess.run([b["start_script"]], check=True)
            cluster.wait_event(BROKER, "caught_up", t0)
            log(f"{size} run {i + 1}/{a.runs}: agent snapshot, copy")
            r["copy"].append(snapshot_run(a, cluster, cfg["copy"], store))
            log(f"{size} run {i + 1}: stand-in {r['standin'][-1]:.2f} s, reflink {r['reflink'][-1]['downtime']:.2f} s, "
                f"cp -a {r['cp'][-1]:.1f} s, copy {r['copy'][-1]['downtime']:.1f} s")
        if last and a.throttle:
            # Impact while archiving from staging, unthrottled (the reflink
            # runs above) against `bandwidth_limit`.
            tcfg = os.path.join(etc, "agent-throttled.toml")
            write_agent_config(tcfg, cluster, BROKER, store, "reflink", a.level, limit=a.throttle)
            log(f"{size}: agent snapshot, reflink, bandwidth_limit {a.throttle}")
            r["throttled"] = snapshot_run(a, cluster, tcfg, store)
            r["throttle"] = a.throttle
        if last and a.full_cycle:
            r["full_cycle"] = full_cycle(a, cluster, root)
        results["downtime"].append(r)
        shutil.rmtree(store, ignore_errors=True)
    finally:
        cluster.close()
        shutil.rmtree(root, ignore_errors=True)


def scrape(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    phases = {}
    for line in text.splitlines():
        if line.startswith("kafka_snapshot_agent_phase_duration_seconds{"):
            labels, value = line.rsplit(" ", 1)
            phase = labels.split('phase="', 1)[1].split('"', 1)[0]
            phases[phase] = float(value)
    return phases


def full_cycle(a, cluster, root):
    """Coordinator + three agent daemons, one rolling cycle, as tests/demo.sh."""
    log("full cycle: coordinator and three agents")
    etc = os.path.join(root, "etc")
    store = os.path.join(a.work, "cycle-store-full")
    shutil.rmtree(store, ignore_errors=True)
    os.makedirs(store)
    coord_bin = os.path.join(a.bin, "kafka-snapshot-coordinator")
    agent_bin = os.path.join(a.bin, "kafka-snapshot-agent")
    admin = os.path.join(etc, "admin.token")
    os.umask(0o077)
    with open(admin, "w") as f:
        f.write(os.urandom(16).hex())
    port = free_port()
    agents_toml = ""
    agents = {}
    for n in (1, 2, 3):
        tok = os.path.join(etc, f"agent-{n}.token")
        secret = os.urandom(16).hex()
        with open(tok, "w") as f:
            f.write(secret)
        agents_toml += f'[[agents]]\nbroker = {n}\ntoken_sha256 = "{hashlib.sha256(secret.encode()).hexdigest()}"\n'
        agents[n] = {"url": f"http://127.0.0.1:{port}", "token_file": tok,
                     "state_file": os.path.join(root, f"agent-{n}", "state.json"), "metrics_port": free_port()}
    os.umask(0o022)
    coord_cfg = os.path.join(etc, "coordinator.toml")
    with open(coord_cfg, "w") as f:
        f.write(f"""[server]
listen = "127.0.0.1:{port}"
database = "{root}/coordinator/state.db"
admin_token_file = "{admin}"

{agents_toml}
[schedule]
schedule = "@every 24h"
suspend = true

[lease]
ttl = "15s"
poll_interval = "200ms"

[retention]
keep_last = 3

[storage]
url = "file://{store}"

[kafka]
bootstrap_servers = {json.dumps(cluster.info["bootstrap"].split(","))}

[gate]
check_interval = "200ms"
""")
    procs = []
    logs = []

    def spawn(cmd, name):
        lf = open(os.path.join(root, name + ".log"), "wb")
        logs.append(lf)
        procs.append(subprocess.Popen(cmd, stdout=lf, stderr=subprocess.STDOUT))

    def c(*args):
        return subprocess.run([coord_bin, *args, "--config", coord_cfg], check=True,
                              capture_output=True, text=True).stdout

    try:
        spawn([coord_bin, "serve", "--config", coord_cfg], "coordinator")
        for _ in range(100):
            if subprocess.run([coord_bin, "status", "--config", coord_cfg], capture_output=True).returncode == 0:
                break
            time.sleep(0.2)
        ports = {}
        for n in (1, 2, 3):
            cfg = os.path.join(etc, f"agent-daemon-{n}.toml")
            write_agent_config(cfg, cluster, n, store, "reflink", a.level, coordinator=agents[n])
            spawn([agent_bin, "run", "--config", cfg], f"agent-{n}")
            ports[n] = agents[n]["metrics_port"]
        time.sleep(1)
        for n in (1, 2, 3):
            settle(cluster, n)
        cold_data_warm_metadata([d for n in (1, 2, 3) for d in cluster.broker(n)["log_dirs"]])
        t0 = time.monotonic()
        c("run-now")
        state = ""
        for _ in range(36000):
            st = json.loads(c("status", "--json"))
            state = (st.get("cycle") or {}).get("state", "")
            if state in ("done", "partial", "failed"):
                break
            time.sleep(0.1)
        total = time.monotonic() - t0
        if state != "done":
            sys.exit(f"the full cycle ended {state!r}; see {root}")
        # The agents record the archiving phase when they have reported it.
        for _ in range(100):
            phases = {n: scrape(ports[n]) for n in (1, 2, 3)}
            if all("archiving" in p for p in phases.values()):
                break
            time.sleep(0.1)
        downtimes = {n: cluster.downtime(n, t0) for n in (1, 2, 3)}
        log(f"full cycle: {total:.1f} s")
        return {"total": total, "phases": phases, "downtime": downtimes, "status": st}
    finally:
        for p in procs[1:]:
            p.send_signal(signal.SIGTERM)
        for p in procs[1:]:
            p.wait()
        if procs:
            procs[0].send_signal(signal.SIGTERM)
            procs[0].wait()
        for lf in logs:
            lf.close()
        shutil.rmtree(store, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True, help="a directory on XFS with reflink")
    ap.add_argument("--bin", required=True)
    ap.add_argument("--sizes", default="1GiB,8GiB", help="data per broker, comma-separated")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--level", type=int, default=3)
    ap.add_argument("--segment-size", default="1GiB")
    ap.add_argument("--topics", type=int, default=4)
    ap.add_argument("--partitions", type=int, default=6)
    ap.add_argument("--small-partitions", type=int, default=2000)
    ap.add_argument("--throttle", default="20MiB", help="storage.bandwidth_limit of the impact run")
    ap.add_argument("--no-full-cycle", dest="full_cycle", action="store_false")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    results = {"downtime": []}
    sizes = a.sizes.split(",")
    for i, size in enumerate(sizes):
        parse_size(size)
        downtime_size(a, size, results, i == len(sizes) - 1)
    with open(a.out, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
