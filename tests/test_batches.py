"""Batches of any structure on the device, owned loader workers, and probes on real batches."""

import multiprocessing

import torch
from torch import nn
from torch.utils.data import TensorDataset

from autobatch.memory import measure_step_peak
from autobatch.train import MicroBatches, default_num_workers, eval_batches, sample_batch, step_runner
from tests import userland

CPU = torch.device("cpu")


def test_dict_samples_collate_to_dicts_and_float64_becomes_float32():
    train, _, _ = userland.hf_dataset()
    with MicroBatches(train, 8, CPU, seed=0, num_workers=0) as batches:
        batch = batches.next()
    assert set(batch) == {"input_ids", "attention_mask", "labels"} and batch["input_ids"].shape == (8, 12)
    pairs = [((torch.randn(3, dtype=torch.float64), torch.randn(2)), 1) for _ in range(10)]
    with MicroBatches(pairs, 4, CPU, seed=0, num_workers=0) as batches:
        (left, right), y = batches.next()
    assert left.dtype == torch.float32 and left.shape == (4, 3) and right.shape == (4, 2) and y.shape == (4,)


def test_loader_workers_are_shut_down_when_the_batches_close():
    train, _, _ = userland.hf_dataset()
    assert multiprocessing.active_children() == []
    batches = MicroBatches(train, 8, CPU, seed=0, num_workers=2)
    for _ in range(3):
        batches.next()
    assert len(multiprocessing.active_children()) == 2
    batches.close()
    assert multiprocessing.active_children() == []
    list(eval_batches(train, 16, CPU, num_workers=2))  # a full pass ends its workers too
    it = eval_batches(train, 16, CPU, num_workers=2)
    next(it)
    it.close()  # an abandoned pass as well
    assert multiprocessing.active_children() == []


def test_default_workers_fit_the_machine():
    import os

    cpus = len(os.sched_getaffinity(0))
    assert default_num_workers() == max(0, min(4, cpus - 1))


def test_sample_batch_repeats_a_small_training_set_to_the_probe_size():
    x, y = userland.blobs(10)
    batch_x, batch_y = sample_batch(TensorDataset(x, y), 32)
    assert batch_x.shape == (32, 6)
    rows = {tuple(r.tolist()) for r in batch_x}
    assert rows == {tuple(r.tolist()) for r in x}  # every real sample, nothing made up


def test_the_probe_trains_on_real_batches_an_embedding_accepts():
    """Made-up float tensors would crash an Embedding; the user's token ids train."""
    train, _, _ = userland.tokens_dataset()
    seen = []

    class Spy(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed, self.head = nn.Embedding(userland.VOCAB, 8), nn.Linear(8, 3)

        def forward(self, tokens):
            seen.append(tokens.clone())
            return self.head(self.embed(tokens).mean(1))

    point = measure_step_peak(step_runner(Spy(), dataset=train, device=CPU), batch_size=8, device=CPU)
    assert point.fits and point.peak_bytes > 0
    assert seen and all(t.dtype == torch.int64 and t.shape == (8, userland.LENGTH) for t in seen)
    known = {tuple(r.tolist()) for r in train.tensors[0]}
    assert all(tuple(r.tolist()) in known for r in seen[0])


def test_the_probe_uses_the_step_hook():
    x, y = userland.blobs(40)
    before = userland.STEP_CALLS["step"]
    run = step_runner(nn.Linear(6, 3), dataset=TensorDataset(x, y), device=CPU,
                      step="tests.userland:contrastive_step")
    run(4)
    assert userland.STEP_CALLS["step"] == before + 2  # two complete steps
