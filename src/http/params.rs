//! Request parameters: the query string and a form body, merged.
//!
//! Nacos reads parameters with `request.getParameter`, which sees both; the
//! Python and Node.js SDKs put everything in the query string even for POST
//! and PUT, others use a form body. Values are percent-decoded (`+` is a
//! space) and trimmed; an empty value counts as absent.

use std::borrow::Cow;

/// Decoded parameters, in the order sent (query first, then body). They
/// borrow from the request unless percent-decoding had to change them.
#[derive(Debug, Default, Clone)]
pub struct Params<'a> {
    pairs: Vec<(Cow<'a, str>, Cow<'a, str>)>,
}

impl<'a> Params<'a> {
    pub fn parse(query: &'a str, form_body: Option<&'a [u8]>) -> Params<'a> {
        // Nacos requests carry up to a dozen parameters.
        let mut pairs = Vec::with_capacity(12);
        pairs.extend(form_urlencoded::parse(query.as_bytes()));
        if let Some(body) = form_body {
            pairs.extend(form_urlencoded::parse(body));
        }
        Params { pairs }
    }

    /// Parameters from (name, value) pairs: what another front end (gRPC)
    /// read from its own format, validated by the same rules.
    pub fn from_pairs(pairs: Vec<(String, String)>) -> Params<'static> {
        Params {
            pairs: pairs
                .into_iter()
                .map(|(k, v)| (Cow::Owned(k), Cow::Owned(v)))
                .collect(),
        }
    }

    /// The first value of `name` that is not empty once trimmed, trimmed.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.trim())
            .find(|v| !v.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_query_and_body_and_decodes() {
        let p = Params::parse("a=1&b=x+y%21&e=", Some(b"c=%E6%9C%8D&a=2"));
        assert_eq!(p.get("a"), Some("1"));
        assert_eq!(p.get("b"), Some("x y!"));
        assert_eq!(p.get("c"), Some("服"));
        assert_eq!(p.get("e"), None);
        assert_eq!(p.get("zz"), None);
    }
}
