"""Length-grouped batching whose order depends only on (seed, epoch).

Rows of similar length share a batch, so batches carry little padding. The order is a
pure function of seed and epoch, so a job resumed mid-epoch skips exactly the batches it
already trained on and ends with the same weights as a run never interrupted.
"""

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler

# Rows are sorted by length within windows of this many batches: large enough to group
# lengths tightly, small enough to keep batches varied across the epoch.
MEGABATCH_BATCHES = 50


class LengthGroupedSampler(Sampler[int]):
    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int,
                 window_batches: int = MEGABATCH_BATCHES):
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.window_batches = window_batches
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(len(self.lengths), generator=generator).tolist()
        window = self.batch_size * self.window_batches
        batches: list[list[int]] = []
        for start in range(0, len(order), window):
            chunk = sorted(order[start:start + window], key=lambda i: -self.lengths[i])
            batches += [chunk[i:i + self.batch_size] for i in range(0, len(chunk),
                                                                    self.batch_size)]
        # Shuffle whole batches so one epoch does not run long-to-short in waves.
        shuffled = torch.randperm(len(batches), generator=generator).tolist()
        for index in shuffled:
            yield from batches[index]
