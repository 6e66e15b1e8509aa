#!/usr/bin/env bash
# Prepares a fresh Debian bookworm machine to build and test litefs.
#
# 1. Installs the Debian packages the build and the tests need (FUSE 3, the
#    sqlite3 CLI, a C toolchain, ...), skipping those already installed.
# 2. Fetches Consul, which bookworm does not package, from Debian's bullseye
#    archive through a PRIVATE apt configuration under .local/apt: the
#    system's sources, lists and caches are never touched. The .deb is
#    unpacked (not installed) into .local/consul, so the binary is
#    .local/consul/usr/bin/consul.
# 3. Fetches promtool (the metrics test checks litefs's /metrics with it)
#    from Debian's own prometheus package: downloaded with the system's apt
#    and unpacked (not installed) into .local/prometheus, so the binary is
#    .local/prometheus/usr/bin/promtool. Installing the package would start
#    and enable a Prometheus server listening on every interface, and pull
#    a dozen JavaScript packages for its web UI; promtool needs only libc.
# 4. Checks that a Rust toolchain (cargo) is on PATH.
#
# Safe to run again: finished steps are detected and skipped.
# Runs as root; otherwise uses sudo for the apt-get steps only.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LOCAL="$ROOT/.local"
APT_DIR="$LOCAL/apt"
CONSUL_DIR="$LOCAL/consul"
CONSUL_BIN="$CONSUL_DIR/usr/bin/consul"
PROM_DIR="$LOCAL/prometheus"
PROMTOOL_BIN="$PROM_DIR/usr/bin/promtool"

PACKAGES=(
    fuse3
    libfuse3-dev
    pkg-config
    sqlite3
    build-essential
    iproute2
    ca-certificates
    python3
    e2fsprogs
    util-linux
    mount
)

say() { printf 'setup: %s\n' "$*"; }
# shellcheck source=scripts/apt-private.sh
. "$(dirname "${BASH_SOURCE[0]}")/apt-private.sh"
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
else
    die "not root and sudo is not installed; run this script as root"
fi

command -v apt-get >/dev/null 2>&1 || die "apt-get not found: this script is for Debian (bookworm)"

# --- 1. Debian packages -----------------------------------------------------

is_installed() {
    [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" = "install ok installed" ]
}

missing=()
for pkg in "${PACKAGES[@]}"; do
    is_installed "$pkg" || missing+=("$pkg")
done

if [ "${#missing[@]}" -eq 0 ]; then
    say "Debian packages already installed: ${PACKAGES[*]}"
else
    say "installing: ${missing[*]}"
    "${SUDO[@]}" apt-get update
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y --no-install-recommends "${missing[@]}"
fi

# --- 2. Consul from bullseye, through a private apt configuration ----------

consul_works() {
    [ -x "$CONSUL_BIN" ] && "$CONSUL_BIN" version >/dev/null 2>&1
}

if consul_works; then
    say "Consul already unpacked: $("$CONSUL_BIN" version | head -n 1)"
else
    say "fetching Consul from Debian bullseye (private apt config in $APT_DIR)"
    mkdir -p "$APT_DIR/debs"
    apt_private_config "$APT_DIR" "deb http://deb.debian.org/debian bullseye main"
    apt-get "${apt_private[@]}" update
    rm -f "$APT_DIR"/debs/consul_*.deb
    (cd "$APT_DIR/debs" && apt-get "${apt_private[@]}" download consul)

    deb="$(ls "$APT_DIR"/debs/consul_*.deb 2>/dev/null | head -n 1 || true)"
    [ -n "$deb" ] || die "apt-get download consul produced no .deb in $APT_DIR/debs"
    rm -rf "$CONSUL_DIR"
    mkdir -p "$CONSUL_DIR"
    dpkg -x "$deb" "$CONSUL_DIR"
    consul_works || die "unpacked $deb but '$CONSUL_BIN version' fails"
    say "Consul ready: $("$CONSUL_BIN" version | head -n 1)"
fi

# --- 3. promtool from bookworm's prometheus package, unpacked --------------

promtool_works() {
    [ -x "$PROMTOOL_BIN" ] && "$PROMTOOL_BIN" --version >/dev/null 2>&1
}

if promtool_works; then
    say "promtool already unpacked: $("$PROMTOOL_BIN" --version 2>&1 | head -n 1)"
else
    say "fetching promtool from Debian's prometheus package (unpacked into $PROM_DIR)"
    if ! apt-cache show prometheus >/dev/null 2>&1; then
        # A fresh machine (or container) may have no package lists yet.
        "${SUDO[@]}" apt-get update
    fi
    mkdir -p "$LOCAL/debs"
    rm -f "$LOCAL"/debs/prometheus_*.deb
    # Downloading needs no root; apt notes that it does not sandbox it.
    (cd "$LOCAL/debs" && apt-get download prometheus 2>&1 | grep -v '^W: Download is performed unsandboxed' || true)
    deb="$(ls "$LOCAL"/debs/prometheus_*.deb 2>/dev/null | head -n 1 || true)"
    [ -n "$deb" ] || die "apt-get download prometheus produced no .deb in $LOCAL/debs"
    rm -rf "$PROM_DIR"
    mkdir -p "$PROM_DIR"
    dpkg -x "$deb" "$PROM_DIR"
    promtool_works || die "unpacked $deb but '$PROMTOOL_BIN --version' fails"
    say "promtool ready: $("$PROMTOOL_BIN" --version 2>&1 | head -n 1)"
fi

# --- 4. Rust toolchain ------------------------------------------------------

if command -v cargo >/dev/null 2>&1; then
    say "Rust toolchain: $(cargo --version)"
else
    die "cargo not found on PATH. Install Rust with rustup (https://rustup.rs):
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh
then open a new shell (or run: . \"\$HOME/.cargo/env\") and run this script again"
fi

say "done. Consul binary: $CONSUL_BIN; promtool: $PROMTOOL_BIN"
