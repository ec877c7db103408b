//! Encryption at rest through the break-glass CLI: create -> verify ->
//! extract with one and with two recipients, key rotation, wrong and
//! missing identities, and damaged ciphertext.

use crate::common::*;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// A new identity file under `dir`; returns (file, recipient).
fn keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    let file = dir.join(name);
    let out = run(
        &["key", "generate", "--output", &file.display().to_string()],
        0,
    );
    let recipient = stdout(&out).trim().to_string();
    assert!(recipient.starts_with("age1"), "{recipient}");
    let mode = fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "a new identity file is private");
    (file, recipient)
}

/// The fingerprint `key fingerprint` prints for a recipient.
fn fingerprint(recipient: &str) -> String {
    let out = run(&["key", "fingerprint", recipient], 0);
    stdout(&out).split_whitespace().next().unwrap().to_string()
}

/// `archive create` of `dirs` as a full snapshot encrypted to
/// `recipients` (encrypted incremental ones need the object key, below);
/// the snapshot id.
fn create_encrypted(dirs: &[PathBuf], store: &Path, recipients: &[&str]) -> String {
    let mut args = vec!["--mode", "full", "--json"];
    for r in recipients {
        args.extend(["--recipient", r]);
    }
    let out = run_create(dirs, store, "copy", &args, 0);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["encrypted_to"].as_array().map(|a| a.len()),
        Some(recipients.len()),
        "{v}"
    );
    v["snapshot_id"].as_str().unwrap().to_string()
}

fn verify(store: &Path, id: &str, identity: Option<&Path>, want: i32) -> std::process::Output {
    let url = store_url(store);
    let id_arg = identity.map(|p| p.display().to_string());
    let mut args = vec!["archive", "verify", "--store", &url, "--snapshot", id];
    if let Some(i) = &id_arg {
        args.extend(["--identity", i]);
    }
    run(&args, want)
}

fn extract(
    store: &Path,
    id: &str,
    identity: Option<&Path>,
    targets: &[PathBuf],
    want: i32,
) -> std::process::Output {
    let url = store_url(store);
    let id_arg = identity.map(|p| p.display().to_string());
    let targets: Vec<String> = targets.iter().map(|t| t.display().to_string()).collect();
    let mut args = vec!["archive", "extract", "--store", &url, "--snapshot", id];
    if let Some(i) = &id_arg {
        args.extend(["--identity", i]);
    }
    args.push("--into");
    args.extend(targets.iter().map(|t| t.as_str()));
    run(&args, want)
}

/// A partition dir name of `dir`: a topic name the store must not show.
fn a_partition(dir: &Path) -> String {
    names(dir)
        .into_iter()
        .find(|n| n.ends_with("-0") && !n.starts_with("__"))
        .expect("a partition dir")
}

fn restore_targets(root: &Path, tag: &str) -> Vec<PathBuf> {
    vec![
        root.join(format!("restore-{tag}/a")),
        root.join(format!("restore-{tag}/b")),
    ]
}

fn assert_restored(dirs: &[PathBuf], targets: &[PathBuf]) {
    for (d, t) in dirs.iter().zip(targets) {
        assert_same_tree(d, t, NOT_ARCHIVED);
    }
}

#[test]
fn encrypted_round_trip_with_one_and_with_two_recipients() {
    let t = scratch("ext4");
    let dirs = small_broker(t.path(), 1);
    let store = new_store(t.path());
    let keys = t.path().join("keys");
    fs::create_dir(&keys).unwrap();
    let (id_a, rec_a) = keygen(&keys, "a.key");
    let (id_b, rec_b) = keygen(&keys, "b.key");
    let partition = a_partition(&dirs[0]);

    // One recipient.
    let one = create_encrypted(&dirs, &store, &[&rec_a]);
    let snap = snapshot_dir(&store, 1, &one);
    assert_eq!(names(&snap), vec!["archive.tar.zst.age", "manifest.json"]);
    let manifest = fs::read_to_string(snap.join("manifest.json")).unwrap();
    assert!(
        !manifest.contains(&partition) && !manifest.contains("logdir-0/"),
        "the manifest shows file names in the clear"
    );
    assert!(manifest.contains(&fingerprint(&rec_a)), "{manifest}");
    assert!(
        !manifest.contains(&rec_a),
        "the manifest holds the key itself"
    );
    let archive = fs::read(snap.join("archive.tar.zst.age")).unwrap();
    assert!(archive.starts_with(b"age-encryption.org/v1\n"));
    assert!(
        !archive
            .windows(partition.len())
            .any(|w| w == partition.as_bytes()),
        "the archive shows file names in the clear"
    );

    // Without the identity: the stored bytes are checked, and it says the
    // contents were not.
    let out = verify(&store, &one, None, 0);
    assert!(
        stdout(&out).contains("contents were NOT checked")
            && stdout(&out).contains(&fingerprint(&rec_a)),
        "{}",
        stdout(&out)
    );
    let out = verify(&store, &one, Some(&id_a), 0);
    assert!(stdout(&out).contains(" ok: "), "{}", stdout(&out));
    let targets = restore_targets(t.path(), "one");
    extract(&store, &one, Some(&id_a), &targets, 0);
    assert_restored(&dirs, &targets);

    // Two recipients (the daily key and a break-glass key): either opens it.
    let two = create_encrypted(&dirs, &store, &[&rec_a, &rec_b]);
    for (tag, identity) in [("two-a", &id_a), ("two-b", &id_b)] {
        verify(&store, &two, Some(identity), 0);
        let targets = restore_targets(t.path(), tag);
        extract(&store, &two, Some(identity), &targets, 0);
        assert_restored(&dirs, &targets);
    }

    // The listing says which key each snapshot needs.
    let out = run(
        &["archive", "list", "--store", &store_url(&store), "--json"],
        0,
    );
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let of = |id: &str| {
        listed
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["snapshot_id"] == id)
            .unwrap()["encrypted_to"]
            .clone()
    };
    assert_eq!(of(&one), serde_json::json!([fingerprint(&rec_a)]));
    assert_eq!(
        of(&two),
        serde_json::json!([fingerprint(&rec_a), fingerprint(&rec_b)])
    );
    kafka_snapshot_testkit::report::record(
        "security",
        "encryption: create, verify and extract with one and with two recipients; no file name in the clear",
        &[("inputs", 3)],
    );
}

/// An agent config of broker 1 taking full snapshots, with `[encryption]`
/// set to `encryption`.
fn config(root: &Path, dirs: &[PathBuf], store: &Path, name: &str, encryption: &str) -> PathBuf {
    let path = root.join(name);
    let dirs: Vec<String> = dirs
        .iter()
        .map(|d| format!("{:?}", d.display().to_string()))
        .collect();
    fs::write(
        &path,
        format!(
            "[broker]\nlog_dirs = [{}]\n[snapshot]\ncapture = \"copy\"\nmode = \"full\"\n\
             [storage]\nurl = {:?}\n\
             [encryption]\n{encryption}\n",
            dirs.join(", "),
            store_url(store)
        ),
    )
    .unwrap();
    path
}

#[test]
fn rotation_keeps_old_snapshots_readable_with_the_old_identity() {
    let t = scratch("ext4");
    let dirs = small_broker(t.path(), 1);
    let store = new_store(t.path());
    let (old_id, old_rec) = keygen(t.path(), "old.key");
    let (new_id, new_rec) = keygen(t.path(), "new.key");
    let recipients_file = t.path().join("recipients.txt");

    // Before the rotation: the old key, from a recipients file.
    fs::write(&recipients_file, format!("# daily key\n{old_rec}\n")).unwrap();
    let cfg = config(
        t.path(),
        &dirs,
        &store,
        "agent.toml",
        &format!(
            "recipients_file = {:?}",
            recipients_file.display().to_string()
        ),
    );
    let cfg_arg = cfg.display().to_string();
    let create = |cfg: &str| {
        let out = run(&["archive", "create", "--config", cfg, "--json"], 0);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["snapshot_id"].as_str().unwrap().to_string()
    };
    let before = create(&cfg_arg);
    // The rotation: the file now names the new key only.
    fs::write(&recipients_file, format!("{new_rec}\n")).unwrap();
    let after = create(&cfg_arg);

    // Each snapshot opens with its own identity...
    for (id, identity, tag) in [(&before, &old_id, "old"), (&after, &new_id, "new")] {
        verify(&store, id, Some(identity), 0);
        let targets = restore_targets(t.path(), tag);
        extract(&store, id, Some(identity), &targets, 0);
        assert_restored(&dirs, &targets);
    }
    // ...and not with the other, the error naming what it needs.
    let out = verify(&store, &after, Some(&old_id), 1);
    let e = stderr(&out);
    assert!(
        e.contains(&format!(
            "snapshot {after} is encrypted to recipients [{}]",
            fingerprint(&new_rec)
        )) && e.contains(&format!(
            "identity file {} holds none of them",
            old_id.display()
        )),
        "{e}"
    );

    // The identity from the config, for a restore host.
    let restore_cfg = config(
        t.path(),
        &dirs,
        &store,
        "restore.toml",
        &format!("identity_file = {:?}", old_id.display().to_string()),
    );
    let out = run(
        &[
            "archive",
            "verify",
            "--config",
            &restore_cfg.display().to_string(),
            "--snapshot",
            &before,
        ],
        0,
    );
    assert!(stdout(&out).contains(" ok: "), "{}", stdout(&out));
    kafka_snapshot_testkit::report::record(
        "security",
        "encryption: key rotation, old snapshot with the old identity and new with the new",
        &[("inputs", 2)],
    );
}

#[test]
fn a_wrong_missing_or_exposed_identity_is_refused_before_anything_is_read() {
    let t = scratch("ext4");
    let dirs = small_broker(t.path(), 1);
    let store = new_store(t.path());
    let (_, rec) = keygen(t.path(), "right.key");
    let (wrong, _) = keygen(t.path(), "wrong.key");
    let id = create_encrypted(&dirs, &store, &[&rec]);
    let fp = fingerprint(&rec);
    let targets = restore_targets(t.path(), "x");
    for target in &targets {
        fs::create_dir_all(target).unwrap();
        fs::write(target.join("precious"), b"keep").unwrap();
    }

    // Missing.
    let out = extract(&store, &id, None, &targets, 1);
    let e = stderr(&out);
    assert!(
        e.contains(&format!("snapshot {id} is encrypted to recipients [{fp}]"))
            && e.contains("--identity FILE"),
        "{e}"
    );
    // Wrong.
    let out = extract(&store, &id, Some(&wrong), &targets, 1);
    let e = stderr(&out);
    assert!(
        e.contains(&format!("is encrypted to recipients [{fp}]"))
            && e.contains(&format!(
                "identity file {} holds none of them",
                wrong.display()
            )),
        "{e}"
    );
    // Readable by others: refused as a usage error, naming the file.
    let exposed = t.path().join("exposed.key");
    fs::copy(&wrong, &exposed).unwrap();
    fs::set_permissions(&exposed, fs::Permissions::from_mode(0o644)).unwrap();
    let out = verify(&store, &id, Some(&exposed), 2);
    let e = stderr(&out);
    assert!(
        e.contains(&exposed.display().to_string()) && e.contains("0644") && e.contains("chmod 600"),
        "{e}"
    );
    // Nothing was touched or left beside the targets.
    for target in &targets {
        assert_eq!(names(target), vec!["precious"]);
        assert_eq!(names(target.parent().unwrap()), vec!["a", "b"]);
    }
    kafka_snapshot_testkit::report::record(
        "security",
        "encryption: a missing, wrong or group/other-readable identity is refused, nothing touched",
        &[("inputs", 3)],
    );
}

#[test]
fn a_flipped_ciphertext_byte_is_corrupt_never_a_partial_restore() {
    let t = scratch("ext4");
    let dirs = small_broker(t.path(), 1);
    let store = new_store(t.path());
    let (identity, rec) = keygen(t.path(), "k.key");
    let id = create_encrypted(&dirs, &store, &[&rec]);
    let archive = snapshot_dir(&store, 1, &id).join("archive.tar.zst.age");
    let mut bytes = fs::read(&archive).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    fs::write(&archive, &bytes).unwrap();

    // Without the identity: the stored bytes are not the committed ones.
    let out = verify(&store, &id, None, 1);
    assert!(
        stderr(&out).contains("archive checksum mismatch"),
        "{}",
        stderr(&out)
    );
    // With it: the chunk fails authentication.
    let out = verify(&store, &id, Some(&identity), 1);
    assert!(
        stderr(&out).contains("decrypting the archive")
            && stderr(&out).contains("damaged or was altered"),
        "{}",
        stderr(&out)
    );
    let targets = restore_targets(t.path(), "x");
    for target in &targets {
        fs::create_dir_all(target).unwrap();
        fs::write(target.join("precious"), b"keep").unwrap();
    }
    let out = extract(&store, &id, Some(&identity), &targets, 1);
    assert!(
        stderr(&out).contains("decrypting the archive"),
        "{}",
        stderr(&out)
    );
    for target in &targets {
        assert_eq!(names(target), vec!["precious"]);
        assert_eq!(
            names(target.parent().unwrap()),
            vec!["a", "b"],
            "a partial restore was left"
        );
    }

    // A cut-off archive (its last chunk gone) is corrupt too, not short.
    bytes[at] ^= 0x01;
    bytes.truncate(bytes.len() - 100);
    fs::write(&archive, &bytes).unwrap();
    let out = verify(&store, &id, Some(&identity), 1);
    assert!(
        stderr(&out).contains("truncated or replaced"),
        "{}",
        stderr(&out)
    );
    kafka_snapshot_testkit::report::record(
        "security",
        "encryption: a flipped or cut-off ciphertext is corrupt, nothing restored",
        &[("inputs", 2)],
    );
}

/// The SHA-256 of the first `len` bytes of `path`.
fn head_sha256(path: &Path, len: usize) -> String {
    use sha2::Digest;
    let bytes = fs::read(path).unwrap();
    hex::encode(sha2::Sha256::digest(&bytes[..len.min(bytes.len())]))
}

/// The content objects of a file store: (name, path).
fn stored_objects(store: &Path) -> Vec<(String, PathBuf)> {
    let dir = store.join(CLUSTER).join("objects");
    let mut out: Vec<(String, PathBuf)> = tree(&dir, &[])
        .into_iter()
        .filter(|(_, n)| n.kind == 'f')
        .map(|(p, _)| {
            let name = p.file_stem().unwrap().to_string_lossy().into_owned();
            (name, dir.join(p))
        })
        .collect();
    out.sort();
    out
}

#[test]
fn encrypted_incremental_snapshots_share_objects_under_keyed_names() {
    let t = scratch("ext4");
    let dirs = vec![
        t.path().join("data/disk1/kafka-logs"),
        t.path().join("data/disk2/kafka-logs"),
    ];
    let mut spec = kafka_snapshot_testkit::Spec::small(CLUSTER, 1, dirs.clone());
    spec.total_bytes = 8 << 20;
    spec.segment_bytes = 512 << 10;
    generate_spec(&spec);
    let store = new_store(t.path());
    let keys = t.path().join("keys");
    fs::create_dir(&keys).unwrap();
    let (identity, recipient) = keygen(&keys, "id.key");
    let object_key = keys.join("object.key");
    let out = run(
        &[
            "key",
            "generate-object-key",
            "--output",
            &object_key.display().to_string(),
        ],
        0,
    );
    let key_fp = stdout(&out).trim().to_string();
    assert!(key_fp.starts_with("hmac:"), "{key_fp}");
    let out = run(
        &[
            "key",
            "fingerprint",
            "--object-key",
            &object_key.display().to_string(),
        ],
        0,
    );
    assert!(stdout(&out).starts_with(&key_fp), "{}", stdout(&out));
    let partition = a_partition(&dirs[0]);
    let create = |key: &Path, want: i32| {
        let key = key.display().to_string();
        let args = [
            "--mode",
            "incremental",
            "--object-min-size",
            "64KiB",
            "--object-chunk-size",
            "64KiB",
            "--recipient",
            &recipient,
            "--object-key-file",
            &key,
            "--json",
        ];
        run_create(&dirs, &store, "copy", &args, want)
    };
    let json = |out: std::process::Output| -> serde_json::Value {
        serde_json::from_slice(&out.stdout).unwrap()
    };

    // Without the object key an encrypted incremental snapshot, the
    // default, is refused, naming both ways out; nothing is stored.
    for mode in [&["--mode", "incremental"][..], &[]] {
        let mut args = mode.to_vec();
        args.extend(["--recipient", &recipient]);
        let no_key = run_create(&dirs, &store, "copy", &args, 2);
        let err = stderr(&no_key);
        assert!(
            err.contains("object key")
                && err.contains("--object-key-file")
                && err.contains("--mode full"),
            "{mode:?}: {err}"
        );
    }
    assert_eq!(
        fs::read_dir(&store).unwrap().count(),
        0,
        "stored without an object key"
    );

    let s1 = json(create(&object_key, 0));
    let id1 = s1["snapshot_id"].as_str().unwrap().to_string();
    let o1 = s1["objects"].clone();
    assert!(o1["files"].as_u64().unwrap() >= 5, "{s1}");
    assert_eq!(o1["uploaded"], o1["objects"], "{s1}");
    let snap = snapshot_dir(&store, 1, &id1);
    assert_eq!(names(&snap), vec!["archive.tar.zst.age", "manifest.json"]);
    let text = fs::read_to_string(snap.join("manifest.json")).unwrap();
    let m1: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(m1["format_version"], 4);
    assert_eq!(m1["objects"]["sealed"]["key"], key_fp.as_str());
    assert!(!text.contains(&partition) && !text.contains("logdir-0/"));
    // Every object is named in the clear, by its keyed name only: no name
    // is a chunk's SHA-256, and each object is an age file.
    let sealed: Vec<String> = m1["objects"]["sealed"]["names"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap().to_string())
        .collect();
    let stored = stored_objects(&store);
    assert_eq!(
        stored.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(),
        sealed
    );
    let log = largest_log(&dirs);
    let first_chunk = head_sha256(&log, 64 << 10);
    assert!(
        !text.contains(&first_chunk),
        "a chunk's SHA-256 in the clear"
    );
    assert!(!sealed.contains(&first_chunk));
    for (_, p) in &stored {
        assert!(fs::read(p).unwrap().starts_with(b"age-encryption.org/v1\n"));
    }

    // Nothing changed: nothing uploaded. Appended: only the new bytes.
    let s2 = json(create(&object_key, 0));
    assert_eq!(s2["objects"]["uploaded"], 0, "{s2}");
    let was = fs::metadata(&log).unwrap().len();
    fs::OpenOptions::new()
        .append(true)
        .open(&log)
        .unwrap()
        .write_all(&[9u8; 70_000])
        .unwrap();
    let s3 = json(create(&object_key, 0));
    let first_changed = was / (64 << 10);
    let now = was + 70_000;
    assert_eq!(
        s3["objects"]["uploaded"],
        now.div_ceil(64 << 10) - first_changed,
        "{s3}"
    );
    let id3 = s3["snapshot_id"].as_str().unwrap().to_string();

    // Without the identity: the archive and the presence of every object.
    let out = verify(&store, &id3, None, 0);
    assert!(
        stdout(&out).contains("content objects are in storage")
            && stdout(&out).contains("contents were NOT checked"),
        "{}",
        stdout(&out)
    );
    // With it: every byte, and a restore byte for byte.
    for id in [&id1, &id3] {
        let out = verify(&store, id, Some(&identity), 0);
        assert!(stdout(&out).contains(" ok: "), "{}", stdout(&out));
    }
    let out = extract(&store, &id3, None, &restore_targets(t.path(), "none"), 1);
    assert!(stderr(&out).contains("identity"), "{}", stderr(&out));
    let targets = restore_targets(t.path(), "three");
    extract(&store, &id3, Some(&identity), &targets, 0);
    assert_restored(&dirs, &targets);

    // An agent with another object key shares nothing, and is still whole.
    let other_key = keys.join("other.key");
    run(
        &[
            "key",
            "generate-object-key",
            "--output",
            &other_key.display().to_string(),
        ],
        0,
    );
    let s4 = json(create(&other_key, 0));
    assert_eq!(s4["objects"]["uploaded"], s4["objects"]["objects"], "{s4}");
    let id4 = s4["snapshot_id"].as_str().unwrap().to_string();
    verify(&store, &id4, Some(&identity), 0);

    // An object holding another chunk (swapped by whoever can write the
    // store) is found with the identity; a missing one without it too.
    let stored = stored_objects(&store);
    let in_s1: Vec<&(String, PathBuf)> =
        stored.iter().filter(|(n, _)| sealed.contains(n)).collect();
    let (victim, donor) = (&in_s1[0], &in_s1[1]);
    let original = fs::read(&victim.1).unwrap();
    fs::set_permissions(&victim.1, fs::Permissions::from_mode(0o640)).unwrap();
    fs::write(&victim.1, fs::read(&donor.1).unwrap()).unwrap();
    // (A shorter donor, a file's last chunk, fails on its length first.)
    let out = verify(&store, &id1, Some(&identity), 1);
    assert!(
        stderr(&out).contains(&victim.0)
            && (stderr(&out).contains("does not hold its chunk")
                || stderr(&out).contains(", its chunk has ")),
        "{}",
        stderr(&out)
    );
    let target = restore_targets(t.path(), "swapped");
    extract(&store, &id1, Some(&identity), &target, 1);
    assert!(!target[0].exists());
    fs::remove_file(&victim.1).unwrap();
    let out = verify(&store, &id1, None, 1);
    assert!(
        stderr(&out).contains("missing") && stderr(&out).contains(&victim.0),
        "{}",
        stderr(&out)
    );
    fs::write(&victim.1, &original).unwrap();
    verify(&store, &id1, Some(&identity), 0);
    kafka_snapshot_testkit::report::record(
        "security",
        "encrypted incremental: objects named by a keyed hash, age per object, verified and restored only with the identity",
        &[("snapshots", 4)],
    );
}
