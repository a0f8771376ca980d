//! The machines the matrix boots: x86_64 (the default) and arm64, each under QEMU's software
//! emulation (TCG), with Debian's cloud kernels of that architecture.

use anyhow::{Result, bail};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    X86_64,
    Arm64,
}

impl Arch {
    /// `--arch` values: `x86_64` (or `amd64`), `arm64` (or `aarch64`), `all`.
    pub fn parse(value: &str) -> Result<Vec<Arch>> {
        Ok(match value {
            "x86_64" | "amd64" => vec![Arch::X86_64],
            "arm64" | "aarch64" => vec![Arch::Arm64],
            "all" => vec![Arch::X86_64, Arch::Arm64],
            other => bail!("--arch {other:?} is not one of x86_64, arm64, all"),
        })
    }

    /// Debian's name of the architecture.
    pub fn debian(self) -> &'static str {
        match self {
            Arch::X86_64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }

    /// The suffix of Debian's cloud kernel releases (`6.1.0-57-cloud-arm64`).
    pub fn flavour(self) -> &'static str {
        match self {
            Arch::X86_64 => "-cloud-amd64",
            Arch::Arm64 => "-cloud-arm64",
        }
    }

    /// Kernels a plain run boots: every series people run on x86_64; on arm64 the oldest
    /// supported series and the newest (each arm64 guest costs as much as an x86_64 one).
    pub fn default_kernels(self) -> &'static [&'static str] {
        match self {
            Arch::X86_64 => &["5.10", "6.1", "6.12", "6.18", "newest"],
            Arch::Arm64 => &["6.1", "newest"],
        }
    }

    pub fn qemu(self) -> &'static str {
        match self {
            Arch::X86_64 => "qemu-system-x86_64",
            Arch::Arm64 => "qemu-system-aarch64",
        }
    }

    /// The Debian package with `qemu()`.
    pub fn qemu_package(self) -> &'static str {
        match self {
            Arch::X86_64 => "qemu-system-x86",
            Arch::Arm64 => "qemu-system-arm",
        }
    }

    /// Machine arguments: the PC's defaults; on arm64 the generic `virt` board with every CPU
    /// feature QEMU emulates, pointer authentication by QEMU's own fast algorithm: Debian's
    /// arm64 kernels sign and check every return address, and emulating the architected QARMA
    /// cipher made a guest 3.8 times slower (the guest cannot tell the difference).
    pub fn machine(self) -> &'static [&'static str] {
        match self {
            Arch::X86_64 => &[],
            Arch::Arm64 => &["-M", "virt", "-cpu", "max,pauth-impdef=on"],
        }
    }

    /// The name of QEMU's user-mode emulator and its binfmt_misc entry (`qemu-aarch64`).
    pub fn qemu_user(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Arm64 => "aarch64",
        }
    }

    /// The serial console the kernel writes to.
    pub fn console(self) -> &'static str {
        match self {
            Arch::X86_64 => "ttyS0",
            Arch::Arm64 => "ttyAMA0",
        }
    }

    /// Where this architecture's cache lives under `target/vmtest` (x86_64 keeps the top).
    pub fn subdir(self) -> &'static str {
        match self {
            Arch::X86_64 => "",
            Arch::Arm64 => "arm64",
        }
    }

    /// Debian's multiarch directory name (`/usr/lib/<triplet>`).
    pub fn triplet(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64-linux-gnu",
            Arch::Arm64 => "aarch64-linux-gnu",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arch_names() -> Result<()> {
        assert_eq!(Arch::parse("arm64")?, [Arch::Arm64]);
        assert_eq!(Arch::parse("aarch64")?, [Arch::Arm64]);
        assert_eq!(Arch::parse("all")?, [Arch::X86_64, Arch::Arm64]);
        assert!(Arch::parse("riscv64").is_err());
        Ok(())
    }
}
