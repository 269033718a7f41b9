"""kv_blocks: chain hashes, headers, the block index's lookups and LRU leaves (no mlx)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from cachelayer.backend.kv_blocks import (
    ROOT,
    BadFile,
    Block,
    BlockIndex,
    Checkpoint,
    block_from_header,
    block_header,
    chain_hash,
    encode_header,
    read_header,
)

FP = "f" * 24


def _block(parent: Block | None, cut: int, tokens: list[int], used: float = 0.0) -> Block:
    parent_hash = parent.hash if parent is not None else ROOT
    start = parent.start + cut if parent is not None else 0
    return Block(chain_hash(parent_hash, cut, tuple(tokens), FP), parent_hash, cut, start,
                 tuple(tokens), Path(f"/nowhere/{len(tokens)}"), 100, used)


def test_chain_hash_covers_parent_cut_tokens_and_model() -> None:
    base = chain_hash(ROOT, 0, (1, 2, 3), FP)
    assert chain_hash(ROOT, 0, (1, 2, 3), FP) == base and len(base) == 16
    assert chain_hash(ROOT, 0, (1, 2, 4), FP) != base
    assert chain_hash(ROOT, 1, (1, 2, 3), FP) != base
    assert chain_hash(base, 0, (1, 2, 3), FP) != base
    assert chain_hash(ROOT, 0, (1, 2, 3), "e" * 24) != base


def test_header_round_trips_and_rejects_damage() -> None:
    block = _block(None, 0, [5, 6, 7])
    header = {**block_header(block, FP), "arrays": [], "payload_bytes": 4}
    raw = encode_header(header, 0x1234) + b"abcd"
    parsed, offset = read_header(io.BytesIO(raw), len(raw))
    assert raw[offset:] == b"abcd" and parsed["checksum"] == "0000000000001234"
    assert block_from_header(parsed, Path("x"), len(raw), 0.0).tokens == (5, 6, 7)
    flipped = bytearray(raw)
    flipped[30] ^= 1
    for bad, size in ((bytes(flipped), len(raw)), (raw[:-1], len(raw) - 1), (b"x" * 40, 40)):
        with pytest.raises(BadFile):
            read_header(io.BytesIO(bad), size)


def test_a_header_whose_address_does_not_match_its_tokens_is_refused() -> None:
    block = _block(None, 0, [5, 6, 7])
    header = {**block_header(block, FP), "payload_bytes": 0}
    header["tokens"] = block_header(_block(None, 0, [5, 6, 8]), FP)["tokens"]
    with pytest.raises(BadFile):
        block_from_header(header, Path("x"), 1, 0.0)


def _chain() -> tuple[BlockIndex, Block, Block, Block]:
    index = BlockIndex(FP)
    a = _block(None, 0, [1, 2, 3, 4])
    b = _block(a, 4, [5, 6, 7, 8])
    # A branch that leaves `b` after two of its tokens (a new user turn).
    c = _block(b, 2, [9, 9, 9])
    for block in (a, b, c):
        assert index.add_block(block)
    return index, a, b, c


def test_longest_follows_branches_that_start_inside_a_block() -> None:
    index, _a, b, c = _chain()
    assert index.longest([1, 2, 3, 4, 5, 6, 9, 9]) == (c, 2, 8)
    assert index.longest([1, 2, 3, 4, 5, 6, 7, 0]) == (b, 3, 7)
    assert index.longest([7, 7]) == (None, 0, 0)


def test_nearest_leaves_one_token_and_respects_checkpoints() -> None:
    index, a, b, c = _chain()
    full = [1, 2, 3, 4, 5, 6, 9, 9, 9]
    match = index.nearest(full, positional_only=True)
    assert match is not None and match.n_tokens == 8
    assert [(blk, used) for blk, used in match.chain] == [(a, 4), (b, 2), (c, 2)]
    # With stateful layers only a checkpoint is a restore point.
    assert index.nearest(full, positional_only=False) is None
    index.add_checkpoint(Checkpoint(b"k" * 16, a.hash, 4, Path("k"), 10, 0.0, False))
    match = index.nearest(full, positional_only=False)
    assert match is not None and match.n_tokens == 4 and match.checkpoint is not None


def test_orphans_are_refused_and_subtrees_removed_with_their_checkpoints() -> None:
    index, a, b, c = _chain()
    stray = _block(_block(None, 0, [42]), 1, [43])
    assert not index.add_block(stray)
    index.add_checkpoint(Checkpoint(b"k" * 16, c.hash, 3, Path("k"), 10, 0.0, False))
    removed = index.remove_subtree(b)
    assert set(removed) == {b.path, c.path, Path("k")}
    assert set(index.blocks) == {a.hash} and index.nbytes == a.nbytes
    assert index.n_checkpoints == 0


def test_lru_leaves_are_checkpoints_and_childless_blocks_oldest_first() -> None:
    index = BlockIndex(FP)
    a = _block(None, 0, [1, 2], used=1.0)
    old = _block(a, 2, [3], used=2.0)
    new = _block(a, 2, [4], used=3.0)
    for block in (a, old, new):
        index.add_block(block)
    leaves = index.lru_leaves()
    assert [item for _, _, item in sorted(leaves)] == [old, new]
