"""The paged KV store's files and index: chain hashes, headers, lookup, LRU leaves. No mlx.

A prompt's KV lives as a chain of *blocks*. A block holds the per-token keys and
values of the positional (attention) layers for at most `block_tokens` tokens and
never crosses a multiple of `block_tokens`, so a prompt written in one go is cut
into fixed-size blocks. Its address is a chain hash, xxh3-128 over the parent's
hash, how many of the parent's tokens it follows (`cut`), the model fingerprint
and its own token ids: equal prefixes share blocks, and a turn writes only the
blocks past the longest prefix already stored. `cut` lets a new branch start in
the middle of a stored block (a re-rendered answer, a new user message) without
rewriting that block's head.

Layers that cannot be rebuilt from per-token KV (sliding windows, recurrent
state) are stored as *checkpoints*: their whole state at one position, beside the
block that position falls in, at the points where mlx-lm itself checkpoints (a
segment's end, a prompt plus its answer) and at the block boundaries a long prefill
passes (`prefill.py`). This module defines both file formats.

File layout (``.kvb`` block, ``.kvc`` checkpoint)::

    MAGIC (8) | header length u32 | xxh3-64 of header u64 | header JSON | payload

The header carries the payload's xxh3-64; a flipped byte, a truncated file or a
file of another model fails its checks and is dropped, and the chain is cut there.
`cachelayer stats` and `clear --kv` import this module (through `kv_files`) where mlx
may be absent, so it stays mlx-free.
"""

from __future__ import annotations

import base64
import contextlib
import heapq
import json
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import xxhash

FORMAT = "cachelayer-kv/2"
MAGIC = b"CLKVPG02"
BLOCK_SUFFIX = ".kvb"
CKPT_SUFFIX = ".kvc"
ROOT = bytes(16)
_PREFIX = struct.Struct("<8sIQ")
# Tokens of a block (<= a few thousand) plus array specs: anything larger is not ours.
MAX_HEADER_BYTES = 1 << 20


class BadFile(ValueError):
    """A block or checkpoint file that fails its checks (corrupt, truncated, foreign)."""


def pack_tokens(tokens: tuple[int, ...] | list[int]) -> bytes:
    """Token ids as little-endian uint32s: the bytes the chain hash covers."""
    return struct.pack(f"<{len(tokens)}I", *tokens)


def chain_seed(fingerprint: str, variant: str = "", tenant: str = "") -> str:
    """What every chain hash of a store is seeded with: the model fingerprint, plus what
    changes what a block means (`variant`: KV quantization, an adapter, a draft model's
    layers) and whose it is (`tenant`). Both empty: the bare fingerprint, so the
    blocks of a plain model stay where they were."""
    if not variant and not tenant:
        return fingerprint
    h = xxhash.xxh3_64()
    for part in (variant, tenant):
        h.update(struct.pack("<Q", len(part)))
        h.update(part.encode())
    return f"{fingerprint}-{h.hexdigest()}"


def chain_hash(parent: bytes, cut: int, tokens: tuple[int, ...], fingerprint: str) -> bytes:
    """A block's address: xxh3-128 of parent hash, cut, model fingerprint and token ids."""
    h = xxhash.xxh3_128()
    h.update(parent)
    h.update(struct.pack("<Q", cut))
    h.update(fingerprint.encode())
    h.update(pack_tokens(tokens))
    return h.digest()


def checkpoint_id(block: bytes, used: int, fingerprint: str) -> bytes:
    """A checkpoint's address: the block it sits in and how many of its tokens precede it."""
    h = xxhash.xxh3_128()
    h.update(b"checkpoint")
    h.update(block)
    h.update(struct.pack("<Q", used))
    h.update(fingerprint.encode())
    return h.digest()


def encode_header(header: dict[str, Any], payload_checksum: int) -> bytes:
    """The bytes before the payload: magic, lengths, header checksum, header JSON."""
    body = json.dumps({**header, "checksum": f"{payload_checksum:016x}"}).encode()
    return _PREFIX.pack(MAGIC, len(body), xxhash.xxh3_64_intdigest(body)) + body


def read_header(f: Any, size: int) -> tuple[dict[str, Any], int]:
    """Parse and check a header from an open file; returns (header, payload offset)."""
    raw = f.read(_PREFIX.size)
    if len(raw) != _PREFIX.size:
        raise BadFile("shorter than a header")
    magic, length, check = _PREFIX.unpack(raw)
    if magic != MAGIC or length > min(MAX_HEADER_BYTES, size):
        raise BadFile("not a paged KV file")
    body = f.read(length)
    if len(body) != length or xxhash.xxh3_64_intdigest(body) != check:
        raise BadFile("header checksum mismatch")
    header = json.loads(body)
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise BadFile("unknown format")
    offset = _PREFIX.size + length
    if offset + int(header["payload_bytes"]) != size:
        raise BadFile(f"file is {size} bytes, header says {offset + header['payload_bytes']}")
    return header, offset


@dataclass(eq=False)
class Checkpoint:
    """Non-positional layer state at `used` tokens into block `block`."""

    id: bytes
    block: bytes
    used: int
    path: Path
    nbytes: int
    last_used: float
    trimmable: bool


@dataclass(eq=False)
class Block:
    """One stored block: where it sits in its chain and what file holds it."""

    hash: bytes
    parent: bytes
    cut: int
    start: int
    tokens: tuple[int, ...]
    path: Path
    nbytes: int
    last_used: float
    children: dict[bytes, Block] = field(default_factory=dict)
    checkpoints: dict[int, Checkpoint] = field(default_factory=dict)
    # Whose prompt this is (the proxy's tenant salt; "" when shared): in the chain seed,
    # and lookups follow only the asking tenant's chains.
    tenant: str = ""


@dataclass(frozen=True)
class Match:
    """A restorable prefix: the chain of (block, tokens used) and an optional checkpoint."""

    chain: tuple[tuple[Block, int], ...]
    n_tokens: int
    checkpoint: Checkpoint | None


def block_header(block: Block, fingerprint: str) -> dict[str, Any]:
    """The header fields that identify a block (the rest describes its arrays)."""
    return {
        "format": FORMAT,
        "kind": "block",
        "fingerprint": fingerprint,
        "hash": block.hash.hex(),
        "parent": block.parent.hex(),
        "cut": block.cut,
        "start": block.start,
        "tokens": base64.b64encode(pack_tokens(block.tokens)).decode("ascii"),
        **({"tenant": block.tenant} if block.tenant else {}),
    }


def block_from_header(header: dict[str, Any], path: Path, nbytes: int, mtime: float) -> Block:
    """Rebuild a Block from its header, checking its address against its content."""
    raw = base64.b64decode(header["tokens"])
    tokens = struct.unpack(f"<{len(raw) // 4}I", raw)
    block = Block(
        hash=bytes.fromhex(header["hash"]),
        parent=bytes.fromhex(header["parent"]),
        cut=int(header["cut"]),
        start=int(header["start"]),
        tokens=tokens,
        path=path,
        nbytes=nbytes,
        last_used=mtime,
        tenant=str(header.get("tenant", "")),
    )
    seed = chain_seed(header["fingerprint"], "", block.tenant)
    address = chain_hash(block.parent, block.cut, tokens, seed)
    if not tokens or address != block.hash:
        raise BadFile("block address does not match its content")
    return block


def checkpoint_header(ckpt_id: bytes, block: bytes, used: int, trimmable: bool,
                      layers: list[dict[str, Any]], fingerprint: str) -> dict[str, Any]:
    """The header of a checkpoint file (the state of the stateful layers `used` tokens
    into block `block`), without its payload's size and checksum."""
    return {"format": FORMAT, "kind": "checkpoint", "fingerprint": fingerprint,
            "id": ckpt_id.hex(), "block": block.hex(), "used": used,
            "trimmable": trimmable, "layers": layers}


def checkpoint_from_header(header: dict[str, Any], path: Path, nbytes: int,
                           mtime: float) -> Checkpoint:
    """Rebuild a Checkpoint from its header (its payload is checked when it is read)."""
    return Checkpoint(bytes.fromhex(header["id"]), bytes.fromhex(header["block"]),
                      int(header["used"]), path, nbytes, mtime, bool(header["trimmable"]))


class BlockIndex:
    """Every block and checkpoint of one model, from headers; not thread-safe (callers lock)."""

    def __init__(self, fingerprint: str) -> None:
        """An empty index for the model `fingerprint`."""
        self.fingerprint = fingerprint
        self.blocks: dict[bytes, Block] = {}
        self.roots: dict[bytes, Block] = {}
        self.nbytes = 0
        self.n_checkpoints = 0

    def children_of(self, parent: bytes) -> dict[bytes, Block]:
        """Blocks whose parent is `parent` (ROOT for the first block of a chain)."""
        if parent == ROOT:
            return self.roots
        node = self.blocks.get(parent)
        return node.children if node is not None else {}

    def add_block(self, block: Block) -> bool:
        """Index a block whose parent is indexed (or ROOT); False if it would be orphaned."""
        if block.hash in self.blocks:
            return True
        if block.parent != ROOT and block.parent not in self.blocks:
            return False
        self.children_of(block.parent)[block.hash] = block
        self.blocks[block.hash] = block
        self.nbytes += block.nbytes
        return True

    def add_checkpoint(self, ckpt: Checkpoint) -> bool:
        """Index a checkpoint beside its block; False if the block is not indexed."""
        block = self.blocks.get(ckpt.block)
        if block is None:
            return False
        old = block.checkpoints.get(ckpt.used)
        if old is not None:
            self.nbytes -= old.nbytes
            self.n_checkpoints -= 1
        block.checkpoints[ckpt.used] = ckpt
        self.nbytes += ckpt.nbytes
        self.n_checkpoints += 1
        return True

    def remove_subtree(self, block: Block) -> list[Path]:
        """Forget `block`, its descendants and their checkpoints; returns their files."""
        paths: list[Path] = []
        stack = [block]
        self.children_of(block.parent).pop(block.hash, None)
        while stack:
            node = stack.pop()
            if self.blocks.pop(node.hash, None) is None:
                continue
            self.nbytes -= node.nbytes
            paths.append(node.path)
            for ckpt in node.checkpoints.values():
                self.nbytes -= ckpt.nbytes
                self.n_checkpoints -= 1
                paths.append(ckpt.path)
            stack.extend(node.children.values())
        return paths

    def remove_checkpoint(self, ckpt: Checkpoint) -> None:
        """Forget one checkpoint."""
        block = self.blocks.get(ckpt.block)
        if block is not None and block.checkpoints.get(ckpt.used) is ckpt:
            del block.checkpoints[ckpt.used]
            self.nbytes -= ckpt.nbytes
            self.n_checkpoints -= 1

    def longest(self, tokens: list[int] | tuple[int, ...],
                tenant: str = "") -> tuple[Block | None, int, int]:
        """The deepest stored point `tokens` follows exactly: (block, tokens used, position)."""
        best: tuple[Block | None, int, int] = (None, 0, 0)
        for child, start, m in self._followed(tokens, len(tokens), tenant):
            if start + m > best[2]:
                best = (child, m, start + m)
        return best

    def _followed(self, tokens: list[int] | tuple[int, ...],
                  limit: int, tenant: str = "") -> Iterator[tuple[Block, int, int]]:
        """Every stored block of `tenant` that `tokens` follows: (block, its start, tokens
        matched there), matching at most up to position `limit`."""
        stack: list[tuple[dict[bytes, Block], int, int]] = [(self.roots, 0, 0)]
        while stack:
            children, parent_matched, base = stack.pop()
            for child in children.values():
                if child.cut > parent_matched or child.tenant != tenant:
                    continue
                start = base + child.cut
                m = min(_common(child.tokens, tokens, start), max(0, limit - start))
                if m == 0:
                    continue
                yield child, start, m
                stack.append((child.children, m, start))

    def nearest(self, tokens: list[int], *, positional_only: bool,
                tenant: str = "") -> Match | None:
        """The longest restorable prefix of `tokens`, leaving at least one token to prefill.

        A model whose layers are all positional can stop anywhere along a chain;
        one with sliding-window or recurrent layers only at a checkpoint.
        """
        limit = len(tokens) - 1
        best: tuple[int, Block | None, int, Checkpoint | None] = (0, None, 0, None)
        for child, start, m in self._followed(tokens, limit, tenant):
            if positional_only:
                if start + m > best[0]:
                    best = (start + m, child, m, None)
            else:
                for used, point in child.checkpoints.items():
                    usable = used if used <= m else (m if point.trimmable else 0)
                    if usable and start + usable > best[0]:
                        best = (start + usable, child, usable, point)
        n, block, used, ckpt = best
        if block is None:
            return None
        chain: list[tuple[Block, int]] = [(block, used)]
        node = block
        while node.parent != ROOT:
            parent = self.blocks[node.parent]
            chain.append((parent, node.cut))
            node = parent
        chain.reverse()
        return Match(tuple(chain), n, ckpt)

    def lru_leaves(self) -> list[tuple[float, int, Block | Checkpoint]]:
        """A heap of evictable items: checkpoints, and blocks with no children or checkpoints."""
        heap: list[tuple[float, int, Block | Checkpoint]] = []
        for block in self.blocks.values():
            for ckpt in block.checkpoints.values():
                heap.append((ckpt.last_used, id(ckpt), ckpt))
            if not block.children and not block.checkpoints:
                heap.append((block.last_used, id(block), block))
        heapq.heapify(heap)
        return heap


def _common(stored: tuple[int, ...], tokens: list[int] | tuple[int, ...], start: int) -> int:
    n = min(len(stored), len(tokens) - start)
    i = 0
    while i < n and stored[i] == tokens[start + i]:
        i += 1
    return i


def scan_dir(root: Path) -> list[tuple[Path, dict[str, Any], int, float]]:
    """Read the header of every block and checkpoint under `root`; bad files are returned
    with an empty header so the caller can count and remove them."""
    found: list[tuple[Path, dict[str, Any], int, float]] = []
    for path in root.iterdir():
        if path.suffix not in (BLOCK_SUFFIX, CKPT_SUFFIX) or path.name.startswith("."):
            continue
        try:
            st = path.stat()
            with path.open("rb") as f:
                header, _ = read_header(f, st.st_size)
        except FileNotFoundError:
            continue
        except (OSError, ValueError, KeyError, TypeError):
            found.append((path, {}, 0, 0.0))
            continue
        found.append((path, header, st.st_size, st.st_mtime))
    return found


def remove_files(paths: list[Path]) -> None:
    """Unlink files that may already be gone."""
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
