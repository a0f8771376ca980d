//! Durations and sizes as people write them on the command line (`30s`, `1m30s`, `4M`), and
//! durations as the reports print them.

use std::time::Duration;

/// `5s`, `1m30s`, `250ms`.
pub fn humantime(d: Duration) -> String {
    let ms = d.as_millis();
    if !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let s = ms / 1000;
    match (s / 60, s % 60) {
        (0, s) => format!("{s}s"),
        (m, 0) => format!("{m}m"),
        (m, s) => format!("{m}m{s}s"),
    }
}

/// The longest duration any flag takes: a year. Longer ones are refused with one sentence
/// rather than overflowing a timer.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// Parses `30s`, `500ms`, `2m`, `1h`, `1m30s` or a plain number of seconds, from 1 ms to
/// [`MAX_DURATION`].
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let too_long =
        || format!("{text:?} is longer than the longest duration nettools takes (365 days)");
    let mut positive = false;
    let mut seconds = |secs: f64| {
        positive |= secs > 0.0;
        if secs.is_nan() {
            Err(format!(
                "{text:?} is not a duration such as 30s, 500ms or 2m"
            ))
        } else if secs < 0.0 {
            Err(format!("{text:?} is not a positive duration"))
        } else {
            Duration::try_from_secs_f64(secs).map_err(|_| too_long())
        }
    };
    let total = if let Ok(secs) = text.parse::<f64>() {
        seconds(secs)?
    } else {
        let mut total = Duration::ZERO;
        let mut rest = text;
        while !rest.is_empty() {
            let digits = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .ok_or_else(|| format!("{text:?} needs a unit: ms, s, m or h (e.g. 30s)"))?;
            if digits == 0 {
                return Err(format!(
                    "{text:?} is not a duration such as 30s, 500ms or 2m"
                ));
            }
            let value: f64 = rest[..digits]
                .parse()
                .map_err(|_| format!("{text:?} is not a duration such as 30s, 500ms or 2m"))?;
            rest = &rest[digits..];
            let unit_len = rest
                .find(|c: char| c.is_ascii_digit())
                .unwrap_or(rest.len());
            let unit = &rest[..unit_len];
            rest = &rest[unit_len..];
            let secs = match unit {
                "ms" => value / 1000.0,
                "s" => value,
                "m" => value * 60.0,
                "h" => value * 3600.0,
                other => {
                    return Err(format!(
                        "unknown unit {other:?} in {text:?}: use ms, s, m or h"
                    ));
                }
            };
            total = total.checked_add(seconds(secs)?).ok_or_else(too_long)?;
        }
        total
    };
    if total > MAX_DURATION {
        return Err(too_long());
    }
    if total < Duration::from_millis(1) {
        return Err(if positive {
            format!("{text:?} is shorter than a millisecond")
        } else {
            format!("{text:?} is not a positive duration")
        });
    }
    Ok(total)
}

/// Parses a size such as `4M`, `256K` or `1048576` (bytes).
pub fn parse_size(text: &str) -> Result<u32, String> {
    let t = text.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, 'K' | 'k')) => (&t[..i], 1 << 10),
        Some((i, 'M' | 'm')) => (&t[..i], 1 << 20),
        Some((i, 'G' | 'g')) => (&t[..i], 1 << 30),
        _ => (t, 1u64),
    };
    let n: u64 = num
        .trim_end_matches(['i', 'I'])
        .parse()
        .map_err(|_| format!("{text:?} is not a size such as 4M"))?;
    let refused =
        || format!("the ring buffer must be a power of two between 4K and 1G, not {text}");
    let bytes = n.checked_mul(mult).ok_or_else(refused)?;
    if bytes < 4096 || !bytes.is_power_of_two() || bytes > 1 << 30 {
        return Err(refused());
    }
    u32::try_from(bytes).map_err(|_| refused())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("10x").is_err());
        assert!(parse_duration("s").is_err());
        // Regression (issue 14): these panicked converting float seconds to a Duration.
        for huge in [
            "1e20",
            "1e400",
            "inf",
            "99999999999999999999h",
            "366d",
            "8761h",
            "1e10m",
        ] {
            let e = parse_duration(huge).err().unwrap_or_default();
            assert!(
                e.contains("longer than the longest duration") || e.contains("unknown unit"),
                "{huge}: {e}"
            );
        }
        assert!(parse_duration("8760h").is_ok());
        assert!(parse_duration("8759h59m60s").is_ok());
        assert!(parse_duration("4380h4380h1s").is_err());
        for bad in ["nan", "-5", "-1s", "1e-20", "0.0000001s", "0ms", ""] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_duration("1e-20"),
            Err("\"1e-20\" is shorter than a millisecond".into())
        );
        assert_eq!(humantime(Duration::from_secs(90)), "1m30s");
        assert_eq!(humantime(Duration::from_millis(1500)), "1500ms");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4M"), Ok(4 << 20));
        assert_eq!(parse_size("256K"), Ok(256 << 10));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("3M").is_err());
        assert!(parse_size("1K").is_err());
        assert!(parse_size("lots").is_err());
        // Regression (issue 14): the multiplication overflowed.
        assert!(parse_size("99999999999999999G").is_err());
        assert!(parse_size("18446744073709551615K").is_err());
        assert!(parse_size("2G").is_err());
        assert_eq!(parse_size("1G"), Ok(1 << 30));
    }
}
