//! `--workspace`: a synthetic git repository of about 5,000 files and
//! 50 MB (made here, committed and packed like a fresh clone), copied into
//! a Debian guest (user network) by (w1) `vm workspace prepare` and by
//! (w2) `tar | ssh` through a warm ControlMaster; (w3) `vm run --rm -- true`
//! inside it is timed by `main`.

use super::stats::timed;
use banger_e2e::Env;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A small deterministic generator (xorshift64*): the same repository on
/// every run, with no dependency for it.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The synthetic repository (w1), (w2) and (w3) copy.
pub struct BigRepo {
    pub dir: PathBuf,
    /// Regular files under `dir`, .git included.
    pub files: usize,
    /// Their bytes.
    pub bytes: u64,
}

const TEXT_FILES: usize = 4_950;
const BLOBS: usize = 50;
const BLOB_BYTES: usize = 400 * 1024;

/// Runs git in `dir` with an identity, and no background gc that would
/// race the explicit one.
fn git(dir: &Path, args: &[&str]) {
    let st = Command::new("git")
        .args([
            "-c",
            "user.name=b",
            "-c",
            "user.email=b@b",
            "-c",
            "gc.auto=0",
        ])
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .status()
        .expect("run git");
    assert!(st.success(), "git {args:?} in {}", dir.display());
}

/// How many regular files there are under `dir`, and their bytes.
fn files_and_bytes(dir: &Path) -> (usize, u64) {
    let sizes: Vec<u64> = banger_e2e::files_under(dir)
        .iter()
        .filter_map(|p| std::fs::symlink_metadata(p).ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .collect();
    (sizes.len(), sizes.iter().sum())
}

/// Makes a git repository at `dir`: 4,950 source-like text files of
/// 0.2-3 KB, three directories deep, and 50 files of 400 KiB of random
/// (incompressible) bytes; committed, then packed like a fresh clone.
pub fn make_repo(dir: &Path) -> BigRepo {
    const WORDS: [&str; 12] = [
        "fn", "let", "match", "self", "return", "impl", "struct", "Result", "=", "{", "}", ";",
    ];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for n in 0..TEXT_FILES {
        let sub = dir.join(format!("src/m{}/p{}/q{}", n % 10, n / 10 % 10, n / 100 % 5));
        std::fs::create_dir_all(&sub).unwrap();
        let len = 200 + rng.below(2_800) as usize;
        let mut text = String::with_capacity(len + 100);
        while text.len() < len {
            text.push_str("    ");
            for _ in 0..2 + rng.below(8) {
                // Keywords and identifiers, so it compresses like code.
                match rng.below(3) {
                    0 => text.push_str(&format!("v{}", rng.below(100_000))),
                    _ => text.push_str(WORDS[rng.below(WORDS.len() as u64) as usize]),
                }
                text.push(' ');
            }
            text.push('\n');
        }
        std::fs::write(sub.join(format!("f{n}.rs")), text).unwrap();
    }
    let blobs = dir.join("assets/blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    for n in 0..BLOBS {
        let bytes: Vec<u8> = (0..BLOB_BYTES / 8)
            .flat_map(|_| rng.next().to_le_bytes())
            .collect();
        std::fs::write(blobs.join(format!("b{n}.bin")), bytes).unwrap();
    }
    git(dir, &["init", "-q"]);
    git(dir, &["add", "."]);
    git(dir, &["commit", "-qm", "bench"]);
    git(dir, &["gc", "-q"]);
    let (files, bytes) = files_and_bytes(dir);
    BigRepo {
        dir: dir.to_owned(),
        files,
        bytes,
    }
}

/// Wall times in ms of (w1) `vm workspace prepare` and (w2) `tar | ssh` of
/// `repo` into one Debian guest (user network), alternating, `runs` each.
pub fn workspace_vs_tar_ssh(env: &Env, repo: &BigRepo, runs: usize) -> (Vec<f64>, Vec<f64>) {
    let name = "ws";
    env.ok(&[
        "vm",
        "create",
        "--name",
        name,
        "--image",
        "debian",
        "--network",
        "user",
    ]);
    // Opens the ControlMaster (j) then goes through, at the path `vm ssh` uses.
    env.ok(&["vm", "ssh", name, "--", "true"]);
    let config = env.root.path().join("ssh_config");
    std::fs::write(&config, env.ok(&["vm", "ssh-config", name])).unwrap();
    let control = env.runtime_dir().join("ssh").join(name);
    let tar_ssh = format!(
        "tar -C {} -cf - . | ssh -F {} -o ControlMaster=auto -o ControlPath={} -o ControlPersist=60 {name} \
         'rm -rf /root/t && mkdir /root/t && tar -C /root/t -xf -'",
        repo.dir.display(),
        config.display(),
        control.display(),
    );
    let from = repo.dir.to_string_lossy();
    let (mut i, mut j) = (Vec::new(), Vec::new());
    for r in 0..runs {
        eprintln!("bench: workspace run {}/{runs}", r + 1);
        i.push(timed(|| {
            env.ok(&["vm", "workspace", "prepare", name, "--from", &from]);
        }));
        j.push(timed(|| {
            let st = Command::new("sh").args(["-c", &tar_ssh]).status().unwrap();
            assert!(st.success(), "{tar_ssh}");
        }));
    }
    // Both copies hold the same tree: say so, for whoever reads the log.
    let count = "for d in /root/repo /root/t; do echo \"$d: $(find $d -type f | wc -l) files, $(du -sb $d | cut -f1) bytes\"; done";
    eprintln!(
        "bench: host: {} files, {} bytes; guest:\n{}",
        repo.files,
        repo.bytes,
        env.ok(&["vm", "exec", name, "--", "sh", "-c", count])
            .trim_end()
    );
    env.ok(&["vm", "delete", name]);
    (i, j)
}
