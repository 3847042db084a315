"""The notebook progress sink: a bar only after the delay, updated in place, a final state."""

from __future__ import annotations

import pytest

from netlens.render.notebook_progress import NotebookProgress


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Handle:
    def __init__(self, shown: list[dict[str, str]], bundle: dict[str, str]) -> None:
        self.shown = shown
        shown.append(bundle)

    def update(self, bundle: dict[str, str], raw: bool = False) -> None:
        assert raw
        self.shown.append(bundle)


def sink(clock: FakeClock, shown: list, **kw) -> NotebookProgress:  # noqa: ANN003
    def display(bundle: dict[str, str], raw: bool, display_id: bool) -> Handle:
        assert raw and display_id
        return Handle(shown, bundle)

    return NotebookProgress(clock=clock, display=display, **kw)


def test_short_tasks_show_nothing() -> None:
    clock, shown = FakeClock(), []
    with sink(clock, shown).task("cam", 5) as advance:
        for _ in range(5):
            clock.now += 0.3
            advance(1)
    assert shown == []


def test_long_tasks_show_a_bar_then_update_it_in_place() -> None:
    clock, shown = FakeClock(), []
    with sink(clock, shown, interval=1.0).task("evaluate", 512) as advance:
        for _ in range(8):
            clock.now += 0.5
            advance(64)
    first = shown[0]
    assert "<progress" in first["text/html"] and 'value="256" max="512"' in first["text/html"]
    assert first["text/plain"] == "evaluate: 256/512 images · 2 s · ~2 s left"
    assert len(shown) == 1 + 2 + 1  # shown at 2 s, redrawn at 3 s and 4 s, the final state
    assert shown[-1]["text/plain"] == "evaluate: 512/512 images · 4 s · done"
    assert "<progress" not in shown[-1]["text/html"]


def test_a_long_task_with_one_late_step_still_says_it_is_done() -> None:
    clock, shown = FakeClock(), []
    with sink(clock, shown).task("evaluate", 16) as advance:
        clock.now += 1.5
        advance(8)
        clock.now += 4
        advance(8)  # the first step after the delay shows the bar ...
    assert [b["text/plain"] for b in shown][-1] == "evaluate: 16/16 images · 6 s · done"
    shown.clear()
    with sink(clock, shown).task("evaluate", 16):
        clock.now += 5  # ... and a task that never stepped still gets its final line
    assert [b["text/plain"] for b in shown] == ["evaluate: 0/16 images · 5 s · done"]


def test_unknown_total_and_failure_are_shown() -> None:
    clock, shown = FakeClock(), []
    with pytest.raises(RuntimeError), sink(clock, shown).task("stats <x>", None, "batches") as adv:
        clock.now += 3
        adv(2)
        raise RuntimeError("boom")
    assert "<progress style" in shown[0]["text/html"]  # indeterminate: no value
    assert "&lt;x&gt;" in shown[0]["text/html"]
    assert shown[-1]["text/plain"] == "stats <x>: 2 batches · 3 s · stopped"


def test_note_prints_one_line(capsys) -> None:  # noqa: ANN001
    NotebookProgress().note("evaluate will forward-pass 8,448 images")
    assert capsys.readouterr().out == "evaluate will forward-pass 8,448 images\n"
