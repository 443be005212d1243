"""The PyTorch peer (benchmarks/peers) is our network: same weights in, same outputs out.

Oracle: ``jaxcerv.model.networks.PatchWiseModel`` itself, with the reference "xla" layers and
float32; its
parameters are copied into the peer. Both compute in float32 with different summation orders,
so outputs agree to ~1e-6 of their scale; 1e-4 leaves room while a transposed kernel, a wrong
flatten order or a missing bias is off by O(1). Skipped, with the reason, without PyTorch.
"""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip(
    "torch", reason="PyTorch is not installed: pip install -e '.[peers]' to test the peer"
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.peers import torch_peer  # noqa: E402
from configs import smoke  # noqa: E402
from jaxcerv.model import networks as model_lib  # noqa: E402


def _close(a, b, rtol=1e-4):
    scale = max(float(np.max(np.abs(b))), 1e-6)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=rtol * scale)


@pytest.fixture(scope="module")
def case():
    config = smoke.get_config()
    config.model.conv_impl, config.model.remat = "xla", False
    model = model_lib.from_config(config)
    side = config.grid_size * config.patch_size
    images = np.random.default_rng(0).integers(0, 256, (3, side, side, 3), dtype=np.uint8)
    params = model.init(jax.random.PRNGKey(0), jnp.asarray(images))["params"]
    # Non-zero biases and LayerNorm offsets, so that a bias left out shows.
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    params = jax.tree.unflatten(
        tree, [p + 0.05 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys, strict=True)]
    )
    return config, images, params, model.apply({"params": params}, jnp.asarray(images))


@pytest.mark.parametrize("channels_last", [False, True])
def test_peer_forward_matches_ours(case, channels_last):
    config, images, params, ours = case
    peer = torch_peer.PatchWise(config.model, config.patch_size, config.grid_size, channels_last)
    torch_peer.load_flax_params(peer, params)
    with torch.no_grad():
        logits, weights, features = peer(torch.from_numpy(images))
    _close(logits.numpy(), ours.logits)
    _close(weights.numpy(), ours.weights)
    _close(features.numpy(), ours.features)


def test_peer_regulator_fit_is_ours(case):
    from jaxcerv.model import regulator
    _, _, _, ours = case
    got = torch_peer.fit_gaussian(torch.from_numpy(np.asarray(ours.weights)))
    _close(got.numpy(), regulator.fit_gaussian(ours.weights), 1e-5)


def test_peer_train_step_runs_and_learns(case):
    """One Adam step of the peer's train step changes the parameters and gives a finite loss."""
    config, images, params, _ = case
    host = {"image": images, "label": np.array([0, 1, 1], np.int32)}
    density = np.ones((3, config.grid_size, config.grid_size), np.float32)
    peer = torch_peer.Peer(config, "torch+cl+bf16", host, density, params)
    before = [p.detach().clone() for p in peer.model.parameters()]
    loss = peer.run_train()
    assert np.isfinite(float(loss))
    assert any(not torch.equal(a, b) for a, b in zip(before, peer.model.parameters(), strict=True))
    assert peer.run_infer().shape == (3,)


def test_unknown_peer_variant_is_refused():
    with pytest.raises(ValueError, match="followed by any of"):
        torch_peer.parse_variant("torch+fast")
