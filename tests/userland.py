"""What users bring, importable as ``tests.userland:NAME`` by the CLI in subprocesses: models with
unusual outputs, datasets with unusual items, step and evaluation functions, broken code."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset


def blobs(n: int = 240, shape=(6,), num_classes: int = 3, seed: int = 0):
    """Learnable float32 data: a random prototype per class plus noise; int64 labels."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(num_classes, *shape, generator=g)
    y = torch.randint(0, num_classes, (n,), generator=g)
    return protos[y] + 0.5 * torch.randn(n, *shape, generator=g), y


def split(x, y, frac=0.75):
    k = int(len(x) * frac)
    return TensorDataset(x[:k], y[:k]), TensorDataset(x[k:], y[k:])


# --- token sequences: the class is which marker token a sequence holds --------------------

VOCAB, LENGTH = 30, 12


def token_sequences(n: int = 300, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(3, VOCAB, (n, LENGTH), generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    positions = torch.randint(0, LENGTH, (n,), generator=g)
    tokens[torch.arange(n), positions] = y  # tokens 0, 1, 2 mark the class
    return tokens, y


def tokens_dataset():
    x, y = token_sequences()
    tr, va = split(x, y)
    return tr, va, 3


class DictSamples(Dataset):
    """Hugging Face style samples: {"input_ids": ..., "attention_mask": ..., "labels": ...}."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"input_ids": self.x[i], "attention_mask": torch.ones_like(self.x[i]), "labels": self.y[i]}


def hf_dataset():
    x, y = token_sequences()
    return DictSamples(x[:220], y[:220]), DictSamples(x[220:], y[220:]), 3


@dataclass
class Output:
    """An object with ``logits`` (and an optional ``loss``), as Hugging Face's ModelOutput."""

    logits: torch.Tensor
    loss: Optional[torch.Tensor] = None


class HFStyle(nn.Module):
    """``forward(input_ids, attention_mask, labels=None)`` -> an object with logits and, given
    labels, the loss it computed itself."""

    def __init__(self, num_classes, input_shape):
        super().__init__()
        self.embed = nn.EmbeddingBag(VOCAB, 16, mode="mean")
        self.head = nn.Linear(16, num_classes)
        self.own_loss_calls = 0

    def forward(self, input_ids, attention_mask, labels=None):
        logits = self.head(self.embed(input_ids, per_sample_weights=None) * attention_mask[:, :1].float())
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits, labels)
        return Output(logits=logits, loss=loss)


def hf_style(num_classes, input_shape):
    return HFStyle(num_classes, input_shape)


class Outputs(nn.Module):
    """A linear model returning its logits in the form ``kind`` names."""

    def __init__(self, features: int, num_classes: int, kind: str):
        super().__init__()
        self.linear, self.kind = nn.Linear(features, num_classes), kind

    def forward(self, x):
        logits = self.linear(x.flatten(1).float())
        if self.kind == "tuple":
            return logits, x
        if self.kind == "list":
            return [logits, x]
        if self.kind == "dict":
            return {"logits": logits, "hidden": x}
        if self.kind == "ordered":  # ModelOutput is an OrderedDict subclass
            return OrderedDict(logits=logits)
        if self.kind == "object":
            return Output(logits=logits)
        if self.kind == "string":
            return "logits"
        return logits


class TwoInputs(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.a, self.b = nn.Linear(6, num_classes), nn.Linear(2, num_classes)

    def forward(self, left, right):
        return self.a(left) + self.b(right)


class KeywordInputs(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.a, self.b = nn.Linear(6, num_classes), nn.Linear(2, num_classes)

    def forward(self, *, signal, extra):
        return self.a(signal) + self.b(extra)


def bn_model(num_classes, input_shape):
    """BatchNorm: cannot train on a micro-batch of one sample."""
    return nn.Sequential(nn.Flatten(), nn.Linear(int(torch.tensor(input_shape).prod()), 16), nn.BatchNorm1d(16),
                         nn.ReLU(), nn.Linear(16, num_classes))


class SizeLimited(nn.Module):
    """A custom kernel's limit: raises for more than ``limit`` samples (training or evaluation)."""

    def __init__(self, features, num_classes, limit):
        super().__init__()
        self.linear, self.limit = nn.Linear(features, num_classes), limit

    def forward(self, x):
        if x.shape[0] > self.limit:
            raise RuntimeError(f"batch too big for my custom kernel (> {self.limit})\nsee kernel.cu:42")
        return self.linear(x.flatten(1))


def size_limited(num_classes, input_shape):
    return SizeLimited(int(torch.tensor(input_shape).prod()), num_classes, limit=24)


class MinBatch(nn.Module):
    """A model's minimum batch (a statistic over the batch's samples): raises for fewer than
    ``least`` samples (training or evaluation)."""

    def __init__(self, features, num_classes, least):
        super().__init__()
        self.linear, self.least = nn.Linear(features, num_classes), least

    def forward(self, x):
        if x.shape[0] < self.least:
            raise RuntimeError(f"need at least {self.least} samples per batch, got {x.shape[0]}")
        return self.linear(x.flatten(1))


def min_batch4(num_classes, input_shape):
    return MinBatch(int(torch.tensor(input_shape).prod()), num_classes, least=4)


def broken_factory(num_classes, input_shape):
    raise RuntimeError("cannot build: weights file missing")


class BrokenForward(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(6, 3)

    def forward(self, x):
        raise ValueError("shapes do not match in my_layer")


def broken_forward(num_classes, input_shape):
    return BrokenForward()


def no_parameters(num_classes, input_shape):
    return nn.Identity()


def linear(num_classes, input_shape):
    return nn.Sequential(nn.Flatten(), nn.Linear(int(torch.tensor(input_shape).prod()), num_classes))


def blobs_dataset():
    x, y = blobs()
    tr, va = split(x, y)
    return tr, va, 3


def float64_int16_dataset():
    x, y = blobs()
    tr, va = split(x.double(), y.to(torch.int16))
    return tr, va, 3


def bad_labels_dataset():
    x, y = blobs()
    y[7] = 11
    tr, va = split(x, y)
    return tr, va, 3


def empty_val_dataset():
    x, y = blobs()
    return TensorDataset(x, y), TensorDataset(x[:0], y[:0]), 3


# --- targets a loss cannot learn: real values, and "multi-hot" targets outside [0, 1] ----------

def _real_values(column: bool):
    x, _ = blobs()
    y = 3.0 * x[:, 0] + x[:, 1]  # a regression target: real values, negative ones too
    return split(x, y[:, None] if column else y)


def regression_dataset():
    """Real-valued targets (N,) and num_classes 1, as a regression user writes it."""
    return (*_real_values(column=False), 1)


def regression_column_dataset():
    """Real-valued targets (N, 1)."""
    return (*_real_values(column=True), 1)


def regression_model(num_classes, input_shape):
    """One prediction per sample, (N,)."""
    return nn.Sequential(nn.Linear(input_shape[0], 1), nn.Flatten(0))


def unbounded_multi_hot_dataset():
    """Targets (N, 3) meant for bce but outside [0, 1]."""
    x, y = blobs()
    tr, va = split(x, 2.0 * torch.nn.functional.one_hot(y, 3).float() - 0.5)
    return tr, va, 3


def multi_hot_dataset():
    """Multi-label targets (N, 3) of 0/1 floats: the sample's class, and class 0 always on (rows
    summing to 1 or 2): for bce, not cross-entropy (whose accuracy would be the argmax, class 0)."""
    x, y = blobs()
    targets = torch.nn.functional.one_hot(y, 3).float()
    targets[:, 0] = 1.0
    tr, va = split(x, targets)
    return tr, va, 3


# --- items of NumPy arrays, as a dataset over a pandas frame or sklearn arrays returns them -----

class NumpyItems(Dataset):
    """``(float64 array, numpy int64 scalar)`` items: the default collate makes them tensors."""

    def __init__(self, x, y):
        self.x, self.y = x.double().numpy(), y.numpy()

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def numpy_items_dataset():
    x, y = blobs()
    return NumpyItems(x[:180], y[:180]), NumpyItems(x[180:], y[180:]), 3


# --- a training-step hook and its evaluation function ---------------------------------------

STEP_CALLS = {"step": 0, "eval": 0}


def contrastive_step(model, batch):
    """A loss the conventions do not cover: a margin loss on the logit of the true class."""
    STEP_CALLS["step"] += 1
    x, y = batch
    logits = model(x)
    true = logits.gather(1, y[:, None])
    return torch.relu(1.0 - true + logits).mean()


def step_accuracy(model, batches):
    STEP_CALLS["eval"] += 1
    correct = total = 0
    for x, y in batches:
        correct += int((model(x).argmax(1) == y).sum())
        total += len(y)
    return correct / total


def raising_eval(model, batches):
    """Breaks on validation batches larger than the recipe check's few samples: only trials see it."""
    for x, _ in batches:
        if len(x) > 4:
            raise KeyError("metric_name")
    return 0.5


# --- the README's worked step hook: next-token language modelling ---------------------------

def lm_corpus(n: int = 200, length: int = 9, seed: int = 0):
    """Sequences counting up modulo VOCAB from a random start: the next token is learnable."""
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, VOCAB, (n, 1), generator=g)
    tokens = (starts + torch.arange(length)) % VOCAB
    zeros = torch.zeros(n, dtype=torch.long)
    return TensorDataset(tokens[:150], zeros[:150]), TensorDataset(tokens[150:], zeros[150:]), 1


class TinyLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed, self.head = nn.Embedding(VOCAB, 32), nn.Linear(32, VOCAB)

    def forward(self, tokens):
        return self.head(self.embed(tokens))


def lm_build(num_classes, input_shape):
    return TinyLM()


def step(model, batch):
    tokens, _ = batch                      # items are (tokens, 0): the target is unused
    logits = model(tokens[:, :-1])         # (N, L, vocab)
    return nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())


def next_token_accuracy(model, batches):
    right = total = 0
    for tokens, _ in batches:
        predicted = model(tokens[:, :-1]).argmax(-1)
        right += (predicted == tokens[:, 1:]).sum().item()
        total += predicted.numel()
    return right / total


def per_sample_step(model, batch):
    """A step that forgets to reduce: one loss per sample."""
    x, y = batch
    return torch.nn.functional.cross_entropy(model(x), y, reduction="none")
