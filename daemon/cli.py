"""The `hostwarden` command line (click). Data commands take --json."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import click
import grpc

from hostwarden.client import Client, read_token, to_dict
from hostwarden.endpoints import socket_path
from hostwarden.policy.cli import policy_group
from hostwarden.policy.units import parse_duration, parse_size
from hostwarden.proto import warden_pb2 as pb

PRIORITY_CHOICES = {"low": pb.PRIORITY_LOW, "normal": pb.PRIORITY_NORMAL, "high": pb.PRIORITY_HIGH}

socket_option = click.option("--socket", "socket_opt", default=None, metavar="PATH",
                             help="Daemon socket (default: $HOSTWARDEN_SOCKET, then /run/hostwarden/hostwarden.sock).")
token_option = click.option("--token-file", type=click.Path(path_type=Path, dir_okay=False), default=None,
                            help="File holding a sandbox token (default: $HOSTWARDEN_TOKEN; none = admin).")
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


def _print_table(rows: list[tuple[Any, ...]], header: tuple[str, ...]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        click.echo("  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def _client(socket_opt: str | None, token_file: Path | None = None) -> Client:
    return Client(socket_path(socket_opt), read_token(token_file))


def _rpc(client: Client, method: str, request: Any) -> Any:
    try:
        return client.call(method, request)
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.UNAVAILABLE:
            raise click.ClickException(f"no daemon answers on {client.socket}: start it with `hostwarden daemon` "
                                       "or pass --socket") from None
        raise click.ClickException(f"{exc.code().name}: {exc.details()}") from None


def _echo_json(data: object) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


def _parse_size_option(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return parse_size(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _parse_duration_option(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return parse_duration(float(value) if value.replace(".", "", 1).isdigit() else value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.group()
@click.version_option(package_name="hostwarden")
@click.option("-v", "--verbose", is_flag=True, help="Log at debug level.")
def main(verbose: bool) -> None:
    """hostwarden: per-tool-call cgroups, eBPF observation, policy, energy and attestation."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@main.command()
@click.option("--config", "config_path", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Config file (default /etc/hostwarden/hostwarden.toml if present, else built-in defaults).")
def daemon(config_path: Path | None) -> None:
    """Run the daemon in the foreground."""
    from hostwarden.app import Daemon
    from hostwarden.config import ConfigError, load_config

    try:
        daemon = Daemon(load_config(config_path))  # the parts validate their own config sections
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    daemon.serve()


@main.command()
@socket_option
@json_option
def status(socket_opt: str | None, as_json: bool) -> None:
    """What this host can do (each capability: available or why not) and, with a daemon, its view."""
    from hostwarden import capabilities  # probes many modules' availability: not for every command

    caps = capabilities.probe()
    report: dict[str, Any] = {
        "capabilities": {name: {"available": c.available, "in_use": c.in_use, "detail": c.detail}
                         for name, c in caps.items()},
        "daemon": None,
    }
    with _client(socket_opt) as client:
        try:
            st = client.call("GetStatus", pb.GetStatusRequest(), timeout=3)
        except grpc.RpcError as exc:
            report["daemon"] = {"running": False, "detail": f"{client.socket}: {exc.code().name}"}
        else:
            report["daemon"] = {"running": True, "version": st.version, "uptime_seconds": st.uptime_seconds,
                                "sandboxes": st.sandboxes, "running_calls": st.running_calls,
                                "cgroup_root": st.cgroup_root, "policy_source": st.policy_source,
                                "metrics_address": st.metrics_address, "call_socket": st.call_socket}
            for cap in st.capabilities:
                report["capabilities"][cap.name] = {"available": cap.available, "in_use": cap.in_use,
                                                    "detail": cap.detail}
    if as_json:
        _echo_json(report)
        return
    _print_table([(n, "yes" if c["available"] else "no", "yes" if c["in_use"] else "", c["detail"])
                  for n, c in report["capabilities"].items()], ("CAPABILITY", "AVAILABLE", "IN USE", "DETAIL"))
    d = report["daemon"]
    click.echo()
    if d["running"]:
        click.echo(f"daemon: up {d['uptime_seconds']:.0f}s, {d['sandboxes']} sandboxes, {d['running_calls']} "
                   f"running calls, root {d['cgroup_root']}, metrics {d['metrics_address'] or 'off'}")
        click.echo(f"policy: {d['policy_source']}")
        click.echo(f"tool-call socket: {d['call_socket'] or 'off'}")
    else:
        click.echo(f"daemon: not running ({d['detail']})")


@main.group()
def sandbox() -> None:
    """Create, adopt, list and delete sandboxes."""


def _labels(pairs: tuple[str, ...]) -> dict[str, str]:
    labels = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise click.BadParameter(f"{pair!r}: write labels as key=value", param_hint="--label")
        labels[key] = value
    return labels


def _print_sandbox_reply(reply: pb.CreateSandboxResponse, as_json: bool) -> None:
    if as_json:
        _echo_json(to_dict(reply))
    else:
        click.echo(f"sandbox {reply.sandbox.name} at {reply.sandbox.cgroup_path}")
        click.echo("token (shown once; use --json to capture it): " + reply.token[:6] + "...")


@sandbox.command("create")
@click.argument("name")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE")
@click.option("--priority", type=click.Choice(list(PRIORITY_CHOICES)), default="normal")
@click.option("--network", default="", metavar="SPEC",
              help="Network binding: netns:NAME, netns-path:PATH, pid:PID, interface:IF[@NETNS] or host.")
@socket_option
@json_option
def sandbox_create(name: str, labels: tuple[str, ...], priority: str, network: str, socket_opt: str | None,
                   as_json: bool) -> None:
    """Create sandbox NAME (prints its token with --json)."""
    with _client(socket_opt) as client:
        reply = _rpc(client, "CreateSandbox", pb.CreateSandboxRequest(
            name=name, labels=_labels(labels), priority=PRIORITY_CHOICES[priority], network=network))
    _print_sandbox_reply(reply, as_json)


@sandbox.command("bind")
@click.argument("name")
@click.argument("spec")
@socket_option
@json_option
def sandbox_bind(name: str, spec: str, socket_opt: str | None, as_json: bool) -> None:
    """Bind sandbox NAME's network accounting and egress limit to SPEC ("" unbinds; see docs/network.md)."""
    with _client(socket_opt) as client:
        reply = _rpc(client, "BindNetwork", pb.BindNetworkRequest(sandbox=name, network=spec))
    if as_json:
        _echo_json(to_dict(reply))
    else:
        click.echo(f"sandbox {reply.name}: network {reply.network or 'unbound'}")


@sandbox.command("adopt")
@click.argument("path")
@click.option("--name", required=True, help="Name for the adopted sandbox.")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE")
@click.option("--priority", type=click.Choice(list(PRIORITY_CHOICES)), default="normal")
@socket_option
@json_option
def sandbox_adopt(path: str, name: str, labels: tuple[str, ...], priority: str, socket_opt: str | None,
                  as_json: bool) -> None:
    """Adopt the existing cgroup PATH (inside the daemon's root) as a sandbox."""
    with _client(socket_opt) as client:
        reply = _rpc(client, "AdoptSandbox", pb.AdoptSandboxRequest(
            name=name, cgroup_path=path, labels=_labels(labels), priority=PRIORITY_CHOICES[priority]))
    _print_sandbox_reply(reply, as_json)


@sandbox.command("list")
@socket_option
@token_option
@json_option
def sandbox_list(socket_opt: str | None, token_file: Path | None, as_json: bool) -> None:
    """List sandboxes."""
    with _client(socket_opt, token_file) as client:
        reply = _rpc(client, "ListSandboxes", pb.ListSandboxesRequest())
    if as_json:
        _echo_json(to_dict(reply)["sandboxes"])
        return
    _print_table([(s.name, pb.Priority.Name(s.priority).removeprefix("PRIORITY_").lower(), s.running_calls,
                   ",".join(f"{k}={v}" for k, v in sorted(s.labels.items())), s.cgroup_path)
                  for s in reply.sandboxes], ("NAME", "PRIORITY", "CALLS", "LABELS", "CGROUP"))


@sandbox.command("delete")
@click.argument("name")
@click.option("--force", is_flag=True, help="Kill running calls and the agent's processes.")
@socket_option
def sandbox_delete(name: str, force: bool, socket_opt: str | None) -> None:
    """Delete sandbox NAME."""
    with _client(socket_opt) as client:
        _rpc(client, "DeleteSandbox", pb.DeleteSandboxRequest(name=name, force=force))
    click.echo(f"deleted {name}")


@main.command(name="exec", context_settings={"ignore_unknown_options": True})
@socket_option
@click.option("--sandbox", "sandbox_name", required=True)
@token_option
@click.option("--tool", default=None, help="Tool name (default: the command's basename).")
@click.option("--memory-max", callback=_parse_size_option, default=None, metavar="SIZE")
@click.option("--memory-high", callback=_parse_size_option, default=None, metavar="SIZE")
@click.option("--cpu", type=float, default=None, metavar="CORES")
@click.option("--timeout", callback=_parse_duration_option, default=None, metavar="SECS")
@click.option("--priority", type=click.Choice(list(PRIORITY_CHOICES)), default=None)
@click.option("--auto", is_flag=True, help="Let the daemon learn the memory limit from this tool's history.")
@click.option("--summary-json", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Write the call's summary here.")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_(socket_opt: str | None, sandbox_name: str, token_file: Path | None, tool: str | None,
          memory_max: int | None, memory_high: int | None, cpu: float | None, timeout: float | None,
          priority: str | None, auto: bool, summary_json: Path | None, command: tuple[str, ...]) -> None:
    """Run COMMAND as one tool call in SANDBOX; exits with COMMAND's status (128+signal when killed)."""
    from hostwarden.exec_call import ExecError, WaitingChild, run_tool_call

    intent = pb.Intent(memory_max_bytes=memory_max, memory_high_bytes=memory_high, cpu_cores=cpu,
                       timeout_seconds=timeout, priority=PRIORITY_CHOICES[priority] if priority else 0, auto=auto)
    argv = list(command)
    child = WaitingChild.fork(argv)  # before the channel exists (see WaitingChild.fork)
    try:
        with Client(socket_path(socket_opt), read_token(token_file)) as client:
            result = run_tool_call(client, child, sandbox_name, tool or Path(argv[0]).name, intent, argv)
    except ExecError as exc:
        click.echo(f"hostwarden exec: {exc}", err=True)
        sys.exit(125)
    if summary_json is not None and result.summary is not None:
        summary_json.write_text(json.dumps(result.summary, indent=2, sort_keys=True) + "\n")
    sys.exit(result.exit_code)


@main.command()
@socket_option
@token_option
@click.option("--sandbox", "sandbox_name", default="")
@click.option("--since", callback=_parse_duration_option, default=None, metavar="DURATION",
              help="Only calls started within this long ago (e.g. 10m, 2h).")
@click.option("--limit", type=click.IntRange(1, 10000), default=100)
@json_option
def calls(socket_opt: str | None, token_file: Path | None, sandbox_name: str, since: float | None, limit: int,
          as_json: bool) -> None:
    """Tool calls from the ledger, newest first."""
    with _client(socket_opt, token_file) as client:
        reply = _rpc(client, "ListToolCalls", pb.ListToolCallsRequest(sandbox=sandbox_name,
                                                                       since_seconds=since or 0, limit=limit))
    if as_json:
        _echo_json(to_dict(reply)["calls"])
        return

    def mib(c: pb.ToolCall) -> str:
        return f"{c.peak_memory_bytes / 2**20:.1f}" if c.HasField("peak_memory_bytes") else "-"

    _print_table([(c.call_id, c.sandbox, c.tool[:24], c.state, c.end_reason or "-",
                   c.exit_code if c.HasField("exit_code") else "-", f"{c.duration_seconds:.3f}", mib(c),
                   f"{c.cpu_seconds:.3f}", f"{c.energy_joules:.2f}" if c.HasField("energy_joules") else "-")
                  for c in reply.calls],
                 ("CALL", "SANDBOX", "TOOL", "STATE", "END", "EXIT", "SECONDS", "PEAK_MIB", "CPU_S", "JOULES"))


class _NetRates:
    """Network rates from two successive GetUsage readings (the daemon exports cumulative counts only)."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[float, int, int]] = {}
        self._rates: dict[str, tuple[float, float]] = {}

    def update(self, usages: list[pb.Usage]) -> None:
        now, last, self._last, self._rates = time.monotonic(), self._last, {}, {}
        for u in usages:
            if not u.HasField("net_rx_bytes"):
                continue  # no binding, or it shares the host network
            self._last[u.sandbox] = (now, u.net_rx_bytes, u.net_tx_bytes)
            if u.sandbox in last and now > last[u.sandbox][0]:
                then, rx, tx = last[u.sandbox]
                self._rates[u.sandbox] = ((u.net_rx_bytes - rx) * 8 / (now - then) / 1e3,
                                          (u.net_tx_bytes - tx) * 8 / (now - then) / 1e3)

    def columns(self, sandbox: str) -> tuple[str, str]:
        if sandbox in self._rates:
            return f"{self._rates[sandbox][0]:.1f}", f"{self._rates[sandbox][1]:.1f}"
        return ("..." if sandbox in self._last else "-"), ("..." if sandbox in self._last else "-")


@main.command()
@socket_option
@click.option("--interval", type=float, default=1.0, help="Refresh interval in seconds.")
@click.option("--once", is_flag=True, help="Print one table and exit.")
@json_option
def top(socket_opt: str | None, interval: float, once: bool, as_json: bool) -> None:
    """Live table of sandboxes and their running calls."""
    net_rate = _NetRates()
    with _client(socket_opt) as client:
        while True:
            sandboxes = _rpc(client, "ListSandboxes", pb.ListSandboxesRequest()).sandboxes
            usages = [_rpc(client, "GetUsage", pb.GetUsageRequest(sandbox=s.name)) for s in sandboxes]
            net_rate.update(usages)
            if as_json:
                _echo_json([to_dict(u) for u in usages])
            else:
                if not once:
                    click.clear()
                click.echo(time.strftime("hostwarden top  %H:%M:%S"))
                rows: list[tuple[Any, ...]] = []
                for u in usages:
                    rows.append((u.sandbox, "", f"{u.memory_current_bytes / 2**20:.1f}", f"{u.cpu_seconds:.2f}",
                                 f"{u.memory_pressure_some_avg10:.2f}", *net_rate.columns(u.sandbox), ""))
                    rows.extend(("", f"{c.tool[:20]} {c.call_id[:8]}", f"{c.memory_current_bytes / 2**20:.1f}",
                                 f"{c.cpu_seconds:.2f}", "", "", "", f"{c.elapsed_seconds:.1f}s"
                                 + (" frozen" if c.frozen else "")) for c in u.calls)
                _print_table(rows, ("SANDBOX", "CALL", "MEM_MIB", "CPU_S", "PSI_MEM10", "RX_KBIT/S", "TX_KBIT/S",
                                    "ELAPSED"))
            if once or as_json:
                return
            time.sleep(interval)


def _daemon_policy() -> dict[str, Any]:
    """GetPolicy: the running daemon's effective policy (for `policy show` without --file)."""
    with _client(None) as client:
        document = _rpc(client, "GetPolicy", pb.GetPolicyRequest())
    effective: dict[str, Any] = json.loads(document.effective_json)
    return effective


policy = policy_group(_daemon_policy)
main.add_command(policy)


@policy.command("set")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@socket_option
def policy_set(file: Path, socket_opt: str | None) -> None:
    """Replace the running daemon's policy with FILE (SetPolicy); on errors print each and change nothing."""
    text = file.read_text()
    with _client(socket_opt) as client:
        check = _rpc(client, "ValidatePolicy", pb.ValidatePolicyRequest(toml=text))
        if not check.valid:
            for error in check.errors:
                click.echo(f"{file}:{error.line}: {error.key}: {error.message}", err=True)
            click.echo(f"{file}: rejected; the running policy stays", err=True)
            sys.exit(1)
        document = _rpc(client, "SetPolicy", pb.SetPolicyRequest(toml=text))
    click.echo(f"{file}: in force (source: {document.source})")


def _integrity_scope(state: pb.IntegrityState) -> dict[str, Any]:
    """A scope as JSON: each reason string the daemon sends is a JSON object (code, message, path...)."""
    return {"scope": state.scope, "state": state.state, "attribution": state.attribution,
            "evaluated_at": state.evaluated_at.ToDatetime().isoformat() + "Z",
            "reasons": [json.loads(reason) for reason in state.reasons]}


@main.command()
@socket_option
@token_option
@click.option("--sandbox", "sandbox_name", default="", help="Only this sandbox (default: every one you may see).")
@json_option
def attest(socket_opt: str | None, token_file: Path | None, sandbox_name: str, as_json: bool) -> None:
    """Integrity of the host and each sandbox: TRUSTED, UNTRUSTED (why) or UNKNOWN (why)."""
    with _client(socket_opt, token_file) as client:
        report = _rpc(client, "GetIntegrity", pb.GetIntegrityRequest(sandbox=sandbox_name))
    data = {"host": _integrity_scope(report.host),
            "sandboxes": {s.scope: _integrity_scope(s) for s in report.sandboxes}}
    if as_json:
        _echo_json(data)
    else:
        for scope in [data["host"], *data["sandboxes"].values()]:
            click.echo(f"{scope['scope']}: {scope['state']}"
                       + (f" (attribution {scope['attribution']})" if scope["scope"] != "host" else ""))
            for reason in scope["reasons"]:
                click.echo(f"  {reason['code']}: {reason['message']}")
    if any(scope["state"] == "UNTRUSTED" for scope in [data["host"], *data["sandboxes"].values()]):
        sys.exit(3)
