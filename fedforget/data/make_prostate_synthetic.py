"""Command line: write synthetic ProstateMRI sites in the real on-disk layout."""

from __future__ import annotations

from pathlib import Path

from fedforget.data.prostate import DEFAULT_IMAGE_SIZE, SITES, write_synthetic_prostate


def main(argv: list[str] | None = None) -> int:
    """Write the six synthetic sites to ``OUT_DIR``; return the exit status."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m fedforget.data.make_prostate_synthetic",
        description="Write synthetic ProstateMRI sites in the real on-disk layout "
        "(then: fedforget run --run-config experiments/prostate-synthetic-unet-cpu.toml "
        "--data-dir OUT_DIR, or dataset=prostate with data-dir=OUT_DIR).",
    )
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--image-size", type=int, default=DEFAULT_IMAGE_SIZE)
    parser.add_argument("--cases-per-site", type=int, default=3)
    parser.add_argument("--depth", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    write_synthetic_prostate(
        args.out_dir,
        image_size=args.image_size,
        cases_per_site=args.cases_per_site,
        depth=args.depth,
        seed=args.seed,
    )
    print(f"wrote {', '.join(SITES)} to {args.out_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
