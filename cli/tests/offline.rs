//! The `flotilla` binary on its own, with no hub: what an operator sees when the hub cannot be
//! reached or a flag is wrong. Having an integration test here also makes `cargo test
//! --workspace` build the binary, which the hub's tests drive as a separate process.

use std::net::TcpListener;
use std::process::{Command, Output};

fn flotilla(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(args)
        .env_remove("FLOTILLA_HUB")
        .env_remove("FLOTILLA_TOKEN")
        .output()
        .expect("the flotilla binary runs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A loopback port nothing listens on: bound, then released.
fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    listener.local_addr().expect("local addr").port()
}

#[test]
fn an_unreachable_hub_is_a_clear_error_and_exit_status_one() {
    let hub = format!("http://127.0.0.1:{}", closed_port());
    let output = flotilla(&["--hub", &hub, "--token", "t", "model", "list"]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let message = stderr(&output);
    assert!(message.starts_with("error: "), "{message}");
    assert!(message.contains(&hub), "names the hub it tried: {message}");
}

#[test]
fn a_malformed_hub_url_is_refused_before_any_request() {
    let output = flotilla(&["--hub", "not a url", "--token", "t", "device", "list"]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(stderr(&output).contains("not a url"), "{}", stderr(&output));
}

#[test]
fn a_bad_soak_duration_is_refused_by_the_argument_parser() {
    let output = flotilla(&[
        "rollout",
        "create",
        "--model",
        "iris",
        "--version",
        "2",
        "--soak",
        "ten minutes",
    ]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("ten minutes"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn version_and_help_need_no_hub() {
    let version = flotilla(&["--version"]);
    assert!(version.status.success());
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("flotilla "));
    let help = flotilla(&["--help"]);
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    for command in ["model", "rollout", "device", "trigger", "profile"] {
        assert!(text.contains(command), "help lists {command}: {text}");
    }
}
