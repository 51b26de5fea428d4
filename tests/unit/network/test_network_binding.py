"""Resolving and discovering network bindings against fake /proc and /run/netns trees."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hostwarden.network.binding import (
    BindingKind,
    NetBindingError,
    bind_interface,
    bind_namespace,
    discover_binding,
    netns_by_name,
    parse_binding,
)


class Tree:
    """Namespace files are plain files: their (st_dev, st_ino) is what identifies a namespace here."""

    def __init__(self, root: Path) -> None:
        self.proc = root / "proc"
        self.run = root / "netns"
        self.run.mkdir()
        self.host = self._file(root / "nsfs" / "host")
        self.process("self", self.host)  # the daemon runs in the host's namespace

    @staticmethod
    def _file(path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
        return path

    def namespace(self, label: str) -> Path:
        return self._file(self.proc.parent / "nsfs" / label)

    def process(self, pid: int | str, namespace: Path) -> None:
        link = self.proc / str(pid) / "ns" / "net"
        link.parent.mkdir(parents=True, exist_ok=True)
        os.link(namespace, link)  # a hard link: same identity, like /proc/<pid>/ns/net

    def name(self, name: str, namespace: Path) -> None:
        os.link(namespace, self.run / name)


@pytest.fixture
def tree(tmp_path):
    return Tree(tmp_path)


def links(table):
    def resolve(netns, interface):
        for ifindex, name in table.items():
            if interface in (ifindex, name):
                return ifindex, name
        raise LookupError(interface)

    return resolve


def test_namespace_by_name_path_and_pid(tree):
    sandbox = tree.namespace("sb")
    tree.name("sb", sandbox)
    tree.process(4242, sandbox)
    by_name = bind_namespace(name="sb", run_dir=tree.run, proc=tree.proc)
    by_path = bind_namespace(path=str(sandbox), run_dir=tree.run, proc=tree.proc)
    by_pid = bind_namespace(pid=4242, run_dir=tree.run, proc=tree.proc)
    assert {by_name.kind, by_path.kind, by_pid.kind} == {BindingKind.NAMESPACE}
    identities = {(b.netns.device, b.netns.inode) for b in (by_name, by_path, by_pid)}
    assert len(identities) == 1
    assert by_name.netns.label == "netns 'sb'" and by_pid.netns.label == "pid 4242"


def test_the_host_namespace_is_labelled_not_attributed(tree):
    tree.process(77, tree.host)
    assert bind_namespace(pid=77, proc=tree.proc, run_dir=tree.run).kind is BindingKind.HOST_NETWORK


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "missing"}, "does not exist"),
        ({"name": "a/b"}, "not a namespace name"),
        ({"name": ".."}, "not a namespace name"),
        ({"path": "relative/ns"}, "must be absolute"),
        ({"pid": 0}, "not a process id"),
        ({"pid": 999}, "still running"),
        ({}, "exactly one"),
        ({"name": "x", "pid": 1}, "exactly one"),
    ],
)
def test_bad_namespace_requests_say_what_is_wrong(tree, kwargs, message):
    with pytest.raises(NetBindingError, match=message):
        bind_namespace(run_dir=tree.run, proc=tree.proc, **kwargs)


def test_a_replaced_namespace_file_is_noticed(tree):
    sandbox = tree.namespace("sb")
    tree.name("sb", sandbox)
    ref = netns_by_name("sb", tree.run)
    ref.check()
    (tree.run / "sb").unlink()
    tree.name("sb", tree.namespace("sb-recreated"))
    with pytest.raises(NetBindingError, match="different namespace"):
        ref.check()
    (tree.run / "sb").unlink()
    with pytest.raises(NetBindingError, match="gone"):
        ref.check()


def test_interface_by_name_or_index():
    table = {1: "lo", 12: "veth-sb"}
    by_name = bind_interface("veth-sb", links(table))
    by_index = bind_interface(12, links(table))
    assert by_name == by_index
    assert (by_name.kind, by_name.ifindex, by_name.interface) == (BindingKind.INTERFACE, 12, "veth-sb")


@pytest.mark.parametrize(
    ("interface", "message"),
    [
        ("veth-missing", "no interface 'veth-missing'"),
        ("lo", "loopback"),
        ("a" * 16, "not an interface name"),
        ("eth0/1", "not an interface name"),
        ("has space", "not an interface name"),
        (0, "not an ifindex"),
        (True, "not an interface"),
    ],
)
def test_bad_interfaces_are_refused(interface, message):
    with pytest.raises(NetBindingError, match=message):
        bind_interface(interface, links({1: "lo", 12: "veth-sb"}))


def test_discovery_prefers_a_stable_name(tree):
    sandbox = tree.namespace("sb")
    tree.name("sb-named", sandbox)
    tree.process(100, sandbox)
    tree.process(101, sandbox)
    binding = discover_binding([100, 101, 55555], proc=tree.proc, run_dir=tree.run)
    assert binding.kind is BindingKind.NAMESPACE
    assert binding.netns.path == str(tree.run / "sb-named")


def test_discovery_of_an_unnamed_namespace_uses_a_pid(tree):
    tree.process(100, tree.namespace("anon"))
    binding = discover_binding([100], proc=tree.proc, run_dir=tree.run)
    assert binding.netns.label == "pid 100"


def test_discovery_in_the_host_namespace_is_host_network(tree):
    tree.process(100, tree.host)
    assert discover_binding([100], proc=tree.proc, run_dir=tree.run).kind is BindingKind.HOST_NETWORK


def test_discovery_refuses_mixed_or_dead_sandboxes(tree):
    tree.process(100, tree.namespace("one"))
    tree.process(101, tree.host)
    with pytest.raises(NetBindingError, match="2 network namespaces"):
        discover_binding([100, 101], proc=tree.proc, run_dir=tree.run)
    with pytest.raises(NetBindingError, match="none of the sandbox's processes"):
        discover_binding([31337], proc=tree.proc, run_dir=tree.run)


def test_parse_binding_text(tree):
    sandbox = tree.namespace("sb")
    tree.name("sb", sandbox)
    tree.process(9, sandbox)
    resolve = links({3: "veth-x"})
    assert parse_binding("host", resolve).kind is BindingKind.HOST_NETWORK
    assert parse_binding("netns:sb", resolve, run_dir=tree.run, proc=tree.proc).netns.label == "netns 'sb'"
    assert parse_binding("pid:9", resolve, run_dir=tree.run, proc=tree.proc).kind is BindingKind.NAMESPACE
    assert parse_binding("interface:3", resolve).interface == "veth-x"
    inside = parse_binding("interface:veth-x@sb", resolve, run_dir=tree.run, proc=tree.proc)
    assert inside.netns.label == "netns 'sb'" and inside.ifindex == 3
    for bad, message in [("veth0", "not a network binding"), ("pid:abc", "decimal"), ("bridge:br0", "unknown")]:
        with pytest.raises(NetBindingError, match=message):
            parse_binding(bad, resolve, run_dir=tree.run, proc=tree.proc)
