"""The answer in the formats people train with: JSON, TOML, Hugging Face, Lightning.

Input is a ``TrainingSetup``: the recipe plus the tuned numbers and the trial length they were
tuned for (what a ``Recommendation`` carries; ``Recommendation.training_setup()`` makes one).
Torch-free at import; ``lightning_configure_optimizers`` imports ``autobatch.train`` (torch) when
called, ``to_toml`` imports ``tomli_w``.

Fidelity (what the export reproduces of the trials; details in each function):
- Lightning: exact (the same optimizer and ``LambdaLR``/``OneCycleLR`` object, stepped per
  optimizer step, same precision, clipping and accumulation).
- Hugging Face ``TrainingArguments``: the same optimizer, betas, weight decay value, lr,
  micro-batch, accumulation, precision and clipping; the schedule equals ours from the end of
  the warm-up on, but HF's warm-up factor is ``step / w`` where ours is ``(step + 1) / w`` (HF
  is one step behind during warm-up), and HF's Trainer exempts biases and LayerNorm weights
  from weight decay where autobatch decays every parameter. ``onecycle``, Adam with weight
  decay > 0 and user optimizers have no TrainingArguments spelling: ``RecipeError`` says to
  pass ``Trainer(optimizers=(build_optimizer(...), build_scheduler(...)))`` instead.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Optional

from ..recipe import RecipeError, TrainRecipe

LIGHTNING_PRECISION = {"fp32": "32-true", "bf16": "bf16-mixed", "fp16": "16-mixed"}
HF_SCHEDULER = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}
TORCH_OPTIMIZER = {"sgd": "torch.optim.SGD", "adam": "torch.optim.Adam", "adamw": "torch.optim.AdamW"}
ADAM_EPSILON = 1e-8  # torch.optim.Adam/AdamW default, stated so HF uses the same
EXPORT_FORMATS = ("json", "toml", "hf", "lightning")


@dataclass(frozen=True, kw_only=True)
class TrainingSetup:
    """What to train with: ``recipe``, micro-batch ``micro_batch_size`` (samples per forward
    pass and per device), ``accumulation_steps`` micro-batches per optimizer step,
    ``learning_rate`` (absolute, at this effective batch; the peak lr of the schedule), and the
    length the schedule spans, ``train_samples`` (the tuned trial length; set your own run's
    length here to stretch the schedule). ``device``: "cpu" or "cuda", where it was tuned.
    ``dataset_size`` (optional) gives ``epochs``. Raises ``RecipeError`` for bad values."""

    recipe: TrainRecipe
    micro_batch_size: int
    accumulation_steps: int
    learning_rate: float
    train_samples: int
    device: str = "cuda"
    dataset_size: Optional[int] = None

    def __post_init__(self) -> None:
        for name in ("micro_batch_size", "accumulation_steps", "train_samples"):
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise RecipeError(f"{name}: {value!r} is not an integer >= 1; pass a positive count")
        if not (isinstance(self.learning_rate, (int, float)) and self.learning_rate > 0):
            raise RecipeError(f"learning_rate: {self.learning_rate!r} is not positive; pass the tuned lr")
        if self.device not in ("cpu", "cuda"):
            raise RecipeError(f"device: {self.device!r} is not cpu or cuda; pass the device type")
        if self.recipe.precision == "fp16" and self.device == "cpu":
            raise RecipeError("precision: fp16 needs a CUDA device; use bf16 or fp32 on cpu")
        if self.dataset_size is not None and not (isinstance(self.dataset_size, int) and self.dataset_size >= 1):
            raise RecipeError(f"dataset_size: {self.dataset_size!r} is not an integer >= 1; pass len(train set) or omit it")

    @property
    def effective_batch_size(self) -> int:
        return self.micro_batch_size * self.accumulation_steps

    @property
    def optimizer_steps(self) -> int:
        """``ceil(train_samples / effective batch)``, as the trial loop counts them."""
        return max(1, math.ceil(self.train_samples / self.effective_batch_size))

    @property
    def epochs(self) -> Optional[float]:
        return None if self.dataset_size is None else self.train_samples / self.dataset_size

    @property
    def warmup_steps(self) -> int:
        """Warm-up optimizer steps, as ``autobatch.train.LRFactor`` counts them (at least 1)."""
        return max(1, int(self.recipe.warmup_fraction * self.optimizer_steps))

    def to_dict(self) -> dict[str, Any]:
        """Flat numbers plus ``recipe: TrainRecipe.to_dict()``; JSON-ready."""
        return {"micro_batch_size": self.micro_batch_size, "accumulation_steps": self.accumulation_steps,
                "effective_batch_size": self.effective_batch_size, "learning_rate": self.learning_rate,
                "train_samples": self.train_samples, "optimizer_steps": self.optimizer_steps,
                "epochs": self.epochs, "device": self.device, "recipe": self.recipe.to_dict()}


def to_json(setup: TrainingSetup) -> str:
    return json.dumps(setup.to_dict(), indent=2)


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    return value


def to_toml(setup: TrainingSetup) -> str:
    """TOML text; ``None`` values are left out (TOML has no null; ``TrainRecipe.from_dict``
    reads a missing key back as its default). The recipe is a ``[recipe]`` table, the same
    table a study TOML takes."""
    import tomli_w

    return tomli_w.dumps(_drop_none(setup.to_dict()))


def _no_hf(what: str) -> RecipeError:
    return RecipeError(f"format hf: {what} has no TrainingArguments spelling; pass Trainer(optimizers="
                       "(build_optimizer(...), build_scheduler(...))) or use --format lightning")


def hf_training_arguments(setup: TrainingSetup) -> dict[str, Any]:
    """Keyword arguments for ``transformers.TrainingArguments(output_dir=..., **kwargs)``
    (checked against transformers 5.24; ``warmup_ratio`` no longer exists there, so the warm-up
    is the integer ``warmup_steps``, which 4.x accepts too).

    ``optim``: sgd -> ``"sgd"`` with ``optim_args="momentum=...,nesterov=..."`` (HF's SGD
    handler reads both); adamw -> ``"adamw_torch"`` (``torch.optim.AdamW``, as ours; not the
    fused variant); adam with weight decay 0 -> ``"adamw_torch"`` (AdamW with decay 0 is Adam).
    ``max_grad_norm`` is 0.0 without clipping (HF's default, 1.0, would clip).
    Raises ``RecipeError`` for onecycle, Adam with weight decay > 0 and user optimizers."""
    r = setup.recipe
    if r.schedule not in HF_SCHEDULER:
        raise _no_hf(f"schedule {r.schedule!r}")
    if r.optimizer == "sgd":
        optim = {"optim": "sgd", "optim_args": f"momentum={r.momentum},nesterov={r.nesterov}"}
    elif r.optimizer == "adamw" or (r.optimizer == "adam" and r.weight_decay == 0):
        optim = {"optim": "adamw_torch", "adam_beta1": r.betas[0], "adam_beta2": r.betas[1],
                 "adam_epsilon": ADAM_EPSILON}
    else:
        raise _no_hf(f"optimizer {r.optimizer!r}" + (" with weight_decay > 0" if r.optimizer == "adam" else ""))
    kwargs = {
        "per_device_train_batch_size": setup.micro_batch_size,
        "gradient_accumulation_steps": setup.accumulation_steps,
        "learning_rate": setup.learning_rate,
        "max_steps": setup.optimizer_steps,
        "lr_scheduler_type": HF_SCHEDULER[r.schedule],
        "warmup_steps": setup.warmup_steps,
        "weight_decay": r.weight_decay,
        **optim,
        "bf16": r.precision == "bf16",
        "fp16": r.precision == "fp16",
        "max_grad_norm": r.grad_clip_norm if r.grad_clip_norm is not None else 0.0,
        "label_smoothing_factor": r.label_smoothing,
    }
    if setup.device == "cpu":
        kwargs["use_cpu"] = True  # HF refuses bf16 on CPU without it
    return kwargs


def lightning_trainer_kwargs(setup: TrainingSetup) -> dict[str, Any]:
    """Keyword arguments for ``lightning.Trainer``: accumulation, precision as Lightning spells
    it (Lightning silently turns "16-mixed" on CPU into "bf16-mixed"; a ``TrainingSetup``
    refuses fp16 on CPU first), norm clipping (``None``: none) and ``max_steps`` (optimizer
    steps, which is what Lightning counts)."""
    r = setup.recipe
    return {"accelerator": "gpu" if setup.device == "cuda" else "cpu",
            "precision": LIGHTNING_PRECISION[r.precision],
            "accumulate_grad_batches": setup.accumulation_steps,
            "gradient_clip_val": r.grad_clip_norm,
            "gradient_clip_algorithm": "norm",
            "max_steps": setup.optimizer_steps}


def optimizer_description(setup: TrainingSetup) -> dict[str, Any]:
    """The optimizer and scheduler in words and numbers (for the JSON/Lightning export and the
    report): class path and its keyword arguments, and the schedule over ``optimizer_steps``."""
    r = setup.recipe
    if r.optimizer == "sgd":
        kwargs = {"lr": setup.learning_rate, "momentum": r.momentum, "nesterov": r.nesterov,
                  "weight_decay": r.weight_decay}
    elif r.optimizer in ("adam", "adamw"):
        kwargs = {"lr": setup.learning_rate, "betas": list(r.betas), "weight_decay": r.weight_decay}
    else:
        kwargs = {"lr": setup.learning_rate}
    scheduler = {"class": ("torch.optim.lr_scheduler.OneCycleLR" if r.schedule == "onecycle"
                           else "torch.optim.lr_scheduler.LambdaLR"),
                 "schedule": r.schedule, "warmup_fraction": r.warmup_fraction,
                 "warmup_steps": setup.warmup_steps, "total_steps": setup.optimizer_steps,
                 "interval": "step"}
    return {"optimizer": {"class": TORCH_OPTIMIZER.get(r.optimizer, r.optimizer), **kwargs},
            "scheduler": scheduler}


def lightning_export(setup: TrainingSetup) -> dict[str, Any]:
    """``{"trainer": lightning_trainer_kwargs, "dataloader": {"batch_size": micro-batch},
    **optimizer_description}``."""
    return {"trainer": lightning_trainer_kwargs(setup),
            "dataloader": {"batch_size": setup.micro_batch_size},
            **optimizer_description(setup)}


def lightning_configure_optimizers(setup: TrainingSetup, params) -> dict[str, Any]:
    """What ``LightningModule.configure_optimizers`` returns: the recipe's optimizer over
    ``params`` at the tuned lr and its scheduler stepped every optimizer step::

        def configure_optimizers(self):
            return lightning_configure_optimizers(setup, self.parameters())
    """
    from ..train import make_optimizer, make_scheduler

    optimizer = make_optimizer(params, setup.learning_rate, setup.recipe)
    scheduler = make_scheduler(optimizer, setup.optimizer_steps, setup.recipe)
    return {"optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}


def export_text(setup: TrainingSetup, fmt: str) -> str:
    """``setup`` as text in ``fmt``: ``json`` (``to_json``), ``toml`` (``to_toml``), ``hf``
    (``hf_training_arguments`` as JSON) or ``lightning`` (``lightning_export`` as JSON).
    Raises ``RecipeError`` for an unknown format or a recipe the format cannot spell."""
    if fmt == "json":
        return to_json(setup)
    if fmt == "toml":
        return to_toml(setup)
    if fmt == "hf":
        return json.dumps(hf_training_arguments(setup), indent=2)
    if fmt == "lightning":
        return json.dumps(lightning_export(setup), indent=2)
    raise RecipeError(f"format: unknown {fmt!r}; choose {', '.join(EXPORT_FORMATS)}")
