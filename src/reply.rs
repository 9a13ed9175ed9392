//! What every handler produces: a status, a body and whether it is JSON.
//! `Bytes` so that a cached list body crosses cores and reaches the socket
//! without a copy.

use bytes::Bytes;

/// What a body is: its `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// `text/plain;charset=UTF-8`, as Nacos answers.
    Text,
    /// `application/json;charset=UTF-8`.
    Json,
    /// Prometheus's text exposition format, version 0.0.4.
    Metrics,
}

impl Body {
    pub fn content_type(self) -> &'static str {
        match self {
            Body::Text => "text/plain;charset=UTF-8",
            Body::Json => "application/json;charset=UTF-8",
            Body::Metrics => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

/// An HTTP answer, before framing.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// HTTP status code.
    pub status: u16,
    pub kind: Body,
    /// The body, sent as is.
    pub body: Bytes,
}

impl Reply {
    pub fn is_json(&self) -> bool {
        self.kind == Body::Json
    }

    pub fn ok() -> Reply {
        Reply::static_text(200, "ok")
    }

    /// A constant body: no allocation.
    pub fn static_text(status: u16, body: &'static str) -> Reply {
        Reply {
            status,
            kind: Body::Text,
            body: Bytes::from_static(body.as_bytes()),
        }
    }

    pub fn text(status: u16, body: impl Into<String>) -> Reply {
        Reply {
            status,
            kind: Body::Text,
            body: Bytes::from(body.into()),
        }
    }

    pub fn json(body: impl Into<Bytes>) -> Reply {
        Reply {
            status: 200,
            kind: Body::Json,
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
