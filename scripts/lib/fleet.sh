# A fleet in a box for the demo and the convergence benchmark (sourced, not run).
# Creates a configuration repository of fake NixOS hosts (no nixpkgs needed), a server
# state directory, and simulated hosts: each a network namespace on a bridge of its own
# plus a mount namespace with its own /nix and /run. `fleet_cleanup` removes everything.
#
# Needs: root, ip (iproute2), unshare, nix, ssh-keygen, and $BENTO (the bento binary).

FLEET_DIR=${FLEET_DIR:-}
FLEET_BRIDGE=${FLEET_BRIDGE:-brbento$$}
FLEET_SUBNET=${FLEET_SUBNET:-10.77.250}
FLEET_HOSTS=()
FLEET_PIDS=()

fleet_log() { printf '\033[1m==> %s\033[0m\n' "$*"; }

# The expression of a fake NixOS toplevel: `fleet_system HOST VERSION BEHAVIOUR`
# (BEHAVIOUR: good | break-network | fail).
fleet_system() {
  local host=$1 version=$2 behaviour=$3 extra=""
  case $behaviour in
    break-network) extra='ip link set eth0 down' ;;
    fail) extra='echo "activation failed on purpose" >&2; exit 1' ;;
  esac
  cat <<NIX
(let
  mk = name: script: derivation {
    inherit name; system = "x86_64-linux";
    builder = "/bin/sh"; PATH = "/usr/bin:/bin"; args = [ "-c" script ];
  };
  etc = mk "$host-etc-$version" "mkdir \$out; echo 'Welcome to $host, configuration $version' > \$out/motd";
  switch = builtins.toFile "switch-to-configuration" ''
    #!/bin/sh
    echo "\$0 \$1" >> /run/activations
    ip link set eth0 up 2>/dev/null || true
    ln -sfn @out@ /run/current-system
    $extra
  '';
in mk "nixos-system-$host-$version" ''
  mkdir -p \$out/bin
  echo \${etc} > \$out/etc-ref
  echo "$version" > \$out/nixos-version
  sed "s|@out@|\$out|" \${switch} > \$out/bin/switch-to-configuration
  chmod +x \$out/bin/switch-to-configuration
'')
NIX
}

# Writes flake.nix from "HOST VERSION BEHAVIOUR" lines in $FLEET_DIR/repo/hosts.txt.
fleet_write_flake() {
  local repo=$FLEET_DIR/repo
  {
    echo '{'
    echo '  outputs = { self }: {'
    echo '    nixosConfigurations = {'
    while read -r host version behaviour; do
      [ -n "$host" ] || continue
      echo "      $host.config.system.build.toplevel ="
      fleet_system "$host" "$version" "$behaviour" | sed 's/^/        /'
      echo '      ;'
    done < "$repo/hosts.txt"
    echo '    };'
    echo '  };'
    echo '}'
  } > "$repo/flake.nix"
  git -C "$repo" add -A >/dev/null
}

# fleet_set HOST VERSION BEHAVIOUR: changes one host's configuration.
fleet_set() {
  local repo=$FLEET_DIR/repo
  sed -i "/^$1 /d" "$repo/hosts.txt"
  echo "$1 $2 $3" >> "$repo/hosts.txt"
  fleet_write_flake
}

# fleet_init HOST...: the repository, bento.toml, fleet key and one SSH key per host.
fleet_init() {
  local repo=$FLEET_DIR/repo
  mkdir -p "$repo" "$FLEET_DIR/state/keys" "$FLEET_DIR/keys"
  git -C "$repo" init -q
  "$BENTO" keygen --name bento-demo-fleet --out "$FLEET_DIR/state/keys" >/dev/null 2>&1
  {
    echo '[fleet]'
    echo 'flake = "."'
    echo "state_dir = \"$FLEET_DIR/state\""
    echo "signing_key = \"$FLEET_DIR/state/keys/bento-demo-fleet.secret\""
  } > "$repo/bento.toml"
  : > "$repo/hosts.txt"
  for host in "$@"; do
    ssh-keygen -q -t ed25519 -N '' -C "$host" -f "$FLEET_DIR/keys/$host"
    printf '\n[hosts.%s]\nssh_key = "%s"\n' "$host" "$(cat "$FLEET_DIR/keys/$host.pub")" >> "$repo/bento.toml"
    echo "$host 1 good" >> "$repo/hosts.txt"
    FLEET_HOSTS+=("$host")
  done
  fleet_write_flake
}

fleet_bridge() {
  ip link add "$FLEET_BRIDGE" type bridge
  ip addr add "$FLEET_SUBNET.1/24" dev "$FLEET_BRIDGE"
  ip link set "$FLEET_BRIDGE" up
}

# fleet_netns NS VETH ADDR: a network namespace whose eth0 (ADDR/24) is the peer of VETH
# in the root namespace; both ends and the namespace's loopback up.
fleet_netns() {
  ip netns add "$1"
  ip link add "$2" type veth peer name eth0 netns "$1"
  ip link set "$2" up
  ip netns exec "$1" ip addr add "$3/24" dev eth0
  ip netns exec "$1" ip link set eth0 up
  ip netns exec "$1" ip link set lo up
}

# fleet_host HOST INDEX INITIAL_PATH: a namespace, a store, the initial system installed.
fleet_host() {
  local host=$1 index=$2 initial=$3 root=$FLEET_DIR/hosts/$1 ns=bento-$$-$2
  mkdir -p "$root/run" "$root/nix" "$root/cache"
  echo "$ns" > "$root/netns" # first, so that cleanup finds it even if a later step fails
  fleet_netns "$ns" "vb$$h$index" "$FLEET_SUBNET.$((10 + index))"
  ip link set "vb$$h$index" master "$FLEET_BRIDGE"
  nix copy --no-check-sigs --to "local?root=$root" "$initial" 2>"$root/install.log" \
    || { echo "cannot install $initial on $host:" >&2; cat "$root/install.log" >&2; return 1; }
  ln -sfn "$initial" "$root/run/current-system"
  mkdir -p "$root/nix/var/nix/profiles"
  ln -sfn "$initial" "$root/nix/var/nix/profiles/system"
}

# fleet_in_host HOST CMD...: runs a command inside the simulated host.
fleet_in_host() {
  local root=$FLEET_DIR/hosts/$1; shift
  XDG_CACHE_HOME=$root/cache ip netns exec "$(cat "$root/netns")" unshare -m --propagation private sh -c \
    'mount --bind "$1" /nix && mount --bind "$2" /run && shift 2 && exec "$@"' sh \
    "$root/nix" "$root/run" "$@"
}

# fleet_agent_config HOST CACHE_URL SFTP_ADDR PINNED_KEY FLEET_PUBLIC [EXTRA...]
fleet_agent_config() {
  local host=$1 root=$FLEET_DIR/hosts/$1
  shift
  {
    echo "host = \"$host\""
    echo "server = \"$2\""
    echo "server_host_key = \"$3\""
    echo "ssh_key = \"$FLEET_DIR/keys/$host\""
    echo "cache_url = \"$1\""
    echo "fleet_public_key = \"$4\""
    echo "state_dir = \"$root/agent-state\""
    shift 4
    for line in "$@"; do echo "$line"; done
  } > "$root/agent.toml"
}

# fleet_start_agent HOST: the agent loop inside the host, logging to its directory.
fleet_start_agent() {
  local root=$FLEET_DIR/hosts/$1
  (export XDG_CACHE_HOME=$root/cache; exec ip netns exec "$(cat "$root/netns")" unshare -m --propagation private sh -c \
    'mount --bind "$1" /nix && mount --bind "$2" /run && shift 2 && exec "$@"' sh \
    "$root/nix" "$root/run" "$BENTO" agent --config "$root/agent.toml") > "$root/agent.log" 2>&1 &
  FLEET_PIDS+=($!)
}

fleet_running() { readlink "$FLEET_DIR/hosts/$1/run/current-system"; }

fleet_cleanup() {
  for pid in "${FLEET_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  # Everything still inside a host (its agent, an activation script) goes with it.
  for f in "$FLEET_DIR"/hosts/*/netns; do
    [ -f "$f" ] || continue
    ip netns pids "$(cat "$f")" 2>/dev/null | xargs -r kill -KILL 2>/dev/null || true
  done
  wait 2>/dev/null || true
  for f in "$FLEET_DIR"/hosts/*/netns; do
    [ -f "$f" ] && ip netns del "$(cat "$f")" 2>/dev/null || true
  done
  ip link del "$FLEET_BRIDGE" 2>/dev/null || true
  [ -n "$FLEET_DIR" ] && rm -rf "$FLEET_DIR"
}
