//! `cargo xtask fuzz [SECONDS]`: runs the DNS parser's fuzz target (nettools/fuzz) with
//! cargo-fuzz on rustup's nightly, installing cargo-fuzz first when it is missing.

use std::process::Command;

use anyhow::{Context as _, Result};

use crate::process::{status, workspace};

pub fn run(seconds: u64) -> Result<()> {
    let have = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        eprintln!("xtask: installing cargo-fuzz");
        status(Command::new("cargo").args(["install", "--locked", "cargo-fuzz"]))
            .context("installing cargo-fuzz failed")?;
    }
    status(
        Command::new("cargo")
            .current_dir(workspace().join("nettools"))
            .args(["+nightly", "fuzz", "run", "dns", "--"])
            .arg(format!("-max_total_time={seconds}")),
    )
}
