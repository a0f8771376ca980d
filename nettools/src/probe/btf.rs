//! A small reader for the kernel's BTF (`/sys/kernel/btf/vmlinux`): struct member offsets and
//! enum values, which is all nettools needs to run one eBPF object on many kernels.
//!
//! Rust eBPF has no CO-RE relocations, so userspace looks up every kernel struct field the probes
//! read (e.g. `sk_buff.dev`, `net.ns.inum`) here at start-up and passes the offsets in as globals.
//! Anonymous structs and unions are searched through, as the C compiler would.

use std::collections::HashMap;

use anyhow::{Context as _, Result, bail};

const MAGIC: u16 = 0xeb9f;

/// BTF kinds (`BTF_KIND_*`).
mod btf_kind {
    pub const INT: u32 = 1;
    pub const PTR: u32 = 2;
    pub const ARRAY: u32 = 3;
    pub const STRUCT: u32 = 4;
    pub const UNION: u32 = 5;
    pub const ENUM: u32 = 6;
    pub const FWD: u32 = 7;
    pub const TYPEDEF: u32 = 8;
    pub const VOLATILE: u32 = 9;
    pub const CONST: u32 = 10;
    pub const RESTRICT: u32 = 11;
    pub const FUNC: u32 = 12;
    pub const FUNC_PROTO: u32 = 13;
    pub const VAR: u32 = 14;
    pub const DATASEC: u32 = 15;
    pub const FLOAT: u32 = 16;
    pub const DECL_TAG: u32 = 17;
    pub const TYPE_TAG: u32 = 18;
    pub const ENUM64: u32 = 19;
}

/// One parsed BTF type: its header and where its trailing data starts in the type section.
#[derive(Clone, Copy, Debug)]
struct Type {
    name_off: u32,
    kind: u32,
    vlen: u32,
    kind_flag: bool,
    /// `size` for INT/STRUCT/UNION/ENUM/FLOAT/DATASEC, `type` for the others.
    size_or_type: u32,
    /// Offset of the kind-specific data following the 12-byte header.
    extra: usize,
}

/// A struct or union member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    pub type_id: u32,
    /// Offset from the start of the enclosing struct, in bits.
    pub bit_offset: u32,
    /// Bitfield width, 0 for a normal member.
    pub bitfield_size: u32,
}

/// Where a (possibly nested) field lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FieldLocation {
    /// Byte offset from the start of the outermost struct.
    pub offset: u32,
    /// Size of the field in bytes.
    pub size: u32,
}

/// Parsed BTF: the type table and the string table.
pub struct Btf {
    types: Vec<Type>,
    type_data: Vec<u8>,
    strings: Vec<u8>,
    /// Struct and union ids by name, built on first use.
    by_name: HashMap<String, Vec<u32>>,
}

fn u32_at(data: &[u8], at: usize) -> Result<u32> {
    let bytes = data
        .get(at..at + 4)
        .context("BTF data ends in the middle of a type")?;
    Ok(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

impl Btf {
    /// Reads the running kernel's BTF: `/sys/kernel/btf/vmlinux`, or the file named by
    /// `NETTOOLS_BTF` (e.g. a BTFHub file for a kernel built without BTF).
    pub fn from_sys_fs() -> Result<Self> {
        let path =
            std::env::var("NETTOOLS_BTF").unwrap_or_else(|_| "/sys/kernel/btf/vmlinux".into());
        let data = std::fs::read(&path).with_context(|| {
            format!(
                "this kernel has no BTF ({path} is missing): nettools needs a kernel built with \
                 CONFIG_DEBUG_INFO_BTF=y (most distributions since Linux 5.4), or NETTOOLS_BTF \
                 pointing to a BTF file for this kernel"
            )
        })?;
        Self::parse(&data).with_context(|| format!("{path} is not valid BTF"))
    }

    /// Parses raw BTF (little-endian, as on every platform nettools supports).
    pub fn parse(data: &[u8]) -> Result<Self> {
        if data.len() < 24 {
            bail!("BTF data is too short for its header");
        }
        let magic = u16::from_le_bytes([data[0], data[1]]);
        if magic != MAGIC {
            bail!("bad BTF magic {magic:#x} (big-endian BTF is not supported)");
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let type_off = u32_at(data, 8)? as usize;
        let type_len = u32_at(data, 12)? as usize;
        let str_off = u32_at(data, 16)? as usize;
        let str_len = u32_at(data, 20)? as usize;
        let section = |off: usize, len: usize| -> Result<&[u8]> {
            data.get(hdr_len + off..hdr_len + off + len)
                .context("BTF section lies outside the data")
        };
        let type_data = section(type_off, type_len)?.to_vec();
        let strings = section(str_off, str_len)?.to_vec();

        // Type id 0 is `void`: keep a placeholder so ids index the vector directly.
        let mut types = vec![Type {
            name_off: 0,
            kind: 0,
            vlen: 0,
            kind_flag: false,
            size_or_type: 0,
            extra: 0,
        }];
        let mut at = 0;
        while at < type_data.len() {
            let name_off = u32_at(&type_data, at)?;
            let info = u32_at(&type_data, at + 4)?;
            let size_or_type = u32_at(&type_data, at + 8)?;
            let kind = (info >> 24) & 0x1f;
            let vlen = info & 0xffff;
            let extra = at + 12;
            let extra_len = match kind {
                btf_kind::INT | btf_kind::VAR | btf_kind::DECL_TAG => 4,
                btf_kind::ARRAY => 12,
                btf_kind::STRUCT | btf_kind::UNION | btf_kind::DATASEC | btf_kind::ENUM64 => {
                    12 * vlen as usize
                }
                btf_kind::ENUM | btf_kind::FUNC_PROTO => 8 * vlen as usize,
                btf_kind::PTR
                | btf_kind::FWD
                | btf_kind::TYPEDEF
                | btf_kind::VOLATILE
                | btf_kind::CONST
                | btf_kind::RESTRICT
                | btf_kind::FUNC
                | btf_kind::FLOAT
                | btf_kind::TYPE_TAG => 0,
                other => bail!("unknown BTF kind {other} at type {}", types.len()),
            };
            if extra + extra_len > type_data.len() {
                bail!("BTF type {} runs past the type section", types.len());
            }
            types.push(Type {
                name_off,
                kind,
                vlen,
                kind_flag: info >> 31 == 1,
                size_or_type,
                extra,
            });
            at = extra + extra_len;
        }
        Ok(Self {
            types,
            type_data,
            strings,
            by_name: HashMap::new(),
        })
    }

    fn string(&self, off: u32) -> &str {
        let start = off as usize;
        let Some(tail) = self.strings.get(start..) else {
            return "";
        };
        let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
        std::str::from_utf8(&tail[..end]).unwrap_or("")
    }

    fn ty(&self, id: u32) -> Result<&Type> {
        self.types
            .get(id as usize)
            .with_context(|| format!("BTF type id {id} does not exist"))
    }

    /// The type behind typedefs, `const`, `volatile`, `restrict` and type tags.
    fn resolve(&self, mut id: u32) -> Result<u32> {
        for _ in 0..32 {
            let t = self.ty(id)?;
            match t.kind {
                btf_kind::TYPEDEF
                | btf_kind::VOLATILE
                | btf_kind::CONST
                | btf_kind::RESTRICT
                | btf_kind::TYPE_TAG => id = t.size_or_type,
                _ => return Ok(id),
            }
        }
        bail!("BTF type {id} is a chain of modifiers that does not end")
    }

    /// Size in bytes of a type.
    pub fn size_of(&self, id: u32) -> Result<u32> {
        let id = self.resolve(id)?;
        let t = self.ty(id)?;
        Ok(match t.kind {
            btf_kind::INT
            | btf_kind::STRUCT
            | btf_kind::UNION
            | btf_kind::ENUM
            | btf_kind::ENUM64
            | btf_kind::FLOAT => t.size_or_type,
            btf_kind::PTR => 8,
            btf_kind::ARRAY => {
                let elem = u32_at(&self.type_data, t.extra)?;
                let n = u32_at(&self.type_data, t.extra + 8)?;
                self.size_of(elem)? * n
            }
            other => bail!("BTF type {id} of kind {other} has no size"),
        })
    }

    /// The members of a struct or union.
    pub fn members(&self, id: u32) -> Result<Vec<Member>> {
        let t = self.ty(id)?;
        if t.kind != btf_kind::STRUCT && t.kind != btf_kind::UNION {
            bail!("BTF type {id} is not a struct or union");
        }
        (0..t.vlen as usize)
            .map(|i| {
                let at = t.extra + 12 * i;
                let offset = u32_at(&self.type_data, at + 8)?;
                let (bit_offset, bitfield_size) = if t.kind_flag {
                    (offset & 0x00ff_ffff, offset >> 24)
                } else {
                    (offset, 0)
                };
                Ok(Member {
                    name: self.string(u32_at(&self.type_data, at)?).to_string(),
                    type_id: u32_at(&self.type_data, at + 4)?,
                    bit_offset,
                    bitfield_size,
                })
            })
            .collect()
    }

    /// Ids of complete structs (not forward declarations) with this name.
    pub fn struct_ids(&mut self, name: &str) -> Vec<u32> {
        if self.by_name.is_empty() {
            for (id, t) in self.types.iter().enumerate() {
                if t.kind == btf_kind::STRUCT || t.kind == btf_kind::UNION {
                    let n = self.string(t.name_off);
                    if !n.is_empty() {
                        self.by_name
                            .entry(n.to_string())
                            .or_default()
                            .push(id as u32);
                    }
                }
            }
        }
        self.by_name.get(name).cloned().unwrap_or_default()
    }

    /// Finds a direct member by name, looking through anonymous structs and unions.
    /// Returns the member and its bit offset from the start of `id`.
    fn find_member(&self, id: u32, name: &str, depth: u32) -> Result<Option<(Member, u32)>> {
        if depth > 8 {
            return Ok(None);
        }
        for m in self.members(id)? {
            if m.name == name {
                let at = m.bit_offset;
                return Ok(Some((m, at)));
            }
            if m.name.is_empty() {
                let inner = self.resolve(m.type_id)?;
                let k = self.ty(inner)?.kind;
                if (k == btf_kind::STRUCT || k == btf_kind::UNION)
                    && let Some((found, at)) = self.find_member(inner, name, depth + 1)?
                {
                    return Ok(Some((found, m.bit_offset + at)));
                }
            }
        }
        Ok(None)
    }

    /// Locates `path` (members separated by dots, e.g. `"__sk_common.skc_net.net"`) inside the
    /// struct `struct_name`. Fails when the struct or a member does not exist, or is a bitfield.
    pub fn field(&mut self, struct_name: &str, path: &str) -> Result<FieldLocation> {
        let ids = self.struct_ids(struct_name);
        let Some(&root) = ids.first() else {
            bail!("this kernel's BTF has no struct {struct_name}");
        };
        let mut id = root;
        let mut bits = 0u32;
        let mut size = 0u32;
        for part in path.split('.') {
            let (m, at) = self.find_member(id, part, 0)?.with_context(|| {
                format!("this kernel's struct {struct_name} has no member {path}")
            })?;
            if m.bitfield_size != 0 {
                bail!("{struct_name}.{path} is a bitfield and cannot be read by offset");
            }
            bits += at;
            size = self.size_of(m.type_id)?;
            id = self.resolve(m.type_id)?;
        }
        if !bits.is_multiple_of(8) {
            bail!("{struct_name}.{path} does not start on a byte boundary");
        }
        Ok(FieldLocation {
            offset: bits / 8,
            size,
        })
    }

    /// The parameter types of the function prototype a typedef points to, e.g. the raw
    /// tracepoint prototype `btf_trace_kfree_skb` (`void (*)(void *, struct sk_buff *, …)`),
    /// spelt like C (`struct sk_buff *`, `void *`, `enum skb_drop_reason`; `?` for anything else).
    /// The kernel's BTF names no parameters of such prototypes, so their types tell them apart.
    /// `None` when there is no such typedef or it is not a pointer to a prototype.
    pub fn func_proto_params(&self, typedef: &str) -> Option<Vec<String>> {
        let id = self
            .types
            .iter()
            .position(|t| t.kind == btf_kind::TYPEDEF && self.string(t.name_off) == typedef)?
            as u32;
        let ptr = self.ty(self.ty(id).ok()?.size_or_type).ok()?;
        if ptr.kind != btf_kind::PTR {
            return None;
        }
        let proto = self.ty(self.resolve(ptr.size_or_type).ok()?).ok()?;
        if proto.kind != btf_kind::FUNC_PROTO {
            return None;
        }
        (0..proto.vlen as usize)
            .map(|i| {
                let ty = u32_at(&self.type_data, proto.extra + 8 * i + 4).ok()?;
                Some(self.c_type(ty))
            })
            .collect()
    }

    /// A type as C spells it, as far as [`Btf::func_proto_params`] needs.
    fn c_type(&self, id: u32) -> String {
        let Ok(t) = self.resolve(id).and_then(|id| self.ty(id)) else {
            return "?".into();
        };
        match t.kind {
            btf_kind::ENUM | btf_kind::ENUM64 => format!("enum {}", self.string(t.name_off)),
            btf_kind::PTR => match self.resolve(t.size_or_type).and_then(|id| self.ty(id)) {
                Ok(to) if to.kind == btf_kind::STRUCT => {
                    format!("struct {} *", self.string(to.name_off))
                }
                _ if t.size_or_type == 0 => "void *".into(),
                _ => "?".into(),
            },
            _ => "?".into(),
        }
    }

    /// The values of an enum (`ENUM` or `ENUM64`) by name, e.g. `skb_drop_reason`.
    pub fn enum_values(&self, enum_name: &str) -> Option<Vec<(String, i64)>> {
        let t = self.types.iter().find(|t| {
            (t.kind == btf_kind::ENUM || t.kind == btf_kind::ENUM64)
                && self.string(t.name_off) == enum_name
        })?;
        let mut out = Vec::with_capacity(t.vlen as usize);
        for i in 0..t.vlen as usize {
            let (at, value) = if t.kind == btf_kind::ENUM {
                let at = t.extra + 8 * i;
                let raw = u32_at(&self.type_data, at + 4).ok()?;
                // kind_flag marks a signed enum; otherwise the value is unsigned.
                let v = if t.kind_flag {
                    i64::from(raw as i32)
                } else {
                    i64::from(raw)
                };
                (at, v)
            } else {
                let at = t.extra + 12 * i;
                let lo = u32_at(&self.type_data, at + 4).ok()?;
                let hi = u32_at(&self.type_data, at + 8).ok()?;
                (at, ((u64::from(hi) << 32) | u64::from(lo)) as i64)
            };
            let name = self.string(u32_at(&self.type_data, at).ok()?).to_string();
            out.push((name, value));
        }
        Some(out)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds BTF blobs for tests, the way the kernel lays them out.
    #[derive(Default)]
    pub(crate) struct Builder {
        types: Vec<u8>,
        strings: Vec<u8>,
        next_id: u32,
    }

    impl Builder {
        pub(crate) fn new() -> Self {
            Self {
                types: Vec::new(),
                strings: vec![0],
                next_id: 1,
            }
        }
        fn str(&mut self, s: &str) -> u32 {
            if s.is_empty() {
                return 0;
            }
            let off = self.strings.len() as u32;
            self.strings.extend_from_slice(s.as_bytes());
            self.strings.push(0);
            off
        }
        fn header(&mut self, name: &str, kind: u32, vlen: u32, flag: bool, size: u32) -> u32 {
            let name = self.str(name);
            let info = (kind << 24) | vlen | if flag { 1 << 31 } else { 0 };
            for v in [name, info, size] {
                self.types.extend_from_slice(&v.to_le_bytes());
            }
            let id = self.next_id;
            self.next_id += 1;
            id
        }
        pub(crate) fn int(&mut self, name: &str, size: u32) -> u32 {
            let id = self.header(name, btf_kind::INT, 0, false, size);
            self.types.extend_from_slice(&(size * 8).to_le_bytes());
            id
        }
        pub(crate) fn ptr(&mut self, to: u32) -> u32 {
            self.header("", btf_kind::PTR, 0, false, to)
        }
        pub(crate) fn array(&mut self, elem: u32, n: u32) -> u32 {
            let index = self.int("__ARRAY_SIZE_TYPE__", 4);
            let id = self.header("", btf_kind::ARRAY, 0, false, 0);
            for v in [elem, index, n] {
                self.types.extend_from_slice(&v.to_le_bytes());
            }
            id
        }
        pub(crate) fn typedef(&mut self, name: &str, to: u32) -> u32 {
            self.header(name, btf_kind::TYPEDEF, 0, false, to)
        }
        /// A struct (or union) with members given as (name, type, bit offset, bitfield size).
        pub(crate) fn composite(
            &mut self,
            union: bool,
            name: &str,
            size: u32,
            members: &[(&str, u32, u32, u32)],
        ) -> u32 {
            let flag = members.iter().any(|m| m.3 != 0);
            let kind = if union {
                btf_kind::UNION
            } else {
                btf_kind::STRUCT
            };
            let id = self.header(name, kind, members.len() as u32, flag, size);
            for &(mname, ty, bit, bits) in members {
                let n = self.str(mname);
                let off = if flag { (bits << 24) | bit } else { bit };
                for v in [n, ty, off] {
                    self.types.extend_from_slice(&v.to_le_bytes());
                }
            }
            id
        }
        /// A function prototype with unnamed parameters of these types (as the kernel's
        /// raw tracepoint prototypes are).
        pub(crate) fn func_proto(&mut self, params: &[u32]) -> u32 {
            let id = self.header("", btf_kind::FUNC_PROTO, params.len() as u32, false, 0);
            for &ty in params {
                self.types.extend_from_slice(&0u32.to_le_bytes());
                self.types.extend_from_slice(&ty.to_le_bytes());
            }
            id
        }
        pub(crate) fn enumeration(&mut self, name: &str, values: &[(&str, u32)]) -> u32 {
            let id = self.header(name, btf_kind::ENUM, values.len() as u32, false, 4);
            for &(vname, v) in values {
                let n = self.str(vname);
                self.types.extend_from_slice(&n.to_le_bytes());
                self.types.extend_from_slice(&v.to_le_bytes());
            }
            id
        }
        pub(crate) fn build(&self) -> Vec<u8> {
            let mut out = Vec::new();
            out.extend_from_slice(&MAGIC.to_le_bytes());
            out.push(1);
            out.push(0);
            let type_len = self.types.len() as u32;
            for v in [24u32, 0, type_len, type_len, self.strings.len() as u32] {
                out.extend_from_slice(&v.to_le_bytes());
            }
            out.extend_from_slice(&self.types);
            out.extend_from_slice(&self.strings);
            out
        }
    }

    #[test]
    fn finds_members_through_anonymous_unions_and_nested_paths() -> Result<()> {
        let mut b = Builder::new();
        let u32t = b.int("unsigned int", 4);
        let u16t = b.int("short unsigned int", 2);
        let net = b.composite(
            false,
            "net",
            16,
            &[("pad", u32t, 0, 0), ("inum", u32t, 96, 0)],
        );
        let net_ptr = b.ptr(net);
        let possible = b.composite(false, "", 8, &[("net", net_ptr, 0, 0)]);
        let possible_t = b.typedef("possible_net_t", possible);
        let dev = b.composite(false, "net_device", 64, &[("nd_net", possible_t, 256, 0)]);
        let dev_ptr = b.ptr(dev);
        let anon_union = b.composite(
            true,
            "",
            8,
            &[("dev", dev_ptr, 0, 0), ("dev_scratch", u32t, 0, 0)],
        );
        let anon_struct = b.composite(
            false,
            "",
            16,
            &[("next", u32t, 0, 0), ("", anon_union, 64, 0)],
        );
        b.composite(
            false,
            "sk_buff",
            232,
            &[
                ("", anon_struct, 0, 0),
                ("flags", u32t, 1024, 3),
                ("network_header", u16t, 1200, 0),
            ],
        );
        let mut btf = Btf::parse(&b.build())?;
        assert_eq!(
            btf.field("sk_buff", "dev")?,
            FieldLocation { offset: 8, size: 8 }
        );
        assert_eq!(
            btf.field("net_device", "nd_net.net")?,
            FieldLocation {
                offset: 32,
                size: 8
            }
        );
        assert_eq!(
            btf.field("net", "inum")?,
            FieldLocation {
                offset: 12,
                size: 4
            }
        );
        assert_eq!(
            btf.field("sk_buff", "network_header")?,
            FieldLocation {
                offset: 150,
                size: 2
            }
        );
        assert!(
            btf.field("sk_buff", "flags").is_err(),
            "bitfields have no byte offset"
        );
        assert!(btf.field("sk_buff", "nope").is_err());
        assert!(btf.field("no_such_struct", "dev").is_err());
        Ok(())
    }

    #[test]
    fn reads_enum_values() -> Result<()> {
        let mut b = Builder::new();
        b.enumeration(
            "skb_drop_reason",
            &[
                ("SKB_NOT_DROPPED_YET", 0),
                ("SKB_CONSUMED", 1),
                ("SKB_DROP_REASON_NOT_SPECIFIED", 2),
            ],
        );
        let btf = Btf::parse(&b.build())?;
        let values = btf.enum_values("skb_drop_reason").context("enum missing")?;
        assert_eq!(values[2], ("SKB_DROP_REASON_NOT_SPECIFIED".to_string(), 2));
        assert!(btf.enum_values("other").is_none());
        Ok(())
    }

    #[test]
    fn rejects_garbage_without_panicking() {
        assert!(Btf::parse(&[]).is_err());
        assert!(Btf::parse(&[0u8; 64]).is_err());
        let mut b = Builder::new();
        b.int("int", 4);
        let mut data = b.build();
        data.truncate(data.len() - 8);
        assert!(Btf::parse(&data).is_err(), "truncated data must be refused");
    }
}
