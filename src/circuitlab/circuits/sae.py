"""The discrete sparse autoencoder of O'Neill & Bui (2024): one SAE shared by every head.

Input: one vector per (prompt, head), the head's output written into the residual stream and
reduced over positions (`heads.head_outputs`). Architecture and training as in the paper:
- a tied bias b, subtracted before the encoder and added back after the decoder;
- encoder Linear(d_model, n_features) with bias, then ReLU: the codes;
- decoder without bias, one dictionary row per feature: x_hat = codes @ W_dec + b;
- unit-norm rows in both W_enc and W_dec, renormalised after every optimiser step;
- loss = MSE(x_hat, x) + l1 * mean over examples of the L1 norm of the codes;
- Adam (lr 1e-3), full batch, 500 epochs, from a seeded initialisation.
`discrete_codes` then keeps one integer per input: the index of its largest feature.

The SAE is small (d_model x n_features twice), but training it is the bulk of the method's
arithmetic: 10 prompts x 270 heads x 500 epochs on SmolLM2. `dtype="bfloat16"` runs the
matrix products in bfloat16 (weights and optimiser stay float32), about 2.5x faster on CPUs
with AVX-512 BF16; float32 is the default.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from circuitlab.core.config import require

SAE_DTYPES = ("float32", "bfloat16")


@dataclass(frozen=True)
class SAEConfig:
    n_features: int = 200
    l1: float = 0.02  # the paper: 0.02 for IOI and greater-than, 0.05 for docstring
    lr: float = 1e-3
    epochs: int = 500
    seed: int = 0
    dtype: str = "float32"

    def __post_init__(self) -> None:
        require(self.n_features >= 2, f"n_features must be at least 2, got {self.n_features}")
        require(self.l1 >= 0, f"l1 must be >= 0, got {self.l1}")
        require(self.lr > 0, f"lr must be positive, got {self.lr}")
        require(self.epochs >= 1, f"epochs must be at least 1, got {self.epochs}")
        require(self.dtype in SAE_DTYPES, f"SAE dtype must be one of {', '.join(SAE_DTYPES)}")


class SAE(nn.Module):
    def __init__(self, d_model: int, n_features: int, generator: torch.Generator) -> None:
        super().__init__()
        w = torch.randn(n_features, d_model, generator=generator)
        w = w / w.norm(dim=1, keepdim=True)
        self.W_enc = nn.Parameter(w.clone())  # [F, d]: row f reads feature f
        self.b_enc = nn.Parameter(torch.zeros(n_features))
        self.W_dec = nn.Parameter(w.clone())  # [F, d]: row f is feature f's direction
        self.b = nn.Parameter(torch.zeros(d_model))  # tied pre-encoder / post-decoder bias

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu((x - self.b) @ self.W_enc.T + self.b_enc)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return codes @ self.W_dec + self.b

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        codes = self.encode(x)
        return self.decode(codes), codes

    @torch.no_grad()
    def normalise(self) -> None:
        for w in (self.W_enc, self.W_dec):
            w.div_(w.norm(dim=1, keepdim=True).clamp_min(1e-12))


@dataclass(frozen=True)
class TrainedSAE:
    sae: SAE
    losses: tuple[float, ...]  # total loss every epoch
    mse: float  # final reconstruction MSE
    l0: float  # final mean number of active features per input


def train_sae(x: torch.Tensor, config: SAEConfig) -> TrainedSAE:
    """Train an SAE on x [n, d_model] full-batch, as the module docstring says."""
    require(x.dim() == 2 and len(x) > 0, f"SAE input must be [n, d_model], got {tuple(x.shape)}")
    x = x.float()
    gen = torch.Generator().manual_seed(config.seed)
    sae = SAE(x.shape[1], config.n_features, gen)
    with torch.no_grad():
        sae.b.copy_(x.mean(0))
    opt = torch.optim.Adam(sae.parameters(), lr=config.lr)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.dtype == "bfloat16")
    losses = []
    with torch.enable_grad():
        for _ in range(config.epochs):
            with autocast:
                x_hat, codes = sae(x)
            mse = (x_hat.float() - x).pow(2).mean()
            loss = mse + config.l1 * codes.float().abs().sum(1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sae.normalise()
            losses.append(float(loss.detach()))
    with torch.no_grad():
        x_hat, codes = sae(x)
        mse_final = float((x_hat - x).pow(2).mean())
        l0 = float((codes > 0).float().sum(1).mean())
    return TrainedSAE(sae=sae.eval(), losses=tuple(losses), mse=mse_final, l0=l0)


@torch.no_grad()
def discrete_codes(sae: SAE, x: torch.Tensor, *, chunk: int = 65536) -> torch.Tensor:
    """The index of the largest feature of each input: x [..., d_model] -> [...] int64."""
    flat = x.reshape(-1, x.shape[-1]).float()
    out = torch.empty(len(flat), dtype=torch.long)
    for start in range(0, len(flat), chunk):
        out[start : start + chunk] = sae.encode(flat[start : start + chunk]).argmax(-1)
    return out.view(x.shape[:-1])
