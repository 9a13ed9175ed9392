//! Targets: `http://host:port` addresses, and the loopback rule.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

/// One system under test.
#[derive(Debug, Clone)]
pub struct Target {
    pub url: String,
    pub addr: SocketAddr,
    pub label: String,
    /// Server process whose CPU time is read from /proc.
    pub server_pid: Option<u32>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TargetError {
    #[error("target {0}: only http://host:port URLs are supported")]
    Scheme(String),
    #[error("target {0}: cannot resolve")]
    Resolve(String),
    #[error("target {0} is not a loopback address; pass --allow-remote to load it anyway")]
    NotLoopback(String),
}

/// Parses `http://host:port[/...]`; refuses non-loopback hosts unless
/// `allow_remote`.
pub fn parse_target(url: &str, allow_remote: bool) -> Result<SocketAddr, TargetError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| TargetError::Scheme(url.to_string()))?;
    let hostport = rest.split('/').next().unwrap_or("");
    let hostport = if hostport.contains(':') {
        hostport.to_string()
    } else {
        format!("{hostport}:80")
    };
    let addr = hostport
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| TargetError::Resolve(url.to_string()))?;
    let loopback = match addr.ip() {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_loopback(),
    };
    if !loopback && !allow_remote {
        return Err(TargetError::NotLoopback(url.to_string()));
    }
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_only_by_default() {
        assert!(parse_target("http://127.0.0.1:8848", false).is_ok());
        assert!(parse_target("http://127.0.0.2:8848/nacos", false).is_ok());
        assert!(parse_target("http://localhost:8848", false).is_ok());
        assert_eq!(
            parse_target("http://10.1.2.3:8848", false),
            Err(TargetError::NotLoopback("http://10.1.2.3:8848".into()))
        );
        assert!(parse_target("http://10.1.2.3:8848", true).is_ok());
        assert!(matches!(
            parse_target("https://127.0.0.1:1", false),
            Err(TargetError::Scheme(_))
        ));
    }
}
