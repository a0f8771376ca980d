//! The one definition of every event, map key and load-time setting that nettools' eBPF programs
//! and its userspace exchange.
//!
//! Everything here is `#[repr(C)]`, `Copy` and free of pointers, so the same bytes mean the same
//! thing on both sides. The `user` feature adds `aya::Pod` so userspace can place these types in
//! maps, read them from ring buffers and pass them as load-time globals.
//!
//! One module per probe (`drops`, `retransmits`, `neighbours`, `traffic`, `latency`) plus the pieces they share (`event`, `flow`, `counters`,
//! `config`). A probe's kernel code, event type and userspace handler carry the same name.
#![no_std]

pub mod config;
pub mod connections;
pub mod counters;
pub mod drops;
pub mod event;
pub mod flow;
pub mod latency;
pub mod neighbours;
pub mod retransmits;
pub mod traffic;

/// Implements `aya::Pod` for plain `#[repr(C)]` types when building for userspace.
macro_rules! user_pod {
    ($($t:ty),* $(,)?) => {
        $(
            #[cfg(feature = "user")]
            // SAFETY: the type is `#[repr(C)]`, `Copy`, has no padding-dependent invariants and no
            // pointers; any bit pattern is a valid value.
            unsafe impl aya::Pod for $t {}
        )*
    };
}
pub(crate) use user_pod;
