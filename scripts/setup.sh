#!/usr/bin/env bash
# Idempotent set-up of a development/run environment at the repository root:
#   .venv/                 Python virtualenv with orbital-raft installed (editable) + dev tools
#   .venv/bin/orbital      the command-line tool
#   .venv/bin/toxiproxy-server   the Toxiproxy server (built with Go when not already present)
# Options:
#   --tests    also install what only the test suite needs: headless Chromium for the report
#              test, Debian's etcd-server (etcd, the second system the chaos runs test) and
#              nftables (per-source routing of etcd's peer links through Toxiproxy)
# Re-running it does only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
want_tests=0
for arg in "$@"; do
  case "$arg" in
    --tests) want_tests=1 ;;
    *) echo "setup.sh: unknown option $arg (known: --tests)" >&2; exit 2 ;;
  esac
done

say() { printf '[setup] %s\n' "$*" >&2; }

# 1. The virtualenv and the package.
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  say "creating .venv with $($python --version)"
  "$python" -m venv .venv
fi
stamp=.venv/.orbital-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ ! -x .venv/bin/orbital ]; then
  say "installing orbital-raft and its dependencies into .venv"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
  touch "$stamp"
fi

# 2. The Toxiproxy server. It is in neither PyPI nor Debian; build the pinned release with Go
#    (its go.mod needs Go >= 1.23). Users without Go can put a release binary from
#    https://github.com/Shopify/toxiproxy/releases on PATH as toxiproxy-server, or point
#    TOXIPROXY_SERVER at it.
toxiproxy_version=v2.12.0
tp=.venv/bin/toxiproxy-server
tp_stamp=.venv/.toxiproxy-version   # `go install` builds report their version as "git"
if [ -n "${TOXIPROXY_SERVER:-}" ] && [ -x "${TOXIPROXY_SERVER}" ]; then
  ln -sf "$TOXIPROXY_SERVER" "$tp"
  echo external > "$tp_stamp"
elif [ ! -x "$tp" ] || [ "$(cat "$tp_stamp" 2>/dev/null)" != "$toxiproxy_version" ]; then
  if command -v go >/dev/null 2>&1; then
    say "building toxiproxy-server $toxiproxy_version with $(go version | cut -d' ' -f3)"
    gobin=$(mktemp -d)
    GOBIN=$gobin go install "github.com/Shopify/toxiproxy/v2/cmd/server@$toxiproxy_version"
    mv -f "$gobin/server" "$tp"
    rmdir "$gobin"
    echo "$toxiproxy_version" > "$tp_stamp"
  elif command -v toxiproxy-server >/dev/null 2>&1; then
    say "using $(command -v toxiproxy-server) (Go is not installed to build the pinned $toxiproxy_version)"
    ln -sf "$(command -v toxiproxy-server)" "$tp"
    echo external > "$tp_stamp"
  else
    say "toxiproxy-server not found and Go is not installed: download a release binary from"
    say "https://github.com/Shopify/toxiproxy/releases/tag/$toxiproxy_version and set TOXIPROXY_SERVER"
    exit 1
  fi
fi

# 3. Debian packages for the OS-level faults: fuse3 (libfuse3 and fusermount3, for the disk
#    fault file system chaos/diskfs.py) and faketime (libfaketime, for clock faults).
missing=()
command -v fusermount3 >/dev/null 2>&1 || missing+=(fuse3)
compgen -G "/usr/lib/*/faketime/libfaketime.so.1" >/dev/null || missing+=(faketime libfaketime)
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing Debian's ${missing[*]} (disk and clock faults)"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    say "not installed: ${missing[*]} (needs root and apt-get): disk and clock faults will not run"
  fi
fi

# 4. Test-only tools.
if [ "$want_tests" = 1 ]; then
  # A wheelhouse of every dependency (and the build backend), so the test that installs the
  # wheel into a fresh venv (tests/test_wheel.py) runs with `pip --no-index`, offline.
  wh=.venv/wheelhouse
  if [ ! -f "$wh/.stamp" ] || [ pyproject.toml -nt "$wh/.stamp" ]; then
    say "filling $wh with the dependencies' wheels"
    mkdir -p "$wh"
    .venv/bin/python - > "$wh/requirements.txt" <<'PY'
import tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
build = tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"]
print("\n".join(project["dependencies"] + project["optional-dependencies"]["chaos"] + build))
PY
    .venv/bin/python -m pip download --quiet --disable-pip-version-check -d "$wh" -r "$wh/requirements.txt"
    touch "$wh/.stamp"
  fi
  extra=()
  command -v etcd >/dev/null 2>&1 || extra+=(etcd-server)
  command -v nft >/dev/null 2>&1 || extra+=(nftables)
  if [ "${#extra[@]}" -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      say "installing Debian's ${extra[*]} (etcd as a system under test)"
      apt-get update -qq >/dev/null
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${extra[@]}" >/dev/null
    else
      say "not installed: ${extra[*]} (needs root and apt-get): the etcd tests will be skipped"
    fi
  fi
  if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      say "installing Debian's chromium for the report rendering test"
      apt-get update -qq >/dev/null
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
      say "chromium is not installed: the report rendering test will be skipped"
    fi
  fi
  if ! command -v ip >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      say "installing Debian's iproute2 for the network-namespace cluster test"
      apt-get update -qq >/dev/null
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2 >/dev/null
    else
      say "ip (iproute2) is not installed: the network-namespace test will be skipped"
    fi
  fi
  # OpenSSH's server for the test bed of SSH hosts (scripts/testbed.sh runs one sshd per
  # network namespace). Installing it must not start the machine's own sshd: a policy-rc.d
  # that refuses every service start is in place while apt-get runs, unless one already is.
  if [ ! -x /usr/sbin/sshd ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      say "installing Debian's openssh-server for the SSH test bed (no service is started)"
      policy=/usr/sbin/policy-rc.d
      made_policy=0
      if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' > "$policy"
        chmod 755 "$policy"
        made_policy=1
      fi
      apt-get update -qq >/dev/null
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        openssh-server openssh-client >/dev/null || { [ "$made_policy" = 0 ] || rm -f "$policy"; exit 1; }
      [ "$made_policy" = 0 ] || rm -f "$policy"
    else
      say "openssh-server is not installed: the SSH test bed tests will be skipped"
    fi
  fi
fi
say "ready: $root/.venv/bin/orbital"
