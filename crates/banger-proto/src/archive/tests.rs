use super::*;

/// A small tree: root dir, a subdir, a non-UTF-8 file, an empty file, a symlink.
fn sample() -> Vec<u8> {
    let mut enc = Encoder::new(Vec::new());
    enc.dir(b"", 0o755, 100).unwrap();
    enc.dir(b"src", 0o700, 101).unwrap();
    enc.file(b"src/caf\xe9", 0o644, 102, 11).unwrap();
    enc.data(b"hello ").unwrap();
    enc.data(b"world").unwrap();
    enc.file(b"empty", 0o600, 103, 0).unwrap();
    enc.symlink(b"link", 104, b"../../etc/passwd").unwrap();
    enc.end().unwrap()
}

fn expected() -> Vec<Event> {
    vec![
        entry(b"", EntryKind::Dir, 0o755, 100),
        entry(b"src", EntryKind::Dir, 0o700, 101),
        entry(b"src/caf\xe9", EntryKind::File { size: 11 }, 0o644, 102),
        Event::Data(b"hello world".to_vec()),
        entry(b"empty", EntryKind::File { size: 0 }, 0o600, 103),
        entry(
            b"link",
            EntryKind::Symlink {
                target: b"../../etc/passwd".to_vec(),
            },
            0o777,
            104,
        ),
        Event::End,
    ]
}

fn entry(path: &[u8], kind: EntryKind, mode: u32, mtime: i64) -> Event {
    Event::Entry(EntryHeader {
        path: path.to_vec(),
        kind,
        mode,
        mtime,
    })
}

/// Feeds `chunks` and returns the events, with adjacent data merged.
fn decode(chunks: &[&[u8]]) -> Result<Vec<Event>, ArchiveError> {
    let mut dec = Decoder::new();
    let mut events: Vec<Event> = Vec::new();
    for chunk in chunks {
        dec.feed(chunk)?;
        while let Some(ev) = dec.next_event() {
            match (events.last_mut(), ev) {
                (Some(Event::Data(have)), Event::Data(more)) => have.extend_from_slice(&more),
                (_, ev) => events.push(ev),
            }
        }
    }
    dec.check_complete()?;
    Ok(events)
}

#[test]
fn an_archive_round_trips() {
    assert_eq!(decode(&[&sample()]).unwrap(), expected());
}

#[test]
fn an_archive_split_at_any_byte_decodes_the_same() {
    let bytes = sample();
    for at in 0..=bytes.len() {
        let (a, b) = bytes.split_at(at);
        assert_eq!(decode(&[a, b]).unwrap(), expected(), "split at {at}");
    }
    let singles: Vec<&[u8]> = bytes.chunks(1).collect();
    assert_eq!(decode(&singles).unwrap(), expected());
}

#[test]
fn a_stream_without_its_end_marker_is_truncated() {
    let bytes = sample();
    let err = decode(&[&bytes[..bytes.len() - 1]]).unwrap_err();
    assert!(matches!(err, ArchiveError::Truncated), "{err}");
}

#[test]
fn an_end_marker_alone_is_not_an_archive() {
    // Found by the `archive` fuzz target: a rootless stream decoded as
    // complete, and an unpack then failed only at the swap, naming no cause.
    let err = decode(&[&[0]]).unwrap_err();
    assert!(matches!(err, ArchiveError::EndBeforeRoot), "{err}");
    let err = Encoder::new(Vec::new()).end().unwrap_err();
    assert!(matches!(err, ArchiveError::EndBeforeRoot), "{err}");
}

#[test]
fn bytes_after_the_end_marker_are_rejected() {
    let mut bytes = sample();
    bytes.push(0);
    assert!(matches!(
        decode(&[&bytes]).unwrap_err(),
        ArchiveError::TrailingBytes
    ));
}

#[test]
fn a_single_file_archive_is_a_root_file_then_the_end() {
    let mut enc = Encoder::new(Vec::new());
    enc.file(b"", 0o640, 5, 3).unwrap();
    enc.data(b"abc").unwrap();
    let bytes = enc.end().unwrap();
    assert_eq!(
        decode(&[&bytes]).unwrap(),
        vec![
            entry(b"", EntryKind::File { size: 3 }, 0o640, 5),
            Event::Data(b"abc".to_vec()),
            Event::End
        ]
    );
}

/// Encodes one raw header, bypassing the encoder's checks, as a hostile peer would.
fn raw(kind: u8, path: &[u8], mode: u32, tail: &[u8]) -> Vec<u8> {
    let mut out = vec![kind];
    out.extend_from_slice(&mode.to_be_bytes());
    out.extend_from_slice(&0i64.to_be_bytes());
    out.extend_from_slice(&(path.len() as u16).to_be_bytes());
    out.extend_from_slice(path);
    out.extend_from_slice(tail);
    out
}

fn root_then(entry: Vec<u8>) -> Vec<u8> {
    let mut out = raw(DIR, b"", 0o755, &[]);
    out.extend(entry);
    out.push(END);
    out
}

fn hostile_paths() -> Vec<Vec<u8>> {
    let mut paths: Vec<Vec<u8>> = [
        &b".."[..],
        b"../x",
        b"a/..",
        b"a/../b",
        b"a/b/../../..",
        b"../../../../etc/passwd",
        b"/",
        b"/etc/passwd",
        b"//etc/passwd",
        b"/..",
        b".",
        b"./x",
        b"a/.",
        b"a/./b",
        b"a//b",
        b"a/",
        b"a/b/",
        b"//",
        b"x\0",
        b"a\0/../../etc",
        b"\0",
        b"a/\0/b",
        b"../\xff\xfe",
        b"\xff/../..",
        b"./",
        b"..//..",
        b"a/b/c/../../../../root/.ssh/authorized_keys",
    ]
    .iter()
    .map(|p| p.to_vec())
    .collect();
    paths.push(vec![b'a'; MAX_PATH + 1]);
    paths.push([b"x/".as_slice(), &vec![b'n'; MAX_NAME + 1]].concat());
    paths.push(b"a/".repeat(MAX_PATH / 2 + 1));
    paths
}

#[test]
fn every_hostile_path_is_rejected_with_a_message_naming_it() {
    let corpus = hostile_paths();
    assert!(corpus.len() >= 25);
    for path in &corpus {
        let err = check_path(path).expect_err(&lossy(path));
        let message = err.to_string();
        let shown = lossy(&path[..path.len().min(64)]);
        let quoted = format!("{shown:?}");
        let needle = &quoted[1..quoted.len() - 1];
        assert!(
            message.contains(needle),
            "{message} does not name {shown:?}"
        );
    }
}

#[test]
fn every_hostile_path_is_rejected_by_the_decoder_and_the_encoder() {
    for path in hostile_paths() {
        for kind in [DIR, FILE, SYMLINK] {
            let tail: Vec<u8> = match kind {
                FILE => 0u64.to_be_bytes().to_vec(),
                SYMLINK => [&1u16.to_be_bytes()[..], b"t"].concat(),
                _ => vec![],
            };
            // Over-long paths do not fit the u16 length field honestly.
            if path.len() > u16::MAX as usize {
                continue;
            }
            let result = decode(&[&root_then(raw(kind, &path, 0o644, &tail))]);
            assert!(result.is_err(), "decoder accepted {:?}", lossy(&path));
        }
        let mut enc = Encoder::new(Vec::new());
        enc.dir(b"", 0o755, 0).unwrap();
        assert!(enc.dir(&path, 0o755, 0).is_err(), "{:?}", lossy(&path));
    }
}

#[test]
fn each_rule_has_its_own_message() {
    let cases: [(&[u8], &str); 8] = [
        (b"../x", "`..`"),
        (b"/etc", "absolute"),
        (b"./x", "`.`"),
        (b"a//b", "empty component"),
        (b"a/", "ends with `/`"),
        (b"a\0", "NUL"),
        (b"", "only the archive's root"),
        (&[b'a'; MAX_PATH + 1], "over the limit of 4096"),
    ];
    for (path, rule) in cases {
        let message = check_path(path).unwrap_err().to_string();
        assert!(message.contains(rule), "{message:?} lacks {rule:?}");
    }
}

#[test]
fn odd_but_legal_names_are_accepted() {
    for path in [
        &b"..."[..],
        b"....",
        b"..a",
        b"a..",
        b".git/HEAD",
        b"a/.../b",
        b"a\\..\\b",
        b"caf\xe9",
        b" ",
        b"-rf",
        b"a/b/c",
    ] {
        assert_eq!(check_path(path), Ok(()), "{:?}", lossy(path));
    }
    let longest = [vec![b'n'; MAX_NAME], b"/".to_vec()].concat().repeat(15);
    let longest = &longest[..longest.len() - 1];
    assert!(longest.len() <= MAX_PATH);
    assert_eq!(check_path(longest), Ok(()));
}

#[test]
fn an_archive_must_start_with_its_root() {
    let mut bytes = raw(DIR, b"a", 0o755, &[]);
    bytes.push(END);
    let err = decode(&[&bytes]).unwrap_err();
    assert!(
        err.to_string().contains("does not start with its root"),
        "{err}"
    );
}

#[test]
fn nothing_may_follow_a_file_root() {
    let mut bytes = raw(FILE, b"", 0o644, &0u64.to_be_bytes());
    bytes.extend(raw(FILE, b"x", 0o644, &0u64.to_be_bytes()));
    let err = decode(&[&bytes]).unwrap_err();
    assert!(
        matches!(err, ArchiveError::EntryAfterLeafRoot { .. }),
        "{err}"
    );
}

#[test]
fn a_second_root_is_rejected() {
    let err = decode(&[&root_then(raw(DIR, b"", 0o755, &[]))]).unwrap_err();
    assert!(matches!(err, ArchiveError::Path(PathError::Empty)), "{err}");
}

#[test]
fn unknown_kinds_and_bad_modes_are_rejected() {
    let err = decode(&[&[7u8]]).unwrap_err();
    assert_eq!(err.to_string(), "archive entry has unknown kind 7");
    let err = decode(&[&root_then(raw(DIR, b"a", 0o10755, &[]))]).unwrap_err();
    assert!(matches!(err, ArchiveError::BadMode { .. }), "{err}");
}

#[test]
fn over_long_lengths_are_rejected_before_anything_is_buffered() {
    // Only the header's fixed part is given: the length alone condemns it.
    let mut header = raw(DIR, b"", 0o755, &[]);
    header.extend_from_slice(&[DIR, 0, 0, 1, 0xed, 0, 0, 0, 0, 0, 0, 0, 0]);
    header.extend_from_slice(&u16::MAX.to_be_bytes());
    let mut dec = Decoder::new();
    let err = dec.feed(&header).unwrap_err();
    assert!(
        matches!(err, ArchiveError::PathTooLong { len: 65535 }),
        "{err}"
    );
    assert!(dec.header.len() <= FIXED);

    let mut link = raw(SYMLINK, b"l", 0o777, &[]);
    link.extend_from_slice(&((MAX_TARGET + 1) as u16).to_be_bytes());
    let err = Decoder::new()
        .feed(&[raw(DIR, b"", 0o755, &[]), link].concat())
        .unwrap_err();
    assert!(err.to_string().contains("over the limit"), "{err}");
}

#[test]
fn symlink_targets_are_data_but_bounded() {
    let target_of = |target: &[u8]| {
        let tail = [&(target.len() as u16).to_be_bytes()[..], target].concat();
        decode(&[&root_then(raw(SYMLINK, b"l", 0o777, &tail))])
    };
    assert!(target_of(b"/etc/shadow").is_ok());
    assert!(target_of(b"../../../../..").is_ok());
    assert!(matches!(
        target_of(b"").unwrap_err(),
        ArchiveError::EmptyTarget { .. }
    ));
    assert!(matches!(
        target_of(b"a\0b").unwrap_err(),
        ArchiveError::TargetNul { .. }
    ));
}

#[test]
fn the_encoder_holds_files_to_their_declared_size() {
    let mut enc = Encoder::new(Vec::new());
    enc.dir(b"", 0o755, 0).unwrap();
    enc.file(b"f", 0o644, 0, 2).unwrap();
    assert!(matches!(
        enc.data(b"abc").unwrap_err(),
        ArchiveError::SizeMismatch { declared: 2, .. }
    ));
    let mut enc = Encoder::new(Vec::new());
    enc.file(b"", 0o644, 0, 2).unwrap();
    enc.data(b"a").unwrap();
    assert!(matches!(
        enc.end().unwrap_err(),
        ArchiveError::SizeMismatch { written: 1, .. }
    ));
}

#[test]
fn stats_json_has_the_counts() {
    let stats = ArchiveStats {
        files: 1,
        dirs: 2,
        symlinks: 3,
        bytes: 4,
        skipped: 0,
    };
    assert_eq!(
        serde_json::to_string(&stats).unwrap(),
        r#"{"files":1,"dirs":2,"symlinks":3,"bytes":4,"skipped":0}"#
    );
    let old: ArchiveStats =
        serde_json::from_str(r#"{"files":1,"dirs":2,"symlinks":3,"bytes":4}"#).unwrap();
    assert_eq!(old.skipped, 0);
}

#[test]
fn unpack_and_pack_requests_have_their_documented_json() {
    let unpack = crate::Request::Unpack(crate::UnpackRequest {
        dest: "/root/repo".into(),
    });
    assert_eq!(
        serde_json::to_string(&unpack).unwrap(),
        r#"{"op":"unpack","dest":"/root/repo"}"#
    );
    let pack: crate::Request =
        serde_json::from_str(r#"{"op":"pack","path":"/etc/hosts"}"#).unwrap();
    assert_eq!(
        pack,
        crate::Request::Pack(crate::PackRequest {
            path: "/etc/hosts".into()
        })
    );
}
