//! The `qemu-img` volume driver against the real `qemu-img`: every operation, with the
//! files it leaves checked by `qemu-img info`.

use quartet_native::drivers::qemu::QemuImgDriver;
use quartet_native::spec::QemuImgSpec;
use quartet_native::{Driver, ErrorKind};
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;

const GIB: u64 = 1 << 30;

fn driver(root: &Path) -> QemuImgDriver {
    QemuImgDriver::new(
        "volumes",
        &QemuImgSpec {
            root: root.to_path_buf(),
            qemu_img: "/usr/bin/qemu-img".into(),
            max_size_gb: 1024,
        },
    )
    .expect("driver")
}

/// `qemu-img info --output=json` run by the test itself.
fn info(path: &Path, chain: bool) -> Value {
    let mut cmd = Command::new("/usr/bin/qemu-img");
    cmd.args(["info", "-U", "--output=json"]);
    if chain {
        cmd.arg("--backing-chain");
    }
    let out = cmd.arg(path).output().expect("qemu-img info runs");
    assert!(
        out.status.success(),
        "qemu-img info {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

/// The file names of an image's backing chain, the image first.
fn chain(path: &Path) -> Vec<String> {
    info(path, true)
        .as_array()
        .expect("a list")
        .iter()
        .map(|i| {
            Path::new(i["filename"].as_str().expect("filename"))
                .file_name()
                .expect("name")
                .to_string_lossy()
                .into_owned()
        })
        .collect()
}

/// Writes `pattern` bytes at `offset` of an image with `qemu-io` when it is there; `false`
/// when it is not (the content checks are skipped then, the structure checks are not).
fn write_pattern(path: &Path, pattern: u8, offset: u64) -> bool {
    let Ok(out) = Command::new("qemu-io")
        .args(["-f", "qcow2", "-c"])
        .arg(format!("write -P {pattern} {offset} 64k"))
        .arg(path)
        .output()
    else {
        return false;
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    true
}

fn read_is(path: &Path, pattern: u8, offset: u64) -> bool {
    let out = Command::new("qemu-io")
        .args(["-r", "-U", "-f", "qcow2", "-c"])
        .arg(format!("read -P {pattern} {offset} 64k"))
        .arg(path)
        .output()
        .expect("qemu-io");
    out.status.success()
        && !String::from_utf8_lossy(&out.stdout).contains("Pattern verification failed")
}

fn files(root: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root)
        .expect("list")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn volumes_snapshots_and_clones_on_real_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = driver(dir.path());
    let root = d.root().to_path_buf();
    let v1 = root.join("volume-v1.qcow2");

    // create_volume
    let out = d
        .call("create_volume", json!({"id": "v1", "size_gb": 1}))
        .await
        .expect("create");
    assert_eq!(out["id"], "v1");
    let i = info(&v1, false);
    assert_eq!(i["format"], "qcow2");
    assert_eq!(i["virtual-size"], GIB);
    assert!(i.get("backing-filename").is_none());
    let err = d
        .call("create_volume", json!({"id": "v1", "size_gb": 1}))
        .await
        .expect_err("taken");
    assert_eq!(err.kind(), ErrorKind::Conflict);
    let with_content = write_pattern(&v1, 0x11, 0);

    // get_volume
    let got = d
        .call("get_volume", json!({"id": "v1"}))
        .await
        .expect("get");
    assert_eq!(got["virtual_size"], GIB);
    assert_eq!(got["size_gb"], 1);
    assert_eq!(got["format"], "qcow2");
    assert_eq!(got["snapshots"], json!([]));
    assert_eq!(got["backing_chain"], json!(["volume-v1.qcow2"]));

    // extend_volume changes the virtual size; shrinking is refused.
    d.call("extend_volume", json!({"id": "v1", "size_gb": 2}))
        .await
        .expect("extend");
    assert_eq!(info(&v1, false)["virtual-size"], 2 * GIB);
    let err = d
        .call("extend_volume", json!({"id": "v1", "size_gb": 1}))
        .await
        .expect_err("shrink");
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    d.call("extend_volume", json!({"id": "v1", "size_gb": 2}))
        .await
        .expect("same size is a no-op");

    // create_snapshot: the volume continues in an overlay on the frozen snapshot.
    d.call("create_snapshot", json!({"id": "s1", "volume_id": "v1"}))
        .await
        .expect("snapshot s1");
    let s1 = root.join("volume-v1.snapshot-s1.qcow2");
    assert_eq!(
        chain(&v1),
        vec!["volume-v1.qcow2", "volume-v1.snapshot-s1.qcow2"]
    );
    assert_eq!(info(&v1, false)["virtual-size"], 2 * GIB);
    assert_eq!(
        info(&v1, false)["backing-filename"],
        "volume-v1.snapshot-s1.qcow2"
    );
    if with_content {
        // After s1, a second region: s1 must not see it, s2 and the volume must.
        write_pattern(&v1, 0x22, 65536);
    }
    d.call("create_snapshot", json!({"id": "s2", "volume_id": "v1"}))
        .await
        .expect("snapshot s2");
    assert_eq!(
        chain(&v1),
        vec![
            "volume-v1.qcow2",
            "volume-v1.snapshot-s2.qcow2",
            "volume-v1.snapshot-s1.qcow2"
        ]
    );
    let err = d
        .call("create_snapshot", json!({"id": "s1", "volume_id": "v1"}))
        .await
        .expect_err("id taken");
    assert_eq!(err.kind(), ErrorKind::Conflict);
    let err = d
        .call("create_snapshot", json!({"id": "s9", "volume_id": "nope"}))
        .await
        .expect_err("no volume");
    assert_eq!(err.kind(), ErrorKind::NotFound);
    let got = d
        .call("get_volume", json!({"id": "v1"}))
        .await
        .expect("get");
    assert_eq!(got["snapshots"], json!(["s1", "s2"]));

    // A volume with snapshots cannot be deleted.
    let err = d
        .call("delete_volume", json!({"id": "v1"}))
        .await
        .expect_err("busy");
    assert_eq!(err.kind(), ErrorKind::Conflict);
    assert!(v1.is_file());

    // create_volume_from_snapshot: an independent copy of s1's content.
    d.call(
        "create_volume_from_snapshot",
        json!({"id": "v2", "snapshot_id": "s1", "size_gb": 3}),
    )
    .await
    .expect("from snapshot");
    let v2 = root.join("volume-v2.qcow2");
    assert_eq!(chain(&v2), vec!["volume-v2.qcow2"]);
    assert_eq!(info(&v2, false)["virtual-size"], 3 * GIB);
    if with_content {
        assert!(read_is(&v2, 0x11, 0), "v2 has s1's content");
        assert!(read_is(&v2, 0, 65536), "v2 has nothing written after s1");
    }
    let err = d
        .call(
            "create_volume_from_snapshot",
            json!({"id": "v9", "snapshot_id": "missing"}),
        )
        .await
        .expect_err("no snapshot");
    assert_eq!(err.kind(), ErrorKind::NotFound);

    // clone_volume: an independent copy of the volume's current content.
    d.call("clone_volume", json!({"id": "v3", "source_id": "v1"}))
        .await
        .expect("clone");
    let v3 = root.join("volume-v3.qcow2");
    assert_eq!(chain(&v3), vec!["volume-v3.qcow2"]);
    assert_eq!(info(&v3, false)["virtual-size"], 2 * GIB);
    if with_content {
        assert!(read_is(&v3, 0x11, 0), "v3 has v1's current content");
        assert!(read_is(&v3, 0x22, 65536), "v3 has v1's current content");
    }

    // delete_snapshot of the older snapshot: merged into s2, the chain stays right.
    d.call("delete_snapshot", json!({"id": "s1"}))
        .await
        .expect("delete s1");
    assert!(!s1.exists());
    assert_eq!(
        chain(&v1),
        vec!["volume-v1.qcow2", "volume-v1.snapshot-s2.qcow2"]
    );
    if with_content {
        // s1's data now lives in s2: s2 and the volume read the same as before.
        let s2 = root.join("volume-v1.snapshot-s2.qcow2");
        assert!(read_is(&s2, 0x11, 0), "s2 keeps what it had from s1");
        assert!(read_is(&s2, 0x22, 65536));
        assert!(read_is(&v1, 0x11, 0), "the volume's content is unchanged");
        assert!(
            read_is(&v1, 0x22, 65536),
            "the volume's content is unchanged"
        );
    }
    // Deleting it again: already gone counts as deleted.
    d.call("delete_snapshot", json!({"id": "s1"}))
        .await
        .expect("delete s1 again");
    d.call("delete_snapshot", json!({"id": "s2"}))
        .await
        .expect("delete s2");
    assert_eq!(chain(&v1), vec!["volume-v1.qcow2"]);
    if with_content {
        assert!(read_is(&v1, 0x11, 0), "the volume's content is unchanged");
        assert!(
            read_is(&v1, 0x22, 65536),
            "the volume's content is unchanged"
        );
    }

    // delete_volume, then again (a missing volume counts as deleted).
    for id in ["v1", "v1", "v2", "v3"] {
        d.call("delete_volume", json!({ "id": id }))
            .await
            .expect("delete");
    }
    assert!(files(&root).is_empty(), "left: {:?}", files(&root));

    // get_volume of a missing volume.
    let err = d
        .call("get_volume", json!({"id": "v1"}))
        .await
        .expect_err("gone");
    assert_eq!(err.kind(), ErrorKind::NotFound);
}

#[tokio::test]
async fn stats_match_the_filesystem() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = driver(dir.path());
    d.call("create_volume", json!({"id": "a", "size_gb": 1}))
        .await
        .expect("create");
    let stats = d.call("get_volume_stats", json!({})).await.expect("stats");
    for key in [
        "volume_backend_name",
        "vendor_name",
        "driver_version",
        "storage_protocol",
        "total_capacity_gb",
        "free_capacity_gb",
    ] {
        assert!(stats.get(key).is_some(), "{key} missing: {stats}");
    }
    assert_eq!(stats["volume_backend_name"], "volumes");
    assert_eq!(stats["volumes"], 1);
    assert_eq!(stats["snapshots"], 0);

    // df's view of the same filesystem, in bytes.
    let out = Command::new("df")
        .args(["-P", "-B1"])
        .arg(d.root())
        .output()
        .expect("df");
    let text = String::from_utf8_lossy(&out.stdout);
    let fields: Vec<u64> = text
        .lines()
        .nth(1)
        .expect("a line")
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    let (df_total, df_avail) = (fields[0], fields[2]);
    let total = stats["total_bytes"].as_u64().expect("total");
    let free = stats["free_bytes"].as_u64().expect("free");
    assert_eq!(total, df_total);
    // Other processes write to this filesystem meanwhile: allow 1 GiB of drift.
    assert!(
        free.abs_diff(df_avail) < GIB,
        "free {free} vs df {df_avail}"
    );
    let total_gb = stats["total_capacity_gb"].as_f64().expect("gb");
    assert!((total_gb - total as f64 / GIB as f64).abs() < 0.01);
    assert!(free <= total);
}

#[tokio::test]
async fn names_and_sizes_are_checked_before_qemu_img_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = driver(dir.path());
    let bad = [
        json!({"id": "../escape", "size_gb": 1}),
        json!({"id": "a/b", "size_gb": 1}),
        json!({"id": "v1", "size_gb": 0}),
        json!({"id": "v1", "size_gb": 5000}),
        json!({"id": "v1", "size_gb": "1; rm -rf /"}),
        json!({"id": "v1"}),
        json!({"id": "v 1", "size_gb": 1}),
        json!("v1"),
    ];
    for args in bad {
        let err = d
            .call("create_volume", args.clone())
            .await
            .expect_err("refused");
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{args}");
    }
    // An id that looks like an option is a file name like any other: the path given to
    // qemu-img is absolute.
    d.call("create_volume", json!({"id": "-o_x", "size_gb": 1}))
        .await
        .expect("create");
    assert_eq!(files(d.root()), vec!["volume--o_x.qcow2"]);
    assert!(!dir.path().parent().expect("parent").join("escape").exists());
}

#[tokio::test]
async fn concurrent_changes_to_one_volume_keep_its_chain_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = std::sync::Arc::new(driver(dir.path()));
    d.call("create_volume", json!({"id": "v", "size_gb": 1}))
        .await
        .expect("create");
    let mut set = tokio::task::JoinSet::new();
    for i in 0..6 {
        let d = d.clone();
        set.spawn(async move {
            d.call(
                "create_snapshot",
                json!({"id": format!("s{i}"), "volume_id": "v"}),
            )
            .await
        });
    }
    while let Some(done) = set.join_next().await {
        done.expect("task").expect("snapshot");
    }
    let names = chain(&d.root().join("volume-v.qcow2"));
    assert_eq!(names.len(), 7, "{names:?}");
    assert_eq!(names[0], "volume-v.qcow2");
    let mut snaps: Vec<_> = names[1..].to_vec();
    snaps.sort();
    let want: Vec<String> = (0..6)
        .map(|i| format!("volume-v.snapshot-s{i}.qcow2"))
        .collect();
    assert_eq!(snaps, want);

    // And deleting them all at once merges each into its neighbour without loss.
    for i in 0..6 {
        let d = d.clone();
        set.spawn(async move {
            d.call("delete_snapshot", json!({ "id": format!("s{i}") }))
                .await
        });
    }
    while let Some(done) = set.join_next().await {
        done.expect("task").expect("delete");
    }
    assert_eq!(
        chain(&d.root().join("volume-v.qcow2")),
        vec!["volume-v.qcow2"]
    );
    assert_eq!(files(d.root()), vec!["volume-v.qcow2"]);
}

#[test]
fn stale_work_files_are_removed_when_a_driver_starts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let old = dir.path().join(".tmp-old.qcow2");
    let fresh = dir.path().join(".tmp-fresh.qcow2");
    let other = dir.path().join("notes.txt");
    for p in [&old, &fresh, &other] {
        std::fs::write(p, b"x").expect("write");
    }
    let two_hours_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
    for p in [&old, &other] {
        std::fs::File::options()
            .write(true)
            .open(p)
            .expect("open")
            .set_modified(two_hours_ago)
            .expect("mtime");
    }
    let _d = driver(dir.path());
    assert!(!old.exists(), "an old work file is a leftover");
    assert!(fresh.exists(), "a fresh one may belong to a running call");
    assert!(other.exists(), "other files are not ours");
}
