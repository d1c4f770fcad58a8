//! Reload triggers that come from outside: file changes and SIGHUP.
//!
//! The watch is on the *directories* holding the config and the files it reads, so a
//! Kubernetes ConfigMap update (a `..data` symlink swapped by rename) is seen as well as an
//! in-place write or a rename over the file. Bursts of events become one reload.

use std::collections::HashSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::control::reload::Reloader;

/// Quiet time after the first event of a burst before reloading.
const SETTLE: Duration = Duration::from_millis(100);

/// Watch the serving snapshot's input files: the future owns the watcher (drop it to stop).
pub fn file_watch(reloader: Arc<Reloader>) -> notify::Result<impl std::future::Future<Output = ()>> {
    let (tx, mut rx) = mpsc::unbounded_channel::<PathBuf>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Reads (ours included: a reload opens these files) are not changes.
        if let Some(event) = event.ok().filter(|e| !matches!(e.kind, notify::EventKind::Access(_))) {
            for path in event.paths {
                let _ = tx.send(path);
            }
        }
    })?;
    let mut watched = HashSet::new();
    watch_new_dirs(&mut watcher, &mut watched, &reloader);
    Ok(async move {
        while let Some(path) = rx.recv().await {
            // Judged against the files of the snapshot serving now, whoever reloaded it.
            if !relevant(&path, &targets(&reloader.state().snapshot.load().files).1) {
                continue;
            }
            tokio::time::sleep(SETTLE).await;
            while rx.try_recv().is_ok() {}
            reloader.reload("file_watch").await;
            watch_new_dirs(&mut watcher, &mut watched, &reloader);
        }
    })
}

/// Start watching directories the current snapshot reads from that are not watched yet.
fn watch_new_dirs(watcher: &mut impl Watcher, watched: &mut HashSet<PathBuf>, reloader: &Reloader) {
    for dir in targets(&reloader.state().snapshot.load().files).0 {
        if watched.contains(&dir) {
            continue;
        }
        match watcher.watch(&dir, RecursiveMode::NonRecursive) {
            Ok(()) => {
                watched.insert(dir);
            }
            Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "cannot watch directory for changes"),
        }
    }
}

/// The directories to watch and the file names in them that matter. `..data` is the
/// symlink a ConfigMap volume swaps on every update.
fn targets(files: &[PathBuf]) -> (HashSet<PathBuf>, HashSet<OsString>) {
    let mut dirs = HashSet::new();
    let mut names: HashSet<OsString> = HashSet::from([OsString::from("..data")]);
    for f in files.iter().filter(|f| !f.as_os_str().is_empty() && !f.starts_with("<")) {
        let dir = match f.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        dirs.insert(dir);
        if let Some(n) = f.file_name() {
            names.insert(n.to_os_string());
        }
    }
    (dirs, names)
}

fn relevant(path: &Path, names: &HashSet<OsString>) -> bool {
    path.file_name().is_some_and(|n| names.contains(n))
}

/// Reload on every SIGHUP. Listens from the moment it is called.
pub fn sighup(reloader: Arc<Reloader>) -> Option<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP");
        return None;
    };
    Some(async move {
        while hup.recv().await.is_some() {
            reloader.reload("sighup").await;
        }
    })
}
