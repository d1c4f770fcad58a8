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
    // A lookalike (no valid checksum) and a placeholder are not reported; a binary file is.
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
    assert!(out.contains(&format!("blob.bin:1: keyward token kw_…{tail} (service")), "{out}");
    assert_eq!(
        out.lines().filter(|l| l.contains(": keyward token") || l.contains(": Stripe")).count(),
        4,
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
    assert!(code == 2 && out.contains("not scanned whole: ") && out.contains("missing"), "{out}");
}

/// `git -C dir ARGS`' output, trimmed.
fn git_out(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git").arg("-C").arg(dir).args(args).output().unwrap();
    assert!(out.status.success(), "git {args:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn b64(bytes: &[u8], url_safe: bool) -> String {
    use base64::Engine;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE};
    if url_safe { URL_SAFE.encode(bytes) } else { STANDARD.encode(bytes) }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

fn utf16le(text: &str) -> Vec<u8> {
    text.encode_utf16().flat_map(u16::to_le_bytes).collect()
}

const LIVE: &str = "sk_live_4eC39HqLyjWDarjtT1zdp7dc";

fn token() -> String {
    keyward::policy::token_format::with_checksum("h7Rk2QmZ0pLw9XcV3bN8aT5yUe1sFgJdK4oI6rWqEzM")
}

/// Each way a token hid from the scan before, as a file: the scan's exit code, and the line it
/// now prints for it.
#[test]
fn token_scan_finds_what_it_missed() {
    let token = token();
    let kw = format!("kw_…{}", &token[token.len() - 4..]);
    let (head, tail) = token.split_at(40);
    let json = format!("{{\"token\": \"{token}\"}}");
    // `?>` encode to `/` and `+` in the standard alphabet: `_` and `-` in the URL-safe one.
    let url_safe = b64(format!("??>>{json}").as_bytes(), true);
    assert!(url_safe.contains(['_', '-']), "{url_safe}");
    let cases: Vec<(&str, Vec<u8>, String)> = vec![
        ("a.json", format!("{{\"a\": \"x\\n{token}\\tb\"}}").into(), format!("a.json:1: keyward token {kw}")),
        ("q.url", format!("https://h/?token%3D{token}%26x=1").into(), format!("q.url:1: keyward token {kw}")),
        (
            "p.url",
            format!("t={}", token.replacen('_', "%5F", 1)).into(),
            format!("p.url:1: keyward token {kw} [escaped]"),
        ),
        ("before.txt", format!("xkw_x{token}").into(), format!("before.txt:1: keyward token {kw}")),
        ("after.txt", format!("{token}abc").into(), format!("after.txt:1: keyward token {kw}")),
        ("stripe.txt", format!("key=x{LIVE}").into(), "stripe.txt:1: Stripe key sk_live_…p7dc".into()),
        (
            "b64.yaml",
            format!("a: 1\nsecret: {}\n", b64(json.as_bytes(), false)).into(),
            format!("b64.yaml:2: keyward token {kw} [base64]"),
        ),
        ("url.txt", url_safe.into(), format!("url.txt:1: keyward token {kw} [base64]")),
        (
            "wrapped.env",
            format!("T={head}\n{tail}\n").into(),
            format!("wrapped.env:1: keyward token {kw} [split over lines]"),
        ),
        (
            "cont.sh",
            format!("export T=\\\n{head}\\\n  {tail}\n").into(),
            format!("cont.sh:2: keyward token {kw} [split over lines]"),
        ),
        (
            "bom.txt",
            [&[0xff, 0xfe][..], &utf16le(&format!("é\r\n{token}"))].concat(),
            format!("bom.txt:2: keyward token {kw} [UTF-16]"),
        ),
        ("nobom.txt", utf16le(&format!("t = {token}")), format!("nobom.txt:1: keyward token {kw} [UTF-16]")),
        (
            "core.bin",
            [&[0u8, 1, 2, 0][..], token.as_bytes(), &[0xff; 16]].concat(),
            format!("core.bin:1: keyward token {kw}"),
        ),
        (
            "app.log.gz",
            gzip(format!("{}{token}\n", "request ok\n".repeat(40)).as_bytes()),
            format!("app.log.gz:41: keyward token {kw} [gzip]"),
        ),
        (
            "release.b64",
            b64(&gzip(format!("{}{json}", "{\"ok\": 1}\n".repeat(20)).as_bytes()), false).into(),
            format!("release.b64:1: keyward token {kw} [base64, gzip]"),
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes, line) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let (code, out) = keyward(&["token", "scan", path.to_str().unwrap()]);
        let shown = out.lines().find(|l| l.contains(": keyward token") || l.contains(": Stripe"));
        assert_eq!((code, shown), (1, Some(&*format!("{}/{line}", dir.path().display()))), "{name}:\n{out}");
        assert!(!out.contains(&token) && !out.contains(LIVE), "a whole secret printed:\n{out}");
    }
}

/// Symlinks, the size cap, and names holding control characters.
#[test]
fn token_scan_follows_links_given_names_what_it_cannot_read_whole_and_escapes_names() {
    let token = token();
    let kw = format!("kw_…{}", &token[token.len() - 4..]);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let outside = d.join("outside.env");
    std::fs::write(&outside, format!("T={token}\n")).unwrap();
    let tree = d.join("tree");
    std::fs::create_dir(&tree).unwrap();
    std::os::unix::fs::symlink(&outside, d.join("link.env")).unwrap();
    // Inside a walk a symlinked folder is not entered (here a loop): the file is found once.
    std::os::unix::fs::symlink(&tree, tree.join("loop")).unwrap();
    std::fs::write(tree.join("a\x1b[2J.env"), format!("T={token}\n")).unwrap();
    let s = |p: &Path| p.to_str().unwrap().to_string();

    let (code, out) = keyward(&["token", "scan", &s(&d.join("link.env"))]);
    assert!(code == 1 && out.contains(&format!("link.env:1: keyward token {kw}")), "a link given:\n{out}");
    let (code, out) = keyward(&["token", "scan", &s(&tree)]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("a\\x1b[2J.env:1: keyward token {kw}")), "escaped:\n{out}");
    assert_eq!(out.matches("keyward token").count(), 1, "{out}");
    assert!(!out.contains('\x1b'), "{out}");

    // Past --max-bytes: named, and exit 2 when nothing was found in the part read.
    let big = d.join("big.log");
    std::fs::write(&big, format!("{}\n{token}\n", " ".repeat(5000))).unwrap();
    let (code, out) = keyward(&["token", "scan", "--max-bytes", "4096", &s(&big)]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("not scanned whole: ") && out.contains("big.log: larger than --max-bytes"), "{out}");
    assert!(
        out.contains("no keyward token or Stripe key found in what was scanned, but 1 not scanned whole"),
        "{out}"
    );
    std::fs::write(&big, format!("{token}\n{}\n", " ".repeat(5000))).unwrap();
    let (code, out) = keyward(&["token", "scan", "--max-bytes", "4096", &s(&big)]);
    assert!(code == 1 && out.contains("big.log: larger than --max-bytes"), "found wins, still named:\n{out}");
    assert!(out.contains(&format!("big.log:1: keyward token {kw}")), "{out}");
    let gz = d.join("big.gz");
    std::fs::write(&gz, gzip(format!("{}\n{token}\n", " ".repeat(5000)).as_bytes())).unwrap();
    let (code, out) = keyward(&["token", "scan", "--max-bytes", "4096", &s(&gz)]);
    assert!(code == 2 && out.contains("big.gz: gzip: decompresses to more than --max-bytes"), "{out}");
}

/// `--git`: content only in a merge's resolution, a stash (an older one too, and its untracked
/// files), a `-diff` file, and the history of a repository given by a subfolder.
#[test]
fn token_scan_git_reads_every_object_of_the_repository() {
    let token = token();
    let kw = format!("kw_…{}", &token[token.len() - 4..]);
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(repo.join("sub")).unwrap();
    let write = |name: &str, text: &str| std::fs::write(repo.join(name), text).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    write("sub/keep", "x\n");
    write("merged.txt", "base\n");
    write(".gitattributes", "*.secret -diff\n");
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-qm", "start"]);
    // A merge whose resolution alone brings the token: no diff of `git log -p` shows it.
    git(&repo, &["checkout", "-qb", "side"]);
    write("side.txt", "side\n");
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-qm", "side"]);
    git(&repo, &["checkout", "-q", "main"]);
    git(&repo, &["merge", "-q", "--no-ff", "--no-commit", "side"]);
    write("merged.txt", &format!("T={token}\n"));
    git(&repo, &["commit", "-qam", "merge"]);
    let merge = git_out(&repo, &["rev-parse", "--short=12", "HEAD"]);
    write("merged.txt", "base\n");
    // A file git shows no diff of.
    write("vault.secret", &format!("{token}\n"));
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-qm", "clean"]);
    let secret_commit = git_out(&repo, &["rev-parse", "--short=12", "HEAD"]);
    std::fs::remove_file(repo.join("vault.secret")).unwrap();
    git(&repo, &["commit", "-qam", "rm"]);
    // Stashes: an older one (only in refs/stash's reflog) with an untracked file, then another.
    write("untracked.env", &format!("K={LIVE}\n"));
    write("sub/keep", &format!("x\nT={token}\n"));
    git(&repo, &["stash", "-q", "-u"]);
    write("sub/keep", "y\n");
    git(&repo, &["stash", "-q"]);
    let old_stash = git_out(&repo, &["rev-parse", "--short=12", "stash@{1}"]);
    let untracked = git_out(&repo, &["rev-parse", "--short=12", "stash@{1}^3"]);

    let sub = repo.join("sub");
    let (code, out) = keyward(&["token", "scan", sub.to_str().unwrap()]);
    assert_eq!(code, 0, "the tree is clean: {out}");
    let (code, out) = keyward(&["token", "scan", "--git", sub.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    for line in [
        format!("git:{merge}:merged.txt:1: keyward token {kw}"),
        format!("git:{secret_commit}:vault.secret:1: keyward token {kw}"),
        format!("git:{old_stash}:sub/keep:2: keyward token {kw}"),
        format!("git:{untracked}:untracked.env:1: Stripe key sk_live_…p7dc"),
    ] {
        assert!(out.lines().any(|l| l == line), "{line} in:\n{out}");
    }
    assert!(!out.contains(&token) && !out.contains(LIVE), "{out}");
    // A path in no repository: named, exit 2.
    let (code, out) = keyward(&["token", "scan", "--git", dir.path().to_str().unwrap()]);
    assert!(code == 2 && out.contains("(--git): git rev-parse: "), "{out}");
}

/// A few MB of random text in every alphabet a token or its encodings use, and lookalikes
/// (wrong checksums, placeholders), glued, broken over lines, in base64, gzip and UTF-16:
/// nothing found.
#[test]
fn token_scan_finds_nothing_in_random_text_and_lookalikes() {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        // xorshift64*: the same corpus every run.
        seed ^= seed >> 12;
        seed ^= seed << 25;
        seed ^= seed >> 27;
        seed.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    let base62 = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let base64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/-_";
    let printable: Vec<u8> = (b' '..=b'~').collect();
    let mut text = |alphabet: &[u8], len: usize| -> String {
        (0..len).map(|_| alphabet[(next() % alphabet.len() as u64) as usize] as char).collect()
    };
    let mut corpus = String::new();
    for i in 0..12_000 {
        for alphabet in [&base62[..], base64, &printable] {
            corpus.push_str(&text(alphabet, 76));
            corpus.push('\n');
        }
        if i % 50 == 0 {
            let mut wrong = format!("kw_{}", text(base62, 49));
            while keyward::policy::token_format::checksum_ok(&wrong) {
                wrong = format!("kw_{}", text(base62, 49));
            }
            let glued = format!("x{wrong}abc kw_{} sk_test_... sk_test_short rk_live_", text(base62, 43));
            corpus.push_str(&format!("{glued} {}\n{wrong}\n", b64(wrong.as_bytes(), false)));
            corpus.push_str(&format!("T={}\n{}\nwhsec_{}\n", &wrong[..30], &wrong[30..], text(base62, 15)));
        }
    }
    assert!(corpus.len() > 2_500_000);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("corpus.txt"), &corpus).unwrap();
    std::fs::write(d.join("corpus.gz"), gzip(&corpus.as_bytes()[..200_000])).unwrap();
    std::fs::write(d.join("corpus.utf16"), utf16le(&corpus[..200_000])).unwrap();
    let binary: Vec<u8> = (0..500_000).map(|_| next() as u8).collect();
    std::fs::write(d.join("random.bin"), binary).unwrap();
    let started = std::time::Instant::now();
    let (code, out) = keyward(&["token", "scan", d.to_str().unwrap()]);
    assert_eq!((code, out.trim()), (0, "no keyward token or Stripe key found"));
    eprintln!("scanned {} MB in {:?}", corpus.len() / 1_000_000, started.elapsed());
}
