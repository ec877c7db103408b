#!/usr/bin/env python3
"""Prints the benchmark's one table from the JSON that archive_bench.py,
cycle_bench.py, kafka_downtime and incremental_bench.py wrote: every measurement with the baseline measured in the
same run beside it, the ratio, the target and whether it holds. Medians of
the runs; raw figures follow the table."""

import argparse
import json
import os
import statistics
import time

MIB = 1 << 20
med = statistics.median


def paired(base, agent, f):
    """The median over runs of f(baseline, agent) of the same run: the two
    were measured one right after the other, so this is steadier on a
    shared machine than a ratio of medians."""
    return med(f(b, g) for b, g in zip(base, agent))


def fmt_s(x):
    return f"{x:.2f} s" if x < 100 else f"{x:.0f} s"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--archive", help="archive_bench.py JSON")
    ap.add_argument("--cycle", help="cycle_bench.py JSON")
    ap.add_argument("--kafka", help="coordinator/benches/kafka_downtime.rs JSON")
    ap.add_argument("--incremental", action="append", default=[],
                    help="incremental_bench.py JSON, one per run (either data kind)")
    ap.add_argument("--fs", default="ext4")
    ap.add_argument("--loop-io", default="direct", help="how the loop devices of the scratch filesystems do I/O")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()

    with open("/proc/cpuinfo") as f:
        cpus = sum(1 for line in f if line.startswith("processor"))
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1 << 30)
    lines = [
        f"kafka-snapshot benchmark, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{cpus} CPUs, {mem_gib:.0f} GiB RAM; medians of the runs (ratios: median of each run's "
        "agent/baseline pair, measured back to back); page cache dropped before every timed run; "
        f"scratch filesystems on loop devices with {a.loop_io} I/O",
        "",
        "| # | measurement | baseline (same run) | baseline | agent | ratio | target | holds |",
        "|---|---|---|---:|---:|---:|---|---|",
    ]
    raw = []

    def row(n, what, base_name, base, agent, ratio, target, holds):
        mark = "" if holds is None else ("yes" if holds else "**no**")
        lines.append(f"| {n} | {what} | {base_name} | {base} | {agent} | {ratio} | {target} | {mark} |")

    cyc = None
    if a.cycle:
        with open(a.cycle) as f:
            cyc = json.load(f)
        dts = cyc["downtime"]
        reflink_by_size = {}
        for d in dts:
            gib = d["data_bytes"] / (1 << 30)
            sb = med(d["standin"])
            rf = med(r["downtime"] for r in d["reflink"])
            reflink_by_size[d["size"]] = rf
            over = paired(d["standin"], [r["downtime"] for r in d["reflink"]], lambda b, g: g - b)
            row("1", f"downtime, reflink, {gib:.1f} GiB/broker ({d['files']} files)",
                "stand-in stop + start", fmt_s(sb), fmt_s(rf), f"{over:+.2f} s",
                "<= +1 s", over <= 1.0)
            raw.append(f"{d['size']}: stand-in stop+start {d['standin']}; reflink downtime "
                       f"{[round(r['downtime'], 3) for r in d['reflink']]}")
        if len(dts) >= 2:
            small, big = dts[0], dts[-1]
            rs, rb = reflink_by_size[small["size"]], reflink_by_size[big["size"]]
            row("1", f"downtime, reflink, {big['size']} against {small['size']}",
                f"reflink at {small['size']}", fmt_s(rs), fmt_s(rb), f"{rb / rs:.2f}", "<= 1.10", rb / rs <= 1.10)
        for d in dts:
            gib = d["data_bytes"] / (1 << 30)
            cp = med(d["cp"])
            cd = med(r["downtime"] for r in d["copy"])
            ratio = paired(d["cp"], [r["downtime"] for r in d["copy"]], lambda b, g: g / b)
            row("1", f"downtime, copy, {gib:.1f} GiB/broker", "`cp -a --reflink=never` + sync",
                fmt_s(cp), fmt_s(cd), f"{ratio:.2f}", "reported", None)
            raw.append(f"{d['size']}: cp -a {d['cp']}; copy downtime {[round(r['downtime'], 2) for r in d['copy']]}")

    arc = None
    if a.archive:
        with open(a.archive) as f:
            arc = json.load(f)
        mib = arc["data_bytes"] / MIB
        for lv in arc["levels"]:
            c = arc["create"][str(lv)]
            b, g = med(c["baseline"]), med(c["agent"])
            ratio = paired(c["baseline"], c["agent"], lambda b, g: b / g)
            row("2", f"archive create, level {lv}, {mib:.0f} MiB on {a.fs}",
                f"`tar \\| zstd -T0 -{lv} \\| tee \\| sha256sum`", f"{mib / b:.0f} MiB/s", f"{mib / g:.0f} MiB/s",
                f"{ratio:.2f}", ">= 1.2", ratio >= 1.2)
            if "agent_cpu" in c:
                gib = arc["data_bytes"] / (1 << 30)
                bc, gc = med(c["baseline_cpu"]), med(c["agent_cpu"])
                row("2", f"... CPU time (user + system) per GiB, level {lv}", "the same pipeline",
                    f"{bc / gib:.2f} s", f"{gc / gib:.2f} s",
                    f"{paired(c['baseline_cpu'], c['agent_cpu'], lambda b, g: b / g):.2f}", "reported", None)
            raw.append(f"create level {lv}: baseline {c['baseline']}, agent {c['agent']}, archive bytes "
                       f"{c['archive_bytes'][0]}")
        e = arc["extract"]
        b, bs, g = med(e["baseline"]), med(e["baseline_sync"]), med(e["agent"])
        ea_med = g
        r1 = paired(e["baseline"], e["agent"], lambda b, g: b / g)
        r2 = paired(e["baseline_sync"], e["agent"], lambda b, g: b / g)
        row("3", f"extract + verify, level {arc['levels'][0]}", "`zstd -d \\| tar -x`",
            f"{mib / b:.0f} MiB/s", f"{mib / g:.0f} MiB/s", f"{r1:.2f}", ">= 1.0", r1 >= 1.0)
        row("3", "extract + verify, same data", "`zstd -d \\| tar -x && sync -f` (durable, as the agent)",
            f"{mib / bs:.0f} MiB/s", f"{mib / g:.0f} MiB/s", f"{r2:.2f}", "(>= 1.0)", r2 >= 1.0)
        raw.append(f"extract: baseline {e['baseline']}, baseline+sync {e['baseline_sync']}, agent {e['agent']}")
        if "encrypted" in arc:
            en = arc["encrypted"]
            lv0 = arc["levels"][0]
            c0 = arc["create"][str(lv0)]
            rc = paired(c0["agent"], en["create"], lambda p, x: p / x)
            row("2", f"archive create, level {lv0}, encrypted (age, 1 recipient), "
                f"peak RSS {max(en['create_rss_kib']) / 1024:.0f} MiB",
                "the agent unencrypted", f"{mib / med(c0['agent']):.0f} MiB/s",
                f"{mib / med(en['create']):.0f} MiB/s", f"{rc:.2f}", "reported", None)
            if "agent_cpu" in c0:
                gib = arc["data_bytes"] / (1 << 30)
                row("2", "... CPU time (user + system) per GiB, encrypted", "the agent unencrypted",
                    f"{med(c0['agent_cpu']) / gib:.2f} s", f"{med(en['create_cpu']) / gib:.2f} s",
                    f"{paired(c0['agent_cpu'], en['create_cpu'], lambda p, x: p / x):.2f}", "reported", None)
            rx = paired(e["agent"], en["extract"], lambda p, x: p / x)
            row("3", f"extract + verify, encrypted, peak RSS {max(en['extract_rss_kib']) / 1024:.0f} MiB",
                "the agent unencrypted", f"{mib / ea_med:.0f} MiB/s",
                f"{mib / med(en['extract']):.0f} MiB/s", f"{rx:.2f}", "reported", None)
            raw.append(f"encrypted: create {en['create']}, extract {en['extract']}, archive bytes "
                       f"{en['archive_bytes'][0]} (unencrypted {c0['archive_bytes'][0]})")
        if "s3" in arc:
            s3 = arc["s3"]
            c0 = arc["create"][str(arc["levels"][0])]
            amib = med(s3["archive_bytes"]) / MIB
            up = paired(c0["agent"], s3["create"], lambda f, x: f / x)
            down = paired(e["agent"], s3["extract"], lambda f, x: f / x)
            row("2", f"archive create into s3:// (local Garage, {amib:.0f} MiB archive), "
                f"peak RSS {max(s3['create_rss_kib']) / 1024:.0f} MiB",
                "the agent into file://", f"{mib / med(c0['agent']):.0f} MiB/s",
                f"{mib / med(s3['create']):.0f} MiB/s", f"{up:.2f}", "reported", None)
            row("3", f"extract + verify from s3://, peak RSS {max(s3['extract_rss_kib']) / 1024:.0f} MiB",
                "the agent from file://", f"{mib / ea_med:.0f} MiB/s",
                f"{mib / med(s3['extract']):.0f} MiB/s", f"{down:.2f}", "reported", None)
            raw.append(f"s3: create {s3['create']}, extract {s3['extract']}")

    if cyc:
        big = cyc["downtime"][-1]
        gib = big["data_bytes"] / (1 << 30)
        for capture in ("copy", "reflink"):
            rss = max(r["rss_kib"] for r in big[capture]) / 1024
            base = ""
            if arc:
                base_rss = max(arc["create"][str(arc["levels"][0])]["baseline_rss_kib"]) / 1024
                base = f"{base_rss:.1f} MiB"
            row("4", f"peak RSS, `snapshot` archiving {gib:.1f} GiB ({capture})",
                "largest process of the create baseline" if arc else "-", base or "-",
                f"{rss:.1f} MiB", f"{rss / base_rss:.2f}" if base else "-", "<= 64 MiB", rss <= 64)
        if "throttled" in big:
            un = [r["after_up"] for r in big["reflink"] if r["after_up"]]
            th = big["throttled"]["after_up"]
            arch = med(r["archive_bytes"] for r in big["reflink"])

            def cores(w):
                return w["cpu"] / w["seconds"]

            def rate(w, k):
                return w[k] / MIB / w["seconds"]

            u_cores = med(cores(w) for w in un)
            u_read = med(rate(w, "read") for w in un)
            u_write = med(rate(w, "write") for w in un)
            u_secs = med(w["seconds"] for w in un)
            row("5", f"archiving from staging, broker serving: CPU (of {cpus})", "unthrottled",
                f"{u_cores:.2f} CPUs", f"{cores(th):.2f} CPUs", f"{cores(th) / u_cores:.2f}", "reported", None)
            row("5", "... log dirs read from disk", "unthrottled", f"{u_read:.0f} MiB/s",
                f"{rate(th, 'read'):.0f} MiB/s", f"{rate(th, 'read') / u_read:.2f}", "reported", None)
            limit = big["throttle"]
            from archive_bench import parse_size

            lim = parse_size(limit) / MIB
            th_arch = big["throttled"]["archive_bytes"] / MIB / th["seconds"]
            row("5", f"... archive written, `bandwidth_limit = \"{limit}\"`", "unthrottled",
                f"{u_write:.0f} MiB/s", f"{th_arch:.1f} MiB/s",
                f"{th_arch / lim:.2f} of the limit", "<= 1.05 of the limit", th_arch <= lim * 1.05)
            raw.append(f"impact window (caught_up -> agent exit): unthrottled {u_secs:.1f} s, "
                       f"{un}; throttled {th}; archive {arch / MIB:.0f} MiB")
        if "full_cycle" in big:
            fc = big["full_cycle"]
            sb = med(big["standin"])
            row("6", f"full cycle, 3 brokers x {gib:.1f} GiB, reflink", "3 x stand-in stop + start",
                fmt_s(3 * sb), fmt_s(fc["total"]), f"{fc['total'] / (3 * sb):.1f}", "reported", None)

    if a.kafka:
        with open(a.kafka) as f:
            kaf = json.load(f)["kafka_downtime"]
        for d in kaf:
            gib = d["data_bytes"] / (1 << 30)
            plain = [p["plain"]["downtime_s"] for p in d["pairs"]]
            agent = [p["agent"]["downtime_s"] for p in d["pairs"]]
            over = paired(plain, agent, lambda b, g: g - b)
            row("7", f"downtime on Apache Kafka (KRaft), reflink, {gib:.1f} GiB/broker",
                "plain stop + start, until back in every ISR", fmt_s(med(plain)), fmt_s(med(agent)),
                f"{over:+.2f} s", "<= +0.5 s", over <= 0.5)
            reported = [p["agent"]["agent_broker_downtime_ms"] / 1000 for p in d["pairs"]]
            raw.append(f"Kafka {d['size']}: plain {[round(x, 2) for x in plain]}; agent {[round(x, 2) for x in agent]} "
                       f"(the agent's own broker_downtime, stop to start command's return: "
                       f"{[round(x, 2) for x in reported]}; whole agent run: "
                       f"{[round(p['agent']['agent_run_s'], 1) for p in d['pairs']]})")
            ph = [p["agent"].get("agent_phases") for p in d["pairs"]]
            if all(ph):
                def col(k):
                    return [None if x[k] is None else round(x[k], 2) for x in ph]
                raw.append(f"Kafka {d['size']} by phase: stop, plain {[round(p['plain']['stop_s'], 2) for p in d['pairs']]}, "
                           f"agent {col('stop_s')}; the agent's capture + start command {col('capture_and_start_s')}; "
                           f"plain start until back in every ISR "
                           f"{[round(p['plain']['downtime_s'] - p['plain']['stop_s'], 2) for p in d['pairs']]}, "
                           f"agent {[round(p['agent']['downtime_s'] - p['agent']['agent_broker_downtime_ms'] / 1000, 2) for p in d['pairs']]}; "
                           f"the agent's recovery check {col('recovery_check_s')} "
                           f"(its unavailable_ms minus the outside figure: "
                           f"{[round(p['agent']['agent_unavailable_ms'] / 1000 - p['agent']['downtime_s'], 2) for p in d['pairs']]}; "
                           f"checks that could not reach the cluster: {[x['recovery_errors'] for x in ph]})")

    by_kind = {}
    for path in a.incremental:
        with open(path) as f:
            d = json.load(f)
        kind = "incompressible" if d["incompressible"] else "compressible"
        enc = ", encrypted" if d.get("encrypted") else ""
        by_kind.setdefault(f"{kind}{enc}, {d.get('capture', 'copy')} capture", []).append(d)
    for kind in sorted(by_kind):
        runs = by_kind[kind]
        r0 = runs[0]
        what = (f"incremental, {kind}, {r0['size'] / (1 << 30):.0f} GiB broker, "
                f"{r0['append'] / MIB:.0f} MiB appended per cycle ({len(runs)} runs)")

        def steady(r, f):
            return med(f(c) for c in r["cycles"][1:])
        up = med(r["upload_vs_appended"] for r in runs)
        row("8", f"{what}: bytes uploaded per cycle", "bytes appended, zstd same level",
            f"{med(steady(r, lambda c: c['appended_compressed']) for r in runs) / MIB:.0f} MiB",
            f"{med(steady(r, lambda c: c['incremental']['uploaded_bytes']) for r in runs) / MIB:.0f} MiB",
            f"{up:.3f}x", "<= 1.2x", up <= 1.2)
        rd = med(steady(r, lambda c: c["incremental"]["objects"]["hashed_bytes"] / max(c["appended"], 1))
                 for r in runs)
        row("8", f"{what}: bytes read per cycle", "bytes appended",
            f"{med(steady(r, lambda c: c['appended']) for r in runs) / MIB:.0f} MiB",
            f"{med(steady(r, lambda c: c['incremental']['objects']['hashed_bytes']) for r in runs) / MIB:.0f} MiB",
            f"{rd:.2f}x", "reported", None)
        st = med(r["storage_vs_one_full_plus_appended"] for r in runs)
        row("8", f"{what}: storage of 7 snapshots", "one full + everything appended", "", "",
            f"{st:.2f}x", "<= 1.3x", st <= 1.3)
        row("8", f"{what}: storage of 7 snapshots", "7 full snapshots", "", "",
            f"{med(r['storage_vs_full'] for r in runs):.2f}x", "reported", None)
        sp = med(r["archive_speedup"] for r in runs)
        row("8", f"{what}: archive time per cycle", "full snapshot of the same data",
            fmt_s(med(steady(r, lambda c: c["full"]["seconds"]) for r in runs)),
            fmt_s(med(steady(r, lambda c: c["incremental"]["seconds"]) for r in runs)),
            f"{sp:.1f}x faster", ">= 5x faster", sp >= 5)
        # Every pair of every run: a median of per-run medians threw away
        # most of the samples.
        pairs = sorted(p for r in runs for p in r.get("restore_pairs", [r["restore_ratio"]]))
        rr = med(pairs)
        q1, q3 = pairs[len(pairs) // 4], pairs[(3 * len(pairs)) // 4]
        row("8", f"{what}: restore of the 7th", "restore of the 7th full",
            fmt_s(med(r["restore"]["full"]["seconds"] for r in runs)),
            fmt_s(med(r["restore"]["incremental"]["seconds"] for r in runs)),
            f"{rr:.2f}x the time (median of {len(pairs)} pairs; quartiles {q1:.2f}-{q3:.2f})",
            "<= 1.0x", rr <= 1.0)
        peak = max(r["peak_rss_mib"] for r in runs)
        row("8", f"{what}: peak RSS of every path (full and incremental, create and extract)", "", "",
            f"{peak:.1f} MiB", "", "<= 64 MiB", peak <= 64)
        for i, r in enumerate(runs, 1):
            raw.append(f"incremental {kind} run {i}: uploaded/appended {r['upload_vs_appended']:.4f}, "
                       f"storage {r['storage_vs_one_full_plus_appended']:.3f}, "
                       f"speedup {r['archive_speedup']:.2f}, restore {r['restore_ratio']:.2f}, "
                       f"peak RSS {r['peak_rss_mib']:.1f} MiB; per cycle incremental/full s: "
                       + ", ".join(f"{c['incremental']['seconds']:.2f}/{c['full']['seconds']:.2f}"
                                   for c in r["cycles"]))

    lines.append("")
    if cyc and "full_cycle" in cyc["downtime"][-1]:
        fc = cyc["downtime"][-1]["full_cycle"]
        phases = {}
        for per in fc["phases"].values():
            for k, v in per.items():
                phases[k] = phases.get(k, 0.0) + v
        order = ["gating", "stopping", "capturing", "starting", "recovering", "archiving"]
        names = [p for p in order if p in phases] + sorted(p for p in phases if p not in order)
        lines += [
            f"Full cycle ({fc['total']:.1f} s, run-now to done): time per phase summed over the three "
            "brokers (agent metrics); the share is of the cycle's total. A broker's archiving (from staging, "
            "broker serving) overlaps the next broker's turn, so shares can add up to more than 100%.",
            "",
            "| phase | broker 1 | broker 2 | broker 3 | sum | share of the cycle |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        slowest = max(names, key=lambda p: phases[p])
        for p in names:
            per = [fc["phases"][str(n)].get(p, 0.0) if str(n) in fc["phases"] else fc["phases"][n].get(p, 0.0)
                   for n in (1, 2, 3)]
            name = f"**{p}**" if p == slowest else p
            lines.append(f"| {name} | {per[0]:.2f} s | {per[1]:.2f} s | {per[2]:.2f} s | {phases[p]:.2f} s | "
                         f"{100 * phases[p] / fc['total']:.0f}% |")
        dt = fc["downtime"]
        lines += ["", "Downtime per broker in the cycle (cluster's view): "
                  + ", ".join(f"broker {k}: {v:.2f} s" for k, v in dt.items()), ""]
    lines += ["Raw figures (seconds unless said):", ""] + [f"- {r}" for r in raw]
    text = "\n".join(lines) + "\n"
    print(text)
    with open(a.out, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
