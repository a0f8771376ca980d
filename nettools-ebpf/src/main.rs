//! nettools' kernel side: observe-only eBPF programs, one module per probe.
//!
//! Every program here only reads: tracepoints cannot alter traffic, and tc programs always let the
//! packet continue. Kernel struct offsets are load-time globals (see `kernel`), never compiled in.
#![no_std]
#![no_main]

mod connections;
mod dns;
mod drops;
mod handshake;
mod icmp;
mod kernel;
mod maps;
mod neighbours;
mod packet;
mod pairing;
mod retransmits;
mod synthetic;
mod tc;
mod transit;

/// Kernel helpers such as `bpf_probe_read_kernel` are GPL-only.
#[unsafe(no_mangle)]
#[unsafe(link_section = "license")]
pub static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
