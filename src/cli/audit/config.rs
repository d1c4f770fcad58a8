//! `keyward audit config VERSION FILE…`: the configuration text a record was decided under,
//! from the log alone.

use std::path::PathBuf;
use std::process::ExitCode;

use keyward::audit::Kind;
use keyward::text::printable;

use super::{fail, read_all};

/// `config`: the text recorded for `version` (the latest record of it), exit 1 if none.
pub(super) fn config(version: &str, files: &[PathBuf], unverified: bool) -> ExitCode {
    let data = match read_all(files) {
        Ok(d) => d,
        Err(code) => return code,
    };
    let broken = match keyward::audit::verify::verify_all(&data) {
        Ok(chains) => chains.into_iter().find_map(|c| c.outcome.err().map(|b| b.to_string())),
        Err(b) => Some(b.to_string()),
    };
    match (broken, unverified) {
        (Some(b), false) => {
            return fail([
                format!("chain broken: {b}"),
                "the recorded configuration may have been altered: `--unverified` prints it all the same"
                    .into(),
            ]);
        }
        (Some(_), true) => {
            eprintln!("warning: the access log does not verify: this text may have been altered")
        }
        (None, _) => {}
    }
    let lines = data.iter().flat_map(|(_, b)| b.split(|&c| c == b'\n')).filter(|l| !l.is_empty());
    const KIND: &[u8] = br#""kind":"config""#;
    let found: Vec<keyward::audit::event::ConfigText> = lines
        .filter(|l| l.windows(KIND.len()).any(|w| w == KIND))
        .filter_map(|l| serde_json::from_slice::<keyward::audit::event::ConfigText>(l).ok())
        .filter(|c| c.links.kind == Kind::Config && &*c.config_version == version)
        .collect();
    let Some(last) = found.last() else {
        let v = keyward::text::escaped(version);
        return fail([format!(
            "no configuration text for version {v} in these files (kind = \"config\" records)"
        )]);
    };
    if found.iter().any(|c| c.config_sha256 != last.config_sha256) {
        let v = keyward::text::escaped(version);
        eprintln!("warning: version {v} was recorded with different texts; printing the latest");
    }
    let text = printable(&last.text);
    print!("{text}");
    if !text.ends_with('\n') {
        println!();
    }
    ExitCode::SUCCESS
}
