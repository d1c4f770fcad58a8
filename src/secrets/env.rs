//! A secret from an environment variable.

use super::{LoadFuture, Loaded, Secret, SecretError, SecretSource, header_safe};

/// An environment variable.
#[derive(Debug)]
pub struct EnvSource {
    pub var: String,
}

impl SecretSource for EnvSource {
    fn load(&self) -> LoadFuture<'_> {
        Box::pin(async move { from_env(&self.var, std::env::var(&self.var).ok()) })
    }
}

fn from_env(var: &str, value: Option<String>) -> Result<Loaded, SecretError> {
    // The name as errors show it: a key pasted as the name (`var = "sk_live_…"`) is not quoted.
    let var = crate::text::shown(var);
    let Some(value) = value.map(Secret::new) else {
        return Err(SecretError::EnvUnset { var });
    };
    match value.expose() {
        v if v.trim().is_empty() => Err(SecretError::EnvEmpty { var }),
        v if !header_safe(v) => Err(SecretError::EnvUnusable { var }),
        _ => Ok(Loaded { value, version: None }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_a_header_cannot_carry_fail_the_load() {
        assert!(from_env("K", Some("sk_test_ok".into())).is_ok());
        for (value, error) in [
            (None, "K is not set"),
            (Some(" \n"), "K is empty"),
            (Some("sk_test_canary1\n"), "K has whitespace at its ends"),
            (Some(" sk_test_canary1"), "K has whitespace at its ends"),
            (Some("sk_test_\x01canary1"), "control characters"),
        ] {
            let e = from_env("sk_live_pastedcanary9876", value.map(String::from)).err().unwrap();
            assert!(!format!("{e:?}").contains("canary"), "{e:?}");
            let e = e.to_string();
            assert!(e.contains("sk_live_…9876") && !e.contains("canary"), "{e}");
            let e = from_env("K", value.map(String::from)).err().unwrap().to_string();
            assert!(e.contains(error) && !e.contains("canary"), "{e}");
        }
    }
}
