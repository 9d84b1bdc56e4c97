//! A writer for the "newc" cpio format (magic `070701`), the format the
//! Linux kernel unpacks as an initramfs. Owns the byte layout only; what goes
//! into the guest's initramfs is the `initramfs` module's business.
//!
//! Written by hand rather than with the `cpio` crate because the kernel needs
//! little (directories, regular files, symlinks, device nodes) and the image
//! must be reproducible: every entry here is owned by 0:0 with mtime 0 and a
//! sequential inode number, whatever the host files look like.
//!
//! Each entry is a 110-byte ASCII header (`070701` and 13 fields of 8 hex
//! digits), the NUL-terminated name padded to a multiple of 4, then the data
//! padded to a multiple of 4. The archive ends with an entry named
//! `TRAILER!!!`.

use std::io::{self, Write};

const MAGIC: &[u8; 6] = b"070701";
const TRAILER: &str = "TRAILER!!!";

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

/// Streams a newc archive into `W`. Names are relative (`dev/console`); a
/// leading `/` is stripped. Parents must be added before their children:
/// the kernel does not create missing directories.
pub struct CpioWriter<W: Write> {
    out: W,
    next_ino: u32,
    written: u64,
}

impl<W: Write> CpioWriter<W> {
    pub fn new(out: W) -> Self {
        CpioWriter {
            out,
            next_ino: 1,
            written: 0,
        }
    }

    pub fn dir(&mut self, name: &str, perm: u32) -> io::Result<()> {
        self.entry(name, S_IFDIR | (perm & 0o7777), 2, (0, 0), b"")
    }

    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) -> io::Result<()> {
        self.entry(name, S_IFREG | (perm & 0o7777), 1, (0, 0), data)
    }

    pub fn symlink(&mut self, name: &str, target: &str) -> io::Result<()> {
        self.entry(name, S_IFLNK | 0o777, 1, (0, 0), target.as_bytes())
    }

    pub fn char_dev(&mut self, name: &str, perm: u32, major: u32, minor: u32) -> io::Result<()> {
        self.entry(name, S_IFCHR | (perm & 0o7777), 1, (major, minor), b"")
    }

    /// Writes the trailer and hands back the sink.
    pub fn finish(mut self) -> io::Result<W> {
        self.header(TRAILER, 0, 1, (0, 0), 0, 0)?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn entry(
        &mut self,
        name: &str,
        mode: u32,
        nlink: u32,
        rdev: (u32, u32),
        data: &[u8],
    ) -> io::Result<()> {
        let name = name.trim_start_matches('/');
        if name.is_empty() || name == TRAILER || name.contains('\0') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid cpio entry name {name:?}"),
            ));
        }
        let size = u32::try_from(data.len()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{name} is too large for cpio"),
            )
        })?;
        let ino = self.next_ino;
        self.next_ino += 1;
        self.header(name, mode, nlink, rdev, size, ino)?;
        self.out.write_all(data)?;
        self.written += data.len() as u64;
        self.pad()
    }

    fn header(
        &mut self,
        name: &str,
        mode: u32,
        nlink: u32,
        rdev: (u32, u32),
        size: u32,
        ino: u32,
    ) -> io::Result<()> {
        let namesize = name.len() as u32 + 1;
        // ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor,
        // rdevmajor, rdevminor, namesize, check
        let fields = [
            ino, mode, 0, 0, nlink, 0, size, 0, 0, rdev.0, rdev.1, namesize, 0,
        ];
        let mut header = Vec::with_capacity(110 + name.len() + 4);
        header.extend_from_slice(MAGIC);
        for f in fields {
            header.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        header.extend_from_slice(name.as_bytes());
        header.push(0);
        self.out.write_all(&header)?;
        self.written += header.len() as u64;
        self.pad()
    }

    fn pad(&mut self) -> io::Result<()> {
        let pad = (4 - (self.written % 4) as usize) % 4;
        self.out.write_all(&[0; 3][..pad])?;
        self.written += pad as u64;
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// One parsed entry: name, mode, uid, gid, mtime, rdev and data.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Entry {
        pub name: String,
        pub mode: u32,
        pub uid: u32,
        pub gid: u32,
        pub mtime: u32,
        pub rdev: (u32, u32),
        pub data: Vec<u8>,
    }

    /// A strict newc reader for tests: every field checked, alignment
    /// enforced, stops at the trailer and returns the bytes after it.
    pub fn parse(mut buf: &[u8]) -> (Vec<Entry>, &[u8]) {
        let start_len = buf.len();
        let mut entries = Vec::new();
        loop {
            assert_eq!((start_len - buf.len()) % 4, 0, "header not 4-byte aligned");
            assert_eq!(&buf[..6], MAGIC, "bad magic");
            let field = |i: usize| {
                u32::from_str_radix(
                    std::str::from_utf8(&buf[6 + i * 8..14 + i * 8]).unwrap(),
                    16,
                )
                .unwrap()
            };
            let (mode, uid, gid, mtime, size) =
                (field(1), field(2), field(3), field(5), field(6) as usize);
            let rdev = (field(9), field(10));
            let namesize = field(11) as usize;
            let name = std::str::from_utf8(&buf[110..110 + namesize - 1])
                .unwrap()
                .to_string();
            assert_eq!(buf[110 + namesize - 1], 0);
            let data_start = (110 + namesize).next_multiple_of(4);
            let data = buf[data_start..data_start + size].to_vec();
            buf = &buf[(data_start + size).next_multiple_of(4)..];
            if name == TRAILER {
                return (entries, buf);
            }
            entries.push(Entry {
                name,
                mode,
                uid,
                gid,
                mtime,
                rdev,
                data,
            });
        }
    }

    fn sample() -> Vec<u8> {
        let mut w = CpioWriter::new(Vec::new());
        w.dir("/dev", 0o755).unwrap();
        w.char_dev("dev/console", 0o600, 5, 1).unwrap();
        w.file("init", 0o755, b"\x7fELF-agent").unwrap();
        w.file("etc/empty", 0o644, b"").unwrap();
        w.symlink("bin/sh", "/bin/busybox").unwrap();
        w.finish().unwrap()
    }

    #[test]
    fn written_archive_parses_back_with_modes_owners_and_data() {
        let bytes = sample();
        assert_eq!(bytes.len() % 4, 0);
        let (entries, rest) = parse(&bytes);
        assert!(rest.is_empty());
        let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["dev", "dev/console", "init", "etc/empty", "bin/sh"]);
        assert_eq!(entries[0].mode, 0o040755);
        assert_eq!((entries[1].mode, entries[1].rdev), (0o020600, (5, 1)));
        assert_eq!(
            (entries[2].mode, entries[2].data.as_slice()),
            (0o100755, &b"\x7fELF-agent"[..])
        );
        assert_eq!(
            (entries[4].mode, entries[4].data.as_slice()),
            (0o120777, &b"/bin/busybox"[..])
        );
        assert!(
            entries
                .iter()
                .all(|e| e.uid == 0 && e.gid == 0 && e.mtime == 0)
        );
    }

    #[test]
    fn output_is_reproducible() {
        assert_eq!(sample(), sample());
    }

    #[test]
    fn trailer_name_is_rejected_as_an_entry() {
        let mut w = CpioWriter::new(Vec::new());
        assert!(w.file(TRAILER, 0o644, b"").is_err());
        assert!(w.dir("/", 0o755).is_err());
    }

    #[test]
    fn system_cpio_lists_the_archive() {
        let Some(cpio) = banger_sys::command::which("cpio") else {
            banger_sys::skip_test("needs cpio (apt-get install cpio)");
            return;
        };
        let out = std::process::Command::new(cpio)
            .args(["-t", "-v", "--quiet"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                child.stdin.take().unwrap().write_all(&sample())?;
                child.wait_with_output()
            })
            .unwrap();
        assert!(out.status.success());
        let listing = String::from_utf8(out.stdout).unwrap();
        let lines: Vec<&str> = listing.lines().collect();
        assert_eq!(lines.len(), 5, "{listing}");
        assert!(
            lines[1].starts_with("crw-------")
                && lines[1].contains("5,")
                && lines[1].ends_with("dev/console"),
            "{listing}"
        );
        assert!(
            lines[2].starts_with("-rwxr-xr-x") && lines[2].ends_with(" init"),
            "{listing}"
        );
        assert!(lines[4].ends_with("bin/sh -> /bin/busybox"), "{listing}");
    }
}
