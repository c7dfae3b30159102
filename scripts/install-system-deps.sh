#!/usr/bin/env bash
# Install the Debian packages the test suite needs, but only those that are missing.
#
#   scripts/install-system-deps.sh [EXTRA_PACKAGE ...]
#
# Quiet and idempotent when everything is present. Runs apt-get as root, or through sudo
# when not root. Extra package names on the command line are installed too when
# `dpkg-query` says they are not installed yet.
set -euo pipefail

# The project's system packages. Add new ones here (and a check in is_present if a command
# or library check is more reliable than dpkg for it).
PACKAGES="redis-server redis-sentinel openssl ruby ruby-sidekiq ruby-activejob ruby-rack ruby-webrick ruby-sidekiq-cron chromium"

# Return 0 when a package's functionality is already available. Commands and Ruby libraries
# are checked directly, so a redis-server or sidekiq installed another way (e.g. a gem) counts.
is_present() {
    case "$1" in
        redis-server) command -v redis-server >/dev/null 2>&1 ;;
        redis-sentinel) command -v redis-sentinel >/dev/null 2>&1 ;;
        openssl) command -v openssl >/dev/null 2>&1 ;;
        ruby) command -v ruby >/dev/null 2>&1 ;;
        ruby-sidekiq) command -v ruby >/dev/null 2>&1 && ruby -e 'require "sidekiq"' >/dev/null 2>&1 ;;
        ruby-activejob) command -v ruby >/dev/null 2>&1 && ruby -e 'require "active_job"; require "global_id"' >/dev/null 2>&1 ;;
        ruby-rack) command -v rackup >/dev/null 2>&1 ;;
        ruby-webrick) command -v ruby >/dev/null 2>&1 && ruby -e 'require "webrick"' >/dev/null 2>&1 ;;
        ruby-sidekiq-cron) command -v ruby >/dev/null 2>&1 && ruby -e 'require "sidekiq-cron"' >/dev/null 2>&1 ;;
        chromium) command -v chromium >/dev/null 2>&1 ;;
        *) [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" = "install ok installed" ] ;;
    esac
}

missing=()
# shellcheck disable=SC2086  # PACKAGES is a space-separated list on purpose
for pkg in $PACKAGES "$@"; do
    is_present "$pkg" || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "install-system-deps: installing missing packages: ${missing[*]}" >&2

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-system-deps: apt-get not found; install these packages by hand: ${missing[*]}" >&2
    exit 1
fi

if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
else
    echo "install-system-deps: not root and no sudo; as root run:" >&2
    echo "  apt-get update && apt-get install -y --no-install-recommends ${missing[*]}" >&2
    exit 1
fi

if ! "${SUDO[@]}" apt-get update -qq; then
    echo "install-system-deps: 'apt-get update' failed; install by hand: ${missing[*]}" >&2
    exit 1
fi
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "${missing[@]}"

# Re-check: a package can install fine yet not give what we need (e.g. a broken gem path).
still_missing=()
for pkg in "${missing[@]}"; do
    is_present "$pkg" || still_missing+=("$pkg")
done
if [ ${#still_missing[@]} -ne 0 ]; then
    echo "install-system-deps: still missing after install: ${still_missing[*]}" >&2
    exit 1
fi
