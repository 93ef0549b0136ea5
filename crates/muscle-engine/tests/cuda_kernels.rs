//! Every CUDA kernel source compiles, through NVRTC, to PTX and to machine code for sm_80 (A100) and
//! sm_90 (H100/H200), and every kernel the backend loads is in it. Needs only libnvrtc (the PyPI package
//! `nvidia-cuda-nvrtc` provides it without a GPU; `scripts/fetch_nvrtc.sh` fetches it, `.ci/run` runs
//! that script); skipped, with the reason
//! printed, where the library cannot be loaded — unless MUSCLE_REQUIRE_NVRTC=1, as in CI.
#![cfg(feature = "cuda")]

use muscle_engine::backend::cuda::kernels::{self, MODULES};

fn nvrtc_or_skip() -> bool {
    // where scripts/fetch_nvrtc.sh (and CI) put the PyPI wheel's library
    let wheel = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.cache/nvrtc/nvidia/cu13/lib");
    muscle_engine::backend::cuda::libs::preload(&[wheel]);
    if kernels::nvrtc_available() {
        return true;
    }
    let why = "libnvrtc not found (run scripts/fetch_nvrtc.sh, or put the folder of libnvrtc.so.13 in MUSCLE_CUDA_LIB_DIRS or LD_LIBRARY_PATH)";
    if std::env::var("MUSCLE_REQUIRE_NVRTC").is_ok_and(|v| v == "1") {
        panic!("MUSCLE_REQUIRE_NVRTC=1 but {why}");
    }
    eprintln!("skipped: {why}");
    false
}

#[test]
fn every_kernel_compiles_for_sm80_and_sm90() {
    if !nvrtc_or_skip() {
        return;
    }
    for arch in ["compute_80", "compute_90"] {
        for m in MODULES {
            let ptx = kernels::compile(m, arch).unwrap_or_else(|e| panic!("{e}"));
            let src = ptx.to_src();
            let target = format!(".target sm_{}", &arch["compute_".len()..]);
            assert!(src.contains(&target), "{} for {arch}: PTX lacks `{target}`", m.file);
            for k in m.kernels {
                assert!(src.contains(&format!(".entry {k}(")), "{} for {arch}: no kernel {k} in the PTX", m.file);
            }
        }
    }
}

/// What a session loads: machine code for the real architecture (an ELF image).
#[test]
fn every_module_compiles_to_machine_code_for_sm80_and_sm90() {
    if !nvrtc_or_skip() {
        return;
    }
    for arch in ["sm_80", "sm_90"] {
        for m in MODULES {
            let bin = kernels::compile_cubin(m, arch).unwrap_or_else(|e| panic!("{e}"));
            assert!(bin.len() > 1000 && bin.starts_with(b"\x7fELF"), "{} for {arch}: not an ELF image", m.file);
            for k in m.kernels {
                assert!(bin.windows(k.len()).any(|w| w == k.as_bytes()), "{} for {arch}: no symbol {k}", m.file);
            }
        }
    }
    let err = kernels::compile_cubin(&kernels::Module { file: "bad.cu", source: "extern \"C\" __global__ void k() { oops; }", kernels: &[] }, "sm_90")
        .err().expect("must fail");
    assert!(err.contains("bad.cu(1)") && err.contains("oops"), "{err}");
}

#[test]
fn the_backend_loads_every_kernel_its_sources_define() {
    // A kernel written but not listed would never be loaded; one listed but not written fails above.
    for m in MODULES {
        for line in m.source.lines() {
            if let Some(rest) = line.strip_prefix("extern \"C\" __global__ void ") {
                let name = rest.split('(').next().unwrap();
                assert!(m.kernels.contains(&name), "{}: kernel {name} is not in its MODULES list", m.file);
            }
        }
    }
}

#[test]
fn a_compile_error_names_the_file_and_line() {
    if !nvrtc_or_skip() {
        return;
    }
    let broken = kernels::Module { file: "broken.cu", source: "extern \"C\" __global__ void k(float* x) {\n  x[0] = undefined_name;\n}\n", kernels: &["k"] };
    let err = kernels::compile(&broken, "compute_80").err().expect("must fail");
    assert!(err.contains("broken.cu(2)") && err.contains("undefined_name"), "{err}");
}

/// The disk cache of compiled kernels: the first process compiles every module and stores it, the
/// next loads them all without NVRTC compiling anything, and a damaged file is compiled again and
/// replaced (never loaded).
#[test]
fn compiled_kernels_are_kept_on_disk_between_processes() {
    use std::sync::atomic::Ordering::Relaxed;
    if !nvrtc_or_skip() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("muscle-kernels-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // no other test of this binary goes through images_cached, which alone counts
    let compiled = || kernels::COMPILED.load(Relaxed);
    let start = compiled();
    let first = kernels::images_cached(8, 6, Some(&dir)).unwrap();
    assert_eq!(compiled() - start, MODULES.len(), "every module compiled once");
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert_eq!(files.len(), MODULES.len(), "one file per module: {files:?}");
    assert!(files.iter().all(|f| f.extension().is_some_and(|x| x == "cubin")), "machine code for sm_86: {files:?}");

    let before = compiled();
    let second = kernels::images_cached(8, 6, Some(&dir)).unwrap();
    assert_eq!(second, first, "the cached images are the compiled ones");
    assert_eq!(compiled(), before, "nothing compiled the second time");

    let damaged = &files[0];
    let mut bytes = std::fs::read(damaged).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x5a;
    std::fs::write(damaged, &bytes).unwrap();
    let third = kernels::images_cached(8, 6, Some(&dir)).unwrap();
    assert_eq!(third, first, "a damaged file is compiled again, not loaded");
    assert_eq!(compiled(), before + 1, "that one module alone");
    assert_ne!(std::fs::read(damaged).unwrap(), bytes, "and replaced");
    std::fs::remove_dir_all(&dir).unwrap();
}
