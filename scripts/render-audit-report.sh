#!/usr/bin/env bash
# Renders an audit report page in headless Chromium and checks that the
# who-talks-to-whom graph is on it.
#
#   scripts/render-audit-report.sh REPORT.html [OUT.png]
#
# Installs Debian's chromium with apt-get when it is missing. Exits 0 when
# the page rendered and contains id="talk-graph", 1 otherwise.
set -euo pipefail

html=${1:?usage: $0 REPORT.html [OUT.png]}
png=${2:-${html%.html}.png}
html=$(realpath "$html")

browser=$(command -v chromium || command -v chromium-browser || true)
if [ -z "$browser" ]; then
    echo "installing chromium (apt-get)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq chromium >&2
    browser=$(command -v chromium)
fi

profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
flags=(--headless --no-sandbox --disable-gpu --disable-background-networking
       --disable-component-update --disable-sync --no-first-run
       --user-data-dir="$profile")

"$browser" "${flags[@]}" --screenshot="$png" --window-size=1400,1800 "file://$html" 2>/dev/null
test -s "$png" || { echo "no screenshot written" >&2; exit 1; }

if "$browser" "${flags[@]}" --dump-dom "file://$html" 2>/dev/null | grep -q 'id="talk-graph"'; then
    echo "rendered $png; talk-graph present"
else
    echo "rendered $png, but the page has no talk-graph element" >&2
    exit 1
fi
