//! Compiles every kernel source of the engine's CUDA backend as C++ for the CPU: each `.cu` file
//! becomes one translation unit (`emu.hpp`, then `common.cuh` and the file inside a namespace of its
//! own, as NVRTC sees them), followed by a trampoline per `extern "C" __global__` kernel that
//! unpacks a `cuLaunchKernel`-style argument array; `registry.cpp` lists them by name.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// One kernel's name and parameter types, parsed from `extern "C" __global__ void name(type a, ...)`.
struct Kernel {
    name: String,
    types: Vec<String>,
}

fn kernels_in(file: &Path, src: &str) -> Vec<Kernel> {
    const HEAD: &str = "extern \"C\" __global__ void ";
    let mut out = Vec::new();
    let mut rest = src;
    while let Some(at) = rest.find(HEAD) {
        rest = &rest[at + HEAD.len()..];
        let open = rest.find('(').unwrap_or_else(|| panic!("{}: a kernel without parameters", file.display()));
        let close = rest.find(')').unwrap_or_else(|| panic!("{}: unclosed parameter list", file.display()));
        let name = rest[..open].trim().to_string();
        let types = rest[open + 1..close]
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty() && *p != "void")
            .map(|p| {
                // the type is everything before the parameter's name
                let cut = p.rfind(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or_else(|| {
                    panic!("{}: kernel {name}: parameter `{p}` has no name", file.display())
                });
                p[..=cut].trim().replace("__restrict__", "").trim().to_string()
            })
            .collect();
        out.push(Kernel { name, types });
    }
    out
}

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let kernels_dir = manifest.join("../muscle-engine/src/backend/cuda/kernels");
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    println!("cargo:rerun-if-changed={}", kernels_dir.display());
    println!("cargo:rerun-if-changed=cpp");

    let common = std::fs::read_to_string(kernels_dir.join("common.cuh")).expect("common.cuh");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&kernels_dir)
        .expect("the engine's kernel folder")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "cu"))
        .collect();
    files.sort();
    // the emulator's own test kernels
    files.push(manifest.join("cpp/selftest.cu"));

    let mut build = cc::Build::new();
    build.cpp(true).std("c++17").opt_level(2).include(manifest.join("cpp")).define("MUSCLE_EMU", None)
        .flag_if_supported("-Wno-unknown-pragmas").flag_if_supported("-Wno-unused-parameter")
        .flag_if_supported("-Wno-unused-variable").warnings(false);
    let mut registry = String::from("#include \"registry.hpp\"\n#include <cstring>\n");
    let mut tables = Vec::new();
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
        let src = std::fs::read_to_string(file).unwrap();
        let stem = file.file_stem().unwrap().to_string_lossy().replace(|c: char| !c.is_alphanumeric(), "_");
        let found = kernels_in(file, &src);
        let mut unit = format!("#include \"emu.hpp\"\n#include \"registry.hpp\"\nnamespace emu_{stem} {{\n#line 1 \"common.cuh\"\n{common}\n#line 1 \"{}\"\n{src}\n", file.display());
        for k in &found {
            let args: Vec<String> = k.types.iter().enumerate()
                .map(|(i, t)| format!("*reinterpret_cast<{t}*>(p[{i}])")).collect();
            writeln!(unit, "static void trampoline_{}(void** p) {{ {}({}); }}", k.name, k.name, args.join(", ")).unwrap();
        }
        unit.push_str("}\n");
        writeln!(unit, "extern const EmuKernel EMU_KERNELS_{stem}[] = {{").unwrap();
        for k in &found {
            writeln!(unit, "    {{\"{}\", emu_{stem}::trampoline_{}, {}}},", k.name, k.name, k.types.len()).unwrap();
        }
        unit.push_str("    {nullptr, nullptr, 0},\n};\n");
        let path = out.join(format!("{stem}.cpp"));
        std::fs::write(&path, unit).unwrap();
        build.file(&path);
        tables.push(stem);
    }
    for t in &tables {
        writeln!(registry, "extern const EmuKernel EMU_KERNELS_{t}[];").unwrap();
    }
    registry.push_str("const EmuKernel* find_kernel(const char* name) {\n    static const EmuKernel* const tables[] = {");
    for t in &tables {
        write!(registry, "EMU_KERNELS_{t}, ").unwrap();
    }
    registry.push_str("};\n    for (const EmuKernel* t : tables)\n        for (; t->name; t++)\n            if (std::strcmp(t->name, name) == 0) return t;\n    return nullptr;\n}\n");
    let path = out.join("registry.cpp");
    std::fs::write(&path, registry).unwrap();
    build.file(&path).file(manifest.join("cpp/emu.cpp"));
    build.compile("muscle_cuda_emu");
}
