//! `muscle-bench`: the native benchmark suite.
//!
//! Measures, in one run, the machine's SGEMM peak (our GEMM at 2048^3, and numpy/OpenBLAS in a
//! subprocess where present) and the training steps of a BERT-base-shaped random model: LoRA,
//! MuScleLoRA (LoRA + MSLR + gradient alignment), full fine-tuning and evaluation, as ms, as
//! GFLOP/s from the analytic counts in `flops.rs`, and as a ratio to the same-run peak.

mod flops;

use muscle_engine::backend::{cpu::Cpu, Backend, Mat};
use muscle_engine::models::bert::{random_tensors, BatchRef, BertClassifier};
use muscle_engine::models::config::{EncoderConfig, Family};
use muscle_engine::io::safetensors::Weights;
use muscle_engine::*;
#[cfg(feature = "cuda")]
use muscle_engine::backend::cuda::Precision;
use std::time::Instant;

struct Args {
    layers: usize,
    hidden: usize,
    batch: usize,
    seq: usize,
    iters: usize,
    modes: Vec<String>,
    json: Option<String>,
    gemms: bool,
    kernels: bool,
    tune: Option<Vec<[usize; 4]>>,
    cuda: bool,
    /// `--device cuda:N`: the GPU's number (0 for `cuda`)
    gpu: usize,
    /// `--device cuda-dry`: the CUDA backend's books without a device (calls and memory, no times)
    dry: bool,
    /// `--profile` (GPU): one more step of each mode with every call timed on the device
    profile: bool,
    roberta: bool,
    bf16: bool,
    /// `--attention`: standard, flash, or auto (flash from FLASH_FROM tokens)
    attention: AttentionImpl,
}

/// `--tune`'s "kc,mc,nc,split;..." list.
fn parse_tune(spec: &str) -> std::result::Result<Vec<[usize; 4]>, String> {
    spec.split(';').map(|c| {
        let v: Vec<usize> = c.split(',').map(|x| x.trim().parse::<usize>()).collect::<std::result::Result<_, _>>()
            .map_err(|e| format!("--tune: `{c}`: {e} (give kc,mc,nc,split per configuration, 0 = built-in)"))?;
        match v[..] {
            [kc, mc, nc, split] if split <= 2 && kc % 8 == 0 && mc % 6 == 0 && nc % 16 == 0 => Ok([kc, mc, nc, split]),
            _ => Err(format!("--tune: `{c}` is not kc,mc,nc,split with kc a multiple of 8, mc of 6, nc of 16, split 0-2")),
        }
    }).collect()
}

fn parse_args() -> std::result::Result<Args, String> {
    let mut a = Args { layers: 12, hidden: 768, batch: 32, seq: 64, iters: 3,
                       modes: vec!["lora".into(), "musclelora".into(), "full".into(), "eval".into()], json: None,
                       gemms: false, kernels: false, tune: None, cuda: false, gpu: 0, dry: false, roberta: false, bf16: false,
                       profile: false, attention: AttentionImpl::Auto };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--layers" => a.layers = val()?.parse().map_err(|e| format!("--layers: {e}"))?,
            "--hidden" => a.hidden = val()?.parse().map_err(|e| format!("--hidden: {e}"))?,
            "--batch" => a.batch = val()?.parse().map_err(|e| format!("--batch: {e}"))?,
            "--seq" => a.seq = val()?.parse().map_err(|e| format!("--seq: {e}"))?,
            "--iters" => a.iters = val()?.parse().map_err(|e| format!("--iters: {e}"))?,
            "--modes" => a.modes = val()?.split(',').map(|s| s.trim().to_string()).collect(),
            "--json" => a.json = Some(val()?),
            "--gemms" => a.gemms = true,
            "--kernels" => a.kernels = true,
            "--profile" => a.profile = true,
            "--tune" if cfg!(target_arch = "x86_64") => a.tune = Some(parse_tune(&val()?)?),
            "--tune" => return Err("--tune tunes our AVX2 SGEMM, which runs on x86-64 only".into()),
            "--precision" => a.bf16 = match val()?.as_str() {
                "f32" => false,
                "bf16" => true,
                other => return Err(format!("--precision: `{other}` is not one of f32, bf16")),
            },
            "--attention" => a.attention = match val()?.as_str() {
                "auto" => AttentionImpl::Auto,
                "standard" => AttentionImpl::Standard,
                "flash" => AttentionImpl::Flash,
                other => return Err(format!("--attention: `{other}` is not one of auto, standard, flash")),
            },
            "--family" => a.roberta = match val()?.as_str() {
                "bert" => false,
                "roberta" => true,
                other => return Err(format!("--family: `{other}` is not one of bert, roberta")),
            },
            "--device" => (a.cuda, a.dry, a.gpu) = match val()?.as_str() {
                "cuda-dry" => (true, true, 0),
                word => match DeviceChoice::parse(word) {
                    Ok(DeviceChoice::Cpu) => (false, false, 0),
                    Ok(DeviceChoice::Gpu(n)) => (true, false, n),
                    _ => return Err(format!("--device: `{word}` is not one of cpu, cuda, cuda:N (GPU N, from 0), cuda-dry")),
                },
            },
            "-h" | "--help" => {
                println!("muscle-bench [--layers 12] [--hidden 768] [--batch 32] [--seq 64] [--iters 3] \
                          [--modes lora,musclelora,full,eval] [--device cpu|cuda|cuda:N|cuda-dry] [--precision f32|bf16] [--family bert|roberta] [--attention auto|standard|flash] [--json out.json] [--gemms] [--kernels] [--profile] [--tune CONFIGS]\n\n\
                          Times training steps of a random BERT- (or RoBERTa-) shaped model (heads = hidden/64, FFN = 4 x hidden,\n\
                          dropout 0.1) against the machine's SGEMM peak (2048^3 on the CPU, ours and numpy's; cuBLAS f32 at\n\
                          8192^3 on a GPU), measured right before every timed step: a step's ratio is the median of\n\
                          (step GFLOP/s / best SGEMM just before it), which cancels the drift of a shared machine.\n\
                          --device cuda (or cuda:N): the CUDA backend on GPU 0 (or N), with the device memory in use after the steps\n\
                          and the driver calls (kernel launches, GEMMs, copies) of the last timed step;\n\
                          --device cuda-dry: no device and no timing, the CUDA backend's books for one step of each mode:\n\
                          its driver calls and the most device memory it would allocate (any model size, any machine);\n\
                          --precision bf16 (GPU only): frozen weights and their GEMMs in bf16, f32 accumulation.\n\
                          --attention: standard (probabilities kept per layer), flash (none kept; the backward\n\
                          recomputes them; slower kernels), or auto (the default: flash where standard attention's\n\
                          probabilities would take more than 4 GiB).\n\
                          --gemms: GFLOP/s of each layer GEMM shape; --kernels: ms of the non-GEMM kernels per layer (CPU).\n\
                          --profile (GPU): after the timed steps, one more step of each mode with every call timed on the\n\
                          device (CUDA events; each run of calls queued behind a spin so the times are the GPU's alone):\n\
                          GPU ms per kernel and GEMM kind, and the GPU's busy time against the step's.\n\
                          --tune \"kc,mc,nc,split;...\" (CPU, x86-64): our SGEMM's blockings (0 = built-in; split 0 rule, 1 M,\n\
                          2 N) run interleaved for --iters rounds on the layer shapes and 2048^3, each as median GFLOP/s and\n\
                          median ratio to the first configuration; no steps are timed.");
                std::process::exit(0);
            }
            other => return Err(format!("unknown flag {other}; see --help")),
        }
    }
    if a.bf16 && !a.cuda {
        return Err("--precision bf16 needs --device cuda".into());
    }
    if a.profile && (!a.cuda || a.dry) {
        return Err("--profile times calls on a GPU; use it with --device cuda".into());
    }
    if a.cuda && (a.gemms || a.kernels) {
        return Err("--gemms and --kernels measure the CPU backend; leave them out with --device cuda".into());
    }
    for m in &a.modes {
        if !["lora", "musclelora", "full", "eval"].contains(&m.as_str()) {
            return Err(format!("--modes: unknown mode `{m}`; choose from lora, musclelora, full, eval"));
        }
    }
    Ok(a)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Best-of-`reps` GFLOP/s of the backend's GEMM on n^3, B transposed as the layers' forward calls
/// it (`check` waits for a GPU to finish), after one untimed run.
fn sgemm_peak<B: Backend>(be: &B, n: usize, reps: usize) -> f64 {
    let host: Vec<f32> = (0..n * n).map(|i| ((i % 97) as f32 - 48.0) * 0.01).collect();
    let (a, b) = (be.from_host(&host), be.from_host(&host));
    let mut c = be.zeros(n * n);
    let mut best = f64::MAX;
    for rep in 0..=reps {
        let t = Instant::now();
        be.matmul(&mut c, 0, n, Mat { buf: &a, offset: 0, ld: n, trans: false },
                  Mat { buf: &b, offset: 0, ld: n, trans: true }, n, n, n, 1.0, false);
        be.check().expect("GEMM");
        if rep > 0 {
            best = best.min(t.elapsed().as_secs_f64());
        }
    }
    2.0 * (n as f64).powi(3) / best / 1e9
}

/// numpy's float32 matmul at 2048^3 (OpenBLAS in the wheels), best of `reps` after one untimed
/// run, if numpy is importable. A fresh process each time, so OpenBLAS's threads are gone (not
/// spinning) while our steps run.
fn numpy_peak(reps: usize) -> Option<f64> {
    let script = format!("import numpy as np, time\n\
                  a=np.random.rand(2048,2048).astype(np.float32); b=np.random.rand(2048,2048).astype(np.float32)\n\
                  a@b\n\
                  best=1e9\n\
                  for _ in range({reps}):\n    t=time.perf_counter(); a@b; best=min(best,time.perf_counter()-t)\n\
                  print(2*2048**3/best/1e9)");
    let out = std::process::Command::new("python3").arg("-c").arg(script).output().ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// The named SGEMM peaks a step is compared with, GFLOP/s.
type Peaks = Vec<(String, f64)>;

/// CPU peaks: our GEMM at 2048^3 and numpy's where importable.
fn cpu_peaks(be: &Cpu, reps: usize) -> Peaks {
    let mut peaks = vec![(format!("SGEMM 2048^3, muscle-engine ({:?})", muscle_engine::backend::cpu::gemm_kernel()),
                          sgemm_peak(be, 2048, reps))];
    match numpy_peak(reps) {
        Some(p) => peaks.push(("SGEMM 2048^3, numpy (OpenBLAS)".into(), p)),
        None => {
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| eprintln!("numpy SGEMM not measured: numpy is not importable by python3"));
        }
    }
    peaks
}

/// CPU seconds this process has used (user + system, all threads), from `/proc/self/stat`
/// (`None` elsewhere). Against wall time it shows how busy a step keeps the threads; rayon's
/// brief spinning between tasks counts as busy.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // the fields after the parenthesised command name; utime and stime are the stat's 14th and 15th
    let f: Vec<&str> = stat[stat.rfind(')')? + 2..].split_whitespace().collect();
    let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0) // USER_HZ, 100 on every Linux ABI
}

/// A GEMM shape: name, m, n, k, A transposed, B transposed.
type Shape = (&'static str, usize, usize, usize, bool, bool);

/// The GEMM shapes of an encoder layer at `n` tokens and width `h` (forward, input gradient,
/// weight gradient).
fn layer_shapes(n: usize, h: usize) -> [Shape; 6] {
    let i = 4 * h;
    [
        ("fwd x W^T (h->h)", n, h, h, false, true),
        ("fwd x W^T (h->4h)", n, i, h, false, true),
        ("dx = dy W (h<-h)", n, h, h, false, false),
        ("dx = dy W (h<-4h)", n, h, i, false, false),
        ("dW = dy^T x (h,h)", h, h, n, true, false),
        ("dW = dy^T x (4h,h)", i, h, n, true, false),
    ]
}

/// Operands for one GEMM shape, and a closure that runs it once and returns its GFLOP/s.
fn gemm_runner(be: &Cpu, (_, m, nn, k, ta, tb): Shape) -> impl FnMut() -> f64 + '_ {
    let a = vec![0.5f32; m * k];
    let b = vec![0.25f32; nn * k];
    let mut c = vec![0.0f32; m * nn];
    let (lda, ldb) = (if ta { m } else { k }, if tb { k } else { nn });
    move || {
        let t = Instant::now();
        be.matmul(&mut c, 0, nn, Mat { buf: &a, offset: 0, ld: lda, trans: ta },
                  Mat { buf: &b, offset: 0, ld: ldb, trans: tb }, m, nn, k, 1.0, false);
        2.0 * (m * nn * k) as f64 / t.elapsed().as_secs_f64() / 1e9
    }
}

/// GFLOP/s (best of 5) of each GEMM shape a layer runs, to show where a step loses time against
/// the square peak.
fn gemm_shapes(be: &Cpu, n: usize, h: usize) {
    // LoRA's rank-8 products: skinny, so far below the peak, but few flops
    let r = 8;
    let lora: [Shape; 6] = [
        ("LoRA xa = x A^T", n, r, h, false, true),
        ("LoRA y += xa B^T", n, h, r, false, true),
        ("LoRA dxa = dy B", n, r, h, false, false),
        ("LoRA dx += dxa A", n, h, r, false, false),
        ("LoRA dB = dy^T xa", h, r, n, true, false),
        ("LoRA dA = dxa^T x", r, h, n, true, false),
    ];
    println!("| GEMM | m x n x k | GFLOP/s |");
    println!("| --- | --- | ---: |");
    for shape in layer_shapes(n, h).into_iter().chain(lora) {
        let mut run = gemm_runner(be, shape);
        let best = (0..5).map(|_| run()).fold(0.0, f64::max);
        let (name, m, nn, k, _, _) = shape;
        println!("| {name} | {m} x {nn} x {k} | {best:.1} |");
    }
}

/// `--tune`: each blocking in `configs` ("kc,mc,nc,split" with 0 = the built-in value; split 0 =
/// the rule, 1 = along M, 2 = along N) against the first, on the layer shapes and 2048^3. The
/// configurations run interleaved, `reps` rounds, so the machine's drift hits all alike; each
/// shape reports the median over rounds of (config GFLOP/s / first config GFLOP/s).
#[cfg(target_arch = "x86_64")]
fn tune(be: &Cpu, n: usize, h: usize, configs: &[[usize; 4]], reps: usize) {
    use muscle_engine::backend::cpu::gemm_tune as t;
    use std::sync::atomic::Ordering::Relaxed;
    // the input gradient into the feed-forward's 4h-wide middle, beside the layer shapes
    let extra: [Shape; 2] = [("dx = dy W (h->4h)", n, 4 * h, h, false, false), ("2048^3", 2048, 2048, 2048, false, false)];
    print!("| shape |");
    for c in configs {
        print!(" {c:?} |");
    }
    println!();
    for shape in layer_shapes(n, h).into_iter().chain(extra) {
        let mut gflops = gemm_runner(be, shape);
        let mut run = |cfg: &[usize; 4]| {
            t::KC.store(cfg[0], Relaxed);
            t::MC.store(cfg[1], Relaxed);
            t::NC.store(cfg[2], Relaxed);
            t::SPLIT.store(cfg[3], Relaxed);
            gflops()
        };
        for cfg in configs {
            run(cfg);
        }
        let mut ratios = vec![vec![]; configs.len()];
        let mut rates = vec![vec![]; configs.len()];
        for _ in 0..reps {
            let g: Vec<f64> = configs.iter().map(&mut run).collect();
            for (j, x) in g.iter().enumerate() {
                ratios[j].push(x / g[0]);
                rates[j].push(*x);
            }
        }
        let (name, m, nn, k, _, _) = shape;
        print!("| {name} {m}x{nn}x{k} |");
        for j in 0..configs.len() {
            print!(" {:.1} ({:.3}) |", median(rates[j].clone()), median(ratios[j].clone()));
        }
        println!();
    }
    for v in [&t::KC, &t::MC, &t::NC, &t::SPLIT] {
        v.store(0, Relaxed);
    }
}

/// Best-of-5 milliseconds of `f`.
fn best_ms(mut f: impl FnMut()) -> f64 {
    (0..5).map(|_| {
        let t = Instant::now();
        f();
        t.elapsed().as_secs_f64() * 1e3
    }).fold(f64::MAX, f64::min)
}

/// Milliseconds of the non-GEMM kernels one encoder layer runs, at the step's shape: what the
/// ratio to the GEMM peak loses outside the GEMMs.
fn kernel_times(be: &Cpu, b: usize, t: usize, h: usize) {
    let (n, heads) = (b * t, (h / 64).max(1));
    let x: Vec<f32> = (0..n * 4 * h).map(|i| ((i % 251) as f32 - 125.0) * 0.02).collect();
    let g: Vec<f32> = (0..n * 4 * h).map(|i| ((i % 127) as f32 - 63.0) * 0.01).collect();
    let mut out = vec![0.0f32; n * 4 * h];
    let (w, bias) = (vec![1.0f32; h], vec![0.0f32; h]);
    let (mut mean, mut rstd) = (vec![0.0f32; n], vec![0.0f32; n]);
    let (mut dw, mut db) = (vec![0.0f32; h], vec![0.0f32; h]);
    let mut probs = vec![0.0f32; b * heads * t * t];
    let mut mask = vec![0.0f32; b * heads * t * t];
    let key_mask = vec![1i32; n];
    let (mut dq, mut dk, mut dv) = (vec![0.0f32; n * h], vec![0.0f32; n * h], vec![0.0f32; n * h]);
    let qkv: Vec<f32> = x[..n * h].to_vec();
    be.dropout_mask(&mut mask, b * heads * t * t, 0.1, 1, &[1]);
    let rows: [(&str, f64); 8] = [
        ("GELU forward (n x 4h)", best_ms(|| be.gelu_forward(&mut out, &x, n * 4 * h))),
        ("GELU backward (n x 4h)", best_ms(|| be.gelu_backward(&mut out, &x, &g, n * 4 * h))),
        ("layer norm forward (n x h)", best_ms(|| {
            be.layer_norm_forward(&mut out, &mut mean, &mut rstd, &x, &w, &bias, n, h, 1e-12)
        })),
        ("layer norm backward (n x h)", best_ms(|| {
            be.layer_norm_backward(&mut out, Some(&mut dw), Some(&mut db), &g, &x, &w, &mean, &rstd, n, h)
        })),
        ("dropout mask (n x h)", best_ms(|| be.dropout_mask(&mut out, n * h, 0.1, 7, &[3, 4]))),
        ("dropout mask (attention probs)", best_ms(|| be.dropout_mask(&mut mask, b * heads * t * t, 0.1, 7, &[3, 5]))),
        ("attention forward", best_ms(|| {
            be.attention_forward(&mut out, &mut probs, &qkv, &qkv, &qkv, &key_mask, Some(&mask), b, t, heads, 64)
        })),
        ("attention backward", best_ms(|| {
            be.attention_backward(&mut dq, &mut dk, &mut dv, &g, &probs, &qkv, &qkv, &qkv, Some(&mask), b, t, heads, 64)
        })),
    ];
    println!("| kernel (one layer) | ms |");
    println!("| --- | ---: |");
    for (name, ms) in rows {
        println!("| {name} | {ms:.2} |");
    }
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("muscle-bench: {e}");
            std::process::exit(2);
        }
    };
    if args.cuda {
        #[cfg(feature = "cuda")]
        {
            let precision = if args.bf16 { Precision::Bf16 } else { Precision::F32 };
            if args.dry {
                let device = format!("CUDA backend, dry run, {}", if args.bf16 { "bf16" } else { "f32" });
                return bench(&args, || Cuda::dry_run(precision), &device, |_| vec![], cuda_stats, Cuda::launches,
                             |_, _| None, Cuda::graph_failure);
            }
            let open = || Cuda::with_precision(args.gpu, precision).unwrap_or_else(|e| {
                eprintln!("muscle-bench: {e}");
                std::process::exit(1)
            });
            let be = open();
            let info = be.info().clone();
            let device = format!("{} (sm_{}{}), {}", info.name, info.compute_capability.0, info.compute_capability.1,
                                 if args.bf16 { "bf16" } else { "f32" });
            drop(be);
            let name = format!("SGEMM 8192^3, cuBLAS f32 ({})", info.name);
            let peaks = move |be: &Cuda| vec![(name.clone(), sgemm_peak(be, 8192, 3))];
            return bench(&args, open, &device, peaks, cuda_stats, Cuda::launches, cuda_profile,
                         Cuda::graph_failure);
        }
        #[cfg(not(feature = "cuda"))]
        {
            eprintln!("muscle-bench: built without the `cuda` feature");
            std::process::exit(2);
        }
    }
    let be = Cpu::new();
    let threads = be.threads();
    if args.gemms {
        gemm_shapes(&be, args.batch * args.seq, args.hidden);
    }
    if args.kernels {
        kernel_times(&be, args.batch, args.seq, args.hidden);
    }
    #[cfg(target_arch = "x86_64")]
    if let Some(configs) = &args.tune {
        tune(&be, args.batch * args.seq, args.hidden, configs, args.iters.max(3));
        return;
    }
    bench(&args, || be.clone(), &format!("cpu, {threads} threads"), |be| cpu_peaks(be, 3), |_| (0, Books::default()),
          |_| Default::default(), |_, _| None, |_| None);
}

/// A profiled step: per kind of call its calls and GPU ms (most first), the GPU's busy ms, the runs
/// of calls between waits, and those the host had not queued whole before the profiler's spin ended.
type ProfileRows = (Vec<(&'static str, u64, f64)>, f64, u64, u64);

/// `--profile` on a GPU: `true` starts timing every call, `false` stops and returns the times.
#[cfg(feature = "cuda")]
fn cuda_profile(be: &Cuda, start: bool) -> Option<ProfileRows> {
    let report = (!start).then(|| be.profile());
    be.set_profiling(start).unwrap_or_else(|e| {
        eprintln!("muscle-bench: profiling: {e}");
        std::process::exit(1)
    });
    report.map(|p| {
        let mut rows: Vec<(&'static str, u64, f64)> = p.calls.into_iter().map(|(k, (n, ms))| (k, n, ms)).collect();
        rows.sort_by(|a, b| b.2.total_cmp(&a.2));
        (rows, p.busy_ms, p.runs, p.starved_runs)
    })
}

/// A backend's books so far (all zero on the CPU): driver calls, waits on the device, allocations,
/// the host's nanoseconds issuing calls and waiting, and graph mode's launches, builds, patched
/// nodes and runs issued call by call. Subtracting two gives what happened between them.
#[derive(Default, Clone, Copy)]
struct Books {
    kernels: u64,
    gemms: u64,
    copies: u64,
    waits: u64,
    allocs: u64,
    issue_ns: u64,
    wait_ns: u64,
    graph_launches: u64,
    graphs_built: u64,
    nodes_patched: u64,
    eager_runs: u64,
}

impl Books {
    /// Kernel launches, GEMMs and copies: the calls into the driver.
    fn calls(&self) -> u64 {
        self.kernels + self.gemms + self.copies
    }
}

impl std::ops::Sub for Books {
    type Output = Books;
    fn sub(self, o: Books) -> Books {
        Books { kernels: self.kernels - o.kernels, gemms: self.gemms - o.gemms, copies: self.copies - o.copies,
                waits: self.waits - o.waits, allocs: self.allocs - o.allocs, issue_ns: self.issue_ns - o.issue_ns,
                wait_ns: self.wait_ns - o.wait_ns, graph_launches: self.graph_launches - o.graph_launches,
                graphs_built: self.graphs_built - o.graphs_built, nodes_patched: self.nodes_patched - o.nodes_patched,
                eager_runs: self.eager_runs - o.eager_runs }
    }
}

/// Device memory in use (a dry run: the most it allocated) and the backend's books so far.
#[cfg(feature = "cuda")]
fn cuda_stats(be: &Cuda) -> (usize, Books) {
    let (c, g) = (be.calls(), be.graph_stats());
    (be.memory_used(), Books { kernels: c.kernels, gemms: c.gemms, copies: c.copies, waits: c.waits, allocs: c.allocs,
                               issue_ns: c.issue_ns, wait_ns: c.wait_ns, graph_launches: g.launched, graphs_built: g.built,
                               nodes_patched: g.patched, eager_runs: g.eager_runs })
}

/// Times each mode's step on backends from `open` and prints the table (and the JSON).
///
/// The machine's speed drifts (a shared VM here moves 10-20% within minutes), so the peaks are
/// measured right before every timed step and each step is set against the best GEMM of its own
/// measurement; a mode's ratio is the median of those paired ratios.
fn bench<B: Backend>(args: &Args, open: impl Fn() -> B, device: &str, peaks_of: impl Fn(&B) -> Peaks,
                     device_stats: impl Fn(&B) -> (usize, Books),
                     launches: impl Fn(&B) -> std::collections::HashMap<&'static str, u64>,
                     profile: impl Fn(&B, bool) -> Option<ProfileRows>,
                     graph_failure: impl Fn(&B) -> Option<String>) {
    let heads = (args.hidden / 64).max(1);
    // RoBERTa: its vocabulary, position offset (514 = 512 + padding index + 1) and single token type
    let (family, kind, vocab, positions, types, pad) =
        if args.roberta { (Family::Roberta, "roberta", 50265, 514, 1, 1) } else { (Family::Bert, "bert", 30522, 512, 2, 0) };
    let cfg: EncoderConfig = serde_json::from_value(serde_json::json!({
        "model_type": kind, "vocab_size": vocab, "hidden_size": args.hidden, "num_hidden_layers": args.layers,
        "num_attention_heads": heads, "intermediate_size": 4 * args.hidden, "max_position_embeddings": positions,
        "type_vocab_size": types, "pad_token_id": pad, "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
    })).expect("valid config");
    eprintln!("building a random {}-layer, hidden-{} {kind} model...", args.layers, args.hidden);
    let weights = Weights::from_tensors(&random_tensors(&cfg, family, 2, 0.02, 1, true)).expect("in-memory weights");
    let shape = flops::Shape { layers: args.layers, hidden: args.hidden, inter: 4 * args.hidden, batch: args.batch,
                               seq: args.seq, labels: 2 };
    let (b, t) = (args.batch, args.seq);
    let ids: Vec<i32> = (0..b * t).map(|i| if i % t == 0 { 101 } else { 1000 + (i * 7919 % 20000) as i32 }).collect();
    let mask = vec![1i32; b * t];
    let labels: Vec<i32> = (0..b as i32).map(|i| i % 2).collect();
    let ref_ids: Vec<i32> = ids.iter().map(|&x| if x == 101 { x } else { x + 3 }).collect();
    let batch = BatchRef { ids: &ids, mask: &mask, labels: Some(&labels), b, t };
    let reference = BatchRef { ids: &ref_ids, mask: &mask, labels: Some(&labels), b, t };
    let band: Vec<f32> = vec![1.0, 4.0, 8.0, 12.0, 16.0, 20.0, 24.0, 28.0];

    let (mut rows, mut samples, mut best_samples): (Vec<_>, Vec<(String, Vec<f64>)>, Vec<f64>) =
        (Vec::new(), Vec::new(), Vec::new());
    let mut dry_rows: Vec<DryRow> = Vec::new();
    let mut profiles: Vec<(String, f64, ProfileRows)> = Vec::new();
    for mode in &args.modes {
        let lora = LoraSpec { r: 8, alpha: 32.0, dropout: 0.0, targets: vec!["query".into(), "value".into()] };
        let (spec, kind, ga) = match mode.as_str() {
            "lora" => (TrainSpec { mode: TrainMode::Peft, lora: Some(lora), mslr: None, train_head: false },
                       flops::Kind::Peft { r: 8, nk: 0 }, false),
            "musclelora" => (TrainSpec { mode: TrainMode::Peft, lora: Some(lora),
                                         mslr: Some(MslrSpec { band: band.clone(), rank: 1, alpha: 6.0, dropout: 0.0 }),
                                         train_head: false },
                             flops::Kind::Peft { r: 8, nk: band.len() }, true),
            "full" => (TrainSpec::full(), flops::Kind::Full, false),
            // the LoRA model, as it is evaluated after training (with --precision bf16 its frozen
            // weights are bf16, as under PyTorch's autocast in scripts/bench_torch.py)
            _ => (TrainSpec { mode: TrainMode::Peft, lora: Some(lora), mslr: None, train_head: false },
                  flops::Kind::Eval, false),
        };
        let be = open();
        let mut model = BertClassifier::from_weights(&be, cfg.clone(), family, &weights, 2, &spec, 1).expect("model");
        model.set_attention(args.attention);
        let mut clf = Classifier::new(be, model, AdamWConfig::default());
        let settings = StepSettings {
            lr: 2e-5, max_grad_norm: 1.0,
            ga: ga.then_some(GaRule::Gated { min_ref_loss: 0.4, min_ref_grad_norm: 5e-7, rho: None }),
        };
        // both end by reading results back (logits, or the step's loss and norms), so a GPU has finished
        let run = |clf: &mut Classifier<B>| {
            if mode == "eval" {
                clf.predict(&batch).expect("predict");
            } else {
                clf.train_step(&batch, ga.then_some(&reference), &settings).expect("step");
            }
        };
        eprintln!("{mode}: warm-up...");
        run(&mut clf);
        if args.cuda && !args.dry {
            // graph mode (MUSCLE_CUDA_GRAPHS=1) builds and checks a step's graphs at the third
            // step and checks their patched launches at the fourth: time the steps after
            for _ in 0..3 {
                run(&mut clf);
            }
        }
        if args.dry {
            // graph mode builds a run's graph the second time it sees that run's shape, and the
            // first step's shapes differ from the rest (its allocations): two more steps, so the
            // counted one replays
            run(&mut clf);
            run(&mut clf);
            let (before, kernels_before) = (device_stats(&clf.be).1, launches(&clf.be));
            let t0 = Instant::now();
            run(&mut clf);
            let mut host = vec![t0.elapsed().as_secs_f64() * 1e3];
            let (mem, after) = device_stats(&clf.be);
            let step = after - before;
            // the host's time, a fraction of a millisecond for BERT-base: the median of more steps
            for _ in 1..DRY_HOST_STEPS {
                let t0 = Instant::now();
                run(&mut clf);
                host.push(t0.elapsed().as_secs_f64() * 1e3);
            }
            let host_ms = median(host);
            let mut per_kernel: Vec<(&str, u64)> = launches(&clf.be).into_iter()
                .map(|(k, n)| (k, n - kernels_before.get(k).copied().unwrap_or(0)))
                .filter(|&(_, n)| n > 0)
                .collect();
            per_kernel.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
            dry_rows.push((mode.clone(), step, mem, per_kernel, host_ms));
            continue;
        }
        let (mut times, mut ratios, mut busy) = (Vec::new(), Vec::new(), Vec::new());
        let (mut issuing, mut waiting) = (Vec::new(), Vec::new());
        // the books of the last timed step
        let mut last = Books::default();
        let gflop = flops::step(&shape, kind, ga) / 1e9;
        for _ in 0..args.iters {
            let peaks = peaks_of(&clf.be);
            let best = peaks.iter().map(|p| p.1).fold(0.0, f64::max);
            for (name, p) in peaks {
                match samples.iter_mut().find(|(n, _)| *n == name) {
                    Some((_, v)) => v.push(p),
                    None => samples.push((name, vec![p])),
                }
            }
            best_samples.push(best);
            let (t0, cpu0, books0) = (Instant::now(), cpu_seconds(), device_stats(&clf.be).1);
            run(&mut clf);
            let secs = t0.elapsed().as_secs_f64();
            last = device_stats(&clf.be).1 - books0;
            issuing.push(last.issue_ns as f64 / 1e6);
            waiting.push(last.wait_ns as f64 / 1e6);
            if let (Some(a), Some(b)) = (cpu0, cpu_seconds()) {
                busy.push((b - a) / secs);
            }
            times.push(secs);
            ratios.push(gflop / secs / best);
        }
        if times.is_empty() {
            continue;
        }
        let secs = median(times);
        let rate = gflop / secs;
        let mem = device_stats(&clf.be).0;
        let busy = (!busy.is_empty()).then(|| busy.iter().sum::<f64>() / busy.len() as f64);
        eprintln!("{mode}: {:.1} ms{}{}", secs * 1e3, busy.map_or(String::new(), |u| format!(", {u:.2} cores busy")),
                  if last.graph_launches > 0 {
                      format!(", {} CUDA graph launches ({} built)", last.graph_launches, last.graphs_built)
                  } else {
                      String::new()
                  });
        let failure = graph_failure(&clf.be);
        if let Some(why) = &failure {
            eprintln!("{mode}: graph mode fell back to issuing calls one by one: {why}");
        }
        rows.push(Row { mode: mode.clone(), ms: secs * 1e3, gflop, rate, ratio: median(ratios), mem, busy,
                        calls: last.calls(), issuing: median(issuing), waiting: median(waiting),
                        graphs: (last.graph_launches, last.graphs_built), graph_failure: failure });
        if args.profile {
            profile(&clf.be, true);
            run(&mut clf);
            if let Some(p) = profile(&clf.be, false) {
                profiles.push((mode.clone(), secs * 1e3, p));
            }
        }
    }
    if args.dry {
        return dry_report(args, device, &dry_rows);
    }
    if rows.is_empty() {
        eprintln!("muscle-bench: nothing timed (--iters 0)");
        return;
    }
    let peak_ref = median(best_samples);
    let peaks: Vec<(String, f64)> = samples.into_iter().map(|(n, v)| (n, median(v))).collect();

    println!("Device: {device}\n");
    println!("| measurement | ms | GFLOP | GFLOP/s | of peak |{}",
             if args.cuda { " device memory | driver calls | host ms issuing | ms waiting |" } else { "" });
    println!("| --- | ---: | ---: | ---: | ---: |{}", if args.cuda { " ---: | ---: | ---: | ---: |" } else { "" });
    for (name, p) in &peaks {
        println!("| {name} | | | {p:.1} | {:.0}% |{}", 100.0 * p / peak_ref, if args.cuda { " | | | |" } else { "" });
    }
    for r in &rows {
        let extra = if args.cuda {
            format!(" {:.2} GiB | {} | {:.1} | {:.1} |", r.mem as f64 / (1u64 << 30) as f64, r.calls, r.issuing, r.waiting)
        } else {
            String::new()
        };
        println!("| {kind} {} step, {b} x {t}, {}L/{}H{} | {:.1} | {:.1} | {:.1} | {:.0}% |{extra}", r.mode, args.layers,
                 args.hidden, attention_tag(args), r.ms, r.gflop, r.rate, 100.0 * r.ratio);
    }
    println!("\nBefore every timed step each SGEMM above is measured (best of 3; the table shows their medians);\n\
              a step's \"of peak\" is the median over its {} timed steps (after one warm-up) of its GFLOP/s over\n\
              the best SGEMM measured just before it; ms and GFLOP/s are medians.", args.iters);
    if args.cuda {
        println!("Host ms issuing: the step's time inside the driver and cuBLAS queueing its calls; ms waiting: its\n\
                  time blocked on the GPU (reading results back). A step that is mostly the first is bound by the\n\
                  host (launches), mostly the second by the GPU's work (medians).");
    }
    for (mode, ms, (calls, busy, runs, starved)) in &profiles {
        println!("\nProfile of one {mode} step: the GPU busy {busy:.2} ms of the timed steps' {ms:.2} ms, in {runs} runs of \
                  calls{}", if *starved > 0 { format!(" ({starved} not queued whole before the spin ended: their times \
                  include the host's)") } else { String::new() });
        println!("| call | calls | GPU ms | of busy |");
        println!("| --- | ---: | ---: | ---: |");
        for (name, n, gms) in calls.iter().take(24) {
            println!("| {name} | {n} | {gms:.3} | {:.1}% |", 100.0 * gms / busy.max(1e-9));
        }
        if calls.len() > 24 {
            let (n, gms) = calls[24..].iter().fold((0, 0.0), |(a, b), r| (a + r.1, b + r.2));
            println!("| {} others | {n} | {gms:.3} | {:.1}% |", calls.len() - 24, 100.0 * gms / busy.max(1e-9));
        }
    }
    if let Some(path) = &args.json {
        let json = serde_json::json!({
            "profiles": profiles.iter().map(|(mode, ms, (calls, busy, runs, starved))| serde_json::json!({
                "mode": mode, "step_ms": ms, "gpu_busy_ms": busy, "runs": runs, "starved_runs": starved,
                "calls": calls.iter().map(|(n, c, g)| serde_json::json!({"name": n, "calls": c, "gpu_ms": g})).collect::<Vec<_>>()}))
                .collect::<Vec<_>>(),
            "device": device, "peaks": peaks.iter().map(|(n, p)| serde_json::json!({"name": n, "gflops": p})).collect::<Vec<_>>(),
            "peak_gflops": peak_ref,
            "precision": if args.bf16 { "bf16" } else { "f32" },
            "shape": {"family": kind, "layers": args.layers, "hidden": args.hidden, "batch": b, "seq": t,
                      "attention": attention_tag(args).trim_start_matches(", ")},
            "steps": rows.iter().map(|r| serde_json::json!({
                "mode": r.mode, "ms": r.ms, "gflop": r.gflop, "gflops": r.rate, "ratio_to_peak": r.ratio,
                "cores_busy": r.busy, "device_memory_bytes": if args.cuda { Some(r.mem) } else { None },
                "driver_calls": if args.cuda { Some(r.calls) } else { None },
                "host_ms_issuing": if args.cuda { Some(r.issuing) } else { None },
                "ms_waiting": if args.cuda { Some(r.waiting) } else { None },
                "graph_launches": if args.cuda { Some(r.graphs.0) } else { None },
                "graphs_built": if args.cuda { Some(r.graphs.1) } else { None },
                "graph_failure": r.graph_failure})).collect::<Vec<_>>(),
        });
        write_json(path, &json);
    }
}

/// One timed mode: median ms, GFLOP per step, GFLOP/s, ratio to the best GEMM, device memory, host
/// cores busy, driver calls, and (CUDA) the host's ms issuing calls and waiting for the device.
struct Row {
    mode: String,
    ms: f64,
    gflop: f64,
    rate: f64,
    ratio: f64,
    mem: usize,
    busy: Option<f64>,
    calls: u64,
    issuing: f64,
    waiting: f64,
    /// graph mode: graphs launched and built in the last timed step
    graphs: (u64, u64),
    /// graph mode: why it turned itself off, if it did
    graph_failure: Option<String>,
}

/// `--device cuda-dry`'s table and JSON: per mode, one step's driver calls and the most device
/// memory allocated (weights, activations, optimiser state, scratch).
/// A dry-run step: mode, its books, peak memory, launches per kernel, and the host's milliseconds
/// for the step with no driver under it.
type DryRow = (String, Books, usize, Vec<(&'static str, u64)>, f64);

/// Steps whose host time a dry run takes the median of.
const DRY_HOST_STEPS: usize = 200;

/// How the steps' attention ran: ", flash attention" or ", standard attention".
fn attention_tag(args: &Args) -> &'static str {
    let flash = match args.attention {
        AttentionImpl::Auto => auto_flash(args.layers, args.hidden / 64, args.batch, args.seq),
        AttentionImpl::Standard => false,
        AttentionImpl::Flash => true,
    };
    if flash { ", flash attention" } else { ", standard attention" }
}

fn dry_report(args: &Args, device: &str, rows: &[DryRow]) {
    let (kind, b, t) = (if args.roberta { "roberta" } else { "bert" }, args.batch, args.seq);
    println!("Device: {device}\n");
    println!("| step | kernels | GEMMs | copies | driver calls | waits on the device | allocations | peak device memory | host ms, no driver |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (m, c, mem, _, host_ms) in rows {
        println!("| {kind} {m}, {b} x {t}, {}L/{}H{} | {} | {} | {} | {} | {} | {} | {:.2} GiB | {host_ms:.2} |", args.layers,
                 args.hidden, attention_tag(args), c.kernels, c.gemms, c.copies, c.calls(), c.waits, c.allocs, *mem as f64 / (1u64 << 30) as f64);
    }
    if rows.iter().any(|r| r.1.graph_launches > 0) {
        println!("\nGraph mode (MUSCLE_CUDA_GRAPHS=1), the fourth step:");
        for (m, c, _, _, _) in rows {
            println!("- {m}: {} graph launches ({} built), {} kernel nodes patched, {} runs issued call by call",
                     c.graph_launches, c.graphs_built, c.nodes_patched, c.eager_runs);
        }
    }
    println!("\nKernel launches per step:");
    for (m, _, _, per_kernel, _) in rows {
        let list: Vec<String> = per_kernel.iter().map(|(k, n)| format!("{k} {n}")).collect();
        println!("- {m}: {}", list.join(", "));
    }
    println!("\nCounted without a device: each call as the CUDA backend would make it; memory is what it would\n\
              allocate at most (cudaMalloc sizes), not what the driver reserves around it. Host ms: the median step's\n\
              own work on this machine's CPU over {DRY_HOST_STEPS} steps (the model's bookkeeping and the backend's),\n\
              driver calls excluded.");
    if let Some(path) = &args.json {
        let json = serde_json::json!({
            "device": device, "precision": if args.bf16 { "bf16" } else { "f32" },
            "shape": {"family": kind, "layers": args.layers, "hidden": args.hidden, "batch": b, "seq": t,
                      "attention": attention_tag(args).trim_start_matches(", ")},
            "steps": rows.iter().map(|(m, c, mem, per_kernel, host_ms)| serde_json::json!({
                "mode": m, "kernels": c.kernels, "gemms": c.gemms, "copies": c.copies, "driver_calls": c.calls(),
                "waits": c.waits, "allocations": c.allocs, "host_ms": host_ms, "peak_device_memory_bytes": mem,
                "graph_launches": c.graph_launches, "graphs_built": c.graphs_built, "nodes_patched": c.nodes_patched,
                "runs_issued_call_by_call": c.eager_runs,
                "launches": per_kernel.iter().map(|(k, n)| (k.to_string(), serde_json::json!(n))).collect::<serde_json::Map<_, _>>()}))
                .collect::<Vec<_>>(),
        });
        write_json(path, &json);
    }
}

/// Writes `json` to `path` whole or not at all (a temporary file, then a rename).
fn write_json(path: &str, json: &serde_json::Value) {
    let tmp = format!("{path}.tmp");
    std::fs::write(&tmp, serde_json::to_string_pretty(json).unwrap()).and_then(|_| std::fs::rename(&tmp, path))
        .unwrap_or_else(|e| { eprintln!("muscle-bench: cannot write {path}: {e}"); std::process::exit(1) });
}
