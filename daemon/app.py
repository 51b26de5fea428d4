"""The running daemon: builds every part from the config, wires the data flow, serves, and shuts down.

API -> policy -> cgroups; kernel -> cgroup watcher / bpf -> monitor -> policy actions -> events, ledger,
metrics. This module only connects parts; each part's logic lives in its own module.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

from prometheus_client import start_http_server

from hostwarden import __version__, capabilities
from hostwarden.call_socket import CallSocketServer
from hostwarden.cgroups.errors import CgroupError
from hostwarden.cgroups.notify import CgroupWatcher
from hostwarden.cgroups.root import discover_root
from hostwarden.cgroups.tree import CgroupTree
from hostwarden.cgroups.usage import read_usage
from hostwarden.config import Config, ConfigError, DaemonConfig, load_config
from hostwarden.endpoints import call_socket_path
from hostwarden.enforcement import build_enforcement
from hostwarden.errors import FailedPrecondition, Unavailable
from hostwarden.events import EventBus
from hostwarden.integrity import IntegrityPart, build_integrity
from hostwarden.ledger import Ledger
from hostwarden.metrics import Metrics
from hostwarden.monitor import build_monitor
from hostwarden.network.part import NetworkPart, build_network
from hostwarden.policy_runtime import PolicyRuntime
from hostwarden.power.part import EnergyPart, build_energy
from hostwarden.proto import warden_pb2 as pb
from hostwarden.sdnotify import Notifier
from hostwarden.server import GrpcServer
from hostwarden.service import Observer, Principal, Sandbox, Warden

log = logging.getLogger(__name__)

REAPER_INTERVAL_S = 60.0
STRAY_MIN_AGE_S = 10.0  # an empty call cgroup younger than this may be a call still being begun


class Part(Protocol):
    """An optional part of the daemon (bpf monitor, energy, network, integrity, enforcement).

    Built with the Daemon once its core exists; a part that is also a service.Observer is registered
    for sandbox and call hooks. start() runs before the daemon adopts what it finds and serves; a part
    the host cannot support reports that in the capabilities and keeps the daemon going.
    """

    def start(self) -> None: ...

    def stop(self) -> None: ...


# Each returns the part, or None when the config turns it off.
PART_BUILDERS: tuple[Callable[[Daemon], Part | None], ...] = (build_monitor, build_energy, build_enforcement,
                                                                build_network, build_integrity)


class Daemon:
    def __init__(self, config: Config, *, tree: CgroupTree | None = None, cgroup_mount: Path | None = None) -> None:
        """`tree` and `cgroup_mount` replace root discovery (tests run the daemon on a fake cgroupfs)."""
        self.config = config
        self.started = time.time()
        self.capabilities = capabilities.probe()
        if tree is None:
            under_systemd = bool(os.environ.get("INVOCATION_ID")) and config.daemon.cgroup_root is None
            tree = CgroupTree(discover_root(config.daemon.cgroup_root, under_systemd=under_systemd))
            cgroup_mount = capabilities.find_cgroup2_mount(Path("/proc/self/mountinfo").read_text())
        assert cgroup_mount is not None  # discover_root refused hosts without cgroup2
        self.tree = tree
        self.root = tree.root
        self.ledger = Ledger(config.daemon.state_dir / "ledger.sqlite3")
        self.bus = EventBus(config.daemon.event_queue_size)
        self.policy = PolicyRuntime(config.daemon.policy, self.bus, config.daemon.state_dir / "policy-set.toml")
        self.metrics = Metrics(self._metrics_snapshot)
        self.warden = Warden(self.tree, cgroup_mount, self.ledger, self.bus, self.policy.resolve,
                             on_call_finished=self.metrics.call_finished, on_action=self.metrics.action)
        self.watcher = CgroupWatcher(on_emptied=self.warden.on_emptied, fs=self.tree.fs)
        self.warden.watch_emptied = lambda path: self.watcher.watch(path, attached=True)
        self.warden.unwatch_emptied = self.watcher.unwatch
        self.parts: list[Part] = [part for build in PART_BUILDERS if (part := build(self)) is not None]
        self.warden.observers.extend(p for p in self.parts if isinstance(p, Observer))
        self.notifier = Notifier.from_environment()
        self.server: GrpcServer | None = None
        self.call_server: CallSocketServer | None = None
        self.metrics_address = ""
        self._stop = threading.Event()
        self._reload = threading.Event()

    # facade used by the gRPC servicer

    def usage(self, principal: Principal, sandbox_name: str) -> pb.Usage:
        sandbox = self.warden._sandbox(principal, sandbox_name)
        usage = read_usage(sandbox.path, self.tree.fs)
        reply = pb.Usage(sandbox=sandbox.name, memory_current_bytes=usage.memory_current or 0,
                         memory_source="memory.current" if usage.memory_current is not None else "unavailable",
                         cpu_seconds=(usage.cpu_usage_usec or 0) / 1e6, pids=usage.pids_current or 0,
                         energy_source="unavailable")
        for part in self.parts:
            if isinstance(part, EnergyPart) and (energy := part.sandbox_energy(sandbox.name)) is not None:
                reply.energy_joules, reply.energy_source = energy
            if isinstance(part, NetworkPart) and (traffic := part.traffic(sandbox.name)) is not None:
                reply.net_rx_bytes, reply.net_tx_bytes = traffic.rx_bytes, traffic.tx_bytes
        if usage.psi.get("memory") is not None:
            reply.memory_pressure_some_avg10 = usage.psi["memory"].some.avg10
        if usage.psi.get("cpu") is not None:
            reply.cpu_pressure_some_avg10 = usage.psi["cpu"].some.avg10
        now = time.monotonic()
        for call in list(self.warden.calls.values()):
            if call.sandbox != sandbox.name:
                continue
            call_usage = read_usage(call.path, self.tree.fs)
            reply.calls.add(call_id=call.call_id, tool=call.tool, memory_current_bytes=call_usage.memory_current or 0,
                            cpu_seconds=(call_usage.cpu_usage_usec or 0) / 1e6,
                            elapsed_seconds=now - call.started_mono, frozen=self._frozen(call.path))
        return reply

    def _frozen(self, path: Path) -> bool:
        try:
            return self.tree.fs.read_keyed(path / "cgroup.events").get("frozen") == 1
        except OSError:
            return False

    def _network(self) -> NetworkPart:
        part = next((p for p in self.parts if isinstance(p, NetworkPart)), None)
        if part is None:
            raise Unavailable("network accounting is not running on this daemon")
        return part

    def create_sandbox(self, principal: Principal, name: str, labels: dict[str, str], priority: str,
                       network: str) -> tuple[Sandbox, str]:
        if not network:
            return self.warden.create_sandbox(principal, name, labels, priority)
        return self._network().create_sandbox(principal, name, labels, priority, network)

    def bind_network(self, principal: Principal, sandbox: str, network: str) -> Sandbox:
        return self._network().bind(principal, sandbox, network)

    def network_spec(self, sandbox: str) -> str:
        return next((p.spec_of(sandbox) for p in self.parts if isinstance(p, NetworkPart)), "")

    def policy_document(self) -> pb.PolicyDocument:
        return self.policy.document()

    def set_policy(self, text: str) -> pb.PolicyDocument:
        return self.policy.set(text)

    def validate_policy(self, text: str) -> pb.ValidatePolicyResponse:
        return self.policy.validate(text)

    def integrity(self, principal: Principal, sandbox: str) -> pb.IntegrityReport:
        if sandbox:
            self.warden._sandbox(principal, sandbox)
        return self._integrity_part().report_message(principal, sandbox)

    def quote(self, principal: Principal, nonce: str, offset: int) -> pb.Quote:
        return self._integrity_part().quote_message(principal, nonce, offset)

    def _integrity_part(self) -> IntegrityPart:
        part = next((p for p in self.parts if isinstance(p, IntegrityPart)), None)
        if part is None:
            raise FailedPrecondition("attestation is turned off on this daemon ([attest] enabled = false)")
        return part

    def capability_messages(self) -> list[pb.Capability]:
        return [pb.Capability(name=c.name, available=c.available, in_use=c.in_use, detail=c.detail)
                for c in self.capabilities.values()]

    def status_message(self) -> pb.Status:
        return pb.Status(version=__version__, uptime_seconds=time.time() - self.started,
                         sandboxes=len(self.warden.sandboxes), running_calls=len(self.warden.calls),
                         cgroup_root=str(self.root), capabilities=self.capability_messages(),
                         policy_source=self.policy.source, metrics_address=self.metrics_address,
                         call_socket=str(self.call_server.path) if self.call_server else "")

    def _metrics_snapshot(self) -> dict[str, Any]:
        sandbox_usage: dict[str, dict[str, float | None]] = {}
        for name, sandbox in list(self.warden.sandboxes.items()):
            usage = read_usage(sandbox.path, self.tree.fs)
            sandbox_usage[name] = {
                "memory_bytes": usage.memory_current,
                "cpu_seconds": usage.cpu_usage_usec / 1e6 if usage.cpu_usage_usec is not None else None,
            }
        return {"sandboxes": len(self.warden.sandboxes), "running_calls": len(self.warden.calls),
                "sandbox_usage": sandbox_usage, "events_dropped": self.bus.dropped_total}

    # running

    def _start_metrics(self) -> None:
        address = self.config.metrics.address
        if not address:
            return
        host, _, port = address.rpartition(":")
        server, _thread = start_http_server(int(port), addr=host or "127.0.0.1", registry=self.metrics.registry)
        self.metrics_address = f"{host}:{server.server_port}"
        log.info("metrics on http://%s/metrics", self.metrics_address)

    def start(self) -> None:
        """Adopt what the cgroup tree and ledger hold, then serve the API and metrics."""
        self._mark_cgroup_capabilities()
        self.watcher.start()
        for part in self.parts:
            part.start()
        self.warden.recover()
        self.warden.start()
        self._start_metrics()
        daemon_config = self.config.daemon
        tls = None
        if daemon_config.tcp_address:
            assert daemon_config.tls_key and daemon_config.tls_cert and daemon_config.tls_client_ca  # config checked
            tls = (daemon_config.tls_key.read_bytes(), daemon_config.tls_cert.read_bytes(),
                   daemon_config.tls_client_ca.read_bytes())
        self.server = GrpcServer(self, Path(daemon_config.socket), daemon_config.socket_group,
                                 tcp_address=daemon_config.tcp_address, tls=tls)
        self.server.start()
        if daemon_config.call_socket:
            self.call_server = CallSocketServer(self.warden, call_socket_path(daemon_config.socket),
                                                daemon_config.socket_group)
            self.call_server.start()
        self.bus.publish("daemon_started", f"hostwarden {__version__} serving on {self.config.daemon.socket}")
        log.info("serving on %s (cgroup root %s)%s", self.config.daemon.socket, self.root,
                 f"; tool calls also on {self.call_server.path}" if self.call_server else "")

    def serve(self) -> None:
        """Run until SIGTERM/SIGINT; SIGHUP reloads the policy."""
        signal.signal(signal.SIGTERM, lambda *_: self._stop.set())
        signal.signal(signal.SIGINT, lambda *_: self._stop.set())
        signal.signal(signal.SIGHUP, lambda *_: self._reload.set())
        self.start()
        self.notifier.ready(f"serving {len(self.warden.sandboxes)} sandboxes")
        watchdog = self.notifier.watchdog_interval
        tick = min(watchdog / 2, 1.0) if watchdog else 1.0
        last_reap = time.monotonic()
        while not self._stop.wait(tick):
            self.notifier.watchdog()
            self.ledger.checkpoint()
            if self._reload.is_set():
                self._reload.clear()
                self.notifier.reloading()
                self.reload_config()
                self.policy.reload()
                for part in self.parts:
                    if isinstance(part, IntegrityPart):
                        part.reload()
                self.notifier.ready("reloaded")
            if time.monotonic() - last_reap > REAPER_INTERVAL_S:
                last_reap = time.monotonic()
                self.housekeeping()
        self.shutdown()

    def _mark_cgroup_capabilities(self) -> None:
        """cgroup v2 is always in use; a controller is in use where the daemon's root hands it to sandboxes."""
        self.capabilities["cgroup_v2"].in_use = True
        try:
            enabled = set(self.tree.fs.read(self.root / "cgroup.subtree_control").split())
        except CgroupError:
            enabled = set()
        for controller in ("memory", "cpu", "pids"):
            self.capabilities[f"{controller}_controller"].in_use = controller in enabled

    def reload_config(self) -> None:
        """SIGHUP: re-read the config file; apply what can change live, log what needs a restart."""
        if self.config.source == Config().source:
            return
        try:
            new = load_config(Path(self.config.source))
        except ConfigError as exc:
            log.error("config reload refused, the running config stays: %s", exc)
            self.bus.publish("config_rejected", f"config reload refused: {exc}")
            return
        if new.daemon.retention_days != self.config.daemon.retention_days:
            log.info("retention_days now %g", new.daemon.retention_days)
        restart = [name for name in ("metrics", "bpf", "power", "attest")
                   if getattr(new, name) != getattr(self.config, name)]
        restart += [f"daemon.{key}" for key in DaemonConfig.__dataclass_fields__
                    if key != "retention_days" and getattr(new.daemon, key) != getattr(self.config.daemon, key)]
        if restart:
            log.warning("config changes that take effect at the next start: %s", ", ".join(restart))
        self.config = replace(self.config, daemon=replace(self.config.daemon,
                                                          retention_days=new.daemon.retention_days))

    def housekeeping(self) -> None:
        """Remove stray empty call cgroups (never a running call's, attached or not) and old ledger rows."""
        # A call's cgroup exists a moment before BeginToolCall registers the call: only strays older than
        # STRAY_MIN_AGE_S are reaped.
        reaped = self.tree.reap_empty_calls(keep=[c.path for c in list(self.warden.calls.values())],
                                            made_before=time.time() - STRAY_MIN_AGE_S)
        if reaped:
            log.info("reaped %d stray empty call cgroups", len(reaped))
        removed = self.ledger.apply_retention(self.config.daemon.retention_days)
        if removed:
            log.info("ledger retention: removed %d calls older than %g days", removed,
                     self.config.daemon.retention_days)

    def shutdown(self) -> None:
        """Stop serving; sandboxes and running calls keep running (they are adopted on the next start)."""
        self.notifier.stopping()
        if self.call_server is not None:
            self.call_server.stop(grace=5)
        if self.server is not None:
            self.server.stop(grace=5)
        self.bus.close_all()
        for part in reversed(self.parts):
            part.stop()
        self.warden.stop()
        self.watcher.stop()
        self.ledger.close()
        log.info("stopped; %d calls left running for the next start", len(self.warden.calls))
