//! `unpack` and `pack` over an in-memory stream, with the host's side
//! written by hand as the daemon would, into temp directories.

use std::fs;
use std::path::Path;
use std::time::Duration;

use banger_proto::ErrorBody;
use tokio::io::{DuplexStream, ReadHalf, WriteHalf};

use super::*;

struct Host {
    rd: ReadHalf<DuplexStream>,
    wr: WriteHalf<DuplexStream>,
}

impl Host {
    async fn send(&mut self, frame: Frame) {
        banger_proto::write_frame(&mut self.wr, &frame)
            .await
            .unwrap();
    }

    /// Sends `archive` as `Stdin` frames of at most `chunk` bytes.
    async fn send_archive(&mut self, archive: &[u8], chunk: usize) {
        for piece in archive.chunks(chunk) {
            self.send(Frame::new(FrameKind::Stdin, piece.to_vec()))
                .await;
        }
    }

    async fn next(&mut self) -> Option<Frame> {
        tokio::time::timeout(
            Duration::from_secs(10),
            banger_proto::read_frame(&mut self.rd),
        )
        .await
        .expect("a frame within 10 s")
        .unwrap()
    }
}

fn start_unpack(dest: &Path) -> Host {
    let (host, guest) = tokio::io::duplex(256 * 1024);
    let (grd, gwr) = tokio::io::split(guest);
    let req = UnpackRequest {
        dest: dest.display().to_string(),
    };
    tokio::spawn(unpack(req, grd, gwr));
    let (rd, wr) = tokio::io::split(host);
    Host { rd, wr }
}

fn start_pack(path: &str) -> Host {
    let (host, guest) = tokio::io::duplex(256 * 1024);
    tokio::spawn(pack(PackRequest { path: path.into() }, guest));
    let (rd, wr) = tokio::io::split(host);
    Host { rd, wr }
}

fn archive_of(root: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    banger_sys::archive::pack(root, &mut out).unwrap();
    out
}

fn tree(root: &Path, files: &[(&str, &str)]) {
    for (path, content) in files {
        let path = root.join(path);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, content).unwrap();
    }
}

fn error_of(frame: Option<Frame>) -> ErrorBody {
    let frame = frame.expect("an answer");
    assert_eq!(
        frame.kind,
        FrameKind::Error,
        "{:?}",
        String::from_utf8_lossy(&frame.payload)
    );
    frame.parse().unwrap()
}

/// Waits for the background removal of a temporary.
async fn wait_for_names(dir: &Path, want: &[&str]) {
    for _ in 0..500 {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        if names == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{} never held just {want:?}", dir.display());
}

async fn unpack_tree(dest: &Path, src: &Path) -> ArchiveStats {
    let mut host = start_unpack(dest);
    host.send_archive(&archive_of(src), 1000).await;
    host.send(Frame::new(FrameKind::StdinEof, Vec::new())).await;
    let frame = host.next().await.expect("an answer");
    assert_eq!(
        frame.kind,
        FrameKind::Response,
        "{}",
        String::from_utf8_lossy(&frame.payload)
    );
    assert!(
        host.next().await.is_none(),
        "stream closed after the answer"
    );
    frame.parse().unwrap()
}

#[tokio::test]
async fn unpack_puts_a_tree_at_dest_and_reports_it() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    tree(&src, &[("a/b.txt", "bee"), ("c", "sea")]);
    let dest = tmp.path().join("repo");
    let stats = unpack_tree(&dest, &src).await;
    assert_eq!(
        stats,
        ArchiveStats {
            files: 2,
            dirs: 2,
            symlinks: 0,
            bytes: 6,
            skipped: 0
        }
    );
    assert_eq!(fs::read_to_string(dest.join("a/b.txt")).unwrap(), "bee");
    wait_for_names(tmp.path(), &["repo", "src"]).await;
}

#[tokio::test]
async fn unpacking_again_replaces_the_previous_copy() {
    let tmp = tempfile::tempdir().unwrap();
    let (one, two) = (tmp.path().join("one"), tmp.path().join("two"));
    tree(&one, &[("old", "1")]);
    tree(&two, &[("new", "2")]);
    let dest = tmp.path().join("repo");
    unpack_tree(&dest, &one).await;
    unpack_tree(&dest, &two).await;
    assert!(!dest.join("old").exists());
    assert_eq!(fs::read_to_string(dest.join("new")).unwrap(), "2");
    wait_for_names(tmp.path(), &["one", "repo", "two"]).await;
}

#[tokio::test]
async fn an_interrupted_unpack_keeps_the_previous_copy() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    tree(&src, &[("big", &"x".repeat(100_000))]);
    let dest = tmp.path().join("repo");
    tree(&dest, &[("keep", "precious")]);
    let archive = archive_of(&src);

    let mut host = start_unpack(&dest);
    host.send_archive(&archive[..archive.len() / 2], 4096).await;
    drop(host);

    wait_for_names(tmp.path(), &["repo", "src"]).await;
    assert_eq!(fs::read_to_string(dest.join("keep")).unwrap(), "precious");
}

#[tokio::test]
async fn a_hostile_archive_gets_bad_request_at_once_and_keeps_the_previous_copy() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("repo");
    tree(&dest, &[("keep", "precious")]);
    let mut enc = banger_proto::archive::Encoder::new(Vec::new());
    enc.dir(b"", 0o755, 0).unwrap();
    enc.symlink(b"etc", 0, b"/etc").unwrap();
    enc.file(b"etc/passwd", 0o644, 0, 0).unwrap();
    let archive = enc.end().unwrap();

    let mut host = start_unpack(&dest);
    // No StdinEof: the error must come without it.
    host.send_archive(&archive, 1 << 20).await;
    let err = error_of(host.next().await);
    assert_eq!(err.code, "bad_request");
    assert!(err.message.contains("etc/passwd"), "{}", err.message);
    wait_for_names(tmp.path(), &["repo"]).await;
    assert_eq!(fs::read_to_string(dest.join("keep")).unwrap(), "precious");
}

#[tokio::test]
async fn unpack_rejects_relative_and_climbing_dests_and_missing_parents() {
    let tmp = tempfile::tempdir().unwrap();
    for dest in ["root/repo", "/root/../etc", "/tmp/a/..", ""] {
        let mut host = start_unpack(Path::new(dest));
        let err = error_of(host.next().await);
        assert_eq!(err.code, "bad_request", "{dest}: {}", err.message);
    }
    let mut host = start_unpack(&tmp.path().join("no/such/repo"));
    let err = error_of(host.next().await);
    assert_eq!(err.code, "not_found");
    assert!(err.message.contains("no/such/repo"), "{}", err.message);
}

/// Everything a pack sends: the archive and the stats, or the error.
async fn collect_pack(host: &mut Host) -> Result<(Vec<u8>, ArchiveStats), ErrorBody> {
    let mut archive = Vec::new();
    loop {
        let frame = host.next().await.expect("a frame");
        match frame.kind {
            FrameKind::Stdout => {
                assert!(frame.payload.len() <= PACK_FRAME);
                archive.extend_from_slice(&frame.payload);
            }
            FrameKind::Response => return Ok((archive, frame.parse().unwrap())),
            FrameKind::Error => return Err(frame.parse().unwrap()),
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn pack_sends_what_is_there() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let big = "y".repeat(3 * PACK_FRAME + 17);
    tree(&src, &[("d/big", big.as_str()), ("small", "s")]);
    std::os::unix::fs::symlink("d/big", src.join("link")).unwrap();

    let mut host = start_pack(&src.display().to_string());
    let (archive, stats) = collect_pack(&mut host).await.unwrap();
    assert_eq!((stats.files, stats.dirs, stats.symlinks), (2, 2, 1));
    assert_eq!(stats.bytes, big.len() as u64 + 1);

    let copy = tmp.path().join("copy");
    let mut unpacker = Unpacker::begin(&copy).unwrap();
    unpacker.feed(&archive).unwrap();
    unpacker.finish().unwrap();
    assert_eq!(fs::read_to_string(copy.join("d/big")).unwrap(), big);
    assert_eq!(
        fs::read_link(copy.join("link")).unwrap(),
        Path::new("d/big")
    );
}

#[tokio::test]
async fn pack_of_a_missing_path_is_not_found() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nothing-here");
    let mut host = start_pack(&missing.display().to_string());
    let err = collect_pack(&mut host).await.unwrap_err();
    assert_eq!(err.code, "not_found");
    assert!(err.message.contains("nothing-here"), "{}", err.message);

    let mut host = start_pack("relative/path");
    assert_eq!(
        collect_pack(&mut host).await.unwrap_err().code,
        "bad_request"
    );
}
