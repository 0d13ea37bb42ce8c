"""The settings of cot's commands, in a module without torch: the CLI builds its options
from these dataclasses at start-up, and `cot data` must not pay for importing torch.

TrainConfig inherits ModelShape's fields (and their defaults and help) instead of copying
them, and the sweep's settings sit beside it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from circuitlab.core.config import option, require
from circuitlab.core.executor import Execution
from circuitlab.core.schedule import SCHEDULES
from circuitlab.core.tracking import REPORT_TO_HELP, check_report_to
from circuitlab.cot.data import (
    CORRUPT_HELP,
    P_HELP,
    SIZE_HELP,
    TASK_HELP,
    UNDER_HELP,
    VALUES_HELP,
    DataConfig,
)
from circuitlab.cot.files import DATA_FILE_HELP
from circuitlab.cot.tasks.lis import NUMBER_RANGE


@dataclass(frozen=True)
class ModelShape:
    """What a user chooses about the decoder; TrainConfig inherits these fields (and their
    defaults and help) rather than copying them."""

    layers: int = option(3, "Transformer blocks.")
    d_model: int = option(256, "Width of the residual stream.")
    heads: int = option(4, "Attention heads (they divide d_model).")
    dropout: float = option(0.1, "Dropout on attention, residual and embedding outputs.")
    positions: str = option(
        "sinusoidal",
        "Position encoding: sinusoidal (paper), learned, or alibi (the official --rpe: no "
        "position embedding; attention scores get -distance x 2^(-8 (h + 1) / heads) for "
        "head h, which lets a model run on longer problems than it was trained on).",
    )
    embed_std: float = option(1.0, "Standard deviation of the token embeddings at init.")
    arch: str = option(
        "project",
        "project (GPT-2 init, exact GELU, no embedding LayerNorm, no head bias) or official "
        "(the official model.py: LayerNorm(token + position), PyTorch's default init, tanh "
        "GELU, head bias; embed_std unused).",
    )

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
            self.positions in POSITIONS,
            f"positions must be one of {', '.join(POSITIONS)}, not {self.positions!r}",
        )
        require(self.arch in ARCHS, f"arch must be one of {', '.join(ARCHS)}, not {self.arch!r}")


FRESH_PROBLEMS = 1000  # test problems `cot eval --size` draws when no count is given
ARCHS = ("project", "official")
POSITIONS = ("sinusoidal", "learned", "alibi")


AMP = ("auto", "off", "bf16", "fp16")
BATCHING = ("length", "shuffle")
LR_STEPS = ("step", "epoch")
DECAY = ("matrices", "all-but-biases")
RECIPES = ("project", "official")
# What `recipe = "official"` sets: the official train.py and model.py (guyuntian/CoT_benchmark)
OFFICIAL_RECIPE = {
    "beta2": 0.999,
    "schedule": "linear",
    "grad_clip": 0.0,
    "batching": "shuffle",
    "lr_step": "epoch",
    "decay": "all-but-biases",
    "amp": "off",
    "arch": "official",
}


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
    corrupt_rate: float = option(0.0, CORRUPT_HELP)
    data_file: str | None = option(
        None, DATA_FILE_HELP, flags=("--data",), parse=lambda text: str(Path(text).resolve())
    )
    epochs: int = option(10, "Passes over the training set.")
    batch_size: int = option(128, "Sequences per step.")
    lr: float = option(1e-4, "Peak AdamW learning rate.")
    weight_decay: float = option(0.01, "AdamW weight decay.")
    decay: str = option(
        "matrices",
        "What weight decay applies to: matrices (linear and embedding weights) or "
        "all-but-biases (the official grouping, which decays LayerNorm weights too).",
    )
    beta2: float = option(0.95, "AdamW beta2 (official: PyTorch's default 0.999).")
    warmup: float = option(0.05, "Fraction of all steps spent warming the learning rate up.")
    schedule: str = option("cosine", f"Learning-rate decay: {', '.join(SCHEDULES)}.")
    lr_step: str = option(
        "step",
        "step (the schedule advances every optimizer step) or epoch (official: once per "
        "epoch, as transformers' get_scheduler; with a warmup epoch, epoch 0 trains at lr 0).",
    )
    batching: str = option(
        "length",
        "length (each batch holds sequences of similar length: less padding, but the loss "
        "is a per-token mean within one size) or shuffle (official: random batches, one "
        "per-token mean over mixed sizes).",
    )
    grad_clip: float = option(1.0, "Gradient norm clip (0: off, as in the official code).")
    amp: str = option("auto", f"Mixed precision: {', '.join(AMP)}.")
    device: str = option("auto", "auto, cpu, cuda or mps.")
    eval_every: int = option(0, "Evaluate every N epochs during training (0: only at the end).")
    eval_examples: int = option(
        500,
        "Test examples used by evaluations during training; every evaluation also scores "
        "as many training examples as test examples, at most this many (train accuracy).",
    )
    checkpoint_every: int = option(200, "Write a checkpoint every N steps.")
    log_every: int = option(20, "Log loss and throughput every N steps.")
    report_to: str = option("none", REPORT_TO_HELP)  # not in the run's identity (tracking.py)
    recipe: str = option(
        "project",
        "project (the fields as given) or official (the official code's training: "
        + ", ".join(f"{k} {v}" for k, v in OFFICIAL_RECIPE.items())
        + "; giving one of these another value is an error).",
    )

    def __post_init__(self) -> None:
        require(self.recipe in RECIPES, f"recipe must be one of {', '.join(RECIPES)}")
        if self.recipe == "official":
            self._apply_official_recipe()
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
        require(self.batching in BATCHING, f"batching must be one of {', '.join(BATCHING)}")
        require(self.lr_step in LR_STEPS, f"lr_step must be one of {', '.join(LR_STEPS)}")
        require(self.decay in DECAY, f"decay must be one of {', '.join(DECAY)}")
        require(0.0 <= self.beta2 < 1.0, f"beta2 {self.beta2}: must be in [0, 1)")
        require(self.checkpoint_every >= 1, "checkpoint_every must be at least 1")
        require(self.log_every >= 1, "log_every must be at least 1")
        check_report_to(self.report_to)
        require(self.test_num >= 1, "test_num must be at least 1: the run ends with an evaluation")
        require(
            0.0 <= self.mix_smaller < 1.0, "mix_smaller is a fraction of training data, in [0, 1)"
        )
        require(not (self.under and self.mix_smaller), "use under or mix_smaller, not both")
        generating = self.under or self.mix_smaller or self.corrupt_rate
        require(
            not (self.data_file and generating),
            "--data trains on the file as it is: under, mix_smaller and corrupt_rate "
            "belong to `cot data`",
        )
        super().__post_init__()  # the model's shape
        self.data  # noqa: B018 - building the DataConfig checks task, size, p and values

    def _apply_official_recipe(self) -> None:
        """Each recipe field still at the project default takes the official value; one
        set to a third value contradicts the recipe. (A field set explicitly to the project
        default cannot be told from one left alone, so the recipe wins there.)"""
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for name, official in OFFICIAL_RECIPE.items():
            value = getattr(self, name)
            require(
                value in (official, defaults[name]),
                f"recipe official sets {name} = {official}; {value!r} contradicts it",
            )
            object.__setattr__(self, name, official)  # frozen: set once, before validation

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
            self.corrupt_rate,
        )


@dataclass(frozen=True)
class SweepSettings(Execution):
    """How `cot sweep` runs a profile (the profile itself fixes what is trained)."""

    profile: str = option(
        "quick",
        "quick (2-core CPU, < 30 min), demo (its arithmetic slice, a few minutes), "
        "paper (the official configuration, a GPU job), or a sweep file FILE.toml: "
        "\\[train] TrainConfig fields, \\[\\[tasks]] task and sizes, \\[axes] any other field "
        "with a list of values, and optional seeds, cot_layers, direct_layers.",
    )
    tasks: tuple[str, ...] = option((), "Only these tasks (repeatable).", flags=("--task",))
    device: str | None = option(None, "Override the profile's device (auto).")
