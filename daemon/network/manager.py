"""One object the daemon holds for sandbox networking: bindings, accounting and egress limits together."""

from __future__ import annotations

from hostwarden.network.accounting import NetworkAccountant
from hostwarden.network.binding import NetBinding, parse_binding
from hostwarden.network.limits import EgressLimit, EgressLimiter
from hostwarden.network.netlink import Rtnl, TcShaper


class SandboxNetwork:
    """Binds sandboxes, counts their traffic and applies their egress limits, over one rtnetlink edge.

    Thread-safe (each part has its own lock). Errors: NetBindingError (bad binding), NetAccountingError
    (binding unreadable at bind time), ShapingError (a limit that could not be applied or removed).
    """

    def __init__(self, rtnl: Rtnl | None = None) -> None:
        self.rtnl = rtnl if rtnl is not None else Rtnl()
        self.accountant = NetworkAccountant(read_link=self.rtnl.link, read_links=self.rtnl.links)
        self.limiter = EgressLimiter(TcShaper(self.rtnl))

    def parse(self, spec: str) -> NetBinding:
        """A binding from text (see `binding.parse_binding`)."""
        return parse_binding(spec, self.rtnl.resolve_link)

    def bind(self, sandbox: str, binding: NetBinding, limit: EgressLimit | None = None) -> None:
        """Bind (or rebind) a sandbox and put its limit in place; a failed limit leaves it bound, unlimited,
        and raises ShapingError so the caller reports it."""
        previous = self.accountant.binding(sandbox)
        self.accountant.bind(sandbox, binding)
        if previous is not None and previous != binding:
            self.limiter.remove(sandbox)
            self._forget_if_unused(previous)
        if limit is not None:
            self.limiter.apply(sandbox, binding, limit)

    def set_limit(self, sandbox: str, limit: EgressLimit | None) -> None:
        """Apply, change (policy reload) or lift (None) a bound sandbox's egress limit."""
        binding = self.accountant.binding(sandbox)
        if limit is None:
            self.limiter.remove(sandbox)
            return
        if binding is None:
            raise LookupError(f"sandbox {sandbox!r} has no network binding to limit; bind it first")
        self.limiter.apply(sandbox, binding, limit)

    def unbind(self, sandbox: str) -> None:
        """At sandbox deletion: lift its limit, stop counting, close its namespace's socket if unused."""
        binding = self.accountant.binding(sandbox)
        try:
            self.limiter.remove(sandbox)
        finally:  # a limit that would not come off is reported, but the sandbox is still gone
            self.accountant.unbind(sandbox)
            if binding is not None:
                self._forget_if_unused(binding)

    def _forget_if_unused(self, binding: NetBinding) -> None:
        if binding.netns is None:
            return
        if all(other.netns != binding.netns for other in self.accountant.bindings().values()):
            self.rtnl.forget(binding.netns)

    def close(self) -> None:
        self.rtnl.close()
