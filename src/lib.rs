//! distro-registry: a Nacos 1.x naming-compatible registry node, built
//! thread-per-core on io_uring. See `docs/design.md` for who owns what.

pub mod api;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod disk;
pub mod distro;
pub mod grpc;
pub mod http;
pub mod metrics;
pub mod push;
pub mod reply;
pub mod server;
pub mod shard;
pub mod store;
