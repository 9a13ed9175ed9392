//! UDP push (SPEC 2.2). `state` decides who gets what and when, with time
//! as a parameter; `shard::run` owns the socket and moves the datagrams.

pub mod state;
