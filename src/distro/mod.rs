//! The Distro cluster protocol. For now only the ownership hash, which the
//! standalone node already needs to prove that its internal sharding is
//! independent of it (see `shard::router`).

pub mod hash;
