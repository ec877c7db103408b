//! Damaged archives and manifests: verify and extract must fail, name the
//! problem, and leave the restore target exactly as it was.

use crate::common::*;
use std::fs;
use std::path::{Path, PathBuf};

struct Fixture {
    _t: tempfile::TempDir,
    store: PathBuf,
    id: String,
    archive: PathBuf,
    manifest: PathBuf,
    target: PathBuf,
}

fn fixture() -> Fixture {
    let t = scratch("ext4");
    let dirs = small_broker(t.path(), 5);
    let store = new_store(t.path());
    let created = create(&dirs[..1], &store, "copy");
    let id = created["snapshot_id"].as_str().unwrap().to_string();
    let snap = snapshot_dir(&store, 5, &id);
    // A restore target that already holds data the operator cares about.
    let target = t.path().join("target/kafka-logs");
    fs::create_dir_all(&target).unwrap();
    fs::write(target.join("precious"), b"keep me").unwrap();
    Fixture {
        store,
        id,
        archive: snap.join("archive.tar.zst"),
        manifest: snap.join("manifest.json"),
        target,
        _t: t,
    }
}

impl Fixture {
    fn verify(&self, want: i32) -> String {
        let out = run(
            &[
                "archive",
                "verify",
                "--store",
                &store_url(&self.store),
                "--snapshot",
                &self.id,
            ],
            want,
        );
        stderr(&out)
    }

    /// Extract must fail and leave the target and its parent untouched.
    fn extract_fails(&self) -> String {
        let parent = self.target.parent().unwrap();
        let before = (names(parent), tree(&self.target, &[]));
        let target = self.target.display().to_string();
        let out = run(
            &[
                "archive",
                "extract",
                "--store",
                &store_url(&self.store),
                "--snapshot",
                &self.id,
                "--into",
                &target,
            ],
            1,
        );
        assert_eq!(
            (names(parent), tree(&self.target, &[])),
            before,
            "extract touched the target"
        );
        stderr(&out)
    }
}

fn flip(path: &Path, pos: usize) -> Vec<u8> {
    let orig = fs::read(path).unwrap();
    let mut bad = orig.clone();
    bad[pos] ^= 0x5a;
    fs::write(path, &bad).unwrap();
    orig
}

/// A small deterministic PRNG (splitmix64) for reproducible positions.
fn positions(len: usize, n: usize, seed: u64) -> Vec<usize> {
    let mut s = seed;
    let mut out: Vec<usize> = vec![0, 1, 4, 5, len / 2, len - 9, len - 4, len - 1];
    while out.len() < n {
        s = s.wrapping_add(0x9e3779b97f4a7c15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
        out.push(((z ^ (z >> 31)) % len as u64) as usize);
    }
    out
}

#[test]
fn every_flipped_byte_is_detected_by_verify_and_extract() {
    let f = fixture();
    f.verify(0);
    let len = fs::metadata(&f.archive).unwrap().len() as usize;
    // Header, frame ends and random positions throughout the archive.
    for (i, pos) in positions(len, 48, 7).into_iter().enumerate() {
        let orig = flip(&f.archive, pos);
        let err = f.verify(1);
        assert!(
            err.contains(&f.id),
            "flip at {pos}: error does not name the snapshot: {err}"
        );
        // Extract on a subset keeps the test quick; all positions are verified.
        if i % 4 == 0 {
            f.extract_fails();
        }
        fs::write(&f.archive, orig).unwrap();
    }
    f.verify(0);
}

#[test]
fn truncated_archive_is_detected() {
    let f = fixture();
    let orig = fs::read(&f.archive).unwrap();
    fs::write(&f.archive, &orig[..orig.len() / 2]).unwrap();
    let err = f.verify(1);
    assert!(err.contains("truncated"), "{err}");
    let err = f.extract_fails();
    assert!(err.contains("truncated"), "{err}");
}

#[test]
fn edited_or_truncated_manifest_is_refused() {
    let f = fixture();
    let orig = fs::read_to_string(&f.manifest).unwrap();
    let edited = orig.replacen("\"zstd_level\": 3", "\"zstd_level\": 4", 1);
    assert_ne!(edited, orig);
    fs::write(&f.manifest, &edited).unwrap();
    let err = f.verify(1);
    assert!(
        err.contains("manifest") && err.contains("checksum mismatch"),
        "{err}"
    );
    f.extract_fails();

    fs::write(&f.manifest, &orig[..orig.len() - 100]).unwrap();
    let err = f.verify(1);
    assert!(err.contains("truncated"), "{err}");
    f.extract_fails();
}

#[test]
fn manifest_of_another_broker_or_cluster_is_refused() {
    let f = fixture();
    let src = f.manifest.parent().unwrap();
    // The same snapshot, copied under broker 6 and under another cluster.
    let as_broker6 = f.store.join(CLUSTER).join("broker-6").join(&f.id);
    let as_other = f
        .store
        .join("OtherClusterIdAAAAAAAA")
        .join("broker-5")
        .join(&f.id);
    for dst in [&as_broker6, &as_other] {
        fs::create_dir_all(dst).unwrap();
        for n in ["archive.tar.zst", "manifest.json"] {
            fs::copy(src.join(n), dst.join(n)).unwrap();
        }
    }
    let url = store_url(&f.store);
    let out = run(
        &[
            "archive",
            "verify",
            "--store",
            &url,
            "--snapshot",
            &f.id,
            "--broker",
            "6",
        ],
        1,
    );
    assert!(
        stderr(&out).contains("belongs to broker 5 but is stored under broker 6"),
        "{}",
        stderr(&out)
    );
    let out = run(
        &[
            "archive",
            "verify",
            "--store",
            &url,
            "--snapshot",
            &f.id,
            "--cluster",
            "OtherClusterIdAAAAAAAA",
            "--broker",
            "5",
        ],
        1,
    );
    assert!(
        stderr(&out).contains("belongs to cluster"),
        "{}",
        stderr(&out)
    );
    // Ambiguous without narrowing: a usage error that lists the candidates.
    let out = run(
        &["archive", "verify", "--store", &url, "--snapshot", &f.id],
        2,
    );
    assert!(stderr(&out).contains("--broker"), "{}", stderr(&out));
    // The listing shows them as damaged, never as complete.
    let out = run(&["archive", "list", "--store", &url, "--json"], 0);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let complete: Vec<_> = v
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["complete"] == true)
        .collect();
    assert_eq!(complete.len(), 1, "{v}");
    assert_eq!(complete[0]["broker"], 5);
}

#[test]
fn restore_into_a_dir_of_another_cluster_is_refused() {
    let f = fixture();
    fs::write(
        f.target.join("meta.properties"),
        "version=1\nnode.id=5\ncluster.id=SomeOtherCluster\ndirectory.id=AAAAAAAAAAAAAAAAAAAAAA\n",
    )
    .unwrap();
    let err = f.extract_fails();
    assert!(
        err.contains("SomeOtherCluster") && err.contains("--allow-other-identity"),
        "{err}"
    );
}
