//! Evidence an auditor can sign: signed checkpoints find the forgeries an unkeyed chain
//! cannot (a log re-hashed after an edit, cut at its end, restarted from genesis, an
//! instance made up, a checkpoint signed by another key, the published checkpoints edited),
//! and every request answered is accounted for by the records, own or folded.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use base64::Engine;
use keyward::audit::checkpoint::{Checkpoint, Signer};
use keyward::audit::{GENESIS, line_hash};

use crate::common::*;

const TOKEN: &str = "kw_evidence_token_0123456789abcdefWXYZ";

fn keyward(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_keyward")).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// `keyward certs audit-key --dir DIR`: the key pair's files, and its id.
fn audit_key(dir: &Path) -> (PathBuf, PathBuf, String) {
    let (ok, out) = keyward(&["certs", "audit-key", "--dir", dir.to_str().unwrap()]);
    assert!(ok, "{out}");
    let id = out.lines().find_map(|l| l.strip_prefix("key id ")).unwrap().to_string();
    (dir.join("audit-signing.key"), dir.join("audit-signing.pub"), id)
}

/// A harness whose checkpoints are signed by the key at `key` and published to
/// `checkpoints`, every `interval`.
fn signed(h: Harness, key: &Path, checkpoints: &Path, interval: &str) -> Harness {
    let dir = key.parent().unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(std::fs::read(key).unwrap());
    let file = dir.join("audit-key-secret.toml");
    std::fs::write(&file, format!("audit = {b64:?}\n")).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    h.top(&format!("[secret.audit-key]\nsource = \"file\"\npath = {:?}\nkey = \"audit\"\n", file.display()))
        .audit(&format!(
            "signing_key_secret = \"audit-key\"\ncheckpoint_interval = {interval:?}\ncheckpoints = {:?}",
            checkpoints.display()
        ))
}

fn verify(files: &[&Path], extra: &[&str]) -> (bool, String) {
    let mut args = vec!["audit", "verify"];
    args.extend(files.iter().map(|f| f.to_str().unwrap()));
    args.extend(extra);
    keyward(&args)
}

fn lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p).unwrap().lines().map(String::from).collect()
}

fn write(dir: &Path, name: &str, lines: &[String]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, lines.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    p
}

/// Set a JSON line's string field `key` to `value` (the line's own bytes otherwise kept).
fn set(line: &str, key: &str, value: &str) -> String {
    let at =
        line.find(&format!("\"{key}\":\"")).unwrap_or_else(|| panic!("no {key} in {line}")) + key.len() + 4;
    let end = at + line[at..].find('"').unwrap();
    format!("{}{value}{}", &line[..at], &line[end..])
}

/// What a forger does after editing line `from`: re-link every line after it, checkpoints'
/// heads too, and (with `sign`) re-sign the checkpoints with its own key.
fn rehash(lines: &mut [String], from: usize, sign: Option<&Signer>) {
    for i in from.max(1)..lines.len() {
        let prev = line_hash(lines[i - 1].as_bytes());
        lines[i] = set(&lines[i], "prev", &prev);
        if lines[i].contains("\"kind\":\"checkpoint\"") {
            lines[i] = set(&lines[i], "head", &prev);
            if let Some(signer) = sign {
                let mut cp: Checkpoint = serde_json::from_str(&lines[i]).unwrap();
                cp.sign(signer);
                lines[i] = serde_json::to_string(&cp).unwrap();
            }
        }
    }
}

/// The outputs of `audit verify` for each forgery, kept for the note when
/// `KEYWARD_EVIDENCE_OUT` names a file.
fn keep(what: &str, out: &str) {
    if let Ok(path) = std::env::var("KEYWARD_EVIDENCE_OUT") {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
        writeln!(f, "## {what}\n{out}").unwrap();
    }
}

#[tokio::test]
async fn signed_checkpoints_find_every_forgery_of_a_real_log() {
    let keys = tempfile::tempdir().unwrap();
    let (key, public, id) = audit_key(keys.path());
    let published = keys.path().join("checkpoints.jsonl");
    let kw = signed(
        Harness::new().service(Svc::new("billing").token("b1", TOKEN).scope("charge", "read")),
        &key,
        &published,
        "300ms",
    )
    .start()
    .await;
    for i in 0..12 {
        let path = if i % 3 == 0 { "/v1/customers" } else { "/v1/charges" };
        kw.get(path, TOKEN).await;
        if i == 5 {
            // A checkpoint in the middle of the traffic, not only at shutdown.
            let n = kw.all_records(6).await.len();
            let mut seen = kw.all_records(n + 1).await;
            while !seen.iter().any(|r| r["kind"] == "checkpoint") {
                seen = kw.all_records(seen.len() + 1).await;
            }
        }
    }
    kw.records(12).await;
    let dir = kw.stop().await;
    let log = dir.path().join("audit.jsonl");
    let original = lines(&log);
    let pub_s = public.to_str().unwrap();
    let cps_s = published.to_str().unwrap();
    let keyed = ["--key", pub_s, "--checkpoints", cps_s];

    let cps: Vec<serde_json::Value> = original
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["kind"] == "checkpoint")
        .collect();
    assert!(cps.len() >= 2, "a checkpoint during the calls and one at shutdown");
    assert!(cps.iter().all(|c| c["key_id"] == id.as_str() && c["signature"].as_str().unwrap().len() == 128));
    let last: serde_json::Value = serde_json::from_str(original.last().unwrap()).unwrap();
    assert_eq!((last["kind"].as_str(), last["answered"].as_u64()), (Some("checkpoint"), Some(12)), "{last}");
    assert_eq!(
        lines(&published),
        original.iter().filter(|l| l.contains("\"kind\":\"checkpoint\"")).cloned().collect::<Vec<_>>()
    );

    let (ok, out) = verify(&[&log], &keyed);
    keep("the log as written", &out);
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!(
            "signed: {} checkpoint(s), through seq {}; unsigned tail: 0 records",
            cps.len(),
            original.len()
        )),
        "{out}"
    );
    assert!(out.contains("accounted: at each of"), "{out}");
    let (ok, out) = verify(&[&log], &[]);
    assert!(ok && out.contains("no --key given"), "{out}");

    let d = dir.path();
    // A denial edited to an allow, and every line after re-hashed: the unkeyed chain verifies.
    let mut rehashed = original.clone();
    let denied = rehashed.iter().position(|l| l.contains("\"decision\":\"deny\"")).unwrap();
    rehashed[denied] = rehashed[denied].replace("\"decision\":\"deny\"", "\"decision\":\"allow\"");
    rehash(&mut rehashed, denied + 1, None);
    let forged = write(d, "rehashed.jsonl", &rehashed);
    assert!(verify(&[&forged], &[]).0, "without a key a re-hashed log verifies");
    // A line removed and the chain re-hashed: the checkpoint's count of requests tells, even
    // unkeyed; and the signatures tell, with the key.
    let mut removed = original.clone();
    let gone = 4;
    removed.remove(gone);
    for (i, l) in removed.iter_mut().enumerate().skip(gone) {
        *l = l.replacen(&format!("\"seq\":{}", i + 2), &format!("\"seq\":{}", i + 1), 1);
    }
    rehash(&mut removed, gone, None);
    let removed = write(d, "removed.jsonl", &removed);

    let (other, _, _) = {
        let o = tempfile::tempdir().unwrap();
        let (k, p, i) = audit_key(o.path());
        let signer = Signer::from_secret(
            &base64::engine::general_purpose::STANDARD.encode(std::fs::read(&k).unwrap()),
        )
        .unwrap();
        (signer, p, i)
    };
    let mut resigned = rehashed.clone();
    rehash(&mut resigned, denied + 1, Some(&other));
    let resigned = write(d, "resigned.jsonl", &resigned);

    let n = original.len();
    let cut1 = write(d, "cut1.jsonl", &original[..n - 1]);
    let cut5 = write(d, "cut5.jsonl", &original[..n - 5]);
    // A chain begun anew from genesis: the forger keeps the calls it likes, re-numbered and
    // re-linked from the genesis hash, and leaves out the checkpoints it cannot sign.
    let mut restarted: Vec<String> =
        original.iter().filter(|l| l.contains("\"kind\":\"request\"")).skip(3).cloned().collect();
    for (i, l) in restarted.iter_mut().enumerate() {
        let seq = serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"].as_u64().unwrap();
        *l = l.replacen(&format!("\"seq\":{seq},"), &format!("\"seq\":{},", i + 1), 1);
    }
    restarted[0] = set(&restarted[0], "prev", GENESIS);
    rehash(&mut restarted, 1, None);
    assert!(verify(&[&write(d, "restarted-plain.jsonl", &restarted)], &[]).0, "unkeyed, it verifies");
    let restarted = write(d, "restarted.jsonl", &restarted);
    // Three records of an instance that does not exist, from the genesis hash.
    let mut fake = original.clone();
    let mut prev = GENESIS.to_string();
    for seq in 1..=3 {
        let mut l = original[1].replacen("\"seq\":2,", &format!("\"seq\":{seq},"), 1);
        l = set(&set(&l, "prev", &prev), "instance", "rt3b-b");
        prev = line_hash(l.as_bytes());
        fake.push(l);
    }
    let fake = write(d, "fake-instance.jsonl", &fake);
    // The published checkpoints edited: a count raised.
    let mut edited_cps = lines(&published);
    edited_cps[0] = edited_cps[0].replacen("\"answered\":", "\"answered\":1", 1);
    let edited_cps = write(d, "checkpoints-edited.jsonl", &edited_cps);

    let cases: Vec<(&str, Vec<&Path>, Vec<&str>, &str)> = vec![
        ("re-hashed after an edit", vec![&forged], keyed.to_vec(), "does not verify under key"),
        ("a record removed, re-hashed (no key)", vec![&removed], vec![], "accounts for"),
        ("a checkpoint signed by another key", vec![&resigned], keyed.to_vec(), "not among the keys given"),
        ("cut by one record", vec![&cut1], keyed.to_vec(), "truncated: the log ends at seq"),
        ("cut by five records", vec![&cut5], keyed.to_vec(), "truncated: the log ends at seq"),
        ("restarted from genesis", vec![&restarted], keyed.to_vec(), "no signed checkpoint"),
        ("a made-up instance", vec![&fake], keyed.to_vec(), "rt3b-b: no signed checkpoint"),
        (
            "the checkpoints file edited",
            vec![&log],
            vec!["--key", pub_s, "--checkpoints", edited_cps.to_str().unwrap()],
            "signature does not verify",
        ),
    ];
    for (what, files, args, want) in cases {
        let (ok, out) = verify(&files, &args);
        keep(what, &out);
        assert!(!ok, "{what}: verified:\n{out}");
        assert!(out.contains(want), "{what}: wanted {want:?}:\n{out}");
    }

    // The report and scope take the same proof: the signed log is reported with its
    // checkpoints, a forged one refused (and without --key, the re-hashed one is not).
    let report = |file: &Path, extra: &[&str]| {
        let mut args = vec!["audit", "report", file.to_str().unwrap()];
        args.extend(extra);
        keyward(&args)
    };
    let (ok, out) = report(&log, &keyed);
    assert!(ok, "{out}");
    assert!(out.contains(&format!("checkpoints: {} verified under key(s) {id}", cps.len())), "{out}");
    assert!(out.contains("unsigned tail: 0 records"), "{out}");
    let (ok, out) = report(&forged, &keyed);
    assert!(!ok && out.contains("the log was rewritten"), "{out}");
    assert!(report(&forged, &[]).0, "unkeyed, the re-hashed log passes for intact");
    let (ok, out) = keyward(&["audit", "scope", forged.to_str().unwrap(), "--key", pub_s]);
    assert!(!ok && out.contains("forged"), "{out}");
}

#[tokio::test]
async fn the_newest_file_removed_is_found_by_the_published_checkpoints() {
    let keys = tempfile::tempdir().unwrap();
    let (key, public, _) = audit_key(keys.path());
    let published = keys.path().join("checkpoints.jsonl");
    let kw = signed(
        Harness::new().service(Svc::new("billing").token("b1", TOKEN).scope("charge", "read")),
        &key,
        &published,
        "10s",
    )
    .audit("max_bytes = 3000\nkeep = 100")
    .start()
    .await;
    for _ in 0..20 {
        kw.get("/v1/charges", TOKEN).await;
    }
    kw.records(1).await;
    let dir = kw.stop().await;
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_str().unwrap().starts_with("audit.jsonl."))
        .collect();
    files
        .sort_by_key(|p| std::cmp::Reverse(p.extension().unwrap().to_str().unwrap().parse::<u32>().unwrap()));
    assert!(files.len() >= 2, "rotated");
    let keyed = ["--key", public.to_str().unwrap(), "--checkpoints", published.to_str().unwrap()];
    files.push(dir.path().join("audit.jsonl"));
    let all: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    let (ok, out) = verify(&all, &keyed);
    assert!(ok, "{out}");
    let (ok, out) = verify(&all[..all.len() - 1], &keyed);
    keep("the newest file removed", &out);
    assert!(!ok && out.contains("truncated"), "{out}");
}

/// The red team's mix: 300 allowed and 100 denied calls from 8 threads, with a recording
/// budget so low that most refusals are folded. Every one is accounted for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_answered_is_in_the_log_own_or_folded() {
    let keys = tempfile::tempdir().unwrap();
    let (key, public, _) = audit_key(keys.path());
    let published = keys.path().join("checkpoints.jsonl");
    let kw = Arc::new(
        signed(
            Harness::new().service(Svc::new("billing").token("b1", TOKEN).scope("charge", "read")),
            &key,
            &published,
            "200ms",
        )
        .audit("refusals_per_ip = 5\nrefusals_per_second = 5\nfold_interval = \"100ms\"")
        .start()
        .await,
    );
    let mut tasks = Vec::new();
    for t in 0..8 {
        let kw = kw.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = kw.connect().await;
            let mut statuses = Vec::new();
            for i in 0..50 {
                // 300 allowed, 100 denied (no customer grant).
                let path = if (t * 50 + i) % 4 == 0 { "/v1/customers" } else { "/v1/charges" };
                statuses.push(conn.send(req("GET", path, TOKEN, "")).await.unwrap().status);
            }
            statuses
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.extend(t.await.unwrap());
    }
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 300);
    assert_eq!(statuses.iter().filter(|s| **s == 403).count(), 100);
    let kw = Arc::try_unwrap(kw).ok().unwrap();
    let dir = kw.stop().await;
    let log = dir.path().join("audit.jsonl");
    let recs: Vec<serde_json::Value> = lines(&log).iter().map(|l| serde_json::from_str(l).unwrap()).collect();
    let own = recs.iter().filter(|r| r["kind"] == "request").count() as u64;
    let folded: u64 =
        recs.iter().filter(|r| r["kind"] == "refusals").map(|r| r["count"].as_u64().unwrap()).sum();
    assert!(folded > 0, "the budget folded some refusals");
    assert_eq!(own + folded, 400, "{own} own + {folded} folded");
    let last = recs.last().unwrap();
    assert_eq!((last["kind"].as_str(), last["answered"].as_u64()), (Some("checkpoint"), Some(400)));
    let (ok, out) =
        verify(&[&log], &["--key", public.to_str().unwrap(), "--checkpoints", published.to_str().unwrap()]);
    keep("400 calls, 100 denied, most refusals folded", &out);
    assert!(ok && out.contains("accounted: at each of"), "{out}");
    let (ok, out) = keyward(&["audit", "report", log.to_str().unwrap()]);
    assert!(ok && out.contains("accounted: 400 requests answered, each in the log (own or folded)"), "{out}");
}
