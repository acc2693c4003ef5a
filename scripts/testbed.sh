#!/usr/bin/env bash
# A test bed of N "hosts" on this machine, each a network namespace with its own OpenSSH
# server, for chaos runs with `placement = "ssh"` (docs/multi-host.md).
#
#   scripts/testbed.sh up [N]        N hosts (default 5), a control namespace, the inventory
#   scripts/testbed.sh exec CMD...   run CMD in the control namespace (the control node)
#   scripts/testbed.sh status        what is up
#   scripts/testbed.sh down          remove everything `up` made (also after a failed run)
#
# What `up` makes (nothing in the machine's own network namespace is touched):
#   NAME-br            a namespace holding the bridge br0
#   NAME-ctl           the control node's namespace, NET.1 on its eth0
#   NAME-h1..NAME-hN   one namespace per host, NET.(10+k) on its eth0, each with an sshd
#                      listening on NET.(10+k):22 (Debian's openssh-server; host key
#                      generated here, login by key only)
# and in DIR: id_ed25519 (the control node's key), known_hosts (every host's key),
# inventory.toml (what `orbital chaos run --placement ssh --inventory` reads), hK/ (each
# sshd's config, host key, pid file and log), hosts/hK/ (each host's own directory, where the
# runs upload their code and keep their nodes' data).
#
# Settings (environment): ORBITAL_TESTBED_DIR (default /tmp/orbital-testbed),
# ORBITAL_TESTBED_NAME (namespace prefix, default orbtb), ORBITAL_TESTBED_NET (the /24's
# first three octets, default 10.77.0), ORBITAL_TESTBED_PYTHON (the hosts' Python: default
# this repository's .venv/bin/python, which the namespaces see as they share the machine's
# file system), ORBITAL_TESTBED_TOXIPROXY (the hosts' toxiproxy-server: default the one beside
# that Python). Needs root, iproute2 and openssh-server (scripts/setup.sh --tests installs
# them). Exit 0 done, 1 failed (a failed `up` removes what it made), 2 bad usage.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
dir=${ORBITAL_TESTBED_DIR:-/tmp/orbital-testbed}
name=${ORBITAL_TESTBED_NAME:-orbtb}
net=${ORBITAL_TESTBED_NET:-10.77.0}
python=${ORBITAL_TESTBED_PYTHON:-$here/.venv/bin/python}
toxiproxy=${ORBITAL_TESTBED_TOXIPROXY:-$(dirname "$python")/toxiproxy-server}
sshd=/usr/sbin/sshd

say() { printf '[testbed] %s\n' "$*" >&2; }
die() { printf 'testbed: %s\n' "$*" >&2; exit "${2:-1}"; }

usage() {
  sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

namespaces() {  # every namespace of this test bed that exists now
  ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^${name}-(br|ctl|h[0-9]+)$" || true
}

need() {
  [ "$(id -u)" = 0 ] || die "needs root (network namespaces)" 2
  command -v ip >/dev/null 2>&1 || die "ip (iproute2) not found: run ./scripts/setup.sh --tests" 2
  [ -x "$sshd" ] || die "$sshd not found: run ./scripts/setup.sh --tests (Debian's openssh-server)" 2
  command -v ssh-keygen >/dev/null 2>&1 || die "ssh-keygen not found: install openssh-client" 2
  [[ "$name" =~ ^[a-z][a-z0-9]{0,7}$ ]] || die "ORBITAL_TESTBED_NAME must be 1-8 of [a-z0-9], got '$name'" 2
  [[ "$net" =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "ORBITAL_TESTBED_NET must be like 10.77.0, got '$net'" 2
}

ipx() {  # ip, with its error on failure
  local out
  if ! out=$(ip "$@" 2>&1); then
    die "ip $*: $out"
  fi
}

up() {
  local count=${1:-5}
  [[ "$count" =~ ^[0-9]+$ ]] && [ "$count" -ge 1 ] && [ "$count" -le 40 ] ||
    die "the number of hosts must be 1..40, got '$count'" 2
  need
  if [ -f "$dir/state" ] || [ -n "$(namespaces)" ]; then
    die "test bed '$name' is already up (or left over): run scripts/testbed.sh down first" 2
  fi
  [ -x "$python" ] || die "the hosts' Python $python is not executable (ORBITAL_TESTBED_PYTHON)" 2
  mkdir -p "$dir"
  chmod 700 "$dir"
  printf 'name=%s\nnet=%s\nhosts=%s\n' "$name" "$net" "$count" > "$dir/state"
  up_done=0
  trap 'if [ "$up_done" != 1 ]; then say "up failed: removing what it made"; down_quiet; fi' EXIT
  if [ ! -d /run/sshd ]; then  # sshd's privilege separation directory (no systemd here)
    mkdir -p /run/sshd
    echo made_run_sshd=1 >> "$dir/state"
  fi

  ssh-keygen -q -t ed25519 -N '' -C "orbital-testbed-control" -f "$dir/id_ed25519"
  cp "$dir/id_ed25519.pub" "$dir/authorized_keys"
  : > "$dir/known_hosts"

  ipx netns add "$name-br"
  ipx -n "$name-br" link set lo up
  ipx -n "$name-br" link add br0 type bridge
  ipx -n "$name-br" link set br0 up
  attach() {  # attach NAMESPACE INDEX ADDRESS
    ipx netns add "$1"
    ipx -n "$1" link set lo up
    ipx -n "$name-br" link add "v$2" type veth peer name eth0 netns "$1"
    ipx -n "$name-br" link set "v$2" master br0
    ipx -n "$name-br" link set "v$2" up
    ipx -n "$1" addr add "$3/24" dev eth0
    ipx -n "$1" link set eth0 up
  }
  attach "$name-ctl" 0 "$net.1"

  {
    echo "# Written by scripts/testbed.sh up: $count hosts, each a network namespace of this"
    echo "# machine with its own sshd. Run the control node in $name-ctl:"
    echo "#   scripts/testbed.sh exec .venv/bin/orbital chaos run antarctic-split-brain \\"
    echo "#       --placement ssh --inventory $dir/inventory.toml"
    echo "[defaults]"
    echo "user = \"root\""
    echo "key = \"$dir/id_ed25519\""
    echo "known_hosts = \"$dir/known_hosts\""
    echo "port = 22"
    echo "python = \"$python\""
    echo "toxiproxy = \"$toxiproxy\""
    echo "install = \"code\""
    echo "connect_timeout = 5.0"
    echo
  } > "$dir/inventory.toml"

  local k host addr
  for k in $(seq 1 "$count"); do
    host="h$k"
    addr="$net.$((10 + k))"
    attach "$name-$host" "$k" "$addr"
    mkdir -p "$dir/$host" "$dir/hosts/$host"
    ssh-keygen -q -t ed25519 -N '' -C "$host" -f "$dir/$host/ssh_host_ed25519_key"
    cat > "$dir/$host/sshd_config" <<EOF
# $host of test bed $name (scripts/testbed.sh)
ListenAddress $addr:22
HostKey $dir/$host/ssh_host_ed25519_key
PidFile $dir/$host/sshd.pid
AuthorizedKeysFile $dir/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
AllowTcpForwarding yes
AllowStreamLocalForwarding yes
X11Forwarding no
PrintMotd no
MaxSessions 64
MaxStartups 64:30:128
Subsystem sftp internal-sftp
LogLevel INFO
EOF
    ip netns exec "$name-$host" "$sshd" -f "$dir/$host/sshd_config" -E "$dir/$host/sshd.log" ||
      die "sshd of $host did not start: $(tail -3 "$dir/$host/sshd.log" 2>/dev/null)"
    echo "$addr $(cut -d' ' -f1,2 "$dir/$host/ssh_host_ed25519_key.pub")" >> "$dir/known_hosts"
    {
      echo "[hosts.$host]"
      echo "address = \"$addr\""
      echo "dir = \"$dir/hosts/$host\""
      echo
    } >> "$dir/inventory.toml"
  done
  for k in $(seq 1 "$count"); do  # each sshd writes its pid file once it listens
    local waited=0
    until [ -s "$dir/h$k/sshd.pid" ]; do
      sleep 0.05
      waited=$((waited + 1))
      [ "$waited" -lt 200 ] || die "sshd of h$k wrote no pid file in 10 s: $(tail -3 "$dir/h$k/sshd.log")"
    done
  done
  up_done=1
  say "up: $count hosts ($net.11..$net.$((10 + count))), control $net.1 in $name-ctl"
  say "inventory: $dir/inventory.toml"
  echo "$dir/inventory.toml"
}

sshd_pid_ok() {  # the pid in FILE is an sshd started with CONFIG (never signal anything else)
  local pid=$1 config=$2
  [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' < "/proc/$pid/cmdline" | grep -qF -- "-f $config"
}

down_quiet() {
  local ns pid host pids left
  [ -f "$dir/state" ] && { read_state; }
  # 1. each sshd we started, by the pid it wrote, if it is the one we started
  for host in "$dir"/h[0-9]*; do
    [ -f "$host/sshd.pid" ] || continue
    pid=$(cat "$host/sshd.pid")
    if sshd_pid_ok "$pid" "$host/sshd_config"; then
      kill -TERM "$pid" 2>/dev/null || true
    fi
  done
  # 2. whatever still runs inside our namespaces (sessions, agents, nodes, Toxiproxy servers
  #    started through those sshds): nothing else can be in a namespace that we made
  for ns in $(namespaces); do
    pids=$(ip netns pids "$ns" 2>/dev/null || true)
    [ -z "$pids" ] || kill -KILL $pids 2>/dev/null || true
  done
  for _ in $(seq 1 100); do
    left=""
    for ns in $(namespaces); do left+=$(ip netns pids "$ns" 2>/dev/null || true); done
    [ -z "$left" ] && break
    sleep 0.05
  done
  # 3. file systems mounted below the test bed (disk faults' FUSE mounts on the hosts)
  if [ -d "$dir" ]; then
    for m in $(awk -v d="$dir/" 'index($2, d) == 1 {print $2}' /proc/self/mounts | sort -r); do
      fusermount3 -u -z "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    done
  fi
  # 4. the namespaces (with them, the veths and the bridge)
  for ns in $(namespaces); do
    ip netns del "$ns" 2>/dev/null || true
  done
  # (an sshd that exited but is not yet reaped by its parent is a zombie: not running)
  if [ "${made_run_sshd:-0}" = 1 ] &&
    [ -z "$(ps -e -o stat=,comm= | awk '$1 !~ /^Z/ && $2 == "sshd"')" ]; then
    rmdir /run/sshd 2>/dev/null || true
  fi
  rm -rf "$dir"
}

read_state() {
  local line
  while IFS= read -r line; do
    case "$line" in
      name=*) name=${line#name=} ;;
      net=*) net=${line#net=} ;;
      made_run_sshd=*) made_run_sshd=${line#made_run_sshd=} ;;
    esac
  done < "$dir/state"
}

down() {
  [ "$(id -u)" = 0 ] || die "needs root (network namespaces)" 2
  if [ ! -f "$dir/state" ] && [ -z "$(namespaces)" ] && [ ! -d "$dir" ]; then
    say "nothing to remove"
    return 0
  fi
  down_quiet
  local left
  left=$(namespaces)
  [ -z "$left" ] || die "namespaces left: $left"
  say "down: removed"
}

status() {
  if [ -f "$dir/state" ]; then read_state; fi
  local ns
  for ns in $(namespaces); do
    printf '%s: %s process(es)\n' "$ns" "$(ip netns pids "$ns" 2>/dev/null | wc -l)"
  done
  [ -f "$dir/inventory.toml" ] && echo "inventory: $dir/inventory.toml" || echo "not up"
}

run_exec() {
  [ -f "$dir/state" ] || die "test bed is not up (scripts/testbed.sh up)" 2
  read_state
  [ "$#" -ge 1 ] || die "exec needs a command" 2
  exec ip netns exec "$name-ctl" "$@"
}

[ "$#" -ge 1 ] || usage
action=$1
shift
case "$action" in
  up) up "$@" ;;
  down) down ;;
  exec) run_exec "$@" ;;
  status) status ;;
  -h|--help|help) usage ;;
  *) usage ;;
esac
