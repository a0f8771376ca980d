#!/bin/sh
# /init of the vmtest guest (busybox sh, PID 1). It prepares what a node has (proc, sys, bpffs,
# tracefs, cgroup2, the lab's kernel modules), runs every integration test binary one test at a
# time (or the share of them that `vmtest.shard=K` on the kernel command line names:
# /vmtest/shards/K.list), and reports on the serial console with @@vmtest lines that `cargo xtask vmtest` parses:
#   @@vmtest begin <uname -r>
#   @@vmtest module-failed <name>       a module that did not load
#   @@vmtest run <binary>               a test binary starts
#   @@vmtest result <binary> <exit code>
#   @@vmtest done                       every binary ran
# The host decides from these lines only; QEMU's exit status says nothing about the tests.

export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts
mount -t devpts -o ptmxmode=0666 devpts /dev/pts
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
mount -t bpf bpf /sys/fs/bpf
mount -t tracefs tracefs /sys/kernel/tracing
mount -t cgroup2 cgroup2 /sys/fs/cgroup
hostname vmtest

echo "@@vmtest begin $(uname -r)"
while read -r module; do
    [ -n "$module" ] || continue
    insmod "/vmtest/modules/$module.ko" || echo "@@vmtest module-failed $module"
done < /vmtest/modules.list
ip link set lo up

cd /vmtest || exit 1
# NETTOOLS_VMTEST tells a test it runs in this guest (nettools_tests::in_vmtest_guest).
export NETTOOLS_BIN=/vmtest/bin/nettools NETTOOLS_VMTEST=1 RUST_BACKTRACE=1
# Extra arguments for every test binary (e.g. a test name filter), one per line.
set --
if [ -f /vmtest/test-args ]; then
    while read -r arg; do set -- "$@" "$arg"; done < /vmtest/test-args
fi
list=/vmtest/tests.list
for word in $(cat /proc/cmdline); do
    case "$word" in
    vmtest.shard=*) [ -f "/vmtest/shards/${word#vmtest.shard=}.list" ] &&
        list="/vmtest/shards/${word#vmtest.shard=}.list" ;;
    esac
done
while read -r binary; do
    [ -n "$binary" ] || continue
    echo "@@vmtest run $binary"
    "/vmtest/tests/$binary" --test-threads=1 --show-output "$@"
    echo "@@vmtest result $binary $?"
done < "$list"
echo "@@vmtest done"
poweroff -f
