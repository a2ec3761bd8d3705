"""Tasks, configurations and the benchmark's fixed settings."""
from __future__ import annotations

import math
import pathlib
from dataclasses import dataclass, field
from typing import Optional

import torch

from autobatch.recipe import TrainRecipe
from autobatch.search import SearchSpace

from .protocol import SeedPlan, offset_multipliers

CPU = torch.device("cpu")
THREADS = 1           # torch threads for everything: steadier timings on a shared machine
TOP_FOR_NOISE = 10    # the noise floor: seed-to-seed spread of this many best grid configurations
ROOT = pathlib.Path(__file__).resolve().parents[2]
PLOT = ROOT / "docs" / "regret_vs_compute.png"
PLOT_TTA = ROOT / "docs" / "time_to_accuracy.png"

AUTOBATCH, RANDOM, TPE, HYPERBAND, GOODPUT = ("autobatch", "random search", "Optuna TPE + median pruner",
                                              "Hyperband", "Pollux-style goodput")
LARGEST, B128, FOLK, PAPER = ("largest-fit + linear lr", "batch 128 + linear lr", "batch 32 + linear lr",
                              "the paper's setting")
SEARCHES = (AUTOBATCH, RANDOM, TPE, HYPERBAND, GOODPUT)
METHODS = SEARCHES + (LARGEST, B128, FOLK, PAPER)


@dataclass(frozen=True)
class Config:
    batch_size: int
    accumulation_steps: int
    multiplier: float  # lr = multiplier * space.learning_rate(1, effective batch)

    @property
    def effective(self) -> int:
        return self.batch_size * self.accumulation_steps

    @property
    def key(self) -> tuple:
        return (self.batch_size, self.accumulation_steps, round(math.log(self.multiplier), 6))

    def label(self) -> str:
        return f"{self.batch_size}x{self.accumulation_steps}, m={self.multiplier:.3g}"


@dataclass(frozen=True, kw_only=True)
class Task:
    name: str
    model: str
    dataset: str                     # a name in ``bench_tuning.data.DATASETS``
    space: SearchSpace               # filled in for the recipe (base lr, scaling rule)
    recipe: TrainRecipe = field(default_factory=TrainRecipe)
    n_multipliers: int               # grid lr points, offset from every tuner's candidates
    epochs: float                    # trial length, in epochs of the tuners' training split
    seeds: SeedPlan
    budgets: tuple[float, ...]       # fractions of the grid's CPU seconds
    reference: tuple[int, float]     # (batch, lr) the linear-rule baselines scale from
    target: float                    # time-to-accuracy target (validation/test accuracy)
    tta_samples: int                 # horizon of the time-to-accuracy runs (samples; 0: not run)
    # seeds.long: the longer re-training's seeds (none: not run); the first also times to accuracy
    paper: Optional[tuple[int, float]] = None   # the paper's own (batch, lr), where there is one
    searches: tuple[str, ...] = SEARCHES         # the search methods run on this task
    peers: bool = True                           # run the peers' batch-size finders on it
    can_show: str = ""
    cannot_show: str = ""

    @property
    def multipliers(self) -> tuple[float, ...]:
        return offset_multipliers(self.space.lr_multiplier_min, self.space.lr_multiplier_max,
                                  self.n_multipliers)

    def learning_rate(self, config: Config) -> float:
        return self.space.learning_rate(config.multiplier, config.effective)

    def linear_rule(self, batch: int) -> Config:
        """``batch`` with the reference lr scaled linearly (Goyal et al. 2017, eq. 1)."""
        ref_batch, ref_lr = self.reference
        return self.at_lr(batch, ref_lr * batch / ref_batch)

    def at_lr(self, batch: int, lr: float) -> Config:
        return Config(batch, 1, self.space.multiplier_for(lr, batch))


def _space(recipe: TrainRecipe, **kw) -> SearchSpace:
    return SearchSpace(**kw).for_recipe(recipe)


# MNIST-1D (Greydanus 2020): the paper's CNN trains with Adam, lr 1e-2, batch 100, weight decay 0,
# constant lr for 8000 steps (mnist1d's train.py ``get_model_args``). Base lr here: 1e-2 at batch
# 100 under the square-root rule, i.e. 1e-2 * sqrt(256 / 100) at the reference batch 256.
ADAM_CONSTANT = TrainRecipe(optimizer="adam", schedule="constant", warmup_fraction=0.0)
MNIST1D_BASE = 1e-2 * math.sqrt(256 / 100)


def tasks(mode: str) -> list[Task]:
    """``mode``: ``smoke`` (a minute, machinery only), ``quick`` (under 15 minutes) or ``full``
    (about 45 minutes of one core on the shared 2-core machine)."""
    full, smoke = mode == "full", mode == "smoke"
    seeds = (SeedPlan.make(grid=2, tuners=5, fresh=3, long=1) if full else
             SeedPlan.make(grid=2, tuners=3, fresh=3, long=1) if not smoke else
             SeedPlan.make(grid=2, tuners=2, fresh=3, long=1))
    mnist_space = _space(ADAM_CONSTANT, batch_size_min=16, batch_size_max=256, accumulation_steps=(1, 2),
                         base_lr=MNIST1D_BASE, lr_multiplier_min=0.1, lr_multiplier_max=10.0)
    mnist1d = Task(
        name="cnn1d / MNIST-1D", model="cnn1d", dataset="mnist1d", space=mnist_space, recipe=ADAM_CONSTANT,
        n_multipliers=2 if smoke else 4, epochs=0.25 if smoke else (12.0 if full else 5.0), seeds=seeds,
        budgets=(0.2,) if smoke else (0.1, 0.2), reference=(100, 1e-2), target=0.94,
        tta_samples=8_000 if smoke else 400_000, paper=(100, 1e-2),
        can_show="how the answer compares with the paper's setting (94% test accuracy for this CNN) on a "
                 "real, fixed test split; Adam with a constant lr, as the paper trains",
        cannot_show="anything about memory (the model is 6 K parameters); trials are far shorter than the "
                    "paper's 8000 steps, so the grid ranks settings by short-run accuracy")
    digits_recipe = TrainRecipe()
    small = Task(
        name="small_cnn / digits", model="small_cnn", dataset="digits",
        space=_space(digits_recipe, batch_size_min=8, batch_size_max=256, accumulation_steps=(1, 2, 4)),
        n_multipliers=3 if smoke else 5, epochs=0.5 if smoke else (4.0 if full else 2.0), seeds=seeds,
        budgets=(0.2,) if smoke else (0.1, 0.2), reference=(256, 0.1), target=0.97,
        tta_samples=2_000 if smoke else 20_000,
        can_show="regret against a dense grid of distinct settings with several seeds (cheap runs)",
        cannot_show="anything about large models or memory; 8x8 images, 1.4 K training samples: one test "
                    "sample is 0.28 points")
    out = [mnist1d, small]
    if full:
        # resnet18 trains at 3-12 CPU ms a sample here (4 s an epoch at micro-batch 128, 18 s at 16): cut
        # to fit the full mode's hour, and said in the section.
        out.append(Task(
            name="resnet18 / digits 32x32", model="resnet18", dataset="digits32",
            space=_space(digits_recipe, batch_size_min=32, batch_size_max=128, accumulation_steps=(1,)),
            n_multipliers=3, epochs=3.0, seeds=SeedPlan.make(grid=2, tuners=3, fresh=3, long=0),
            budgets=(0.2,), reference=(256, 0.1), target=0.95, tta_samples=0,
            searches=(AUTOBATCH, TPE, GOODPUT), peers=False,
            can_show="a BatchNorm network at the input size resnet18 is built for (micro-batch 32-128, "
                     "accumulation 1: 9 distinct settings), trained 3 epochs (27 steps at batch 128, 108 at "
                     "32) from scratch, so the lr and batch, not only the step count, decide accuracy; "
                     "autobatch against the strongest search baseline and the goodput pick",
            cannot_show="GPU memory or throughput; the images are upscaled 8x8 digits, not natural images; "
                        "at 3 epochs micro-batch 128 still gets few steps (61% test accuracy at m=1 in a "
                        "calibration run, 98% at 32), so the step count still weighs on large batches; with 3 "
                        "tuner seeds (not 5), one budget, no random search or Hyperband, no longer training, "
                        "no time to accuracy and no peers (a run costs 11-18 CPU s here), and a grid of 9 "
                        "settings, it is a spot check, not a ranking"))
    return out
