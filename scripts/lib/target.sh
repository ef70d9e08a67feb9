# Where cargo puts what it builds (sourced, not run, from the repository root): honours
# $CARGO_TARGET_DIR like cargo does, so a script never runs a stale binary from ./target.
BENTO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
case $BENTO_TARGET_DIR in /*) ;; *) BENTO_TARGET_DIR=$PWD/$BENTO_TARGET_DIR ;; esac
BENTO_RELEASE_DIR=$BENTO_TARGET_DIR/release
