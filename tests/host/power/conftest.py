"""The daemon host tests' cgroup root fixture (a cgroup dir of the test's own, removed afterwards)."""

from tests.host.daemon.conftest import cgroup_root  # noqa: F401
