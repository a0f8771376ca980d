//! Running code inside another network namespace: netlink and sockets then see that
//! namespace (the way `ip netns exec` does, for one thread).

use std::{fs::File, os::fd::AsRawFd as _, path::Path};

use anyhow::{Context as _, Result, anyhow};

/// Runs `f` on a thread that has entered the network namespace at `path`. Sockets created in `f`
/// belong to that namespace.
pub fn in_netns<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> Result<T> {
    let ns = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                // SAFETY: a valid namespace fd; setns only changes this thread's namespace.
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(anyhow!(
                        "cannot enter {}: {}",
                        path.display(),
                        std::io::Error::last_os_error()
                    ));
                }
                Ok(f())
            })
            .join()
            .map_err(|_| anyhow!("a thread inside {} panicked", path.display()))?
    })
}
