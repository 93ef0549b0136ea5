//! Finding CUDA's user-space libraries where pip puts them.
//!
//! cudarc opens libcuda, libcublas and libnvrtc by name (`dlopen("libnvrtc.so.13")`), so they must
//! be on the loader's path. PyTorch users have cuBLAS and NVRTC as pip wheels inside a virtual
//! environment (`site-packages/nvidia/*/lib`), not on that path. Loading such a file once by its full
//! path is enough: glibc's `dlopen` by name then returns the library already loaded under that
//! soname. The driver (libcuda) comes with the NVIDIA driver install and is never searched for here.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The sonames cudarc asks for (CUDA 13 first, 12 as a fallback).
const SONAMES: &[&str] = &["libnvrtc.so.13", "libnvrtc.so.12", "libcublasLt.so.13", "libcublas.so.13",
                           "libcublasLt.so.12", "libcublas.so.12"];

/// Folders to search: `MUSCLE_CUDA_LIB_DIRS` (':'-separated), then the pip layout
/// (`site-packages/nvidia/{cu13,cublas,cuda_nvrtc}/lib`) of the active `VIRTUAL_ENV` / `CONDA_PREFIX`.
pub fn search_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("MUSCLE_CUDA_LIB_DIRS")
        .map(|v| std::env::split_paths(&v).collect())
        .unwrap_or_default();
    for var in ["VIRTUAL_ENV", "CONDA_PREFIX"] {
        let Some(prefix) = std::env::var_os(var) else { continue };
        let Ok(entries) = std::fs::read_dir(Path::new(&prefix).join("lib")) else { continue };
        for py in entries.flatten().filter(|e| e.file_name().to_string_lossy().starts_with("python")) {
            let nvidia = py.path().join("site-packages/nvidia");
            for sub in ["cu13", "cublas", "cuda_nvrtc"] {
                dirs.push(nvidia.join(sub).join("lib"));
            }
        }
    }
    dirs
}

/// Loads every CUDA library found in `dirs` by full path and keeps it loaded for the life of the
/// process; returns the files loaded. Missing files are skipped: the loader's own path may still
/// have them.
pub fn preload(dirs: &[PathBuf]) -> Vec<PathBuf> {
    static KEPT: Mutex<Vec<libloading::Library>> = Mutex::new(Vec::new());
    let mut kept = KEPT.lock().unwrap_or_else(|e| e.into_inner());
    let mut loaded = Vec::new();
    for name in SONAMES {
        // the first folder that has a soname wins; later ones would be the same library again
        if let Some(path) = dirs.iter().map(|d| d.join(name)).find(|p| p.is_file()) {
            // SAFETY: loading a CUDA library runs its initialisers, which only register the library.
            if let Ok(lib) = unsafe { libloading::Library::new(&path) } {
                kept.push(lib);
                loaded.push(path);
            }
        }
    }
    loaded
}

/// `preload(search_dirs())`, once per process.
pub fn preload_default() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        preload(&search_dirs());
    });
}
