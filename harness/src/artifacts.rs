//! Where the built pieces are: `DMALAB_<NAME>` environment variables, else the paths the
//! Makefile recorded in `target/paths/<name>`.

use std::path::{Path, PathBuf};

/// The workspace root (this crate is `<root>/harness`).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Path of artifact `name` (qemu, kernel, initramfs, device), or a message saying how to build it.
pub fn path(name: &str) -> Result<PathBuf, String> {
    let var = format!("DMALAB_{}", name.to_uppercase());
    let p = match std::env::var_os(&var) {
        Some(v) => PathBuf::from(v),
        None => {
            let rec = root().join("target/paths").join(name);
            let s = std::fs::read_to_string(&rec).map_err(|_| {
                format!(
                    "no {name} artifact: set {var} or run 'make artifacts' (records {})",
                    rec.display()
                )
            })?;
            PathBuf::from(s.trim())
        }
    };
    if !p.exists() {
        return Err(format!(
            "{name} artifact {} does not exist: run 'make artifacts'",
            p.display()
        ));
    }
    Ok(p)
}
