#!/usr/bin/env bash
# check-nixos: what can be checked of Bento's NixOS side on a machine with Nix but without
# nixpkgs or KVM (the VM tests in nixos-tests/ need both: `nix flake check -L` runs them).
#
#   1. every .nix file of the repository parses (nix-instantiate --parse);
#   2. with NIXPKGS_LIB (a checkout of github:nix-community/nixpkgs.lib):
#      - the module evaluation table (nixos-tests/module-eval/table.nix): each row is
#        evaluated with nixpkgs' real lib.evalModules and stub NixOS options, and must
#        evaluate or fail with the assertion it names; the contract checks of judge.nix
#        hold; the files the modules render are built, which runs the real `bento` on them
#        (agent check-config, serve --check-config); rows include the VM tests' own nodes
#        and variant systems;
#      - the units' first-start scripts run in a private mount namespace (keys made,
#        credentials installed, modes);
#      - docs/nixos.md's option reference equals the one generated from the modules
#        (--update-docs rewrites it);
#      - the flake's outputs are listed with nixpkgs overridden by that lib.
#   Without NIXPKGS_LIB it says loudly that the modules were not evaluated and stops after 1.
#
# Usage: scripts/check-nixos.sh [--update-docs]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/nix-env.sh

update_docs=false
[ "${1:-}" = --update-docs ] && update_docs=true

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failures=0
fail() {
	echo "FAIL $*"
	failures=$((failures + 1))
}

# 1. Syntax of every .nix file.
if ! mapfile -t nix_files < <(git ls-files --cached --others --exclude-standard -- '*.nix' 2>/dev/null) || [ ${#nix_files[@]} = 0 ]; then
	mapfile -t nix_files < <(find . -name '*.nix' -not -path './target/*' -not -path './.git/*' | sort)
fi
[ ${#nix_files[@]} -gt 0 ] || fail "no .nix file found to parse"
for f in "${nix_files[@]}"; do
	[ -f "$f" ] || continue
	nix-instantiate --parse "$f" >/dev/null 2>"$tmp/parse.err" || {
		fail "parse $f"
		cat "$tmp/parse.err"
	}
done
echo "parse: ${#nix_files[@]} .nix files"

if [ -z "${NIXPKGS_LIB:-}" ]; then
	echo "!!! NixOS modules NOT evaluated: set NIXPKGS_LIB=<checkout of github:nix-community/nixpkgs.lib> to evaluate them (docs/nixos.md, \"Checking the modules\"). Only their syntax was checked."
	exit $((failures > 0))
fi
if [ ! -f "$NIXPKGS_LIB/lib/default.nix" ]; then
	echo "FAIL NIXPKGS_LIB=$NIXPKGS_LIB has no lib/default.nix (expected a checkout of nix-community/nixpkgs.lib)"
	exit 1
fi

# The bento whose checks judge the rendered files: this tree's, stripped (the store copy
# is then small).
cargo build --quiet --bin bento
bin="$tmp/bento"
strip -o "$bin" "${CARGO_TARGET_DIR:-target}/debug/bento" 2>/dev/null || cp "${CARGO_TARGET_DIR:-target}/debug/bento" "$bin"

# What this binary can check. A row needing a check this bento lacks fails (an older
# binary, or a regression): no rendered file goes unchecked.
declare -A have=()
if "$bin" serve --help 2>/dev/null | grep -q -- '--check-config'; then
	have[serve-check-config]=1
fi
{
	echo 'host = "probe"'
	echo 'server = "probe:2222"'
	echo "server_host_key = \"$(cut -d' ' -f1,2 nixos-tests/keys/server_host_key.pub)\""
	echo 'ssh_key = "/probe"'
	echo 'cache_url = "http://probe:8080"'
	echo "fleet_public_key = \"$(cat nixos-tests/keys/bento-test-fleet.public)\""
	echo 'activation_timeout_secs = 1'
	echo 'copy_timeout_secs = 1'
} >"$tmp/probe.toml"
if "$bin" agent check-config "$tmp/probe.toml" >/dev/null 2>&1; then
	have[agent-timeout-keys]=1
fi
sed 's|^copy_timeout_secs = 1$|copy_method = "substitute"\nsubstitute_jobs = 8|' "$tmp/probe.toml" >"$tmp/probe-copy.toml"
if "$bin" agent check-config "$tmp/probe-copy.toml" >/dev/null 2>&1; then
	have[agent-copy-keys]=1
fi
declare -A missing_reason=(
	[serve-check-config]="this bento has no 'serve --check-config'"
	[agent-timeout-keys]="this bento's agent does not know activation_timeout_secs/copy_timeout_secs"
	[agent-copy-keys]="this bento's agent does not know copy_method/substitute_jobs"
)
# Which rendered file a capability checks.
declare -A need_file=([serve-check-config]=server [agent-timeout-keys]=agent [agent-copy-keys]=agent)

check_args=(-f nixos-tests/module-eval/check.nix --argstr nixpkgsLib "$NIXPKGS_LIB" --arg bentoBin "$bin")

# 2a. Evaluate every row (one process; row by row when that fails, to name the row).
if ! nix eval --raw "${check_args[@]}" allLines >"$tmp/rows.tsv" 2>"$tmp/eval.err"; then
	: >"$tmp/rows.tsv"
	names=$(nix eval --raw "${check_args[@]}" names --apply 'builtins.concatStringsSep " "')
	for name in $names; do
		if ! nix eval --raw "${check_args[@]}" "lines.\"$name\"" >>"$tmp/rows.tsv" 2>"$tmp/row.err"; then
			fail "$name: evaluation error"
			sed 's/^/    /' "$tmp/row.err" | head -20
		fi
	done
fi

# 2b. Judge each row, and collect the files to build.
declare -A drv_row=() drv_what=()
rows=0
while IFS='|' read -r name expect needs files problems; do
	rows=$((rows + 1))
	if [ -n "$problems" ]; then
		fail "$name: $problems"
		continue
	fi
	case "$expect" in
	ok) ;;
	"refused at build: "*)
		word=${expect#refused at build: }
		drv=$(tr ' ' '\n' <<<"$files" | grep '^agent=\|^server=' | head -n1 | cut -d= -f2-)
		if nix-store --realise "$drv" >/dev/null 2>"$tmp/refused.err"; then
			fail "$name: its rendered file was accepted; expected bento to refuse it naming $word"
		elif grep -q -- "$word" "$tmp/refused.err"; then
			echo "ok   $name: evaluates, and bento refuses the rendered file naming \"$word\""
		else
			fail "$name: the build failed, but not naming $word: $(tail -3 "$tmp/refused.err" | tr '\n' ' ')"
		fi
		continue
		;;
	*)
		echo "ok   $name: fails with \"$expect\""
		continue
		;;
	esac
	unchecked=()
	for need in ${needs//,/ }; do
		if [ -z "${have[$need]:-}" ]; then
			unchecked+=("${need_file[$need]}")
			fail "$name: its ${need_file[$need]} file cannot be checked: ${missing_reason[$need]}"
		fi
	done
	for kv in $files; do
		key=${kv%%=*}
		drv=${kv#*=}
		case " ${unchecked[*]} " in *" $key "*) continue ;; esac
		case "$key" in *-unchecked)
			base=${key%-unchecked}
			case " ${unchecked[*]} " in *" $base "*) ;; *) continue ;; esac
			;;
		esac
		drv_row[$drv]="${drv_row[$drv]:-} $name"
		drv_what[$drv]=$key
	done
	echo "ok   $name: evaluates${files:+, builds $(echo "$files" | tr ' ' '\n' | cut -d= -f1 | grep -cv -- -unchecked) files}"
done <"$tmp/rows.tsv"

# 2c. Build them: the builds run `bento agent check-config` / `bento serve --check-config`.
if [ ${#drv_row[@]} -gt 0 ]; then
	if ! nix-store --realise --keep-going "${!drv_row[@]}" >"$tmp/outs" 2>"$tmp/build.err"; then
		for drv in "${!drv_row[@]}"; do
			out=$(nix-store -q --outputs "$drv")
			[ -e "$out" ] || fail "build of ${drv_what[$drv]} for${drv_row[$drv]}: $(nix log "$drv" 2>/dev/null | tail -5 | tr '\n' ' ')"
		done
	fi
	echo "built ${#drv_row[@]} distinct files (rendered configs checked by the real bento, packages, unit scripts)"
fi

# The package's layout: agent-unit.json's `binary` must be the real executable.
out_of() { grep "^$1|" "$tmp/rows.tsv" | tr ' |' '\n\n' | grep "^$2=" | cut -d= -f2- | xargs -r nix-store -q --outputs; }
pkg=$(out_of agent-minimal agent-package || true)
if [ -n "$pkg" ]; then
	if [ "$(head -c4 "$pkg/libexec/bento" | od -An -c | tr -d ' ')" = '177ELF' ] && "$pkg/bin/bento" --help >/dev/null; then
		echo "ok   package: libexec/bento is the executable, bin/bento its wrapper"
	else
		fail "package: libexec/bento is not an ELF executable or bin/bento does not run"
	fi
fi

# 2d. The first-start scripts, in a mount namespace where /var/lib is a fresh tmpfs.
in_scratch() { unshare -m --propagation private bash -c 'mount -t tmpfs scratch /var/lib && bash -c "$0"' "$1"; }
if [ "$(id -u)" != 0 ] || ! unshare -m true 2>/dev/null; then
	echo "!!! first-start scripts NOT run: they need root and mount namespaces"
else
	server_gen=$(out_of server-minimal server-keys-script)
	server_creds=$(out_of server-full server-keys-script)
	agent_key=$(out_of agent-minimal agent-key-script)
	mkdir -p "$tmp/creds"
	cp nixos-tests/keys/bento-test-fleet.secret "$tmp/creds/fleet-key"
	cp nixos-tests/keys/server_host_key "$tmp/creds/ssh-host-key"
	if in_scratch "
		set -e
		mkdir -m 2770 /var/lib/bento
		$server_gen > $tmp/keys.out
		grep -q 'generated the fleet signing key' $tmp/keys.out
		[ \"\$(stat -c %a /var/lib/bento/keys/fleet.secret)\" = 640 ]
		grep -q '^bento-fleet-1:' /var/lib/bento/keys/fleet.secret
		grep -q '^bento-fleet-1:' /var/lib/bento/keys/fleet.public
		before=\$(sha256sum < /var/lib/bento/keys/fleet.secret)
		$server_gen > $tmp/keys.out
		! grep -q generated $tmp/keys.out
		[ \"\$(sha256sum < /var/lib/bento/keys/fleet.secret)\" = \"\$before\" ]
	"; then echo "ok   server first start: fleet key made once (0640), kept on the next start"; else fail "server first start without keys (server-minimal's ExecStartPre)"; fi
	if in_scratch "
		set -e
		mkdir -p -m 2770 /var/lib/bento/ssh
		echo stale > /var/lib/bento/ssh/host_ed25519_key.pub
		CREDENTIALS_DIRECTORY=$tmp/creds $server_creds > /dev/null
		cmp /var/lib/bento/keys/fleet.secret $tmp/creds/fleet-key
		cmp /var/lib/bento/ssh/host_ed25519_key $tmp/creds/ssh-host-key
		[ \"\$(stat -c %a /var/lib/bento/keys/fleet.secret)\" = 640 ]
		[ \"\$(stat -c %a /var/lib/bento/ssh/host_ed25519_key)\" = 600 ]
		[ ! -e /var/lib/bento/ssh/host_ed25519_key.pub ]
		[ ! -e /var/lib/bento/keys/fleet.public ]
	"; then echo "ok   server first start: credentials installed (fleet key 0640, host key 0600, stale .pub gone)"; else fail "server first start with credentials (server-full's ExecStartPre)"; fi
	if in_scratch "
		set -e
		$agent_key > $tmp/agent-key.out
		[ \"\$(stat -c %a /var/lib/bento-agent/ssh)\" = 700 ]
		[ \"\$(stat -c %a /var/lib/bento-agent/ssh/id_ed25519)\" = 600 ]
		grep -qF '[hosts.web1] ssh_key = ' $tmp/agent-key.out
		grep -qF \"\$(cut -d' ' -f1,2 /var/lib/bento-agent/ssh/id_ed25519.pub)\" $tmp/agent-key.out
		before=\$(sha256sum < /var/lib/bento-agent/ssh/id_ed25519)
		$agent_key > $tmp/agent-key.out
		[ \"\$(sha256sum < /var/lib/bento-agent/ssh/id_ed25519)\" = \"\$before\" ]
	"; then echo "ok   agent first start without sshd: own key made once (0600), public half printed for bento.toml"; else fail "agent first start without sshd (agent-minimal's ExecStartPre)"; fi
fi

# 2e. The option reference in docs/nixos.md.
nix eval --raw "${check_args[@]}" optionsDoc >"$tmp/options.md"
begin='<!-- options:begin (generated by scripts/check-nixos.sh --update-docs) -->'
end='<!-- options:end -->'
current=$(sed -n "/^<!-- options:begin/,/^<!-- options:end -->/p" docs/nixos.md | sed '1d;$d')
if [ "$update_docs" = true ]; then
	awk -v begin="$begin" -v end="$end" -v gen="$tmp/options.md" '
		/^<!-- options:begin/ { print begin; while ((getline l < gen) > 0) print l; skip = 1; next }
		/^<!-- options:end -->/ { skip = 0 }
		!skip { print }
	' docs/nixos.md >"$tmp/nixos.md"
	cp "$tmp/nixos.md" docs/nixos.md
	echo "docs/nixos.md: option reference rewritten"
elif [ "$current" = "$(cat "$tmp/options.md")" ]; then
	echo "ok   docs/nixos.md option reference matches the modules ($(grep -c '^### ' "$tmp/options.md") options)"
else
	fail "docs/nixos.md option reference differs from the modules: run scripts/check-nixos.sh --update-docs"
	diff <(echo "$current") "$tmp/options.md" | head -20 || true
fi

# 2f. The flake's outputs, with nixpkgs replaced by its lib (no packages can be built).
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
	flake=(--option eval-cache false --override-input nixpkgs "path:$NIXPKGS_LIB" --no-write-lock-file)
	modules=$(nix eval "${flake[@]}" .#nixosModules --apply 'm: builtins.concatStringsSep " " (builtins.attrNames m)' --raw 2>"$tmp/flake.err") || true
	checks=$(nix eval "${flake[@]}" .#checks.x86_64-linux --apply 'm: builtins.concatStringsSep " " (builtins.attrNames m)' --raw 2>>"$tmp/flake.err") || true
	if [ "$modules" = "agent default server" ] && [ "$(wc -w <<<"$checks")" = 12 ]; then
		echo "ok   flake: nixosModules = $modules; checks = $checks"
	else
		fail "flake outputs with nixpkgs' lib: nixosModules='$modules' checks='$checks'"
		grep -v '^warning\|^•\|^  ' "$tmp/flake.err" | head -10
	fi
fi

echo "module evaluation: $rows rows, $failures failures"
exit $((failures > 0))
