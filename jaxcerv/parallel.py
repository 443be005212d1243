"""Data parallelism over every device of every process, with one mesh axis named ``data``.

The train and eval steps are plain ``jax.jit`` functions; their inputs carry ``NamedSharding``s:
the global batch is split over ``data`` and everything else (params, optimizer state, the
per-image regulators) is replicated. XLA inserts the gradient all-reduce and the all-gather of the
regulator fits, so every replica holds identical state without a hand-written collective.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def initialize_distributed(
    coordinator: str = "", num_processes: int = 0, process_id: int = -1
) -> None:
    """Join a multi-process JAX runtime when launched as several processes; a no-op for one.

    Explicit flags win; otherwise JAX auto-detects TPU pods and SLURM jobs. On CPU the processes
    talk through gloo.
    """
    explicit = bool(coordinator) and num_processes > 1
    auto = any(
        k in os.environ
        for k in ("SLURM_NTASKS", "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS")
    )
    if explicit:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=coordinator, num_processes=num_processes, process_id=process_id
        )
    elif auto and int(os.environ.get("SLURM_NTASKS", "2")) > 1:
        jax.distributed.initialize()
    else:
        return
    logging.info(
        "process %d of %d, %d local / %d global devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )


def make_mesh() -> Mesh:
    """A one-axis mesh over all global devices, with XLA choosing intermediate shardings (Auto):
    the regulator gather/scatter by a sharded index then needs no hand-written collective."""
    return jax.make_mesh(
        (jax.device_count(),), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,)
    )


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def check_batch_size(global_batch: int, what: str = "config.train.batch_size") -> None:
    """The global batch is split evenly over devices; else say what to change."""
    devices, processes = jax.device_count(), jax.process_count()
    if global_batch % devices:
        lower = global_batch - global_batch % devices
        raise ValueError(
            f"{what}={global_batch} does not divide by the {devices} devices "
            f"({processes} process(es)): set it to a multiple of {devices}, "
            f"e.g. {max(lower, devices)} or {lower + devices}"
        )


def to_global(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """This process's rows of the global batch -> global arrays sharded over ``data``."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Place a host pytree on every device (identical on all processes by construction)."""
    return jax.device_put(tree, replicated(mesh))


def to_host(tree: Any) -> Any:
    """Fetch a (possibly multi-process) global pytree to numpy on every process."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)


def is_writer() -> bool:
    """Only process 0 writes files."""
    return jax.process_index() == 0


def runtime_info(mesh: Mesh) -> dict[str, Any]:
    """Recorded in results.json so a number can be traced to the hardware that made it."""
    return {
        "devices": jax.device_count(),
        "local_devices": jax.local_device_count(),
        "processes": jax.process_count(),
        "mesh_shape": dict(mesh.shape),
        "platform": jax.devices()[0].platform,
        "device_kind": jax.devices()[0].device_kind,
    }
