"""The single place hostwarden imports keylime (pinned: its Python API is not stable).

keylime has import-time side effects that a daemon must not inherit: `keylime.config` calls
`logging.basicConfig` (a root handler at INFO), `keylime.keylime_logging` may run `logging.config.fileConfig`
(which disables existing loggers), and `keylime.ima.ima` imports `keylime.signing`, which needs `gpg`
(Debian's python3-gpg). The import happens lazily, once, with the logging state restored afterwards.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType

KEYLIME_VERSION = "7.14.3"

_lock = threading.Lock()
_modules: KeylimeModules | None = None


class KeylimeUnavailable(RuntimeError):
    """keylime (or one of its undeclared dependencies) cannot be imported."""


@dataclass(frozen=True)
class KeylimeModules:
    ima: ModuleType
    ast: ModuleType
    file_signatures: ModuleType
    validators: ModuleType
    tpm_util: ModuleType
    tpm2_objects: ModuleType
    algorithms: ModuleType


@contextmanager
def _logging_preserved() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    disabled = {name: logger.disabled for name, logger in logging.root.manager.loggerDict.items()
                if isinstance(logger, logging.Logger)}
    try:
        yield
    finally:
        for handler in root.handlers[:]:
            if handler not in handlers:
                root.removeHandler(handler)
        root.setLevel(level)
        for name, was_disabled in disabled.items():
            logging.getLogger(name).disabled = was_disabled


def keylime() -> KeylimeModules:
    """Import keylime's IMA and TPM modules once; raise `KeylimeUnavailable` with what to install."""
    global _modules
    with _lock:
        if _modules is None:
            # hostwarden reports every failure as a structured reason; keylime's own log lines (a warning per
            # file, and a missing-config warning at import) would only repeat them into the daemon's log.
            logging.getLogger("keylime").setLevel(logging.CRITICAL)
            with _logging_preserved():
                try:
                    from importlib.metadata import version

                    from keylime.common import algorithms, validators
                    from keylime.ima import ast, file_signatures, ima
                    from keylime.tpm import tpm2_objects, tpm_util
                except ImportError as error:
                    raise KeylimeUnavailable(
                        f"cannot import keylime: {error}; install keylime=={KEYLIME_VERSION}, its dependencies "
                        "(requirements.txt) and Debian's python3-gpg") from error
                installed = version("keylime")
                if installed != KEYLIME_VERSION:
                    raise KeylimeUnavailable(f"keylime {installed} is installed but hostwarden is written "
                                             f"against {KEYLIME_VERSION}; install the pinned version")
            _modules = KeylimeModules(ima, ast, file_signatures, validators, tpm_util, tpm2_objects, algorithms)
        return _modules
