//! Kernel addresses to `function+0xoffset`, from `/proc/kallsyms` (read once, at the first
//! lookup, then binary search).

use std::sync::OnceLock;

use anyhow::{Context as _, Result};

/// A kernel text symbol: address, name, module.
type Symbol = (u64, String, Option<String>);

/// A sorted table of kernel text symbols.
#[derive(Clone, Debug, Default)]
pub struct Kallsyms {
    /// Sorted by address; filled at the first lookup when `deferred`.
    symbols: OnceLock<Vec<Symbol>>,
    /// Read `/proc/kallsyms` at the first lookup. The kernel formats every symbol for each read
    /// (over 100 000 lines: 25 ms of a core here, a fifth of a second under emulation), and a
    /// run without drops or stacks never needs one.
    deferred: bool,
}

impl Kallsyms {
    /// Reads `/proc/kallsyms`. As root the addresses are real; otherwise they read as zero and
    /// every lookup fails (the report then shows raw addresses).
    pub fn load() -> Result<Self> {
        Ok(Self {
            symbols: OnceLock::from(Self::read()?),
            deferred: false,
        })
    }

    /// A table that reads `/proc/kallsyms` when the first address is looked up; when that
    /// fails it says so once (a warning) and every location is shown as an address.
    pub fn when_needed() -> Self {
        Self {
            symbols: OnceLock::new(),
            deferred: true,
        }
    }

    fn read() -> Result<Vec<Symbol>> {
        let text = std::fs::read_to_string("/proc/kallsyms")
            .context("cannot read /proc/kallsyms to name kernel locations")?;
        Ok(parse_symbols(&text))
    }

    /// Parses kallsyms text: `ffffffff81000000 T _stext` or `… t name\t[module]`.
    pub fn parse(text: &str) -> Self {
        Self {
            symbols: OnceLock::from(parse_symbols(text)),
            deferred: false,
        }
    }

    /// The table, read now if it was deferred and this is the first lookup.
    fn table(&self) -> &[Symbol] {
        if self.deferred {
            self.symbols.get_or_init(|| {
                Self::read().unwrap_or_else(|e| {
                    log::warn!("{e:#}; kernel locations are shown as addresses");
                    Vec::new()
                })
            })
        } else {
            self.symbols.get().map_or(&[], Vec::as_slice)
        }
    }

    /// Whether any symbol is known (false when kallsyms hides addresses).
    pub fn is_empty(&self) -> bool {
        self.table().is_empty()
    }

    /// The function containing `addr`, as `name+0xoff` (with ` [module]` for module code).
    pub fn symbolize(&self, addr: u64) -> Option<String> {
        let symbols = self.table();
        let idx = symbols.partition_point(|s| s.0 <= addr);
        let (start, name, module) = symbols.get(idx.checked_sub(1)?)?;
        // Past the last symbol by more than any function is long: not kernel text we know.
        if addr - start > 1 << 20 {
            return None;
        }
        Some(match module {
            Some(m) => format!("{name}+{:#x} [{m}]", addr - start),
            None => format!("{name}+{:#x}", addr - start),
        })
    }

    /// The function name only (no offset), e.g. for flame graph frames.
    pub fn function(&self, addr: u64) -> Option<&str> {
        let symbols = self.table();
        let idx = symbols.partition_point(|s| s.0 <= addr);
        let (start, name, _) = symbols.get(idx.checked_sub(1)?)?;
        (addr - start <= 1 << 20).then_some(name.as_str())
    }

    /// `symbolize`, falling back to the raw address.
    pub fn describe(&self, addr: u64) -> String {
        self.symbolize(addr).unwrap_or_else(|| format!("{addr:#x}"))
    }
}

/// Kallsyms text to a sorted table of text symbols (data symbols are never a code location;
/// hidden addresses read as zero and are left out).
fn parse_symbols(text: &str) -> Vec<Symbol> {
    let mut symbols: Vec<Symbol> = text
        .lines()
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            let addr = u64::from_str_radix(parts.next()?, 16).ok()?;
            let kind = parts.next()?;
            let name = parts.next()?;
            if addr == 0 || !matches!(kind, "t" | "T" | "w" | "W") {
                return None;
            }
            let module = parts
                .next()
                .map(|m| m.trim_start_matches('[').trim_end_matches(']').to_string());
            Some((addr, name.to_string(), module))
        })
        .collect();
    symbols.sort_by_key(|s| s.0);
    symbols
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
ffffffff81000000 T _stext
ffffffff81a00000 T nf_hook_slow
ffffffff81a00100 t nf_hook_slow_list
ffffffff81b00000 D some_data
ffffffffc0001000 t veth_xmit\t[veth]
0000000000000000 T hidden
";

    #[test]
    fn symbolizes_inside_functions_and_modules() {
        let k = Kallsyms::parse(SAMPLE);
        assert_eq!(
            k.symbolize(0xffffffff81a0009c).as_deref(),
            Some("nf_hook_slow+0x9c")
        );
        assert_eq!(
            k.symbolize(0xffffffff81a00100).as_deref(),
            Some("nf_hook_slow_list+0x0")
        );
        assert_eq!(
            k.symbolize(0xffffffffc0001010).as_deref(),
            Some("veth_xmit+0x10 [veth]")
        );
        assert_eq!(k.function(0xffffffff81a0009c), Some("nf_hook_slow"));
        assert_eq!(k.symbolize(0x1000), None, "below the first symbol");
        assert_eq!(k.describe(0x1000), "0x1000");
    }

    #[test]
    fn data_symbols_and_hidden_addresses_are_ignored() {
        let k = Kallsyms::parse(SAMPLE);
        // Inside `some_data`'s range, the nearest text symbol is nf_hook_slow_list.
        assert_eq!(k.function(0xffffffff81b00010), Some("nf_hook_slow_list"));
        assert!(Kallsyms::parse("0000000000000000 T x\n").is_empty());
        assert!(Kallsyms::parse("garbage\n\n").is_empty());
    }
}
