//! Request parameters: the query string and a form body, merged.
//!
//! Nacos reads parameters with `request.getParameter`, which sees both; the
//! Python and Node.js SDKs put everything in the query string even for POST
//! and PUT, others use a form body. Values are percent-decoded (`+` is a
//! space) and trimmed; an empty value counts as absent.

/// Decoded parameters, in the order sent (query first, then body).
#[derive(Debug, Default, Clone)]
pub struct Params {
    pairs: Vec<(String, String)>,
}

impl Params {
    pub fn parse(query: &str, form_body: Option<&[u8]>) -> Params {
        let mut pairs = Vec::new();
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            pairs.push((k.into_owned(), v.trim().to_string()));
        }
        if let Some(body) = form_body {
            for (k, v) in form_urlencoded::parse(body) {
                pairs.push((k.into_owned(), v.trim().to_string()));
            }
        }
        Params { pairs }
    }

    /// The first non-empty value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, v)| k == name && !v.is_empty())
            .map(|(_, v)| v.as_str())
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
