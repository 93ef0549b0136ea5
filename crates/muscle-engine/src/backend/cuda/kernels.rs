//! The CUDA kernel sources (embedded in the crate) and their run-time compilation with NVRTC.
//!
//! Each `.cu` file is one NVRTC program (with `common.cuh` prepended: NVRTC has no file system to
//! include from), compiled to PTX for the device's compute capability the first time a device is
//! opened, and cached for the life of the process.

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
            "fill_f32", "add_bias_f32", "axpby_f32", "scale_f32", "add_f32", "mul_f32", "mul_into_f32", "scale_cols_f32",
            "gelu_forward_f32", "gelu_backward_f32", "tanh_forward_f32", "tanh_backward_f32",
            "dropout_mask_f32", "counter_uniform_f32", "adamw_f32", "f32_to_bf16",
        ],
    },
    Module {
        file: "reduce.cu",
        source: include_str!("kernels/reduce.cu"),
        kernels: &[
            "column_sums_f32", "dot_partial_f32", "fill_f64", "layer_norm_forward_f32", "layer_norm_backward_f32",
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
        kernels: &["to_heads_f32", "from_heads_f32", "attention_softmax_f32", "attention_dscores_f32"],
    },
];

/// Compiles one module to PTX for `arch` (`compute_80`, `compute_90`, ...). The error is NVRTC's
/// log, which names the file and line.
pub fn compile(module: &Module, arch: &str) -> Result<Ptx, String> {
    let src = format!("{COMMON}\n#line 1 \"{}\"\n{}", module.file, module.source);
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

/// True when libnvrtc can be loaded: from the loader's search path (`LD_LIBRARY_PATH` included) or
/// a folder `libs::search_dirs` names.
pub fn nvrtc_available() -> bool {
    super::libs::preload_default();
    // SAFETY: only tries to dlopen the library by its candidate names.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// The PTX of every module for `arch`, compiled once per process.
pub fn ptx_for(arch: &str) -> Result<Vec<(&'static Module, String)>, String> {
    static CACHE: OnceLock<Mutex<HashMap<String, Vec<String>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
    if !cache.contains_key(arch) {
        let mut ptx = Vec::with_capacity(MODULES.len());
        for m in MODULES {
            ptx.push(compile(m, arch)?.to_src());
        }
        cache.insert(arch.to_string(), ptx);
    }
    Ok(MODULES.iter().zip(cache[arch].iter().cloned()).collect())
}
