"""Overlap producing the next output tensor with writing the current one, within a memory budget."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from functools import partial

from ckpttui.jobs.output import Planned
from ckpttui.jobs.st_writer import Values


class Ahead:
    """Produces the next costly tensor in a thread while the writer writes the current one.

    The writer asks for tensors in plan order; each request also starts the next tensor that needs
    work (LoRA products, casts, chunks read from many files), so that work overlaps the write,
    fsync and hashing. At most one tensor is produced ahead, and only while the two fit in the
    memory the largest tensor needs anyway, so peak memory stays that of the largest tensor.
    """

    def __init__(
        self, loads: list[tuple[str, Callable[[], Values], bool, int]], slack: int = 0
    ) -> None:
        """`loads`: (name, load, needs arithmetic, bytes of memory it holds while computed);
        `slack`: bytes allowed beyond the largest one's, so that tensors up to that size
        overlap even when the largest ones do not."""
        from concurrent.futures import ThreadPoolExecutor

        self.names = [name for name, _, _, _ in loads]
        self.loads = {name: load for name, load, _, _ in loads}
        self.index = {name: i for i, name in enumerate(self.names)}
        self.computed = [name for name, _, heavy, _ in loads if heavy]
        self.cost = {name: cost for name, _, _, cost in loads}
        self.budget = max(self.cost.values(), default=0) + slack
        self.pending: dict[str, Future[Values]] = {}
        self.pool = ThreadPoolExecutor(1)

    def get(self, name: str) -> Values:
        """The tensor `name`, computed ahead if it was started."""
        future = self.pending.pop(name, None)
        i = self.index[name]
        following = next((n for n in self.computed if self.index[n] > i), None)
        if (
            following is not None
            and self.cost[name] + self.cost[following] <= self.budget
            and not self.pending
        ):
            self.pending[following] = self.pool.submit(self.loads[following])
        return future.result() if future is not None else self.loads[name]()

    def close(self) -> None:
        """Drop what was computed ahead and stop the thread."""
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.pending.clear()


def ahead_plan(
    plan: list[Planned], costs: dict[str, int], slack: int = 0
) -> tuple[list[Planned], Ahead]:
    """`plan` with each load going through an `Ahead`; `costs` names the costly tensors.

    ``costs[name]`` is the memory a costly tensor holds while produced; others cost their bytes.
    """
    runner = Ahead(
        [
            (p.name, p.load, p.name in costs, costs.get(p.name, p.nbytes))
            for p in plan
            if p.load is not None
        ],
        slack,
    )
    wrapped = [
        p if p.load is None else Planned(p.name, p.dtype, p.shape, partial(runner.get, p.name))
        for p in plan
    ]
    return wrapped, runner
