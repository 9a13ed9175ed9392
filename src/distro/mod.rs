//! The Distro cluster protocol (docs/distro.md). Built so far: the
//! ownership hash (which the standalone node already uses to prove that its
//! internal sharding is independent of it, see `shard::router`), the hybrid
//! logical clock and the versioned merge. All of it pure: no I/O, no clock.

pub mod conf;
pub mod hash;
pub mod hlc;
pub mod members;
pub mod merge;
pub mod tasks;
pub mod verify;
