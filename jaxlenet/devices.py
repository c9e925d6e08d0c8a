"""Where training runs: device selection, the 'data' mesh, placing and fetching arrays.

One device or many, one process or several (after ``jax.distributed.initialize``): parameters and
data are replicated over the mesh, batches are split along its 'data' axis."""

from __future__ import annotations

import os

import jax
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def check_platforms() -> None:
    """Starts JAX's backends, or raises ValueError naming ``JAX_PLATFORMS`` when a platform it
    names cannot start here (JAX raises a bare AssertionError for one that is not installed)."""
    try:
        jax.devices()
    except (RuntimeError, AssertionError) as exc:
        named = os.environ.get("JAX_PLATFORMS", "")
        text = str(exc).strip()
        reason = text.splitlines()[0].split(" (set JAX_PLATFORMS")[0][:300] if text else (
            "no such platform is installed")
        raise ValueError(f"JAX_PLATFORMS={named!r} names a platform JAX cannot start here "
                         f"({reason}); unset JAX_PLATFORMS, or set it to 'cpu'") from None


def select_device(name: str = "auto") -> jax.Device:
    """'auto': the first GPU if there is one, else the CPU (the tutorial's ``try_gpu``)."""
    if name not in ("auto", "cpu", "gpu"):
        raise ValueError(f"device {name!r} is not one of ('auto', 'cpu', 'gpu')")
    if name in ("auto", "gpu"):
        try:
            return jax.devices("gpu")[0]
        except RuntimeError:
            if name == "gpu":
                raise ValueError("device 'gpu' was asked for, but JAX sees no GPU here "
                                 f"(devices: {jax.devices()}); use --device cpu or auto") from None
    return jax.devices("cpu")[0]


def make_mesh(device: str = "auto", num_devices: int | None = None) -> Mesh:
    """A 1-D mesh, axis 'data', over the first ``num_devices`` devices of the platform
    ``select_device(device)`` picks (all of them by default, across every process after
    ``jax.distributed.initialize``)."""
    platform = select_device(device).platform
    devices = jax.devices(platform)
    if num_devices is None:
        num_devices = len(devices)
    if isinstance(num_devices, bool) or not isinstance(num_devices, int) or not (
            1 <= num_devices <= len(devices)):
        raise ValueError(f"devices {num_devices!r} must be between 1 and the {len(devices)} "
                         f"{platform} device(s) JAX sees")
    return Mesh(np.array(devices[:num_devices]), ("data",))


def replicate(tree, mesh: Mesh):
    """Places every leaf of ``tree`` whole on every device of ``mesh``; works across processes
    (each supplies its own devices' copies)."""
    return _place(tree, NamedSharding(mesh, PartitionSpec()))


def shard_examples(tree, mesh: Mesh):
    """Splits every leaf of ``tree`` along its first (example) axis over the mesh's 'data' axis:
    each device, and so each process, holds only its share of the dataset. Leaves whose length
    does not divide evenly are replicated instead."""
    split = NamedSharding(mesh, PartitionSpec("data"))
    whole = NamedSharding(mesh, PartitionSpec())
    return jax.tree_util.tree_map(
        lambda leaf: _place(leaf, split if len(leaf) % mesh.size == 0 else whole), tree)


def _place(tree, sharding):
    def put(leaf):
        host = np.asarray(leaf)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])
    return jax.tree_util.tree_map(put, tree)


def to_host(tree):
    """NumPy copies of (replicated) arrays, also where other processes hold some devices."""
    def get(leaf):
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            leaf = leaf.addressable_data(0)
        return np.asarray(leaf)
    return jax.tree_util.tree_map(get, tree)


def summed_over_batch_shards(fn, mesh: Mesh | None, batch_size: int | None = None):
    """``fn(params, *batch)`` (batch arrays split along their first axis) as each device's sum
    over its share of the batch, added up over the mesh's 'data' axis: ``fn`` must return sums
    over examples. ``fn`` itself without a mesh of several devices, or when ``batch_size`` does
    not divide evenly over them.

    Each device runs ``fn`` as a program of its own (``shard_map``) rather than leaving XLA to
    partition one program: XLA cannot split jaxlenet's CPU kernels (custom calls), and would
    gather the whole batch onto every device to run them."""
    if mesh is None or mesh.size == 1 or (batch_size is not None and batch_size % mesh.size):
        return fn

    def per_device(params, *batch):
        return lax.psum(fn(params, *batch), "data")

    def summed(params, *batch):
        # check_vma=False: JAX cannot tell that a custom call's result varies over the devices
        # as its inputs do, and would refuse the kernels' branch of lax.platform_dependent.
        return jax.shard_map(per_device, mesh=mesh,
                             in_specs=(PartitionSpec(),) + (PartitionSpec("data"),) * len(batch),
                             out_specs=PartitionSpec(), check_vma=False)(params, *batch)
    return summed
