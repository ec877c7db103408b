#!/usr/bin/env python3
"""Writes the README's "What we test" figures from what the suite recorded.

Every fault scenario and hostile-input case appends a JSON line to
$KSNAP_TEST_REPORT/<group>.jsonl when it passes (tests/testkit/src/report.rs).
This script counts them and replaces the text between the markers

    <!-- what-we-test:begin -->  ...  <!-- what-we-test:end -->

in README.md, so the counts there are the ones the last full run produced.

    python3 tests/report.py --report target/test-report --readme README.md [--check]

--check: exit 1 if the README's block differs from what the run produced.
"""

import argparse
import json
import os
import sys

BEGIN = "<!-- what-we-test:begin -->"
END = "<!-- what-we-test:end -->"

# group: (title, unit, the one-line result when every case passed)
GROUPS = {
    "faults": (
        "Fault matrix (`coordinator/tests/faults.rs`)",
        "scenarios",
        None,  # computed below from the figures
    ),
    "real_kafka": (
        "Against Apache Kafka itself (`coordinator/tests/real_kafka.rs`)",
        "scenarios",
        None,  # computed below from the figures
    ),
    "corruption": (
        "Single-byte corruption of an archive (`agent/tests/it/corruption.rs`)",
        "positions",
        "every one detected by `verify` and by `extract`, naming the snapshot, with the restore target untouched",
    ),
    "snapshots": (
        "Truncated, edited and misplaced snapshots (`agent/tests/it/corruption.rs`)",
        "inputs",
        "every one refused by `verify` and `extract` with a message that says which",
    ),
    "hostile_archives": (
        "Hostile tar entries (`agent/tests/it/hostile.rs`)",
        "inputs",
        "every one refused by `verify` and `extract`; nothing written outside the target",
    ),
    "security": (
        "Holes closed: hostile storage, hosts and clocks (`agent/tests/it/hostile.rs`, `agent/tests/it/daemon.rs`, `coordinator/tests`)",
        "inputs",
        "each handled as its case says; every numbered hole has a case that failed on the code before its fix",
    ),
    "configs": (
        "Bad configs (`agent/tests/it/cli.rs`, `coordinator/tests/api.rs`)",
        "inputs",
        "every one fails `validate` (exit 2) naming the file and the key",
    ),
    "api": (
        "Hostile coordinator API requests (`coordinator/tests/api.rs`)",
        "inputs",
        "every one refused with its 4xx status, and `status` unchanged after each",
    ),
}


def load(report_dir, group):
    path = os.path.join(report_dir, group + ".jsonl")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def units(rows, unit):
    if unit == "scenarios":
        return len(rows)
    return sum(r.get(unit, 1) for r in rows)


def faults_result(rows):
    down = max((r.get("max_brokers_down", 0) for r in rows), default=0)
    verified = sum(r.get("snapshots_verified", 0) for r in rows)
    return (
        f"all passed: at most {down} broker down at any moment (the stand-in "
        f"cluster's event log and metadata), every broker running again or "
        f"named in `status`, {verified} complete snapshots verified along the "
        f"way and none listed complete that failed `verify`, nothing left in "
        f"staging or storage, and the next cycle `done` after every scenario"
    )


def real_kafka_result(rows):
    acked = sum(r.get("records_acked", 0) for r in rows)
    read = sum(r.get("records_read_back", 0) for r in rows)
    missing = max((r.get("max_brokers_missing", 0) for r in rows), default=0)
    samples = sum(r.get("samples", 0) for r in rows)
    under = sum(r.get("samples_under_min_isr", 0) for r in rows)
    offline = sum(r.get("samples_offline", 0) for r in rows)
    return (
        f"all passed: a producer with acks=all wrote throughout; {acked} "
        f"acknowledged records, {read} of them read back exactly "
        f"once; at most {missing} broker missing from Metadata in {samples} "
        f"samples, {under} samples with a partition under min ISR and "
        f"{offline} with one offline; every snapshot verified"
    )


def render(report_dir):
    lines = [BEGIN, ""]
    total = {}
    missing = []
    for group, (title, unit, result) in GROUPS.items():
        rows = load(report_dir, group)
        if rows is None:
            missing.append(group)
            continue
        n = units(rows, unit)
        total[unit] = total.get(unit, 0) + n
        if group == "faults":
            result = faults_result(rows)
        elif group == "real_kafka":
            result = real_kafka_result(rows)
        # Sorted: tests run in parallel, so the order they finish in varies.
        cases = sorted({r["case"] for r in rows})
        lines.append(f"- **{title}**: {n} {unit}. Result: {result}.")
        lines.append(f"  Cases: {'; '.join(cases)}.")
    lines.append("")
    lines.append(
        "Totals: "
        + ", ".join(f"{v} {k}" for k, v in total.items())
        + ". Written by `tests/report.py` from the last `./tests/run.sh`."
    )
    lines.append("")
    lines.append(END)
    return "\n".join(lines), missing


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--report", required=True)
    ap.add_argument("--readme", required=True)
    ap.add_argument("--check", action="store_true")
    a = ap.parse_args()
    block, missing = render(a.report)
    if missing:
        sys.exit(f"tests/report.py: no results for {', '.join(missing)} in {a.report}: did every test run?")
    with open(a.readme) as f:
        text = f.read()
    if BEGIN not in text or END not in text:
        sys.exit(f"tests/report.py: {a.readme} has no {BEGIN} ... {END} block")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    new = head + block + tail
    print(block)
    if new == text:
        print("README.md: 'What we test' is up to date")
        return
    if a.check:
        sys.exit("README.md: 'What we test' differs from this run's figures: run ./tests/run.sh and commit README.md")
    with open(a.readme, "w") as f:
        f.write(new)
    print("README.md: 'What we test' updated from this run")


if __name__ == "__main__":
    main()
