#!/usr/bin/env bash
# Proof that a refactor leaves renders unchanged: renders a real clip with every built-in method on
# both engines and prints a digest of the decoded frames and of the file. Run it before and after
# (e.g. in a `git worktree` of the old commit) and compare the lines.
#   scripts/render_hashes.sh OUTDIR [ENGINES]     (ENGINES default: "local prefect")
set -euo pipefail
out=${1:?usage: render_hashes.sh OUTDIR [ENGINES]}
engines=${2:-local prefect}
clip=${CLIP:-../shared/data/videos/pyscenedetect_goldeneye-vfr-drop3.mp4}
bin=${FILMSTYLE:-.venv/bin/filmstyle}
ffmpeg=$(.venv/bin/python -c "from pipeline.ffmpeg_tools import ffmpeg_binary; print(ffmpeg_binary())")
mkdir -p "$out"
for method in per-frame flow-blend flow-recurrent; do
  for engine in $engines; do
    f="$out/$method-$engine.mp4"
    "$bin" render "$clip" -o "$f" --method "$method" --engine "$engine" --style starry_night \
      --width 256 --out-width 320 --chunk-frames 24 --threads 1 -q >/dev/null
    frames=$("$ffmpeg" -v error -i "$f" -f rawvideo -pix_fmt rgb24 - | sha256sum | cut -c1-16)
    file=$(sha256sum "$f" | cut -c1-16)
    echo "$method $engine frames=$frames file=$file"
  done
done
