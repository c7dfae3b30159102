#!/usr/bin/env bash
# Unpack sidekiq.rb 7 (Debian 13's ruby-sidekiq, 7.3.2 today, with the redis-client and
# connection_pool it needs) into a directory, for the interop tests to run beside Debian 12's
# 6.4.1.
#
#   scripts/fetch-sidekiq7.sh [DIR]        # default: .cache/sidekiq-7
#
# Nothing is installed system-wide: the .debs are downloaded from trixie with a private apt
# state and unpacked with `dpkg -x`; the tests put their lib directories on RUBYLIB and run
# them on the system's Ruby (3.1 on bookworm; Sidekiq 7.3 needs 2.7+). Idempotent.
set -euo pipefail

DIR="${1:-.cache/sidekiq-7}"
SUITE="trixie"
PACKAGES=(ruby-sidekiq ruby-redis-client ruby-connection-pool)
GEMS="$DIR/usr/share/rubygems-integration/all/gems"

if [ -f "$DIR/.complete" ]; then
    exit 0
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/archives/partial" "$work/debs"
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $SUITE main" \
    > "$work/sources.list"
apt_opts=(
    -o "Dir::Etc::sourcelist=$work/sources.list" -o Dir::Etc::sourceparts=/dev/null
    -o "Dir::State::Lists=$work/lists" -o "Dir::Cache::Archives=$work/archives"
    -o "Dir::Cache::pkgcache=$work/pkgcache.bin" -o "Dir::Cache::srcpkgcache=$work/srcpkgcache.bin"
    -o APT::Sandbox::User=root -qq
)
echo "fetch-sidekiq7: downloading ${PACKAGES[*]} from Debian $SUITE" >&2
apt-get "${apt_opts[@]}" update
(cd "$work/debs" && apt-get "${apt_opts[@]}" download "${PACKAGES[@]}")
rm -rf "$DIR"
mkdir -p "$DIR"
for deb in "$work"/debs/*.deb; do
    dpkg -x "$deb" "$DIR"
done

for gem in sidekiq-7. redis-client connection_pool; do
    compgen -G "$GEMS/$gem*/lib" >/dev/null || {
        echo "fetch-sidekiq7: $gem missing under $GEMS" >&2
        exit 1
    }
done
touch "$DIR/.complete"
