//! The Distro cluster protocol's decisions (docs/distro.md): the ownership
//! hash, the hybrid logical clock, the versioned merge, membership, the
//! task map, the verify comparison and the startup decision. All of it
//! pure: no I/O, no clock; `cluster` drives it.

pub mod conf;
pub mod hash;
pub mod hlc;
pub mod leases;
pub mod members;
pub mod merge;
pub mod startup;
pub mod tasks;
pub mod verify;
