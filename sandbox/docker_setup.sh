#!/usr/bin/env bash
# Make DockerSandbox usable on this machine without any registry:
#  1. install docker.io (Debian mirror) if there is no dockerd,
#  2. start dockerd (vfs storage, no iptables, no bridge) if no engine answers,
#  3. build a minimal rootfs from the host's Python (stdlib + numpy + needed shared libraries),
#     "docker import" it as agentrl-sandbox-base:latest, then build agentrl-sandbox:latest
#     from sandbox/Dockerfile on top of it (nothing is pulled).
# Usage: bash sandbox/docker_setup.sh [python]   (default: the python on PATH)
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
PY="$(readlink -f "$(${1:-python3} -c 'import sys; print(sys.executable)')")"
PREFIX="$(${PY} -c 'import sys; print(sys.base_prefix)')"
VER="$(${PY} -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
SITE="$(${PY} -c 'import numpy, os; print(os.path.dirname(os.path.dirname(numpy.__file__)))')"

if ! command -v dockerd >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null
fi
if ! docker info >/dev/null 2>&1; then
  nohup dockerd --storage-driver=vfs --iptables=false --bridge=none >/var/log/dockerd.log 2>&1 &
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || { echo "dockerd did not start, see /var/log/dockerd.log" >&2; exit 1; }
fi

ROOT="$(mktemp -d)"
trap 'rm -rf "$ROOT"' EXIT
mkdir -p "$ROOT$PREFIX/bin" "$ROOT$PREFIX/lib/python$VER/site-packages" "$ROOT/usr/local/bin" "$ROOT/etc" "$ROOT/tmp" "$ROOT/bin"
cp -a "$PY" "$ROOT$PREFIX/bin/"
cp -a "$PREFIX"/lib/libpython"$VER"*.so* "$ROOT$PREFIX/lib/" 2>/dev/null || true
tar -C "$PREFIX/lib/python$VER" --exclude=site-packages --exclude=test --exclude=idlelib --exclude=tkinter \
    --exclude=ensurepip -cf - . | tar -C "$ROOT$PREFIX/lib/python$VER" -xf -
for pkg in numpy numpy.libs sympy mpmath; do
  [ -e "$SITE/$pkg" ] && cp -a "$SITE/$pkg" "$ROOT$PREFIX/lib/python$VER/site-packages/"
done
ln -sf "$PREFIX/bin/$(basename "$PY")" "$ROOT/usr/local/bin/python3"
for tool in sh sleep true cat ls; do cp -L "$(type -P "$tool")" "$ROOT/bin/"; done
# Every shared library any copied binary or extension module links against.
{ find "$ROOT" -type f \( -name '*.so*' -o -perm -u+x \) -print0 | xargs -0 ldd 2>/dev/null || true; } \
  | awk '/=> \// {print $3} /^\s*\/lib/ {print $1}' | grep -v "^$ROOT" | sort -u | while read -r lib; do
    [ -e "$ROOT$lib" ] || cp -L --parents "$lib" "$ROOT"
  done
cp -L --parents /lib64/ld-linux-x86-64.so.2 "$ROOT"
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/sh\n' >"$ROOT/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$ROOT/etc/group"
chmod 1777 "$ROOT/tmp"
tar -C "$ROOT" -c . | docker import - agentrl-sandbox-base:latest >/dev/null
DOCKER_BUILDKIT=0 docker build -q -t agentrl-sandbox:latest "$HERE"
docker run --rm --network none agentrl-sandbox:latest python3 -c 'import numpy; print("agentrl-sandbox:latest ok, numpy", numpy.__version__)'
