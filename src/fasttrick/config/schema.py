"""The typed schema of one training run (:class:`RunConfig`) and of a grid file (:class:`GridFile`).

A run::

    seed: 0
    data:      {root: null, loader: auto, batch_size: 512, train_subset: null, test_subset: null}
    model:     {name: resnet18, width: 1.0, channels_last: true}
    train:     {epochs: 30, device: auto, precision: auto, compile: auto, compile_mode: default,
                compile_backend: inductor, deterministic: false, label_smoothing: 0.0}
    optimizer: {name: fused_sgdw, lr: 0.1, momentum: 0.9, weight_decay: 5.0e-4, ...}  # fused_sgdw|sgd|adam|adamw|nadam
    scheduler: {name: step, step_size: 35%, gamma: 0.1}  # step|multistep|cosine|cosine_restarts|plateau|constant
    warmup:    {epochs: 0, start_factor: 0.1}

Epoch-valued schedule fields (``step_size``, ``milestones``, ``t_0``, ``patience``, ``cooldown``,
``warmup.epochs``) take whole epochs (``70``) or a share of ``train.epochs`` (``"35%"``), so one file keeps
the post's shape at 30 and at 200 epochs: 35% is every 70 epochs of 200 and every 11 of 30.

Every float must be finite (an inf or NaN lr is refused here rather than found diverging at run time),
and a batch must fit the training (sub)set, whose last partial batch is dropped.

A grid file is a base run, optional named profiles, then runs and axes; see ``fasttrick.grid``.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, TypeGuard

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

# --profile NAME: the built-in layer under a grid file's own ``profiles[NAME]`` (fasttrick.grid.expand).
ProfileName = Literal["quick", "faithful"]
PROFILE_DEFAULTS: dict[ProfileName, dict[str, Any]] = {
    "quick": {"train.epochs": 30},  # the default: <= 30 epochs a run, schedules given as shares keep their shape
    "faithful": {"train.epochs": 200},  # the post's length (StepLR every 70 epochs = "35%")
}


def is_profile(name: str) -> TypeGuard[ProfileName]:
    return name in PROFILE_DEFAULTS


# CIFAR-10's training images (fasttrick.data.sources.NUM_TRAIN; config imports no torch, a test ties the two).
CIFAR10_TRAIN_IMAGES = 50_000


def first_difference(old: Any, new: Any, path: str = "") -> str | None:
    """``"optimizer.lr: 0.05 -> 0.1"`` for the first key where two resolved configs differ; None if equal."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in list(old) + [k for k in new if k not in old]:
            diff = first_difference(old.get(key), new.get(key), f"{path}.{key}" if path else str(key))
            if diff:
                return diff
        return None
    if isinstance(old, (list, tuple)) and isinstance(new, (list, tuple)):
        old, new = list(old), list(new)
    return None if old == new else f"{path or 'config'}: {_short(old)} -> {_short(new)}"


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------------------------------------
# Epoch counts: whole epochs or a share of the run
# ---------------------------------------------------------------------------------------------

_PERCENT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")


def _check_epoch_spec(value: Any) -> int | str:
    if isinstance(value, bool):
        raise ValueError("expected whole epochs (e.g. 70) or a share of train.epochs (e.g. '35%')")
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        if value < 0:
            raise ValueError(f"must be >= 0 epochs, got {value}")
        return int(value)
    if isinstance(value, str) and _PERCENT.match(value):
        return value.strip()
    raise ValueError(f"expected whole epochs (e.g. 70) or a share of train.epochs (e.g. '35%'), got {value!r}")


EpochSpec = Annotated[int | str, Field(union_mode="left_to_right")]


def resolve_epochs(spec: int | str, epochs: int, *, minimum: int = 0) -> int:
    """Whole epochs for ``spec``: an int as is, ``"35%"`` as round(0.35 * epochs) (half up), at least ``minimum``."""
    if isinstance(spec, int):
        return max(minimum, spec)
    match = _PERCENT.match(spec)
    if match is None:  # the schema admits no such value; a caller that bypassed it
        raise ValueError(f"expected whole epochs (e.g. 70) or a share of the run (e.g. '35%'), got {spec!r}")
    share = float(match.group(1)) / 100
    return max(minimum, int(share * epochs + 0.5))


# Seeds feed torch.manual_seed, numpy and DALI; 32 bits is what every one of them takes.
MAX_SEED = 2**32 - 1


def _number(value: Any) -> Any:
    """Numbers are numbers: YAML's true, or a quoted "0.5", is refused rather than read as 1.0 or 0.5."""
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {str(value).lower()}")
    if isinstance(value, str):
        try:
            float(value)
            hint = "; write it without quotes"
        except ValueError:
            hint = ""
        raise ValueError(f"expected a number, got the text {value!r}{hint}")
    return value


_NUMBER = BeforeValidator(_number)
_Float = Annotated[float, _NUMBER]
_Int = Annotated[int, _NUMBER]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True, allow_inf_nan=False)


def _epoch_fields(*names: str):
    return field_validator(*names, mode="before")(lambda cls, v: _check_epoch_spec(v))


# ---------------------------------------------------------------------------------------------
# Run: data, model, train
# ---------------------------------------------------------------------------------------------


class DataConfig(_Strict):
    root: str | None = None  # CIFAR-10 source; None: $FASTTRICK_DATA, else torchvision's download
    loader: Literal["auto", "torch", "dali"] = "auto"
    batch_size: _Int = Field(default=512, ge=1)
    train_subset: _Int | None = Field(
        default=None, ge=1
    )  # the first N of a fixed shuffle (same for every run and seed)
    test_subset: _Int | None = Field(default=None, ge=1)


class ModelConfig(_Strict):
    name: Literal["resnet18"] = "resnet18"
    width: _Float = Field(default=1.0, gt=0)  # channels x width; 1.0 is the standard 11.17 M-parameter ResNet-18
    channels_last: bool = True


class TrainConfig(_Strict):
    epochs: _Int = Field(default=30, ge=1)
    device: str = "auto"  # auto (cuda when available) | cpu | cuda | cuda:N
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"  # auto: bf16 autocast on GPU, fp32 on CPU
    compile: Literal["auto"] | bool = "auto"  # auto: on for GPU, off for CPU
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = "default"
    compile_backend: str = "inductor"  # any torch.compile backend; "aot_eager" compiles fast on CPU (tests)
    deterministic: bool = False  # torch.use_deterministic_algorithms + cudnn.benchmark off
    label_smoothing: _Float = Field(default=0.0, ge=0, lt=1)

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {value!r}")
        return value


# ---------------------------------------------------------------------------------------------
# Optimizers (discriminated on name)
# ---------------------------------------------------------------------------------------------

_Lr = Annotated[float, _NUMBER, Field(gt=0)]
_Decay = Annotated[float, _NUMBER, Field(ge=0)]
_Momentum = Annotated[float, _NUMBER, Field(ge=0, lt=1)]


class _SGDBase(_Strict):
    lr: _Lr = 0.1
    momentum: _Momentum = 0.9
    dampening: _Float = Field(default=0.0, ge=0, le=1)
    nesterov: bool = False
    weight_decay: _Decay = 5e-4  # coupled L2 on every parameter (biases and BN included), as the post's torch SGD

    @model_validator(mode="after")
    def _nesterov(self):
        if self.nesterov and (self.momentum == 0 or self.dampening != 0):
            raise ValueError("nesterov needs momentum > 0 and dampening = 0")
        return self


class FusedSGDWConfig(_SGDBase):
    """fasttrick.FusedSGDW: torch.optim.SGD's update in one fused kernel (the default SGD path)."""

    name: Literal["fused_sgdw"]
    decoupled_weight_decay: bool = False  # True: SGDW, p *= 1 - lr * wd outside the momentum buffer
    backend: Literal["auto", "triton", "cuda", "cpu", "foreach", "reference"] = (
        "auto"  # == fasttrick.ops.KERNEL_BACKENDS (a test ties them)
    )


class SGDConfig(_SGDBase):
    """torch.optim.SGD (fused on CUDA, foreach on CPU)."""

    name: Literal["sgd"]


class AdamConfig(_Strict):
    """torch.optim.Adam (weight_decay = coupled L2) or AdamW (decoupled); fused on CUDA."""

    name: Literal["adam", "adamw"]
    lr: _Lr = 1e-3
    betas: tuple[_Momentum, _Momentum] = (0.9, 0.999)
    eps: _Float = Field(default=1e-8, gt=0)
    weight_decay: _Decay = 0.0
    amsgrad: bool = False


class NAdamConfig(_Strict):
    """torch.optim.NAdam: Adam with Nesterov momentum (foreach on CUDA; torch has no fused NAdam)."""

    name: Literal["nadam"]
    lr: _Lr = 2e-3
    betas: tuple[_Momentum, _Momentum] = (0.9, 0.999)
    eps: _Float = Field(default=1e-8, gt=0)
    weight_decay: _Decay = 0.0
    momentum_decay: _Float = Field(default=4e-3, ge=0)
    decoupled_weight_decay: bool = False


OptimizerConfig = Annotated[FusedSGDWConfig | SGDConfig | AdamConfig | NAdamConfig, Field(discriminator="name")]


# ---------------------------------------------------------------------------------------------
# Schedules (discriminated on name); stepped once per epoch, after a linear warm-up
# ---------------------------------------------------------------------------------------------


class StepConfig(_Strict):
    """torch StepLR: lr x gamma every step_size epochs (counted from the end of the warm-up)."""

    name: Literal["step"]
    step_size: EpochSpec = "35%"  # the post: every 70 of 200 epochs
    gamma: _Float = Field(default=0.1, gt=0, le=1)
    check_epochs = _epoch_fields("step_size")


def _half_and_three_quarters() -> list[EpochSpec]:
    return ["50%", "75%"]


class MultiStepConfig(_Strict):
    """torch MultiStepLR: lr x gamma at each milestone epoch (counted from the end of the warm-up)."""

    name: Literal["multistep"]
    milestones: list[EpochSpec] = Field(default_factory=_half_and_three_quarters, min_length=1)
    gamma: _Float = Field(default=0.1, gt=0, le=1)

    @field_validator("milestones", mode="before")
    @classmethod
    def _milestones(cls, value):
        if not isinstance(value, list):
            raise ValueError("milestones must be a list of epochs or shares, e.g. [50%, 75%]")
        return [_check_epoch_spec(v) for v in value]


class CosineConfig(_Strict):
    """torch CosineAnnealingLR from the base lr down to eta_min over the epochs after the warm-up."""

    name: Literal["cosine"]
    eta_min: _Decay = 0.0
    t_max: EpochSpec | None = None  # None: every epoch after the warm-up
    check_epochs = field_validator("t_max", mode="before")(lambda cls, v: None if v is None else _check_epoch_spec(v))


class CosineRestartsConfig(_Strict):
    """torch CosineAnnealingWarmRestarts: cycles of t_0, t_0*t_mult, ... epochs."""

    name: Literal["cosine_restarts"]
    t_0: EpochSpec = "25%"
    t_mult: _Int = Field(default=1, ge=1)
    eta_min: _Decay = 0.0
    check_epochs = _epoch_fields("t_0")


class PlateauConfig(_Strict):
    """torch ReduceLROnPlateau, fed ``monitor`` after each epoch past the warm-up (warm-up done by hand)."""

    name: Literal["plateau"]
    mode: Literal["min", "max"] = "max"
    monitor: Literal["val_acc", "val_loss", "train_loss"] = "val_acc"
    factor: _Float = Field(default=0.1, gt=0, lt=1)
    patience: EpochSpec = 10
    threshold: _Float = Field(default=1e-4, ge=0)
    threshold_mode: Literal["rel", "abs"] = "rel"
    cooldown: EpochSpec = 0
    min_lr: _Decay = 0.0
    check_epochs = _epoch_fields("patience", "cooldown")


class ConstantConfig(_Strict):
    """The base lr throughout (after the warm-up)."""

    name: Literal["constant"]


SchedulerConfig = Annotated[
    StepConfig | MultiStepConfig | CosineConfig | CosineRestartsConfig | PlateauConfig | ConstantConfig,
    Field(discriminator="name"),
]


class WarmupConfig(_Strict):
    """Linear warm-up from start_factor x lr to lr over ``epochs`` epochs, before any schedule."""

    epochs: EpochSpec = 0
    start_factor: _Float = Field(default=0.1, gt=0, le=1)
    check_epochs = _epoch_fields("epochs")


class RunConfig(_Strict):
    seed: _Int = Field(default=0, ge=0, le=MAX_SEED)
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    optimizer: OptimizerConfig = Field(default_factory=lambda: FusedSGDWConfig(name="fused_sgdw"))
    scheduler: SchedulerConfig = Field(default_factory=lambda: ConstantConfig(name="constant"))
    warmup: WarmupConfig = Field(default_factory=WarmupConfig)

    @model_validator(mode="after")
    def _fits(self):
        epochs = self.train.epochs
        if resolve_epochs(self.warmup.epochs, epochs) >= epochs:
            raise ValueError(f"warmup.epochs ({self.warmup.epochs}) must leave epochs to train (train.epochs={epochs})")
        images = min(self.data.train_subset or CIFAR10_TRAIN_IMAGES, CIFAR10_TRAIN_IMAGES)
        if self.data.batch_size > images:
            raise ValueError(
                f"data.batch_size {self.data.batch_size} is larger than the {images} training images "
                "(the last partial batch is dropped, so no step would run); lower it or raise data.train_subset"
            )
        return self

    def warmup_epochs(self) -> int:
        return resolve_epochs(self.warmup.epochs, self.train.epochs)


def config_warnings(run: RunConfig) -> list[str]:
    """Legal but suspicious settings (reported, never refused)."""
    notes = []
    s = run.scheduler
    if s.name == "plateau":
        goal = "max" if s.monitor.endswith("acc") else "min"
        if s.mode != goal:
            notes.append(
                f"scheduler: plateau mode '{s.mode}' on {s.monitor} cuts the lr whenever {s.monitor} "
                f"{'improves' if s.mode == 'min' else 'gets worse'} (the usual mode is '{goal}'); "
                "kept, as the study does this on purpose"
            )
    return notes


# ---------------------------------------------------------------------------------------------
# Grid file
# ---------------------------------------------------------------------------------------------


class GridFile(_Strict):
    """The top level of a config file; ``base``, ``runs``, ``grid`` and ``profiles`` hold partial runs,
    validated as whole :class:`RunConfig` s once expanded (see fasttrick.grid)."""

    name: str | None = None
    description: str | None = None
    seeds: list[Annotated[int, _NUMBER, Field(ge=0, le=MAX_SEED)]] = Field(default_factory=lambda: [0], min_length=1)
    profiles: dict[ProfileName, dict[str, Any]] = Field(default_factory=dict)
    base: dict[str, Any] = Field(default_factory=dict)
    runs: list[dict[str, Any]] | None = None
    grid: dict[str, list[Any]] = Field(default_factory=dict)

    @field_validator("grid")
    @classmethod
    def _axes(cls, value):
        for key, values in value.items():
            if not values:
                raise ValueError(f"axis {key!r} has no values")
        return value
