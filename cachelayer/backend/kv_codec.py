"""Between mlx-lm cache objects and the paged store's payloads: layer kinds, arrays, reads.

What `PagedStore` writes and reads, in bytes: per-token keys and values of the
attention layers (blocks), and the whole state of sliding-window and recurrent
layers (checkpoints). Reads go straight into the final arrays with one scatter
read per block file, checksummed on the way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import numpy as np
import xxhash
from mlx_lm.models.cache import ArraysCache, KVCache, RotatingKVCache

from cachelayer.backend.kv_blocks import BadFile, Block, Checkpoint, Match, read_header

# Layer kinds the store restores exactly. "kv": per-token keys/values (blocks);
# "rotating" and "arrays": whole state at one position (checkpoints).
KIND_OF = {KVCache: "kv", RotatingKVCache: "rotating", ArraysCache: "arrays"}
_IOV_MAX = 1024


def layer_kinds(prompt_cache: list[Any]) -> tuple[str, ...] | None:
    """The store's kind of each layer, or None if any layer is of a kind it cannot restore."""
    kinds = []
    for c in prompt_cache:
        kind = KIND_OF.get(type(c))
        if kind is None:
            return None
        if kind == "arrays" and (c.left_padding is not None or c.lengths is not None):
            return None  # a batch slot's padding bookkeeping, not a single sequence
        kinds.append(kind)
    return tuple(kinds)


def cache_tokens(prompt_cache: list[Any]) -> int | None:
    """Tokens a cache holds, from its positional layers' offsets; None if unknown."""
    offsets = {c.offset for c in prompt_cache if isinstance(c, (KVCache, RotatingKVCache))}
    return offsets.pop() if len(offsets) == 1 else None


def as_numpy(a: mx.array) -> np.ndarray:
    """A numpy view of an evaluated array (bf16 travels as its uint16 bits)."""
    if a.dtype == mx.bfloat16:
        a = a.view(mx.uint16)
    return np.asarray(a)


def dtype_name(a: mx.array) -> str:
    """The mlx dtype's name, e.g. "bfloat16"."""
    return str(a.dtype).removeprefix("mlx.core.")


def to_mx(a: np.ndarray, dtype: str) -> mx.array:
    """An mlx array of `dtype` from its numpy form (bf16 arrives as uint16 bits)."""
    out = mx.array(a)
    return out.view(mx.bfloat16) if dtype == "bfloat16" else out


def np_dtype(dtype: str) -> np.dtype[Any]:
    """The numpy dtype an mlx dtype travels as."""
    return np.dtype(np.uint16) if dtype == "bfloat16" else np.dtype(dtype)


def kv_views(snapshot: list[Any], kv_layers: list[int]) -> dict[int, list[tuple[str, str, Any]]]:
    """Per attention layer: (name, dtype, numpy view) of its keys and values buffers."""
    return {
        i: [(name, dtype_name(getattr(snapshot[i], attr)), as_numpy(getattr(snapshot[i], attr)))
            for name, attr in (("k", "keys"), ("v", "values"))]
        for i in kv_layers
    }


def block_parts(views: dict[int, list[tuple[str, str, Any]]], a: int, b: int,
                ) -> tuple[list[Any], list[np.ndarray]]:
    """Array specs and contiguous payload parts of tokens [a, b) of every attention layer."""
    specs, parts = [], []
    for i, arrays in views.items():
        for name, dtype, arr in arrays:
            part = np.ascontiguousarray(arr[0, :, a:b, :])
            specs.append([i, name, dtype, list(part.shape)])
            parts.append(part)
    return specs, parts


def checkpoint_parts(snapshot: list[Any], kinds: tuple[str, ...], stateful: list[int],
                     ) -> tuple[list[dict[str, Any]], list[np.ndarray], bool]:
    """Layer specs, payload parts and trimmability of the stateful layers' whole state."""
    layers, parts = [], []
    trimmable = True
    for i in stateful:
        c = snapshot[i]
        trimmable = trimmable and c.is_trimmable()
        if kinds[i] == "rotating":
            arrays = [c.keys, c.values]
            meta = {"offset": c.offset, "keep": c.keep, "max_size": c.max_size, "idx": c._idx}
        else:
            arrays, meta = list(c.cache), {}
        specs: list[Any] = []
        for arr in arrays:
            if arr is None:
                specs.append(None)
                continue
            part = np.ascontiguousarray(as_numpy(arr))
            specs.append([dtype_name(arr), list(part.shape)])
            parts.append(part)
        layers.append({"layer": i, "kind": kinds[i], "meta": meta, "arrays": specs})
    return layers, parts, trimmable


def checksum(parts: list[np.ndarray]) -> int:
    """xxh3-64 of the payload parts in order."""
    check = xxhash.xxh3_64()
    for p in parts:
        check.update(p.data.cast("B"))
    return check.intdigest()


def alloc_target(heads: int, n: int, dim: int, dtype: str) -> tuple[mx.array, np.ndarray]:
    """A fresh, evaluated mlx array and a writable numpy view of its memory.

    Block reads land in the array the restored cache will hold, so a restore
    makes no copy after the read. Safe because the array is new, evaluated and
    referenced only here until the cache is built from it.
    """
    arr = mx.zeros((1, heads, n, dim), dtype=getattr(mx, dtype))
    bits = arr.view(mx.uint16) if dtype == "bfloat16" else arr  # shares arr's memory
    mx.eval(arr, bits)
    view = np.asarray(bits)
    if not (view.flags.writeable and view.flags.c_contiguous) or view.dtype != np_dtype(dtype):
        raise BadFile(f"cannot restore {dtype} arrays in place")
    return arr, view


@dataclass
class HostArrays:
    """A match read into host memory by `PagedStore.read`, waiting to become a cache."""

    match: Match
    arrays: dict[tuple[int, str], np.ndarray]
    dtypes: dict[tuple[int, str], str]
    nbytes: int
    seconds: float
    # The sliding-window / recurrent layers' state, when the match ends at a checkpoint.
    checkpoint: list[HostLayerState] | None = None


def alloc_host(heads: int, n: int, dim: int, dtype: str) -> tuple[str, np.ndarray]:
    """Uninitialised host memory for one restored array, with its mlx dtype's name (no
    mlx, so any thread may call it, and nothing is zero-filled only to be overwritten)."""
    return dtype, np.empty((1, heads, n, dim), dtype=np_dtype(dtype))


def host_to_mx(view: np.ndarray, dtype: str) -> mx.array:
    """The mlx array of a restored host array (one copy, on the calling thread)."""
    out = mx.array(view)
    return out.view(mx.bfloat16) if dtype == "bfloat16" else out


def read_block_into(
    block: Block, fingerprint: str, used: int, pos: int, n: int, kv_layers: list[int],
    dest: dict[tuple[int, str], tuple[Any, np.ndarray]],
    alloc: Any = alloc_target,
) -> int:
    """Read one block straight into the destination arrays (one scatter read per file)."""
    fd = os.open(block.path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        with os.fdopen(os.dup(fd), "rb") as f:
            header, offset = read_header(f, size)
        if header["fingerprint"] != fingerprint or header["hash"] != block.hash.hex():
            raise BadFile("block of another model or chain")
        count = len(block.tokens)
        buffers: list[memoryview] = []
        layers = {int(spec[0]) for spec in header["arrays"]}
        if layers != set(kv_layers):
            raise BadFile("block layers do not match the model")
        for layer, name, dtype, shape in header["arrays"]:
            heads, length, dim = shape
            if length != count:
                raise BadFile("array length does not match the block")
            npd = np_dtype(dtype)
            key = (int(layer), name)
            if key not in dest:
                dest[key] = alloc(heads, n, dim, dtype)
            target = dest[key][1]
            if target.shape[1] != heads or target.shape[3] != dim or target.dtype != npd:
                raise BadFile("array shape differs along the chain")
            rest = (count - used) * dim * npd.itemsize
            for h in range(heads):
                buffers.append(target[0, h, pos : pos + used].data.cast("B"))
                if rest:
                    buffers.append(memoryview(bytearray(rest)))
        check = xxhash.xxh3_64()
        total = 0
        for i in range(0, len(buffers), _IOV_MAX):
            chunk = buffers[i : i + _IOV_MAX]
            want = sum(len(b) for b in chunk)
            got = os.preadv(fd, chunk, offset + total)
            if got != want:
                raise BadFile("block is truncated")
            for b in chunk:
                check.update(b)
            total += got
        if total != int(header["payload_bytes"]) or check.hexdigest() != header["checksum"]:
            raise BadFile("payload checksum mismatch")
        return size
    finally:
        os.close(fd)

@dataclass
class HostLayerState:
    """One stateful layer of a checkpoint read into host memory (no mlx yet)."""

    layer: int
    kind: str
    meta: dict[str, Any]
    arrays: list[tuple[np.ndarray, str] | None]


def read_checkpoint_host(ckpt: Checkpoint, fingerprint: str, kinds: tuple[str, ...],
                         ) -> tuple[list[HostLayerState], int]:
    """Read and check a checkpoint file into host arrays without any mlx call, so an I/O
    thread can do it; returns the layers' states and the file's size."""
    with ckpt.path.open("rb") as f:
        size = os.fstat(f.fileno()).st_size
        header, _ = read_header(f, size)
        payload = f.read()
    if header["fingerprint"] != fingerprint or header["id"] != ckpt.id.hex():
        raise BadFile("checkpoint of another model or chain")
    if f"{xxhash.xxh3_64_intdigest(payload):016x}" != header["checksum"]:
        raise BadFile("payload checksum mismatch")
    pos = 0
    states = []
    for spec in header["layers"]:
        i, kind = int(spec["layer"]), spec["kind"]
        if i >= len(kinds) or kinds[i] != kind:
            raise BadFile("checkpoint layers do not match the model")
        arrays: list[tuple[np.ndarray, str] | None] = []
        for entry in spec["arrays"]:
            if entry is None:
                arrays.append(None)
                continue
            dtype, shape = entry
            npd = np_dtype(dtype)
            count = int(np.prod(shape)) * npd.itemsize
            a = np.frombuffer(payload, dtype=npd, count=count // npd.itemsize, offset=pos)
            arrays.append((a.reshape(shape), dtype))
            pos += count
        states.append(HostLayerState(i, kind, spec.get("meta") or {}, arrays))
    return states, size


def checkpoint_caches(states: list[HostLayerState], caches: list[Any]) -> None:
    """Put the mlx caches of checkpoint `states` into `caches` (one copy per array)."""
    for state in states:
        arrays = [None if a is None else to_mx(*a) for a in state.arrays]
        c: Any
        if state.kind == "rotating":
            meta = state.meta
            c = RotatingKVCache(max_size=meta["max_size"], keep=meta["keep"])
            c.state = (arrays[0], arrays[1], meta["offset"], meta["keep"], meta["max_size"],
                       meta["idx"])
        else:
            c = ArraysCache(len(arrays))
            c.cache = arrays
        caches[state.layer] = c


def read_checkpoint(ckpt: Checkpoint, fingerprint: str, kinds: tuple[str, ...],
                    caches: list[Any]) -> int:
    """Rebuild the stateful layers of `caches` from a checkpoint file; returns its size."""
    states, size = read_checkpoint_host(ckpt, fingerprint, kinds)
    checkpoint_caches(states, caches)
    return size
