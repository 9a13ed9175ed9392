//! What every handler produces: a status, a body and whether it is JSON.
//! `Bytes` so that a cached list body crosses cores and reaches the socket
//! without a copy.

use bytes::Bytes;

/// An HTTP answer, before framing.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// HTTP status code.
    pub status: u16,
    /// `application/json` when true, else `text/plain`.
    pub json: bool,
    /// The body, sent as is.
    pub body: Bytes,
}

impl Reply {
    pub fn ok() -> Reply {
        Reply::static_text(200, "ok")
    }

    /// A constant body: no allocation.
    pub fn static_text(status: u16, body: &'static str) -> Reply {
        Reply {
            status,
            json: false,
            body: Bytes::from_static(body.as_bytes()),
        }
    }

    pub fn text(status: u16, body: impl Into<String>) -> Reply {
        Reply {
            status,
            json: false,
            body: Bytes::from(body.into()),
        }
    }

    pub fn json(body: impl Into<Bytes>) -> Reply {
        Reply {
            status: 200,
            json: true,
            body: body.into(),
        }
    }

    pub fn json_value(v: &serde_json::Value) -> Reply {
        Reply::json(serde_json::to_vec(v).unwrap_or_default())
    }

    pub fn bad_request(msg: impl Into<String>) -> Reply {
        Reply::text(400, msg)
    }

    pub fn not_found(msg: impl Into<String>) -> Reply {
        Reply::text(404, msg)
    }
}
