"""Images/s of the jitted train step and of inference at a config's scale, with FLOP accounting.

    python benchmarks/throughput.py --config=configs/paper.py [--batch 4] [--dtype float32|bfloat16]
        [--impls s2d,s2d+remat=false,xla+remat=false] [--json] [--nopredict]
    jaxcerv bench --config=paper [the same flags]      # the same, from the jaxcerv command

Times jaxcerv's own jitted train and eval steps (``steps.jit_steps``, compiled with
``conv.compiler_options`` for the conv implementation) on synthetic in-memory images put on the
device once, so neither grain nor TFDS is needed (on a machine without them, the data modules are
stubbed; the steps never touch them). Compilation is timed apart; steady state is the median
over ``--repeats`` timed repeats of ``--steps`` back-to-back steps, after ``--warmup`` untimed
ones. ``--impls`` takes several ``config.model.conv_impl`` values and times them interleaved in one
process, so their ratios are fair on a noisy machine; ``IMPL+KEY=VALUE`` also sets
``config.model.KEY`` for that variant (``s2d+remat=false``; a dotted KEY sets that field of the
config: ``s2d+regulator.reaches=encoder``), ``IMPL@OPTS`` its XLA options.

FLOP count (analytic; a multiply-add is 2 FLOPs), per P x P patch, layer l = 1..L:
    convs:      sum_l 2 * s_l^2 * 9 * c_{l-1} * c_l,  s_1 = P, s_{l+1} = s_l // 2, c_0 = 3
    weight MLP: 2 * sum_i d_i * d_{i+1},  d = ((s_L // 2)^2 * c_L, *weight_hidden, 1)
times the patches per image (grid_size^2); a training image counts 3x (forward, and the backward
products for activations and for weights). Biases, pooling, the classifier and the regulator are
left out (< 0.1%). Paper scale: 4.18 MFLOP per patch, 7.38 GFLOP per image for inference, 22.1 for
training. GFLOP/s = that count x images/s.

Also reported: the end-to-end latency of ``jaxcerv.inference.predict.Predictor.predict`` on one
2400x1600
JPEG (decode + resize with ``jaxcerv.data.images``, forward, heatmap PNG), how fast one CPU thread
decodes such JPEGs and how fast batches reach the device (is the input pipeline the bottleneck?),
peak host RSS and, on GPUs, peak device memory. Results go to ``--out`` (default the untracked
runs/bench; --out=benchmarks/results to add to the committed ones) as one JSON per run, and
``--out``/results.md is rebuilt as a table of every JSON there.
"""

from __future__ import annotations

import copy
import datetime
import glob
import gzip
import itertools
import json
import os
import platform
import re
import resource
import shlex
import statistics
import sys
import tempfile
import time
import types
from typing import Any

from absl import app, flags
from ml_collections import config_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _stub_data_modules() -> None:
    """The GPU image has neither grain nor TFDS; the steps timed here never use them."""
    for dep in ("grain", "tensorflow_datasets"):
        try:
            __import__(dep)
        except ImportError:
            for name in ("jaxcerv.data.pipeline", "jaxcerv.data.builders"):
                sys.modules.setdefault(name, types.ModuleType(name))
            return


_stub_data_modules()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jaxcerv.cli import common  # noqa: E402
from jaxcerv.data import images  # noqa: E402
from jaxcerv.inference import predict  # noqa: E402
from jaxcerv.model import conv, regulator  # noqa: E402
from jaxcerv.model import networks as model_lib  # noqa: E402
from jaxcerv.runtime import parallel  # noqa: E402
from jaxcerv.training import configcheck, steps  # noqa: E402
from jaxcerv.training.resident import ResidentImages  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", os.path.join(ROOT, "configs/paper.py"))
_BATCH = flags.DEFINE_integer("batch", 4, "global batch (images per step)")
_DTYPE = flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"], "compute dtype; default: config")
_IMPLS = flags.DEFINE_list(
    "impls", None, "conv implementations to time (default: config's); IMPL@OPTS picks XLA_OPTIONS, "
    "IMPL+KEY=VALUE sets config.model.KEY for that variant (a dotted KEY: that config field)"
)
_REPEATS = flags.DEFINE_integer("repeats", 5, "timed repeats; the median is reported")
_STEPS = flags.DEFINE_integer("steps", 2, "steps per timed repeat, dispatched back to back")
_WARMUP = flags.DEFINE_integer("warmup", 1, "untimed steps after compilation")
_WHAT = flags.DEFINE_list("what", ["train", "infer"], "which steps to time")
_PREDICT = flags.DEFINE_bool("predict", True, "time predict() end to end on one 2400x1600 JPEG")
_JSON = flags.DEFINE_bool("json", False, "print one JSON object instead of a table")
_OUT = flags.DEFINE_string(
    "out", os.path.join(ROOT, "runs/bench"), "folder for the result JSONs and results.md; '' none"
)
_TAG = flags.DEFINE_string("tag", "", "extra words for the result's file name and table row")
_PEERS = flags.DEFINE_bool(
    "peers", False, "also time the PyTorch peer (benchmarks/peers), interleaved with ours"
)
_RESIDENT = flags.DEFINE_integer(
    "resident", 0, "also train from N uint8 images kept on the device, each step's batch gathered "
    "there (no host->device copy per step; the paper's 978 images at 1176 px are 4.1 GB)"
)
_PROFILE = flags.DEFINE_integer(
    "profile", 0, "also trace N train steps of the first variant with jax.profiler and report the "
    "device (or host) ops that took the most time per step (the trace stays in --profile_dir)"
)
_PROFILE_DIR = flags.DEFINE_string("profile_dir", "", "where --profile's trace goes; '' a temp dir")
_PEER_VARIANTS = flags.DEFINE_list(
    "peer_variants", None, "PyTorch variants for --peers (default: the five of the issue's table)"
)

# "--impls=s2d@ynn" times impl s2d compiled with these options instead of conv.compiler_options's.
XLA_OPTIONS: dict[str, dict[str, str] | None] = {
    "default": None,
    "ynn": None,
    "eigen": {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"},
    "noynn": {"xla_cpu_experimental_ynn_fusion_type": ""},
}

# Dense bf16 tensor-core peak (FLOP/s) by device kind, for "% of peak" on GPUs.
BF16_PEAK = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def flops_per_image(config: Any) -> dict[str, float]:
    """The analytic count of the module docstring -> {"infer": FLOP, "train": FLOP} per image."""
    m = config.model
    side, c_in, per_patch = config.patch_size, 3, 0
    for c_out in m.conv_features:
        per_patch += 2 * side * side * 9 * c_in * c_out
        side, c_in = side // 2, c_out
    dims = (side * side * c_in, *m.weight_hidden, 1)
    per_patch += 2 * sum(a * b for a, b in zip(dims[:-1], dims[1:], strict=True))
    infer = float(per_patch * config.grid_size**2)
    return {"infer": infer, "train": 3.0 * infer}


def machine() -> dict[str, Any]:
    """What ran the benchmark, in words and in fields."""
    dev = jax.devices()[0]
    info: dict[str, Any] = {
        "platform": dev.platform,
        "device_kind": dev.device_kind,
        "devices": jax.device_count(),
        "processes": jax.process_count(),
        "host": platform.node(),
        "jax": jax.__version__,
        "cpu_threads": len(os.sched_getaffinity(0)),
    }
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
        model = re.search(r"model name\s*:\s*(.*)", text)
        cpu_flags = set(re.search(r"flags\s*:\s*(.*)", text).group(1).split())
        info["cpu"] = model.group(1).strip() if model else platform.processor()
        info["avx512f"] = "avx512f" in cpu_flags
        info["avx512_bf16"] = "avx512_bf16" in cpu_flags
    except (OSError, AttributeError):
        info["cpu"] = platform.processor()
    isa = "no AVX-512"
    if info.get("avx512f"):
        isa = "AVX-512" + (" BF16" if info.get("avx512_bf16") else "")
    cpu = f"{info['cpu']} ({isa}), {info['cpu_threads']} threads"
    gpu = f"{jax.device_count()}x {dev.device_kind}; {cpu}"
    info["name"] = cpu if dev.platform == "cpu" else gpu
    return info


def _median_rate(times: list[float], images: int) -> tuple[float, float]:
    t = statistics.median(times)
    return images / t, t


def _time(fn, repeats_out: list[float], steps: int) -> None:
    t = time.perf_counter()
    out = None
    for _ in range(steps):
        out = fn()
    jax.block_until_ready(out)
    repeats_out.append(time.perf_counter() - t)


class Case:
    """One conv implementation: compiled train and eval steps and their state."""

    def __init__(self, config: Any, impl: str, batch: dict[str, jax.Array], mesh: Any) -> None:
        self.config = config = copy.deepcopy(config)
        name, _, opts = impl.partition("@")
        name, *overrides = name.split("+")
        config.model.conv_impl = name
        for item in overrides:  # "+remat_chunk=144": a config.model field for this variant,
            key, _, value = item.partition("=")  # "+regulator.reaches=encoder": any dotted field
            dotted = key if "." in key else f"model.{key}"
            if not configcheck.has_key(config, dotted):
                raise app.UsageError(
                    f"--impls {impl!r}: {configcheck.unknown_key_message(dotted, config)}")
            *parents, leaf = dotted.split(".")
            node = config
            for part in parents:
                node = node[part]
            node[leaf] = type(node[leaf])(_parse(value))
        self.impl = impl
        self.batch = batch
        self.model = model_lib.from_config(config)
        self.options = conv.compiler_options(name) if not opts else XLA_OPTIONS[opts]
        tx = steps.make_optimizer(config)
        b = batch["image"].shape[0]
        self.state = steps.create_train_state(config, self.model, tx, b, jax.random.PRNGKey(0))
        self.state = jax.device_put(self.state, parallel.replicated(mesh))
        # train's own jitted steps (shardings, donation); compiled below with this impl's options.
        self.train_jit, self.eval_jit = steps.jit_steps(config, self.model, tx, mesh)
        self.times: dict[str, list[float]] = {"train": [], "infer": []}
        self.compile_s: dict[str, float] = {}

    def compile(self, what: list[str]) -> None:
        if "train" in what:
            t = time.perf_counter()
            self.train_step = self.train_jit.lower(self.state, self.batch).compile(self.options)
            self.compile_s["train"] = time.perf_counter() - t
        if "infer" in what:
            t = time.perf_counter()
            lowered = self.eval_jit.lower(self.state.params, self.batch)
            self.eval_step = lowered.compile(self.options)
            self.compile_s["infer"] = time.perf_counter() - t

    def run_train(self) -> Any:
        self.state, metrics = self.train_step(self.state, self.batch)
        return metrics

    def run_infer(self) -> Any:
        return self.eval_step(self.state.params, self.batch)


def _parse(value: str) -> Any:
    return {"true": True, "false": False}.get(value.lower(), value)


def _jpeg(path: str, width: int = 2400, height: int = 1600) -> None:
    """A smooth colour field plus noise, so the JPEG has a realistic size and decode cost."""
    from PIL import Image

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([x / width, y / height, 0.5 + 0.5 * np.sin(x / 97.0 + y / 53.0)], -1)
    px = np.clip(base * 200 + rng.normal(0, 12, (height, width, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(px).save(path, quality=90)


def predict_latency(config: Any, params: Any, repeats: int) -> dict[str, Any]:
    """``Predictor.predict`` on one 2400x1600 JPEG, end to end, and its parts."""

    from jaxcerv.reporting import viz
    config = copy.deepcopy(config)
    config.eval.batch_size = 1  # one file: no padding to a larger batch
    predictor = predict.Predictor(config, params, threshold=0.5)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "cervix.jpg")
        _jpeg(path)
        out_dir = os.path.join(tmp, "out")
        t = time.perf_counter()
        predictor.predict([path], out_dir)  # compiles
        first = time.perf_counter() - t
        parts: dict[str, list[float]] = {
            k: [] for k in ("total", "decode_resize", "forward", "heatmap")
        }
        for _ in range(repeats):
            t = time.perf_counter()
            result = predictor.predict([path], out_dir)[0]
            parts["total"].append(time.perf_counter() - t)
            t = time.perf_counter()
            pixels = predictor.load(path)
            parts["decode_resize"].append(time.perf_counter() - t)
            t = time.perf_counter()
            pred = predictor.predict_arrays(pixels[None])
            parts["forward"].append(time.perf_counter() - t)
            t = time.perf_counter()
            overlay = viz.overlay_array(
                pixels, pred["weights"][0], regulator=pred["regulators"][0],
                patch_size=config.patch_size,
            )
            predict.save_png(overlay, os.path.join(tmp, "heat.png"))
            parts["heatmap"].append(time.perf_counter() - t)
        if "error" in result:
            raise RuntimeError(result["error"])
        side = config.grid_size * config.patch_size
        decode = _decode_rate(path, side, config)
    return {
        "image": "2400x1600 JPEG",
        "first_call_s": first,
        **{f"{k}_s": statistics.median(v) for k, v in parts.items()},
        "decode_img_per_s_one_thread": decode,
    }


def _decode_rate(path: str, side: int, config: Any, n: int = 5) -> float:
    t = time.perf_counter()
    for _ in range(n):
        images.load_image(path, image_size=side, patch_size=config.patch_size)
    return n / (time.perf_counter() - t)


def h2d_rate(batch: np.ndarray, mesh: Any, repeats: int = 5) -> float:
    """Images/s that a uint8 batch reaches the devices (host -> device copy)."""
    sharding = parallel.batch_sharding(mesh)
    jax.block_until_ready(jax.device_put(batch, sharding))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(jax.device_put(batch, sharding))
        times.append(time.perf_counter() - t)
    return len(batch) / statistics.median(times)


def dot_limits(n: int = 4096, repeats: int = 5) -> dict[str, float]:
    """GFLOP/s of an n x n x n matrix product in float32 and in bfloat16 with float32 accumulation
    (the form that reaches AVX512-BF16 units or tensor cores): the ceiling for this model, whose
    FLOPs are all convolutions and matrix products."""
    out = {}
    for name, dtype in (("f32_dot_gflops", jnp.float32), ("bf16_dot_gflops", jnp.bfloat16)):
        a = jnp.ones((n, n), dtype)
        dot = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32))
        jax.block_until_ready(dot(a, a))
        times: list[float] = []
        for _ in range(repeats):
            _time(lambda a=a, dot=dot: dot(a, a), times, 1)
        out[name] = 2 * n**3 / statistics.median(times) / 1e9
    return out


def resident_rate(case: Case, n: int, mesh: Any, repeats: int) -> dict[str, float]:
    """Train steps fed by ``config.data.resident`` (``jaxcerv.training.resident``) from ``n`` images
    on the
    device: a batch of indices (a few bytes) goes over, the gather runs on the device, then
    ``case``'s train step."""
    cfg, b = case.config, case.batch["image"].shape[0]
    side = cfg.grid_size * cfg.patch_size
    rng = np.random.default_rng(1)
    source = [{"image": rng.integers(0, 256, (side, side, 3), dtype=np.uint8), "label": i % 2,
               "grade": 0} for i in range(n)]
    pool = ResidentImages(source, np.arange(n), mesh)
    batches = itertools.chain.from_iterable(
        pool.batches(batch_size=b, seed=0, epoch=e) for e in itertools.count(1))

    def step() -> Any:
        batch = next(batches)
        batch.pop("grade")  # the timed step was compiled for the fields of `run`'s batch
        case.state, metrics = case.train_step(case.state, batch)
        return metrics

    jax.block_until_ready(step())
    times: list[float] = []
    for _ in range(repeats):
        _time(step, times, 1)
    return {"resident_images": n, "resident_mb": pool.nbytes / 2**20,
            "resident_train_img_per_s": b / statistics.median(times)}


def make_peers(config: Any, host: dict[str, np.ndarray]) -> list[Any]:
    """The PyTorch peer's variants on the same batch and regulators (G0), or none, with a line
    saying why, when PyTorch is not installed."""
    try:
        import torch

        from benchmarks.peers import torch_peer
    except ImportError:
        print("--peers: PyTorch is not installed, so only jaxcerv is timed; install the peer "
              "with: pip install -e '.[peers]'")
        return []
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    grid = (config.grid_size, config.grid_size)
    g0 = jnp.tile(regulator.initial_params(grid), (len(host["image"]), 1))
    density = np.asarray(regulator.gaussian_density(g0, grid))
    variants = _PEER_VARIANTS.value or torch_peer.DEFAULT_VARIANTS
    return [torch_peer.Peer(config, name, host, density) for name in variants]


def vs_best_peer(rows: list[dict[str, Any]], cases: list[Any], what: list[str]) -> dict[str, Any]:
    """Each of our rows against the fastest peer variant, per metric: the ratio of the medians,
    and the median of the per-repeat ratios (a repeat times every case back to back, so the
    machine's load cancels)."""
    peers = [i for i, case in enumerate(cases) if not isinstance(case, Case)]
    if not peers:
        return {}
    best = {}
    for w in what:
        j = max(peers, key=lambda i: rows[i][f"{w}_img_per_s"])
        best[w] = {"impl": rows[j]["conv_impl"], "img_per_s": rows[j][f"{w}_img_per_s"]}
        for i, case in enumerate(cases):
            if i not in peers:
                rows[i][f"{w}_vs_best_peer"] = rows[i][f"{w}_img_per_s"] / best[w]["img_per_s"]
                per_repeat = [p / o for p, o in zip(cases[j].times[w], case.times[w], strict=True)]
                rows[i][f"{w}_vs_best_peer_per_repeat"] = statistics.median(per_repeat)
    return {"best_peer": best}


def profile_ops(fn, steps: int, log_dir: str, top: int = 25) -> dict[str, Any]:
    """Trace ``steps`` calls of ``fn`` and sum each op's time per step from the Perfetto trace:
    the GPU's kernels where there is a device process, else the host's XLA thunks. Why: the
    steady-state rate says how slow a step is, this says which kernels make it so.

    ``busy_ms_per_step`` is the time covered by at least one op, ``untraced_ms_per_step`` the
    rest of the traced span. On XLA:CPU the latter is mostly real work, not idling: Eigen
    convolutions run asynchronously and their events cover only the launch (tens of
    microseconds), so their time shows up there and not under their names."""
    jax.block_until_ready(fn())
    t = time.perf_counter()
    with jax.profiler.trace(log_dir, create_perfetto_trace=True):
        for _ in range(steps):
            out = fn()
        jax.block_until_ready(out)
    wall = (time.perf_counter() - t) / steps
    path = max(glob.glob(os.path.join(log_dir, "**", "perfetto_trace.json.gz"), recursive=True),
               key=os.path.getmtime)
    with gzip.open(path) as f:
        trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    procs = {e["pid"]: e["args"]["name"] for e in events
             if e.get("ph") == "M" and e.get("name") == "process_name"}
    device = {pid for pid, name in procs.items() if name.startswith("/device:")}
    keep = device or set(procs)
    total: dict[str, float] = {}
    calls: dict[str, int] = {}
    spans = []
    for e in events:
        name = e.get("name", "")
        # On the host, only XLA's ops (they carry "hlo_op"), not Python frames or PjRt calls.
        xla_op = bool(device) or "hlo_op" in (e.get("args") or {})
        if e.get("ph") == "X" and e.get("pid") in keep and "dur" in e and xla_op:
            total[name] = total.get(name, 0.0) + e["dur"] / 1e3
            calls[name] = calls.get(name, 0) + 1
            spans.append((e["ts"] / 1e3, (e["ts"] + e["dur"]) / 1e3))
    op_ms = sum(total.values()) / steps
    ranked = sorted(total, key=total.get, reverse=True)[:top]
    return {
        "steps": steps, "trace": path, "source": "device" if device else "host",
        "wall_ms_per_step": 1e3 * wall, "op_ms_per_step": op_ms,
        **_coverage(spans, steps),
        "top": [{"op": k[:160], "ms_per_step": total[k] / steps, "calls_per_step":
                 calls[k] / steps, "share": total[k] / steps / op_ms} for k in ranked],
    }


def _coverage(spans: list[tuple[float, float]], steps: int) -> dict[str, float]:
    """Per step: the time (ms) covered by at least one of the (start, end) spans, and the rest of
    their overall extent."""
    spans = sorted(spans)
    busy, (start, end) = 0.0, spans[0]
    for s, e in spans[1:]:
        if s > end:
            busy, start, end = busy + end - start, s, e
        else:
            end = max(end, e)
    busy += end - start
    extent = max(e for _, e in spans) - spans[0][0]
    return {"busy_ms_per_step": busy / steps, "untraced_ms_per_step": (extent - busy) / steps}


def peak_memory() -> dict[str, float]:
    out = {"peak_host_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    stats = jax.local_devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        out["peak_device_mb"] = stats["peak_bytes_in_use"] / 2**20
    return out


def run(config: Any) -> dict[str, Any]:
    if _DTYPE.value:
        config.model.dtype = _DTYPE.value
    impls = _IMPLS.value or [config.model.get("conv_impl", "xla")]
    what = _WHAT.value
    b = _BATCH.value
    mesh = parallel.make_mesh()
    parallel.check_batch_size(b, mesh, "--batch")
    side = config.grid_size * config.patch_size
    rng = np.random.default_rng(0)
    host = {
        "image": rng.integers(0, 256, (b, side, side, 3), dtype=np.uint8),
        "label": (np.arange(b) % 2).astype(np.int32),
        "index": np.arange(b, dtype=np.int32),
        "mask": np.ones(b, bool),
    }
    # On the device once: the timed loop has no host -> device copies.
    batch = jax.device_put(host, parallel.batch_sharding(mesh))
    limits = dot_limits()
    cases: list[Any] = [Case(config, impl, batch, mesh) for impl in impls]
    if _PEERS.value:
        cases += make_peers(config, host)
    for case in cases:
        case.compile(what)
        # One line per variant, so a run cut short by a time limit still shows how far it got.
        print(f"compiled {case.impl}: " + ", ".join(
            f"{w} {case.compile_s[w]:.1f} s" for w in what if w in case.compile_s),
            file=sys.stderr, flush=True)
        for _ in range(_WARMUP.value):
            for w in what:
                jax.block_until_ready(case.run_train() if w == "train" else case.run_infer())
    for _ in range(_REPEATS.value):  # interleaved, so every impl sees the same machine noise
        for case in cases:
            for w in what:
                fn = case.run_train if w == "train" else case.run_infer
                _time(fn, case.times[w], _STEPS.value)

    resident = resident_rate(cases[0], _RESIDENT.value, mesh, _REPEATS.value) \
        if _RESIDENT.value and "train" in what else {}
    profile = {}
    if _PROFILE.value and "train" in what:
        log_dir = _PROFILE_DIR.value or tempfile.mkdtemp(prefix="jaxcerv_profile_")
        profile = {"profile": {"impl": cases[0].impl, **profile_ops(
            cases[0].run_train, _PROFILE.value, log_dir)}}
        prof = profile["profile"]
        print(f"profile {cases[0].impl}: ops cover {prof['busy_ms_per_step']:.1f} ms per step, "
              f"{prof['untraced_ms_per_step']:.1f} ms untraced (on CPU mostly asynchronous "
              "convolutions)", file=sys.stderr, flush=True)
        for op in prof["top"][:12]:
            print(f"profile {cases[0].impl}: {op['ms_per_step']:8.3f} ms/step "
                  f"x{op['calls_per_step']:.0f} {op['op'][:100]}", file=sys.stderr, flush=True)
    flops = flops_per_image(config)
    info = machine()
    kind = next((k for k in BF16_PEAK if k in info["device_kind"]), None)
    rows = []
    for case in cases:
        if isinstance(case, Case):
            model_cfg = case.config.model
            row: dict[str, Any] = {
                "conv_impl": case.impl,
                "framework": f"jax {jax.__version__}",
                "dtype": model_cfg.dtype,
                "compiler_options": case.options,
                "model": {k: model_cfg[k] for k in ("conv_impl", "remat", "remat_chunk", "dtype")},
            }
        else:
            row = {"conv_impl": case.impl, "framework": case.framework, "dtype": case.dtype}
        for w in what:
            rate, step = _median_rate(case.times[w], b * _STEPS.value)
            row[f"{w}_img_per_s"] = rate
            row[f"{w}_step_s"] = step / _STEPS.value
            row[f"{w}_gflops"] = rate * flops[w] / 1e9
            row[f"{w}_compile_s"] = case.compile_s[w]
            row[f"{w}_repeat_s"] = case.times[w]
            row[f"{w}_best_img_per_s"] = b * _STEPS.value / min(case.times[w])
            row[f"{w}_pct_bf16_dot"] = 100 * row[f"{w}_gflops"] / limits["bf16_dot_gflops"]
            if kind and info["platform"] == "gpu":
                peak = BF16_PEAK[kind] * jax.device_count()
                row[f"{w}_pct_bf16_peak"] = 100 * rate * flops[w] / peak
        rows.append(row)
    result: dict[str, Any] = {
        **vs_best_peer(rows, cases, what),
        **resident,
        **profile,
        "limits": limits,
        **rows[0],
        "batch": b,
        "dtype": config.model.dtype,
        "devices": info["devices"],
        "device_kind": info["device_kind"],
        "machine": info,
        "image_px": side,
        "patches_per_image": config.grid_size**2,
        "gflop_per_image": {k: v / 1e9 for k, v in flops.items()},
        "repeats": _REPEATS.value,
        "steps_per_repeat": _STEPS.value,
        "h2d_img_per_s": h2d_rate(host["image"], mesh),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": _command(),
        "tag": _TAG.value,
        "loadavg_1min": os.getloadavg()[0],
    }
    if len(rows) > 1:
        result["compare"] = rows
    if _PREDICT.value:
        result["predict_latency"] = predict_latency(config, cases[0].state.params, _REPEATS.value)
    result.update(peak_memory())
    return result


def _command() -> str:
    """The command line, with XLA_FLAGS in front where set: they change the result (e.g.
    --xla_force_host_platform_device_count=2, one CPU device per core)."""
    xla = os.environ.get("XLA_FLAGS")
    args = " ".join(shlex.quote(a) for a in sys.argv)
    return (f"XLA_FLAGS={shlex.quote(xla)} " if xla else "") + "python " + args


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()[:60]


def write(result: dict[str, Any], out: str) -> str:
    os.makedirs(out, exist_ok=True)
    m = result["machine"]
    who = m["cpu"] + f"-{m['cpu_threads']}t" if m["platform"] == "cpu" else m["device_kind"]
    name = "-".join(
        _slug(x)
        for x in (who, result["conv_impl"], result["dtype"], f"b{result['batch']}", result["tag"])
        if x
    )
    path = os.path.join(out, name + ".json")
    with open(path, "w") as f:
        json.dump(result, f, indent=1, default=str)
    write_table(out)
    return path


def _fmt(x: Any, digits: int = 2) -> str:
    return "" if x is None else f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def write_table(out: str) -> None:
    """results.md: one row per result JSON (and per compared impl) in ``out``."""
    head = ("| machine | impl | dtype | batch | train img/s | infer img/s | train GFLOP/s "
            "| infer GFLOP/s | % bf16 peak (train/infer) | x best peer (train/infer) "
            "| compile train/infer s | predict 1 JPEG s | peak host RSS MB | peak device MB "
            "| load | date | command |")
    lines = ["# Throughput results", "", "Written by `benchmarks/throughput.py`; one row per run "
             "(and per implementation compared in it). Paper scale unless the command says "
             "otherwise.", "", head, "|" + "---|" * (head.count("|") - 1)]
    for path in sorted(glob.glob(os.path.join(out, "*.json"))):
        try:
            with open(path) as f:
                r = json.load(f)
        except ValueError:  # not one of ours (an empty or foreign file)
            continue
        if not isinstance(r, dict) or not isinstance(r.get("machine"), dict):
            continue
        for row in r.get("compare", [r]):
            pct = "/".join(
                _fmt(row.get(f"{w}_pct_bf16_peak", row.get(f"{w}_pct_bf16_dot")), 1)
                for w in ("train", "infer")
            )
            vs = "/".join(_fmt(row.get(f"{w}_vs_best_peer")) for w in ("train", "infer"))
            comp = "/".join(_fmt(row.get(f"{w}_compile_s"), 1) for w in ("train", "infer"))
            lat = r.get("predict_latency", {}).get("total_s") if row is r or row == r.get(
                "compare", [None])[0] else None
            lines.append("| " + " | ".join([
                r["machine"]["name"] + (f" ({r['tag']})" if r.get("tag") else ""),
                row["conv_impl"], row.get("dtype", r["dtype"]), str(r["batch"]),
                _fmt(row.get("train_img_per_s")), _fmt(row.get("infer_img_per_s")),
                _fmt(row.get("train_gflops"), 1), _fmt(row.get("infer_gflops"), 1),
                pct if pct != "/" else "", vs if vs != "/" else "", comp, _fmt(lat),
                _fmt(r.get("peak_host_rss_mb"), 0),
                _fmt(r.get("peak_device_mb"), 0), _fmt(r.get("loadavg_1min"), 1),
                r["date"][:10], f"`{r['command']}`",
            ]) + " |")
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


def main(argv: list[str]) -> None:
    del argv
    result = run(_CONFIG.value)
    if _OUT.value:
        result["written_to"] = write(result, _OUT.value)
    if _JSON.value:
        print(json.dumps(result, default=str))
        return
    print(f"machine: {result['machine']['name']} (jax {result['machine']['jax']})")
    print(f"batch {result['batch']}, {result['dtype']}, {result['image_px']} px, "
          f"{result['gflop_per_image']['infer']:.2f} GFLOP/image inference")
    lim = result["limits"]
    print(f"matmul 4096^3: float32 {lim['f32_dot_gflops']:.0f} GFLOP/s, bfloat16 (float32 "
          f"accumulation) {lim['bf16_dot_gflops']:.0f} GFLOP/s = the limit used for '% bf16'")
    for row in result.get("compare", [result]):
        parts = [f"{row['conv_impl']:>22s}:"]
        for w in ("train", "infer"):
            if f"{w}_img_per_s" in row:
                parts.append(f"{w} {row[f'{w}_img_per_s']:6.2f} img/s {row[f'{w}_gflops']:6.1f} "
                             f"GFLOP/s {row[f'{w}_pct_bf16_dot']:4.1f}% bf16 "
                             f"(compile {row[f'{w}_compile_s']:.1f}s)")
        print("  ".join(parts))
    for w, best in result.get("best_peer", {}).items():
        ours = [r for r in result.get("compare", [result]) if f"{w}_vs_best_peer" in r]
        print(f"{w} vs the best peer ({best['impl']}, {best['img_per_s']:.2f} img/s): " + ", ".join(
            f"{r['conv_impl']} {r[f'{w}_vs_best_peer']:.2f}x (per repeat "
            f"{r[f'{w}_vs_best_peer_per_repeat']:.2f}x)" for r in ours))
    if "predict_latency" in result:
        p = result["predict_latency"]
        print(f"predict one 2400x1600 JPEG: {p['total_s']:.3f}s (decode+resize "
              f"{p['decode_resize_s']:.3f}, forward {p['forward_s']:.3f}, "
              f"heatmap {p['heatmap_s']:.3f})")
    print(f"host->device {result['h2d_img_per_s']:.0f} img/s; peak host RSS "
          f"{result['peak_host_rss_mb']:.0f} MB"
          + (f", device {result['peak_device_mb']:.0f} MB" if "peak_device_mb" in result else ""))
    if "written_to" in result:
        print("written:", result["written_to"])


if __name__ == "__main__":
    app.run(main, flags_parser=common.parse_flags)  # --help exits 0, a bad flag in one line
