//! A secret from a TOML file of `name = "value"` pairs, refused unless private to keyward
//! (`private_enough`).

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::{LoadFuture, Loaded, Secret, SecretError, SecretSource, header_safe};

/// A TOML file of `name = "value"` pairs; refused if group- or world-readable.
#[derive(Debug)]
pub struct FileSource {
    pub path: PathBuf,
    pub key: String,
}

impl SecretSource for FileSource {
    fn load(&self) -> LoadFuture<'_> {
        Box::pin(async move { read_secret_file(&self.path, &self.key) })
    }
}

fn read_secret_file(path: &Path, key: &str) -> Result<Loaded, SecretError> {
    let read = |source| SecretError::Read { path: path.to_path_buf(), source };
    // One handle for the check and the read (fstat, not stat): the file whose mode was
    // checked is the file that is read, even if the path is swapped in between.
    let mut file = std::fs::File::open(path).map_err(read)?;
    let meta = file.metadata().map_err(read)?;
    if !private_enough(&meta) {
        let mode = meta.permissions().mode() & 0o777;
        return Err(SecretError::Loose { path: path.to_path_buf(), mode });
    }
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(read)?;
    // The parse error of a secrets file could quote a value: report only where it is.
    let mut table: toml::Table = toml::from_str(&text).map_err(|e| {
        let line = e.span().map(|s| crate::text::line_of(&text, s.start));
        SecretError::NotToml { path: path.to_path_buf(), line: line.unwrap_or(0) }
    })?;
    let (path, key) = (path.to_path_buf(), key.to_string());
    match table.remove(&key) {
        Some(toml::Value::String(v)) if !v.is_empty() => {
            let value = Secret::new(v);
            match header_safe(value.expose()) {
                true => Ok(Loaded { value, version: None }),
                false => Err(SecretError::Unusable { path, key }),
            }
        }
        Some(_) => Err(SecretError::NotAString { path, key }),
        None => Err(SecretError::NoKey { path, key }),
    }
}

/// Whether a key file is kept to keyward: nobody outside its owner and group may touch it,
/// its group may not write it, and a group may read it only when that group is keyward's own
/// (its effective or a supplementary group). Kubernetes mounts a Secret for a non-root pod as
/// root:fsGroup 0440, fsGroup being the pod's own group: that file is private to the pod, and
/// updated in place when the Secret changes (a rotated forward CA is then reloaded live).
pub fn private_enough(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    let mode = meta.permissions().mode();
    if mode & 0o027 != 0 {
        return false;
    }
    if mode & 0o040 == 0 {
        return true;
    }
    let gid = meta.gid();
    rustix::process::getegid().as_raw() == gid
        || rustix::process::getgroups().is_ok_and(|g| g.iter().any(|x| x.as_raw() == gid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_a_header_cannot_carry_fails_the_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.toml");
        std::fs::write(&path, "stripe = \"sk_test_canary2\\n\"\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = read_secret_file(&path, "stripe").err().unwrap().to_string();
        assert!(e.contains("key `stripe` has whitespace at its ends") && !e.contains("canary"), "{e}");
    }

    #[test]
    fn file_source_refuses_loose_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.toml");
        std::fs::write(&path, "stripe = \"sk_test_canary\"\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = read_secret_file(&path, "stripe").unwrap_err().to_string();
        assert!(err.contains("chmod 600") && !err.contains("canary"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_secret_file(&path, "stripe").unwrap().value.expose(), "sk_test_canary");
        let err = read_secret_file(&path, "other").unwrap_err().to_string();
        assert!(err.contains("no key `other`"), "{err}");
    }

    #[test]
    fn broken_secret_file_does_not_echo_values() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.toml");
        std::fs::write(&path, "stripe = \"sk_test_canary\nbroken").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let err = read_secret_file(&path, "stripe").unwrap_err().to_string();
        assert!(err.contains("not valid TOML") && !err.contains("canary"), "{err}");
    }

    #[test]
    fn a_key_file_may_be_read_by_keywards_own_group_only() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "k").unwrap();
        let ok = |mode: u32| {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            private_enough(&std::fs::metadata(&path).unwrap())
        };
        // As Kubernetes mounts a Secret with fsGroup: root:the pod's group, 0440.
        assert!(ok(0o600) && ok(0o400) && ok(0o440) && ok(0o640));
        assert!(!ok(0o644) && !ok(0o604) && !ok(0o660) && !ok(0o620));
        // The same mode with a group keyward is not in.
        let other = (1..60000).find(|g| {
            *g != rustix::process::getegid().as_raw()
                && !rustix::process::getgroups().unwrap().iter().any(|x| x.as_raw() == *g)
        });
        let uid = std::fs::metadata(&path).unwrap().uid();
        let g = other.expect("a group keyward is not in");
        // The tests run as root (the test command installs packages), which may give a file away.
        std::os::unix::fs::chown(&path, Some(uid), Some(g)).expect("chown to another group");
        assert!(!ok(0o440), "group {g} is not keyward's");
        assert!(ok(0o400));
    }
}
