#!/usr/bin/env bash
# Copies the pinned xterm.js files (and their licenses) into src/web/assets/vendor, which the
# binary embeds. Run after changing versions in package.json; the build itself never needs npm.
set -euo pipefail
cd "$(dirname "$0")"
npm ci --no-audit --no-fund --loglevel=error
out=../src/web/assets/vendor
mkdir -p "$out"
cp node_modules/@xterm/xterm/lib/xterm.js "$out/xterm.js"
cp node_modules/@xterm/xterm/css/xterm.css "$out/xterm.css"
cp node_modules/@xterm/xterm/LICENSE "$out/LICENSE.xterm"
cp node_modules/@xterm/addon-fit/lib/addon-fit.js "$out/addon-fit.js"
cp node_modules/@xterm/addon-fit/LICENSE "$out/LICENSE.addon-fit"
