#!/usr/bin/env python3
"""Exports scikit-learn's bundled 8x8 handwritten digits into data/digits/ (run once; the output
is committed, so the tests need no Python).

    python3 -m pip install scikit-learn==1.9.1
    python3 scripts/export_digits.py

Writes data/digits/digits.csv (one image per line: 64 pixel values 0..16, row by row, then the
label 0..9; 1,797 lines, in scikit-learn's order) and data/digits/VERSIONS.json.
"""

import json
import sys
from pathlib import Path

import sklearn
from sklearn.datasets import load_digits


def main():
    out = Path(__file__).resolve().parent.parent / "data" / "digits"
    out.mkdir(parents=True, exist_ok=True)
    digits = load_digits()
    lines = []
    for pixels, label in zip(digits.data.astype(int), digits.target.astype(int)):
        lines.append(",".join(str(v) for v in list(pixels) + [label]))
    (out / "digits.csv").write_text("\n".join(lines) + "\n")
    versions = {
        "python": sys.version.split()[0],
        "scikit-learn": sklearn.__version__,
        "images": len(lines),
    }
    (out / "VERSIONS.json").write_text(json.dumps(versions, indent=2) + "\n")
    print(f"wrote {len(lines)} images to {out}")


if __name__ == "__main__":
    main()
