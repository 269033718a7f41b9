"""Build the offline random-weight demo model: `python tools/build_demo_model.py OUT_DIR`."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

# Run from a checkout without installing: make the repository importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cachelayer.backend.demo_model import build_demo_model


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and build the model directory."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out_dir", type=Path, help="directory to create (reused if complete)")
    parser.add_argument("--hidden", type=int, default=64, help="hidden size (default 64)")
    parser.add_argument("--layers", type=int, default=2, help="transformer layers (default 2)")
    parser.add_argument("--heads", type=int, default=2, help="attention heads (default 2)")
    parser.add_argument("--vocab", type=int, default=2048, help="vocabulary size (default 2048)")
    parser.add_argument("--seed", type=int, default=0, help="weight seed (default 0)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    path = build_demo_model(
        args.out_dir,
        hidden_size=args.hidden,
        num_layers=args.layers,
        num_heads=args.heads,
        vocab_size=args.vocab,
        seed=args.seed,
    )
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
