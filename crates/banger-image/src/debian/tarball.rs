//! Who owns what in a tarball, read straight from its headers. An
//! unprivileged build unpacks mmdebstrap's tarball as the build's user, so
//! every file on disk is that user's; the owners the system needs (group
//! `shadow` on `/etc/shadow`, `_apt`'s `partial/` directories) survive only
//! in the tarball, and come back in the image through [`crate::ext4`]'s
//! `debugfs` fix-up. Owns nothing but reading: unpacking is `tar`'s job.
//!
//! Handles the POSIX ustar, pax (`x` records: `path`, `uid`, `gid`) and GNU
//! (`L` long names, base-256 numbers) dialects GNU tar and mmdebstrap
//! write.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Component, Path, PathBuf};

const BLOCK: usize = 512;

/// Every member of the tarball at `path` that root does not own (user or
/// group), by path relative to the archive's root (`etc/shadow`).
pub fn non_root_owners(path: &Path) -> io::Result<BTreeMap<PathBuf, (u32, u32)>> {
    read_owners(BufReader::new(File::open(path)?))
}

fn read_owners(mut tar: impl Read) -> io::Result<BTreeMap<PathBuf, (u32, u32)>> {
    let mut owners = BTreeMap::new();
    let mut header = [0u8; BLOCK];
    // Set by a pax `x` or GNU `L` header for the member that follows it.
    let mut next = Overrides::default();
    loop {
        if !read_block(&mut tar, &mut header)? || header.iter().all(|&b| b == 0) {
            return Ok(owners);
        }
        let size = number(&header[124..136])?;
        let kind = header[156];
        match kind {
            b'x' | b'L' => {
                let data = read_data(&mut tar, size)?;
                if kind == b'x' {
                    next.pax(&data);
                } else {
                    next.path = Some(cstr(&data).to_string());
                }
                continue;
            }
            _ => skip(&mut tar, size)?,
        }
        // `g` (global pax) and `K` (GNU long link name) describe no member.
        if matches!(kind, b'g' | b'K') {
            continue;
        }
        let overrides = std::mem::take(&mut next);
        let name = overrides.path.unwrap_or_else(|| member_name(&header));
        let uid = overrides
            .uid
            .map_or_else(|| number(&header[108..116]), Ok)?;
        let gid = overrides
            .gid
            .map_or_else(|| number(&header[116..124]), Ok)?;
        let rel = relative(&name);
        if (uid, gid) != (0, 0) && !rel.as_os_str().is_empty() {
            let id = |n: u64| u32::try_from(n).map_err(|_| invalid(format!("id {n} of {name}")));
            owners.insert(rel, (id(uid)?, id(gid)?));
        }
    }
}

/// Member fields a pax or GNU header gives for the next member.
#[derive(Debug, Default)]
struct Overrides {
    path: Option<String>,
    uid: Option<u64>,
    gid: Option<u64>,
}

impl Overrides {
    /// Parses pax records: `<length> <key>=<value>\n`, one after another.
    fn pax(&mut self, mut data: &[u8]) {
        while let Some(space) = data.iter().position(|&b| b == b' ') {
            let len: usize = match std::str::from_utf8(&data[..space])
                .ok()
                .and_then(|l| l.parse().ok())
            {
                Some(len) if len > space && len <= data.len() => len,
                _ => return,
            };
            let record = &data[space + 1..len];
            let record = record.strip_suffix(b"\n").unwrap_or(record);
            if let Some(eq) = record.iter().position(|&b| b == b'=') {
                let value = String::from_utf8_lossy(&record[eq + 1..]).into_owned();
                match &record[..eq] {
                    b"path" => self.path = Some(value),
                    b"uid" => self.uid = value.parse().ok(),
                    b"gid" => self.gid = value.parse().ok(),
                    _ => {}
                }
            }
            data = &data[len..];
        }
    }
}

/// The name in a ustar header, with its `prefix` when the header is POSIX
/// ustar (GNU headers keep other fields there).
fn member_name(header: &[u8; BLOCK]) -> String {
    let name = cstr(&header[0..100]);
    let prefix = cstr(&header[345..500]);
    if &header[257..263] == b"ustar\0" && !prefix.is_empty() {
        format!("{prefix}/{name}")
    } else {
        name.to_string()
    }
}

/// `./etc/shadow`, `etc/sudoers.d/` → `etc/shadow`, `etc/sudoers.d`.
fn relative(name: &str) -> PathBuf {
    Path::new(name)
        .components()
        .filter_map(|c| match c {
            Component::Normal(part) => Some(part),
            _ => None,
        })
        .collect()
}

fn cstr(field: &[u8]) -> std::borrow::Cow<'_, str> {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end])
}

/// A numeric header field: octal text, or base-256 when the top bit of its
/// first byte is set (GNU, for values octal cannot hold).
fn number(field: &[u8]) -> io::Result<u64> {
    if field[0] & 0x80 != 0 {
        let mut n: u64 = u64::from(field[0] & 0x7f);
        for &b in &field[1..] {
            n = n
                .checked_mul(256)
                .ok_or_else(|| invalid("number too large".into()))?
                | u64::from(b);
        }
        return Ok(n);
    }
    let text = cstr(field);
    let text = text.trim_matches(|c: char| c == ' ' || c == '\0');
    if text.is_empty() {
        return Ok(0);
    }
    u64::from_str_radix(text, 8).map_err(|_| invalid(format!("bad octal number {text:?}")))
}

fn read_block(tar: &mut impl Read, block: &mut [u8; BLOCK]) -> io::Result<bool> {
    match tar.read_exact(block) {
        Ok(()) => Ok(true),
        // A tarball may end without its two zero blocks.
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

fn read_data(tar: &mut impl Read, size: u64) -> io::Result<Vec<u8>> {
    if size > 1 << 20 {
        return Err(invalid(format!("{size}-byte extended header")));
    }
    let mut data = vec![0u8; (size as usize).next_multiple_of(BLOCK)];
    tar.read_exact(&mut data)?;
    data.truncate(size as usize);
    Ok(data)
}

fn skip(tar: &mut impl Read, size: u64) -> io::Result<()> {
    let padded = size.next_multiple_of(BLOCK as u64);
    let copied = io::copy(&mut tar.take(padded), &mut io::sink())?;
    if copied != padded {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

fn invalid(what: String) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("not a tarball we can read: {what}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ustar header block; GNU magic when `gnu`.
    fn header(name: &str, kind: u8, size: usize, (uid, gid): (u32, u32), gnu: bool) -> Vec<u8> {
        let mut h = vec![0u8; BLOCK];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[100..107].copy_from_slice(b"0000644");
        h[108..115].copy_from_slice(format!("{uid:07o}").as_bytes());
        h[116..123].copy_from_slice(format!("{gid:07o}").as_bytes());
        h[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
        h[156] = kind;
        h[257..265].copy_from_slice(if gnu { b"ustar  \0" } else { b"ustar\x0000" });
        h
    }

    fn data(bytes: &[u8]) -> Vec<u8> {
        let mut d = bytes.to_vec();
        d.resize(bytes.len().next_multiple_of(BLOCK), 0);
        d
    }

    #[test]
    fn members_not_owned_by_root_are_listed() {
        let mut tar = Vec::new();
        tar.extend(header("./", b'5', 0, (0, 0), true));
        tar.extend(header("./etc/shadow", b'0', 5, (0, 42), true));
        tar.extend(data(b"x:y:z"));
        tar.extend(header(
            "./var/lib/apt/lists/partial/",
            b'5',
            0,
            (42, 0),
            true,
        ));
        tar.extend(header("./usr/bin/sudo", b'0', 3, (0, 0), true));
        tar.extend(data(b"elf"));
        tar.extend([0u8; 2 * BLOCK]);
        let owners = read_owners(&tar[..]).unwrap();
        assert_eq!(
            owners.into_iter().collect::<Vec<_>>(),
            [
                (PathBuf::from("etc/shadow"), (0, 42)),
                (PathBuf::from("var/lib/apt/lists/partial"), (42, 0)),
            ]
        );
    }

    #[test]
    fn pax_and_gnu_long_names_and_ids_apply_to_the_next_member() {
        let long = format!("./usr/share/{}/file", "d".repeat(120));
        let mut tar = Vec::new();
        // `<length> <key>=<value>\n`, the length counting its own digits.
        let record = |kv: &str| {
            let base = kv.len() + 2;
            let mut len = base + base.to_string().len();
            if len.to_string().len() > base.to_string().len() {
                len += 1;
            }
            format!("{len} {kv}\n")
        };
        let pax = format!(
            "{}{}",
            record(&format!("path={long}")),
            record("uid=2000000")
        );
        tar.extend(header("././@PaxHeader", b'x', pax.len(), (0, 0), false));
        tar.extend(data(pax.as_bytes()));
        tar.extend(header("truncated-name", b'0', 0, (0, 7), false));
        tar.extend(header("././@LongLink", b'L', long.len() + 1, (0, 0), true));
        tar.extend(data(format!("{long}2\0").as_bytes()));
        tar.extend(header("truncated", b'0', 0, (0, 8), true));
        let owners = read_owners(&tar[..]).unwrap();
        let base = PathBuf::from(&long[2..]);
        assert_eq!(owners.get(&base), Some(&(2_000_000, 7)));
        assert_eq!(
            owners.get(&PathBuf::from(format!("{}2", &long[2..]))),
            Some(&(0, 8))
        );
        assert_eq!(owners.len(), 2);
    }

    #[test]
    fn posix_prefix_joins_the_name_and_base_256_numbers_decode() {
        let mut h = header("shadow", b'0', 0, (0, 0), false);
        h[345..348].copy_from_slice(b"etc");
        h[116..124].copy_from_slice(&[0x80, 0, 0, 0, 0, 0, 0x01, 0x00]);
        let owners = read_owners(&h[..]).unwrap();
        assert_eq!(owners.get(Path::new("etc/shadow")), Some(&(0, 256)));
    }

    #[test]
    fn truncated_tarball_is_an_error() {
        let mut tar = header("./etc/shadow", b'0', 4096, (0, 42), true);
        tar.extend([0u8; 100]);
        assert!(read_owners(&tar[..]).is_err());
    }
}
