"""Resource limits for a cgroup as a plain value, and how they are written to cgroupfs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hostwarden.cgroups.cgroupfs import CgroupFs
from hostwarden.cgroups.errors import CgroupIOError, InvalidLimit

# Kernel bounds (kernel/sched/core.c, Documentation/admin-guide/cgroup-v2.rst).
CPU_WEIGHT_RANGE = (1, 10000)
CPU_PERIOD_RANGE_US = (1000, 1_000_000)
CPU_QUOTA_MIN_US = 1000


@dataclass(frozen=True)
class Limits:
    """Limits for one cgroup; None leaves the kernel's default. Bytes for memory, microseconds for CPU."""

    memory_high: int | None = None
    memory_max: int | None = None
    memory_low: int | None = None
    memory_swap_max: int | None = None
    memory_oom_group: bool | None = None
    cpu_weight: int | None = None
    cpu_max_quota_us: int | None = None
    cpu_max_period_us: int = 100000
    pids_max: int | None = None

    def __post_init__(self) -> None:
        for field_name in ("memory_high", "memory_max", "memory_low", "memory_swap_max", "pids_max"):
            value = getattr(self, field_name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise InvalidLimit(f"{field_name} must be a non-negative integer or None, got {value!r}")
        if self.memory_oom_group is not None and not isinstance(self.memory_oom_group, bool):
            raise InvalidLimit(f"memory_oom_group must be true, false or None, got {self.memory_oom_group!r}")
        _check_range("cpu_weight", self.cpu_weight, *CPU_WEIGHT_RANGE)
        _check_range("cpu_max_period_us", self.cpu_max_period_us, *CPU_PERIOD_RANGE_US)
        if self.cpu_max_quota_us is not None:
            _check_range("cpu_max_quota_us", self.cpu_max_quota_us, CPU_QUOTA_MIN_US, 2**53)
        high, hard = self.memory_high, self.memory_max
        if high is not None and hard is not None and high > hard:
            raise InvalidLimit(f"memory_high ({self.memory_high}) is above memory_max ({self.memory_max}): "
                               "memory.high would never throttle; lower it or raise memory_max")

    def files(self) -> list[tuple[str, str]]:
        """The (interface file, value) pairs to write, in an order the kernel accepts."""
        pairs: list[tuple[str, str]] = []
        for file, value in (
            ("memory.low", self.memory_low),
            ("memory.max", self.memory_max),
            ("memory.high", self.memory_high),
            ("memory.swap.max", self.memory_swap_max),
            ("cpu.weight", self.cpu_weight),
            ("pids.max", self.pids_max),
        ):
            if value is not None:
                pairs.append((file, str(value)))
        if self.memory_oom_group is not None:
            pairs.append(("memory.oom.group", "1" if self.memory_oom_group else "0"))
        if self.cpu_max_quota_us is not None:
            pairs.append(("cpu.max", f"{self.cpu_max_quota_us} {self.cpu_max_period_us}"))
        return pairs


def _check_range(field_name: str, value: int | None, low: int, high: int) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidLimit(f"{field_name} must be an integer from {low} to {high}, got {value!r}")


@dataclass(frozen=True)
class LimitOutcome:
    """What became of one requested limit: written and enforced, or not enforced and why."""

    file: str
    value: str
    enforced: bool
    reason: str


def apply_limits(fs: CgroupFs, cgroup: Path, limits: Limits) -> list[LimitOutcome]:
    """Write each requested limit; one outcome per limit. Raises CgroupIOError when a write fails."""
    if not limits.files():
        return []
    enabled = set(fs.read(cgroup / "cgroup.controllers").split())
    parent_offers: set[str] | None = None  # read once, only when some controller is missing
    outcomes: list[LimitOutcome] = []
    for file, value in limits.files():
        controller = file.split(".", 1)[0]
        if controller not in enabled:
            if parent_offers is None:
                parent_offers = _offered(fs, cgroup.parent)
            outcomes.append(LimitOutcome(file, value, False, _missing_controller_reason(cgroup, controller,
                                                                                         parent_offers)))
            continue
        if not (cgroup / file).exists():
            # memory.swap.max is absent without swap accounting; memory.oom.group before 4.19.
            reason = f"{file} does not exist in {cgroup}: the kernel lacks it (e.g. swap accounting off)"
            outcomes.append(LimitOutcome(file, value, False, reason))
            continue
        fs.write(cgroup / file, value)
        outcomes.append(LimitOutcome(file, value, True, "written"))
    return outcomes


def _offered(fs: CgroupFs, cgroup: Path) -> set[str]:
    try:
        return set(fs.read(cgroup / "cgroup.controllers").split())
    except CgroupIOError:
        return set()


def _missing_controller_reason(cgroup: Path, controller: str, parent_offers: set[str]) -> str:
    if controller in parent_offers:
        return (f"the {controller} controller is not enabled in {cgroup.parent}/cgroup.subtree_control: "
                f"enable it there (+{controller}) before limits can apply")
    return (f"the {controller} controller is not available to {cgroup.parent} (cgroup v2 offers there: "
            f"{' '.join(sorted(parent_offers)) or 'none'}); on a hybrid host it is held by cgroup v1: "
            "boot with systemd.unified_cgroup_hierarchy=1")
