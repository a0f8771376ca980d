//! nettools: per-container network tracing with eBPF.
//!
//! The pipeline, one module per step: [`discover`] finds what to trace (network namespaces and
//! their names), [`probe`] loads and attaches the kernel programs with this kernel's offsets,
//! [`collect`] reads and aggregates their events, [`report`] renders the answers. [`trace`] runs
//! that pipeline; [`preflight`] and [`doctor`] say what this machine allows; [`lab`] builds
//! throwaway network labs for demos and tests; [`list`] shows the pods and containers on the
//! node; [`capture`] writes a workload's packets as pcapng; [`check`] says why one workload
//! cannot reach an address.

pub mod capture;
pub mod check;
pub mod cli;
pub mod collect;
pub mod discover;
pub mod doctor;
pub mod lab;
#[cfg(test)]
mod layers;
pub mod list;
pub mod preflight;
pub mod probe;
pub mod report;
pub mod serve;
pub mod session;
pub mod trace;
pub mod units;
