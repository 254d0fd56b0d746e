#!/usr/bin/env bash
# The system packages strhub needs beyond its Python packages: FriBiDi, which the libraqm inside Pillow's wheels
# loads at run time to lay out right-to-left and combining text (Arabic, Devanagari) when rendering words; and, for
# the demo's browser test, Chromium and its driver. Installs nothing where they are there already; else installs
# them with apt-get (as root, or with `sudo -n`), or names the packages in one line and fails. Run it after the pip
# install (it asks Pillow).
#   bash scripts/system_packages.sh
set -euo pipefail
has_layout() { python -c 'from PIL import features; raise SystemExit(not features.check("raqm"))'; }
has_browser() { [[ -x /usr/bin/chromium && -x /usr/bin/chromedriver ]]; }
ready() { has_layout && has_browser; }

packages=$(echo $(has_layout || echo libfribidi0) $(has_browser || echo chromium chromium-driver))
ready && exit 0
if command -v apt-get >/dev/null; then
    if [[ $(id -u) == 0 ]]; then
        as_root=(env)
    elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
        as_root=(sudo -n env)
    fi
    if [[ -n ${as_root[*]:-} ]]; then
        "${as_root[@]}" DEBIAN_FRONTEND=noninteractive apt-get update -qq
        "${as_root[@]}" DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $packages >/dev/null
        ready && exit 0
    fi
fi
echo "strhub needs the system packages $packages (FriBiDi for Pillow's text layout, 'fribidi' on Fedora, Alpine and" \
     "Homebrew; Chromium and its driver for the demo's browser test): install them as root (apt-get install" \
     "$packages) and run this again" >&2
exit 1
