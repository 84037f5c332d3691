//! The repository's documentation stands alone: nothing a user of the repository reads
//! (README, docs/, code comments) sends them to a design document outside it.

use std::path::Path;

fn files(folder: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(folder).into_iter().flatten().flatten() {
        let path = entry.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if path.is_dir() {
            if !name.starts_with('.') && name != "target" {
                files(&path, out);
            }
        } else if ["md", "rs", "toml", "sh", "py"]
            .iter()
            .any(|e| path.extension().is_some_and(|x| x == *e))
        {
            out.push(path);
        }
    }
}

#[test]
fn no_document_cites_a_design_outside_the_repository() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut all = Vec::new();
    files(repo, &mut all);
    assert!(all.len() > 100, "{} files", all.len());
    let this_file = Path::new(file!()).file_name().unwrap().to_owned();
    let citations: Vec<String> = all
        .iter()
        .filter(|p| p.file_name() != Some(this_file.as_os_str()))
        .flat_map(|path| {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let relative = path.strip_prefix(repo).unwrap().display().to_string();
            text.lines()
                .enumerate()
                .filter(|(_, l)| l.contains("../shared") || l.contains("DESIGN.md"))
                .map(|(n, l)| format!("{relative}:{}: {}", n + 1, l.trim()))
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(
        citations.is_empty(),
        "say it in docs/ instead:\n{}",
        citations.join("\n")
    );
}
