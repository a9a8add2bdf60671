"""Threads follow the cores other processes leave free (tinyvlm.cpu_share), driven here by
a fake clock and fake CPU counters: what the machine used, what this process used."""

from __future__ import annotations

import pytest

from tinyvlm.cpu_share import CpuShare


@pytest.fixture(autouse=True)
def sharing_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """The suite turns CPU sharing off (conftest); these tests are about it."""
    monkeypatch.setenv("TINYVLM_CPU_SHARE", "1")


class Machine:
    """Seconds of wall time, machine CPU and own CPU, advanced by hand."""

    def __init__(self) -> None:
        self.t = self.busy = self.mine = 0.0
        self.calls: list[int] = []

    def run(self, seconds: float, mine: float, others: float) -> None:
        """`seconds` pass with this process on `mine` cores and the rest on `others`."""
        self.t += seconds
        self.mine += mine * seconds
        self.busy += (mine + others) * seconds

    def share(self, threads: int = 2) -> CpuShare:
        return CpuShare(max_threads=threads, cores=threads, clock=lambda: self.t,
                        machine=lambda: self.busy, own=lambda: self.mine,
                        set_threads=self.calls.append)


def test_a_busy_neighbour_takes_a_thread_and_a_quiet_one_gives_it_back() -> None:
    m = Machine()
    share = m.share()
    m.run(1.5, mine=2.0, others=0.0)
    assert share.tick() == 2 and m.calls == []  # alone: every thread
    m.run(0.5, mine=1.2, others=0.8)
    assert share.tick() == 2  # not a full interval since the last reading: no reading
    m.run(0.6, mine=1.2, others=0.8)
    assert share.tick() == 1 and m.calls == [1]  # 0.8 cores taken: one thread left
    assert share.others == pytest.approx(0.8)
    m.run(1.5, mine=1.0, others=1.0)
    assert share.tick() == 1 and m.calls == [1]  # still busy: no change
    m.run(1.5, mine=1.0, others=0.05)
    assert share.tick() == 1  # one quiet reading is not enough
    m.run(1.5, mine=1.0, others=0.05)
    assert share.tick() == 2 and m.calls == [1, 2]
    m.run(1.5, mine=2.0, others=0.2)  # between the two bounds: stays
    assert share.tick() == 2 and m.calls == [1, 2]


def test_many_cores_give_up_what_the_others_use_and_restore_at_the_end() -> None:
    m = Machine()
    share = m.share(threads=16)
    m.run(2.0, mine=12.0, others=4.0)
    assert share.tick() == 12  # 16 - ceil(4.0 - 0.3)
    m.run(2.0, mine=1.0, others=40.0)
    assert share.tick() == 1  # never below one
    share.restore()
    assert m.calls == [12, 1, 16]


def test_it_stays_out_of_the_way_when_it_cannot_help(monkeypatch: pytest.MonkeyPatch) -> None:
    m = Machine()
    one = m.share(threads=1)
    m.run(2.0, mine=1.0, others=1.0)
    assert not one.enabled and one.tick() == 1
    monkeypatch.setenv("TINYVLM_CPU_SHARE", "0")
    off = m.share()
    m.run(2.0, mine=1.0, others=1.0)
    assert not off.enabled and off.tick() == 2
    blind = CpuShare(max_threads=2, machine=lambda: None)  # no /proc/stat
    assert not blind.enabled
    assert m.calls == []


def test_a_pinned_recipe_keeps_its_threads(shapes_dir, tmp_path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A recipe's `threads` pins them: neither the loop nor an engine changes them after."""
    import torch

    from tinyvlm import cpu_share
    from tinyvlm.train.pipeline import run_recipe

    from .conftest import tiny_recipe

    monkeypatch.setattr(cpu_share, "_pinned", False)
    before = torch.get_num_threads()
    recipe = tiny_recipe(shapes_dir, steps=1)
    recipe.threads = 1
    try:
        run_recipe(recipe, tmp_path / "run", progress=False)
        assert cpu_share.pinned() and torch.get_num_threads() == 1
        assert not CpuShare(max_threads=2, machine=lambda: 0.0).enabled
    finally:
        torch.set_num_threads(before)
