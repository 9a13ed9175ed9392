//! The small HTTP/1.1 layer: request framing over `httparse`, parameters
//! from the query string and form bodies, and response framing. It knows
//! nothing about Nacos.

pub mod params;
pub mod request;
pub mod response;
