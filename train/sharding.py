"""The device mesh and the batch's place on it: a one-axis mesh ("data"), host batches split
over it, state replicated on it, and the check that a batch divides over its devices."""
from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from bert_jax.batch_types import Batch
from bert_jax.errors import ConfigError

DATA_AXIS = "data"


def make_mesh(devices=None) -> Mesh:
    """A one-axis mesh ("data") over `devices` (default: every device of every process)."""
    devices = np.asarray(jax.devices() if devices is None else devices)
    return Mesh(devices.reshape(-1), (DATA_AXIS,))


def replicate(tree, mesh: Mesh):
    """`tree` as arrays replicated on every device of `mesh`."""
    return jax.device_put(tree, NamedSharding(mesh, P()))


def shard_batch(batch: Batch, mesh: Mesh) -> Batch:
    """Host batch (this process's rows, numpy) -> the same pytree of global arrays split over
    the "data" axis (static fields, such as packed `sizes`, carried as they are)."""
    sharding = NamedSharding(mesh, P(DATA_AXIS))
    if jax.process_count() == 1:
        return jax.device_put(batch, sharding)
    return jax.tree.map(lambda v: jax.make_array_from_process_local_data(sharding, v), batch)


def check_divisible(batch_size: int, mesh: Mesh, what: str = "batch size") -> None:
    """ConfigError unless the global `batch_size` splits evenly over the mesh's devices."""
    devices = mesh.devices.size
    if batch_size % devices:
        raise ConfigError(
            f"the global {what} {batch_size} does not split evenly over {devices} devices: "
            f"use a multiple of {devices} (e.g. --batch-size {devices * max(1, batch_size // devices)})")
