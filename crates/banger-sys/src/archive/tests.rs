//! Packs and unpacks on real temp directories, no root needed.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use banger_proto::archive::Encoder;

use super::*;

fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn mode_of(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().mode() & 0o7777
}

/// A tree with modes, a symlink, a non-UTF-8 name, an empty and a 5 MB file.
fn sample_tree(root: &Path) -> Vec<u8> {
    fs::create_dir_all(root.join("bin")).unwrap();
    fs::write(root.join("bin/run"), "#!/bin/sh\n").unwrap();
    set_mode(&root.join("bin/run"), 0o755);
    fs::write(root.join("secret"), "s3cret").unwrap();
    set_mode(&root.join("secret"), 0o600);
    fs::write(root.join(OsStr::from_bytes(b"caf\xe9")), "latin-1").unwrap();
    fs::write(root.join("empty"), "").unwrap();
    let big: Vec<u8> = (0..5 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    fs::write(root.join("bin/big"), &big).unwrap();
    std::os::unix::fs::symlink("../secret", root.join("bin/link")).unwrap();
    set_mode(&root.join("bin"), 0o750);
    big
}

fn pack_to_vec(root: &Path) -> (Vec<u8>, Stats) {
    let mut out = Vec::new();
    let stats = pack(root, &mut out).unwrap();
    (out, stats)
}

fn unpack(dest: &Path, archive: &[u8]) -> Result<Stats, ArchiveError> {
    let mut unpacker = Unpacker::begin(dest)?;
    for chunk in archive.chunks(7919) {
        unpacker.feed(chunk)?;
    }
    unpacker.finish()
}

/// Names in `dir`, sorted, so leftovers show up in assertions.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn a_tree_round_trips_with_modes_symlinks_and_byte_names() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let big = sample_tree(&src);
    let (archive, packed) = pack_to_vec(&src);
    assert_eq!((packed.dirs, packed.files, packed.symlinks), (2, 5, 1));

    let dest = tmp.path().join("dest");
    let unpacked = unpack(&dest, &archive).unwrap();
    assert_eq!(unpacked, packed);

    assert_eq!(fs::read(dest.join("bin/big")).unwrap(), big);
    assert_eq!(
        fs::read(dest.join(OsStr::from_bytes(b"caf\xe9"))).unwrap(),
        b"latin-1"
    );
    assert_eq!(fs::read(dest.join("empty")).unwrap(), b"");
    assert_eq!(mode_of(&dest.join("bin/run")), 0o755);
    assert_eq!(mode_of(&dest.join("secret")), 0o600);
    assert_eq!(mode_of(&dest.join("bin")), 0o750);
    let link = dest.join("bin/link");
    assert!(
        fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(fs::read_link(&link).unwrap(), Path::new("../secret"));
    let mtime = |p: &Path| fs::symlink_metadata(p).unwrap().mtime();
    assert_eq!(mtime(&dest.join("bin/big")), mtime(&src.join("bin/big")));
    assert_eq!(mtime(&dest.join("bin")), mtime(&src.join("bin")));
    assert_eq!(names(tmp.path()), ["dest", "src"], "no temporaries left");
}

#[test]
fn unpacking_again_replaces_the_previous_tree_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("dest");
    fs::create_dir(&dest).unwrap();
    fs::write(dest.join("stale"), "old").unwrap();
    let mut enc = Encoder::new(Vec::new());
    enc.dir(b"", 0o755, 0).unwrap();
    enc.file(b"fresh", 0o644, 0, 3).unwrap();
    enc.data(b"new").unwrap();
    unpack(&dest, &enc.end().unwrap()).unwrap();
    assert_eq!(names(&dest), ["fresh"]);
    assert_eq!(names(tmp.path()), ["dest"]);
}

#[test]
fn an_interrupted_stream_keeps_the_previous_dest_and_leaves_no_temporary() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    sample_tree(&src);
    let (archive, _) = pack_to_vec(&src);
    let dest = tmp.path().join("dest");
    fs::create_dir(&dest).unwrap();
    fs::write(dest.join("keep"), "precious").unwrap();

    let mut unpacker = Unpacker::begin(&dest).unwrap();
    unpacker.feed(&archive[..archive.len() / 2]).unwrap();
    let err = unpacker.finish().unwrap_err();
    assert!(err.to_string().contains("invalid archive"), "{err}");
    assert_eq!(names(&dest), ["keep"]);
    assert_eq!(names(tmp.path()), ["dest", "src"]);

    // Dropped midway, as when the host goes away.
    let mut unpacker = Unpacker::begin(&dest).unwrap();
    unpacker.feed(&archive[..archive.len() - 1]).unwrap();
    drop(unpacker);
    assert_eq!(names(&dest), ["keep"]);
    assert_eq!(names(tmp.path()), ["dest", "src"]);
}

#[test]
fn an_entry_through_a_symlink_the_archive_made_is_rejected_and_writes_nothing_outside() {
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside");
    fs::create_dir(&outside).unwrap();
    let dest = tmp.path().join("dest");
    for second in [&b"link/passwd"[..], b"link/sub/passwd"] {
        let mut enc = Encoder::new(Vec::new());
        enc.dir(b"", 0o755, 0).unwrap();
        enc.symlink(b"link", 0, outside.as_os_str().as_bytes())
            .unwrap();
        enc.file(second, 0o644, 0, 4).unwrap();
        enc.data(b"root").unwrap();
        let err = unpack(&dest, &enc.end().unwrap()).unwrap_err();
        assert!(
            matches!(err, ArchiveError::BeneathNonDirectory { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("refusing to follow"), "{err}");
        assert_eq!(names(&outside), Vec::<String>::new());
        assert_eq!(names(tmp.path()), ["outside"], "no dest, no temporary");
    }
}

#[test]
fn an_entry_may_not_replace_an_earlier_one() {
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside");
    fs::write(&outside, "untouched").unwrap();
    let mut enc = Encoder::new(Vec::new());
    enc.dir(b"", 0o755, 0).unwrap();
    enc.symlink(b"f", 0, outside.as_os_str().as_bytes())
        .unwrap();
    enc.file(b"f", 0o644, 0, 5).unwrap();
    enc.data(b"owned").unwrap();
    let err = unpack(&tmp.path().join("dest"), &enc.end().unwrap()).unwrap_err();
    assert!(matches!(err, ArchiveError::Duplicate { .. }), "{err}");
    assert_eq!(fs::read(&outside).unwrap(), b"untouched");
}

#[test]
fn an_entry_whose_parent_never_came_is_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    let mut enc = Encoder::new(Vec::new());
    enc.dir(b"", 0o755, 0).unwrap();
    enc.dir(b"a/b", 0o755, 0).unwrap();
    let err = unpack(&tmp.path().join("dest"), &enc.end().unwrap()).unwrap_err();
    assert!(
        matches!(err, ArchiveError::ParentNotCreated { .. }),
        "{err}"
    );
}

#[test]
fn a_parent_swapped_for_a_symlink_midway_is_not_followed() {
    let tmp = tempfile::tempdir().unwrap();
    let parent = tmp.path().join("parent");
    fs::create_dir(&parent).unwrap();
    let elsewhere = tmp.path().join("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    let mut enc = Encoder::new(Vec::new());
    enc.dir(b"", 0o755, 0).unwrap();
    enc.file(b"f", 0o644, 0, 2).unwrap();
    enc.data(b"hi").unwrap();
    let archive = enc.end().unwrap();

    let mut unpacker = Unpacker::begin(&parent.join("dest")).unwrap();
    unpacker.feed(&archive[..20]).unwrap();
    let moved = tmp.path().join("moved");
    fs::rename(&parent, &moved).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &parent).unwrap();
    unpacker.feed(&archive[20..]).unwrap();
    unpacker.finish().unwrap();

    assert_eq!(names(&elsewhere), Vec::<String>::new());
    assert_eq!(fs::read(moved.join("dest/f")).unwrap(), b"hi");
}

#[test]
fn a_single_file_replaces_or_creates_dest_as_a_file() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("notes");
    fs::write(&src, "hello").unwrap();
    set_mode(&src, 0o640);
    let (archive, stats) = pack_to_vec(&src);
    assert_eq!((stats.files, stats.dirs, stats.bytes), (1, 0, 5));

    let fresh = tmp.path().join("fresh");
    unpack(&fresh, &archive).unwrap();
    assert_eq!(fs::read(&fresh).unwrap(), b"hello");
    assert_eq!(mode_of(&fresh), 0o640);

    let was_dir = tmp.path().join("was-dir");
    fs::create_dir_all(was_dir.join("inner")).unwrap();
    unpack(&was_dir, &archive).unwrap();
    assert_eq!(fs::read(&was_dir).unwrap(), b"hello");
    assert_eq!(names(tmp.path()), ["fresh", "notes", "was-dir"]);
}

#[test]
fn a_symlink_root_is_packed_as_itself_and_replaces_dest_without_following_it() {
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("target");
    fs::create_dir(&target).unwrap();
    fs::write(target.join("keep"), "x").unwrap();
    let link = tmp.path().join("link");
    std::os::unix::fs::symlink("somewhere/else", &link).unwrap();
    let (archive, stats) = pack_to_vec(&link);
    assert_eq!(stats.symlinks, 1);

    // dest is a symlink to a directory: it is replaced, not followed.
    let dest = tmp.path().join("dest");
    std::os::unix::fs::symlink(&target, &dest).unwrap();
    unpack(&dest, &archive).unwrap();
    assert_eq!(fs::read_link(&dest).unwrap(), Path::new("somewhere/else"));
    assert_eq!(names(&target), ["keep"]);
}

#[test]
fn a_missing_parent_or_root_is_named_in_the_error() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("no/such/dest");
    let err = Unpacker::begin(&dest).err().unwrap();
    assert!(matches!(err, ArchiveError::ParentMissing { .. }));
    assert!(err.to_string().contains("no/such/dest"), "{err}");
    let missing = tmp.path().join("missing");
    let err = pack(&missing, &mut Vec::new()).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("{} does not exist", missing.display())
    );
    assert!(matches!(
        Unpacker::begin(Path::new("/")),
        Err(ArchiveError::NoName { .. })
    ));
}

#[test]
fn pack_skips_sockets_and_reports_them() {
    let tmp = tempfile::tempdir().unwrap();
    fs::write(tmp.path().join("file"), "x").unwrap();
    let _sock = std::os::unix::net::UnixListener::bind(tmp.path().join("sock")).unwrap();
    let (archive, stats) = pack_to_vec(tmp.path());
    assert_eq!(
        stats.skipped,
        [Skipped {
            path: PathBuf::from("sock"),
            reason: SkipReason::Socket
        }]
    );
    let dest = tempfile::tempdir().unwrap();
    unpack(&dest.path().join("out"), &archive).unwrap();
    assert_eq!(names(&dest.path().join("out")), ["file"]);
}

#[test]
fn pack_list_takes_only_the_listed_paths_and_their_parents() {
    let tmp = tempfile::tempdir().unwrap();
    let top = tmp.path().join("repo");
    fs::create_dir_all(top.join(".git/objects")).unwrap();
    fs::create_dir_all(top.join("src/deep")).unwrap();
    fs::create_dir_all(top.join("target")).unwrap();
    set_mode(&top.join("src/deep"), 0o700);
    fs::write(top.join(".git/HEAD"), "ref").unwrap();
    fs::write(top.join("src/deep/m.rs"), "fn").unwrap();
    fs::write(top.join(OsStr::from_bytes(b"src/deep/caf\xe9")), "x").unwrap();
    fs::write(top.join("target/junk"), "ignored").unwrap();
    std::os::unix::fs::symlink("src", top.join("alias")).unwrap();
    let listed: Vec<Vec<u8>> = vec![
        b"src/deep/caf\xe9".to_vec(),
        b".git/HEAD".to_vec(),
        b"alias".to_vec(),
        b"deleted-but-tracked".to_vec(),
        b"alias/deep/m.rs".to_vec(),
    ];
    let mut archive = Vec::new();
    let stats = pack_list(&top, &listed, &mut archive).unwrap();
    assert_eq!((stats.dirs, stats.files, stats.symlinks), (4, 2, 1));
    assert_eq!(
        stats.skipped,
        [
            Skipped {
                path: "alias/deep/m.rs".into(),
                reason: SkipReason::BeneathNonDirectory
            },
            Skipped {
                path: "deleted-but-tracked".into(),
                reason: SkipReason::Missing
            },
        ]
    );
    let dest = tmp.path().join("copy");
    unpack(&dest, &archive).unwrap();
    assert_eq!(names(&dest), [".git", "alias", "src"]);
    assert_eq!(names(&dest.join("src/deep")), ["caf\u{fffd}"]);
    assert_eq!(mode_of(&dest.join("src/deep")), 0o700);
    assert_eq!(fs::read(dest.join(".git/HEAD")).unwrap(), b"ref");
}

#[test]
fn pack_list_rejects_a_hostile_listed_path() {
    let tmp = tempfile::tempdir().unwrap();
    for bad in [&b"../etc/passwd"[..], b"/etc/passwd", b"a//b"] {
        let err = pack_list(tmp.path(), &[bad.to_vec()], &mut Vec::new()).unwrap_err();
        assert!(err.is_bad_archive(), "{err}");
    }
}
