//! Incremental snapshots (`snapshot.mode = "incremental"`, format 3): the
//! larger files are content objects stored once per cluster, and every
//! snapshot still verifies and restores on its own.

use crate::common::*;
use kafka_snapshot_testkit::Spec;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

const MIN_SIZE: &str = "64KiB";
/// The smallest chunk size: files of several chunks, as real segments are.
const CHUNK: u64 = 64 << 10;

fn spec(dirs: Vec<PathBuf>) -> Spec {
    let mut spec = Spec::small(CLUSTER, 1, dirs);
    // Segments of up to 512 KiB: most partitions roll several.
    spec.total_bytes = 12 << 20;
    spec.segment_bytes = 512 << 10;
    spec
}

fn create_incremental(dirs: &[PathBuf], store: &Path) -> serde_json::Value {
    create_with(dirs, store, &[])
}

fn create_with(dirs: &[PathBuf], store: &Path, extra: &[&str]) -> serde_json::Value {
    create_captured(dirs, store, "copy", extra)
}

fn create_captured(
    dirs: &[PathBuf],
    store: &Path,
    capture: &str,
    extra: &[&str],
) -> serde_json::Value {
    let mut args = vec![
        "--mode",
        "incremental",
        "--object-min-size",
        MIN_SIZE,
        "--object-chunk-size",
        "64KiB",
        "--json",
    ];
    args.extend_from_slice(extra);
    let out = run_create(dirs, store, capture, &args, 0);
    serde_json::from_slice(&out.stdout).expect("create --json output")
}

/// The content objects in a file store, by path.
fn objects(store: &Path) -> Vec<PathBuf> {
    let dir = store.join(CLUSTER).join("objects");
    if !dir.exists() {
        return Vec::new();
    }
    tree(&dir, &[])
        .into_iter()
        .filter(|(_, n)| n.kind == 'f')
        .map(|(p, _)| dir.join(p))
        .collect()
}

fn verify(store: &Path, id: &str, want: i32) -> String {
    stderr(&run(
        &[
            "archive",
            "verify",
            "--store",
            &store_url(store),
            "--snapshot",
            id,
        ],
        want,
    ))
}

fn extract(store: &Path, id: &str, targets: &[PathBuf], want: i32) -> String {
    let mut args = vec![
        "archive".to_string(),
        "extract".into(),
        "--store".into(),
        store_url(store),
        "--snapshot".into(),
        id.into(),
        "--into".into(),
    ];
    args.extend(targets.iter().map(|t| t.display().to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    stderr(&run(&args, want))
}

fn manifest(store: &Path, id: &str) -> serde_json::Value {
    serde_json::from_slice(&fs::read(snapshot_dir(store, 1, id).join("manifest.json")).unwrap())
        .unwrap()
}

#[test]
fn incremental_snapshots_upload_only_what_changed_and_each_restores_whole() {
    let t = scratch("xfs");
    let dirs = vec![
        t.path().join("data/disk1/kafka-logs"),
        t.path().join("data/disk2/kafka-logs"),
    ];
    generate_spec(&spec(dirs.clone()));
    let store = new_store(t.path());
    let before: Vec<_> = dirs.iter().map(|d| tree(d, NOT_ARCHIVED)).collect();

    // The first snapshot uploads every large file once.
    let s1 = create_incremental(&dirs, &store);
    let o1 = &s1["objects"];
    assert!(o1["files"].as_u64().unwrap() >= 10, "{s1}");
    assert_eq!(o1["uploaded"], o1["objects"], "{s1}");
    let stored_after_1 = objects(&store);
    assert_eq!(stored_after_1.len() as u64, o1["objects"].as_u64().unwrap());
    let id1 = s1["snapshot_id"].as_str().unwrap().to_string();
    let m1 = manifest(&store, &id1);
    assert_eq!(m1["format_version"], 3);
    assert_eq!(m1["objects"]["chunk_size"], CHUNK);
    // Each large file is its chunks, in order; several for most.
    let mut multi = 0;
    for e in m1["entries"].as_array().unwrap() {
        if let Some(chunks) = e["chunks"].as_array() {
            let size = e["size"].as_u64().unwrap();
            assert_eq!(chunks.len() as u64, size.div_ceil(CHUNK), "{e}");
            multi += usize::from(chunks.len() > 1);
        }
    }
    assert!(multi >= 5, "{multi} files of several chunks");
    // Only the small files are in its own archive.
    assert!(
        s1["archive_bytes"].as_u64().unwrap() < o1["bytes"].as_u64().unwrap() / 4,
        "{s1}"
    );

    // Nothing changed: nothing is uploaded again.
    let s2 = create_incremental(&dirs, &store);
    assert_eq!(s2["objects"]["uploaded"], 0, "{s2}");
    assert_eq!(s2["objects"]["objects"], o1["objects"], "{s2}");
    assert_eq!(objects(&store), stored_after_1);

    // A producer appends to the active segment: only its last chunk and
    // the new ones are uploaded, not the bytes it had before.
    let active = largest_log(&dirs);
    let was = fs::metadata(&active).unwrap().len();
    assert!(was > 2 * CHUNK, "{was}");
    fs::OpenOptions::new()
        .append(true)
        .open(&active)
        .unwrap()
        .write_all(&[7u8; 70_000])
        .unwrap();
    let now = was + 70_000;
    let first_changed = was / CHUNK;
    let new_chunks = now.div_ceil(CHUNK) - first_changed;
    let s3 = create_incremental(&dirs, &store);
    assert_eq!(s3["objects"]["uploaded"], new_chunks, "{s3}");
    assert_eq!(
        s3["objects"]["uploaded_bytes"],
        now - first_changed * CHUNK,
        "{s3}"
    );
    assert_eq!(
        objects(&store).len() as u64,
        stored_after_1.len() as u64 + new_chunks
    );
    let after: Vec<_> = dirs.iter().map(|d| tree(d, NOT_ARCHIVED)).collect();

    // Each snapshot verifies and restores as it was, the first one too.
    for s in [&s1, &s2, &s3] {
        verify(&store, s["snapshot_id"].as_str().unwrap(), 0);
    }
    let id3 = s3["snapshot_id"].as_str().unwrap();
    for (id, want, name) in [(id1.as_str(), &before, "one"), (id3, &after, "three")] {
        let targets = [
            t.path().join(format!("restore-{name}/a")),
            t.path().join(format!("restore-{name}/b")),
        ];
        extract(&store, id, &targets, 0);
        for (w, restored) in want.iter().zip(&targets) {
            assert_eq!(w, &tree(restored, &[]), "snapshot {name}");
        }
    }

    // The listing shows them all complete.
    let out = run(
        &["archive", "list", "--store", &store_url(&store), "--json"],
        0,
    );
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let complete = listed
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["status"] == "complete")
        .count();
    assert_eq!(complete, 3, "{listed}");
}

#[test]
fn a_damaged_or_missing_object_fails_every_snapshot_that_uses_it() {
    let t = scratch("ext4");
    let dirs = vec![t.path().join("data/disk1/kafka-logs")];
    generate_spec(&spec(dirs.clone()));
    let store = new_store(t.path());
    let id1 = create_incremental(&dirs, &store)["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    let id2 = create_incremental(&dirs, &store)["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    let stored = objects(&store);
    assert!(stored.len() >= 2, "{stored:?}");

    // Another file's bytes under this object's name: it decompresses, but
    // not to the file the snapshots recorded.
    let (victim, donor) = (&stored[0], &stored[1]);
    let name = victim.file_stem().unwrap().to_string_lossy().into_owned();
    let original = fs::read(victim).unwrap();
    fs::set_permissions(victim, std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();
    fs::write(victim, fs::read(donor).unwrap()).unwrap();
    for id in [&id1, &id2] {
        let err = verify(&store, id, 1);
        assert!(
            err.contains("does not hold its chunk") || err.contains("holds"),
            "{err}"
        );
    }
    // A restore checks each chunk against its name (not the whole file's
    // hash): it fails as well, naming the object, and leaves nothing.
    let target = t.path().join("restore/donor");
    let err = extract(&store, &id1, std::slice::from_ref(&target), 1);
    assert!(
        err.contains(&name) && (err.contains("does not hold its chunk") || err.contains("holds")),
        "{err}"
    );
    assert!(
        !target.exists(),
        "a failed restore left {}",
        target.display()
    );
    // Flipped bytes in the middle: zstd's own checksum or the hash.
    let mut flipped = original.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0xff;
    fs::write(victim, &flipped).unwrap();
    let err = verify(&store, &id1, 1);
    assert!(
        err.contains(&name[..16]) || err.contains("checksum"),
        "{err}"
    );

    // Larger than any compression of its chunk: refused before it is
    // decompressed, by verify and restore alike (a restore reads each
    // object whole into memory, so a huge one must not get that far).
    fs::write(victim, vec![0x5a; 16 << 20]).unwrap();
    let err = verify(&store, &id1, 1);
    assert!(
        err.contains(&name) && err.contains("more than any compression of its chunk"),
        "{err}"
    );
    let err = extract(&store, &id1, std::slice::from_ref(&target), 1);
    assert!(
        err.contains(&name) && err.contains("more than any compression of its chunk"),
        "{err}"
    );

    // Missing: named, and a restore fails before it touches anything.
    fs::remove_file(victim).unwrap();
    let err = verify(&store, &id2, 1);
    assert!(err.contains("missing") && err.contains(&name), "{err}");
    let target = t.path().join("restore/a");
    let err = extract(&store, &id2, std::slice::from_ref(&target), 1);
    assert!(err.contains("missing"), "{err}");
    assert!(
        !target.exists(),
        "a failed restore left {}",
        target.display()
    );
    assert!(
        fs::read_dir(target.parent().unwrap())
            .map(|d| d.count())
            .unwrap_or(0)
            == 0,
        "a failed restore left files beside its target"
    );

    // Put back, both verify again: nothing else was touched.
    fs::write(victim, &original).unwrap();
    verify(&store, &id1, 0);
    verify(&store, &id2, 0);
}

/// One generated log dir, a file store and where the hash record goes.
fn one_dir_with_record() -> (tempfile::TempDir, Vec<PathBuf>, PathBuf, PathBuf) {
    let t = scratch("xfs");
    let dirs = vec![t.path().join("data/disk1/kafka-logs")];
    generate_spec(&spec(dirs.clone()));
    let store = new_store(t.path());
    let cache = t.path().join("state/hash-cache.json");
    fs::create_dir_all(cache.parent().unwrap()).unwrap();
    (t, dirs, store, cache)
}

#[test]
fn unchanged_rolled_segments_are_not_read_again_and_a_changed_one_is() {
    let (_t, dirs, store, cache) = one_dir_with_record();
    let cache_arg = cache.display().to_string();
    let with_cache = ["--hash-cache", cache_arg.as_str()];

    let s1 = create_with(&dirs, &store, &with_cache);
    let files = s1["objects"]["files"].as_u64().unwrap();
    assert_eq!(s1["objects"]["hashed"], files, "no record yet: {s1}");
    let mode = fs::metadata(&cache).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the record is the agent's own");

    // Only the active segments' files are read again.
    let s2 = create_with(&dirs, &store, &with_cache);
    let hashed = s2["objects"]["hashed"].as_u64().unwrap();
    assert!(hashed > 0 && hashed < files, "{s2}");
    assert!(
        s2["objects"]["hashed_bytes"].as_u64().unwrap() < s2["objects"]["bytes"].as_u64().unwrap(),
        "{s2}"
    );
    assert_eq!(s2["objects"]["uploaded"], 0, "{s2}");

    // A rolled segment rewritten in place, its size and mtime put back:
    // the ctime still moved, so it is read, and its new bytes stored.
    let rolled = rolled_log(&dirs[0]);
    let md = fs::metadata(&rolled).unwrap();
    let mut bytes = fs::read(&rolled).unwrap();
    bytes[100] ^= 0x55;
    fs::write(&rolled, &bytes).unwrap();
    let mtime = filetime(&md);
    set_mtime(&rolled, mtime);
    assert_eq!(fs::metadata(&rolled).unwrap().len(), md.len());
    let s3 = create_with(&dirs, &store, &with_cache);
    assert_eq!(
        s3["objects"]["hashed"].as_u64().unwrap(),
        hashed + 1,
        "{s3}"
    );
    assert_eq!(s3["objects"]["uploaded"], 1, "{s3}");

    // An object removed from storage behind the record's back: the file is
    // read and uploaded again, and the snapshot is whole.
    let victim = objects(&store)
        .into_iter()
        .find(|p| {
            let sha = p.file_stem().unwrap().to_string_lossy().into_owned();
            first_chunk_sha256(&rolled_log_other(&dirs[0], &rolled)) == sha
        })
        .expect("the first object of another rolled segment");
    fs::remove_file(&victim).unwrap();
    let s4 = create_with(&dirs, &store, &with_cache);
    assert_eq!(s4["objects"]["uploaded"], 1, "{s4}");
    assert!(victim.exists());
    verify(&store, s4["snapshot_id"].as_str().unwrap(), 0);

    // A damaged record is ignored: every file is read, nothing is wrong.
    fs::write(&cache, b"{not json").unwrap();
    let s5 = create_with(&dirs, &store, &with_cache);
    assert_eq!(s5["objects"]["hashed"], s5["objects"]["files"], "{s5}");
    verify(&store, s5["snapshot_id"].as_str().unwrap(), 0);
}

#[test]
fn an_appended_segment_uploads_only_the_appended_bytes() {
    let (t, dirs, store, cache) = one_dir_with_record();
    let cache_arg = cache.display().to_string();
    let with_cache = ["--hash-cache", cache_arg.as_str()];
    let active = largest_log(&dirs);
    let append = |bytes: usize, fill: u8| {
        fs::OpenOptions::new()
            .append(true)
            .open(&active)
            .unwrap()
            .write_all(&vec![fill; bytes])
            .unwrap();
        fs::metadata(&active).unwrap().len()
    };
    let entry_of = |s: &serde_json::Value| {
        let m = manifest(&store, s["snapshot_id"].as_str().unwrap());
        let name = active
            .strip_prefix(&dirs[0])
            .unwrap()
            .to_string_lossy()
            .into_owned();
        m["entries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["path"].as_str().unwrap().ends_with(&format!("/{name}")))
            .cloned()
            .unwrap()
    };
    // The segment ends half way into a chunk when first snapshotted.
    let was = fs::metadata(&active).unwrap().len();
    let was = append(((CHUNK / 2 + CHUNK - was % CHUNK) % CHUNK) as usize, 1);
    assert_eq!(was % CHUNK, CHUNK / 2);
    let s1 = create_with(&dirs, &store, &with_cache);
    assert_eq!(entry_of(&s1)["cuts"], serde_json::Value::Null, "{s1}");

    // Appended to: its chunk is cut where the last snapshot ended it, and
    // exactly the appended bytes are uploaded (two objects: the rest of
    // that chunk, and the next).
    let now = append(70_000, 2);
    let s2 = create_with(&dirs, &store, &with_cache);
    assert_eq!(s2["objects"]["uploaded_bytes"], 70_000, "{s2}");
    assert_eq!(s2["objects"]["uploaded"], 2, "{s2}");
    assert_eq!(entry_of(&s2)["cuts"], serde_json::json!([was]));

    // Again: cut where the second one ended it.
    let later = append(10_000, 3);
    let s3 = create_with(&dirs, &store, &with_cache);
    assert_eq!(s3["objects"]["uploaded_bytes"], 10_000, "{s3}");
    assert_eq!(entry_of(&s3)["cuts"], serde_json::json!([was, now]));

    // The same chunk cut again where the third one ended it: the part
    // since its last cut (10 000 bytes) is more than 1/16 of a chunk.
    let last = append(1_000, 4);
    let s4 = create_with(&dirs, &store, &with_cache);
    assert_eq!(s4["objects"]["uploaded_bytes"], 1_000, "{s4}");
    assert_eq!(entry_of(&s4)["cuts"], serde_json::json!([was, now, later]));
    // A part under 1/16 of a chunk (1 000 bytes) is not cut off: what
    // follows the last cut is uploaded again.
    assert!(last - later < CHUNK / 16);
    let fin = append(1_000, 6);
    let s4b = create_with(&dirs, &store, &with_cache);
    assert_eq!(s4b["objects"]["uploaded_bytes"], fin - later, "{s4b}");
    assert_eq!(entry_of(&s4b)["cuts"], serde_json::json!([was, now, later]));
    let at_4: Vec<_> = dirs.iter().map(|d| tree(d, NOT_ARCHIVED)).collect();

    // Truncated (as a follower truncates its log) and written again with
    // other bytes, longer than before: the cuts stay where they were (they
    // only say where chunks end), every chunk is hashed from the bytes
    // there now, and all from the first cut on is new.
    fs::OpenOptions::new()
        .write(true)
        .open(&active)
        .unwrap()
        .set_len(was + 100)
        .unwrap();
    append(90_000, 5);
    let s5 = create_with(&dirs, &store, &with_cache);
    assert_eq!(entry_of(&s5)["cuts"], serde_json::json!([was, now, later]));
    assert_eq!(s5["objects"]["uploaded_bytes"], 90_100, "{s5}");
    let at_5: Vec<_> = dirs.iter().map(|d| tree(d, NOT_ARCHIVED)).collect();
    // Shorter than the last snapshot: no cut of before is kept.
    fs::OpenOptions::new()
        .write(true)
        .open(&active)
        .unwrap()
        .set_len(was - 10)
        .unwrap();
    let s6 = create_with(&dirs, &store, &with_cache);
    assert_eq!(entry_of(&s6)["cuts"], serde_json::Value::Null, "{s6}");
    let at_6: Vec<_> = dirs.iter().map(|d| tree(d, NOT_ARCHIVED)).collect();

    for s in [&s1, &s2, &s3, &s4, &s4b, &s5, &s6] {
        verify(&store, s["snapshot_id"].as_str().unwrap(), 0);
    }
    for (s, want, name) in [
        (&s4b, &at_4, "four"),
        (&s5, &at_5, "five"),
        (&s6, &at_6, "six"),
    ] {
        let target = t.path().join(format!("restore-{name}"));
        extract(
            &store,
            s["snapshot_id"].as_str().unwrap(),
            std::slice::from_ref(&target),
            0,
        );
        assert_eq!(&want[0], &tree(&target, &[]), "snapshot {name}");
    }
}

#[test]
fn a_reflinked_active_segment_is_read_only_past_the_blocks_it_shares() {
    let (t, dirs, store, cache) = one_dir_with_record();
    let cache_arg = cache.display().to_string();
    let with_cache = ["--hash-cache", cache_arg.as_str()];
    let create = || create_captured(&dirs, &store, "reflink", &with_cache);
    let active = active_log(&dirs[0]);
    let rel = active.strip_prefix(&dirs[0]).unwrap().to_path_buf();
    let kept_root = dirs[0]
        .parent()
        .unwrap()
        .join(".kafka-snapshot-staging/kept");
    let kept = kept_root.join("0-kafka-logs").join(&rel);
    let write_at = |offset: u64, bytes: &[u8]| {
        use std::os::unix::fs::FileExt;
        let f = fs::OpenOptions::new().write(true).open(&active).unwrap();
        // Not synced: cloning the file flushes it first.
        f.write_all_at(bytes, offset).unwrap();
        fs::metadata(&active).unwrap().len()
    };
    let size = || fs::metadata(&active).unwrap().len();
    let snapshot_matches = |s: &serde_json::Value, name: &str| {
        let id = s["snapshot_id"].as_str().unwrap();
        verify(&store, id, 0);
        let target = t.path().join(format!("restore-{name}"));
        extract(&store, id, std::slice::from_ref(&target), 0);
        assert_eq!(
            tree(&dirs[0], NOT_ARCHIVED),
            tree(&target, &[]),
            "snapshot {name}"
        );
        fs::remove_dir_all(&target).unwrap();
    };
    // Half way into a chunk, so the next snapshot cuts it there, and
    // inside a block, so the append writes to that block (a copy of its
    // own: the kept clone keeps the old one).
    let was = write_at(
        size(),
        &vec![1; (CHUNK + CHUNK / 2 + 100 - size() % CHUNK) as usize],
    );
    let s1 = create();
    assert_eq!(s1["capture"], "reflink", "{s1}");
    assert_eq!(s1["objects"]["hashed"], s1["objects"]["files"], "{s1}");
    assert_eq!(
        fs::metadata(&kept).unwrap().len(),
        was,
        "the clone read is kept"
    );
    let active_files = {
        let s = create();
        assert_eq!(s["objects"]["uploaded"], 0, "{s}");
        // Nothing appended: each active file is read from its last 64
        // bytes at most, for its SHA-256.
        let hashed = s["objects"]["hashed"].as_u64().unwrap();
        assert!(hashed > 0, "{s}");
        assert!(
            s["objects"]["hashed_bytes"].as_u64().unwrap() < 64 * hashed,
            "{s}"
        );
        assert_eq!(s["objects"]["resumed"], hashed, "{s}");
        snapshot_matches(&s, "unchanged");
        hashed
    };

    // Appended to: read from (about) where the last snapshot ended it.
    let now = write_at(was, &vec![2; 70_000]);
    let s2 = create();
    assert_eq!(s2["objects"]["uploaded_bytes"], 70_000, "{s2}");
    let read = s2["objects"]["hashed_bytes"].as_u64().unwrap();
    assert!(read >= 70_000 && read < 70_000 + 64 * active_files, "{s2}");
    assert_eq!(s2["objects"]["resumed"], active_files, "{s2}");
    snapshot_matches(&s2, "appended");

    // Written over in place before its old end, the size kept: those
    // blocks are no longer the kept clone's, so the file is read from its
    // start and the new bytes are stored.
    assert_eq!(write_at(CHUNK / 2, b"written over"), now);
    let s3 = create();
    assert!(
        s3["objects"]["hashed_bytes"].as_u64().unwrap() >= now,
        "{s3}"
    );
    assert_eq!(s3["objects"]["uploaded"], 1, "{s3}");
    assert_eq!(s3["objects"]["resumed"], active_files - 1, "{s3}");
    snapshot_matches(&s3, "overwritten");

    // Truncated (a follower) and written again with other bytes: the same.
    fs::OpenOptions::new()
        .write(true)
        .open(&active)
        .unwrap()
        .set_len(was - 1000)
        .unwrap();
    let longer = write_at(was - 1000, &vec![3; 90_000]);
    assert!(longer > now);
    let s4 = create();
    assert!(
        s4["objects"]["hashed_bytes"].as_u64().unwrap() >= longer,
        "{s4}"
    );
    snapshot_matches(&s4, "rewritten");

    // Appended to, then rolled (a newer segment beside it): read once
    // more from its last chunk (cut already: read from the cut), then no
    // more (a rolled segment's hashes are trusted while it is unchanged).
    let rolled_size = write_at(longer, &vec![4; 5_000]);
    let base: u64 = active
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    fs::write(
        active.with_file_name(format!("{:020}.log", base + 1_000_000)),
        b"the new active segment",
    )
    .unwrap();
    let s5 = create();
    let read = s5["objects"]["hashed_bytes"].as_u64().unwrap();
    assert!(
        read >= rolled_size - longer && read < CHUNK + 64 * (active_files + 1),
        "{s5}"
    );
    assert!(rolled_size > 2 * CHUNK, "not read whole: {s5}");
    snapshot_matches(&s5, "rolled");
    let s6 = create();
    assert_eq!(
        s6["objects"]["hashed"].as_u64().unwrap(),
        s5["objects"]["hashed"].as_u64().unwrap() - 1,
        "{s6}"
    );
    snapshot_matches(&s6, "rolled, unchanged");

    // A full snapshot by hand leaves the clones (to the daemon, which
    // removes them once its snapshots are full); an incremental one by
    // copy removes them: its record names none.
    let full = |mode: &str, capture: &str| {
        let args = ["--mode", mode, "--hash-cache", &cache_arg, "--json"];
        run_create(&dirs, &store, capture, &args, 0)
    };
    full("full", "reflink");
    assert!(kept_root.exists(), "kept by a full snapshot by hand");
    full("incremental", "copy");
    assert!(!kept_root.exists(), "the kept clones are removed");
}

/// The largest active segment (the newest `.log` of its partition).
fn active_log(dir: &Path) -> PathBuf {
    let mut newest: std::collections::BTreeMap<PathBuf, PathBuf> = Default::default();
    for (p, n) in tree(dir, &[]) {
        let p = dir.join(p);
        if n.kind == 'f' && p.extension().is_some_and(|e| e == "log") {
            let part = p.parent().unwrap().to_path_buf();
            let e = newest.entry(part).or_insert_with(|| p.clone());
            if p > *e {
                *e = p;
            }
        }
    }
    newest
        .into_values()
        .max_by_key(|p| fs::metadata(p).unwrap().len())
        .expect("a partition with a segment")
}

/// The SHA-256 of the first chunk of `p`: the name of its first object.
fn first_chunk_sha256(p: &Path) -> String {
    use sha2::Digest;
    let bytes = fs::read(p).unwrap();
    let end = bytes.len().min(CHUNK as usize);
    hex::encode(sha2::Sha256::digest(&bytes[..end]))
}

/// Rolled `.log` files of the largest partition dir (those with a newer
/// segment beside them), oldest first.
fn rolled_logs(dir: &Path) -> Vec<PathBuf> {
    let mut best: Vec<PathBuf> = Vec::new();
    for part in fs::read_dir(dir).unwrap() {
        let part = part.unwrap().path();
        if !part.is_dir() {
            continue;
        }
        let mut logs: Vec<PathBuf> = fs::read_dir(&part)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .collect();
        logs.sort();
        logs.pop();
        if logs.len() > best.len() {
            best = logs;
        }
    }
    assert!(best.len() >= 2, "no partition with two rolled segments");
    best
}

fn rolled_log(dir: &Path) -> PathBuf {
    rolled_logs(dir).remove(0)
}

fn rolled_log_other(dir: &Path, not: &Path) -> PathBuf {
    rolled_logs(dir)
        .into_iter()
        .find(|p| p != not)
        .expect("a second rolled segment")
}

fn filetime(md: &fs::Metadata) -> (i64, i64) {
    use std::os::unix::fs::MetadataExt;
    (md.mtime(), md.mtime_nsec())
}

fn set_mtime(path: &Path, (secs, nanos): (i64, i64)) {
    let f = fs::File::options().write(true).open(path).unwrap();
    let times = [
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        libc::timespec {
            tv_sec: secs,
            tv_nsec: nanos,
        },
    ];
    // SAFETY: a valid fd and two initialised timespecs.
    let rc = unsafe { libc::futimens(std::os::unix::io::AsRawFd::as_raw_fd(&f), times.as_ptr()) };
    assert_eq!(rc, 0, "futimens: {}", std::io::Error::last_os_error());
}
