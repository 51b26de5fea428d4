"""The `hostwarden` command line (click)."""

from __future__ import annotations

import json

import click

from hostwarden import capabilities


def _print_table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        click.echo("  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


@click.group()
@click.version_option(package_name="hostwarden")
def main() -> None:
    """hostwarden: per-tool-call cgroups, eBPF observation, policy, energy and attestation."""


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status(as_json: bool) -> None:
    """What this host can do (each capability: available or why not)."""
    caps = capabilities.probe()
    report: dict[str, object] = {
        "capabilities": {name: {"available": c.available, "in_use": c.in_use, "detail": c.detail}
                         for name, c in caps.items()},
    }
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    _print_table([(c.name, "yes" if c.available else "no", c.detail) for c in caps.values()],
                 ("CAPABILITY", "AVAILABLE", "DETAIL"))
