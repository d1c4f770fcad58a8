//! `[admin]`: the admin tokens that may change a running keyward, and where suspensions are
//! kept.

use std::path::Path;

use super::errors::Errors;
use super::file::FileConfig;
use crate::policy::identity::TokenHash;

pub use crate::control::snapshot::{AdminSettings, AdminToken};

pub fn check(
    file: &FileConfig,
    service_tokens: &foldhash::HashMap<TokenHash, crate::policy::TokenRef>,
    errs: &mut Errors,
) -> AdminSettings {
    let mut tokens: Vec<AdminToken> = Vec::new();
    for (i, t) in file.admin.token.iter().enumerate() {
        let key = format!("admin.token[{i}]");
        if tokens.iter().any(|o| *o.id == **t.id.get_ref()) {
            errs.at(Some(t.id.span()), format!("{key}.id"), "admin token id is used twice");
        }
        let mut hash = [0u8; 32];
        let hex = t.sha256.get_ref();
        if hex.len() != 64 || hex::decode_to_slice(hex.to_ascii_lowercase(), &mut hash).is_err() {
            errs.at(
                Some(t.sha256.span()),
                format!("{key}.sha256"),
                "must be 64 hex digits (the SHA-256 of the token; see `keyward token new --admin ID`)",
            );
        } else if service_tokens.contains_key(&hash) || tokens.iter().any(|o| o.hash == hash) {
            errs.at(
                Some(t.sha256.span()),
                format!("{key}.sha256"),
                "the same token hash is configured twice",
            );
        }
        let expires = super::services::timestamp(t.expires.as_ref(), &format!("{key}.expires"), errs);
        tokens.push(AdminToken { id: t.id.get_ref().as_str().into(), hash, expires });
    }
    let state_file = file.admin.state_file.clone().or_else(|| {
        (file.audit.path != "-").then(|| {
            let dir = Path::new(&file.audit.path).parent().unwrap_or(Path::new(""));
            dir.join("keyward-state.json")
        })
    });
    AdminSettings { tokens, state_file, tls: file.server.admin_tls }
}
