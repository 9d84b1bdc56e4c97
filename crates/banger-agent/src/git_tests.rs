use super::*;

fn ids(pairs: &[&str]) -> Vec<String> {
    pairs.iter().map(|s| s.to_string()).collect()
}

/// A root with a `git` at `usr/bin/git` (the real one when the host has it).
fn root_with_git() -> (tempfile::TempDir, PathBuf) {
    let root = tempfile::tempdir().unwrap();
    let bin = root.path().join("usr/bin");
    std::fs::create_dir_all(&bin).unwrap();
    let git = bin.join("git");
    match banger_sys::command::which("git") {
        Some(real) => std::os::unix::fs::symlink(real, &git).unwrap(),
        None => std::fs::write(&git, "").unwrap(),
    }
    let home = root.path().join("root");
    std::fs::create_dir_all(&home).unwrap();
    (root, home)
}

/// What an apply that needed no `git config` run did.
fn done(applied: Applied) -> &'static str {
    match applied {
        Applied::Done(did) => did,
        Applied::Edits(_) => panic!("runs nothing"),
    }
}

#[test]
fn the_plan_writes_only_what_is_missing_or_ours() {
    let id = ids(&["user.name", "Ann", "user.email", "ann@x"]);
    let want = gitconfig(&id);
    assert_eq!(plan(None, &id), Plan::Write(want.clone()));
    assert_eq!(plan(Some(&want), &id), Plan::Nothing, "a restart");
    let old = gitconfig(&ids(&["user.name", "Bob"]));
    assert_eq!(
        plan(Some(&old), &id),
        Plan::Write(want),
        "banger's own, renewed"
    );
    let users = "[user]\n\tname = Ann\n[alias]\n\tco = checkout\n";
    assert_eq!(plan(Some(users), &id), Plan::Edit, "the user's own file");
    assert_eq!(plan(None, &[]), Plan::Nothing, "no identity on the host");
}

#[test]
fn a_guest_without_git_is_left_alone() {
    let root = tempfile::tempdir().unwrap();
    let home = root.path().join("root");
    std::fs::create_dir_all(&home).unwrap();
    let id = ids(&["user.name", "Ann"]);
    let did = done(apply(root.path(), &home, &id).unwrap());
    assert_eq!(did, "no git in this guest");
    assert!(!home.join(".gitconfig").exists());
}

#[test]
fn a_missing_config_is_written_and_an_unchanged_one_left_alone() {
    let (root, home) = root_with_git();
    let id = ids(&["user.name", "Ann \"A\" O'Neil", "user.email", "ann@x"]);
    let did = done(apply(root.path(), &home, &id).unwrap());
    assert_eq!(did, "written");
    let path = home.join(".gitconfig");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), gitconfig(&id));
    let inode = || std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&path).unwrap());
    let first = inode();
    let did = done(apply(root.path(), &home, &id).unwrap());
    assert_eq!((did, inode()), ("already set", first));
}

#[test]
fn the_users_own_config_is_edited_by_git_keeping_the_rest() {
    let Some(_) = banger_sys::command::which("git") else {
        banger_sys::skip_test("editing a git config needs git");
        return;
    };
    let (root, home) = root_with_git();
    let path = home.join(".gitconfig");
    std::fs::write(&path, "[alias]\n\tco = checkout\n[user]\n\tname = Old\n").unwrap();
    let id = ids(&["user.name", "Ann", "user.email", "ann@x"]);
    let did = apply(root.path(), &home, &id).unwrap().finish().unwrap();
    assert_eq!(did, "set in the user's own config");
    let get = |key: &str| git_get(&home, key).trim().to_string();

    assert_eq!(
        (get("user.name"), get("user.email"), get("alias.co")),
        ("Ann".into(), "ann@x".into(), "checkout".into())
    );
}

#[test]
fn git_reads_back_exactly_the_values_the_file_was_written_with() {
    if banger_sys::command::which("git").is_none() {
        banger_sys::skip_test("the gitconfig round trip needs git");
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let name = r#"Ann "the \ tester" O'Neil; # not a comment"#;
    let email = "ann@example.com\tx";
    let args = ["user.name", name, "user.email", email].map(String::from);
    std::fs::write(home.path().join(".gitconfig"), gitconfig(&args)).unwrap();
    for (key, want) in [("user.name", name), ("user.email", email)] {
        assert_eq!(git_get(home.path(), key), format!("{want}\n"));
    }
}

/// `git config --global --get key` in `home`, its output read from a file:
/// the agent's reaper, which other tests here start, is the only waiter.
fn git_get(home: &Path, key: &str) -> String {
    let out = tempfile::NamedTempFile::new().unwrap();
    let mut cmd = Command::new("git");
    cmd.args(["config", "--global", "--get", key])
        .env("HOME", home)
        .env_remove("XDG_CONFIG_HOME")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .stdout(out.reopen().unwrap());
    assert_eq!(run_blocking(cmd).unwrap(), 0, "git config --get {key}");
    std::fs::read_to_string(out.path()).unwrap()
}
