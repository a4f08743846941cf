//! `kind = "qemu-img"`: a volume backend in the manner of a Cinder driver, on qcow2 files in
//! one directory, with the real `qemu-img`.
//!
//! # Files
//!
//! - a volume `V` is `volume-V.qcow2`;
//! - a snapshot `S` of volume `V` is `volume-V.snapshot-S.qcow2`;
//! - work in progress is `.tmp-<uuid>.qcow2`, removed when the call ends or is dropped
//!   (and, should a killed `qemu-img` recreate one in the instant before it dies, or the
//!   process stop, removed by the next driver built on the directory once an hour old).
//!
//! Ids are 1 to 64 letters, digits, `-` and `_`, so a name can neither leave the directory
//! nor be read as an option (every path handed to `qemu-img` is absolute), and
//! `.snapshot-` splits a snapshot's name unambiguously.
//!
//! # Snapshots: Cinder's remotefs approach
//!
//! As Cinder's NFS/remotefs drivers do it, a snapshot freezes the volume's current file and
//! the volume continues in a new copy-on-write overlay on top of it:
//!
//! 1. create `.tmp-X.qcow2` backed by `volume-V.snapshot-S.qcow2` (a name that does not
//!    exist yet, hence `-u`), with the volume's virtual size;
//! 2. rename `volume-V.qcow2` to `volume-V.snapshot-S.qcow2`;
//! 3. rename `.tmp-X.qcow2` to `volume-V.qcow2`.
//!
//! Steps 2 and 3 are plain renames with no await between them, so a call dropped by its
//! timeout leaves either the old state or the new one. The chain
//! (`qemu-img info --backing-chain volume-V.qcow2`) reads newest first: the volume, then its
//! snapshots from the newest to the oldest. Backing names are relative, so the directory
//! can move.
//!
//! Deleting snapshot `S` merges it into the image above it (the volume or the next newer
//! snapshot) with a safe `qemu-img rebase` onto `S`'s own backing file, so nothing above
//! changes content, then removes `S`'s file. A new volume from a snapshot and a clone are
//! full, independent copies (`qemu-img convert` flattens the chain), so a snapshot is only
//! ever the backing file of its own volume's chain, and a volume with snapshots cannot be
//! deleted (`Conflict`), as Cinder's `VolumeIsBusy`.
//!
//! Changing calls are serialised per driver instance (a rename sequence must not interleave
//! with another); reads (`get_volume`, `get_volume_stats`) are not.

use crate::driver::{arg_str, arg_u64, args_object, Driver, Operation};
use crate::error::{ConfigError, DriverError};
use crate::process;
use crate::spec::{valid_name, QemuImgSpec};
use futures_util::future::BoxFuture;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use tokio::sync::Mutex;

const GIB: u64 = 1 << 30;
const DRIVER_VERSION: &str = "1.0.0";
/// Work files older than this are leftovers: no call runs that long under any sane timeout.
const STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(3600);

/// Removes `.tmp-*.qcow2` files last modified more than `age` ago.
fn remove_stale_work_files(root: &Path, age: std::time::Duration) {
    let Ok(dir) = std::fs::read_dir(root) else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !(name.starts_with(".tmp-") && name.ends_with(".qcow2")) {
            continue;
        }
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|elapsed| elapsed > age);
        if old {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => tracing::info!(file = name, "removed a stale work file"),
                Err(e) => {
                    tracing::warn!(file = name, error = %e, "cannot remove a stale work file")
                }
            }
        }
    }
}

pub struct QemuImgDriver {
    name: String,
    root: PathBuf,
    qemu_img: PathBuf,
    max_size_gb: u64,
    operations: Vec<Operation>,
    changes: Mutex<()>,
}

impl QemuImgDriver {
    /// Creates `root` when missing and checks `qemu-img` is a file. `name` is reported as
    /// the stats' `volume_backend_name`.
    pub fn new(name: &str, spec: &QemuImgSpec) -> Result<Self, ConfigError> {
        spec.validate()?;
        std::fs::create_dir_all(&spec.root).map_err(|e| {
            ConfigError::new(
                "root",
                format!("cannot create {}: {e}", spec.root.display()),
            )
        })?;
        let root = spec.root.canonicalize().map_err(|e| {
            ConfigError::new(
                "root",
                format!("cannot resolve {}: {e}", spec.root.display()),
            )
        })?;
        if !root.is_dir() {
            return Err(ConfigError::new(
                "root",
                format!("{} is not a directory", root.display()),
            ));
        }
        if !spec.qemu_img.is_file() {
            return Err(ConfigError::new(
                "qemu_img",
                format!("{} is not a file", spec.qemu_img.display()),
            ));
        }
        remove_stale_work_files(&root, STALE_AFTER);
        let operations = [
            ("create_volume", false),
            ("delete_volume", true),
            ("extend_volume", true),
            ("create_snapshot", false),
            ("delete_snapshot", true),
            ("create_volume_from_snapshot", false),
            ("clone_volume", false),
            ("get_volume_stats", true),
            ("get_volume", true),
        ]
        .into_iter()
        .map(|(n, i)| Operation::new(n, i))
        .collect();
        Ok(Self {
            name: name.to_string(),
            root,
            qemu_img: spec.qemu_img.clone(),
            max_size_gb: spec.max_size_gb,
            operations,
            changes: Mutex::new(()),
        })
    }

    /// The directory holding the images (absolute).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file of volume `id`.
    pub fn volume_path(&self, id: &str) -> PathBuf {
        self.root.join(format!("volume-{id}.qcow2"))
    }

    /// The file of snapshot `id` of volume `volume_id`.
    pub fn snapshot_path(&self, volume_id: &str, id: &str) -> PathBuf {
        self.root
            .join(format!("volume-{volume_id}.snapshot-{id}.qcow2"))
    }

    async fn dispatch(&self, operation: &str, args: Value) -> Result<Value, DriverError> {
        args_object(&args)?;
        match operation {
            "create_volume" => self.create_volume(&args).await,
            "delete_volume" => self.delete_volume(&args).await,
            "extend_volume" => self.extend_volume(&args).await,
            "create_snapshot" => self.create_snapshot(&args).await,
            "delete_snapshot" => self.delete_snapshot(&args).await,
            "create_volume_from_snapshot" => self.create_volume_from_snapshot(&args).await,
            "clone_volume" => self.clone_volume(&args).await,
            "get_volume_stats" => self.get_volume_stats().await,
            "get_volume" => self.get_volume(&args).await,
            other => Err(DriverError::invalid(format!("unknown operation {other}"))),
        }
    }

    async fn create_volume(&self, args: &Value) -> Result<Value, DriverError> {
        let id = id_arg(args, "id")?;
        let size_gb = self.size_arg(args, "size_gb")?;
        let _changes = self.changes.lock().await;
        let path = self.volume_path(id);
        if path.exists() {
            return Err(DriverError::conflict(format!("volume {id} exists")));
        }
        let tmp = self.temp();
        self.qemu_img([
            "create".as_ref(),
            "-q".as_ref(),
            "-f".as_ref(),
            "qcow2".as_ref(),
            tmp.0.as_os_str(),
            format!("{size_gb}G").as_ref(),
        ])
        .await?;
        tmp.persist_new(&path, || format!("volume {id} exists"))?;
        Ok(json!({"id": id, "size_gb": size_gb, "provider_location": path}))
    }

    async fn delete_volume(&self, args: &Value) -> Result<Value, DriverError> {
        let id = id_arg(args, "id")?;
        let _changes = self.changes.lock().await;
        let snapshots = self.snapshots_of(id)?;
        if !snapshots.is_empty() {
            return Err(DriverError::conflict(format!(
                "volume {id} has snapshots: {}",
                snapshots.join(", ")
            )));
        }
        match std::fs::remove_file(self.volume_path(id)) {
            Ok(()) => Ok(Value::Null),
            // Cinder: a volume that is already gone counts as deleted.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Value::Null),
            Err(e) => Err(io_error(format!("cannot delete volume {id}"), e)),
        }
    }

    async fn extend_volume(&self, args: &Value) -> Result<Value, DriverError> {
        let id = id_arg(args, "id")?;
        let size_gb = self.size_arg(args, "size_gb")?;
        let _changes = self.changes.lock().await;
        let path = self.existing_volume(id)?;
        let info = self.info(&path, false).await?;
        let current = virtual_size(&info)?;
        let wanted = size_gb * GIB;
        if wanted < current {
            return Err(DriverError::invalid(format!(
                "volume {id} is {current} bytes; it can only grow"
            )));
        }
        if wanted > current {
            self.qemu_img([
                "resize".as_ref(),
                "-q".as_ref(),
                "-f".as_ref(),
                "qcow2".as_ref(),
                path.as_os_str(),
                format!("{size_gb}G").as_ref(),
            ])
            .await?;
        }
        Ok(json!({"id": id, "size_gb": size_gb}))
    }

    async fn create_snapshot(&self, args: &Value) -> Result<Value, DriverError> {
        let id = id_arg(args, "id")?;
        let volume_id = id_arg(args, "volume_id")?;
        let _changes = self.changes.lock().await;
        let volume = self.existing_volume(volume_id)?;
        if let Some(owner) = self.find_snapshot(id)? {
            return Err(DriverError::conflict(format!(
                "snapshot {id} exists (of volume {owner})"
            )));
        }
        let info = self.info(&volume, false).await?;
        let size = virtual_size(&info)?;
        let snapshot = self.snapshot_path(volume_id, id);
        let backing = file_name(&snapshot)?;
        let tmp = self.temp();
        // -u: the backing file gets its name in step 2 below; the size is given.
        self.qemu_img([
            "create".as_ref(),
            "-q".as_ref(),
            "-f".as_ref(),
            "qcow2".as_ref(),
            "-F".as_ref(),
            "qcow2".as_ref(),
            "-b".as_ref(),
            backing.as_ref(),
            "-u".as_ref(),
            tmp.0.as_os_str(),
            size.to_string().as_ref(),
        ])
        .await?;
        // From here on no await: the two renames happen together or not at all.
        std::fs::rename(&volume, &snapshot)
            .map_err(|e| io_error(format!("cannot freeze volume {volume_id}"), e))?;
        if let Err(e) = std::fs::rename(&tmp.0, &volume) {
            // Put the volume back as it was.
            if let Err(undo) = std::fs::rename(&snapshot, &volume) {
                tracing::error!(volume = %volume.display(), error = %undo,
                    "cannot restore a volume after a failed snapshot");
            }
            return Err(io_error(format!("cannot snapshot volume {volume_id}"), e));
        }
        tmp.forget();
        Ok(json!({"id": id, "volume_id": volume_id, "provider_location": snapshot}))
    }

    async fn delete_snapshot(&self, args: &Value) -> Result<Value, DriverError> {
        let id = id_arg(args, "id")?;
        let _changes = self.changes.lock().await;
        let Some(volume_id) = self.find_snapshot(id)? else {
            // Cinder: a snapshot that is already gone counts as deleted.
            return Ok(Value::Null);
        };
        let snapshot = self.snapshot_path(&volume_id, id);
        let volume = self.volume_path(&volume_id);
        let snapshot_name = file_name(&snapshot)?;
        if volume.exists() {
            let chain = self.chain(&volume).await?;
            if let Some(at) = chain.iter().position(|n| *n == snapshot_name) {
                // `at` > 0: the volume itself is at 0 and is never named like a snapshot.
                let above = self.root.join(&chain[at.saturating_sub(1)]);
                let below = chain.get(at + 1).cloned();
                let mut rebase: Vec<std::ffi::OsString> =
                    vec!["rebase".into(), "-q".into(), "-f".into(), "qcow2".into()];
                match &below {
                    Some(name) => {
                        rebase.extend(["-F".into(), "qcow2".into(), "-b".into(), name.into()])
                    }
                    None => rebase.extend(["-b".into(), "".into()]),
                }
                rebase.push(above.into_os_string());
                self.qemu_img(rebase).await?;
            }
        }
        match std::fs::remove_file(&snapshot) {
            Ok(()) => Ok(Value::Null),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Value::Null),
            Err(e) => Err(io_error(format!("cannot delete snapshot {id}"), e)),
        }
    }

    async fn create_volume_from_snapshot(&self, args: &Value) -> Result<Value, DriverError> {
        let id = id_arg(args, "id")?;
        let snapshot_id = id_arg(args, "snapshot_id")?;
        let _changes = self.changes.lock().await;
        let owner = self
            .find_snapshot(snapshot_id)?
            .ok_or_else(|| DriverError::not_found(format!("snapshot {snapshot_id}")))?;
        let source = self.snapshot_path(&owner, snapshot_id);
        self.copy_to_new_volume(id, &source, args).await
    }

    async fn clone_volume(&self, args: &Value) -> Result<Value, DriverError> {
        let id = id_arg(args, "id")?;
        let source_id = id_arg(args, "source_id")?;
        let _changes = self.changes.lock().await;
        let source = self.existing_volume(source_id)?;
        self.copy_to_new_volume(id, &source, args).await
    }

    /// A new, independent volume `id` with the content of `source` (its chain flattened),
    /// grown to `size_gb` when the call gives one. The caller holds the change lock.
    async fn copy_to_new_volume(
        &self,
        id: &str,
        source: &Path,
        args: &Value,
    ) -> Result<Value, DriverError> {
        let path = self.volume_path(id);
        if path.exists() {
            return Err(DriverError::conflict(format!("volume {id} exists")));
        }
        let source_size = virtual_size(&self.info(source, false).await?)?;
        let size_gb = match args_object(args)?.get("size_gb") {
            Some(_) => self.size_arg(args, "size_gb")?,
            None => source_size.div_ceil(GIB),
        };
        if size_gb * GIB < source_size {
            return Err(DriverError::invalid(format!(
                "size_gb {size_gb} is smaller than the source ({source_size} bytes)"
            )));
        }
        let tmp = self.temp();
        self.qemu_img([
            "convert".as_ref(),
            "-q".as_ref(),
            "-f".as_ref(),
            "qcow2".as_ref(),
            "-O".as_ref(),
            "qcow2".as_ref(),
            source.as_os_str(),
            tmp.0.as_os_str(),
        ])
        .await?;
        if size_gb * GIB > source_size {
            self.qemu_img([
                "resize".as_ref(),
                "-q".as_ref(),
                "-f".as_ref(),
                "qcow2".as_ref(),
                tmp.0.as_os_str(),
                format!("{size_gb}G").as_ref(),
            ])
            .await?;
        }
        tmp.persist_new(&path, || format!("volume {id} exists"))?;
        Ok(json!({"id": id, "size_gb": size_gb, "provider_location": path}))
    }

    async fn get_volume_stats(&self) -> Result<Value, DriverError> {
        let root = self.root.clone();
        let fs = tokio::task::spawn_blocking(move || rustix::fs::statvfs(&root))
            .await
            .map_err(|e| DriverError::permanent("reading filesystem stats failed", Some(e.into())))?
            .map_err(|e| {
                io_error(
                    "cannot read the filesystem's stats".to_string(),
                    std::io::Error::from(e),
                )
            })?;
        let total_bytes = fs.f_blocks.saturating_mul(fs.f_frsize);
        let free_bytes = fs.f_bavail.saturating_mul(fs.f_frsize);
        let (volumes, snapshots) = self.count_images()?;
        let gb = |bytes: u64| (bytes as f64 / GIB as f64 * 100.0).floor() / 100.0;
        Ok(json!({
            "volume_backend_name": self.name,
            "vendor_name": "Quartet",
            "driver_version": DRIVER_VERSION,
            "storage_protocol": "file",
            "total_capacity_gb": gb(total_bytes),
            "free_capacity_gb": gb(free_bytes),
            "total_bytes": total_bytes,
            "free_bytes": free_bytes,
            "reserved_percentage": 0,
            "thin_provisioning_support": true,
            "thick_provisioning_support": false,
            "online_extend_support": false,
            "multiattach": false,
            "QoS_support": false,
            "volumes": volumes,
            "snapshots": snapshots,
        }))
    }

    async fn get_volume(&self, args: &Value) -> Result<Value, DriverError> {
        let id = id_arg(args, "id")?;
        let path = self.existing_volume(id)?;
        let info = self.info(&path, false).await?;
        let size = virtual_size(&info)?;
        let chain = self.chain(&path).await?;
        let mut snapshots = self.snapshots_of(id)?;
        snapshots.sort();
        Ok(json!({
            "id": id,
            "size_gb": size.div_ceil(GIB),
            "virtual_size": size,
            "actual_size": info.get("actual-size").cloned().unwrap_or(Value::Null),
            "format": info.get("format").cloned().unwrap_or(Value::Null),
            "backing_file": info.get("backing-filename").cloned().unwrap_or(Value::Null),
            "backing_chain": chain,
            "snapshots": snapshots,
            "provider_location": path,
        }))
    }

    // -- helpers -------------------------------------------------------------------------

    fn size_arg(&self, args: &Value, key: &str) -> Result<u64, DriverError> {
        let size = arg_u64(args, key)?;
        if size == 0 || size > self.max_size_gb {
            return Err(DriverError::invalid(format!(
                "argument {key} must be between 1 and {}",
                self.max_size_gb
            )));
        }
        Ok(size)
    }

    fn existing_volume(&self, id: &str) -> Result<PathBuf, DriverError> {
        let path = self.volume_path(id);
        if path.is_file() {
            Ok(path)
        } else {
            Err(DriverError::not_found(format!("volume {id}")))
        }
    }

    fn temp(&self) -> TempPath {
        TempPath(
            self.root
                .join(format!(".tmp-{}.qcow2", uuid::Uuid::new_v4().simple())),
        )
    }

    /// Every image file's name in the root, split into (volume, snapshot) ids.
    fn images(&self) -> Result<Vec<(String, Option<String>)>, DriverError> {
        let dir = std::fs::read_dir(&self.root)
            .map_err(|e| io_error("cannot list the volume directory".to_string(), e))?;
        let mut out = Vec::new();
        for entry in dir {
            let entry =
                entry.map_err(|e| io_error("cannot list the volume directory".to_string(), e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(parsed) = parse_image_name(name) {
                out.push(parsed);
            }
        }
        Ok(out)
    }

    fn snapshots_of(&self, volume_id: &str) -> Result<Vec<String>, DriverError> {
        Ok(self
            .images()?
            .into_iter()
            .filter(|(v, s)| v == volume_id && s.is_some())
            .filter_map(|(_, s)| s)
            .collect())
    }

    /// The volume snapshot `id` belongs to, if it exists.
    fn find_snapshot(&self, id: &str) -> Result<Option<String>, DriverError> {
        Ok(self
            .images()?
            .into_iter()
            .find(|(_, s)| s.as_deref() == Some(id))
            .map(|(v, _)| v))
    }

    fn count_images(&self) -> Result<(usize, usize), DriverError> {
        let images = self.images()?;
        let snapshots = images.iter().filter(|(_, s)| s.is_some()).count();
        Ok((images.len() - snapshots, snapshots))
    }

    /// `qemu-img info --output=json` of one image (`-U`: readable while a VM has it open).
    async fn info(&self, path: &Path, chain: bool) -> Result<Value, DriverError> {
        let mut args: Vec<&std::ffi::OsStr> = vec![
            "info".as_ref(),
            "-U".as_ref(),
            "--output=json".as_ref(),
            "-f".as_ref(),
            "qcow2".as_ref(),
        ];
        if chain {
            args.push("--backing-chain".as_ref());
        }
        args.push(path.as_os_str());
        let out = self.qemu_img(args).await?;
        serde_json::from_slice(&out).map_err(|e| {
            DriverError::permanent(
                "qemu-img info printed something else than JSON",
                Some(e.into()),
            )
        })
    }

    /// The file names of an image's backing chain, the image first.
    async fn chain(&self, path: &Path) -> Result<Vec<String>, DriverError> {
        let info = self.info(path, true).await?;
        let items = info.as_array().ok_or_else(|| {
            DriverError::permanent("qemu-img info --backing-chain did not print a list", None)
        })?;
        items
            .iter()
            .map(|item| {
                item.get("filename")
                    .and_then(Value::as_str)
                    .and_then(|f| Path::new(f).file_name())
                    .and_then(|f| f.to_str())
                    .map(str::to_string)
                    .ok_or_else(|| {
                        DriverError::permanent("an image in the chain has no file name", None)
                    })
            })
            .collect()
    }

    /// Runs `qemu-img` with `args` (no shell); its standard output on success.
    async fn qemu_img<I, S>(&self, args: I) -> Result<Vec<u8>, DriverError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let args: Vec<std::ffi::OsString> = args
            .into_iter()
            .map(|a| a.as_ref().to_os_string())
            .collect();
        let verb = args
            .first()
            .map(|a| a.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut cmd = process::command(&self.qemu_img, &args);
        cmd.current_dir(&self.root);
        let finished = process::run(cmd).await.map_err(|e| {
            DriverError::permanent(format!("qemu-img {verb} could not run"), Some(e.into()))
        })?;
        if finished.status.success() {
            return Ok(finished.stdout);
        }
        let stderr = finished.stderr_text();
        let message = format!("qemu-img {verb} exited with {}: {stderr}", finished.status);
        // Another process holds the image's lock: it may let go.
        if stderr.contains("lock") {
            Err(DriverError::transient_sent(message, None))
        } else {
            Err(DriverError::permanent(message, None))
        }
    }
}

/// `volume-V.qcow2` -> (V, None); `volume-V.snapshot-S.qcow2` -> (V, Some(S)).
fn parse_image_name(name: &str) -> Option<(String, Option<String>)> {
    let stem = name.strip_prefix("volume-")?.strip_suffix(".qcow2")?;
    match stem.split_once(".snapshot-") {
        Some((v, s)) if valid_name(v) && valid_name(s) => {
            Some((v.to_string(), Some(s.to_string())))
        }
        Some(_) => None,
        None if valid_name(stem) => Some((stem.to_string(), None)),
        None => None,
    }
}

fn id_arg<'a>(args: &'a Value, key: &str) -> Result<&'a str, DriverError> {
    let id = arg_str(args, key)?;
    if !valid_name(id) {
        return Err(DriverError::invalid(format!(
            "argument {key} must be 1 to 64 letters, digits, '-' or '_'"
        )));
    }
    Ok(id)
}

fn virtual_size(info: &Value) -> Result<u64, DriverError> {
    info.get("virtual-size")
        .and_then(Value::as_u64)
        .ok_or_else(|| DriverError::permanent("qemu-img info gave no virtual size", None))
}

fn file_name(path: &Path) -> Result<String, DriverError> {
    path.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_string)
        .ok_or_else(|| DriverError::permanent("an image path has no file name", None))
}

fn io_error(message: String, e: std::io::Error) -> DriverError {
    DriverError::permanent(message, Some(e.into()))
}

/// A work file, removed when dropped unless it was persisted.
struct TempPath(PathBuf);

impl TempPath {
    /// Gives the file its final name, refusing to replace an existing one (a hard link
    /// fails when the name is taken; then the work file is removed).
    fn persist_new(self, to: &Path, taken: impl FnOnce() -> String) -> Result<(), DriverError> {
        match std::fs::hard_link(&self.0, to) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Err(DriverError::conflict(taken()))
            }
            Err(e) => Err(io_error(format!("cannot create {}", to.display()), e)),
        }
        // `self` drops here and removes the work name.
    }

    /// The file was renamed away: nothing to remove.
    fn forget(mut self) {
        self.0 = PathBuf::new();
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        if self.0.as_os_str().is_empty() {
            return;
        }
        if let Err(e) = std::fs::remove_file(&self.0) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %self.0.display(), error = %e, "cannot remove a work file");
            }
        }
    }
}

impl Driver for QemuImgDriver {
    fn kind(&self) -> &'static str {
        "qemu-img"
    }
    fn operations(&self) -> &[Operation] {
        &self.operations
    }
    fn call<'a>(
        &'a self,
        operation: &'a str,
        args: Value,
    ) -> BoxFuture<'a, Result<Value, DriverError>> {
        Box::pin(self.dispatch(operation, args))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_image_names() {
        assert_eq!(
            parse_image_name("volume-v1.qcow2"),
            Some(("v1".into(), None))
        );
        assert_eq!(
            parse_image_name("volume-v-1.snapshot-s_2.qcow2"),
            Some(("v-1".into(), Some("s_2".into())))
        );
        for other in [
            ".tmp-abc.qcow2",
            "volume-.qcow2",
            "volume-a.b.qcow2",
            "volume-v1.snapshot-.qcow2",
            "volume-v1.raw",
            "notes.txt",
        ] {
            assert_eq!(parse_image_name(other), None, "{other}");
        }
    }

    #[test]
    fn ids_are_checked() {
        for bad in [
            json!({"id": "../etc"}),
            json!({"id": "a/b"}),
            json!({"id": ""}),
            json!({"id": "x".repeat(65)}),
            json!({"id": "a b"}),
            json!({"id": "v1.qcow2"}),
            json!({"id": 5}),
            json!({}),
        ] {
            assert!(id_arg(&bad, "id").is_err(), "{bad}");
        }
        assert_eq!(
            id_arg(&json!({"id": "-o_x-1"}), "id").expect("ok"),
            "-o_x-1"
        );
    }
}
