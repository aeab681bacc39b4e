"""Progress a user can read while a command samples: one bar over every network call of the command, with
its rate and the time left (``tqdm``), fed by the reverse engine's step observer, and a rate and time left
for loops over larger items (guides of a blend)."""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Iterator

from tqdm.auto import tqdm

from xraydiff.diffusion.engine import observing_steps


def network_calls(num_samples: int, batch_size: int, steps: int | None) -> int:
    """Network calls of sampling ``num_samples`` in batches of ``batch_size`` with ``steps`` calls each."""
    return math.ceil(num_samples / batch_size) * (steps or 0)


@contextlib.contextmanager
def step_progress(total: int, what: str) -> Iterator[None]:
    """A bar over ``total`` network calls, counted by every reverse process run inside the block (none for 0)."""
    with (
        tqdm(total=total, desc=what, unit="call", disable=total < 1, file=sys.stderr) as bar,
        observing_steps(bar.update),
    ):
        yield


class Countdown:
    """ "2.1 s each, 40 s left" after each of ``total`` items."""

    def __init__(self, total: int):
        self.total, self.started = total, time.perf_counter()

    def after(self, done: int) -> str:
        each = (time.perf_counter() - self.started) / max(done, 1)
        return f"{each:.1f} s each, {each * (self.total - done):.0f} s left"
