"""Deterministic batch order without a DataLoader.

Micro-batches form one flat stream across epochs: micro-batch k belongs to epoch
k // per_epoch and takes the (k % per_epoch)-th slice of that epoch's seeded permutation.
Resuming at step s is then just starting the stream at s * grad_accum; no hidden RNG is
consumed (a DataLoader iterator draws from the global RNG, which would shift dropout masks
after a resume).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from tuneloop.config import Config
from tuneloop.models.generate import pad_batch
from tuneloop.models.tokens import IGNORE, Encoded
from tuneloop.train.packing import collate_packed


@dataclass
class BatchPlan:
    n: int  # training examples
    batch_size: int  # per process
    world: int
    rank: int
    seed: int
    lengths: list[int] | None = None  # given: group similar lengths into batches (less padding)
    mega: int = 32  # batches per length-sorted group: enough to sort, still well shuffled

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world

    @property
    def per_epoch(self) -> int:
        return max(1, math.ceil(self.n / self.global_batch))

    def _permutation(self, epoch: int) -> list[int]:
        cache = self.__dict__.setdefault("_cache", {})
        if epoch not in cache:
            cache.clear()
            cache[epoch] = self._order(epoch)
        return cache[epoch]

    def _order(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        perm = torch.randperm(self.n, generator=g).tolist()
        if not self.lengths:
            return perm
        # Like LengthGroupedSampler: sort inside groups of `mega` batches, then shuffle the
        # order of the full batches (the last, partial one stays last).
        gb, size = self.global_batch, self.global_batch * self.mega
        ordered = [i for s in range(0, self.n, size)
                   for i in sorted(perm[s:s + size], key=lambda i: -self.lengths[i])]
        full = self.n // gb
        order = torch.randperm(full, generator=g).tolist()
        return [i for b in order for i in ordered[b * gb:(b + 1) * gb]] + ordered[full * gb:]

    def indices(self, k: int) -> list[int]:
        """This process's example indices for micro-batch k of the stream."""
        epoch, j = divmod(k, self.per_epoch)
        perm = self._permutation(epoch)
        chunk = perm[j * self.global_batch:(j + 1) * self.global_batch]
        if self.world > 1 and len(chunk) < self.global_batch:
            # Every rank needs a batch; wrap around like DistributedSampler does.
            chunk = (chunk + perm * math.ceil(self.global_batch / self.n))[: self.global_batch]
        return chunk[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]

    def epoch_of(self, k: int) -> float:
        return k / self.per_epoch


def collate(items: list[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a micro-batch; padding is masked out of attention and loss."""
    ids, attn = pad_batch([e.input_ids for e in items], pad_id)
    labels, _ = pad_batch([e.labels for e in items], IGNORE)
    return {"input_ids": ids, "labels": labels, "attention_mask": attn}


def eval_batches(items: list[Encoded], batch_size: int, pad_id: int):
    """Length-sorted batches for evaluation (less padding, same result)."""
    order = sorted(range(len(items)), key=lambda i: len(items[i].input_ids))
    for s in range(0, len(order), batch_size):
        yield collate([items[i] for i in order[s:s + batch_size]], pad_id)


def plan_for(cfg: Config, items: list[Encoded], processes: int = 1, rank: int = 0) -> BatchPlan:
    """The batch plan of a run: the training recipe, `train --dry-run` and `select` all use this one."""
    lengths = [len(e.input_ids) for e in items] \
        if cfg.train.group_by_length and not cfg.train.packing else None
    return BatchPlan(len(items), cfg.train.batch_size, processes, rank, cfg.seed, lengths=lengths)


def total_steps(cfg: Config, plan: BatchPlan) -> int:
    """Optimizer steps of the run: train.max_steps, else the epochs' worth of micro-batches."""
    if cfg.train.max_steps:
        return cfg.train.max_steps
    return max(1, math.ceil(cfg.train.epochs * plan.per_epoch / cfg.train.grad_accum))


def micro_batch(items: list[Encoded], pad_id: int, cfg: Config) -> dict[str, torch.Tensor]:
    """One micro-batch: packed rows (train.packing) or right-padded rows."""
    if cfg.train.packing:
        return collate_packed(items)
    return collate(items, pad_id)
