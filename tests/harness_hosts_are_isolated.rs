//! The harness itself: a simulated host has its own store, its own `/run/current-system`
//! and its own network, on which it reaches the server's address on the test's bridge.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use std::path::Path;

use harness::fake::{self, Behaviour};
use harness::net::Net;

#[test]
fn a_simulated_host_has_its_own_store_current_system_and_network() {
    if !harness::needs_root("network and mount namespaces, the machine's Nix store") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let sys = fake::build("h1", 1, &Behaviour::Good, "iso");
    let other = fake::build("h1", 2, &Behaviour::Good, "iso");
    let net = Net::new();
    let host = net.host("h1", 1, &tmp.path().join("h1"));
    host.install(&sys);
    let inside_ok = |program: &str, args: &[&str]| {
        host.command(Path::new(program), args)
            .output()
            .unwrap()
            .status
            .success()
    };
    assert!(inside_ok("/usr/bin/nix-store", &["--check-validity", &sys]));
    assert!(
        !inside_ok("/usr/bin/nix-store", &["--check-validity", &other]),
        "the host must not see the server's store"
    );
    assert!(
        !inside_ok(&format!("{other}/bin/switch-to-configuration"), &["test"]),
        "a path outside the host's store cannot run there"
    );
    assert!(inside_ok(
        &format!("{sys}/bin/switch-to-configuration"),
        &["test"]
    ));
    assert_eq!(host.running().as_deref(), Some(sys.as_str()));
    assert_eq!(
        host.activations(),
        vec![format!("{sys}/bin/switch-to-configuration test")]
    );
    // Nothing listens on port 9: "refused" proves the route to the server exists.
    let probe = format!("exec 3<>/dev/tcp/{}/9", net.server_ip());
    let out = host
        .command(Path::new("/bin/bash"), &["-c", &probe])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("refused"), "{text}");
    // With the link down, the server is unreachable instead.
    host.set_link(false);
    let out = host
        .command(Path::new("/bin/bash"), &["-c", &probe])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("unreachable"), "{text}");
}
