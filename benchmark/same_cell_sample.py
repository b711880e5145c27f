"""Draw the sample of same-cell candidate pairs that is labelled by eye.

    python benchmark/same_cell_sample.py DATA_DIR OUT_DIR [--seed 0]

Scores every candidate pair of the class-folder data set ``DATA_DIR`` exactly as the linker
does (``cells.same_cell_pairs`` without the threshold), leaves out byte-identical pairs (they
need no eye), and draws a stratified random sample: 20 pairs scoring >= 0.9, 15 in [0.8, 0.9)
and 10 in [0.6, 0.8). Writes ``OUT_DIR/sample.csv`` (the columns of
``studies/labels/smids_same_cell_pairs.csv`` with ``same_cell`` empty) and montages
``OUT_DIR/pairs_<n>.png`` (each pair side by side, numbered as in the CSV) to label by eye.
The labels themselves are human input; this script only makes the draw reproducible.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from smids_eval.cells import (
    _canvas_side,
    _spectra,
    candidate_pairs,
    file_hashes,
    load_grey,
    pair_scores,
)

#: (low, high, pairs drawn) per score stratum
STRATA = ((0.9, 1.01, 20), (0.8, 0.9, 15), (0.6, 0.8, 10))
IMAGE_SUFFIXES = {".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff"}


def scored_candidates(root: Path) -> pd.DataFrame:
    """Every candidate pair of the files under ``root`` with its score and file hashes."""
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    crops = load_grey(paths)
    pairs = candidate_pairs(_spectra(crops, _canvas_side(crops)))
    scores = pair_scores(crops, pairs)
    hashes = np.asarray(file_hashes(paths))
    rel = np.asarray([p.relative_to(root).as_posix() for p in paths])
    a, b = pairs[:, 0], pairs[:, 1]
    return pd.DataFrame({"sha256_a": hashes[a], "sha256_b": hashes[b], "path_a": rel[a],
                         "path_b": rel[b], "score": np.round(scores, 4)})


def draw_sample(candidates: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """The stratified sample (``STRATA``) of non-byte-identical pairs, in drawing order."""
    rng = np.random.default_rng(seed)
    pool = candidates[candidates["sha256_a"] != candidates["sha256_b"]]
    parts = []
    for low, high, n in STRATA:
        stratum = pool[(pool["score"] >= low) & (pool["score"] < high)]
        parts.append(stratum.iloc[np.sort(rng.choice(len(stratum), min(n, len(stratum)),
                                                      replace=False))])
    sample = pd.concat(parts, ignore_index=True)
    return sample.assign(same_cell="", labelled_by="", note="")


def montages(sample: pd.DataFrame, root: Path, out: Path, per_sheet: int = 6,
             side: int = 260) -> list[Path]:
    """Sheets of ``per_sheet`` pairs (a | b at native scale), each numbered as its CSV row."""
    sheets = []
    for start in range(0, len(sample), per_sheet):
        rows = sample.iloc[start:start + per_sheet]
        sheet = Image.new("RGB", (2 * side + 30, len(rows) * (side + 24)), "white")
        draw = ImageDraw.Draw(sheet)
        for k, (n, row) in enumerate(rows.iterrows()):
            y = k * (side + 24)
            for col, path in enumerate((row["path_a"], row["path_b"])):
                sheet.paste(Image.open(root / path).convert("RGB"), (col * (side + 10), y))
            draw.text((4, y + side + 4), f"#{n}  score {row['score']:.3f}", fill="black")
        sheets.append(out / f"pairs_{start // per_sheet}.png")
        sheet.save(sheets[-1])
    return sheets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    candidates = scored_candidates(args.data_dir)
    candidates.to_csv(args.out_dir / "candidates.csv", index=False)
    sample = draw_sample(candidates, args.seed)
    sample.to_csv(args.out_dir / "sample.csv", index=False)
    for path in montages(sample, args.data_dir, args.out_dir):
        print(path)


if __name__ == "__main__":
    main()
