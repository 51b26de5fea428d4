"""The monitor's host tier runs the real daemon process of tests/host/daemon (with its eBPF programs)."""

from tests.host.daemon.conftest import cgroup_root, daemon_process  # noqa: F401  (fixtures)
