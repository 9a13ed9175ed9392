//! The Nacos 2.x/3.x gRPC front end (NACOS2.md): plain-text HTTP/2 (h2c)
//! on every shard, the two services `/Request/request` (unary) and
//! `/BiRequestStream/requestBiStream` (the connection's stream), their
//! protobuf `Payload` with a JSON body.

pub mod codec;
pub mod naming;
pub mod server;
pub mod watch;
