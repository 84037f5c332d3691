//! Clients we did not write: Triton's stock Python client over TCP, and Python's standard
//! HTTP client over the Unix socket (tests/compat/stock_clients.py).

use std::process::Command;

use crate::support::*;

#[test]
fn stock_clients_get_correct_metadata_and_outputs() {
    let agent = AgentProcess::start(
        &[
            ("iris", &fixture("iris_classifier.onnx")),
            ("text", &fixture("text_lookup.onnx")),
            ("all", &fixture("all_types.onnx")),
        ],
        &[],
    );
    let python = repo_root().join(".cache/venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run deploy/setup.sh (deploy/test.sh does) to install the stock clients",
        python.display()
    );
    let output = Command::new(python)
        .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/compat/stock_clients.py"))
        .args(["--http", &agent.http.unwrap().to_string()])
        .args(["--socket", agent.socket.to_str().unwrap()])
        .args(["--expected", fixture("expected.json").to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "stock clients failed:\n{stdout}\n{stderr}\nagent log:\n{}",
        agent.log()
    );
    assert!(stdout.contains("stock clients: ok"), "{stdout}");
}
