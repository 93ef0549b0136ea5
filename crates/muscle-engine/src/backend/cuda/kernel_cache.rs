//! Compiled kernels kept on disk between processes: NVRTC takes seconds to compile every module
//! for a GPU, and each process that opens one (every `muscle run`, every benchmark of the GPU
//! check) would pay them again. An image is stored under a name made of its module, its target
//! and a hash of what made it (the module's whole source, the target, NVRTC's version), so an
//! edited kernel or another NVRTC compiles afresh. Files are written whole and then renamed, and
//! carry a checksum: a torn or damaged file is compiled again and replaced, never loaded.
//!
//! Where: `MUSCLE_KERNEL_CACHE` (a folder, or `off`), else `$XDG_CACHE_HOME/musclelora/kernels`,
//! else `~/.cache/musclelora/kernels`. A cache that cannot be read or written only costs the compile.

use std::path::{Path, PathBuf};

/// The folder the environment names for the cache; `None` when it is off or no home is known.
pub fn dir() -> Option<PathBuf> {
    match std::env::var_os("MUSCLE_KERNEL_CACHE") {
        Some(v) if v == "off" || v == "0" => None,
        Some(v) if !v.is_empty() => Some(PathBuf::from(v)),
        _ => std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()).map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").filter(|v| !v.is_empty()).map(|h| PathBuf::from(h).join(".cache")))
            .map(|base| base.join("musclelora").join("kernels")),
    }
}

/// FNV-1a, 64 bits: stable across builds and platforms (std's hasher is not promised to be).
fn fnv(parts: &[&[u8]]) -> u64 {
    let mut h = 0xcbf29ce484222325u64;
    for part in parts {
        for &b in *part {
            h = (h ^ b as u64).wrapping_mul(0x100000001b3);
        }
        h = (h ^ 0xff).wrapping_mul(0x100000001b3); // parts ["ab", "c"] and ["a", "bc"] differ
    }
    h
}

/// The file of `file`'s image for `target` (`sm_90`, `compute_90`) of kind `ext` (`cubin`, `ptx`),
/// made from `source` by `compiler` (NVRTC's version).
pub fn path(dir: &Path, file: &str, target: &str, ext: &str, source: &str, compiler: &str) -> PathBuf {
    let key = fnv(&[source.as_bytes(), target.as_bytes(), ext.as_bytes(), compiler.as_bytes()]);
    let stem = file.strip_suffix(".cu").unwrap_or(file);
    dir.join(format!("{stem}.{target}.{key:016x}.{ext}"))
}

const MAGIC: &[u8; 8] = b"MUSCLEK1";

/// The image stored at `path`, if it is there whole.
pub fn load(path: &Path) -> Option<Vec<u8>> {
    let bytes = std::fs::read(path).ok()?;
    if bytes.len() < 16 || &bytes[..8] != MAGIC {
        return None;
    }
    let sum = u64::from_le_bytes(bytes[8..16].try_into().ok()?);
    let image = &bytes[16..];
    (fnv(&[image]) == sum).then(|| image.to_vec())
}

/// Stores `image` at `path` (written to a temporary file beside it, then renamed into place, so a
/// reader sees the whole file or none). Failures are returned for the caller to ignore.
pub fn store(path: &Path, image: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{}.{}.tmp", path.file_name().and_then(|n| n.to_str()).unwrap_or("kernel"),
                               std::process::id()));
    let mut bytes = Vec::with_capacity(16 + image.len());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&fnv(&[image]).to_le_bytes());
    bytes.extend_from_slice(image);
    // a full disk or a rename refused leaves no temporary file behind
    std::fs::write(&tmp, &bytes).and_then(|_| std::fs::rename(&tmp, path)).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_whole_images_and_refuses_damaged_ones() {
        let dir = std::env::temp_dir().join(format!("muscle-kernel-cache-{}", std::process::id()));
        let p = path(&dir, "rows.cu", "sm_90", "cubin", "source", "nvrtc 13.0");
        assert!(p.file_name().unwrap().to_str().unwrap().starts_with("rows.sm_90."), "{}", p.display());
        assert_eq!(load(&p), None, "nothing stored yet");
        store(&p, b"machine code").unwrap();
        assert_eq!(load(&p).as_deref(), Some(&b"machine code"[..]));
        // one byte changed, or the file cut short: refused
        let mut bytes = std::fs::read(&p).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&p, &bytes).unwrap();
        assert_eq!(load(&p), None);
        std::fs::write(&p, &bytes[..10]).unwrap();
        assert_eq!(load(&p), None);
        // another source, target or compiler: another file
        for other in [path(&dir, "rows.cu", "sm_90", "cubin", "source!", "nvrtc 13.0"),
                      path(&dir, "rows.cu", "sm_80", "cubin", "source", "nvrtc 13.0"),
                      path(&dir, "rows.cu", "sm_90", "cubin", "source", "nvrtc 13.1")] {
            assert_ne!(other, p);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
