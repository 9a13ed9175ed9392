//! Parameter validation shared by the endpoint families. Every failure is a
//! 400 whose body names the parameter; nothing is changed by a request that
//! fails here, because validation happens before any command is built.

use std::net::IpAddr;

use crate::http::params::Params;
use crate::reply::Reply;
use crate::store::instance::{InstanceAddr, Metadata};
use crate::store::service::ServiceId;

pub const DEFAULT_NAMESPACE: &str = "public";
pub const DEFAULT_GROUP: &str = "DEFAULT_GROUP";
pub const DEFAULT_CLUSTER: &str = "DEFAULT";

pub type Checked<T> = Result<T, Reply>;

pub fn required<'a>(p: &'a Params<'_>, name: &str) -> Checked<&'a str> {
    p.get(name)
        .ok_or_else(|| Reply::bad_request(format!("Param '{name}' is required.")))
}

pub fn invalid(name: &str, value: &str, why: &str) -> Reply {
    Reply::bad_request(format!("Param '{name}' is invalid: '{value}' ({why})"))
}

fn chars_ok(s: &str, extra: &[u8]) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || extra.contains(&b))
}

/// The service named by `serviceName` (+ `groupName`, `namespaceId`).
/// A `serviceName` containing `@@` is already grouped; `groupName` is then
/// ignored.
pub fn service_id(p: &Params) -> Checked<ServiceId> {
    let raw = required(p, "serviceName")?;
    let namespace = p.get("namespaceId").unwrap_or(DEFAULT_NAMESPACE);
    if !chars_ok(namespace, b"._:-") {
        return Err(invalid("namespaceId", namespace, "allowed: 0-9a-zA-Z._:-"));
    }
    let (group, name) = match raw.split_once("@@") {
        Some((g, n)) => (g, n),
        None => (p.get("groupName").unwrap_or(DEFAULT_GROUP), raw),
    };
    // The grouped name must match [0-9a-zA-Z@.:_-]+ with a non-empty group
    // and name; checking the parts avoids building it on the hot path.
    if group.is_empty()
        || name.is_empty()
        || name.contains("@@")
        || group.contains("@@")
        || !chars_ok(group, b"@.:_-")
        || !chars_ok(name, b"@.:_-")
    {
        return Err(invalid(
            "serviceName",
            &format!("{group}@@{name}"),
            "a grouped name must match [0-9a-zA-Z@.:_-]+ with a non-empty group and name",
        ));
    }
    Ok(ServiceId::new(namespace, group, name))
}

/// An IP address in canonical form (so `::1` and `0::1` are one instance).
pub fn ip(name: &str, v: &str) -> Checked<String> {
    match v.parse::<IpAddr>() {
        // Dotted quads that parse are already canonical.
        Ok(IpAddr::V4(_)) => Ok(v.to_string()),
        Ok(a) => Ok(a.to_string()),
        Err(_) => Err(invalid(name, v, "not an IP address")),
    }
}

pub fn port(name: &str, v: &str) -> Checked<u16> {
    match v.parse::<u32>() {
        Ok(n) if (1..=65535).contains(&n) => Ok(n as u16),
        _ => Err(invalid(name, v, "must be 1..65535")),
    }
}

pub fn cluster(name: &str, v: &str) -> Checked<String> {
    if chars_ok(v, b"._-") {
        Ok(v.to_string())
    } else {
        Err(invalid(name, v, "allowed: 0-9a-zA-Z._-"))
    }
}

/// `ip`, `port` (both required) and `clusterName` (default `DEFAULT`).
pub fn instance_addr(p: &Params) -> Checked<InstanceAddr> {
    let ip_v = ip("ip", required(p, "ip")?)?;
    let port_v = port("port", required(p, "port")?)?;
    let cluster_v = match p.get("clusterName").or_else(|| p.get("cluster")) {
        Some(c) => cluster("clusterName", c)?,
        None => DEFAULT_CLUSTER.to_string(),
    };
    Ok(InstanceAddr {
        ip: ip_v,
        port: port_v,
        cluster: cluster_v,
    })
}

pub fn float_in(name: &str, v: &str, min: f64, max: f64) -> Checked<f64> {
    match v.parse::<f64>() {
        Ok(f) if f.is_finite() && f >= min && f <= max => Ok(f),
        _ => Err(invalid(
            name,
            v,
            &format!("must be a number in {min}..{max}"),
        )),
    }
}

pub fn opt_float(p: &Params, name: &str, min: f64, max: f64) -> Checked<Option<f64>> {
    p.get(name).map(|v| float_in(name, v, min, max)).transpose()
}

/// Booleans are case-insensitive (`True` from the Python SDK).
pub fn opt_bool(p: &Params, name: &str) -> Checked<Option<bool>> {
    match p.get(name) {
        None => Ok(None),
        Some(v) if v.eq_ignore_ascii_case("true") => Ok(Some(true)),
        Some(v) if v.eq_ignore_ascii_case("false") => Ok(Some(false)),
        Some(v) => Err(invalid(name, v, "must be true or false")),
    }
}

/// `enabled`, or the `enable` spelling the Python SDK and Nacos accept.
pub fn opt_enabled(p: &Params) -> Checked<Option<bool>> {
    match opt_bool(p, "enabled")? {
        Some(v) => Ok(Some(v)),
        None => opt_bool(p, "enable"),
    }
}

/// A JSON object of strings (numbers and booleans are turned into strings)
/// or `k=v,k=v` pairs.
pub fn metadata(name: &str, v: &str) -> Checked<Metadata> {
    let mut m = Metadata::new();
    if v.starts_with('{') {
        let parsed: serde_json::Value =
            serde_json::from_str(v).map_err(|_| invalid(name, v, "not a JSON object"))?;
        let obj = parsed
            .as_object()
            .ok_or_else(|| invalid(name, v, "not a JSON object"))?;
        for (k, val) in obj {
            let s = match val {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Number(n) => n.to_string(),
                serde_json::Value::Bool(b) => b.to_string(),
                serde_json::Value::Null => String::new(),
                _ => return Err(invalid(name, v, "values must be strings")),
            };
            m.insert(k.clone(), s);
        }
        return Ok(m);
    }
    for pair in v.split(',') {
        let pair = pair.trim();
        if pair.is_empty() {
            continue;
        }
        match pair.split_once('=') {
            Some((k, val)) if !k.trim().is_empty() => {
                m.insert(k.trim().to_string(), val.trim().to_string());
            }
            _ => return Err(invalid(name, v, "neither a JSON object nor k=v pairs")),
        }
    }
    Ok(m)
}

pub fn opt_metadata(p: &Params, name: &str) -> Checked<Option<Metadata>> {
    p.get(name).map(|v| metadata(name, v)).transpose()
}

pub fn opt_u64(p: &Params, name: &str, min: u64, max: u64) -> Checked<Option<u64>> {
    match p.get(name) {
        None => Ok(None),
        Some(v) => match v.parse::<u64>() {
            Ok(n) if n >= min && n <= max => Ok(Some(n)),
            _ => Err(invalid(
                name,
                v,
                &format!("must be an integer in {min}..{max}"),
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(q: &str) -> Params<'_> {
        Params::parse(q, None)
    }

    #[test]
    fn service_names() {
        let s = service_id(&params("serviceName=g1%40%40svc&groupName=ignored")).unwrap();
        assert_eq!((s.group(), s.name(), s.grouped()), ("g1", "svc", "g1@@svc"));
        let s = service_id(&params("serviceName=svc")).unwrap();
        assert_eq!(s.full_key(), "public##DEFAULT_GROUP@@svc");
        assert!(service_id(&params("serviceName=bad%20name")).is_err());
        assert!(service_id(&params("serviceName=%40%40x")).is_err());
        assert!(service_id(&params("serviceName=a%40%40b%40%40c")).is_err());
        assert!(
            service_id(&params("serviceName=svc&groupName=g%40%40x")).is_err(),
            "a group with @@ would make the grouped name ambiguous"
        );
        let e = service_id(&params("groupName=g")).unwrap_err();
        assert_eq!(e.body, "Param 'serviceName' is required.");
    }

    #[test]
    fn metadata_forms() {
        let m = metadata("metadata", r#"{"a":"1","b":2}"#).unwrap();
        assert_eq!(m.get("b").map(String::as_str), Some("2"));
        let m = metadata("metadata", "a=1, b=x").unwrap();
        assert_eq!(m.get("b").map(String::as_str), Some("x"));
        assert!(metadata("metadata", "{not json").is_err());
        assert!(metadata("metadata", "novalue").is_err());
        assert!(metadata("metadata", r#"{"a":{"n":1}}"#).is_err());
    }

    #[test]
    fn numbers_and_bools() {
        assert!(port("port", "0").is_err());
        assert!(port("port", "70000").is_err());
        assert!(port("port", "abc").is_err());
        assert_eq!(port("port", "8080").unwrap(), 8080);
        assert!(float_in("weight", "-1", 0.0, 10000.0).is_err());
        assert!(float_in("weight", "NaN", 0.0, 10000.0).is_err());
        assert_eq!(opt_bool(&params("h=True"), "h").unwrap(), Some(true));
        assert!(opt_bool(&params("h=yes"), "h").is_err());
        assert!(ip("ip", "10.0.0.256").is_err());
        assert_eq!(ip("ip", "::1").unwrap(), "::1");
        assert_eq!(ip("ip", "0:0::1").unwrap(), "::1");
        assert!(
            ip("ip", "010.0.0.1").is_err(),
            "leading zeros are ambiguous"
        );
    }
}
