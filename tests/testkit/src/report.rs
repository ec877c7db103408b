//! What the suite tried, for the README's "What we test" section: every
//! fault scenario and hostile-input group appends one JSON line per case to
//! `$KSNAP_TEST_REPORT/<group>.jsonl` when it passed. `tests/report.py`
//! turns the files into the section, so the counts there come from the
//! run, not from a hand-typed list. Without `KSNAP_TEST_REPORT` nothing is
//! written.

use std::io::Write;

fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Records that `case` of `group` passed, with its figures (how many
/// inputs it tried, the most brokers seen down, ...).
pub fn record(group: &str, case: &str, figures: &[(&str, u64)]) {
    let Some(dir) = std::env::var_os("KSNAP_TEST_REPORT") else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    std::fs::create_dir_all(&dir).expect("creating the test report dir");
    let mut line = format!("{{\"case\":{}", quote(case));
    for (k, v) in figures {
        line.push_str(&format!(",{}:{v}", quote(k)));
    }
    line.push_str("}\n");
    let path = dir.join(format!("{group}.jsonl"));
    // One write on an O_APPEND file: lines of parallel tests never mix.
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    f.write_all(line.as_bytes())
        .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}
