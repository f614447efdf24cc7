//! Runs that fail on their environment — a full disk, a lake its user may not write — fail
//! cleanly: exit status 1, a one-line reason that says what happened and that nothing was
//! published, and the lake exactly as it was (no partial files), so that the next run, once
//! the cause is gone, completes and equals an uninterrupted run.
//!
//! The full disk is a real one: a tmpfs of a chosen size, mounted in a private user and mount
//! namespace (`unshare`), so the host's mounts never change and no privilege is needed where
//! unprivileged user namespaces are allowed. Where they are not, the test says so and stops.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use serde_json::Value;

use crate::common::{bin, export, files_under, ingest, root, stable, succeed};

/// A tmpfs of `size` KiB mounted on a directory inside a private namespace, held open by a
/// sleeping process; commands run inside it through `nsenter`.
struct SmallDisk {
    holder: Child,
    mount: PathBuf,
}

impl SmallDisk {
    /// `None` when this machine refuses the namespace or the mount.
    fn mount(dir: &Path, kib: u64) -> Option<Self> {
        let script =
            r#"mount -t tmpfs -o "size=$1k" fhirlake-test "$2" && echo mounted && exec sleep 3600"#;
        let mut holder = Command::new("unshare")
            .args([
                "--user",
                "--map-root-user",
                "--mount",
                "--propagation",
                "private",
            ])
            .args(["sh", "-c", script, "sh", &kib.to_string()])
            .arg(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let mut line = String::new();
        let ready = holder
            .stdout
            .take()
            .map(|out| BufReader::new(out).read_line(&mut line).is_ok())
            .unwrap_or(false);
        if !ready || line.trim() != "mounted" {
            let _ = holder.kill();
            let _ = holder.wait();
            return None;
        }
        Some(Self {
            holder,
            mount: dir.to_path_buf(),
        })
    }

    /// `program` run inside the namespace, where the tmpfs is mounted.
    fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg("--target")
            .arg(self.holder.id().to_string())
            .args(["--user", "--mount", "--preserve-credentials"])
            // (entering a mount namespace resets the working directory)
            .arg(format!("--wd={}", root().display()))
            .arg("--")
            .arg(program);
        c
    }

    /// `fhirlake ARGS` inside the namespace.
    fn fhirlake(&self, args: &[&OsStr]) -> Output {
        self.command(env!("CARGO_BIN_EXE_fhirlake"))
            .env("FHIRLAKE_LOG", "warn")
            .args(args)
            .output()
            .expect("run fhirlake in the namespace")
    }

    /// KiB in use on the tmpfs.
    fn used_kib(&self) -> u64 {
        let out = succeed(
            self.command("df")
                .args(["--output=used", "-k"])
                .arg(&self.mount),
        );
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .last()
            .and_then(|l| l.trim().parse().ok())
            .expect("df prints the KiB used")
    }

    /// Give the tmpfs `kib` KiB in all.
    fn resize(&self, kib: u64) {
        succeed(
            self.command("mount")
                .args(["-o", &format!("remount,size={kib}k")])
                .arg(&self.mount),
        );
    }

    /// A path under the mount point as this (host) process sees it.
    fn host_path(&self, rel: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root", self.holder.id()))
            .join(self.mount.strip_prefix("/").unwrap_or(&self.mount))
            .join(rel)
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// A plain CSV extract of 300 members' claims (about 1.3 MB, 3,000 claims).
fn claims_extract(work: &Path) -> String {
    let data = work.join("data");
    succeed(
        bin()
            .args(["generate", "--members", "300", "--dataset"])
            .arg(&data),
    );
    data.join("plain/claims.csv").display().to_string()
}

/// The lake after `samples/plain` and then `claims`, written with nothing in the way.
fn uninterrupted(claims: &str) -> Vec<Value> {
    let reference = tempfile::tempdir().unwrap();
    assert_eq!(ingest(reference.path(), &["samples/plain"]).0, 0);
    assert_eq!(ingest(reference.path(), &["samples/plain", claims]).0, 0);
    stable(export(reference.path()))
}

#[test]
fn a_full_disk_fails_the_run_cleanly_wherever_it_strikes_and_the_next_run_completes() {
    let work = tempfile::tempdir().unwrap();
    let claims = claims_extract(work.path());
    let want = uninterrupted(&claims);

    let mnt = work.path().join("disk");
    std::fs::create_dir(&mnt).unwrap();
    let Some(disk) = SmallDisk::mount(&mnt, 64 << 10) else {
        eprintln!("SKIPPED: this machine allows no user and mount namespace (`unshare`) for a small tmpfs");
        return;
    };
    let lake = mnt.join("lake");
    let lake_arg = lake.as_os_str();
    let out = disk.fhirlake(&[
        "ingest".as_ref(),
        "--lake".as_ref(),
        lake_arg,
        "samples/plain".as_ref(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let host_lake = disk.host_path("lake");
    let export_in_ns = || {
        let out = disk.fhirlake(&["export".as_ref(), "--lake".as_ref(), lake_arg]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        stable(
            text.lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect(),
        )
    };
    let base_current = std::fs::read_to_string(host_lake.join("CURRENT")).unwrap();
    let base_files = files_under(&host_lake);
    let base_export = export_in_ns();
    let base_used = disk.used_kib();

    // Room for the run grows step by step: the disk fills up in ever later places (the first
    // table file, later ones, the key index, the snapshot's own files) until the run fits.
    let mut failed_at = Vec::new();
    let mut completed = false;
    for extra in [
        4, 16, 48, 96, 160, 256, 384, 512, 768, 1024, 1536, 2048, 4096, 65536,
    ] {
        disk.resize(base_used + extra);
        let args = [
            "ingest".as_ref(),
            "--lake".as_ref(),
            lake_arg,
            "samples/plain".as_ref(),
            claims.as_ref(),
        ];
        let out = disk.fhirlake(&args);
        if out.status.success() {
            completed = true;
            break;
        }
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(out.status.code(), Some(1), "{extra} KiB free: {err}");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        let said = format!(
            "fhirlake: the disk is full (free space, then run again); nothing was published, {} is still the current snapshot: ",
            base_current.trim()
        );
        assert!(err.starts_with(&said), "{extra} KiB free: {err}");
        assert!(err.contains("No space left on device"), "{err}");
        // The lake is as it was: the same snapshot, the same files (nothing partial), the same
        // resources, and its key index agrees with its tables.
        assert_eq!(
            std::fs::read_to_string(host_lake.join("CURRENT")).unwrap(),
            base_current
        );
        assert_eq!(
            files_under(&host_lake),
            base_files,
            "{extra} KiB free: {err}"
        );
        assert_eq!(export_in_ns(), base_export);
        let verify = disk.fhirlake(&[
            "snapshots".as_ref(),
            "--verify".as_ref(),
            "--lake".as_ref(),
            lake_arg,
        ]);
        assert!(
            verify.status.success(),
            "{}",
            String::from_utf8_lossy(&verify.stderr)
        );
        // Where it struck: the file named after the reason, without the snapshot's own name.
        let file = err.rsplit(": ").nth(1).unwrap_or("").to_string();
        let place = file
            .strip_prefix(&format!("{}/", lake.display()))
            .unwrap_or(&file)
            .split('/')
            .take(2)
            .collect::<Vec<_>>()
            .join("/");
        failed_at.push(place);
    }
    assert!(completed, "the run never fitted: {failed_at:?}");
    assert!(failed_at.len() >= 3, "{failed_at:?}");
    failed_at.dedup();
    assert!(
        failed_at.len() >= 2,
        "the disk filled up in one place only: {failed_at:?}"
    );
    // Once there is room, the run completes and equals one that never met a full disk.
    assert_eq!(export_in_ns(), want);
}

/// Take away the run's right to write under `path` — the whole tree, or only the directory.
/// As root, the files go to a user id the run's user namespace does not map (root inside one
/// has no power over those); otherwise the write bits go. Returns whether fhirlake must run in
/// a user namespace for the denial to hold.
fn deny_writes(path: &Path, tree: bool) -> bool {
    use std::os::unix::fs::PermissionsExt;
    const STRANGER: u32 = 12345;
    let as_root = std::os::unix::fs::chown(path, Some(STRANGER), Some(STRANGER)).is_ok();
    let mut paths = vec![path.to_path_buf()];
    if tree {
        let mut stack = vec![path.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                if e.path().is_dir() {
                    stack.push(e.path());
                }
                paths.push(e.path());
            }
        }
    }
    for p in paths {
        if as_root {
            std::os::unix::fs::chown(&p, Some(STRANGER), Some(STRANGER)).unwrap();
        } else {
            let mode = std::fs::metadata(&p).unwrap().permissions().mode();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode & !0o222)).unwrap();
        }
    }
    as_root
}

/// Whether this machine lets a process make a user namespace (`unshare --user`).
fn user_namespaces() -> bool {
    Command::new("unshare")
        .args(["--user", "--map-root-user", "true"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Undo [`deny_writes`] on the whole tree under `path`, giving it back to the owner of `mine`.
fn allow_writes(path: &Path, mine: &Path) {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let me = std::fs::metadata(mine).unwrap();
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        let _ = std::os::unix::fs::chown(&p, Some(me.uid()), Some(me.gid()));
        let mode = std::fs::metadata(&p).unwrap().permissions().mode();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode | 0o200)).unwrap();
        if p.is_dir() {
            stack.extend(std::fs::read_dir(&p).unwrap().flatten().map(|e| e.path()));
        }
    }
}

#[test]
fn a_lake_its_user_may_not_write_fails_the_run_cleanly_and_stays_as_it_was() {
    let work = tempfile::tempdir().unwrap();
    let claims = claims_extract(work.path());
    let want = uninterrupted(&claims);

    let lake = tempfile::tempdir().unwrap();
    // Readable by anyone (a temporary directory is not), as a lake served by another user is.
    std::fs::set_permissions(
        lake.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    assert_eq!(ingest(lake.path(), &["samples/plain"]).0, 0);
    let base_current = std::fs::read_to_string(lake.path().join("CURRENT")).unwrap();
    let base_files = files_under(lake.path());
    let base_export = stable(export(lake.path()));

    // One table's directory (the run writes the others first, then fails), then the whole lake
    // (the run cannot even take the lock).
    let eob = lake.path().join("data/ExplanationOfBenefit");
    for (denied, tree, place) in [
        (eob.as_path(), false, "data/ExplanationOfBenefit/"),
        (lake.path(), true, ".lock"),
    ] {
        let in_namespace = deny_writes(denied, tree);
        if in_namespace && !user_namespaces() {
            allow_writes(lake.path(), work.path());
            eprintln!("SKIPPED: as root, a denial needs a user namespace (`unshare --user`), which this machine refuses");
            return;
        }
        let mut cmd = if in_namespace {
            let mut c = Command::new("unshare");
            c.args(["--user", "--map-root-user", env!("CARGO_BIN_EXE_fhirlake")]);
            c
        } else {
            Command::new(env!("CARGO_BIN_EXE_fhirlake"))
        };
        let out = cmd
            .current_dir(root())
            .env("FHIRLAKE_LOG", "warn")
            .args(["ingest", "--lake"])
            .arg(lake.path())
            .args(["samples/plain", &claims])
            .output()
            .unwrap();
        allow_writes(lake.path(), work.path());
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        let said = format!(
            "fhirlake: permission denied (the user running fhirlake must be able to write the lake and read the inputs); nothing was published, {} is still the current snapshot: {}/{place}",
            base_current.trim(),
            lake.path().display()
        );
        assert!(err.starts_with(&said), "{err}");
        assert!(
            err.trim_end().ends_with("Permission denied (os error 13)"),
            "{err}"
        );
        assert_eq!(
            std::fs::read_to_string(lake.path().join("CURRENT")).unwrap(),
            base_current
        );
        assert_eq!(files_under(lake.path()), base_files, "{err}");
        assert_eq!(stable(export(lake.path())), base_export);
    }
    // With the rights back, the run completes and equals one that never met the denial.
    assert_eq!(ingest(lake.path(), &["samples/plain", &claims]).0, 0);
    assert_eq!(stable(export(lake.path())), want);
}
