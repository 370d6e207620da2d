#!/usr/bin/env bash
# Build a 32x32 photo corpus (image folder with train/ and test/) from the photographs in Debian's
# wallpaper packages, or from any folder of photos.
#
#   scripts/fetch_photo_corpus.sh [--out runs/photo_corpus] [--work runs/photo_corpus_src]
#                                 [--photos DIR] [--python PY] [-- extra make_photo_crops.py args]
#
# Without --photos: `apt-get download` the packages plasma-workspace-wallpapers, ukui-wallpapers,
# lomiri-wallpapers and gnome-backgrounds into WORK (no install, no root needed for the download
# itself), unpack each with `dpkg -x`, and copy the allow-listed photographs (PHOTOS below, the
# largest size of each) into WORK/photos. Everything else in those packages - renders, vector
# art, illustrations, logos - is left out; docs/photo_corpus.md lists each kept photo with its
# author and licence. Two whole photos are held out for test (TEST below).
# With --photos DIR: DIR's photos are used as they are (every fifth held out for test unless
# --test names are passed through after --).
# Then scripts/make_photo_crops.py cuts native 32x32 crops and area-downsampled whole-scene
# crops into OUT/train, OUT/test, OUT/heldout-native/test and OUT/heldout-scene/test.
set -euo pipefail

OUT=runs/photo_corpus
WORK=runs/photo_corpus_src
PHOTOS_DIR=""
PY="${PYTHON:-.venv/bin/python}"
EXTRA=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --out) OUT="$2"; shift 2 ;;
    --work) WORK="$2"; shift 2 ;;
    --photos) PHOTOS_DIR="$2"; shift 2 ;;
    --python) PY="$2"; shift 2 ;;
    --) shift; EXTRA=("$@"); break ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

PACKAGES=(plasma-workspace-wallpapers ukui-wallpapers lomiri-wallpapers gnome-backgrounds)
# Photographs in those packages (Plasma wallpaper folder names; inspected by eye in
# plasma-workspace-wallpapers 4:5.27.5-2). ukui-wallpapers 20.04.3, lomiri-wallpapers 20.04.0
# and gnome-backgrounds 43.1 hold only illustrations, renders and patterns: nothing is kept.
# "Kite" is left out: a sky photo with a drawn logo-coloured kite in it.
PHOTOS=(BytheWater ColdRipple ColorfulCups DarkestHour EveningGlow FallenLeaf Grey OneStandsOut
        Path summer_1am)
TEST=(EveningGlow.jpg Grey.jpg)

if [[ -z "$PHOTOS_DIR" ]]; then
  command -v apt-get >/dev/null && command -v dpkg >/dev/null || {
    echo "needs apt-get and dpkg (Debian/Ubuntu); or pass --photos DIR" >&2; exit 2; }
  mkdir -p "$WORK/debs" "$WORK/root" "$WORK/photos"
  (cd "$WORK/debs" && apt-get download "${PACKAGES[@]}")
  for deb in "$WORK"/debs/*.deb; do dpkg -x "$deb" "$WORK/root"; done
  for name in "${PHOTOS[@]}"; do
    folder="$WORK/root/usr/share/wallpapers/$name/contents/images"
    [[ -d "$folder" ]] || { echo "missing wallpaper $name in the packages" >&2; exit 1; }
    # The largest size (width x height in the file name) is the one nearest the original.
    largest=$(ls "$folder" | awk -Fx '{split($2, h, "."); print $1 * h[1], $0}' \
              | sort -n | tail -1 | cut -d' ' -f2)
    cp "$folder/$largest" "$WORK/photos/$name.${largest##*.}"
  done
  PHOTOS_DIR="$WORK/photos"
  if [[ ${#EXTRA[@]} -eq 0 ]]; then EXTRA=(--test "${TEST[@]}"); fi
  for pkg in "${PACKAGES[@]}"; do
    echo "$pkg: $(ls "$WORK"/debs/"${pkg}"_*.deb | xargs -n1 basename)"
  done
fi

rm -rf "$OUT"
"$PY" "$HERE/make_photo_crops.py" --photos "$PHOTOS_DIR" --out "$OUT" "${EXTRA[@]}"
echo "train: $(ls "$OUT/train" | wc -l) crops, test: $(ls "$OUT/test" | wc -l) crops in $OUT"
