"""jaxcerv's network and train step in PyTorch: the peer that ``throughput.py --peers`` times.

Same architecture and FLOPs as ``jaxcerv.model.networks.PatchWiseModel`` with mean aggregation:
patchify,
three 3x3 SAME conv -> ReLU -> 2x2 max-pool layers, flattened in (row, column, channel) order as
ours, the weight MLP with a sigmoid, the weighted mean of the patch features, the optional
LayerNorm, the classifier. The train step is ours too: BCE + lambda * spatial loss against the
batch's regulator densities, Adam, and the regulator fit from the detached patch weights.
``load_flax_params`` copies our parameters in, so the two forwards can be compared value for value
(tests/test_peers.py).

A variant is a name: ``torch`` (eager, NCHW, float32) plus any of ``+cl`` (channels_last),
``+bf16`` (``torch.autocast`` to bfloat16 on the CPU: oneDNN's AVX512-BF16 convolutions and
matmuls) and ``+compile`` (``torch.compile``, inductor).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

VARIANT_FLAGS = ("cl", "bf16", "compile")
# The peer table: every configuration a PyTorch user would reasonably pick.
DEFAULT_VARIANTS = (
    "torch",
    "torch+cl",
    "torch+compile",
    "torch+cl+bf16",
    "torch+compile+cl+bf16",
)


def parse_variant(name: str) -> frozenset[str]:
    """``torch+cl+bf16`` -> {"cl", "bf16"}; a clear error for anything else."""
    head, *flags = name.split("+")
    bad = [f for f in flags if f not in VARIANT_FLAGS]
    if head != "torch" or bad:
        raise ValueError(
            f"peer {name!r}: write 'torch' followed by any of +{', +'.join(VARIANT_FLAGS)}"
        )
    return frozenset(flags)


def mlp(dims: Sequence[int], dropout: float = 0.0) -> nn.Sequential:
    """Linear layers ``dims[0] -> ... -> dims[-1]``, ReLU (and dropout) between them."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2:
            layers.append(nn.ReLU())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class PatchWise(nn.Module):
    """``PatchWiseModel`` (mean aggregation) on uint8 images (B, S, S, 3)."""

    def __init__(self, model_config: Any, patch_size: int, grid_size: int,
                 channels_last: bool = False) -> None:
        super().__init__()
        m = model_config
        if m.aggregation != "mean":
            raise ValueError(
                f"config.model.aggregation={m.aggregation!r}: the PyTorch peer implements 'mean'"
            )
        self.patch_size, self.grid_size, self.channels_last = patch_size, grid_size, channels_last
        chans = (3, *m.conv_features)
        self.convs = nn.ModuleList(
            nn.Conv2d(a, b, 3, padding=1) for a, b in zip(chans[:-1], chans[1:], strict=True)
        )
        side = patch_size
        for _ in m.conv_features:
            side //= 2
        feat = side * side * chans[-1]
        self.weight_mlp = mlp((feat, *m.weight_hidden, 1))
        self.feature_norm = nn.LayerNorm(feat, eps=1e-6) if m.feature_norm else None
        self.classifier = mlp((feat, *m.classifier_hidden, 1), m.dropout)

    def patches(self, images: torch.Tensor) -> torch.Tensor:
        """(B, R*P, R*P, 3) uint8 -> (B*R*R, 3, P, P) normalised float32, row-major patches."""
        b, p, r = images.shape[0], self.patch_size, self.grid_size
        x = images.reshape(b, r, p, r, p, 3)
        if self.channels_last:  # NHWC in memory, an NCHW view
            x = x.permute(0, 1, 3, 2, 4, 5).reshape(b * r * r, p, p, 3).permute(0, 3, 1, 2)
        else:
            x = x.permute(0, 1, 3, 5, 2, 4).reshape(b * r * r, 3, p, p)
        return (x.float() - 127.5) / 64.0

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> logits (B,), patch weights (B, R, R), image features (B, F), all float32."""
        b, r = images.shape[0], self.grid_size
        x = self.patches(images)
        for conv in self.convs:
            x = F.max_pool2d(F.relu(conv(x)), 2)
        g = x.permute(0, 2, 3, 1).reshape(b, r * r, -1)  # (row, column, channel) as ours
        a = torch.sigmoid(self.weight_mlp(g).float())  # (B, K, 1)
        f = (a.to(g.dtype) * g).mean(dim=1)
        if self.feature_norm is not None:
            f = self.feature_norm(f)
        logits = self.classifier(f)[:, 0].float()
        return logits, a[..., 0].reshape(b, r, r), f.float()


def load_flax_params(model: PatchWise, params: Any) -> None:
    """Copy a ``PatchWiseModel`` parameter tree (non-"xla" or "xla" conv names alike) in."""

    def t(x: Any) -> torch.Tensor:
        return torch.from_numpy(np.array(x, np.float32))

    def dense(seq: nn.Sequential, tree: Any) -> None:
        linears = [m for m in seq if isinstance(m, nn.Linear)]
        for i, lin in enumerate(linears):
            lin.weight.copy_(t(tree[f"Dense_{i}"]["kernel"]).T)
            lin.bias.copy_(t(tree[f"Dense_{i}"]["bias"]))

    with torch.no_grad():
        for i, conv in enumerate(model.convs):
            layer = params["encoder"][f"Conv_{i}"]
            conv.weight.copy_(t(layer["kernel"]).permute(3, 2, 0, 1))  # HWIO -> OIHW
            conv.bias.copy_(t(layer["bias"]))
        dense(model.weight_mlp, params["weight_mlp"])
        dense(model.classifier, params["classifier"])
        if model.feature_norm is not None:
            model.feature_norm.weight.copy_(t(params["feature_norm"]["scale"]))
            model.feature_norm.bias.copy_(t(params["feature_norm"]["bias"]))


def _centres(grid: int) -> tuple[torch.Tensor, torch.Tensor]:
    v, h = torch.meshgrid(torch.arange(grid) + 0.5, torch.arange(grid) + 0.5, indexing="ij")
    return h, v


def _min_max(x: torch.Tensor) -> torch.Tensor:
    lo = x.amin(dim=(-2, -1), keepdim=True)
    hi = x.amax(dim=(-2, -1), keepdim=True)
    return (x - lo) / (hi - lo).clamp_min(1e-12)


def fit_gaussian(weights: torch.Tensor) -> torch.Tensor:
    """``regulator.fit_gaussian``: weighted mean and covariance of the patch centres."""
    h, v = _centres(weights.shape[-1])
    total = weights.sum(dim=(-2, -1))

    def moment(x: torch.Tensor) -> torch.Tensor:
        return (weights * x).sum(dim=(-2, -1)) / total

    mu_h, mu_v = moment(h), moment(v)
    dh, dv = h - mu_h[:, None, None], v - mu_v[:, None, None]
    return torch.stack([mu_h, mu_v, moment(dh * dh), moment(dh * dv), moment(dv * dv)], -1)


class Peer:
    """One PyTorch variant with a fixed batch: ``run_train`` / ``run_infer`` do one step each,
    as ``throughput.Case`` does for ours; compile time (first steps) is kept apart."""

    def __init__(self, config: Any, name: str, host_batch: dict[str, np.ndarray],
                 density: np.ndarray, params: Any | None = None) -> None:
        flags = parse_variant(name)
        self.impl = name
        self.framework = f"torch {torch.__version__}"
        self.dtype = "bfloat16 autocast" if "bf16" in flags else "float32"
        torch.manual_seed(config.seed)
        model = PatchWise(config.model, config.patch_size, config.grid_size, "cl" in flags)
        if params is not None:
            load_flax_params(model, params)
        if "cl" in flags:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.forward = torch.compile(model) if "compile" in flags else model
        self.bf16 = "bf16" in flags
        self.opt = torch.optim.Adam(model.parameters(), lr=config.train.learning_rate)
        self.lam = config.regulator.lam if config.regulator.mode != "none" else 0.0
        self.images = torch.from_numpy(host_batch["image"])
        self.labels = torch.from_numpy(host_batch["label"]).float()
        self.density = torch.from_numpy(np.array(density, np.float32))
        self.compile_s: dict[str, float] = {}
        self.times: dict[str, list[float]] = {"train": [], "infer": []}

    def _autocast(self) -> Any:
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16)

    def run_train(self) -> torch.Tensor:
        self.model.train()
        self.opt.zero_grad(set_to_none=True)
        with self._autocast():
            logits, weights, _ = self.forward(self.images)
        bce = F.binary_cross_entropy_with_logits(logits, self.labels, reduction="none")
        spatial = (1.0 - _min_max(weights) * _min_max(self.density)).sum(dim=(-2, -1))
        loss = (bce + self.lam * spatial).mean()
        loss.backward()
        self.opt.step()
        fit_gaussian(weights.detach())
        return loss

    def run_infer(self) -> torch.Tensor:
        self.model.eval()
        with torch.inference_mode(), self._autocast():
            logits, weights, _ = self.forward(self.images)
            fit_gaussian(weights)
            return torch.sigmoid(logits)

    def compile(self, what: Sequence[str]) -> None:
        """The first steps, timed apart: ``torch.compile`` traces and builds its kernels here."""
        for w in what:
            t = time.perf_counter()
            self.run_train() if w == "train" else self.run_infer()
            self.compile_s[w] = time.perf_counter() - t
