//! Names from outside, made safe for a terminal. Workloads choose their process names
//! (`/proc/PID/comm`), their interface names, pod and container names and labels, the DNS names
//! they ask for; none of them may reach the operator's terminal raw: an `ESC ]0;…` or `ESC [2J`
//! in a name would rewrite the screen, a newline would forge report lines, a right-to-left
//! override would reorder what a line shows. Every text renderer (table, live view, histograms,
//! folded stacks, `list`) passes such strings through [`escape`] and cuts them by display
//! columns ([`fit`], [`fit_tail`], [`pad`]), never by bytes. JSON is left raw: serde escapes it
//! and it is for machines.

use std::{borrow::Cow, fmt};

use unicode_width::UnicodeWidthChar as _;

/// Whether a character must not reach a terminal raw: the C0 controls, DEL and the C1
/// controls (which start escape sequences), the line and paragraph separators, and the format
/// characters that reorder or hide text — bidi embeddings, overrides and isolates, zero-width
/// and invisible characters, the byte-order mark, interlinear annotations and tags.
pub fn is_unsafe(c: char) -> bool {
    matches!(
        c as u32,
        0x00..=0x1f
            | 0x7f..=0x9f
            | 0xad
            | 0x0600..=0x0605
            | 0x061c
            | 0x06dd
            | 0x070f
            | 0x0890..=0x0891
            | 0x08e2
            | 0x180e
            | 0x200b..=0x200f
            | 0x2028..=0x202e
            | 0x2060..=0x206f
            | 0xfeff
            | 0xfff9..=0xfffb
            | 0x110bd
            | 0x110cd
            | 0x13430..=0x1343f
            | 0x1bca0..=0x1bca3
            | 0x1d173..=0x1d17a
            | 0xe0001
            | 0xe0020..=0xe007f
    )
}

fn push_escaped(out: &mut String, c: char) {
    use fmt::Write as _;
    let _ = match c {
        '\n' => write!(out, "\\n"),
        '\r' => write!(out, "\\r"),
        '\t' => write!(out, "\\t"),
        c if (c as u32) < 0x20 || c == '\x7f' => write!(out, "\\x{:02x}", c as u32),
        c => write!(out, "\\u{{{:x}}}", c as u32),
    };
}

fn escape_where(s: &str, keep: impl Fn(char) -> bool) -> Cow<'_, str> {
    if !s.chars().any(|c| is_unsafe(c) && !keep(c)) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if is_unsafe(c) && !keep(c) {
            push_escaped(&mut out, c);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// `s` with every unsafe character ([`is_unsafe`]) written as an escape a person can read:
/// `\n`, `\t`, `\r`, `\x1b`, `\u{202e}`. Everything else, any script, stays as it is.
pub fn escape(s: &str) -> Cow<'_, str> {
    escape_where(s, |_| false)
}

/// Like [`escape`], but line breaks stay: for messages of several lines that nettools itself
/// composed (an error's causes, the verifier's log), which may quote names from outside.
pub fn escape_lines(s: &str) -> Cow<'_, str> {
    escape_where(s, |c| c == '\n')
}

/// The columns a character takes on a terminal (0 for combining marks, 2 for wide ones).
fn columns(c: char) -> usize {
    c.width().unwrap_or(0)
}

/// The columns an escaped string takes on a terminal.
pub fn width(safe: &str) -> usize {
    safe.chars().map(columns).sum()
}

/// Escapes `s` and cuts it to at most `max` columns, keeping its start: `very-long-na…`.
pub fn fit(s: &str, max: usize) -> String {
    let safe = escape(s);
    if width(&safe) <= max {
        return safe.into_owned();
    }
    let mut out = String::new();
    let mut used = 0;
    for c in safe.chars() {
        let w = columns(c);
        if used + w + 1 > max {
            break;
        }
        used += w;
        out.push(c);
    }
    if max > 0 {
        out.push('…');
    }
    out
}

/// Escapes `s` and cuts it to at most `max` columns, keeping its end: `…me-firewall` (where
/// names differ: `ntlab-…-firewall`, `pod shop/web-7d9f…`).
pub fn fit_tail(s: &str, max: usize) -> String {
    let safe = escape(s);
    if width(&safe) <= max {
        return safe.into_owned();
    }
    let mut kept = Vec::new();
    let mut used = 0;
    for c in safe.chars().rev() {
        let w = columns(c);
        if used + w + 1 > max {
            break;
        }
        used += w;
        kept.push(c);
    }
    let mut out = String::new();
    if max > 0 {
        out.push('…');
    }
    out.extend(kept.into_iter().rev());
    out
}

/// An escaped string padded with spaces to `cols` columns (left-aligned); longer ones are left
/// as they are. `format!("{:<n}")` pads by characters, which misaligns wide ones.
pub fn pad(safe: &str, cols: usize) -> String {
    let w = width(safe);
    let mut out = String::with_capacity(safe.len() + cols.saturating_sub(w));
    out.push_str(safe);
    out.extend(std::iter::repeat_n(' ', cols.saturating_sub(w)));
    out
}

/// An escaped string padded to `cols` columns on the left (right-aligned).
pub fn pad_left(safe: &str, cols: usize) -> String {
    let w = width(safe);
    let mut out: String = std::iter::repeat_n(' ', cols.saturating_sub(w)).collect();
    out.push_str(safe);
    out
}

/// `s`, escaped, cut to `cols` columns from the left (the rest of a line too wide for the
/// terminal is dropped).
pub fn truncate(safe: &str, cols: usize) -> String {
    let mut out = String::new();
    let mut used = 0;
    for c in safe.chars() {
        let w = columns(c);
        if used + w > cols {
            break;
        }
        used += w;
        out.push(c);
    }
    out
}

/// One frame of a folded stack (`frame;frame;frame count`): escaped, and with `;` and
/// whitespace replaced by `_` (an empty name is `_`), so a name cannot add frames, a count or
/// a line.
pub fn frame(s: &str) -> String {
    if s.is_empty() {
        return "_".to_string();
    }
    escape(s)
        .chars()
        .map(|c| {
            if c == ';' || c.is_whitespace() {
                '_'
            } else {
                c
            }
        })
        .collect()
}

/// Formats a string from outside escaped: `format!("== {}", Safe(&w.name))`.
pub struct Safe<'a>(pub &'a str);

impl fmt::Display for Safe<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&escape(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_are_escaped_and_the_rest_is_kept() {
        assert_eq!(escape("web"), "web");
        assert!(matches!(escape("pod shop/wéb 東京"), Cow::Borrowed(_)));
        assert_eq!(escape("\x1b]0;pwned\x07"), "\\x1b]0;pwned\\x07");
        assert_eq!(escape("\x1b[2J"), "\\x1b[2J");
        assert_eq!(escape("a\nb\tc\rd\x7f"), "a\\nb\\tc\\rd\\x7f");
        // C1 CSI, a right-to-left override, an isolate, a zero-width space, a tag.
        assert_eq!(escape("\u{9b}1m"), "\\u{9b}1m");
        assert_eq!(escape("abc\u{202e}gpj.exe"), "abc\\u{202e}gpj.exe");
        assert_eq!(escape("\u{2067}x\u{2069}"), "\\u{2067}x\\u{2069}");
        assert_eq!(escape("w\u{200b}eb"), "w\\u{200b}eb");
        assert_eq!(escape("\u{e0041}"), "\\u{e0041}");
        assert_eq!(escape_lines("one\ntwo\x1b"), "one\ntwo\\x1b");
    }

    #[test]
    fn cuts_by_columns_not_bytes() {
        let e15 = "ééééééééééééééé";
        assert_eq!(fit_tail(e15, 10), "…ééééééééé");
        assert_eq!(fit(e15, 4), "ééé…");
        assert_eq!(width(&fit("東京東京東京", 7)), 7);
        assert_eq!(fit("東京東京東京", 7), "東京東…");
        assert_eq!(fit_tail("東京東京東京", 6), "…東京");
        assert_eq!(fit("short", 10), "short");
        assert_eq!(fit("abc", 0), "");
        // The escape counts, not the control character it replaces.
        assert_eq!(fit("\x1b[2Jabc", 6), "\\x1b[…");
        assert_eq!(pad("東京", 6), "東京  ");
        assert_eq!(pad_left("é", 3), "  é");
        assert_eq!(truncate("東京東京", 5), "東京");
    }

    #[test]
    fn frames_cannot_forge_frames_or_lines() {
        assert_eq!(frame("pod shop/web"), "pod_shop/web");
        assert_eq!(frame("a;b c\n2\u{3000}x"), "a_b_c\\n2_x");
        assert_eq!(frame("x\u{85}y"), "x\\u{85}y");
        assert_eq!(format!("[{}]", Safe("\x1bx")), "[\\x1bx]");
    }
}
