"""The daemon's network part: binds sandboxes (API, CreateSandbox, or discovery from their agent processes),
gives every tool call its rx/tx bytes, exports per-sandbox byte counters, and keeps each sandbox's egress
limit in line with the policy's `[network]` table.

Threads: the Observer hooks and the API methods run on request threads (SandboxNetwork is thread-safe;
this part's own maps are guarded by `_lock`); a `network-policy` thread applies limits again after each
`policy_reloaded` event on the bus. Explicit bindings are kept in `<state_dir>/network.json` so that a
restarted daemon takes over the bindings and limits of the sandboxes it adopts again.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from hostwarden.capabilities import Capability
from hostwarden.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied, WardenError
from hostwarden.events import Subscription
from hostwarden.network.accounting import NetAccountingError, NetCounters, NetDelta, NetworkAccountant
from hostwarden.network.binding import NetBinding, NetBindingError, NetTargetNotFound, discover_binding
from hostwarden.network.limits import EgressLimit, ShapingError
from hostwarden.network.manager import SandboxNetwork
from hostwarden.service import ADMIN, Observer, Principal, RunningCall, Sandbox

if TYPE_CHECKING:
    from hostwarden.app import Daemon

log = logging.getLogger(__name__)

MAX_SPEC_LEN = 4096
AGENT_LEAF = "agent"
STATE_FILE = "network.json"
LIMIT_FAILED_HINT = ("the sandbox's traffic is not limited: check the daemon has CAP_NET_ADMIN and the kernel "
                     "has sch_tbf (and for interface bindings sch_ingress, cls_u32, act_mirred, ifb); see "
                     "docs/network.md")


class NetworkCollector(Collector):
    """hostwarden_sandbox_network_{bytes,packets}_total{sandbox,direction}, read at scrape time: a deleted
    (unbound) sandbox's series vanish; sandboxes sharing the host network have none."""

    def __init__(self, accountant: NetworkAccountant) -> None:
        self._accountant = accountant

    def collect(self) -> Iterable[Metric]:
        octets = CounterMetricFamily("hostwarden_sandbox_network_bytes",
                                     "Bytes the sandbox received (rx) and sent (tx) on its bound network, "
                                     "link-layer headers included", labels=["sandbox", "direction"])
        packets = CounterMetricFamily("hostwarden_sandbox_network_packets",
                                      "Packets the sandbox received (rx) and sent (tx) on its bound network",
                                      labels=["sandbox", "direction"])
        for sandbox, counters in sorted(self._accountant.totals().items()):
            octets.add_metric([sandbox, "rx"], counters.rx_bytes)
            octets.add_metric([sandbox, "tx"], counters.tx_bytes)
            packets.add_metric([sandbox, "rx"], counters.rx_packets)
            packets.add_metric([sandbox, "tx"], counters.tx_packets)
        yield octets
        yield packets


class NetworkPart(Observer):
    def __init__(self, daemon: Daemon, network: SandboxNetwork) -> None:
        self._daemon = daemon
        self.network = network
        self._state_path = daemon.config.daemon.state_dir / STATE_FILE
        self._lock = threading.Lock()
        # sandbox -> (spec bound through the API, identity of its namespace then); see _restore
        self._explicit: dict[str, tuple[str, list[int] | None]] = self._load_state()
        self._undiscovered: dict[str, str] = {}  # sandbox -> why discovery found no binding
        # Two calls starting at once must not both rebind: the second rebind would void the first call's figures.
        self._discovery_lock = threading.Lock()
        self._subscription: Subscription | None = None
        self._thread = threading.Thread(target=self._follow_policy, name="network-policy", daemon=True)
        daemon.metrics.register(NetworkCollector(network.accountant))
        root = os.geteuid() == 0
        daemon.capabilities["network"] = Capability(
            "network", True, "rtnetlink via pyroute2: per-sandbox rx/tx accounting"
            + ("; egress limits with tc (TBF, IFB)" if root else "; egress limits need root (CAP_NET_ADMIN)"),
            in_use=True)

    # -- Part --------------------------------------------------------------------------------------------

    def start(self) -> None:
        self._subscription = self._daemon.bus.subscribe(kinds=("policy_reloaded",))
        self._thread.start()

    def stop(self) -> None:
        if self._subscription is not None:
            self._subscription.close()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self.network.close()  # limits stay in force: the sandboxes outlive the daemon

    # -- API ---------------------------------------------------------------------------------------------

    @staticmethod
    def _require_admin(principal: Principal) -> None:
        # A sandbox must not move its own accounting or escape its limit by rebinding.
        if not principal.is_admin:
            raise PermissionDenied("only the admin socket may bind a sandbox's network")

    def parse(self, principal: Principal, spec: str) -> NetBinding:
        """A binding from API text; PermissionDenied for sandbox tokens, InvalidArgument / NotFound for bad specs."""
        self._require_admin(principal)
        if len(spec) > MAX_SPEC_LEN or "\x00" in spec:
            raise InvalidArgument(f"network: at most {MAX_SPEC_LEN} characters, no NUL")
        try:
            return self.network.parse(spec)
        except NetTargetNotFound as error:
            raise NotFound(f"network: {error}") from error
        except NetBindingError as error:
            raise InvalidArgument(f"network: {error}") from error

    def bind(self, principal: Principal, sandbox_name: str, spec: str) -> Sandbox:
        """BindNetwork: bind (or with "" unbind) a sandbox; a bad spec or unreadable target changes nothing."""
        self._require_admin(principal)
        binding = self.parse(principal, spec) if spec else None
        sandbox = self._daemon.warden._sandbox(principal, sandbox_name)
        if binding is None:
            self._unbind(sandbox.name)
            self._daemon.bus.publish("network_unbound", f"sandbox {sandbox.name}: network binding removed",
                                     sandbox=sandbox.name)
        else:
            self.bind_parsed(sandbox, spec, binding)
        return sandbox

    def bind_parsed(self, sandbox: Sandbox, spec: str, binding: NetBinding) -> None:
        """Bind an already parsed spec (CreateSandbox parses before the sandbox exists)."""
        self._bind(sandbox, binding)
        identity = [binding.netns.device, binding.netns.inode] if binding.netns is not None else None
        with self._lock:
            self._explicit[sandbox.name] = (spec, identity)
            self._undiscovered.pop(sandbox.name, None)
            self._save_state()

    def create_sandbox(self, principal: Principal, name: str, labels: dict[str, str], priority: str,
                       spec: str) -> tuple[Sandbox, str]:
        """CreateSandbox with a network binding: the spec is checked first, and a binding that fails after
        the sandbox was made deletes it again, so a failed request leaves nothing behind."""
        binding = self.parse(principal, spec)
        sandbox, token = self._daemon.warden.create_sandbox(principal, name, labels, priority)
        try:
            self.bind_parsed(sandbox, spec, binding)
        except WardenError:
            self._daemon.warden.delete_sandbox(ADMIN, name, force=True)
            raise
        return sandbox, token

    def spec_of(self, sandbox: str) -> str:
        """The binding in force as spec text ("" when none), for Sandbox.network."""
        binding = self.network.accountant.binding(sandbox)
        return binding.spec() if binding is not None else ""

    def traffic(self, sandbox: str) -> NetCounters | None:
        """The sandbox's cumulative counters for GetUsage; None when it has none to give."""
        try:
            return self.network.accountant.sample(sandbox)
        except NetAccountingError:
            return None

    # -- Observer ----------------------------------------------------------------------------------------

    def sandbox_added(self, sandbox: Sandbox) -> None:
        with self._lock:
            saved = self._explicit.get(sandbox.name)
        if saved is None or self.network.accountant.binding(sandbox.name) is not None:
            return
        spec, identity = saved
        try:  # found again after a restart: take its binding (and limit) over
            binding = self.parse(ADMIN, spec)
            now = [binding.netns.device, binding.netns.inode] if binding.netns is not None else None
            if now != identity:  # a reused pid or a re-created name: not the namespace that was bound
                raise FailedPrecondition(f"{spec!r} now refers to a different namespace; rebind the sandbox")
            self._bind(sandbox, binding)
        except WardenError as error:
            with self._lock:
                self._explicit.pop(sandbox.name, None)
                self._save_state()
            self._daemon.bus.publish("network_unbound", f"sandbox {sandbox.name}: binding {spec!r} not restored: "
                                     f"{error}", sandbox=sandbox.name, attributes={"spec": spec})

    def sandbox_removed(self, sandbox: Sandbox) -> None:
        self._unbind(sandbox.name)

    def call_started(self, call: RunningCall) -> None:
        with self._lock:
            explicit = call.sandbox in self._explicit
        sandbox = self._daemon.warden.sandboxes.get(call.sandbox)
        if not explicit and sandbox is not None:
            with self._discovery_lock:
                self._discover(sandbox)
        self.network.accountant.begin(call.call_id, call.sandbox)

    def call_ending(self, call: RunningCall, summary: dict[str, Any]) -> None:
        result = self.network.accountant.end(call.call_id)
        if isinstance(result, NetDelta):
            binding = self.network.accountant.binding(call.sandbox)
            summary["net_rx_bytes"], summary["net_tx_bytes"] = result.rx_bytes, result.tx_bytes
            summary["net_source"] = (binding.describe() if binding is not None else "") + (
                "; other calls of the sandbox ran at the same time and are counted too"
                if result.concurrent_calls else "")
            return
        reason = result.reason
        if result.code == "unknown_call":
            reason = "the call began before this daemon started"
        elif result.code == "unbound":
            with self._lock:
                why = self._undiscovered.get(call.sandbox)
            reason = "no network binding" + (f" ({why})" if why else ": bind one with BindNetwork")
        summary["net_source"] = reason

    # -- internals ---------------------------------------------------------------------------------------

    def _limit_for(self, sandbox: Sandbox) -> tuple[EgressLimit | None, str]:
        policy = self._daemon.policy.current().network
        if policy is None:
            return None, "no [network] in the policy"
        return policy.limit_for(sandbox.name, sandbox.labels)

    def _bind(self, sandbox: Sandbox, binding: NetBinding) -> None:
        limit, source = self._limit_for(sandbox)
        try:
            self.network.bind(sandbox.name, binding, limit)
        except NetAccountingError as error:
            raise FailedPrecondition(f"network: {error.reason}; nothing was changed") from error
        except ShapingError as error:
            self._limit_failed(sandbox.name, error)  # bound and counted, but not limited: reported
        else:
            if limit is not None:
                self._limit_applied(sandbox.name, limit, source)
        self._daemon.bus.publish("network_bound", f"sandbox {sandbox.name}: network bound to {binding.describe()}",
                                 sandbox=sandbox.name, attributes={"spec": binding.spec()})

    def _unbind(self, sandbox: str) -> None:
        with self._lock:
            dropped = self._explicit.pop(sandbox, None) is not None
            self._undiscovered.pop(sandbox, None)
            if dropped:
                self._save_state()
        try:
            self.network.unbind(sandbox)
        except ShapingError as error:
            self._limit_failed(sandbox, error)

    def _discover(self, sandbox: Sandbox) -> None:
        """Bind the namespace the sandbox's agent processes live in, when it changed (cheap when not)."""
        try:
            pids = self._daemon.tree.pids(sandbox.path / AGENT_LEAF)
            binding = discover_binding(pids)
        except (OSError, WardenError, NetBindingError) as error:
            with self._lock:
                self._undiscovered[sandbox.name] = f"discovery: {error}"
            return
        if binding.same_network(self.network.accountant.binding(sandbox.name)):
            return
        try:
            self._bind(sandbox, binding)
        except WardenError as error:
            with self._lock:
                self._undiscovered[sandbox.name] = f"discovery: {error}"
            return
        with self._lock:
            self._undiscovered.pop(sandbox.name, None)

    def apply_policy(self) -> None:
        """Bring every bound sandbox's limit in line with the policy in force (after a reload)."""
        for name in self.network.accountant.bindings():
            sandbox = self._daemon.warden.sandboxes.get(name)
            if sandbox is None:
                continue
            limit, source = self._limit_for(sandbox)
            applied = self.network.limiter.applied(name)
            if (applied.limit if applied is not None else None) == limit:
                continue
            try:
                self.network.set_limit(name, limit)
            except (ShapingError, LookupError) as error:
                self._limit_failed(name, error)
                continue
            if limit is not None:
                self._limit_applied(name, limit, source)
            else:
                self._daemon.bus.publish("network_limit", f"sandbox {name}: egress limit lifted ({source})",
                                         sandbox=name, attributes={"rate_bits_per_s": "", "source": source})

    def _follow_policy(self) -> None:
        subscription = self._subscription
        assert subscription is not None
        while not subscription.closed:
            if subscription.get(timeout=1.0) is None:
                continue
            try:  # a "dropped" notice may hide a reload: apply in that case too
                self.apply_policy()
            except Exception:  # one bad pass must not end policy following for the daemon's lifetime
                log.exception("applying network limits after a policy reload failed")

    def _limit_applied(self, sandbox: str, limit: EgressLimit, source: str) -> None:
        self._daemon.bus.publish("network_limit", f"sandbox {sandbox}: egress limited to {limit.describe()} "
                                 f"({source})", sandbox=sandbox,
                                 attributes={"rate_bits_per_s": str(limit.rate_bits_per_s), "source": source})

    def _limit_failed(self, sandbox: str, error: Exception) -> None:
        log.error("%s", error)
        self._daemon.warden.record_action(None, "report", "egress_limit_failed", str(error), LIMIT_FAILED_HINT,
                                          dry_run=False, sandbox=sandbox)

    def _load_state(self) -> dict[str, tuple[str, list[int] | None]]:
        try:
            data = json.loads(self._state_path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as error:
            log.error("%s unreadable (%s): explicit network bindings are not restored", self._state_path, error)
            return {}
        if not isinstance(data, dict):
            return {}
        return {str(name): (entry["spec"], entry.get("netns")) for name, entry in data.items()
                if isinstance(entry, dict) and isinstance(entry.get("spec"), str)}

    def _save_state(self) -> None:
        """Write the explicit bindings atomically (lock held)."""
        temporary = self._state_path.with_suffix(".tmp")
        self._state_path.parent.mkdir(parents=True, exist_ok=True)
        entries = {name: {"spec": spec, "netns": identity} for name, (spec, identity) in self._explicit.items()}
        temporary.write_text(json.dumps(entries, indent=1, sort_keys=True))
        os.replace(temporary, self._state_path)


def build_network(daemon: Daemon) -> NetworkPart:
    """The network part; always on (rtnetlink sockets open lazily, on first binding)."""
    return NetworkPart(daemon, SandboxNetwork())
