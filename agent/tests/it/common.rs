//! Shared fixtures: test filesystems, generated log dirs, running the agent
//! binary, and comparing trees byte for byte.

use kafka_snapshot_testkit::{generate, Spec};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const CLUSTER: &str = "MkU3OEVBNTcwNTJENDM2Qk";

/// A scratch dir on the named test filesystem ("xfs" or "ext4").
pub fn scratch(fs_kind: &str) -> tempfile::TempDir {
    let var = match fs_kind {
        "xfs" => "KSNAP_TEST_XFS",
        "ext4" => "KSNAP_TEST_EXT4",
        other => panic!("unknown test filesystem {other}"),
    };
    let root = std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set: run the tests through tests/run.sh, which mounts the test filesystems")
    });
    tempfile::tempdir_in(root).expect("scratch dir on the test filesystem")
}

/// Small log dirs (two of them) of broker `node` under `root/data`.
pub fn small_broker(root: &Path, node: i32) -> Vec<PathBuf> {
    let dirs = vec![
        root.join("data/disk1/kafka-logs"),
        root.join("data/disk2/kafka-logs"),
    ];
    generate(&Spec::small(CLUSTER, node, dirs.clone())).expect("generate log dirs");
    dirs
}

pub fn generate_spec(spec: &Spec) {
    generate(spec).expect("generate log dirs");
}

pub fn agent() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kafka-snapshot-agent"));
    c.env("KAFKA_SNAPSHOT_LOG", "warn");
    c
}

/// Runs the agent and returns its output; panics with stderr if the exit
/// code is not `want`.
pub fn run(args: &[&str], want: i32) -> Output {
    run_with(agent(), args, want)
}

/// Runs `cmd` with `args`; panics with its output if the exit code is not
/// `want`.
pub fn run_with(mut cmd: Command, args: &[&str], want: i32) -> Output {
    let out = cmd.args(args).output().expect("run command");
    check_exit(&out, &format!("{cmd:?}"), want);
    out
}

/// Panics with stdout and stderr when `out` did not exit with `want`.
pub fn check_exit(out: &Output, what: &str, want: i32) {
    let code = out.status.code().unwrap_or(-1);
    assert_eq!(
        code,
        want,
        "{what} exited {code}, expected {want}\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `archive create` of `dirs` into `store` by `capture`, with `extra`
/// arguments; panics with its output if the exit code is not `want`.
pub fn run_create(
    dirs: &[PathBuf],
    store: &Path,
    capture: &str,
    extra: &[&str],
    want: i32,
) -> Output {
    let dirs = dirs_arg(dirs);
    let store = store_url(store);
    let mut args = vec![
        "archive",
        "create",
        "--log-dirs",
        &dirs,
        "--store",
        &store,
        "--capture",
        capture,
    ];
    args.extend_from_slice(extra);
    run(&args, want)
}

/// `archive create` of `dirs` into `store`; returns its `--json` report.
pub fn create(dirs: &[PathBuf], store: &Path, capture: &str) -> serde_json::Value {
    let out = run_create(dirs, store, capture, &["--json"], 0);
    serde_json::from_slice(&out.stdout).expect("create --json output")
}

/// An empty file store under `root`.
pub fn new_store(root: &Path) -> PathBuf {
    let store = root.join("store");
    fs::create_dir(&store).unwrap();
    store
}

/// `--log-dirs` argument for `dirs`.
pub fn dirs_arg(dirs: &[PathBuf]) -> String {
    dirs.iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(",")
}

pub fn store_url(store: &Path) -> String {
    format!("file://{}", store.display())
}

/// Every object of a tree, for byte-for-byte comparison.
#[derive(Debug, PartialEq, Eq)]
pub struct Node {
    pub kind: char,
    pub size: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime_ns: i64,
    pub sha256: String,
    pub link: Option<PathBuf>,
}

pub fn tree(root: &Path, skip: &[&str]) -> BTreeMap<PathBuf, Node> {
    let mut out = BTreeMap::new();
    walk(root, Path::new(""), skip, &mut out);
    out
}

fn walk(root: &Path, rel: &Path, skip: &[&str], out: &mut BTreeMap<PathBuf, Node>) {
    let p = root.join(rel);
    let md = fs::symlink_metadata(&p).unwrap();
    let ft = md.file_type();
    let (kind, sha, link) = if ft.is_symlink() {
        ('l', String::new(), Some(fs::read_link(&p).unwrap()))
    } else if ft.is_dir() {
        ('d', String::new(), None)
    } else {
        ('f', file_sha256(&p), None)
    };
    out.insert(
        rel.to_path_buf(),
        Node {
            kind,
            size: if kind == 'f' { md.len() } else { 0 },
            mode: md.permissions().mode() & 0o7777,
            uid: md.uid(),
            gid: md.gid(),
            // Directory mtimes of the root are touched by the rename dance
            // only on the parent, never on the dir itself.
            mtime_ns: if kind == 'l' {
                0
            } else {
                md.mtime() * 1_000_000_000 + md.mtime_nsec()
            },
            sha256: sha,
            link,
        },
    );
    if kind == 'd' {
        let mut names: Vec<_> = fs::read_dir(&p)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        for n in names {
            let name = n.to_string_lossy();
            let top = rel.as_os_str().is_empty();
            // `*suffix` at the top, `**suffix` at any depth.
            let skipped = skip.iter().any(|s| match s.strip_prefix("**") {
                Some(suffix) => name.ends_with(suffix),
                None => match s.strip_prefix('*') {
                    Some(suffix) => top && name.ends_with(suffix),
                    None => top && name == *s,
                },
            });
            if skipped {
                continue;
            }
            walk(root, &rel.join(n), skip, out);
        }
    }
}

pub fn file_sha256(p: &Path) -> String {
    let mut f = fs::File::open(p).unwrap();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex::encode(h.finalize())
}

/// What a snapshot leaves out of a log dir: the lock, deleting partitions
/// and, in any dir, the files of deleted segments.
pub const NOT_ARCHIVED: &[&str] = &[".lock", "*-delete", "**.deleted"];

/// Asserts two trees are identical (content, modes, owners, mtimes);
/// `skip_in_original` names top-level entries (`*suffix` for a suffix;
/// `**suffix` for names with the suffix at any depth).
pub fn assert_same_tree(original: &Path, restored: &Path, skip_in_original: &[&str]) {
    let a = tree(original, skip_in_original);
    let b = tree(restored, &[]);
    let ak: Vec<_> = a.keys().collect();
    let bk: Vec<_> = b.keys().collect();
    assert_eq!(
        ak,
        bk,
        "different file sets: {} vs {}",
        original.display(),
        restored.display()
    );
    for (k, na) in &a {
        assert_eq!(
            na,
            &b[k],
            "{} differs between {} and {}",
            k.display(),
            original.display(),
            restored.display()
        );
    }
}

/// The snapshot dir of a snapshot in a file store.
pub fn snapshot_dir(store: &Path, node: i32, id: &str) -> PathBuf {
    store.join(CLUSTER).join(format!("broker-{node}")).join(id)
}

/// Names in `dir` (sorted), for checks that nothing appeared or vanished.
pub fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Runs `cmd` to the end and returns its output and its peak RSS in KiB.
/// A small python3 parent spawns it and reads its `ru_maxrss`: Linux carries
/// the high-water mark of the process that forks across `exec`, and this
/// test process is far larger than the agent.
pub fn run_measured(cmd: &Command, want: i32) -> (Output, u64) {
    const WRAPPER: &str = "import os, subprocess, sys\n\
        p = subprocess.Popen(sys.argv[2:])\n\
        _, status, ru = os.wait4(p.pid, 0)\n\
        open(sys.argv[1], 'w').write(str(ru.ru_maxrss))\n\
        sys.exit(os.waitstatus_to_exitcode(status))\n";
    let dir = tempfile::tempdir().unwrap();
    let rss_file = dir.path().join("maxrss");
    let mut w = Command::new("python3");
    w.arg("-c")
        .arg(WRAPPER)
        .arg(&rss_file)
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => w.env(k, v),
            None => w.env_remove(k),
        };
    }
    let out = w.output().expect("run python3");
    check_exit(&out, &format!("{cmd:?}"), want);
    let rss = fs::read_to_string(&rss_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    (out, rss)
}

/// Writes `len` bytes that zstd cannot compress (xorshift), so that an
/// archive is about as large as its data.
pub fn write_incompressible(path: &Path, len: usize, seed: u64) {
    let mut x = seed | 1;
    let mut data = Vec::with_capacity(len + 8);
    while data.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    data.truncate(len);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, data).unwrap();
}

/// A process holding `dir/.lock` the way a running Kafka broker does
/// (FileChannel.tryLock = a POSIX record lock); returns once it is held.
pub fn hold_kafka_lock(dir: &Path) -> std::process::Child {
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(
            "import fcntl, sys, time; f = open(sys.argv[1], 'a'); \
             fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB); print('held', flush=True); time.sleep(600)",
        )
        .arg(dir.join(".lock"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "held");
    child
}

/// A started stand-in cluster of three brokers with their log dirs under
/// `root/data`, after `change` adjusted the spec (extra topics, SASL, ...).
pub fn standin_cluster(
    root: &Path,
    change: impl FnOnce(&mut kafka_snapshot_standin::ClusterSpec),
) -> kafka_snapshot_standin::StandinCluster {
    let mut spec = kafka_snapshot_standin::ClusterSpec::new(3);
    spec.data_root = Some(root.join("data"));
    change(&mut spec);
    let c = kafka_snapshot_standin::StandinCluster::create(&root.join("cluster"), &spec)
        .expect("stand-in cluster");
    c.start_all(std::time::Duration::from_secs(60))
        .expect("cluster starts");
    c
}

/// The agent's config for one broker of a stand-in cluster; short
/// intervals so that scenarios run in seconds. Tests change fields, then
/// [`AgentToml::write`] it.
pub struct AgentToml {
    pub broker: i32,
    /// `[broker]` lines naming the log dirs (`log_dirs = [...]` or
    /// `server_properties = "..."`).
    pub dirs: String,
    pub stop_command: String,
    pub start_command: String,
    pub stop_timeout: &'static str,
    pub recovery_timeout: &'static str,
    pub store: PathBuf,
    /// Extra `[snapshot]` lines.
    pub snapshot: String,
    /// Extra `[storage]` lines.
    pub storage: String,
    /// The whole `[kafka]` section body.
    pub kafka: String,
    /// Extra `[gate]` lines.
    pub gate: String,
}

impl AgentToml {
    /// Broker `n` of `c`, PLAINTEXT, storing into `store`.
    pub fn new(c: &kafka_snapshot_standin::StandinCluster, n: i32, store: &Path) -> AgentToml {
        let dirs: Vec<String> = c
            .log_dirs(n)
            .iter()
            .map(|d| format!("{:?}", d.display().to_string()))
            .collect();
        AgentToml {
            broker: n,
            dirs: format!("log_dirs = [{}]", dirs.join(", ")),
            stop_command: c.stop_script(n).display().to_string(),
            start_command: c.start_script(n).display().to_string(),
            stop_timeout: "60s",
            recovery_timeout: "60s",
            store: store.to_path_buf(),
            snapshot: String::new(),
            storage: String::new(),
            kafka: kafka_section(&c.bootstrap(), ""),
            gate: String::new(),
        }
    }

    /// Writes `root/agent-<broker>.toml` and returns its path.
    pub fn write(&self, root: &Path) -> PathBuf {
        let text = format!(
            "[broker]\n{}\nstop_command = {:?}\nstart_command = {:?}\nstop_timeout = {:?}\n\
             command_timeout = \"60s\"\nrecovery_timeout = {:?}\n\
             [snapshot]\n{}\n[storage]\nurl = {:?}\n{}\n[kafka]\n{}\n\
             [gate]\nstable_checks = 2\ncheck_interval = \"300ms\"\n{}\n",
            self.dirs,
            self.stop_command,
            self.start_command,
            self.stop_timeout,
            self.recovery_timeout,
            self.snapshot,
            store_url(&self.store),
            self.storage,
            self.kafka,
            self.gate,
        );
        let path = root.join(format!("agent-{}.toml", self.broker));
        fs::write(&path, text).unwrap();
        path
    }
}

/// A `[kafka]` section body for `bootstrap` (comma-separated) plus `extra`
/// lines (security settings).
pub fn kafka_section(bootstrap: &str, extra: &str) -> String {
    let servers: Vec<String> = bootstrap.split(',').map(|b| format!("{b:?}")).collect();
    format!(
        "bootstrap_servers = [{}]\nrequest_timeout = \"10s\"\n{extra}",
        servers.join(", ")
    )
}

/// Every `manifest.json` and `archive.tar.zst` under a file store: what
/// a committed (or half-committed) snapshot leaves.
pub fn stored_objects(store: &Path) -> Vec<PathBuf> {
    tree(store, &[])
        .into_keys()
        .filter(|p| {
            p.file_name().is_some_and(|n| {
                n == "manifest.json" || n.to_string_lossy().starts_with("archive.tar.zst")
            })
        })
        .collect()
}

/// Runs `check` and returns its text report, asserting the exit code.
pub fn check(cfg: &str, want: i32) -> String {
    stdout(&run(&["check", "--config", cfg], want))
}

/// The ids of the failed conditions in a `check` report.
pub fn failed_ids(report: &str) -> Vec<String> {
    report
        .lines()
        .filter_map(|l| l.strip_prefix("  FAIL  "))
        .map(|l| l.split_whitespace().next().unwrap_or_default().to_string())
        .collect()
}

/// The reason and items printed under a failed condition.
pub fn failure(report: &str, id: &str) -> String {
    let mut lines = report.lines().skip_while(|l| {
        l.strip_prefix("  FAIL  ")
            .is_none_or(|r| r.split_whitespace().next() != Some(id))
    });
    assert!(lines.next().is_some(), "{id} did not fail:\n{report}");
    lines
        .take_while(|l| l.starts_with("        "))
        .map(|l| l.trim())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Asserts `check` fails exactly `ids`, and that the first of them says
/// `reason` and lists an item starting with `item`.
pub fn assert_not_safe(cfg: &str, ids: &[&str], reason: &str, item: &str) {
    let report = check(cfg, 1);
    assert!(report.starts_with("broker "), "{report}");
    assert!(report.contains("NOT safe to stop"), "{report}");
    assert_eq!(failed_ids(&report), ids, "{report}");
    let f = failure(&report, ids[0]);
    assert!(
        f.contains(reason),
        "{ids:?}: {reason:?} missing in:\n{report}"
    );
    assert!(
        f.lines().skip(1).any(|l| l.starts_with(item)),
        "{ids:?}: no item {item:?} in:\n{report}"
    );
}

pub fn assert_safe(cfg: &str) {
    let report = check(cfg, 0);
    assert_eq!(failed_ids(&report), Vec::<String>::new(), "{report}");
}

/// Every file below `dir` (not the dirs), as paths.
pub fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p.display().to_string());
        }
    }
    out
}

/// The largest `.log` file under `dirs`: the one a producer appends to.
pub fn largest_log(dirs: &[PathBuf]) -> PathBuf {
    dirs.iter()
        .flat_map(|d| tree(d, &[]).into_iter().map(move |(p, n)| (d.join(p), n)))
        .filter(|(p, n)| n.kind == 'f' && p.extension().is_some_and(|e| e == "log"))
        .max_by_key(|(_, n)| n.size)
        .map(|(p, _)| p)
        .expect("a .log file")
}
