//! `cargo xtask test`: every check CI runs, in the order that fails fastest; the kernel matrix
//! (`vmtest`) last, as it takes longest.

use anyhow::Result;

use crate::process::{build_nettools, cargo, status, step};

pub fn run(quick: bool, vm: bool) -> Result<()> {
    if !quick {
        step("format", || {
            status(cargo().args(["fmt", "--all", "--check"]))
        })?;
        step("clippy", || {
            status(cargo().args([
                "clippy",
                "--workspace",
                "--exclude",
                "nettools-ebpf",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]))
        })?;
    }
    step("unit tests", || {
        status(cargo().args([
            "test",
            "--workspace",
            "--exclude",
            "nettools-ebpf",
            "--exclude",
            "nettools-tests",
        ]))
    })?;
    let bin = build_nettools(false)?;
    // The image test runs this image in Podman (imported into the test's own storage).
    let mut image = std::path::PathBuf::new();
    step(
        "container image (offline; the root filesystem is cached)",
        || {
            image = crate::image::build(crate::vmtest::arch::Arch::X86_64)?;
            Ok(())
        },
    )?;
    step("integration tests (real labs, one at a time)", || {
        status(
            cargo()
                .args([
                    "test",
                    "--package",
                    "nettools-tests",
                    "--",
                    "--test-threads=1",
                ])
                .env("NETTOOLS_BIN", &bin)
                .env("NETTOOLS_IMAGE_TAR", &image),
        )
    })?;
    if !vm {
        eprintln!("xtask: == kernel matrix: skipped (--no-vm / NETTOOLS_NO_VM)");
        return Ok(());
    }
    step(
        "kernel matrix (the same tests on other kernels, QEMU)",
        || crate::vmtest::run(&[]),
    )
}
