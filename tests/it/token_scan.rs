//! `keyward token scan`: finds keyward tokens by their checksum (and older ones by hash with
//! `--config`) and Stripe keys, in files, directories and git history; never prints one
//! whole; exits 1 when it finds any.

use std::path::Path;
use std::process::Command;

fn keyward(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_keyward")).args(args).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

fn git(dir: &Path, args: &[&str]) {
    let ok = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "commit.gpgsign=false"])
        .args(args)
        .output()
        .unwrap()
        .status
        .success();
    assert!(ok, "git {args:?}");
}

#[test]
fn scan_finds_leaks_names_their_owner_and_shows_no_whole_secret() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let minted: serde_json::Value =
        serde_json::from_str(&keyward(&["token", "new", "billing", "--json", "--config", "/nonexistent"]).1)
            .unwrap();
    let token = minted["token"].as_str().unwrap();
    let config = d.join("keyward.toml");
    std::fs::write(
        &config,
        format!("[[service]]\nname = \"billing\"\n{}", minted["snippet"].as_str().unwrap()),
    )
    .unwrap();
    let repo = d.join("repo");
    std::fs::create_dir_all(repo.join("deploy")).unwrap();
    let live = format!("sk_live_{}", "4eC39HqLyjWDarjtT1zdp7dc");
    std::fs::write(repo.join("app.env"), format!("STRIPE={live}\nKEYWARD_TOKEN={token}\n")).unwrap();
    std::fs::write(repo.join("deploy/values.yaml"), format!("webhook: whsec_{}\n", "x".repeat(32))).unwrap();
    // A lookalike (no valid checksum), a placeholder, and a binary file: none is reported.
    std::fs::write(repo.join("README"), format!("kw_{} sk_test_REPLACE_ME\n", "A".repeat(49))).unwrap();
    std::fs::write(repo.join("blob.bin"), [b"\0\0".as_slice(), token.as_bytes()].concat()).unwrap();
    let repo_s = repo.to_str().unwrap();
    let (code, out) = keyward(&["token", "scan", repo_s, "--config", config.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    let tail = &token[token.len() - 4..];
    assert!(
        out.contains(&format!(
            "app.env:2: keyward token kw_…{tail} (service \"billing\", token \"{}\")",
            minted["id"].as_str().unwrap()
        )),
        "{out}"
    );
    assert!(out.contains("app.env:1: Stripe key sk_live_…p7dc"), "{out}");
    assert!(out.contains("values.yaml:1: Stripe webhook secret whsec_…xxxx"), "{out}");
    assert_eq!(
        out.lines().filter(|l| l.contains(": keyward token") || l.contains(": Stripe")).count(),
        3,
        "{out}"
    );
    assert!(!out.contains(token) && !out.contains(&live), "a whole secret printed:\n{out}");

    // Removed from the tree but still in history: only --git finds it.
    std::fs::remove_file(repo.join("blob.bin")).unwrap();
    git(&repo, &["init", "-q"]);
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-qm", "leak"]);
    std::fs::write(repo.join("app.env"), "STRIPE=from-the-vault\n").unwrap();
    std::fs::remove_file(repo.join("deploy/values.yaml")).unwrap();
    git(&repo, &["commit", "-qam", "clean up"]);
    let (code, out) = keyward(&["token", "scan", repo_s]);
    assert_eq!(code, 0, "the tree is clean: {out}");
    let (code, out) = keyward(&["token", "scan", "--git", repo_s]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.lines().any(|l| l.starts_with("git:") && l.contains(":app.env:") && l.contains("keyward token")),
        "{out}"
    );
    assert!(!out.contains(token) && !out.contains(&live), "{out}");
    let (code, out) = keyward(&["token", "scan", d.join("missing").to_str().unwrap()]);
    assert!(code == 1 && out.contains("error:"), "{out}");
}
