#!/usr/bin/env bash
# Debian packages the tests and benchmarks use: `scripts/system-deps.sh redis-server prometheus`.
# Installs only what is missing, and needs root (or sudo) only then. A package is "present" when
# its command is on PATH (prometheus also needs promtool).
set -euo pipefail
PATH="$PATH:/usr/sbin:/sbin"  # Debian installs haproxy there, off a user's PATH
missing=()
for pkg in "$@"; do
  case "$pkg" in
    prometheus) command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 || missing+=(prometheus) ;;
    *) command -v "$pkg" >/dev/null 2>&1 || missing+=("$pkg") ;;
  esac
done
[ ${#missing[@]} -eq 0 ] && exit 0
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then sudo="sudo"; else
    echo "system-deps: missing ${missing[*]} and not root: install them with apt-get" >&2
    exit 1
  fi
fi
echo "system-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
# --no-install-recommends keeps prometheus from pulling its exporters and web assets
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
