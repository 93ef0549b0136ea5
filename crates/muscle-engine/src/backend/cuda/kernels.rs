//! The CUDA kernel sources (embedded in the crate) and their run-time compilation with NVRTC.
//!
//! Each `.cu` file is one NVRTC program (with `common.cuh` prepended: NVRTC has no file system to
//! include from), compiled for the device's architecture the first time a device is opened (machine
//! code where NVRTC knows the architecture, else PTX), and cached for the life of the process and,
//! between processes, on disk (`kernel_cache`).

use super::kernel_cache;
use cudarc::nvrtc::{CompileOptions, Ptx};
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

pub const COMMON: &str = include_str!("kernels/common.cuh");

/// One NVRTC program: its file name, source, and the kernels the backend loads from it.
pub struct Module {
    pub file: &'static str,
    pub source: &'static str,
    pub kernels: &'static [&'static str],
}

pub const MODULES: &[Module] = &[
    Module {
        file: "elementwise.cu",
        source: include_str!("kernels/elementwise.cu"),
        kernels: &[
            "fill_f32", "add_bias_f32", "add_bias_3_f32", "axpby_f32", "scale_f32", "add_f32", "mul_f32", "mul_into_f32", "dropout_mul_f32",
            "dropout_mul_into_f32", "scale_cols_f32",
            "gelu_forward_f32", "gelu_backward_f32", "tanh_forward_f32", "tanh_backward_f32",
            "dropout_mask_f32", "counter_uniform_f32", "adamw_f32", "f32_to_bf16", "f32_to_bf16_3", "bias_dropout_residual_f32",
            "bias_gelu_f32",
        ],
    },
    Module {
        file: "decoder.cu",
        source: include_str!("kernels/decoder.cu"),
        kernels: &["rms_norm_forward_f32", "rms_norm_backward_f32", "rms_norm_weight_backward_f32",
                   "silu_gate_forward_f32", "silu_gate_backward_f32", "rope_f32"],
    },
    Module {
        file: "flash_attention.cu",
        source: include_str!("kernels/flash_attention.cu"),
        kernels: &["flash_attention_forward_f32", "attention_row_dot_f32", "flash_attention_dq_f32",
                   "flash_attention_dkv_f32"],
    },
    Module {
        file: "check.cu",
        source: include_str!("kernels/check.cu"),
        kernels: &["halves_checksum"],
    },
    Module {
        file: "profile.cu",
        source: include_str!("kernels/profile.cu"),
        kernels: &["profile_spin"],
    },
    Module {
        file: "multi.cu",
        source: include_str!("kernels/multi.cu"),
        kernels: &["scale_many_f32", "axpby_many_f32", "adamw_many_f32", "dots_many_f32"],
    },
    Module {
        file: "reduce.cu",
        source: include_str!("kernels/reduce.cu"),
        kernels: &[
            "column_sums_f32", "layer_norm_forward_f32", "residual_layer_norm_f32", "layer_norm_backward_f32",
            "layer_norm_params_backward_f32",
        ],
    },
    Module {
        file: "rows.cu",
        source: include_str!("kernels/rows.cu"),
        kernels: &[
            "embedding_forward_f32", "embedding_backward_f32", "gather_rows_f32", "scatter_add_rows_f32",
            "softmax_xent_forward_f32", "softmax_xent_backward_f32",
        ],
    },
    Module {
        file: "attention.cu",
        source: include_str!("kernels/attention.cu"),
        kernels: &["attention_softmax_f32", "attention_dscores_f32"],
    },
];

/// Compiles one module to PTX for `arch` (`compute_80`, `compute_90`, ...). The error is NVRTC's
/// log, which names the file and line.
/// What NVRTC compiles for `module`: the shared header, then the file with its own line numbers.
fn program_source(module: &Module) -> String {
    format!("{COMMON}\n#line 1 \"{}\"\n{}", module.file, module.source)
}

pub fn compile(module: &Module, arch: &str) -> Result<Ptx, String> {
    let src = program_source(module);
    let opts = CompileOptions {
        name: Some(module.file.to_string()),
        options: vec![format!("--gpu-architecture={arch}"), "--std=c++17".into()],
        ..Default::default()
    };
    cudarc::nvrtc::compile_ptx_with_opts(src, opts).map_err(|e| match e {
        cudarc::nvrtc::CompileError::CompileError { log, .. } => {
            format!("NVRTC could not compile {} for {arch}:\n{}", module.file, log.to_string_lossy())
        }
        other => format!("NVRTC could not compile {} for {arch}: {other:?}", module.file),
    })
}

/// Compiles one module to a CUBIN (machine code) for a real architecture (`sm_80`, `sm_90`, ...).
/// Loading machine code needs no PTX JIT in the driver, so NVRTC from a newer CUDA 13.x than the
/// driver's still works (a newer PTX ISA would be refused by an older driver).
pub fn compile_cubin(module: &Module, arch: &str) -> Result<Vec<u8>, String> {
    use cudarc::nvrtc::{result, sys};
    use std::ffi::CString;
    let src = CString::new(program_source(module))
        .map_err(|_| format!("{}: source holds a NUL byte", module.file))?;
    let name = CString::new(module.file).map_err(|_| format!("{}: bad file name", module.file))?;
    let prog = result::create_program(&src, Some(&name)).map_err(|e| format!("NVRTC: creating {}: {e:?}", module.file))?;
    let options = [format!("--gpu-architecture={arch}"), "--std=c++17".to_string()];
    // SAFETY: `prog` is live until destroyed below; `src` and `name` outlive it.
    let out = unsafe {
        match result::compile_program(prog, &options) {
            Err(e) => {
                let log = result::get_program_log(prog)
                    .map(|l| std::ffi::CStr::from_ptr(l.as_ptr()).to_string_lossy().into_owned())
                    .unwrap_or_default();
                Err(format!("NVRTC could not compile {} for {arch} ({e:?}):\n{log}", module.file))
            }
            Ok(()) => {
                let mut size = 0usize;
                match sys::nvrtcGetCUBINSize(prog, &mut size).result() {
                    Err(e) => Err(format!("NVRTC: no machine code for {} on {arch}: {e:?}", module.file)),
                    Ok(()) => {
                        let mut bin = vec![0u8; size];
                        sys::nvrtcGetCUBIN(prog, bin.as_mut_ptr() as *mut std::ffi::c_char)
                            .result()
                            .map(|_| bin)
                            .map_err(|e| format!("NVRTC: reading the machine code of {}: {e:?}", module.file))
                    }
                }
            }
        }
    };
    // SAFETY: created above, destroyed once.
    let _ = unsafe { result::destroy_program(prog) };
    out
}

/// True when libnvrtc can be loaded: from the loader's search path (`LD_LIBRARY_PATH` included) or
/// a folder `libs::search_dirs` names.
pub fn nvrtc_available() -> bool {
    super::libs::preload_default();
    // SAFETY: only tries to dlopen the library by its candidate names.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// Every module compiled for a device of compute capability `(major, minor)`, once per process
/// and, between processes, kept in the disk cache (`kernel_cache::dir()`): machine code for `sm_XY`
/// where this NVRTC knows the architecture, else PTX for `compute_XY` (the driver compiles it when
/// loading).
pub fn images_for(major: i32, minor: i32) -> Result<Vec<(&'static Module, Ptx)>, String> {
    type Cache = Mutex<HashMap<(i32, i32), Vec<Image>>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let mut cache = CACHE.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    let images = match cache.entry((major, minor)) {
        std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
        std::collections::hash_map::Entry::Vacant(slot) => slot.insert(images_cached(major, minor, kernel_cache::dir().as_deref())?),
    };
    Ok(MODULES.iter().zip(images.iter().cloned()).map(|(m, img)| (m, img.into_ptx())).collect())
}

/// A module compiled: machine code, or PTX for the driver to compile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Image {
    Cubin(Vec<u8>),
    Ptx(String),
}

impl Image {
    /// What the disk cache stores.
    fn bytes(&self) -> &[u8] {
        match self {
            Image::Cubin(bin) => bin,
            Image::Ptx(src) => src.as_bytes(),
        }
    }

    fn into_ptx(self) -> Ptx {
        match self {
            Image::Cubin(bin) => Ptx::from_binary(bin),
            Image::Ptx(src) => Ptx::from_src(src),
        }
    }
}

/// Modules compiled by NVRTC in this process (the disk cache's test counts them).
pub static COMPILED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// NVRTC's version, for the cache's keys.
fn nvrtc_version() -> String {
    let (mut major, mut minor) = (0, 0);
    // SAFETY: writes two ints (libnvrtc is loaded: `nvrtc_available` came first).
    let ok = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) }.result().is_ok();
    if ok { format!("nvrtc {major}.{minor}") } else { "nvrtc ?".into() }
}

/// Every module's image for `(major, minor)`, from the disk cache in `dir` where it holds it,
/// else compiled (and stored there).
pub fn images_cached(major: i32, minor: i32, dir: Option<&std::path::Path>) -> Result<Vec<Image>, String> {
    let compiler = nvrtc_version();
    let (sm, compute) = (format!("sm_{major}{minor}"), format!("compute_{major}{minor}"));
    MODULES.iter().map(|m| {
        let source = program_source(m);
        let at = |target: &str, ext: &str| dir.map(|d| kernel_cache::path(d, m.file, target, ext, &source, &compiler));
        let (cubin_at, ptx_at) = (at(&sm, "cubin"), at(&compute, "ptx"));
        if let Some(bin) = cubin_at.as_deref().and_then(kernel_cache::load) {
            return Ok(Image::Cubin(bin));
        }
        if let Some(ptx) = ptx_at.as_deref().and_then(kernel_cache::load).and_then(|b| String::from_utf8(b).ok()) {
            return Ok(Image::Ptx(ptx));
        }
        COMPILED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (image, at) = match compile_cubin(m, &sm) {
            Ok(bin) => (Image::Cubin(bin), cubin_at),
            Err(_) => (Image::Ptx(compile(m, &compute)?.to_src()), ptx_at),
        };
        if let Some(at) = at {
            let _ = kernel_cache::store(&at, image.bytes()); // a cache: failing to keep it costs the next compile only
        }
        Ok(image)
    }).collect()
}
