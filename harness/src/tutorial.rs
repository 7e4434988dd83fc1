//! The tutorial ladder's sources stay in one place: the reference solutions in
//! `exercises/solutions/stepN/`. The skeletons in `exercises/skeletons/stepN/` and the code
//! listings in `docs/tutorial/*.md` are made from them, and the unit tests check that what is
//! committed is what would be made (`DMALAB_BLESS=1 cargo test -p dmalab-harness --lib tutorial`
//! rewrites both after a solution changed).
//!
//! Markers in a solution file:
//!
//! ```text
//!     // EXERCISE: what to write, for the student (continued on further `// ` lines)
//!     // STUB: code the skeleton has instead (compiles, and fails the step's checks)
//!     ...the solution...
//!     // END EXERCISE
//!
//! // ANCHOR: name          a listing a chapter includes
//! // ANCHOR_END: name
//! ```

use std::path::{Path, PathBuf};

/// Steps of the ladder.
pub const STEPS: u32 = 9;

const EXERCISE: &str = "// EXERCISE: ";
const STUB: &str = "// STUB: ";
const END_EXERCISE: &str = "// END EXERCISE";
const ANCHOR: &str = "// ANCHOR: ";
const ANCHOR_END: &str = "// ANCHOR_END: ";

fn is_anchor(line: &str) -> bool {
    let t = line.trim_start();
    t.starts_with(ANCHOR) || t.starts_with(ANCHOR_END)
}

/// The skeleton of a solution file of step `step`: each exercise region becomes its TODO text
/// and its stub; anchors go. Errors name the line of a malformed region.
pub fn skeleton_of(solution: &str, step: u32) -> Result<String, String> {
    let mut out = String::new();
    let mut lines = solution.lines().enumerate().peekable();
    while let Some((n, line)) = lines.next() {
        let t = line.trim_start();
        let indent = &line[..line.len() - t.len()];
        if is_anchor(line) {
            continue;
        }
        if t.starts_with(END_EXERCISE) || t.starts_with(STUB) {
            return Err(format!("line {}: `{t}` outside an exercise", n + 1));
        }
        let Some(what) = t.strip_prefix(EXERCISE) else {
            out.push_str(line);
            out.push('\n');
            continue;
        };
        out.push_str(&format!("{indent}// TODO(step {step}): {what}\n"));
        // the rest of the text, then the stub
        while let Some((_, l)) = lines.peek() {
            let lt = l.trim_start();
            if lt.starts_with("// ") && !lt.starts_with(STUB) && !lt.starts_with(END_EXERCISE) {
                out.push_str(l);
                out.push('\n');
                lines.next();
            } else {
                break;
            }
        }
        let mut stub = false;
        while let Some((_, l)) = lines.peek() {
            let Some(code) = l.trim_start().strip_prefix(STUB) else {
                break;
            };
            out.push_str(&format!("{indent}{code}\n"));
            stub = true;
            lines.next();
        }
        if !stub {
            return Err(format!(
                "line {}: an exercise without a `// STUB:` line",
                n + 1
            ));
        }
        loop {
            match lines.next() {
                Some((_, l)) if l.trim_start().starts_with(END_EXERCISE) => break,
                Some((m, l)) if l.trim_start().starts_with(EXERCISE) => {
                    return Err(format!("line {}: `{}` inside an exercise", m + 1, l.trim()))
                }
                Some(_) => {}
                None => return Err(format!("line {}: exercise never ends", n + 1)),
            }
        }
    }
    Ok(out)
}

/// The code between `// ANCHOR: name` and `// ANCHOR_END: name` of a solution file, with other
/// anchors left out and the common indentation removed. An exercise region is shown as its
/// task, never its code: the task's text, a gap for the student's code, and where the
/// reference solution is (`reference`, the solution file's path).
pub fn listing(solution: &str, name: &str, reference: &str) -> Option<String> {
    let start = format!("{ANCHOR}{name}");
    let end = format!("{ANCHOR_END}{name}");
    let mut lines = solution.lines();
    lines.by_ref().find(|l| l.trim() == start)?;
    let mut body: Vec<String> = Vec::new();
    // Inside an exercise region: its indentation, and whether its task text is over (at the
    // first `// STUB:` line).
    let mut exercise: Option<(String, bool)> = None;
    for l in lines.by_ref() {
        if l.trim() == end {
            let indent = body
                .iter()
                .filter(|l| !l.trim().is_empty())
                .map(|l| l.len() - l.trim_start().len())
                .min()
                .unwrap_or(0);
            let text: Vec<&str> = body
                .iter()
                .map(|l| l.get(indent..).unwrap_or(l.trim_start()))
                .collect();
            return Some(text.join("\n") + "\n");
        }
        let t = l.trim_start();
        if is_anchor(l) {
            continue;
        }
        if let Some(what) = t.strip_prefix(EXERCISE) {
            let indent = &l[..l.len() - t.len()];
            body.push(format!("{indent}// YOUR TASK: {what}"));
            exercise = Some((indent.to_string(), false));
            continue;
        }
        match &mut exercise {
            None => body.push(l.to_string()),
            Some((indent, _)) if t.starts_with(END_EXERCISE) => {
                body.push(format!("{indent}//"));
                body.push(format!("{indent}// ...your code..."));
                body.push(format!(
                    "{indent}// (stuck? the reference solution: {reference})"
                ));
                exercise = None;
            }
            Some((_, task_over)) if t.starts_with(STUB) => *task_over = true,
            Some((_, false)) if t.starts_with("// ") => body.push(l.to_string()),
            // the solution is left out
            Some(_) => {}
        }
    }
    None
}

/// The marker line before a listing in a chapter: `<!-- listing PATH ANCHOR -->`.
const LISTING: &str = "<!-- listing ";

/// A chapter with every listing replaced by the current text of its anchor (paths relative to
/// `root`). Errors name a listing whose file or anchor does not exist or that has no code block.
pub fn refresh_chapter(chapter: &str, root: &Path) -> Result<String, String> {
    let mut out = String::new();
    let mut lines = chapter.lines();
    while let Some(line) = lines.next() {
        out.push_str(line);
        out.push('\n');
        let Some(spec) = line
            .strip_prefix(LISTING)
            .and_then(|s| s.strip_suffix(" -->"))
        else {
            continue;
        };
        let (path, anchor) = spec
            .split_once(' ')
            .ok_or_else(|| format!("`{line}`: want `<!-- listing PATH ANCHOR -->`"))?;
        let text = std::fs::read_to_string(root.join(path)).map_err(|e| format!("{path}: {e}"))?;
        let code =
            listing(&text, anchor, path).ok_or_else(|| format!("{path} has no anchor {anchor}"))?;
        match lines.next() {
            Some(fence) if fence.starts_with("```") => {}
            _ => return Err(format!("`{line}` is not followed by a code block")),
        }
        for l in lines.by_ref() {
            if l.starts_with("```") {
                break;
            }
        }
        out.push_str("```rust\n");
        out.push_str(&code);
        out.push_str("```\n");
    }
    Ok(out)
}

/// The rows of a chapter's "The kernel API" table: each signature (the second column, without
/// its backticks) and the file of the kernel tree it is quoted from (`rust/kernel/...`).
pub fn api_rows(chapter: &str) -> Vec<(String, String)> {
    let Some(start) = chapter.find("## The kernel API") else {
        return Vec::new();
    };
    chapter[start..]
        .lines()
        .skip(1)
        .take_while(|l| !l.starts_with("## "))
        .filter_map(|l| {
            let cells: Vec<&str> = l.split(" | ").collect();
            let sig = cells.get(1)?.trim().strip_prefix('`')?.strip_suffix('`')?;
            let file = cells.get(2)?.split('`').nth(1)?;
            Some((sig.to_string(), file.to_string()))
        })
        .collect()
}

/// Every signature a chapter quotes that the kernel tree at `tree` does not declare, as
/// "chapter: `signature` is not in rust/kernel/file" (whitespace and trailing commas aside).
pub fn api_mismatches(root: &Path, tree: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for step in 1..=STEPS {
        let Some(chapter) = chapter_path(root, step) else {
            out.push(format!("step {step} has no chapter"));
            continue;
        };
        let text = std::fs::read_to_string(&chapter).unwrap_or_default();
        let rows = api_rows(&text);
        if rows.is_empty() {
            out.push(format!("{}: no kernel API table", chapter.display()));
        }
        for (sig, file) in rows {
            let source = std::fs::read_to_string(tree.join(&file)).unwrap_or_default();
            if !declares(&source, &sig) {
                out.push(format!("{}: `{sig}` is not in {file}", chapter.display()));
            }
        }
    }
    out
}

/// Whether `source` declares `sig`, whitespace and trailing commas in argument lists aside (a
/// signature quoted on one line matches one rustfmt broke over several).
pub fn declares(source: &str, sig: &str) -> bool {
    let squash = |s: &str| -> String {
        s.chars()
            .filter(|c| !c.is_whitespace())
            .collect::<String>()
            .replace(",)", ")")
    };
    squash(source).contains(&squash(sig))
}

/// `docs/tutorial/NN-*.md`, the chapter of step `step`.
pub fn chapter_path(root: &Path, step: u32) -> Option<PathBuf> {
    std::fs::read_dir(root.join("docs/tutorial"))
        .ok()?
        .filter_map(|e| Some(e.ok()?.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{step:02}-")))
        })
}

/// A typical student mistake of the catalogue (`exercises/mistakes.toml`, which says what each
/// field means): a variant of a step's solution, and what grading it must say.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mistake {
    pub id: String,
    pub step: u32,
    pub what: String,
    pub file: String,
    pub find: String,
    pub replace: String,
    pub check: String,
    pub says: Vec<String>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Catalogue {
    mistake: Vec<Mistake>,
}

/// The mistake catalogue under `root`.
pub fn mistakes(root: &Path) -> Result<Vec<Mistake>, String> {
    let path = root.join("exercises/mistakes.toml");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let c: Catalogue = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(c.mistake)
}

/// The module files of mistake `m`: its step's solution with `find` replaced once. Errors
/// say when `find` does not occur exactly once (the solution moved on without the catalogue).
pub fn mistake_files(root: &Path, m: &Mistake) -> Result<Vec<(String, String)>, String> {
    let dir = solution_dir(root, m.step);
    let mut out = Vec::new();
    let mut changed = false;
    for (name, _) in skeleton_files(root, m.step)? {
        let text = std::fs::read_to_string(dir.join(&name)).map_err(|e| format!("{name}: {e}"))?;
        if name != m.file {
            out.push((name, text));
            continue;
        }
        match text.matches(m.find.as_str()).count() {
            1 => out.push((name, text.replacen(m.find.as_str(), &m.replace, 1))),
            n => {
                return Err(format!(
                    "mistake {}: its `find` occurs {n} times in step {} {} (want once)",
                    m.id, m.step, m.file
                ))
            }
        }
        changed = true;
    }
    if !changed {
        return Err(format!(
            "mistake {}: step {} has no file {}",
            m.id, m.step, m.file
        ));
    }
    Ok(out)
}

/// `exercises/solutions/stepN` under `root`.
pub fn solution_dir(root: &Path, step: u32) -> PathBuf {
    root.join(format!("exercises/solutions/step{step}"))
}

/// `exercises/skeletons/stepN` under `root`.
pub fn skeleton_dir(root: &Path, step: u32) -> PathBuf {
    root.join(format!("exercises/skeletons/step{step}"))
}

/// Every file a step's skeleton directory should hold, with its contents (made from the
/// solution directory: `.rs` files through [`skeleton_of`], others copied).
pub fn skeleton_files(root: &Path, step: u32) -> Result<Vec<(String, String)>, String> {
    let dir = solution_dir(root, step);
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".rs") || n == "Kbuild" || n == "Makefile")
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|n| {
            let text = std::fs::read_to_string(dir.join(&n)).map_err(|e| format!("{n}: {e}"))?;
            let body = if n.ends_with(".rs") {
                skeleton_of(&text, step).map_err(|e| format!("step {step} {n}: {e}"))?
            } else {
                text
            };
            Ok((n, body))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOLUTION: &str = "\
fn probe() -> Result {
    // ANCHOR: body
    let x = 1;
    // EXERCISE: Read the ID register.
    // Then check it.
    // STUB: Err(ENOSYS)
    let id = read();
    check(id)
    // END EXERCISE
    // ANCHOR_END: body
}
";

    #[test]
    fn a_skeleton_keeps_the_text_and_the_stub_and_drops_the_solution() {
        let s = skeleton_of(SOLUTION, 1).unwrap();
        assert_eq!(
            s,
            "fn probe() -> Result {\n    let x = 1;\n    // TODO(step 1): Read the ID register.\n    // Then check it.\n    Err(ENOSYS)\n}\n"
        );
    }

    #[test]
    fn malformed_exercises_are_named() {
        let no_stub = "// EXERCISE: a\nx();\n// END EXERCISE\n";
        assert!(skeleton_of(no_stub, 1)
            .unwrap_err()
            .contains("without a `// STUB:`"));
        let open = "// EXERCISE: a\n// STUB: x\ny();\n";
        assert!(skeleton_of(open, 1).unwrap_err().contains("never ends"));
        assert!(skeleton_of("// END EXERCISE\n", 1)
            .unwrap_err()
            .contains("outside"));
    }

    #[test]
    fn a_listing_shows_an_exercise_as_its_task_not_its_code() {
        assert_eq!(
            listing(SOLUTION, "body", "sol.rs").unwrap(),
            "let x = 1;\n// YOUR TASK: Read the ID register.\n// Then check it.\n//\n// ...your code...\n// (stuck? the reference solution: sol.rs)\n"
        );
        assert!(listing(SOLUTION, "nothing", "sol.rs").is_none());
    }

    fn root() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
    }

    fn bless() -> bool {
        std::env::var_os("DMALAB_BLESS").is_some()
    }

    /// The committed skeletons are made from the committed solutions.
    #[test]
    fn every_skeleton_is_made_from_its_solution() {
        let root = root();
        for step in 1..=STEPS {
            if !solution_dir(&root, step).exists() {
                continue;
            }
            let dir = skeleton_dir(&root, step);
            for (name, want) in skeleton_files(&root, step).unwrap() {
                let path = dir.join(&name);
                if bless() {
                    std::fs::create_dir_all(&dir).unwrap();
                    std::fs::write(&path, &want).unwrap();
                    continue;
                }
                let have = std::fs::read_to_string(&path).unwrap_or_default();
                assert!(
                    have == want,
                    "{} is not made from its solution: run DMALAB_BLESS=1 cargo test -p dmalab-harness --lib tutorial",
                    path.display()
                );
            }
        }
    }

    /// Every chapter's listings are the current text of the solution files they name.
    #[test]
    fn every_listing_is_the_solution_text() {
        let root = root();
        let dir = root.join("docs/tutorial");
        let mut chapters: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| Some(e.ok()?.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "md"))
            .collect();
        chapters.sort();
        assert!(!chapters.is_empty());
        for path in chapters {
            let have = std::fs::read_to_string(&path).unwrap();
            let want =
                refresh_chapter(&have, &root).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            if bless() {
                std::fs::write(&path, want).unwrap();
                continue;
            }
            assert!(
                have == want,
                "{}: a listing differs from its solution file: run DMALAB_BLESS=1 cargo test -p dmalab-harness --lib tutorial",
                path.display()
            );
        }
    }
    /// The code lines inside the exercise regions of step `step`'s solution (comments, lines
    /// too short to give anything away, and lines the given code has too left out): what the
    /// student must write.
    fn answer_lines(root: &Path, step: u32) -> Vec<String> {
        let (mut inside_lines, mut given) = (Vec::new(), std::collections::BTreeSet::new());
        for (name, _) in skeleton_files(root, step).unwrap() {
            let text = std::fs::read_to_string(solution_dir(root, step).join(&name)).unwrap();
            let mut inside = false;
            for l in text.lines().map(str::trim) {
                if l.starts_with(EXERCISE) {
                    inside = true;
                } else if l.starts_with(END_EXERCISE) {
                    inside = false;
                } else if !inside {
                    given.insert(l.to_string());
                } else if !l.starts_with("//") && l.len() >= 16 {
                    inside_lines.push(l.to_string());
                }
            }
        }
        inside_lines.retain(|l| !given.contains(l));
        inside_lines
    }

    /// A quoted signature is looked up in the tree; one the tree does not declare is named.
    #[test]
    fn api_rows_are_checked_against_a_tree() {
        let chapter = "# x\n## The kernel API\n\n| what | signature | where |\n|---|---|---|\n| a | `pub fn f(&self, a: u32,) -> Result` | [`rust/kernel/a.rs`](x) |\n\n## Check it\n";
        let rows = api_rows(chapter);
        assert_eq!(
            rows,
            [(
                "pub fn f(&self, a: u32,) -> Result".to_string(),
                "rust/kernel/a.rs".to_string()
            )]
        );
        let source = "    pub fn f(\n        &self,\n        a: u32,\n    ) -> Result {";
        assert!(declares(source, &rows[0].0));
        assert!(!declares(source, "pub fn f(&self, a: u64) -> Result"));
    }

    /// The catalogue holds at least 15 mistakes over the steps, each with a distinct id, a
    /// `find` that occurs once, and something its message must say (that its check exists and
    /// its step grades it: `grading::checks`' tests).
    #[test]
    fn every_catalogued_mistake_applies_to_its_solution() {
        let root = root();
        let all = mistakes(&root).unwrap();
        assert!(all.len() >= 15, "only {} mistakes", all.len());
        let mut ids = std::collections::BTreeSet::new();
        for m in &all {
            assert!(ids.insert(m.id.clone()), "two mistakes are named {}", m.id);
            assert!(
                (1..=STEPS).contains(&m.step),
                "{}: no step {}",
                m.id,
                m.step
            );
            assert!(!m.says.is_empty(), "{}: says nothing", m.id);
            let files = mistake_files(&root, m).unwrap_or_else(|e| panic!("{e}"));
            assert!(files.iter().any(|(n, _)| *n == m.file));
        }
        let steps: std::collections::BTreeSet<u32> = all.iter().map(|m| m.step).collect();
        assert!(steps.len() >= 7, "mistakes in only {} steps", steps.len());
    }

    /// A chapter states its exercise and links the solution; it never prints the code the
    /// exercise asks for (in a listing or anywhere else).
    #[test]
    fn no_chapter_prints_the_code_its_exercise_asks_for() {
        let root = root();
        let dir = root.join("docs/tutorial");
        for step in 1..=STEPS {
            let Some(chapter) = chapter_path(&root, step) else {
                panic!("no chapter for step {step} in {}", dir.display());
            };
            let text = std::fs::read_to_string(&chapter).unwrap();
            let printed: std::collections::BTreeSet<&str> = text.lines().map(str::trim).collect();
            let answers = answer_lines(&root, step);
            assert!(!answers.is_empty(), "step {step} has no exercise");
            let given: Vec<&String> = answers
                .iter()
                .filter(|a| printed.contains(a.as_str()))
                .collect();
            assert!(
                given.is_empty(),
                "{} prints {} of the {} lines its exercise asks for, e.g. `{}`",
                chapter.display(),
                given.len(),
                answers.len(),
                given[0]
            );
        }
    }
}

#[cfg(test)]
mod pointers {
    use std::path::PathBuf;

    /// GitHub's anchor of a Markdown heading: lower case, spaces to dashes, punctuation gone.
    fn anchor(heading: &str) -> String {
        heading
            .trim()
            .to_lowercase()
            .chars()
            .filter_map(|c| match c {
                ' ' => Some('-'),
                c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
                _ => None,
            })
            .collect()
    }

    /// Every "see docs/..." pointer of `dmalab check`'s report card (each check's contract
    /// and tutorial pointers, from the one table of checks) names a file that exists and,
    /// after `#`, one of its headings.
    #[test]
    fn every_pointer_on_the_report_card_leads_somewhere() {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut seen = 0;
        let pointers = crate::grading::checks::table()
            .iter()
            .flat_map(|c| std::iter::once(c.see).chain(c.chapter));
        for piece in pointers {
            assert!(piece.starts_with("docs/"), "{piece}: not a docs/ pointer");
            let (file, section) = piece.split_once('#').unwrap_or((piece, ""));
            let text = std::fs::read_to_string(root.join(file))
                .unwrap_or_else(|e| panic!("{piece}: {file}: {e}"));
            if !section.is_empty() {
                let found = text
                    .lines()
                    .filter_map(|l| l.strip_prefix('#'))
                    .map(|h| anchor(h.trim_start_matches('#')))
                    .any(|a| a == section);
                assert!(found, "{piece}: {file} has no heading #{section}");
            }
            seen += 1;
        }
        assert!(seen > 20, "only {seen} pointers found");
    }
}
