//! Addresses and the loopback rules, one of each: where a listener listens ([`Listen`]),
//! whether a host is this machine ([`is_loopback_host`]), and whether a name resolved to
//! this machine only ([`check_resolved`]). A leaf: configuration, listeners and both HTTP
//! clients use it, and it uses none of them.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Where applications connect, or where the ops endpoints listen: `HOST:PORT` with an IP
/// address, `localhost:PORT`, or `unix:/path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl std::str::FromStr for Listen {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if let Some(path) = text.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("unix: needs a path, e.g. unix:/run/pinecone/proxy.sock".into());
            }
            return Ok(Listen::Unix(PathBuf::from(path)));
        }
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Ok(Listen::Tcp(addr));
        }
        if let Some(Ok(port)) = text.strip_prefix("localhost:").map(str::parse::<u16>) {
            return Ok(Listen::Tcp(SocketAddr::from(([127, 0, 0, 1], port))));
        }
        Err(format!("must be IP:PORT (e.g. 127.0.0.1:8484), localhost:PORT or unix:/path/to.sock, got {text:?}"))
    }
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Listen::Tcp(a) => write!(f, "{a}"),
            Listen::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// `localhost`, or an IPv4 or IPv6 loopback address (with or without brackets).
pub(crate) fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// A loopback *name* (`localhost`, trusted for plain `http://`) must resolve to loopback
/// addresses only, checked at each connect: a bad resolver entry must not send the client
/// secret or a token in clear text off the machine. Other names and addresses pass.
pub(crate) fn check_resolved(host: &str, addrs: &[SocketAddr]) -> Result<(), String> {
    if !host.eq_ignore_ascii_case("localhost") {
        return Ok(());
    }
    match addrs.iter().find(|a| !a.ip().is_loopback()) {
        Some(a) => Err(format!(
            "{host} resolves to {}, which is not a loopback address; refusing to connect (plain http:// \
             is accepted for this machine only: check /etc/hosts, or use 127.0.0.1)",
            a.ip()
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_forms() {
        let parse = |s: &str| s.parse::<Listen>();
        assert_eq!(parse("unix:/tmp/p.sock").unwrap(), Listen::Unix("/tmp/p.sock".into()));
        assert_eq!(parse("localhost:80").unwrap(), Listen::Tcp("127.0.0.1:80".parse().unwrap()));
        assert_eq!(parse("[::1]:80").unwrap(), Listen::Tcp("[::1]:80".parse().unwrap()));
        assert!(parse("example.com:80").is_err());
        assert!(parse("unix:").is_err());
    }
}
