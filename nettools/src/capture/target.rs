//! Which interface a capture opens: the host-side veth of the workload named on the command
//! line, found the way `nettools trace` finds it, or the interface given with `--iface`.

use anyhow::{Result, bail};

use crate::{
    cli::CaptureArgs,
    discover::{self, Workload, WorkloadKind},
};

/// The workload named by `args` (exactly one target).
pub async fn workload(args: &CaptureArgs) -> Result<Workload> {
    let t = &args.target;
    if let Some(spec) = &t.netns {
        return discover::netns::by_name_or_path(spec);
    }
    if let Some(pid) = t.pid {
        return discover::netns::by_pid(pid);
    }
    if let Some(iface) = &t.iface {
        return discover::netns::by_interface(iface);
    }
    let pods: Vec<String> = t.pod.iter().cloned().collect();
    let containers: Vec<String> = t.container.iter().cloned().collect();
    let (found, _) = discover::watch::lookup(
        &pods,
        args.namespace.as_deref(),
        &containers,
        &args.runtime.sources(),
        false,
    )
    .await?;
    match found.into_iter().next() {
        Some(w) => Ok(w),
        None => bail!("no pod or container matches"),
    }
}

/// The one interface to capture on for `w`: its host-side veth (or the `--iface` itself).
pub fn interface(w: &mut Workload) -> Result<String> {
    if w.host_network {
        bail!(
            "{} uses the host's network namespace: capture one of the host's interfaces with \
             --iface NAME",
            w.name
        );
    }
    w.discover_veths()?;
    match w.veths.as_slice() {
        [one] => Ok(one.name.clone()),
        [] if w.kind == WorkloadKind::Host => bail!(
            "{} is the host's own network namespace: capture one of its interfaces with --iface \
             NAME",
            w.name
        ),
        [] => bail!(
            "{} has no veth to another namespace: capture an interface directly with --iface NAME",
            w.name
        ),
        many => {
            let names: Vec<String> = many
                .iter()
                .map(|v| format!("{} ({})", v.name, v.inner_name))
                .collect();
            bail!(
                "{} has {} veths, {}: capture one of them with --iface NAME",
                w.name,
                many.len(),
                names.join(", ")
            )
        }
    }
}
