//! Tracepoint record layouts, read from tracefs `format` files at start-up: field offsets move
//! between kernels (e.g. `skb:kfree_skb` gained `rx_sk` in 6.12 and `reason` in 5.17).

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};

/// Where tracefs may be mounted, newest convention first.
const TRACEFS_DIRS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// One field of a tracepoint record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub offset: u32,
    pub size: u32,
}

/// The fields of one tracepoint, as its `format` file lists them.
#[derive(Clone, Debug, Default)]
pub struct Format {
    pub fields: Vec<Field>,
}

impl Format {
    /// Parses the text of a tracefs `format` file.
    pub fn parse(text: &str) -> Self {
        let mut fields = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            let Some(rest) = line.strip_prefix("field:") else {
                continue;
            };
            // "field:unsigned short protocol;\toffset:32;\tsize:2;\tsigned:0;"
            let mut decl = "";
            let mut offset = None;
            let mut size = None;
            for (i, part) in rest.split(';').enumerate() {
                let part = part.trim();
                if i == 0 {
                    decl = part;
                } else if let Some(v) = part.strip_prefix("offset:") {
                    offset = v.trim().parse().ok();
                } else if let Some(v) = part.strip_prefix("size:") {
                    size = v.trim().parse().ok();
                }
            }
            // The name is the last word of the declaration, without any array suffix.
            let name = decl
                .rsplit(|c: char| c.is_whitespace() || c == '*')
                .next()
                .unwrap_or("")
                .split('[')
                .next()
                .unwrap_or("")
                .to_string();
            if let (false, Some(offset), Some(size)) = (name.is_empty(), offset, size) {
                fields.push(Field { name, offset, size });
            }
        }
        Self { fields }
    }

    /// The field with this name.
    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.name == name)
    }

    /// The offset of field `name` when it has `size` bytes, else
    /// [`ABSENT`](nettools_common::config::ABSENT) (what the kernel programs test for).
    pub fn offset(&self, name: &str, size: u32) -> u32 {
        self.field(name)
            .filter(|x| x.size == size)
            .map_or(nettools_common::config::ABSENT, |x| x.offset)
    }
}

/// The tracefs mount point, mounting it at `/sys/kernel/tracing` when nothing is mounted yet.
pub fn root() -> Result<PathBuf> {
    for dir in TRACEFS_DIRS {
        if Path::new(dir).join("events").is_dir() {
            return Ok(PathBuf::from(dir));
        }
    }
    let target = TRACEFS_DIRS[0];
    mount_tracefs(target).with_context(|| {
        format!(
            "tracefs is not mounted and mounting it failed: run `mount -t tracefs tracefs \
             {target}` (or give the container /sys/kernel/tracing)"
        )
    })?;
    Ok(PathBuf::from(target))
}

fn mount_tracefs(target: &str) -> Result<()> {
    let fstype = c"tracefs";
    let target_c = std::ffi::CString::new(target)?;
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target_c.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        bail!("mount: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Reads the record format of `group:name`.
pub fn format(group: &str, name: &str) -> Result<Format> {
    let path = root()?.join("events").join(group).join(name).join("format");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "this kernel has no tracepoint {group}:{name} ({} is missing)",
            path.display()
        )
    })?;
    Ok(Format::parse(&text))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KFREE_SKB_6_18: &str = "name: kfree_skb
ID: 1557
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:void * location;\toffset:16;\tsize:8;\tsigned:0;
\tfield:void * rx_sk;\toffset:24;\tsize:8;\tsigned:0;
\tfield:unsigned short protocol;\toffset:32;\tsize:2;\tsigned:0;
\tfield:enum skb_drop_reason reason;\toffset:36;\tsize:4;\tsigned:0;
\tfield:__u8 saddr[4];\toffset:40;\tsize:4;\tsigned:0;

print fmt: \"skbaddr=%p\", REC->skbaddr
";

    #[test]
    fn parses_fields_with_pointers_enums_and_arrays() {
        let f = Format::parse(KFREE_SKB_6_18);
        let get = |n: &str| f.field(n).map(|f| (f.offset, f.size));
        assert_eq!(get("skbaddr"), Some((8, 8)));
        assert_eq!(get("rx_sk"), Some((24, 8)));
        assert_eq!(get("protocol"), Some((32, 2)));
        assert_eq!(get("reason"), Some((36, 4)));
        assert_eq!(get("saddr"), Some((40, 4)));
        assert_eq!(get("common_pid"), Some((4, 4)));
        assert_eq!(get("nothing"), None);
    }

    #[test]
    fn old_kernel_without_reason() {
        let old = "\tfield:void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;\n\
                   \tfield:void * location;\toffset:16;\tsize:8;\tsigned:0;\n\
                   \tfield:unsigned short protocol;\toffset:24;\tsize:2;\tsigned:0;\n";
        let f = Format::parse(old);
        assert_eq!(f.field("protocol").map(|f| f.offset), Some(24));
        assert!(f.field("reason").is_none());
        assert!(Format::parse("garbage\nfield:;;;\n").fields.is_empty());
    }
}
