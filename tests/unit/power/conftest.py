"""The daemon tests' `sleeper` fixture (a live process to attach) for the energy part's tests."""

from tests.unit.daemon.conftest import sleeper  # noqa: F401
