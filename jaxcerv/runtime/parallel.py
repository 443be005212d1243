"""Data parallelism over every device of every process, with one mesh axis named ``data``.

The train and eval steps are plain ``jax.jit`` functions; their inputs carry ``NamedSharding``s:
the global batch is split over ``data`` and everything else (params, optimizer state, the
per-image regulators) is replicated. XLA inserts the gradient all-reduce and the all-gather of the
regulator fits, so every replica holds identical state without a hand-written collective.

Multi-host is the same program on every process (JAX's multi-controller model): each process feeds
its own rows of every global batch (``to_global``), all of them run every jitted step, and only
process 0 writes files (``is_writer``).
"""

from __future__ import annotations

import atexit
import glob
import hashlib
import importlib.util
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxcerv.runtime.rundir import RunError

DATA_AXIS = "data"
# A process that dies is noticed by the others at once by their collectives (its sockets
# close), or, for a host that vanishes, when its heartbeats stop for this long (JAX: 100 s).
# The shutdown barrier keeps JAX's 300 s: process 0 writes the report while the others wait
# there (20 s was too short on a loaded machine); a lost peer skips it (exit_without_shutdown).
HEARTBEAT_TIMEOUT_S = 20


def detect_cluster() -> str | None:
    """The multi-process launcher JAX can configure itself from, if this process runs under one.

    SLURM and Open MPI count only with more than one task (a plain ``srun python ...`` on one task
    is a single process); JAX finds an Open MPI job only under Open MPI <= 4, which sets
    ``OMPI_MCA_orte_hnp_uri`` (Open MPI 5 gets a clear error instead). A Cloud TPU VM (libtpu
    installed, TPU device files present) is always reported: ``jax.distributed.initialize()``
    finds its workers from the VM metadata, one or many.
    """
    if all(
        k in os.environ
        for k in ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_PROCID", "SLURM_LOCALID")
    ) and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return "slurm"
    if int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
        if "OMPI_MCA_orte_hnp_uri" not in os.environ:
            # JAX finds the coordinator from this variable, which only Open MPI <= 4 sets.
            raise ValueError(
                "Open MPI >= 5 (no OMPI_MCA_orte_hnp_uri): JAX cannot find its coordinator; pass "
                "--coordinator=HOST:PORT --num_processes=$OMPI_COMM_WORLD_SIZE "
                "--process_id=$OMPI_COMM_WORLD_RANK"
            )
        return "ompi"
    if os.environ.get("TPU_WORKER_HOSTNAMES") or os.environ.get("TPU_PROCESS_ADDRESSES"):
        return "tpu"
    if importlib.util.find_spec("libtpu") is not None and (
        glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*")
    ):
        return "tpu"
    return None


def initialize_distributed(
    coordinator: str = "", num_processes: int = 0, process_id: int = -1
) -> bool:
    """Join a multi-process JAX runtime when launched as several processes; False for one.

    Explicit flags win (all three, as ``main.py``'s --coordinator/--num_processes/--process_id);
    otherwise JAX configures itself on a detected TPU VM, SLURM step or Open MPI job. Must run
    before anything touches a device. CPU processes talk through gloo.
    """
    if coordinator or num_processes > 0 or process_id >= 0:
        if not (coordinator and num_processes >= 1 and 0 <= process_id < num_processes):
            raise ValueError(
                "multi-process launch: pass all of --coordinator=HOST:PORT, --num_processes=N "
                f"and --process_id in [0, N); got coordinator={coordinator!r}, "
                f"num_processes={num_processes}, process_id={process_id}"
            )
        if num_processes == 1:
            return False
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=coordinator, num_processes=num_processes, process_id=process_id,
            heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT_S,
        )
    elif (cluster := detect_cluster()) is not None:
        logging.info("initialising the JAX distributed runtime from the %s environment", cluster)
        jax.distributed.initialize(heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT_S)
    else:
        return False
    logging.info(
        "process %d of %d, %d local / %d global devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )
    return True


def allocated_gpus() -> str | None:
    """``VAR=value`` of the first variable saying this process was given GPUs, else None."""
    empty = {"", "-1", "NoDevFiles", "none"}
    for var in ("CUDA_VISIBLE_DEVICES", "SLURM_STEP_GPUS", "SLURM_JOB_GPUS", "SLURM_GPUS_ON_NODE"):
        value = os.environ.get(var, "").strip()
        if value not in empty and not (var == "SLURM_GPUS_ON_NODE" and value == "0"):
            return f"{var}={value}"
    return None


def accelerator_problem() -> str | None:
    """One line when GPUs were allocated but JAX runs on the CPU (a CPU-only jaxlib, a driver
    JAX cannot use): better than training for days on the CPU of a GPU node. ``JAX_PLATFORMS=cpu``
    says the CPU is meant."""
    gpus = allocated_gpus()
    if gpus is None or os.environ.get("JAX_PLATFORMS", "").strip().lower() == "cpu":
        return None
    if jax.default_backend() != "cpu":
        return None
    return (
        f"GPUs are allocated ({gpus}) but JAX found none and would run on the CPU: install the "
        "CUDA build (pip install 'jaxcerv[cuda]', or 'jax[cuda12]==0.10.2' into this environment) "
        "or set JAX_PLATFORMS=cpu to use the CPU on purpose"
    )


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A one-axis mesh over ``devices`` (default: every device of every process).

    The axis is Auto (XLA picks intermediate shardings), not jax.make_mesh's default Explicit:
    the regulator gather/scatter by a batch-sharded index then needs no hand-written collective.
    """
    devices = list(jax.devices() if devices is None else devices)
    return jax.make_mesh(
        (len(devices),), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,), devices=devices
    )


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def _mesh_processes(mesh: Mesh) -> int:
    return len({d.process_index for d in mesh.devices.flat})


def replicated_init(fn: Callable[..., Any], mesh: Mesh, *args: Any) -> Any:
    """``fn(*args)`` jitted straight to arrays replicated over ``mesh``: every process builds the
    same state, without a host round trip.

    On CPU it is compiled without LLVM optimisation: it runs once, and the optimiser spends ~15 s
    on the parameter initialisers' threefry code otherwise (~3 s without; same values).
    """
    lowered = jax.jit(fn, out_shardings=replicated(mesh)).lower(*args)
    cpu = mesh.devices.flat[0].platform == "cpu"
    options = {"xla_backend_optimization_level": 0} if cpu else None
    return lowered.compile(compiler_options=options)(*args)


def check_batch_size(global_batch: int, mesh: Mesh, what: str = "config.train.batch_size") -> None:
    """The global batch is split evenly over the mesh's devices; else say what to change."""
    devices = mesh.devices.size
    if global_batch < 1 or global_batch % devices:
        lower = global_batch - global_batch % devices
        raise ValueError(
            f"{what}={global_batch} does not divide by the {devices} devices "
            f"({_mesh_processes(mesh)} process(es)): set it to a multiple of {devices}, "
            f"e.g. {max(lower, devices)} or {lower + devices}"
        )


def to_global(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """This process's rows of the global batch -> global arrays sharded over ``data``."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def to_host(tree: Any) -> Any:
    """Fetch a (possibly multi-process) global pytree to numpy, whole, on every process.

    Every process must call it (a sharded array is all-gathered); a replicated array is read from
    this process's own copy.
    """
    if jax.process_count() == 1:
        return jax.device_get(tree)
    return multihost_utils.process_allgather(tree, tiled=True)


def is_writer() -> bool:
    """Only process 0 writes files."""
    return jax.process_index() == 0


# What a collective or barrier says when a peer process has gone (gloo on CPU, the coordination
# service's barriers and heartbeats everywhere).
_PEER_GONE = ("Gloo", "Connection reset", "Connection refused", "heartbeat", "Barrier failed",
              "UNAVAILABLE", "DEADLINE_EXCEEDED", "Socket closed")


def lost_peer(e: BaseException) -> RunError | None:
    """One line for an error that says another process of this run died (killed, out of memory,
    its host gone), or None."""
    n = jax.process_count()
    chain, cause = [], e
    while cause is not None and len(chain) < 5:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    runtime = [c for c in chain if isinstance(c, jax.errors.JaxRuntimeError)]
    if n < 2 or not runtime or not any(m in str(runtime[0]) for m in _PEER_GONE):
        return None
    me = jax.process_index()
    peer = f"process {1 - me}" if n == 2 else f"another of the {n} processes"
    first = " ".join(str(runtime[0]).split())[:160]
    return RunError(
        f"process {me}: lost {peer} of this run ({first}); it died or was stopped: rerun the "
        "same launch to resume from the last complete checkpoint"
    )


def exit_without_shutdown() -> None:
    """At exit, skip JAX's distributed shutdown: its barrier would wait for a dead peer and then
    abort with a C++ stack trace. Registered after JAX's own clean-up, so it runs first."""
    atexit.register(_exit_now)


def _exit_now() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)


def barrier(name: str) -> None:
    """Every process waits here until all have arrived (nothing to wait for with one)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def replica_digest(tree: Any) -> str:
    """sha256 of this process's own copy of a replicated pytree (leaf order, dtypes, bytes)."""
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(tree):
        local = np.asarray(leaf.addressable_data(0) if isinstance(leaf, jax.Array) else leaf)
        h.update(f"{local.dtype.str}{local.shape}".encode())
        h.update(np.ascontiguousarray(local).tobytes())
    return h.hexdigest()


def assert_replicas_agree(tree: Any) -> str:
    """The digest of a replicated pytree, after checking that every process holds the same bytes.

    Replicated state can only diverge through a bug (a process fed different data as "replicated",
    a non-deterministic op): better a clear error than silently different models per host. Every
    process must call it.
    """
    digest = replica_digest(tree)
    if jax.process_count() > 1:
        mine = np.frombuffer(bytes.fromhex(digest), np.uint8)
        everyone = np.asarray(multihost_utils.process_allgather(mine))
        differ = [p for p in range(len(everyone)) if not np.array_equal(everyone[p], mine)]
        if differ:
            raise RuntimeError(
                f"process {jax.process_index()}: replicated train state differs from that of "
                f"process(es) {differ}"
            )
    return digest


def runtime_info(mesh: Mesh) -> dict[str, Any]:
    """Recorded in results.json so a number can be traced to the hardware that made it."""
    device = mesh.devices.flat[0]
    return {
        "devices": int(mesh.devices.size),
        "local_devices": sum(d.process_index == jax.process_index() for d in mesh.devices.flat),
        "processes": _mesh_processes(mesh),
        "mesh_shape": dict(mesh.shape),
        "platform": device.platform,
        "device_kind": device.device_kind,
    }
