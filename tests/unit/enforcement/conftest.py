from tests.unit.daemon.conftest import daemon

__all__ = ["daemon"]
