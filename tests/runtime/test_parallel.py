"""Data parallelism: 1 device and 8 devices train the same model; bf16 and remat do what they say.

The multi-device half runs this file as a script in ONE subprocess with 8 forced CPU devices
(XLA_FLAGS must be set before JAX starts), which saves its observations to a folder; the tests
compare them. The 1-device mesh in that process is the oracle for the 8-device mesh, both fed the
same global batches. The precision/remat half runs in the pytest process (one device).
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
DEVICES = 8


# ------------------------------------------------------------------------- the 8-device worker


def _worker(out: Path) -> None:
    """Everything that needs 8 devices, in one process so the compilations are shared."""
    sys.path.insert(0, str(REPO))
    import jax
    import optax

    from configs import smoke
    from jaxcerv.data import pipeline, splits
    from jaxcerv.evaluation import evaluate
    from jaxcerv.model import networks as model_lib
    from jaxcerv.runtime import parallel
    from jaxcerv.runtime.rundir import RunDir
    from jaxcerv.training import steps, train

    assert jax.device_count() == DEVICES, jax.devices()
    # Identical programs (the steps below and the ones _train_fold jits again) compile once.
    jax.config.update("jax_compilation_cache_dir", str(out / "jit_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)

    config = smoke.get_config()
    config.train.epochs = 1
    config.eval.num_heatmaps = 0
    # The default remat path over several chunks, the last padded: 16 patches -> 4 chunks of 5.
    config.model.remat, config.model.remat_chunk = True, 5
    config.data.data_dir = str(out / "tfds")
    source, records = pipeline.load(config, out)
    split = splits.make_splits(records, config.data, out, write=False)[0]
    train_idx = split["train"]
    meshes = {1: parallel.make_mesh(jax.devices()[:1]), DEVICES: parallel.make_mesh()}
    model, tx = model_lib.from_config(config), steps.make_optimizer(config)
    found: dict[str, object] = {}

    # Two train steps on the first global batch of epoch 1; the second repeats it with one row
    # masked, so it gathers regulators the first step wrote (by a batch-sharded index).
    (first,) = itertools.islice(
        pipeline.batches(source, train_idx, batch_size=config.train.batch_size, seed=config.seed,
                         epoch=1, shuffle=True, augment=False, drop_remainder=True),
        1,
    )
    second = {**first, "mask": first["mask"].copy()}
    second["mask"][3] = False
    eval_idx = np.arange(13)  # eval batch 8: the second batch has 3 padding rows
    images = np.stack([source[int(i)]["image"] for i in eval_idx])
    direct = jax.jit(lambda params: jax.nn.sigmoid(model.apply({"params": params}, images).logits))
    arrays: dict[str, np.ndarray] = {}
    for n, mesh in meshes.items():
        train_step, eval_step = steps.jit_steps(config, model, tx, mesh)
        state = parallel.replicated_init(  # as train._train_fold does
            functools.partial(steps.create_train_state, config, model, tx, len(train_idx)),
            mesh,
            jax.random.PRNGKey(config.seed),
        )
        for k, host_batch in enumerate((first, second), start=1):
            batch = parallel.to_global(host_batch, mesh)
            state, metrics = train_step(state, batch)
            host = parallel.to_host({"state": state, "metrics": metrics})
            for name, v in host["metrics"].items():
                arrays[f"{n}/step{k}/{name}"] = np.asarray(v)
            arrays[f"{n}/step{k}/regulators"] = host["state"].regulators
            if k == 1:  # Adam's first moment after one step is (1 - b1) * the gradient
                mu = optax.tree_utils.tree_get(host["state"].opt_state, "mu")
                for path, leaf in jax.tree_util.tree_flatten_with_path(mu)[0]:
                    arrays[f"{n}/grads/{jax.tree_util.keystr(path)}"] = leaf
        found[f"{n}/state_replicated"] = all(
            x.sharding.is_fully_replicated for x in jax.tree.leaves(state)
        )
        found[f"{n}/batch_rows_per_device"] = sorted(
            {s.data.shape[0] for s in batch["image"].addressable_shards}
        )
        pred = evaluate.predict_split(config, eval_step, state.params, source, eval_idx, mesh)
        for name, v in pred.items():
            arrays[f"{n}/eval/{name}"] = v
        # The oracle for the padded evaluation: all 13 images at once on one device, no mask.
        arrays[f"{n}/direct_probabilities"] = np.asarray(direct(jax.device_get(state.params)))
    np.savez(out / "arrays.npz", **arrays)

    for what, field in (("train", "batch_size"), ("eval", "batch_size")):
        bad = config.copy_and_resolve_references()
        bad[what][field] = 12
        try:
            if what == "train":
                train._train_fold(bad, RunDir(str(out / "uneven")), source, records, split,
                                  meshes[DEVICES])
            else:
                evaluate.predict_split(bad, eval_step, state.params, source, eval_idx,
                                    meshes[DEVICES])
            found[f"error/{what}"] = None
        except ValueError as e:
            found[f"error/{what}"] = str(e)

    # data.resident: the same global batches as the host pipeline, gathered on the 8 devices.
    from jaxcerv.training.resident import ResidentImages

    pool = ResidentImages(source, train_idx, meshes[DEVICES])
    for balanced in (False, True):
        labels = records.labels[train_idx] if balanced else None
        host = list(pipeline.batches(source, train_idx, batch_size=config.train.batch_size,
                                     seed=config.seed, epoch=2, shuffle=True, augment=False,
                                     drop_remainder=True, balance=labels))
        dev = list(pool.batches(batch_size=config.train.batch_size, seed=config.seed, epoch=2,
                                balance=labels))
        found[f"resident/equal/{balanced}"] = len(host) == len(dev) > 0 and all(
            np.array_equal(np.asarray(d[k]), h[k]) for h, d in zip(host, dev, strict=False)
            for k in h)
    found["resident/rows_per_device"] = sorted(
        {s.data.shape[0] for s in dev[0]["image"].addressable_shards})

    for n, mesh in meshes.items():
        train._train_fold(config, RunDir(str(out / f"run{n}")), source, records, split, mesh)
    (out / "found.json").write_text(json.dumps(found))


@pytest.fixture(scope="module")
def eight(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("eight_devices")
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} "
                     f"--xla_force_host_platform_device_count={DEVICES}",
    }
    proc = subprocess.run(
        [sys.executable, __file__, str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return out


@pytest.fixture(scope="module")
def arrays(eight) -> dict[str, np.ndarray]:
    with np.load(eight / "arrays.npz") as z:
        return dict(z)


@pytest.fixture(scope="module")
def found(eight) -> dict:
    return json.loads((eight / "found.json").read_text())


def _pairs(arrays, prefix):
    keys = sorted(k[len(f"1/{prefix}/"):] for k in arrays if k.startswith(f"1/{prefix}/"))
    assert keys, prefix
    return [(k, arrays[f"1/{prefix}/{k}"], arrays[f"{DEVICES}/{prefix}/{k}"]) for k in keys]


@pytest.mark.parametrize("step", [1, 2])
def test_loss_and_regulator_updates_match_one_device(arrays, step):
    for name, one, many in _pairs(arrays, f"step{step}"):
        np.testing.assert_allclose(many, one, rtol=1e-5, atol=1e-5, err_msg=name)
    assert float(arrays[f"1/step{step}/count"]) == (8 if step == 1 else 7)  # step 2 masks a row


def test_second_step_gathers_regulators_the_first_wrote(arrays):
    """Else the sharded gather would be untested: every row would still hold G0."""
    regs = arrays["1/step1/regulators"]
    assert float(arrays["1/step1/valid_fits"]) > 0
    assert np.unique(regs, axis=0).shape[0] > 1


def test_gradients_match_one_device(arrays):
    """Within 1e-5 of the largest gradient entry: a leaf that sums many cancelling per-patch terms
    (a bias) can differ more than 1e-5 relative to itself when the reduction order changes."""
    pairs = _pairs(arrays, "grads")
    scale = max(float(np.max(np.abs(one))) for _, one, _ in pairs)
    assert scale > 0
    for name, one, many in pairs:
        np.testing.assert_allclose(many, one, rtol=1e-5, atol=1e-5 * scale, err_msg=name)


def test_state_replicated_and_batch_split_over_devices(found):
    assert found["1/state_replicated"] and found[f"{DEVICES}/state_replicated"]
    assert found[f"{DEVICES}/batch_rows_per_device"] == [8 // DEVICES]
    assert found["1/batch_rows_per_device"] == [8]


def test_padded_eval_batch_is_masked_not_dropped(arrays):
    for n in (1, DEVICES):
        direct = arrays[f"{n}/direct_probabilities"]
        assert direct.shape == (13,)
        np.testing.assert_allclose(arrays[f"{n}/eval/probabilities"], direct, rtol=1e-5, atol=1e-6)
    for name, one, many in _pairs(arrays, "eval"):
        assert one.shape[0] == 13, name
        np.testing.assert_allclose(many, one, rtol=1e-5, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("what", ["train", "eval"])
def test_uneven_global_batch_says_what_to_change(found, what):
    message = found[f"error/{what}"]
    assert message is not None, "batch 12 over 8 devices was accepted"
    assert f"config.{what}.batch_size=12" in message
    assert f"{DEVICES} devices" in message
    assert "multiple of 8" in message and "8 or 16" in message


def _read_run(eight, n):
    run = eight / f"run{n}"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    results = json.loads((run / "results.json").read_text())
    return rows, results, np.load(run / "regulators" / "epoch_0001.npy")


def test_first_epoch_of_the_real_loop_matches_one_device(eight):
    rows1, results1, regs1 = _read_run(eight, 1)
    rows8, results8, regs8 = _read_run(eight, DEVICES)
    assert len(rows1) == len(rows8) == 1
    for key in ("train_loss", "train_bce", "train_spatial", "val_loss"):
        assert abs(rows8[0][key] - rows1[0][key]) <= 1e-4 * max(1.0, abs(rows1[0][key])), key
    np.testing.assert_allclose(regs8, regs1, rtol=1e-5, atol=1e-5)
    for n, results in ((1, results1), (DEVICES, results8)):
        runtime = results["runtime"]
        assert runtime["devices"] == n and runtime["processes"] == 1
        assert runtime["mesh_shape"] == {"data": n}


# ------------------------------------------------------------------------------ launching

_LAUNCH_ENV = (
    "SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID",
    "OMPI_COMM_WORLD_SIZE", "OMPI_MCA_orte_hnp_uri", "TPU_WORKER_HOSTNAMES",
    "TPU_PROCESS_ADDRESSES",
)


@pytest.fixture
def bare_env(monkeypatch):
    for k in _LAUNCH_ENV:
        monkeypatch.delenv(k, raising=False)
    return monkeypatch


@pytest.mark.parametrize(
    "env, want",
    [
        ({}, None),
        ({"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "n[1-2]", "SLURM_NTASKS": "4",
          "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}, "slurm"),
        # One srun task, or a batch script outside any srun step: a single process.
        ({"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "n1", "SLURM_NTASKS": "1",
          "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}, None),
        ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"}, None),
        ({"OMPI_COMM_WORLD_SIZE": "2", "OMPI_MCA_orte_hnp_uri": "1.0;tcp://10.0.0.1:5000"},
         "ompi"),
        ({"OMPI_COMM_WORLD_SIZE": "1"}, None),
        ({"TPU_WORKER_HOSTNAMES": "w0,w1"}, "tpu"),
    ],
)
def test_detect_cluster(bare_env, env, want):
    from jaxcerv.runtime import parallel
    for k, v in env.items():
        bare_env.setenv(k, v)
    assert parallel.detect_cluster() == want


def test_open_mpi_5_asks_for_the_three_flags(bare_env):
    from jaxcerv.runtime import parallel
    bare_env.setenv("OMPI_COMM_WORLD_SIZE", "2")  # Open MPI 5 sets no OMPI_MCA_orte_hnp_uri
    with pytest.raises(ValueError, match="Open MPI >= 5.*--coordinator.*--process_id"):
        parallel.detect_cluster()


@pytest.mark.parametrize(
    "flags",
    [
        {"coordinator": "127.0.0.1:1234"},
        {"coordinator": "127.0.0.1:1234", "num_processes": 2},
        {"num_processes": 2, "process_id": 0},
        {"coordinator": "127.0.0.1:1234", "num_processes": 2, "process_id": 2},
    ],
)
def test_incomplete_multiprocess_flags_name_all_three(bare_env, flags):
    from jaxcerv.runtime import parallel
    with pytest.raises(ValueError, match="--coordinator.*--num_processes.*--process_id"):
        parallel.initialize_distributed(**flags)


def test_single_process_needs_no_distributed_runtime(bare_env):
    from jaxcerv.runtime import parallel
    assert parallel.initialize_distributed() is False
    assert parallel.initialize_distributed("127.0.0.1:1234", 1, 0) is False


# ------------------------------------------------------------- precision and rematerialisation


def _eqns(jaxpr):
    """Every equation, nested ones (remat, pjit, custom_vjp bodies) included."""
    from jax.extend.core import jaxprs_in_params

    for e in jaxpr.eqns:
        yield e
        for sub in jaxprs_in_params(e.params):
            yield from _eqns(getattr(sub, "jaxpr", sub))


@functools.cache
def _variant(dtype: str, remat: bool):
    """(params, jaxpr of the gradient, loss, grads) of the train loss on a fixed batch."""
    import jax
    import jax.numpy as jnp

    from configs import smoke
    from jaxcerv.model import losses, regulator
    from jaxcerv.model import networks as model_lib
    from jaxcerv.runtime import parallel
    config = smoke.get_config()
    config.model.dtype, config.model.remat = dtype, remat
    model = model_lib.from_config(config)
    side = config.grid_size * config.patch_size
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.integers(0, 256, (4, side, side, 3), dtype=np.uint8))
    labels = jnp.array([0, 1, 1, 0])
    grid = (config.grid_size, config.grid_size)
    density = regulator.gaussian_density(
        jnp.tile(regulator.initial_params(grid), (4, 1)), grid
    )
    params = parallel.replicated_init(
        model.init, parallel.make_mesh(jax.devices()[:1]), jax.random.PRNGKey(0), images[:1]
    )["params"]

    def loss_fn(p):
        out = model.apply({"params": p}, images)
        bce = losses.classification_loss(out.logits, labels)
        return jnp.mean(bce + config.regulator.lam * regulator.spatial_loss(out.weights, density))

    traced = jax.jit(jax.value_and_grad(loss_fn)).trace(params)
    loss, grads = traced.lower().compile()(params)
    return params, traced.jaxpr.jaxpr, loss, grads


# bf16 rounds inputs and activations to 8 significant bits (relative error 2**-9 each); a few
# layers of that on a loss of ~0.8 stay well inside 1% (measured: 4e-4 relative).
BF16_LOSS_RTOL = 1e-2


def test_bf16_loss_close_to_fp32_with_fp32_params_loss_and_grads():
    import jax

    p32, _, l32, _ = _variant("float32", False)
    pbf, jaxpr, lbf, gbf = _variant("bfloat16", False)
    assert {x.dtype for x in jax.tree.leaves(pbf)} == {np.dtype(np.float32)}
    assert {x.dtype for x in jax.tree.leaves(gbf)} == {np.dtype(np.float32)}
    assert lbf.dtype == np.float32
    for a, b in zip(jax.tree.leaves(p32), jax.tree.leaves(pbf), strict=True):
        np.testing.assert_array_equal(a, b)  # same init: only the compute dtype differs
    assert abs(float(lbf) - float(l32)) <= BF16_LOSS_RTOL * abs(float(l32))
    assert float(lbf) != float(l32)  # it did compute in lower precision


def test_bf16_convs_and_matmuls_run_in_bf16():
    """Every Dense product (forward and both gradients) takes bfloat16 operands, and so do the
    convolutions except on CPU, where jaxcerv/model/conv.py computes the layers without a bfloat16
    product form in float32 (XLA:CPU's bfloat16 convolutions are slower than its float32 ones)."""
    import jax

    from configs import smoke

    _, jaxpr, _, _ = _variant("bfloat16", False)
    heavy = [e for e in _eqns(jaxpr) if e.primitive.name in ("conv_general_dilated", "dot_general")]
    dtypes = [{str(v.aval.dtype) for v in e.invars} for e in heavy]
    m = smoke.get_config().model
    dense_layers = len(m.weight_hidden) + len(m.classifier_hidden) + 2
    assert dtypes.count({"bfloat16"}) >= 3 * dense_layers
    if jax.default_backend() != "cpu":
        assert all(d == {"bfloat16"} for d in dtypes)


REMAT_PRIMITIVES = ("remat2", "checkpoint")  # jax.checkpoint's primitive, by jax version


def test_remat_recomputes_the_encoder_and_gives_the_same_gradients():
    import jax

    _, plain_jaxpr, l_plain, g_plain = _variant("float32", False)
    _, remat_jaxpr, l_remat, g_remat = _variant("float32", True)
    assert not any(e.primitive.name in REMAT_PRIMITIVES for e in _eqns(plain_jaxpr))
    assert any(e.primitive.name in REMAT_PRIMITIVES for e in _eqns(remat_jaxpr))
    np.testing.assert_allclose(l_remat, l_plain, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g_remat), jax.tree.leaves(g_plain), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))


@pytest.mark.parametrize("balanced", [False, True])
def test_resident_data_gives_the_host_pipelines_batches_sharded_over_devices(found, balanced):
    assert found[f"resident/equal/{balanced}"] is True
    assert found["resident/rows_per_device"] == [1]  # smoke: batch 8 over 8 devices


def test_lost_peer_names_the_other_process_only_for_a_dead_peer(monkeypatch):
    import jax

    from jaxcerv.runtime import parallel
    from jaxcerv.runtime.rundir import RunError

    gone = jax.errors.JaxRuntimeError("UNKNOWN: Gloo all-reduce failed: [pair.cc:547] Connection "
                                      "closed by peer [127.0.0.1]:34742")
    wrapped = RunError("saving W/checkpoints/latest/2 failed")  # e.g. orbax's save wraps it
    wrapped.__cause__ = gone
    other = jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: out of memory")
    assert parallel.lost_peer(gone) is None  # one process: no peer to lose
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    for e in (gone, wrapped):
        (line,) = str(parallel.lost_peer(e)).splitlines()
        assert line.startswith("process 1: lost process 0 of this run (UNKNOWN: Gloo all-reduce")
    assert parallel.lost_peer(other) is None and parallel.lost_peer(ValueError("x")) is None
