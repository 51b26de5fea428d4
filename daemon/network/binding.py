"""Which network a sandbox's traffic is counted on: a host-side interface, a namespace, or the host's own.

A binding is plain data, made once (at CreateSandbox, through the API, or discovered from the sandbox's
processes) and then handed to the accountant and the limiter. Namespaces are referred to by a file
(/run/netns/<name>, any bind-mounted path, or /proc/<pid>/ns/net) together with the identity the file
had when the binding was made, so a reused pid or a re-created name is noticed instead of measured.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

NETNS_RUN_DIR = Path("/run/netns")
PROC = Path("/proc")
# Linux IFNAMSIZ is 16 including the terminating NUL.
_IFNAME_MAX = 15


class NetBindingError(ValueError):
    """A binding that cannot be made; the message says what is wrong and what to do."""


class NetTargetNotFound(NetBindingError):
    """The spec is well formed but names a namespace, process or interface that does not exist."""


class BindingKind(enum.Enum):
    INTERFACE = "interface"  # the host side of the sandbox's link (veth, tap): counters seen from outside
    NAMESPACE = "namespace"  # the sandbox's own network namespace: counters seen from inside
    HOST_NETWORK = "host_network"  # the sandbox shares the host's namespace: nothing can be attributed


@dataclass(frozen=True)
class NetnsRef:
    """A network namespace file and the (st_dev, st_ino) identity it had when the binding was made."""

    path: str
    device: int
    inode: int
    label: str  # how the operator named it, for messages: "netns 'ci-7'", "pid 4242", "/var/run/x"

    def check(self) -> None:
        """Raise NetBindingError unless `path` still refers to the same namespace."""
        try:
            status = os.stat(self.path)
        except OSError as error:
            raise NetBindingError(f"{self.label} is gone ({self.path}: {error.strerror})") from error
        if (status.st_dev, status.st_ino) != (self.device, self.inode):
            raise NetBindingError(
                f"{self.label} now refers to a different namespace than the one bound ({self.path}); rebind the sandbox"
            )


@dataclass(frozen=True)
class NetBinding:
    """Where a sandbox's traffic is counted and limited.

    INTERFACE: `ifindex`/`interface` name the host side of the sandbox's link inside `netns` (None: the
    daemon's own namespace). NAMESPACE: every non-loopback link inside `netns`. HOST_NETWORK: no links.
    """

    kind: BindingKind
    netns: NetnsRef | None = None
    ifindex: int | None = None
    interface: str | None = None

    def describe(self) -> str:
        if self.kind is BindingKind.HOST_NETWORK:
            return "shares the host network"
        if self.kind is BindingKind.NAMESPACE:
            assert self.netns is not None
            return self.netns.label
        where = f" in {self.netns.label}" if self.netns is not None else ""
        return f"interface {self.interface!r} (ifindex {self.ifindex}){where}"

    def spec(self) -> str:
        """The binding as `parse_binding` text, for the API and CLI (a discovered one included)."""
        if self.kind is BindingKind.HOST_NETWORK:
            return "host"
        assert self.netns is not None or self.kind is BindingKind.INTERFACE
        namespace = ""
        if self.netns is not None:
            path = Path(self.netns.path)
            if path.parent == NETNS_RUN_DIR:
                namespace = f"netns:{path.name}"
            elif path.parent.parent.parent == PROC and path.parent.parent.name.isdigit():
                namespace = f"pid:{path.parent.parent.name}"
            else:
                namespace = f"netns-path:{path}"
        if self.kind is BindingKind.NAMESPACE:
            return namespace
        return f"interface:{self.interface}" + (f"@{namespace.removeprefix('netns:')}" if namespace else "")

    def same_network(self, other: NetBinding | None) -> bool:
        """Whether `other` counts the same traffic (same kind, namespace identity and link), however named."""
        if other is None or other.kind is not self.kind or other.ifindex != self.ifindex:
            return False
        if self.netns is None or other.netns is None:
            return self.netns is other.netns
        return (self.netns.device, self.netns.inode) == (other.netns.device, other.netns.inode)


# (netns or None, name or index) -> (ifindex, name); raises LookupError when there is no such link.
LinkResolver = Callable[[NetnsRef | None, str | int], tuple[int, str]]


def _identity(path: Path, label: str, what_to_do: str) -> NetnsRef:
    try:
        status = os.stat(path)
    except FileNotFoundError as error:
        raise NetTargetNotFound(f"{label} does not exist ({path}); {what_to_do}") from error
    except OSError as error:
        raise NetBindingError(f"{label} cannot be read ({path}: {error.strerror})") from error
    return NetnsRef(path=str(path), device=status.st_dev, inode=status.st_ino, label=label)


def host_netns(proc: Path = PROC) -> NetnsRef:
    """The host's network namespace, taken as the daemon's own: the daemon must run in it to see the
    sandboxes' host-side links (pid 1's is not used: it may be unreadable under a supervisor)."""
    return _identity(proc / "self" / "ns" / "net", "the daemon's network namespace", "is /proc mounted?")


def validate_interface_name(name: str) -> str:
    if (
        not name
        or len(name) > _IFNAME_MAX
        or name in (".", "..")
        or any(char in "/:" or char.isspace() or not char.isprintable() for char in name)
    ):
        raise NetBindingError(
            f"{name!r} is not an interface name: 1-{_IFNAME_MAX} printable characters, no '/', ':' or whitespace"
        )
    return name


def _namespace_binding(ref: NetnsRef, proc: Path) -> NetBinding:
    host = host_netns(proc)
    if (ref.device, ref.inode) == (host.device, host.inode):
        return NetBinding(kind=BindingKind.HOST_NETWORK)
    return NetBinding(kind=BindingKind.NAMESPACE, netns=ref)


def netns_by_name(name: str, run_dir: Path = NETNS_RUN_DIR) -> NetnsRef:
    if not name or "/" in name or name in (".", ".."):
        raise NetBindingError(f"{name!r} is not a namespace name: a file name under {run_dir}, no '/'")
    return _identity(run_dir / name, f"netns {name!r}", f"create it or pick one of `ls {run_dir}`")


def netns_by_path(path: str) -> NetnsRef:
    if not os.path.isabs(path):
        raise NetBindingError(f"namespace path {path!r} must be absolute")
    return _identity(Path(path), f"namespace file {path}", "give a bind-mounted namespace file")


def netns_by_pid(pid: int, proc: Path = PROC) -> NetnsRef:
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        raise NetBindingError(f"{pid!r} is not a process id")
    return _identity(proc / str(pid) / "ns" / "net", f"pid {pid}", "is the process still running?")


def bind_namespace(
    *,
    name: str | None = None,
    path: str | None = None,
    pid: int | None = None,
    run_dir: Path = NETNS_RUN_DIR,
    proc: Path = PROC,
) -> NetBinding:
    """Bind to a namespace given by exactly one of name, path or pid; the host's namespace -> HOST_NETWORK."""
    given = [key for key, value in (("name", name), ("path", path), ("pid", pid)) if value is not None]
    if len(given) != 1:
        raise NetBindingError(f"give exactly one of name, path or pid for a namespace binding (got {given})")
    if name is not None:
        ref = netns_by_name(name, run_dir)
    elif path is not None:
        ref = netns_by_path(path)
    else:
        assert pid is not None
        ref = netns_by_pid(pid, proc)
    return _namespace_binding(ref, proc)


def bind_interface(interface: str | int, resolve_link: LinkResolver, *, netns: NetnsRef | None = None) -> NetBinding:
    """Bind to the host side of a sandbox's link, by name or ifindex, in `netns` (None: the daemon's own)."""
    if isinstance(interface, bool) or not isinstance(interface, int | str):
        raise NetBindingError(f"{interface!r} is not an interface: give a name or an ifindex")
    if isinstance(interface, int) and interface <= 0:
        raise NetBindingError(f"{interface} is not an ifindex (they start at 1)")
    if isinstance(interface, str):
        validate_interface_name(interface)
    if netns is not None:
        netns.check()
    where = netns.label if netns is not None else "the daemon's namespace"
    try:
        ifindex, name = resolve_link(netns, interface)
    except LookupError as error:
        raise NetTargetNotFound(
            f"no interface {interface!r} in {where}; give the host side of the sandbox's veth"
        ) from error
    except OSError as error:
        raise NetBindingError(f"cannot look up interface {interface!r} in {where}: {error}") from error
    if name == "lo":
        raise NetBindingError("the loopback interface carries no sandbox's traffic; bind its veth instead")
    return NetBinding(kind=BindingKind.INTERFACE, netns=netns, ifindex=ifindex, interface=name)


def _named_path_for(ref: NetnsRef, run_dir: Path) -> NetnsRef:
    """A /run/netns name for the same namespace if there is one: it outlives any single pid."""
    try:
        names = sorted(os.listdir(run_dir))
    except OSError:
        return ref
    for name in names:
        try:
            status = os.stat(run_dir / name)
        except OSError:
            continue
        if (status.st_dev, status.st_ino) == (ref.device, ref.inode):
            return NetnsRef(str(run_dir / name), ref.device, ref.inode, f"netns {name!r}")
    return ref


def discover_binding(pids: Iterable[int], *, proc: Path = PROC, run_dir: Path = NETNS_RUN_DIR) -> NetBinding:
    """The namespace a sandbox's processes live in (from /proc/<pid>/ns/net).

    All live processes must share one namespace; the host's namespace gives HOST_NETWORK. Pids that
    exited meanwhile are ignored.
    """
    found: dict[tuple[int, int], NetnsRef] = {}
    for pid in pids:
        try:
            ref = netns_by_pid(pid, proc)
        except NetBindingError:
            continue
        found.setdefault((ref.device, ref.inode), ref)
    if not found:
        raise NetBindingError("none of the sandbox's processes is alive; bind an interface or namespace")
    if len(found) > 1:
        holders = ", ".join(sorted(ref.label for ref in found.values()))
        raise NetBindingError(
            f"the sandbox's processes live in {len(found)} network namespaces ({holders}); "
            "bind one namespace or interface explicitly"
        )
    (ref,) = found.values()
    binding = _namespace_binding(ref, proc)
    if binding.kind is BindingKind.NAMESPACE:
        return NetBinding(kind=BindingKind.NAMESPACE, netns=_named_path_for(ref, run_dir))
    return binding


def parse_binding(
    spec: str, resolve_link: LinkResolver, *, run_dir: Path = NETNS_RUN_DIR, proc: Path = PROC
) -> NetBinding:
    """A binding from one line of text, for the CLI and the API:

    `netns:<name>`, `netns-path:<path>`, `pid:<pid>`, `interface:<name-or-ifindex>` (host side, in the
    daemon's namespace) or `interface:<name-or-ifindex>@<netns name>`, or `host`.
    """
    kind, sep, value = spec.partition(":")
    if spec == "host":
        return NetBinding(kind=BindingKind.HOST_NETWORK)
    if not sep or not value:
        raise NetBindingError(
            f"{spec!r} is not a network binding: use netns:<name>, netns-path:<path>, pid:<pid>, "
            "interface:<name|ifindex>[@<netns>] or host"
        )
    if kind == "netns":
        return bind_namespace(name=value, run_dir=run_dir, proc=proc)
    if kind == "netns-path":
        return bind_namespace(path=value, run_dir=run_dir, proc=proc)
    if kind == "pid":
        if not value.isdigit():
            raise NetBindingError(f"pid:{value} needs a decimal process id")
        return bind_namespace(pid=int(value), run_dir=run_dir, proc=proc)
    if kind == "interface":
        link, _, netns_name = value.partition("@")
        netns = netns_by_name(netns_name, run_dir) if netns_name else None
        return bind_interface(int(link) if link.isdigit() else link, resolve_link, netns=netns)
    raise NetBindingError(f"unknown binding kind {kind!r} in {spec!r}: use netns, netns-path, pid, interface or host")
