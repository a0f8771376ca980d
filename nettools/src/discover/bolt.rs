//! A read-only reader of BoltDB files (go.etcd.io/bbolt), enough to read Podman 4's state
//! database (`bolt_state.db`): its buckets and the keys and values in them.
//!
//! The file is read into memory once (bounded) and never locked or written, so a Podman that
//! writes meanwhile is not held up. Everything in it is untrusted: every offset is checked
//! against the file, the newest meta page whose checksum holds is used, and a walk that meets
//! a page twice (a cycle) or goes deeper than any real tree stops with an error.
//!
//! The format (bbolt's `page.go`, `node.go`, `bucket.go`): two meta pages at pages 0 and 1;
//! every page starts with `id u64, flags u16, count u16, overflow u32`; branch elements are
//! `pos u32, ksize u32, pgid u64`, leaf elements `flags u32, pos u32, ksize u32, vsize u32`,
//! `pos` counting from the element itself. A leaf element with flag 1 is a nested bucket whose
//! value is `root u64, sequence u64`, followed by the bucket's own page when `root` is 0
//! (an inline bucket).

use std::{collections::HashSet, io::Read as _, path::Path};

use anyhow::{Context as _, Result, bail};

const MAGIC: u32 = 0xED0C_DAED;
const VERSION: u32 = 2;
const PAGE_HEADER: usize = 16;
const ELEMENT: usize = 16;
const BRANCH: u16 = 0x01;
const LEAF: u16 = 0x02;
const BUCKET_LEAF: u32 = 0x01;
/// Deeper than any B+tree a real file holds (bbolt's trees are a few levels).
const MAX_DEPTH: usize = 32;

/// A BoltDB file's bytes and where its newest consistent tree starts.
pub struct Db {
    data: Vec<u8>,
    page_size: usize,
    root: u64,
}

/// A bucket: the root bucket or one nested in another.
#[derive(Clone, Copy)]
pub struct Bucket<'a> {
    db: &'a Db,
    root: Root<'a>,
}

#[derive(Clone, Copy)]
enum Root<'a> {
    Page(u64),
    /// An inline bucket's page, inside its parent's value.
    Inline(&'a [u8]),
}

/// A value under a key: bytes, or a nested bucket.
pub enum Value<'a> {
    Bytes(&'a [u8]),
    Bucket(Bucket<'a>),
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// FNV-1a, 64 bits: bbolt's meta checksum.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A meta page at `offset`: (page size, root bucket page, txid) when it is whole.
fn meta(data: &[u8], offset: usize) -> Option<(usize, u64, u64)> {
    let m = offset.checked_add(PAGE_HEADER)?;
    let body = data.get(m..m.checked_add(64)?)?;
    let ok = u32_at(body, 0)? == MAGIC
        && u32_at(body, 4)? == VERSION
        && fnv1a(body.get(..56)?) == u64_at(body, 56)?;
    if !ok {
        return None;
    }
    let page_size = usize::try_from(u32_at(body, 8)?).ok()?;
    if !(512..=1 << 20).contains(&page_size) {
        return None;
    }
    Some((page_size, u64_at(body, 16)?, u64_at(body, 48)?))
}

impl Db {
    /// Reads a file of at most `max` bytes.
    pub fn open(path: &Path, max: u64) -> Result<Self> {
        let file =
            std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let mut data = Vec::new();
        file.take(max + 1)
            .read_to_end(&mut data)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if data.len() as u64 > max {
            bail!(
                "{} is larger than {}",
                path.display(),
                super::size(usize::try_from(max).unwrap_or(usize::MAX))
            );
        }
        Self::parse(data).with_context(|| format!("{} is not a BoltDB file", path.display()))
    }

    /// The file's bytes: the newer of the two meta pages whose checksum holds.
    pub fn parse(data: Vec<u8>) -> Result<Self> {
        let first = meta(&data, 0);
        // The second meta page sits one page in: the first one's page size, or the usual 4 KiB
        // when the first is torn.
        let second_at = first.map_or(4096, |(ps, _, _)| ps);
        let second = meta(&data, second_at).filter(|(ps, _, _)| *ps == second_at);
        let (page_size, root, _) = match (first, second) {
            (Some(a), Some(b)) => {
                if b.2 > a.2 {
                    b
                } else {
                    a
                }
            }
            (Some(m), None) | (None, Some(m)) => m,
            (None, None) => bail!("no meta page with a valid checksum"),
        };
        Ok(Self {
            data,
            page_size,
            root,
        })
    }

    /// The root bucket, whose keys name the top-level buckets.
    pub fn root(&self) -> Bucket<'_> {
        Bucket {
            db: self,
            root: Root::Page(self.root),
        }
    }

    /// Page `id` with its overflow pages, cut to the file.
    fn page(&self, id: u64) -> Result<&[u8]> {
        let start = usize::try_from(id)
            .ok()
            .and_then(|i| i.checked_mul(self.page_size))
            .filter(|s| s.saturating_add(PAGE_HEADER) <= self.data.len())
            .with_context(|| format!("page {id} lies outside the file"))?;
        let overflow = u32_at(&self.data, start + 12).unwrap_or(0);
        let len = (usize::try_from(overflow).unwrap_or(usize::MAX))
            .saturating_add(1)
            .saturating_mul(self.page_size);
        let end = start.saturating_add(len).min(self.data.len());
        Ok(&self.data[start..end])
    }
}

impl<'a> Bucket<'a> {
    /// Every key and value, in key order.
    pub fn entries(&self) -> Result<Vec<(&'a [u8], Value<'a>)>> {
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        match self.root {
            Root::Page(id) => self.walk(id, 0, &mut seen, &mut out)?,
            Root::Inline(page) => self.leaf(page, &mut out)?,
        }
        Ok(out)
    }

    /// The value under `key`.
    pub fn get(&self, key: &[u8]) -> Result<Option<Value<'a>>> {
        Ok(self
            .entries()?
            .into_iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v))
    }

    /// The bucket under `key` (`None` when there is none, or the key holds bytes).
    pub fn bucket(&self, key: &[u8]) -> Result<Option<Bucket<'a>>> {
        Ok(match self.get(key)? {
            Some(Value::Bucket(b)) => Some(b),
            _ => None,
        })
    }

    /// The bytes under `key` (`None` when there are none, or the key holds a bucket).
    pub fn bytes(&self, key: &[u8]) -> Result<Option<&'a [u8]>> {
        Ok(match self.get(key)? {
            Some(Value::Bytes(b)) => Some(b),
            _ => None,
        })
    }

    fn walk(
        &self,
        id: u64,
        depth: usize,
        seen: &mut HashSet<u64>,
        out: &mut Vec<(&'a [u8], Value<'a>)>,
    ) -> Result<()> {
        if depth > MAX_DEPTH {
            bail!("its tree is deeper than {MAX_DEPTH} levels");
        }
        if !seen.insert(id) {
            bail!("page {id} is reached twice");
        }
        let db: &'a Db = self.db;
        let page = db.page(id)?;
        let flags = u16_at(page, 8).unwrap_or(0);
        if flags & BRANCH != 0 {
            let count = usize::from(u16_at(page, 10).unwrap_or(0));
            for i in 0..count {
                let at = PAGE_HEADER + i * ELEMENT;
                let child = u64_at(page, at + 8)
                    .with_context(|| format!("page {id}'s element {i} is cut off"))?;
                self.walk(child, depth + 1, seen, out)?;
            }
            Ok(())
        } else if flags & LEAF != 0 {
            self.leaf(page, out)
        } else {
            bail!("page {id} is neither a branch nor a leaf (flags {flags:#x})")
        }
    }

    /// The elements of one leaf page.
    fn leaf(&self, page: &'a [u8], out: &mut Vec<(&'a [u8], Value<'a>)>) -> Result<()> {
        let flags = u16_at(page, 8).unwrap_or(0);
        if flags & LEAF == 0 {
            bail!("an inline bucket's page is not a leaf (flags {flags:#x})");
        }
        let count = usize::from(u16_at(page, 10).unwrap_or(0));
        for i in 0..count {
            let at = PAGE_HEADER + i * ELEMENT;
            let field = |n: usize| {
                u32_at(page, at + 4 * n)
                    .and_then(|v| usize::try_from(v).ok())
                    .with_context(|| format!("leaf element {i} is cut off"))
            };
            let (kind, pos, ksize, vsize) = (field(0)?, field(1)?, field(2)?, field(3)?);
            let k0 = at.saturating_add(pos);
            let v0 = k0.saturating_add(ksize);
            let key = page
                .get(k0..v0)
                .with_context(|| format!("leaf element {i}'s key lies outside its page"))?;
            let value = page
                .get(v0..v0.saturating_add(vsize))
                .with_context(|| format!("leaf element {i}'s value lies outside its page"))?;
            let value = if kind as u32 & BUCKET_LEAF != 0 {
                let root = u64_at(value, 0).context("a nested bucket's header is cut off")?;
                let root = if root == 0 {
                    Root::Inline(value.get(16..).unwrap_or_default())
                } else {
                    Root::Page(root)
                };
                Value::Bucket(Bucket { db: self.db, root })
            } else {
                Value::Bytes(value)
            };
            out.push((key, value));
        }
        Ok(())
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// Builds BoltDB files for tests: pages laid out by hand, as bbolt lays them out.
    pub struct Builder {
        pub page_size: usize,
        pub pages: Vec<Vec<u8>>,
    }

    /// A leaf entry: bytes, or a nested bucket (inline when given its entries, or on a page).
    pub enum Entry {
        Bytes(Vec<u8>, Vec<u8>),
        Inline(Vec<u8>, Vec<Entry>),
        OnPage(Vec<u8>, u64),
    }

    pub fn bytes(k: &str, v: &str) -> Entry {
        Entry::Bytes(k.as_bytes().to_vec(), v.as_bytes().to_vec())
    }

    pub fn inline(k: &str, entries: Vec<Entry>) -> Entry {
        Entry::Inline(k.as_bytes().to_vec(), entries)
    }

    /// A leaf page's bytes (header included) holding `entries`.
    pub fn leaf(id: u64, entries: &[Entry]) -> Vec<u8> {
        let mut header = Vec::new();
        let mut body = Vec::new();
        let n = entries.len();
        header.extend_from_slice(&id.to_le_bytes());
        header.extend_from_slice(&LEAF.to_le_bytes());
        header.extend_from_slice(&(n as u16).to_le_bytes());
        header.extend_from_slice(&0u32.to_le_bytes());
        for (i, e) in entries.iter().enumerate() {
            let (flag, k, v) = match e {
                Entry::Bytes(k, v) => (0u32, k.clone(), v.clone()),
                Entry::Inline(k, inner) => {
                    let mut v = vec![0u8; 16];
                    v.extend(leaf(0, inner));
                    (1, k.clone(), v)
                }
                Entry::OnPage(k, root) => {
                    let mut v = root.to_le_bytes().to_vec();
                    v.extend_from_slice(&0u64.to_le_bytes());
                    (1, k.clone(), v)
                }
            };
            let element_at = PAGE_HEADER + i * ELEMENT;
            let data_at = PAGE_HEADER + n * ELEMENT + body.len();
            header.extend_from_slice(&flag.to_le_bytes());
            header.extend_from_slice(&((data_at - element_at) as u32).to_le_bytes());
            header.extend_from_slice(&(k.len() as u32).to_le_bytes());
            header.extend_from_slice(&(v.len() as u32).to_le_bytes());
            body.extend(k);
            body.extend(v);
        }
        header.extend(body);
        header
    }

    /// A branch page pointing at `children` (first key, page).
    pub fn branch(id: u64, children: &[(&str, u64)]) -> Vec<u8> {
        let mut header = Vec::new();
        let mut body = Vec::new();
        let n = children.len();
        header.extend_from_slice(&id.to_le_bytes());
        header.extend_from_slice(&BRANCH.to_le_bytes());
        header.extend_from_slice(&(n as u16).to_le_bytes());
        header.extend_from_slice(&0u32.to_le_bytes());
        for (i, (k, child)) in children.iter().enumerate() {
            let element_at = PAGE_HEADER + i * ELEMENT;
            let data_at = PAGE_HEADER + n * ELEMENT + body.len();
            header.extend_from_slice(&((data_at - element_at) as u32).to_le_bytes());
            header.extend_from_slice(&(k.len() as u32).to_le_bytes());
            header.extend_from_slice(&child.to_le_bytes());
            body.extend_from_slice(k.as_bytes());
        }
        header.extend(body);
        header
    }

    fn meta_page(id: u64, page_size: usize, root: u64, txid: u64) -> Vec<u8> {
        let mut p = Vec::new();
        p.extend_from_slice(&id.to_le_bytes());
        p.extend_from_slice(&0x04u16.to_le_bytes());
        p.extend_from_slice(&0u16.to_le_bytes());
        p.extend_from_slice(&0u32.to_le_bytes());
        let mut m = Vec::new();
        m.extend_from_slice(&MAGIC.to_le_bytes());
        m.extend_from_slice(&VERSION.to_le_bytes());
        m.extend_from_slice(&(page_size as u32).to_le_bytes());
        m.extend_from_slice(&0u32.to_le_bytes());
        m.extend_from_slice(&root.to_le_bytes());
        m.extend_from_slice(&0u64.to_le_bytes());
        m.extend_from_slice(&2u64.to_le_bytes());
        m.extend_from_slice(&16u64.to_le_bytes());
        m.extend_from_slice(&txid.to_le_bytes());
        let sum = fnv1a(&m);
        m.extend_from_slice(&sum.to_le_bytes());
        p.extend(m);
        p
    }

    impl Builder {
        /// Two meta pages (the second, newer one pointing at `root`) and the pages given,
        /// from page 2 on.
        pub fn file(page_size: usize, root: u64, pages: Vec<Vec<u8>>) -> Vec<u8> {
            let mut all = vec![
                meta_page(0, page_size, 999, 1),
                meta_page(1, page_size, root, 2),
            ];
            all.extend(pages);
            let mut out = Vec::new();
            for mut p in all {
                assert!(p.len() <= page_size, "test page too large");
                p.resize(page_size, 0);
                out.extend(p);
            }
            out
        }
    }

    fn names(b: &Bucket<'_>) -> Result<Vec<String>> {
        Ok(b.entries()?
            .iter()
            .map(|(k, _)| String::from_utf8_lossy(k).into_owned())
            .collect())
    }

    #[test]
    fn reads_buckets_inline_and_on_pages_through_branches() -> Result<()> {
        let file = Builder::file(
            1024,
            2,
            vec![
                // 2: the root bucket.
                leaf(
                    2,
                    &[
                        Entry::OnPage(b"big".to_vec(), 3),
                        inline(
                            "small",
                            vec![bytes("a", "1"), inline("deeper", vec![bytes("x", "y")])],
                        ),
                    ],
                ),
                // 3: a branch over two leaves.
                branch(3, &[("k1", 4), ("k3", 5)]),
                leaf(4, &[bytes("k1", "v1"), bytes("k2", "v2")]),
                leaf(5, &[bytes("k3", "v3")]),
            ],
        );
        let db = Db::parse(file)?;
        let root = db.root();
        assert_eq!(names(&root)?, ["big", "small"]);
        let big = root.bucket(b"big")?.context("big")?;
        assert_eq!(names(&big)?, ["k1", "k2", "k3"]);
        assert_eq!(big.bytes(b"k3")?, Some(&b"v3"[..]));
        let small = root.bucket(b"small")?.context("small")?;
        assert_eq!(small.bytes(b"a")?, Some(&b"1"[..]));
        let deeper = small.bucket(b"deeper")?.context("deeper")?;
        assert_eq!(deeper.bytes(b"x")?, Some(&b"y"[..]));
        // Bytes are not buckets, and absent keys are nothing.
        assert!(small.bucket(b"a")?.is_none());
        assert!(root.bucket(b"nope")?.is_none());
        Ok(())
    }

    #[test]
    fn a_torn_meta_page_falls_back_to_the_other() -> Result<()> {
        let mut file = Builder::file(1024, 2, vec![leaf(2, &[bytes("k", "v")])]);
        // Tear the newer meta page (page 1): the older one points at page 999, outside.
        file[1024 + 40] ^= 0xff;
        let db = Db::parse(file.clone())?;
        assert!(db.root().entries().is_err());
        // Tear both: not a BoltDB file.
        file[40] ^= 0xff;
        assert!(Db::parse(file).is_err());
        assert!(Db::parse(b"hello".to_vec()).is_err());
        Ok(())
    }

    #[test]
    fn cycles_and_offsets_past_the_page_are_errors() -> Result<()> {
        // A branch that points at itself.
        let db = Db::parse(Builder::file(1024, 2, vec![branch(2, &[("a", 2)])]))?;
        let e = format!("{:#}", db.root().entries().err().context("no error")?);
        assert!(e.contains("reached twice"), "{e}");
        // A key that claims to run past its page.
        let mut page = leaf(2, &[bytes("k", "v")]);
        page[PAGE_HEADER + 8..PAGE_HEADER + 12].copy_from_slice(&5000u32.to_le_bytes());
        let db = Db::parse(Builder::file(1024, 2, vec![page]))?;
        let e = format!("{:#}", db.root().entries().err().context("no error")?);
        assert!(e.contains("outside its page"), "{e}");
        Ok(())
    }

    proptest::proptest! {
        /// Any bytes: an answer or an error, never a panic or a hang.
        #[test]
        fn garbage_never_panics(mut bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..6000), flips in proptest::collection::vec((0usize..6000, proptest::num::u8::ANY), 0..40)) {
            let mut file = Builder::file(1024, 2, vec![
                leaf(2, &[Entry::OnPage(b"big".to_vec(), 3), inline("s", vec![bytes_entry()])]),
                branch(3, &[("k1", 4)]),
                leaf(4, &[bytes_entry()]),
            ]);
            for (at, b) in flips {
                if let Some(x) = file.get_mut(at) { *x = b; }
            }
            file.append(&mut bytes);
            if let Ok(db) = Db::parse(file) {
                let root = db.root();
                if let Ok(entries) = root.entries() {
                    for (_, v) in entries {
                        if let Value::Bucket(b) = v {
                            let _ = b.entries();
                        }
                    }
                }
            }
        }
    }

    fn bytes_entry() -> Entry {
        bytes("k", "v")
    }
}
