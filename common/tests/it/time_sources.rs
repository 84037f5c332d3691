//! The repository's time rule: library code reads time only through the `Clock` its caller
//! passes in (`flotilla_common::clock`), and async code waits on tokio's timers, so tests
//! can set or pause time. This test reads every crate's `src/` and fails on a direct read
//! of the operating system's clock outside the clock's own file. Unit-test modules
//! (everything after a file's `#[cfg(test)]`) are not library code and are skipped.

use std::path::{Path, PathBuf};

/// Files allowed to read the OS clock, and why.
const EXCEPTIONS: &[(&str, &str)] = &[(
    "common/src/clock.rs",
    "the clock's own implementation: SystemClock and Stopwatch",
)];

/// What counts as reading the OS clock directly.
const FORBIDDEN: &[&str] = &["SystemTime::now", "std::time::Instant", "UNIX_EPOCH"];

fn rust_files(folder: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(folder) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `use std::time::{Duration, Instant}` imports std's Instant without naming it in full.
fn imports_std_instant(line: &str) -> bool {
    let line = line.trim();
    line.starts_with("use std::time::{") && line.contains("Instant")
}

#[test]
fn library_code_reads_time_only_through_the_clock() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut files = Vec::new();
    for entry in std::fs::read_dir(repo).unwrap().flatten() {
        let source = entry.path().join("src");
        if entry.path().join("Cargo.toml").is_file() && source.is_dir() {
            rust_files(&source, &mut files);
        }
    }
    assert!(
        files.len() > 50,
        "found only {} source files under {}",
        files.len(),
        repo.display()
    );
    let mut violations = Vec::new();
    for file in &files {
        let relative = file
            .strip_prefix(repo)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        if EXCEPTIONS.iter().any(|(path, _)| *path == relative) {
            continue;
        }
        let text = std::fs::read_to_string(file).unwrap();
        for (number, line) in text.lines().enumerate() {
            if line.trim_start().starts_with("#[cfg(test)]") {
                break;
            }
            if line.trim_start().starts_with("//") {
                continue;
            }
            if FORBIDDEN.iter().any(|f| line.contains(f)) || imports_std_instant(line) {
                violations.push(format!("{relative}:{}: {}", number + 1, line.trim()));
            }
        }
    }
    assert!(
        violations.is_empty(),
        "read time through flotilla_common::clock (a Clock passed in, Stopwatch for work \
         durations, tokio::time for timers), not the OS clock:\n{}",
        violations.join("\n")
    );
}
