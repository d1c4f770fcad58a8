//! `--git`: every blob, commit and tag that the repository's refs, reflogs (older stashes are
//! only in `refs/stash`'s) and index reach, read whole with `git cat-file --batch` and scanned
//! as a file is. Reading objects rather than `git log -p` finds what a diff does not show: a
//! merge's own resolution, a stash, a file marked `-diff`. A finding in a blob is placed at the
//! oldest commit that adds the blob: `git:COMMIT:PATH:LINE`.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use keyward::text::escaped;

use super::{Found, ScanError, Scanner};

/// One object rev-list names: its id and, for a tree or blob, a path it is at.
struct Object {
    id: String,
    path: Option<String>,
}

/// An object that holds something, and what.
struct Hit<'o> {
    object: &'o Object,
    kind: &'static str,
    found: Vec<Found>,
}

/// Scans the repository `path` is in (once, whichever of its folders and files are given).
pub(super) fn history(path: &Path, repos: &mut HashSet<PathBuf>, s: &mut Scanner) {
    if let Err(e) = repository(path, repos, s) {
        s.not_whole(&format!("{} (--git)", escaped(&path.display().to_string())), &e.to_string());
    }
}

fn repository(path: &Path, repos: &mut HashSet<PathBuf>, s: &mut Scanner) -> Result<(), ScanError> {
    let dir = match path.is_dir() {
        true => path,
        false => path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")),
    };
    if !repos.insert(PathBuf::from(git(dir, &["rev-parse", "--absolute-git-dir"])?.trim_end())) {
        return Ok(());
    }
    let listed =
        git(dir, &["rev-list", "--objects", "--all", "--reflog", "--indexed-objects", "--missing=print"])?;
    let mut objects = Vec::new();
    for line in listed.lines() {
        match line.strip_prefix('?') {
            // A partial clone's: reading it would fetch it.
            Some(id) => s.not_whole(&format!("git:{}", short(id)), "missing from the repository"),
            None => objects.push(match line.split_once(' ') {
                Some((id, path)) => Object { id: id.into(), path: Some(path.into()) },
                None => Object { id: line.into(), path: None },
            }),
        }
    }
    let hits = read_objects(dir, &objects, s)?;
    let blobs: HashSet<&str> = hits.iter().filter(|h| h.kind == "blob").map(|h| &*h.object.id).collect();
    let added = if blobs.is_empty() { HashMap::new() } else { first_commits(dir, &blobs)? };
    for Hit { object, kind, found } in hits {
        let place = match (kind, &object.path) {
            ("blob", path) => {
                let at = added.get(&object.id).map_or(&*object.id, String::as_str);
                format!("git:{}:{}", short(at), escaped(path.as_deref().unwrap_or("?")))
            }
            (kind, _) => format!("git:{}:({kind})", short(&object.id)),
        };
        s.report(&place, &found);
    }
    Ok(())
}

/// The findings in each blob, commit (its message) and tag, by `git cat-file --batch`.
fn read_objects<'o>(dir: &Path, objects: &'o [Object], s: &mut Scanner) -> Result<Vec<Hit<'o>>, ScanError> {
    let mut child = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["cat-file", "--batch"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(ScanError::CatFile)?;
    let mut stdin = child.stdin.take().expect("piped");
    let ids: String = objects.iter().map(|o| format!("{}\n", o.id)).collect();
    // Written from another thread: git answers as it reads, and would block on a full pipe.
    let writer = std::thread::spawn(move || stdin.write_all(ids.as_bytes()));
    let mut out = BufReader::new(child.stdout.take().expect("piped"));
    let mut hits = Vec::new();
    for object in objects {
        let mut header = String::new();
        out.read_line(&mut header).map_err(ScanError::CatFile)?;
        let place = format!("git:{}:{}", short(&object.id), escaped(object.path.as_deref().unwrap_or("")));
        let (kind, size) = match header.split_whitespace().collect::<Vec<_>>()[..] {
            [_, kind, size] => {
                (kind, size.parse::<u64>().map_err(|_| ScanError::CatFileHeader(header.clone()))?)
            }
            _ => {
                s.not_whole(&place, &format!("git cat-file: {}", header.trim_end()));
                continue;
            }
        };
        let bytes = body(&mut out, size, s.max).map_err(ScanError::CatFile)?;
        if (bytes.len() as u64) < size {
            s.not_whole(&place, &format!("larger than --max-bytes; its first {} bytes were scanned", s.max));
        }
        let kind = match kind {
            "blob" => "blob",
            "commit" => "commit",
            "tag" => "tag",
            _ => continue,
        };
        let found = s.content(&place, &bytes);
        if !found.is_empty() {
            hits.push(Hit { object, kind, found });
        }
    }
    let _ = writer.join();
    match child.wait() {
        Ok(status) if status.success() => Ok(hits),
        other => Err(ScanError::CatFileExit(other)),
    }
}

/// An object's first `max` bytes of `size`, the rest and the newline after it read past.
fn body(out: &mut impl BufRead, size: u64, max: usize) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    out.take(size.min(max as u64)).read_to_end(&mut bytes)?;
    std::io::copy(&mut out.take(size - bytes.len() as u64 + 1), &mut std::io::sink())?;
    Ok(bytes)
}

/// For each blob of `blobs`, the oldest commit whose change (to any parent) adds it.
fn first_commits(dir: &Path, blobs: &HashSet<&str>) -> Result<HashMap<String, String>, ScanError> {
    let log =
        ["log", "--all", "--reflog", "-m", "--raw", "--no-abbrev", "--no-renames", "--format=commit %H"];
    let mut added = HashMap::new();
    let mut commit = "";
    let text = git(dir, &log)?;
    for line in text.lines() {
        if let Some(c) = line.strip_prefix("commit ") {
            commit = c;
        } else if let Some(change) = line.strip_prefix(':') {
            // `:100644 100644 OLD NEW M\tpath`; newest first, so the last seen is the oldest.
            let new = change.split(' ').nth(3).unwrap_or("");
            if blobs.contains(new) {
                added.insert(new.to_string(), commit.to_string());
            }
        }
    }
    Ok(added)
}

/// `git -C dir ARGS`' output, or its error.
fn git(dir: &Path, args: &[&str]) -> Result<String, ScanError> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(ScanError::Git)?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        return Err(ScanError::GitFailed { command: args[0].to_string(), stderr });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}
