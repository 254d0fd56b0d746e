#!/usr/bin/env bash
# The one system library strhub needs beyond its Python packages: FriBiDi, which the libraqm inside Pillow's wheels
# loads at run time to lay out right-to-left and combining text (Arabic, Devanagari) when rendering words.
# Installs nothing where Pillow already has it; else installs it with apt-get (as root, or with `sudo -n`), or
# names the package in one line and fails. Run it after the pip install (it asks Pillow).
#   bash scripts/system_packages.sh
set -euo pipefail
packages="libfribidi0"
has_layout() { python -c 'from PIL import features; raise SystemExit(not features.check("raqm"))'; }

has_layout && exit 0
if command -v apt-get >/dev/null; then
    if [[ $(id -u) == 0 ]]; then
        as_root=(env)
    elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
        as_root=(sudo -n env)
    fi
    if [[ -n ${as_root[*]:-} ]]; then
        "${as_root[@]}" DEBIAN_FRONTEND=noninteractive apt-get update -qq
        "${as_root[@]}" DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $packages >/dev/null
        has_layout && exit 0
    fi
fi
echo "strhub needs the system package $packages (FriBiDi; 'fribidi' on Fedora, Alpine and Homebrew) for Pillow's" \
     "text layout: install it as root (apt-get install $packages) and run this again" >&2
exit 1
