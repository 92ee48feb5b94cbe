//! Whether this process may do what a privileged test needs. Under CI (`CI=true`) a missing privilege is
//! a failure, never a skip: CI exists to run these tests. Elsewhere the test is skipped with one line.

/// Why this process cannot run privileged tests, or `None` when it can.
pub fn missing_privilege() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some(
            "not running as root (BPF, network namespaces and tc need CAP_SYS_ADMIN/CAP_NET_ADMIN)".into(),
        );
    }
    None
}

pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Returns true when the test should run. Without privileges it panics under CI and otherwise prints a
/// one-line skip reason and returns false.
pub fn require(test: &str) -> bool {
    match missing_privilege() {
        None => true,
        Some(why) if in_ci() => panic!("{test}: CI=true but the privileged test cannot run: {why}"),
        Some(why) => {
            eprintln!("skipping {test}: {why}");
            false
        }
    }
}
