# Sourced by the Makefile and scripts: Nix settings for a single-user, offline machine.
# No substituters (nothing to reach), no sandbox (no build users), flakes on.
export NIX_CONFIG=$'experimental-features = nix-command flakes\nsandbox = false\nbuild-users-group =\nsubstituters =\nwarn-dirty = false'
