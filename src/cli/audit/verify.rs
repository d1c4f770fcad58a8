//! `keyward audit verify` and `head`: each instance's chain, and with `--key` and
//! `--checkpoints` what its signed checkpoints prove.

use std::path::PathBuf;
use std::process::ExitCode;

use keyward::audit::checkpoint::PublicKey;
use keyward::audit::signed::Published;

use super::{Keys, fail, read_all, say};

/// The public keys and published checkpoints `keys` names, read.
pub(super) fn read_keys(keys: &Keys) -> Result<(Vec<PublicKey>, Option<Published>), ExitCode> {
    let read =
        |p: &PathBuf| std::fs::read(p).map_err(|e| fail([format!("cannot read {}: {e}", p.display())]));
    let mut public = Vec::new();
    for p in &keys.keys {
        let text = String::from_utf8(read(p)?).unwrap_or_default();
        public.push(PublicKey::from_pem(&text).map_err(|e| fail([format!("{}: {e}", p.display())]))?);
    }
    let published = match &keys.checkpoints {
        Some(p) => Some(
            Published::read(&p.display().to_string(), &read(p)?, &public)
                .map_err(|e| fail([format!("checkpoints forged: {e}")]))?,
        ),
        None => None,
    };
    Ok((public, published))
}

/// `verify`, or with `head_only` `head`: one line per instance; exit 1 if any chain is broken.
pub(super) fn verify(files: &[PathBuf], keys: &Keys, head_only: bool) -> ExitCode {
    let data = match read_all(files) {
        Ok(d) => d,
        Err(code) => return code,
    };
    let (public, published) = match read_keys(keys) {
        Ok(k) => k,
        Err(code) => return code,
    };
    let chains = match keyward::audit::verify::verify_all(&data) {
        Ok(c) => c,
        Err(b) => return fail([format!("chain broken: {b}")]),
    };
    let name = keyward::audit::signed::instance_name;
    let mut broken: Vec<String> = chains
        .iter()
        .filter_map(|c| c.outcome.as_ref().err().map(|b| format!("chain broken: {}: {b}", name(c))))
        .collect();
    let proof = keyward::audit::signed::prove(&chains, &public, published.as_ref());
    broken.extend(proof.problems.iter().map(|p| format!("{}: {}: {}", p.kind, p.instance, p.why)));
    let signed = proof.signed;
    if head_only {
        for c in &chains {
            if let Ok(v) = &c.outcome {
                say(format!("{} {} {}", name(c), v.last_seq, v.head));
            }
        }
        return if broken.is_empty() { ExitCode::SUCCESS } else { fail(broken) };
    }
    let records: u64 = chains.iter().filter_map(|c| c.outcome.as_ref().ok()).map(|v| v.records).sum();
    let (n, s) = (chains.len(), if chains.len() == 1 { "" } else { "s" });
    if broken.is_empty() {
        say(format!("OK: {n} instance{s}, {records} records"));
    }
    for c in &chains {
        if let Ok(v) = &c.outcome {
            let from = v.history();
            let from = match v.folded_records {
                0 => from,
                n => format!("{from}; {n} records fold {} refusals", v.folded_refusals),
            };
            let restarts = match v.restarts {
                0 => String::new(),
                r => format!("; {r} restart(s) began new chains from genesis"),
            };
            say(format!(
                "  {}: {} records, seq {}..{} ({from}{restarts}); head {}",
                name(c),
                v.records,
                v.first_seq,
                v.last_seq,
                v.head
            ));
            if let Some(s) = signed.get(&name(c)) {
                say(format!(
                    "    signed: {} checkpoint(s), through seq {}; unsigned tail: {} records",
                    s.checkpoints, s.signed_through, s.unsigned_tail
                ));
            }
            if v.accounted > 0 {
                say(format!(
                    "    accounted: at each of {} checkpoint(s), the requests answered match the records (own and folded)",
                    v.accounted
                ));
            }
        }
    }
    if broken.is_empty() && public.is_empty() {
        say("note: no --key given: a chain verifies, but cannot show that the whole log was not rewritten \
             (re-hashed after an edit, or cut at its end)"
            .into());
    }
    if broken.is_empty() { ExitCode::SUCCESS } else { fail(broken) }
}
