"""What a served forward pass is made of, apart from the model: dense layers whose rows do not
depend on the batch, generate + uint8 as one module (the TorchScript graph's), and passes split
by rows into one-thread parts on a CPU (LATENTSERVE_SPLIT_PASSES). No HTTP, no registry."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait

import torch
from torch import nn

from models.images import to_uint8

# A dense layer fed fewer rows than this takes another kernel path on x86 CPUs (measured with
# torch 2.13: a linear layer's rows for batches of 1-3 differed in the last bits from the same rows
# in a batch of 4 or more, while the convolutions gave the same bits at every batch size).
MIN_DENSE_ROWS = 4


class _RowStableLinear(nn.Module):
    """A linear layer that always runs with at least MIN_DENSE_ROWS more rows than it is given
    (zero rows appended, their outputs dropped): a row's result no longer depends on whether it
    came alone. Rows of a linear layer are independent, so only the kernel choice changes."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.linear = linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.shape[0]
        padded = torch.cat([x, x.new_zeros((MIN_DENSE_ROWS, *x.shape[1:]))])
        return self.linear(padded)[:rows]


def stable_dense_rows(module: nn.Module) -> None:
    """Wrap every nn.Linear of ``module`` in _RowStableLinear (same weights, same outputs for 4+
    rows), so small batches can run unpadded: a lone request's pass need not be padded to 4 rows
    for the dense layers' sake (on this CPU: 6.4 -> 2.9 ms for the GAN)."""
    targets = [(parent, name, child) for parent in module.modules()
               for name, child in parent.named_children() if isinstance(child, nn.Linear)]
    for parent, name, child in targets:
        setattr(parent, name, _RowStableLinear(child))


class Pixels(nn.Module):
    """generate + the uint8 conversion as one module, so one TorchScript call makes a pass's pixels."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return to_uint8(self.model.generate(z, y))  # (B, H, W) uint8


def pass_parts(device: torch.device, threads: int, split: bool) -> int:
    """How many one-thread parts a pass may run as (LATENTSERVE_SPLIT_PASSES): on a CPU, the
    largest power of two <= the torch threads (parts are batch shapes, which are powers of two);
    1 = passes are not split (a GPU, one thread, or the setting off)."""
    if not split or device.type != "cpu" or threads < 2:
        return 1
    return 1 << (threads.bit_length() - 1)


def _one_thread(fn: Callable[..., torch.Tensor], *inputs: torch.Tensor) -> torch.Tensor:
    """A part of a split pass: its ops in this thread alone (torch's thread count is set per
    thread, each new thread starting from the process's; an unsplit pass sets it back)."""
    torch.set_num_threads(1)
    return fn(*inputs)


def run_in_parts(pool: ThreadPoolExecutor, threads: int, n: int, fn: Callable[..., torch.Tensor],
                 *inputs: torch.Tensor) -> torch.Tensor:
    """fn over ``inputs`` (rows first) as ``n`` parts run at once: the first in this thread, each
    other one in ``pool``, every part with one torch thread; then this thread back to ``threads``.

    Why: on a CPU, one pass with its ops split across the threads meets an OpenMP barrier at
    every op, and a thread the event loop has taken from a core stalls the others at each of
    them; parts of one thread each run independently (docs/benchmarks.md, "What bounds the service")."""
    chunks = list(zip(*(t.chunk(n) for t in inputs)))
    futures: list[Future[torch.Tensor]] = []
    try:
        futures += [pool.submit(_one_thread, fn, *chunk) for chunk in chunks[1:]]
        # the first part runs in this thread: one thread (and its allocator arena) fewer to wake
        first = _one_thread(fn, *chunks[0])
    finally:
        wait(futures)  # every part ends before the caller's lock is released, even when one failed
        # set_num_threads also sets the count a thread starts with: back to every thread for
        # this one (the next model's warm-up checks, a registry loaded here) and for new ones
        torch.set_num_threads(threads)
    return torch.cat([first, *(f.result() for f in futures)])
