"""The settings of cot's commands, in a module without torch: the CLI builds its options
from these dataclasses at start-up, and `cot data` must not pay for importing torch.

TrainConfig inherits ModelShape's fields (and their defaults and help) instead of copying
them, and the sweep's settings sit beside it.
"""

from __future__ import annotations

from dataclasses import dataclass

from circuitlab.core.config import option, require
from circuitlab.core.executor import Execution
from circuitlab.core.schedule import SCHEDULES
from circuitlab.core.tracking import REPORT_TO_HELP, check_report_to
from circuitlab.cot.data import (
    P_HELP,
    SIZE_HELP,
    TASK_HELP,
    UNDER_HELP,
    VALUES_HELP,
    DataConfig,
)
from circuitlab.cot.tasks.lis import NUMBER_RANGE


@dataclass(frozen=True)
class ModelShape:
    """What a user chooses about the decoder; TrainConfig inherits these fields (and their
    defaults and help) rather than copying them."""

    layers: int = option(3, "Transformer blocks.")
    d_model: int = option(256, "Width of the residual stream.")
    heads: int = option(4, "Attention heads (they divide d_model).")
    dropout: float = option(0.1, "Dropout on attention, residual and embedding outputs.")
    positions: str = option("sinusoidal", "Position encoding: sinusoidal (paper) or learned.")
    embed_std: float = option(1.0, "Standard deviation of the token embeddings at init.")

    def __post_init__(self) -> None:
        require(self.layers >= 1, "layers must be at least 1")
        require(self.heads >= 1, "heads must be at least 1")
        require(self.d_model >= 1, f"d_model must be at least 1, not {self.d_model}")
        require(
            self.d_model % self.heads == 0,
            f"d_model ({self.d_model}) must be divisible by heads ({self.heads})",
        )
        require(0.0 <= self.dropout < 1.0, "dropout must be in [0, 1)")
        require(self.embed_std > 0, "embed_std must be positive")
        require(
            self.positions in ("sinusoidal", "learned"),
            f"positions must be 'sinusoidal' or 'learned', not {self.positions!r}",
        )


AMP = ("auto", "off", "bf16", "fp16")


@dataclass(frozen=True)
class TrainConfig(ModelShape):
    """Everything that determines a training run. Defaults: the official model and optimiser
    (d_model 256, 4 heads, 3 layers, AdamW 1e-4, weight decay 0.01, 5% warmup) on a small
    dataset; the sweep profiles set data size and epochs. The model's fields (layers,
    d_model, heads, dropout, positions, embed_std) come from ModelShape, so a run's
    config.json keeps them at its top level as it always has."""

    task: str = option("arithmetic", TASK_HELP)
    size: int = option(4, SIZE_HELP)
    format: str = option("cot", "cot (train on the chain) or direct (answer only).")
    p: int = option(11, P_HELP)
    values: int = option(NUMBER_RANGE, VALUES_HELP)
    num: int = option(
        10_000,
        "Training examples; spell it --train-num under torchrun, whose own parser reads "
        "--num as an abbreviation of its --numa-binding.",
        flags=("--num", "--train-num"),
    )
    test_num: int = option(1_000, "Test examples, never sharing a question with training.")
    data_seed: int = option(0, "Seed of the data draw.")
    seed: int = option(2021, "Model init and data order.")
    mix_smaller: float = option(
        0.0, "Fraction of training problems drawn at smaller sizes, in equal shares."
    )
    under: bool = option(False, UNDER_HELP)
    epochs: int = option(10, "Passes over the training set.")
    batch_size: int = option(128, "Sequences per step.")
    lr: float = option(1e-4, "Peak AdamW learning rate.")
    weight_decay: float = option(0.01, "AdamW weight decay.")
    warmup: float = option(0.05, "Fraction of all steps spent warming the learning rate up.")
    schedule: str = option("cosine", f"Learning-rate decay: {', '.join(SCHEDULES)}.")
    grad_clip: float = option(1.0, "Gradient norm clip (0: off, as in the official code).")
    amp: str = option("auto", f"Mixed precision: {', '.join(AMP)}.")
    device: str = option("auto", "auto, cpu, cuda or mps.")
    eval_every: int = option(0, "Evaluate every N epochs during training (0: only at the end).")
    eval_examples: int = option(500, "Test examples used by evaluations during training.")
    checkpoint_every: int = option(200, "Write a checkpoint every N steps.")
    log_every: int = option(20, "Log loss and throughput every N steps.")
    report_to: str = option("none", REPORT_TO_HELP)  # not in the run's identity (tracking.py)

    def __post_init__(self) -> None:
        require(
            self.format in ("direct", "cot"), f"format must be direct or cot, not {self.format!r}"
        )
        require(self.epochs >= 1, "epochs must be at least 1")
        require(self.batch_size >= 1, "batch_size must be at least 1")
        require(self.lr > 0, "lr must be positive")
        require(self.grad_clip >= 0, f"grad_clip {self.grad_clip}: must be > 0, or 0 for off")
        require(0.0 <= self.warmup < 1.0, "warmup is a fraction of all steps, in [0, 1)")
        require(self.schedule in SCHEDULES, f"schedule must be one of {', '.join(SCHEDULES)}")
        require(self.amp in AMP, f"amp must be one of {', '.join(AMP)}")
        require(self.checkpoint_every >= 1, "checkpoint_every must be at least 1")
        require(self.log_every >= 1, "log_every must be at least 1")
        check_report_to(self.report_to)
        require(self.test_num >= 1, "test_num must be at least 1: the run ends with an evaluation")
        require(
            0.0 <= self.mix_smaller < 1.0, "mix_smaller is a fraction of training data, in [0, 1)"
        )
        require(not (self.under and self.mix_smaller), "use under or mix_smaller, not both")
        super().__post_init__()  # the model's shape
        self.data  # noqa: B018 - building the DataConfig checks task, size, p and values

    @property
    def data(self) -> DataConfig:
        return DataConfig(
            self.task,
            self.size,
            self.format,
            self.num,
            self.test_num,
            self.data_seed,
            self.p,
            self.values,
            self.under,
        )


@dataclass(frozen=True)
class SweepSettings(Execution):
    """How `cot sweep` runs a profile (the profile itself fixes what is trained)."""

    profile: str = option(
        "quick",
        "quick (2-core CPU, < 30 min), demo (its arithmetic slice, a few minutes) "
        "or paper (the official configuration, a GPU job).",
    )
    tasks: tuple[str, ...] = option((), "Only these tasks (repeatable).", flags=("--task",))
    device: str | None = option(None, "Override the profile's device (auto).")
