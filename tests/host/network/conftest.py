"""The network host tier also runs the real daemon process of tests/host/daemon, on the namespaces and veth
pairs of test_network_host."""

from tests.host.daemon.conftest import cgroup_root, daemon_process  # noqa: F401  (fixtures)
from tests.host.network.test_network_host import ethernet_pair, jumbo_pair  # noqa: F401  (fixtures)
