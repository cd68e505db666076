#!/bin/sh
# fetch-plugins.sh: download this server's plugin set from the registry at start-up.
# Shipped by Slipway; POSIX sh plus wget, sed, tr and sha256sum, so a FROM scratch image with only
# /bin/busybox can run it (`/bin/busybox sh /fetch-plugins.sh`).
#
#   SLIPWAY_REGISTRY      registry base URL, e.g. http://127.0.0.1:5000          (required)
#   SLIPWAY_PLUGINS       plugin names, space separated, e.g. "chat perms"       (required)
#   SLIPWAY_CHANNEL       tag to fetch, e.g. "dev-lobby" (<environment>-<server type>) (required)
#   SLIPWAY_PLUGIN_REPO   registry path prefix (default: plugins)
#   SLIPWAY_PLUGIN_DIR    where the jars go (default: /plugins)
#
# Writes $SLIPWAY_PLUGIN_DIR/plugins.txt, one "<plugin> <version> <digest>" line each, only
# once every jar is in place: a server that reports is a server that has its whole set.
# Each jar's sha256 must match the manifest's layer digest before it replaces the old one: a
# mismatch fails the fetch and keeps the jar that was there.
set -eu

for tool in wget sed tr mv mkdir rm sha256sum; do
  command -v "$tool" >/dev/null 2>&1 || eval "$tool() { busybox $tool \"\$@\"; }"
done

registry=${SLIPWAY_REGISTRY:?set SLIPWAY_REGISTRY}
plugins=${SLIPWAY_PLUGINS:?set SLIPWAY_PLUGINS}
channel=${SLIPWAY_CHANNEL:?set SLIPWAY_CHANNEL}
repo=${SLIPWAY_PLUGIN_REPO:-plugins}
dir=${SLIPWAY_PLUGIN_DIR:-/plugins}
accept="Accept: application/vnd.oci.image.manifest.v1+json"

mkdir -p "$dir"
rm -f "$dir/plugins.txt.tmp"
for plugin in $plugins; do
  manifest=$(wget -q -O - --header "$accept" "$registry/v2/$repo/$plugin/manifests/$channel" | tr -d '\n\r\t ') || {
    echo "fetch-plugins: no $repo/$plugin:$channel in $registry" >&2; exit 1; }
  digest=$(printf '%s' "$manifest" | sed -n 's/.*"layers":\[{[^]]*"digest":"\(sha256:[0-9a-f]*\)".*/\1/p')
  version=$(printf '%s' "$manifest" | sed -n 's/.*"org\.opencontainers\.image\.version":"\([^"]*\)".*/\1/p')
  [ -n "$digest" ] || { echo "fetch-plugins: $repo/$plugin:$channel has no jar layer" >&2; exit 1; }
  rm -f "$dir/$plugin.jar.tmp"
  wget -q -O "$dir/$plugin.jar.tmp" "$registry/v2/$repo/$plugin/blobs/$digest" || {
    rm -f "$dir/$plugin.jar.tmp"; echo "fetch-plugins: cannot download $repo/$plugin@$digest" >&2; exit 1; }
  got=$(sha256sum "$dir/$plugin.jar.tmp" | sed 's/[[:space:]].*//')
  if [ "sha256:$got" != "$digest" ]; then
    rm -f "$dir/$plugin.jar.tmp"
    echo "fetch-plugins: $repo/$plugin:$channel: jar digest sha256:$got does not match the manifest's $digest; keeping the old jar" >&2
    exit 1
  fi
  mv "$dir/$plugin.jar.tmp" "$dir/$plugin.jar"
  echo "$plugin ${version:-unknown} $digest" >>"$dir/plugins.txt.tmp"
done
mv "$dir/plugins.txt.tmp" "$dir/plugins.txt"
echo "fetch-plugins: $(tr '\n' ';' <"$dir/plugins.txt")" >&2
