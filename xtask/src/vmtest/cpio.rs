//! A minimal writer for the `newc` cpio format, the one the kernel unpacks as an initramfs.
//!
//! Entries are collected by path first, so parent directories are added automatically and a
//! later entry replaces an earlier one with the same path; [`Archive::write`] emits them sorted,
//! parents before children.

use std::{collections::BTreeMap, io::Write};

use anyhow::{Context as _, Result, bail};

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Entry {
    Dir,
    File { data: Vec<u8>, executable: bool },
    Symlink(String),
}

/// An initramfs being assembled in memory.
#[derive(Default)]
pub struct Archive {
    entries: BTreeMap<String, Entry>,
}

/// `usr/bin/x` from `/usr/bin/x`, `usr/bin/x/`, `./usr/bin/x`.
fn normalise(path: &str) -> Result<String> {
    let parts: Vec<&str> = path
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    if parts.is_empty() || parts.contains(&"..") {
        bail!("{path:?} is not a path inside the image");
    }
    Ok(parts.join("/"))
}

impl Archive {
    pub fn new() -> Self {
        Self::default()
    }

    fn parents(&mut self, path: &str) {
        let mut end = 0;
        while let Some(i) = path[end..].find('/') {
            end += i;
            self.entries
                .entry(path[..end].to_string())
                .or_insert(Entry::Dir);
            end += 1;
        }
    }

    fn insert(&mut self, path: &str, entry: Entry) -> Result<()> {
        let path = normalise(path)?;
        self.parents(&path);
        self.entries.insert(path, entry);
        Ok(())
    }

    pub fn dir(&mut self, path: &str) -> Result<()> {
        self.insert(path, Entry::Dir)
    }

    pub fn file(&mut self, path: &str, data: Vec<u8>, executable: bool) -> Result<()> {
        self.insert(path, Entry::File { data, executable })
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> Result<()> {
        self.insert(path, Entry::Symlink(target.to_string()))
    }

    /// Whether something exists at `path`.
    pub fn contains(&self, path: &str) -> bool {
        normalise(path).is_ok_and(|p| self.entries.contains_key(&p))
    }

    /// The archive as bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.write(&mut out)?;
        Ok(out)
    }

    pub fn write(&self, out: &mut impl Write) -> Result<()> {
        for (ino, (path, entry)) in (1u32..).zip(&self.entries) {
            let (mode, data): (u32, &[u8]) = match entry {
                Entry::Dir => (S_IFDIR | 0o755, &[]),
                Entry::File { data, executable } => {
                    (S_IFREG | if *executable { 0o755 } else { 0o644 }, data)
                }
                Entry::Symlink(target) => (S_IFLNK | 0o777, target.as_bytes()),
            };
            let nlink = if matches!(entry, Entry::Dir) { 2 } else { 1 };
            record(out, ino, mode, nlink, path, data)?;
        }
        record(out, 0, 0, 1, "TRAILER!!!", &[])
    }
}

fn pad(out: &mut impl Write, written: usize) -> Result<()> {
    let n = (4 - written % 4) % 4;
    out.write_all(&[0u8; 3][..n])?;
    Ok(())
}

fn record(
    out: &mut impl Write,
    ino: u32,
    mode: u32,
    nlink: u32,
    name: &str,
    data: &[u8],
) -> Result<()> {
    let size = u32::try_from(data.len()).with_context(|| format!("{name} is over 4 GiB"))?;
    let namesize = name.len() + 1;
    let header = format!(
        "070701{ino:08x}{mode:08x}{uid:08x}{gid:08x}{nlink:08x}{mtime:08x}{size:08x}\
         {devmajor:08x}{devminor:08x}{rdevmajor:08x}{rdevminor:08x}{namesize:08x}{check:08x}",
        uid = 0,
        gid = 0,
        mtime = 0,
        devmajor = 0,
        devminor = 0,
        rdevmajor = 0,
        rdevminor = 0,
        check = 0,
    );
    out.write_all(header.as_bytes())?;
    out.write_all(name.as_bytes())?;
    out.write_all(&[0])?;
    pad(out, header.len() + namesize)?;
    out.write_all(data)?;
    pad(out, data.len())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads an archive back: (name, mode, data) per record.
    fn parse(mut bytes: &[u8]) -> Vec<(String, u32, Vec<u8>)> {
        let mut out = Vec::new();
        let field = |h: &[u8], i: usize| {
            u32::from_str_radix(
                std::str::from_utf8(&h[6 + 8 * i..14 + 8 * i]).unwrap_or(""),
                16,
            )
            .unwrap_or(u32::MAX)
        };
        loop {
            assert_eq!(&bytes[..6], b"070701");
            let (mode, size, namesize) = (
                field(bytes, 1),
                field(bytes, 6) as usize,
                field(bytes, 11) as usize,
            );
            let name = String::from_utf8_lossy(&bytes[110..110 + namesize - 1]).into_owned();
            let data_start = (110 + namesize).div_ceil(4) * 4;
            let data = bytes[data_start..data_start + size].to_vec();
            let next = (data_start + size).div_ceil(4) * 4;
            if name == "TRAILER!!!" {
                assert_eq!(next, bytes.len(), "nothing after the trailer");
                return out;
            }
            out.push((name, mode, data));
            bytes = &bytes[next..];
        }
    }

    #[test]
    fn round_trips_with_parents_first() -> Result<()> {
        let mut a = Archive::new();
        a.file("/usr/bin/tool", b"abc".to_vec(), true)?;
        a.symlink("bin", "usr/bin")?;
        a.file("./etc/hostname", b"vm\n".to_vec(), false)?;
        a.dir("tmp/")?;
        assert!(a.contains("/usr/bin") && a.contains("usr/bin/tool") && !a.contains("x"));
        let records = parse(&a.to_bytes()?);
        let names: Vec<&str> = records.iter().map(|r| r.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "bin",
                "etc",
                "etc/hostname",
                "tmp",
                "usr",
                "usr/bin",
                "usr/bin/tool"
            ]
        );
        let get = |n: &str| records.iter().find(|r| r.0 == n).cloned();
        assert_eq!(
            get("bin"),
            Some(("bin".into(), S_IFLNK | 0o777, b"usr/bin".to_vec()))
        );
        assert_eq!(
            get("usr/bin/tool").map(|r| (r.1, r.2)),
            Some((S_IFREG | 0o755, b"abc".to_vec()))
        );
        assert_eq!(get("etc/hostname").map(|r| r.1), Some(S_IFREG | 0o644));
        assert_eq!(get("usr").map(|r| r.1), Some(S_IFDIR | 0o755));
        Ok(())
    }

    #[test]
    fn refuses_paths_outside_the_image() {
        let mut a = Archive::new();
        assert!(a.file("../etc/passwd", vec![], false).is_err());
        assert!(a.dir("/").is_err());
    }
}
