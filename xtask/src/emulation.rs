//! Running a foreign architecture's programs on this machine, in chroots too: what the arm64
//! image's second stage (its packages' maintainer scripts) needs. `qemu-user-static` does the
//! running; binfmt_misc hands it the programs.

use std::{path::Path, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::{process::status, vmtest::arch::Arch};

/// Where binfmt_misc is mounted.
const BINFMT_MISC: &str = "/proc/sys/fs/binfmt_misc";

/// The name of binfmt_misc's entry for `arch`'s programs (`qemu-aarch64`).
fn binfmt_name(arch: Arch) -> String {
    format!("qemu-{}", arch.qemu_user())
}

/// Makes this machine run `arch`'s programs under `qemu-user-static`, in chroots too: Debian's
/// package registers the emulator with binfmt_misc (flag F: the kernel holds the emulator open,
/// so it need not exist inside the root). Mounts binfmt_misc and enables the entry where the
/// package could not (a machine without systemd or with binfmt_misc unmounted at install).
pub fn enable(arch: Arch) -> Result<()> {
    crate::setup::install(&["qemu-user-static", "binfmt-support"])?;
    let misc = Path::new(BINFMT_MISC);
    if !misc.join("register").exists() {
        status(
            Command::new("mount")
                .args(["-t", "binfmt_misc", "binfmt_misc"])
                .arg(misc),
        )
        .context("cannot mount binfmt_misc, which running arm64 programs here needs")?;
    }
    let entry = misc.join(binfmt_name(arch));
    if !entry.exists() {
        status(Command::new("update-binfmts").args(["--enable", &binfmt_name(arch)]))
            .context("update-binfmts cannot register qemu-user-static")?;
    }
    let text = std::fs::read_to_string(&entry).with_context(|| {
        format!(
            "{} is missing: qemu-user-static is not registered with binfmt_misc",
            entry.display()
        )
    })?;
    if text.lines().next() != Some("enabled") {
        bail!(
            "{} is disabled: enable it with update-binfmts --enable",
            entry.display()
        );
    }
    if !text
        .lines()
        .find_map(|l| l.strip_prefix("flags: "))
        .is_some_and(|f| f.contains('F'))
    {
        bail!(
            "{} lacks binfmt_misc's F flag, so the emulator cannot run inside the image's root",
            entry.display()
        );
    }
    Ok(())
}
