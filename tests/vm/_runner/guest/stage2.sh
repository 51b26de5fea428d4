# Stage 2, PID 1 in the guest's real root (the overlay over the host's root), run by busybox sh.
# Mounts the kernel filesystems the daemon uses, mounts the --share directories, runs the command from
# command.sh with its stdout/stderr on the virtio ports named "stdout"/"stderr", writes its exit status
# to the exchange directory (the host's only source for it) and powers off.
exchange=/run/hostwarden-vm
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
bb=/bin/busybox

say() {
    echo "<5>vm stage2: $*" > /dev/kmsg
}

fail() {
    say "$*"
    $bb sync
    $bb reboot -f
}

mounted() {
    $bb mount -t "$1" -o "$2" "$1" "$3" || fail "cannot mount $1 at $3"
}

mounted proc nosuid,nodev,noexec /proc
mounted sysfs nosuid,nodev,noexec /sys
mounted securityfs nosuid,nodev,noexec /sys/kernel/security
mounted cgroup2 nosuid,nodev,noexec,nsdelegate /sys/fs/cgroup
mounted tracefs nosuid,nodev,noexec /sys/kernel/tracing
mounted debugfs nosuid,nodev,noexec /sys/kernel/debug
mounted bpf nosuid,nodev,noexec,mode=0700 /sys/fs/bpf
$bb mkdir -p /dev/pts /dev/shm
mounted devpts nosuid,noexec,gid=5,mode=0620,ptmxmode=0666 /dev/pts
mounted tmpfs nosuid,nodev,mode=1777 /dev/shm

# A guest-only /tmp; a working directory below /tmp would be hidden by it, so carry that across.
workdir=$(cat "$exchange/workdir")
case "$workdir" in
    /tmp/*) $bb mkdir -p "$exchange/keep" && $bb mount --bind "$workdir" "$exchange/keep" ;;
esac
mounted tmpfs nosuid,nodev,mode=1777 /tmp
case "$workdir" in
    /tmp/*) $bb mkdir -p "$workdir" && $bb mount --move "$exchange/keep" "$workdir" ;;
esac

# Every controller the kernel offers, for the children of the root cgroup.
controllers=$($bb cat /sys/fs/cgroup/cgroup.controllers)
for controller in $controllers; do
    echo "+$controller" > /sys/fs/cgroup/cgroup.subtree_control || fail "cannot enable $controller"
done
$bb ip link set lo up || fail "cannot bring lo up"

index=0
while IFS= read -r share; do
    $bb mkdir -p "$share" || fail "cannot create $share"
    $bb mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 "share$index" "$share" \
        || fail "cannot mount share $share"
    index=$((index + 1))
done < "$exchange/shares"

port() {
    for dir in /sys/class/virtio-ports/*; do
        if [ "$($bb cat "$dir/name")" = "$1" ]; then
            echo "/dev/${dir##*/}"
            return
        fi
    done
    fail "no virtio port named $1"
}
stdout=$(port stdout)
stderr=$(port stderr)

say "running the command"
echo booted > "$exchange/booted"
$bb sh "$exchange/command.sh" < /dev/null > "$stdout" 2> "$stderr"
status=$?
say "the command exited with status $status"
echo $status > "$exchange/status.partial"
$bb mv "$exchange/status.partial" "$exchange/status"
$bb sync
$bb reboot -f
