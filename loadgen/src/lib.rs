//! distro-loadgen: drives Nacos-compatible registries with registration
//! storms, beat fleets, queries and convergence checks, and reports
//! latency distributions. The binary is a thin `main` over `cli::run`.

pub mod cli;
pub mod client;
pub mod grpc;
pub mod grpc_run;
pub mod report;
pub mod run;
pub mod scenario;
pub mod target;
