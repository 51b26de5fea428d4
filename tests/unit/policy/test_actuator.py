from __future__ import annotations

from hostwarden.policy.actuator import apply
from hostwarden.policy.ladder import Action, Decision, Reason


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def set_memory_high(self, path: str, value: int) -> None:
        self.calls.append(("memory_high", path, value))

    def freeze(self, path: str) -> None:
        self.calls.append(("freeze", path))

    def thaw(self, path: str) -> None:
        self.calls.append(("thaw", path))

    def kill(self, path: str) -> None:
        self.calls.append(("kill", path))


def decision(action: Action, path: str, dry_run: bool = False, memory_high: int | None = None) -> Decision:
    return Decision(action, "c", "s", path, Reason.PRESSURE_SUBSIDED, "detail", "hint", dry_run, memory_high)


def test_apply_acts_in_order_and_skips_reports_and_dry_run():
    decisions = [
        decision(Action.REPORT, "/r"),
        decision(Action.THROTTLE, "/a", memory_high=100),
        decision(Action.FREEZE, "/b"),
        decision(Action.KILL, "/dry", dry_run=True),
        decision(Action.THAW, "/c"),
        decision(Action.RELEASE, "/a", memory_high=200),
        decision(Action.KILL, "/d"),
    ]
    recorder = Recorder()
    acted = apply(decisions, recorder)
    assert recorder.calls == [("memory_high", "/a", 100), ("freeze", "/b"), ("thaw", "/c"),
                              ("memory_high", "/a", 200), ("kill", "/d")]
    assert [d.cgroup_path for d in acted] == ["/a", "/b", "/c", "/a", "/d"]
