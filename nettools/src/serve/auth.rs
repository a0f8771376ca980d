//! Who may read what the agent serves: the bearer token of `--bearer-token-file` (read once at
//! start, compared in constant time) and which paths need it. Client certificates are checked
//! earlier, during the TLS handshake ([`super::tls`]).

use std::{io::ErrorKind, net::SocketAddr, path::Path};

use anyhow::{Result, anyhow, bail};
use hyper::{HeaderMap, header};
use subtle::ConstantTimeEq as _;

/// A bearer token, kept only as its SHA-256 digest: comparing digests in constant time says
/// nothing about the token's length or its first differing byte.
pub struct Token {
    digest: [u8; 32],
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref());
    out
}

impl Token {
    /// Reads the token from `path` (surrounding whitespace, such as a final newline, ignored).
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read(path).map_err(|e| match e.kind() {
            ErrorKind::NotFound => {
                anyhow!("the bearer token file {} does not exist", path.display())
            }
            ErrorKind::PermissionDenied => anyhow!(
                "cannot read the bearer token file {}: permission denied",
                path.display()
            ),
            _ => anyhow!("cannot read the bearer token file {}: {e}", path.display()),
        })?;
        let token = text.trim_ascii();
        if token.is_empty() {
            bail!("the bearer token file {} is empty", path.display());
        }
        if token.iter().any(|b| !b.is_ascii_graphic()) {
            bail!(
                "the bearer token in {} has spaces or characters that are not printable ASCII, \
                 which an HTTP header cannot carry",
                path.display()
            );
        }
        Ok(Self::new(token))
    }

    pub fn new(token: &[u8]) -> Self {
        Self {
            digest: sha256(token),
        }
    }

    /// Whether `given` is this token, in time that does not depend on where they differ.
    pub fn matches(&self, given: &[u8]) -> bool {
        sha256(given).ct_eq(&self.digest).into()
    }
}

/// What a request lacked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No `Authorization: Bearer …` header.
    Missing,
    /// A token that is not ours.
    Wrong,
}

/// What each path needs on one listener.
pub struct Policy {
    token: Option<Token>,
    /// `/healthz` answers without the token (a plain-HTTP listener on loopback only).
    open_health: bool,
}

impl Policy {
    /// The policy of a listener on `addr`, with TLS or not.
    pub fn new(token: Option<Token>, addr: SocketAddr, tls: bool) -> Self {
        Self {
            token,
            open_health: !tls && is_loopback(addr),
        }
    }

    /// Whether a request for `path` with these headers may be answered.
    pub fn check(&self, path: &str, headers: &HeaderMap) -> Result<(), Refusal> {
        let Some(token) = &self.token else {
            return Ok(());
        };
        if path == "/healthz" && self.open_health {
            return Ok(());
        }
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Err(Refusal::Missing);
        };
        let value = value.as_bytes();
        // RFC 6750: the scheme is case-insensitive, one or more spaces before the token.
        let Some((scheme, given)) = value.split_at_checked(6) else {
            return Err(Refusal::Missing);
        };
        if !scheme.eq_ignore_ascii_case(b"bearer") || given.first() != Some(&b' ') {
            return Err(Refusal::Missing);
        }
        if token.matches(given.trim_ascii()) {
            Ok(())
        } else {
            Err(Refusal::Wrong)
        }
    }
}

/// Loopback, IPv4 or IPv6 (also as an IPv4-mapped IPv6 address).
pub fn is_loopback(addr: SocketAddr) -> bool {
    addr.ip().to_canonical().is_loopback()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn with(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Ok(v) = HeaderValue::from_str(auth) {
            h.insert(header::AUTHORIZATION, v);
        }
        h
    }

    #[test]
    fn the_token_is_needed_where_the_policy_says() -> Result<()> {
        let lo: SocketAddr = "127.0.0.1:9977".parse()?;
        let any: SocketAddr = "0.0.0.0:9977".parse()?;
        let p = Policy::new(Some(Token::new(b"s3cret")), lo, false);
        assert_eq!(p.check("/metrics", &with("Bearer s3cret")), Ok(()));
        assert_eq!(p.check("/metrics", &with("bearer   s3cret ")), Ok(()));
        assert_eq!(
            p.check("/metrics", &with("Bearer s3cre")),
            Err(Refusal::Wrong)
        );
        assert_eq!(
            p.check("/metrics", &with("Bearer s3cretx")),
            Err(Refusal::Wrong)
        );
        assert_eq!(p.check("/metrics", &with("Bearer ")), Err(Refusal::Wrong));
        assert_eq!(
            p.check("/metrics", &with("Basic czNjcmV0")),
            Err(Refusal::Missing)
        );
        assert_eq!(
            p.check("/metrics", &with("Bearers3cret")),
            Err(Refusal::Missing)
        );
        assert_eq!(
            p.check("/metrics", &HeaderMap::new()),
            Err(Refusal::Missing)
        );
        assert_eq!(p.check("/", &HeaderMap::new()), Err(Refusal::Missing));
        // /healthz is open on plain loopback only.
        assert_eq!(p.check("/healthz", &HeaderMap::new()), Ok(()));
        let tls = Policy::new(Some(Token::new(b"s3cret")), lo, true);
        assert_eq!(
            tls.check("/healthz", &HeaderMap::new()),
            Err(Refusal::Missing)
        );
        let wide = Policy::new(Some(Token::new(b"s3cret")), any, false);
        assert_eq!(
            wide.check("/healthz", &HeaderMap::new()),
            Err(Refusal::Missing)
        );
        // Without a token, nothing is asked (a client certificate may have been).
        let none = Policy::new(None, any, true);
        assert_eq!(none.check("/metrics", &HeaderMap::new()), Ok(()));
        Ok(())
    }

    #[test]
    fn loopback_addresses() -> Result<()> {
        for (addr, lo) in [
            ("127.0.0.1:1", true),
            ("127.3.4.5:1", true),
            ("[::1]:1", true),
            ("[::ffff:127.0.0.1]:1", true),
            ("0.0.0.0:1", false),
            ("[::]:1", false),
            ("10.0.0.1:1", false),
        ] {
            assert_eq!(is_loopback(addr.parse()?), lo, "{addr}");
        }
        Ok(())
    }

    #[test]
    fn token_files() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("nettools-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let file = dir.join("token");
        std::fs::write(&file, "abc.DEF-123\n")?;
        assert!(Token::read(&file)?.matches(b"abc.DEF-123"));
        std::fs::write(&file, " \n")?;
        let e = Token::read(&file).err().map(|e| e.to_string());
        assert!(
            e.as_deref().is_some_and(|e| e.ends_with("is empty")),
            "{e:?}"
        );
        std::fs::write(&file, "two words")?;
        assert!(Token::read(&file).is_err());
        let e = Token::read(&dir.join("nope")).err().map(|e| e.to_string());
        assert!(
            e.as_deref().is_some_and(|e| e.ends_with("does not exist")),
            "{e:?}"
        );
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }
}
