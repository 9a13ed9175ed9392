//! Where the member list comes from (SPEC 4.1): `--peers ip:port,...` or a
//! Nacos `cluster.conf` (one `ip:port` per line, `#` comments, blank lines
//! ignored; a bare IP means port 8848, as Nacos reads it). Pure parsing;
//! the caller reads the file.

use std::net::SocketAddr;

/// Port a bare IP in cluster.conf stands for.
pub const DEFAULT_PORT: u16 = 8848;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfError {
    #[error("member {0:?} on line {1} is not ip:port")]
    BadMember(String, usize),
    #[error("member {0:?} is not ip:port (host names are not accepted: give the IP)")]
    BadPeer(String),
    #[error("no members")]
    Empty,
}

fn member(text: &str, line: usize) -> Result<String, ConfError> {
    let t = text.trim();
    let with_port = if t.parse::<std::net::IpAddr>().is_ok() {
        format!("{t}:{DEFAULT_PORT}")
    } else {
        t.to_string()
    };
    with_port
        .parse::<SocketAddr>()
        .map(|a| a.to_string())
        .map_err(|_| ConfError::BadMember(t.to_string(), line))
}

/// Members from cluster.conf text, in file order, duplicates removed.
pub fn parse_cluster_conf(text: &str) -> Result<Vec<String>, ConfError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        // Nacos also allows several members on a line, comma separated.
        for m in line.split(',').filter(|m| !m.trim().is_empty()) {
            let m = member(m, i + 1)?;
            if !out.contains(&m) {
                out.push(m);
            }
        }
    }
    if out.is_empty() {
        return Err(ConfError::Empty);
    }
    Ok(out)
}

/// Members from `--peers a,b,c`.
pub fn parse_peers(list: &str) -> Result<Vec<String>, ConfError> {
    // The same rules as cluster.conf; an error names the member, not a line.
    parse_cluster_conf(&list.replace(',', "\n")).map_err(|e| match e {
        ConfError::BadMember(m, _) => ConfError::BadPeer(m),
        e => e,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_conf_with_comments_blank_lines_and_bare_ips() {
        let text = "# the cluster\n127.0.0.1:8848\n\n127.0.0.2  # a bare IP means 8848\n127.0.0.3:9000,127.0.0.1:8848\n";
        assert_eq!(
            parse_cluster_conf(text).unwrap(),
            ["127.0.0.1:8848", "127.0.0.2:8848", "127.0.0.3:9000"]
        );
    }

    #[test]
    fn bad_members_name_their_line() {
        assert_eq!(
            parse_cluster_conf("127.0.0.1:8848\nnode-b:8848\n"),
            Err(ConfError::BadMember("node-b:8848".into(), 2))
        );
        assert_eq!(parse_cluster_conf("# nothing\n\n"), Err(ConfError::Empty));
        assert_eq!(parse_peers("127.0.0.1:1,127.0.0.1:2").unwrap().len(), 2);
        assert_eq!(
            parse_peers("127.0.0.1:9032,foo"),
            Err(ConfError::BadPeer("foo".into()))
        );
        assert!(!ConfError::BadPeer("foo".into())
            .to_string()
            .contains("line"));
    }
}
