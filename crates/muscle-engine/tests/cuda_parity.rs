//! The CUDA backend against the CPU backend: every `Backend` verb on random data, then whole
//! training steps (full and LoRA + MSLR with dropout and gradient alignment) on the committed tiny
//! checkpoints. Dropout masks come from the same counter-based stream on both, so even training
//! with dropout must agree. f32 tolerance: 1e-5 absolute or 1e-4 relative (the fixtures' own).
//!
//! Every check runs twice: on the backend emulated on the CPU (always: the kernel sources compiled as
//! C++ by the `muscle-cuda-emu` crate, cuBLAS's GEMMs written out), and on a GPU, skipped with the
//! reason printed where `Cuda::probe` finds none — unless MUSCLE_REQUIRE_GPU=1 (the GPU check script
//! sets it).
#![cfg(feature = "cuda")]

mod common;

use common::{assert_close, assert_close_within, fixtures, tiny_batch, tiny_checkpoint, tiny_checkpoint_with_layers,
             TINY_LABELS};
use muscle_engine::backend::{AdamwItem, GemmItem, Mat};
use muscle_engine::rng::{counter_uniform, stream_key, Rng};
use muscle_engine::backend::cuda::runtime::KernelEmulator;
use muscle_engine::backend::cuda::Precision;
use muscle_engine::backend::cuda::graphs::GraphStats;
use muscle_engine::{AdamWConfig, AttentionImpl, Backend, BatchRef, BertClassifier, Classifier, Cpu, Cuda, GaRule, LoraSpec,
                    MslrSpec, StepSettings, TrainMode, TrainSpec};
use std::path::Path;

/// The kernels compiled for the CPU.
struct Emulator;

impl KernelEmulator for Emulator {
    unsafe fn launch(&self, name: &str, grid: (u32, u32, u32), block: (u32, u32, u32), shared_bytes: u32,
                     args: &mut [u64]) -> Result<(), String> {
        muscle_cuda_emu::launch(name, grid, block, shared_bytes, args)
    }
}

/// Where a check's CUDA backends come from.
#[derive(Clone, Copy)]
enum Target {
    Emulated,
    Gpu,
}

impl Target {
    fn open(self, precision: Precision) -> Cuda {
        match self {
            Target::Emulated => Cuda::emulated(Box::new(Emulator), precision),
            Target::Gpu => Cuda::with_precision(0, precision)
                .unwrap_or_else(|e| panic!("a GPU is present but cannot be opened: {e}")),
        }
    }
}

/// `emulated` runs `check` on the emulated backend, `gpu` on GPU 0 where there is one.
macro_rules! on_both {
    ($check:ident, $emulated:ident, $gpu:ident) => {
        #[test]
        fn $emulated() {
            $check(Target::Emulated);
        }
        #[test]
        fn $gpu() {
            if gpu_or_skip() {
                $check(Target::Gpu);
            }
        }
    };
}

fn gpu_or_skip() -> bool {
    match Cuda::probe() {
        Ok(_) => true,
        Err(why) => {
            if std::env::var("MUSCLE_REQUIRE_GPU").is_ok_and(|v| v == "1") {
                panic!("MUSCLE_REQUIRE_GPU=1 but {why}");
            }
            eprintln!("skipped: {why}");
            false
        }
    }
}

fn random(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut r = Rng::new(seed);
    (0..n).map(|_| (r.uniform() * 2.0 - 1.0) * scale).collect()
}

/// The same verb on both backends, inputs uploaded from the same host data.
struct Pair {
    cpu: Cpu,
    gpu: Cuda,
}

impl Pair {
    fn up(&self, data: &[f32]) -> (Vec<f32>, <Cuda as Backend>::Buf) {
        (self.cpu.from_host(data), self.gpu.from_host(data))
    }

    fn same(&self, what: &str, c: &Vec<f32>, g: &<Cuda as Backend>::Buf, n: usize) -> f64 {
        let got = self.gpu.to_host(g, n);
        self.gpu.check().unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_close(what, &got, &c[..n])
    }
}

on_both!(counter_stream, counter_stream_matches_the_cpu_bit_for_bit_emulated, counter_stream_matches_the_cpu_bit_for_bit);
fn counter_stream(target: Target) {
    let gpu = target.open(Precision::F32);
    let key = stream_key(42, &[3, 1, 4]);
    let got = gpu.counter_uniform(key, 100_003).unwrap();
    for (i, &g) in got.iter().enumerate() {
        assert_eq!(g.to_bits(), counter_uniform(key, i as u64).to_bits(), "element {i}");
    }
}

on_both!(every_verb, every_verb_matches_the_cpu_emulated, every_verb_matches_the_cpu);
fn every_verb(target: Target) {
    let p = Pair { cpu: Cpu::new(), gpu: target.open(Precision::F32) };
    let mut worst = 0.0f64;

    // matmul: every transpose combination, with offsets and padded leading dimensions, both modes
    let (m, n, k) = (37, 29, 45);
    for (ta, tb, acc) in [(false, false, false), (true, false, true), (false, true, false), (true, true, true)] {
        let lda = if ta { m + 3 } else { k + 3 };
        let ldb = if tb { k + 2 } else { n + 2 };
        let (a_rows, b_rows) = (if ta { k } else { m }, if tb { n } else { k });
        let (ac, ag) = p.up(&random(5 + a_rows * lda, 1, 1.0));
        let (bc, bg) = p.up(&random(7 + b_rows * ldb, 2, 1.0));
        let ldc = n + 4;
        let (mut cc, mut cg) = p.up(&random(11 + m * ldc, 3, 1.0));
        p.cpu.matmul(&mut cc, 11, ldc, Mat { buf: &ac, offset: 5, ld: lda, trans: ta }, Mat { buf: &bc, offset: 7, ld: ldb, trans: tb }, m, n, k, 0.7, acc);
        p.gpu.matmul(&mut cg, 11, ldc, Mat { buf: &ag, offset: 5, ld: lda, trans: ta }, Mat { buf: &bg, offset: 7, ld: ldb, trans: tb }, m, n, k, 0.7, acc);
        worst = worst.max(p.same(&format!("matmul ta={ta} tb={tb} acc={acc}"), &cc, &cg, 11 + m * ldc));
    }

    // element-wise
    let n = 10_007;
    let x = random(n, 4, 3.0);
    let y = random(n, 5, 2.0);
    let (xc, xg) = p.up(&x);
    let (yc, yg) = p.up(&y);
    let (mut oc, mut og) = p.up(&vec![0.0; n]);
    p.cpu.gelu_forward(&mut oc, &xc, n);
    p.gpu.gelu_forward(&mut og, &xg, n);
    worst = worst.max(p.same("gelu_forward", &oc, &og, n));
    p.cpu.gelu_backward(&mut oc, &xc, &yc, n);
    p.gpu.gelu_backward(&mut og, &xg, &yg, n);
    worst = worst.max(p.same("gelu_backward", &oc, &og, n));
    p.cpu.tanh_forward(&mut oc, &xc, n);
    p.gpu.tanh_forward(&mut og, &xg, n);
    worst = worst.max(p.same("tanh_forward", &oc, &og, n));
    let (tc, tg) = (oc.clone(), p.gpu.from_host(&oc));
    p.cpu.tanh_backward(&mut oc, &tc, &yc, n);
    p.gpu.tanh_backward(&mut og, &tg, &yg, n);
    worst = worst.max(p.same("tanh_backward", &oc, &og, n));
    p.cpu.axpby(&mut oc, 0.3, &xc, -1.2, n);
    p.gpu.axpby(&mut og, 0.3, &xg, -1.2, n);
    worst = worst.max(p.same("axpby", &oc, &og, n));
    p.cpu.scale(&mut oc, 1.7, n);
    p.gpu.scale(&mut og, 1.7, n);
    worst = worst.max(p.same("scale", &oc, &og, n));
    p.cpu.add(&mut oc, &xc, &yc, n);
    p.gpu.add(&mut og, &xg, &yg, n);
    worst = worst.max(p.same("add", &oc, &og, n));
    p.cpu.mul(&mut oc, &yc, n);
    p.gpu.mul(&mut og, &yg, n);
    worst = worst.max(p.same("mul", &oc, &og, n));
    p.cpu.fill(&mut oc, n - 3, 0.25);
    p.gpu.fill(&mut og, n - 3, 0.25);
    worst = worst.max(p.same("fill", &oc, &og, n));
    let (d_cpu, d_gpu) = (p.cpu.dot(&xc, &yc, n), p.gpu.dot(&xg, &yg, n));
    assert!((d_cpu - d_gpu).abs() <= 1e-9 * d_cpu.abs().max(1.0), "dot: cpu {d_cpu}, gpu {d_gpu}");
    let many_c = p.cpu.dots(&[(&xc, &yc, n), (&xc, &xc, 17), (&yc, &yc, 0), (&yc, &xc, n - 1)]);
    let many_g = p.gpu.dots(&[(&xg, &yg, n), (&xg, &xg, 17), (&yg, &yg, 0), (&yg, &xg, n - 1)]);
    for (i, (c, g)) in many_c.iter().zip(&many_g).enumerate() {
        assert!((c - g).abs() <= 1e-9 * c.abs().max(1.0), "dots[{i}]: cpu {c}, gpu {g}");
    }
    p.cpu.dropout_mask(&mut oc, n, 0.1, 9, &[2, 7]);
    p.gpu.dropout_mask(&mut og, n, 0.1, 9, &[2, 7]);
    assert_eq!(p.gpu.to_host(&og, n), oc[..n], "dropout masks differ");
    let (rows, w) = (41, 24);
    let s: Vec<f32> = random(w, 6, 2.0);
    p.cpu.scale_cols(&mut oc, &s, rows, w);
    p.gpu.scale_cols(&mut og, &s, rows, w);
    worst = worst.max(p.same("scale_cols", &oc, &og, n));
    let (bc, bg) = p.up(&random(w, 7, 1.0));
    p.cpu.add_bias(&mut oc, &bc, rows, w);
    p.gpu.add_bias(&mut og, &bg, rows, w);
    worst = worst.max(p.same("add_bias", &oc, &og, n));
    let (mut dbc, mut dbg) = p.up(&random(w, 8, 1.0));
    for acc in [false, true] {
        p.cpu.bias_grad(&mut dbc, &xc, rows, w, acc);
        p.gpu.bias_grad(&mut dbg, &xg, rows, w, acc);
        worst = worst.max(p.same(&format!("bias_grad acc={acc}"), &dbc, &dbg, w));
    }

    // layer norm forward and backward (h above and below the block size)
    for h in [24, 300] {
        let rows = 13;
        let (inc, ing) = p.up(&random(rows * h, 9, 2.0));
        let (wc, wg) = p.up(&random(h, 10, 1.0));
        let (bc, bg) = p.up(&random(h, 11, 1.0));
        let (mut outc, mut outg) = p.up(&vec![0.0; rows * h]);
        let (mut mc, mut mg) = p.up(&vec![0.0; rows]);
        let (mut rc, mut rg) = p.up(&vec![0.0; rows]);
        p.cpu.layer_norm_forward(&mut outc, &mut mc, &mut rc, &inc, &wc, &bc, rows, h, 1e-12);
        p.gpu.layer_norm_forward(&mut outg, &mut mg, &mut rg, &ing, &wg, &bg, rows, h, 1e-12);
        worst = worst.max(p.same("layer_norm_forward", &outc, &outg, rows * h));
        worst = worst.max(p.same("layer_norm mean", &mc, &mg, rows));
        worst = worst.max(p.same("layer_norm rstd", &rc, &rg, rows));
        let (gc, gg) = p.up(&random(rows * h, 12, 1.0));
        let (mut dc, mut dg) = p.up(&vec![0.0; rows * h]);
        let (mut dwc, mut dwg) = p.up(&vec![0.0; h]);
        let (mut dbc, mut dbg) = p.up(&vec![0.0; h]);
        p.cpu.layer_norm_backward(&mut dc, Some(&mut dwc), Some(&mut dbc), &gc, &inc, &wc, &mc, &rc, rows, h);
        p.gpu.layer_norm_backward(&mut dg, Some(&mut dwg), Some(&mut dbg), &gg, &ing, &wg, &mg, &rg, rows, h);
        worst = worst.max(p.same("layer_norm_backward dinp", &dc, &dg, rows * h));
        worst = worst.max(p.same("layer_norm_backward dw", &dwc, &dwg, h));
        worst = worst.max(p.same("layer_norm_backward db", &dbc, &dbg, h));
    }

    // decoder kernels: RMSNorm (h above and below the block size), SiLU gating, rotary embeddings
    for h in [24, 300] {
        let rows = 13;
        let (inc, ing) = p.up(&random(rows * h, 120, 2.0));
        let (wc, wg) = p.up(&random(h, 121, 1.0));
        let (mut outc, mut outg) = p.up(&vec![0.0; rows * h]);
        let (mut rc, mut rg) = p.up(&vec![0.0; rows]);
        p.cpu.rms_norm_forward(&mut outc, &mut rc, &inc, &wc, rows, h, 1e-6);
        p.gpu.rms_norm_forward(&mut outg, &mut rg, &ing, &wg, rows, h, 1e-6);
        worst = worst.max(p.same(&format!("rms_norm_forward h={h}"), &outc, &outg, rows * h));
        worst = worst.max(p.same(&format!("rms_norm rstd h={h}"), &rc, &rg, rows));
        let (gc, gg) = p.up(&random(rows * h, 122, 1.0));
        let (mut dc, mut dg) = p.up(&vec![0.0; rows * h]);
        let (mut dwc, mut dwg) = p.up(&vec![0.0; h]);
        p.cpu.rms_norm_backward(&mut dc, Some(&mut dwc), &gc, &inc, &wc, &rc, rows, h);
        p.gpu.rms_norm_backward(&mut dg, Some(&mut dwg), &gg, &ing, &wg, &rg, rows, h);
        worst = worst.max(p.same(&format!("rms_norm_backward dinp h={h}"), &dc, &dg, rows * h));
        worst = worst.max(p.same(&format!("rms_norm_backward dw h={h}"), &dwc, &dwg, h));
    }
    {
        let n = 5003;
        let (gatec, gateg) = p.up(&random(n, 123, 4.0));
        let (upc, upg) = p.up(&random(n, 124, 1.0));
        let (mut oc, mut og) = p.up(&vec![0.0; n]);
        p.cpu.silu_gate_forward(&mut oc, &gatec, &upc, n);
        p.gpu.silu_gate_forward(&mut og, &gateg, &upg, n);
        worst = worst.max(p.same("silu_gate_forward", &oc, &og, n));
        let (gc, gg) = p.up(&random(n, 125, 1.0));
        let (mut dgc, mut dgg) = p.up(&vec![0.0; n]);
        let (mut duc, mut dug) = p.up(&vec![0.0; n]);
        p.cpu.silu_gate_backward(&mut dgc, &mut duc, &gatec, &upc, &gc, n);
        p.gpu.silu_gate_backward(&mut dgg, &mut dug, &gateg, &upg, &gg, n);
        worst = worst.max(p.same("silu_gate_backward dgate", &dgc, &dgg, n));
        worst = worst.max(p.same("silu_gate_backward dup", &duc, &dug, n));
        let (heads, d) = (4, 16);
        let positions: Vec<i32> = (0..37).map(|i| (i * 97) % 4096).collect();
        let rows = positions.len();
        let (mut xc, mut xg) = p.up(&random(rows * heads * d, 126, 1.0));
        for inverse in [false, true] {
            p.cpu.rope(&mut xc, &positions, heads, d, 10000.0, inverse);
            p.gpu.rope(&mut xg, &positions, heads, d, 10000.0, inverse);
            worst = worst.max(p.same(&format!("rope inverse={inverse}"), &xc, &xg, rows * heads * d));
        }
    }

    // attention with padding and probability dropout, t not a multiple of the warps per block
    for (t, d, with_drop) in [(7, 8, false), (37, 64, true), (130, 32, true)] {
        let (b, heads) = (3, 2);
        let hd = heads * d;
        let (qc, qg) = p.up(&random(b * t * hd, 13, 1.5));
        let (kc, kg) = p.up(&random(b * t * hd, 14, 1.5));
        let (vc, vg) = p.up(&random(b * t * hd, 15, 1.0));
        let mut mask = vec![1i32; b * t];
        for j in t - 2..t {
            mask[t + j] = 0; // second sequence padded
        }
        for j in 0..t {
            mask[2 * t + j] = 0; // third fully masked: all-zero probabilities
        }
        let pn = b * heads * t * t;
        let (mut dmc, mut dmg) = p.up(&vec![0.0; pn]);
        p.cpu.dropout_mask(&mut dmc, pn, 0.2, 3, &[1]);
        p.gpu.dropout_mask(&mut dmg, pn, 0.2, 3, &[1]);
        let (drop_c, drop_g) = if with_drop { (Some(&dmc), Some(&dmg)) } else { (None, None) };
        let (mut oc, mut og) = p.up(&vec![0.0; b * t * hd]);
        let (mut pc, mut pg) = p.up(&vec![0.0; pn]);
        p.cpu.attention_forward(&mut oc, &mut pc, &qc, &kc, &vc, &mask, drop_c, b, t, heads, d);
        p.gpu.attention_forward(&mut og, &mut pg, &qg, &kg, &vg, &mask, drop_g, b, t, heads, d);
        worst = worst.max(p.same(&format!("attention_forward t={t} out"), &oc, &og, b * t * hd));
        worst = worst.max(p.same(&format!("attention_forward t={t} probs"), &pc, &pg, pn));
        let (goc, gog) = p.up(&random(b * t * hd, 16, 1.0));
        let (mut dqc, mut dqg) = p.up(&vec![0.0; b * t * hd]);
        let (mut dkc, mut dkg) = p.up(&vec![0.0; b * t * hd]);
        let (mut dvc, mut dvg) = p.up(&vec![0.0; b * t * hd]);
        p.cpu.attention_backward(&mut dqc, &mut dkc, &mut dvc, &goc, &pc, &qc, &kc, &vc, drop_c, b, t, heads, d);
        p.gpu.attention_backward(&mut dqg, &mut dkg, &mut dvg, &gog, &pg, &qg, &kg, &vg, drop_g, b, t, heads, d);
        worst = worst.max(p.same(&format!("attention_backward t={t} dq"), &dqc, &dqg, b * t * hd));
        worst = worst.max(p.same(&format!("attention_backward t={t} dk"), &dkc, &dkg, b * t * hd));
        worst = worst.max(p.same(&format!("attention_backward t={t} dv"), &dvc, &dvg, b * t * hd));
    }

    // flash attention: one and several tiles, head dimensions below and at a warp, causal or not,
    // padding, a fully padded sequence, dropout
    for (t, d, causal, p_drop) in [(7, 8, false, 0.0f32), (37, 32, true, 0.2), (70, 100, false, 0.1), (45, 64, true, 0.0)] {
        let (b, heads) = (3, 2);
        let n = b * t * heads * d;
        let (qc, qg) = p.up(&random(n, 130, 1.5));
        let (kc, kg) = p.up(&random(n, 131, 1.5));
        let (vc, vg) = p.up(&random(n, 132, 1.0));
        let mut mask = vec![1i32; b * t];
        mask[t + t / 2..2 * t].iter_mut().for_each(|x| *x = 0);
        mask[2 * t..].iter_mut().for_each(|x| *x = 0);
        let dropout = Some((p_drop, stream_key(5, &[t as u64])));
        let (mut oc, mut og) = p.up(&vec![0.0; n]);
        let (mut lc, mut lg) = p.up(&vec![0.0; b * t * heads]);
        p.cpu.flash_attention_forward(&mut oc, &mut lc, &qc, &kc, &vc, &mask, causal, dropout, b, t, heads, d);
        p.gpu.flash_attention_forward(&mut og, &mut lg, &qg, &kg, &vg, &mask, causal, dropout, b, t, heads, d);
        let what = format!("flash attention t={t} d={d} causal={causal} p={p_drop}");
        worst = worst.max(p.same(&format!("{what}: out"), &oc, &og, n));
        assert_eq!(p.gpu.to_host(&lg, b * t * heads)[2 * t * heads..], lc[2 * t * heads..], "{what}: padded rows' lse");
        worst = worst.max(assert_close(&format!("{what}: lse"), &p.gpu.to_host(&lg, 2 * t * heads), &lc[..2 * t * heads]));
        let (gc, gg) = p.up(&random(n, 133, 1.0));
        let (mut dqc, mut dqg) = p.up(&vec![0.0; n]);
        let (mut dkc, mut dkg) = p.up(&vec![0.0; n]);
        let (mut dvc, mut dvg) = p.up(&vec![0.0; n]);
        p.cpu.flash_attention_backward(&mut dqc, &mut dkc, &mut dvc, &gc, &oc, &lc, &qc, &kc, &vc, &mask, causal, dropout,
                                       b, t, heads, d);
        p.gpu.flash_attention_backward(&mut dqg, &mut dkg, &mut dvg, &gg, &og, &lg, &qg, &kg, &vg, &mask, causal, dropout,
                                       b, t, heads, d);
        worst = worst.max(p.same(&format!("{what}: dq"), &dqc, &dqg, n));
        worst = worst.max(p.same(&format!("{what}: dk"), &dkc, &dkg, n));
        worst = worst.max(p.same(&format!("{what}: dv"), &dvc, &dvg, n));
    }

    // embeddings (with a padding row that gets no gradient), gathers and scatters
    let (vocab, h, rows) = (17, 12, 9);
    let (wc, wg) = p.up(&random(vocab * h, 17, 1.0));
    let (pc, pg) = p.up(&random(10 * h, 18, 1.0));
    let (tc, tg) = p.up(&random(2 * h, 19, 1.0));
    let ids = [3, 0, 5, 5, 16, 0, 2, 9, 3];
    let pos: Vec<i32> = (0..rows as i32).collect();
    let typ = [0, 1, 0, 1, 1, 0, 0, 1, 0];
    let (mut ec, mut eg) = p.up(&vec![0.0; rows * h]);
    p.cpu.embedding_forward(&mut ec, &wc, &pc, &tc, &ids, &pos, &typ, h);
    p.gpu.embedding_forward(&mut eg, &wg, &pg, &tg, &ids, &pos, &typ, h);
    worst = worst.max(p.same("embedding_forward", &ec, &eg, rows * h));
    let (gc, gg) = p.up(&random(rows * h, 20, 1.0));
    let (mut dwc, mut dwg) = p.up(&vec![0.0; vocab * h]);
    let (mut dpc, mut dpg) = p.up(&vec![0.0; 10 * h]);
    p.cpu.embedding_backward(Some(&mut dwc), Some(&mut dpc), None, &gc, &ids, &pos, &typ, h, [Some(0), None, None]);
    p.gpu.embedding_backward(Some(&mut dwg), Some(&mut dpg), None, &gg, &ids, &pos, &typ, h, [Some(0), None, None]);
    worst = worst.max(p.same("embedding_backward word", &dwc, &dwg, vocab * h));
    worst = worst.max(p.same("embedding_backward pos", &dpc, &dpg, 10 * h));
    let pick = [4usize, 0, 4, 7];
    let (mut grc, mut grg) = p.up(&vec![0.0; pick.len() * h]);
    p.cpu.gather_rows(&mut grc, &ec, &pick, h);
    p.gpu.gather_rows(&mut grg, &eg, &pick, h);
    worst = worst.max(p.same("gather_rows", &grc, &grg, pick.len() * h));
    p.cpu.scatter_add_rows(&mut ec, &grc, &pick, h);
    p.gpu.scatter_add_rows(&mut eg, &grg, &pick, h);
    worst = worst.max(p.same("scatter_add_rows (a repeated row)", &ec, &eg, rows * h));

    // softmax cross-entropy
    let (rows, classes) = (11, 4);
    let (lc, lg) = p.up(&random(rows * classes, 21, 4.0));
    let labels: Vec<i32> = (0..rows as i32).map(|r| r % classes as i32).collect();
    let (mut prc, mut prg) = p.up(&vec![0.0; rows * classes]);
    let (loss_c, loss_g) = (p.cpu.softmax_xent_forward(&mut prc, &lc, &labels, rows, classes),
                            p.gpu.softmax_xent_forward(&mut prg, &lg, &labels, rows, classes));
    worst = worst.max(assert_close("softmax_xent loss", &[loss_g], &[loss_c]));
    worst = worst.max(p.same("softmax_xent probs", &prc, &prg, rows * classes));
    // each row's loss left on the device: the mean of the rows is the loss above
    let (mut rc, mut rg) = p.up(&vec![f32::NAN; rows]);
    let (mut prc2, mut prg2) = p.up(&vec![0.0; rows * classes]);
    p.cpu.softmax_xent_forward_rows(&mut prc2, &mut rc, &lc, &labels, rows, classes);
    p.gpu.softmax_xent_forward_rows(&mut prg2, &mut rg, &lg, &labels, rows, classes);
    worst = worst.max(p.same("softmax_xent_forward_rows losses", &rc, &rg, rows));
    worst = worst.max(p.same("softmax_xent_forward_rows probs", &prc2, &prg2, rows * classes));
    let mean = rc.iter().map(|&v| v as f64).sum::<f64>() / rows as f64;
    worst = worst.max(assert_close("softmax_xent_forward_rows mean", &[mean as f32], &[loss_c]));
    let (mut dlc, mut dlg) = p.up(&vec![0.0; rows * classes]);
    p.cpu.softmax_xent_backward(&mut dlc, &prc, &labels, rows, classes);
    p.gpu.softmax_xent_backward(&mut dlg, &prg, &labels, rows, classes);
    worst = worst.max(p.same("softmax_xent_backward", &dlc, &dlg, rows * classes));

    // AdamW, three steps with decay
    let n = 3001;
    let (mut pc, mut pg) = p.up(&random(n, 22, 1.0));
    let (mut mc, mut mg) = p.up(&vec![0.0; n]);
    let (mut vc, mut vg) = p.up(&vec![0.0; n]);
    for step in 1..=3 {
        let (gc, gg) = p.up(&random(n, 30 + step, 0.1));
        p.cpu.adamw(&mut pc, &gc, &mut mc, &mut vc, n, 1e-3, 0.9, 0.999, 1e-8, 0.01, step);
        p.gpu.adamw(&mut pg, &gg, &mut mg, &mut vg, n, 1e-3, 0.9, 0.999, 1e-8, 0.01, step);
    }
    worst = worst.max(p.same("adamw param", &pc, &pg, n));
    worst = worst.max(p.same("adamw m", &mc, &mg, n));
    worst = worst.max(p.same("adamw v", &vc, &vg, n));

    // many tensors at once: lengths from 1 element to more than 64 blocks' worth (grid-stride)
    let lens = [1usize, 300, 70_001, 17];
    let up_many = |seed: u64| -> Vec<(Vec<f32>, <Cuda as Backend>::Buf)> {
        lens.iter().enumerate().map(|(i, &n)| p.up(&random(n, seed + i as u64, 1.0))).collect()
    };
    let (mut ys, xs) = (up_many(50), up_many(60));
    {
        let mut items_c: Vec<_> = ys.iter_mut().zip(&lens).map(|((c, _), &n)| (c, n)).collect();
        p.cpu.scale_many(&mut items_c, 0.37);
    }
    {
        let mut items_g: Vec<_> = ys.iter_mut().zip(&lens).map(|((_, g), &n)| (g, n)).collect();
        p.gpu.scale_many(&mut items_g, 0.37);
    }
    for (i, (c, g)) in ys.iter().enumerate() {
        worst = worst.max(p.same(&format!("scale_many[{i}]"), c, g, lens[i]));
    }
    let coefs = [(0.5f32, 0.0f32), (1.0, 0.0), (-0.3, 1.7), (0.0, 2.0)];
    {
        let mut items_c: Vec<_> = ys.iter_mut().zip(&xs).zip(coefs).zip(&lens)
            .map(|((((yc, _), (xc, _)), (a, b)), &n)| (yc, a, xc, b, n)).collect();
        p.cpu.axpby_many(&mut items_c);
    }
    {
        let mut items_g: Vec<_> = ys.iter_mut().zip(&xs).zip(coefs).zip(&lens)
            .map(|((((_, yg), (_, xg)), (a, b)), &n)| (yg, a, xg, b, n)).collect();
        p.gpu.axpby_many(&mut items_g);
    }
    for (i, (c, g)) in ys.iter().enumerate() {
        worst = worst.max(p.same(&format!("axpby_many[{i}] (a, b) = {:?}", coefs[i]), c, g, lens[i]));
    }
    let many_c = p.cpu.dots(&ys.iter().zip(&xs).zip(&lens).map(|(((yc, _), (xc, _)), &n)| (yc, xc, n)).collect::<Vec<_>>());
    let many_g = p.gpu.dots(&ys.iter().zip(&xs).zip(&lens).map(|(((_, yg), (_, xg)), &n)| (yg, xg, n)).collect::<Vec<_>>());
    for (i, (c, g)) in many_c.iter().zip(&many_g).enumerate() {
        assert!((c - g).abs() <= 1e-9 * c.abs().max(1.0), "dots over many lengths [{i}]: cpu {c}, gpu {g}");
    }
    let (mut ms, mut vs) = (up_many(70), up_many(80));
    for v in vs.iter_mut() {
        // second moments are non-negative
        v.0.iter_mut().for_each(|x| *x = x.abs());
        v.1 = p.gpu.from_host(&v.0);
    }
    let decays = [0.0f32, 0.01, 0.1, 0.0];
    for step in 1..=2 {
        let mut items_c: Vec<_> = ys.iter_mut().zip(&xs).zip(ms.iter_mut().zip(vs.iter_mut())).zip(decays).zip(&lens)
            .map(|(((((param, _), (grad, _)), ((m, _), (v, _))), weight_decay), &n)| AdamwItem { param, grad, m, v, n, weight_decay })
            .collect();
        p.cpu.adamw_many(&mut items_c, 1e-3, 0.9, 0.999, 1e-8, step);
        let mut items_g: Vec<_> = ys.iter_mut().zip(&xs).zip(ms.iter_mut().zip(vs.iter_mut())).zip(decays).zip(&lens)
            .map(|(((((_, param), (_, grad)), ((_, m), (_, v))), weight_decay), &n)| AdamwItem { param, grad, m, v, n, weight_decay })
            .collect();
        p.gpu.adamw_many(&mut items_g, 1e-3, 0.9, 0.999, 1e-8, step);
    }
    for i in 0..lens.len() {
        worst = worst.max(p.same(&format!("adamw_many[{i}] param"), &ys[i].0, &ys[i].1, lens[i]));
        worst = worst.max(p.same(&format!("adamw_many[{i}] m"), &ms[i].0, &ms[i].1, lens[i]));
        worst = worst.max(p.same(&format!("adamw_many[{i}] v"), &vs[i].0, &vs[i].1, lens[i]));
    }

    // several GEMMs of one input, with biases (q, k, v)
    {
        let (m, n, k) = (13, 10, 21);
        let (xc, xg) = p.up(&random(m * k, 95, 1.0));
        let w: Vec<_> = (0..3).map(|i| p.up(&random(n * k, 96 + i, 1.0))).collect();
        let bias: Vec<_> = (0..3).map(|i| p.up(&random(n, 99 + i, 1.0))).collect();
        let mut outs: Vec<_> = (0..3).map(|_| p.up(&vec![f32::NAN; m * n])).collect();
        {
            let mut items_c: Vec<_> = outs.iter_mut().zip(&w).zip(&bias)
                .map(|(((oc, _), (wc, _)), (bc, _))| (oc, Mat { buf: wc, offset: 0, ld: k, trans: true }, bc)).collect();
            p.cpu.matmuls_bias(Mat { buf: &xc, offset: 0, ld: k, trans: false }, &mut items_c, m, n, k);
        }
        {
            let mut items_g: Vec<_> = outs.iter_mut().zip(&w).zip(&bias)
                .map(|(((_, og), (_, wg)), (_, bg))| (og, Mat { buf: wg, offset: 0, ld: k, trans: true }, bg)).collect();
            p.gpu.matmuls_bias(Mat { buf: &xg, offset: 0, ld: k, trans: false }, &mut items_g, m, n, k);
        }
        for (i, (c, g)) in outs.iter().enumerate() {
            worst = worst.max(p.same(&format!("matmuls_bias[{i}]"), c, g, m * n));
        }
    }

    // several GEMMs of one shape into their own outputs, accumulating, one at an offset (LoRA's
    // branches: one batched GEMM on the GPU), and a transposed operand
    {
        let (m, n, k) = (11, 6, 17);
        let a: Vec<_> = (0..3).map(|i| p.up(&random(k * m, 110 + i, 1.0))).collect();
        let b: Vec<_> = (0..3).map(|i| p.up(&random(k * n, 113 + i, 1.0))).collect();
        let mut outs: Vec<_> = (0..3).map(|i| p.up(&random(m * n + 5, 116 + i, 1.0))).collect();
        {
            let mut items_c: Vec<_> = outs.iter_mut().zip(&a).zip(&b).enumerate()
                .map(|(i, (((oc, _), (ac, _)), (bc, _)))| GemmItem {
                    c: oc, c_off: if i == 1 { 5 } else { 0 }, a: Mat { buf: ac, offset: 0, ld: m, trans: true },
                    b: Mat { buf: bc, offset: 0, ld: n, trans: false } }).collect();
            p.cpu.matmuls(&mut items_c, n, m, n, k, 0.75, true);
        }
        {
            let mut items_g: Vec<_> = outs.iter_mut().zip(&a).zip(&b).enumerate()
                .map(|(i, (((_, og), (_, ag)), (_, bg)))| GemmItem {
                    c: og, c_off: if i == 1 { 5 } else { 0 }, a: Mat { buf: ag, offset: 0, ld: m, trans: true },
                    b: Mat { buf: bg, offset: 0, ld: n, trans: false } }).collect();
            p.gpu.matmuls(&mut items_g, n, m, n, k, 0.75, true);
        }
        for (i, (c, g)) in outs.iter().enumerate() {
            worst = worst.max(p.same(&format!("matmuls[{i}]"), c, g, m * n + 5));
        }
    }

    // the fused stores after a GEMM, with and without bias and mask
    let (m, n, k) = (19, 23, 11);
    let (ac, ag) = p.up(&random(m * k, 90, 1.0));
    let (wc, wg) = p.up(&random(n * k, 91, 1.0));
    let (bc, bg) = p.up(&random(n, 92, 1.0));
    let (rc, rg) = p.up(&random(m * n, 93, 1.0));
    let (mut maskc, mut maskg) = p.up(&vec![0.0; m * n]);
    p.cpu.dropout_mask(&mut maskc, m * n, 0.3, 4, &[9]);
    p.gpu.dropout_mask(&mut maskg, m * n, 0.3, 4, &[9]);
    for (with_bias, with_mask) in [(true, true), (false, true), (true, false), (false, false)] {
        let (mut oc, mut og) = p.up(&vec![f32::NAN; m * n]);
        p.cpu.matmul_bias_dropout_residual(&mut oc, Mat { buf: &ac, offset: 0, ld: k, trans: false },
            Mat { buf: &wc, offset: 0, ld: k, trans: true }, m, n, k, with_bias.then_some(&bc), with_mask.then_some(&maskc), &rc);
        p.gpu.matmul_bias_dropout_residual(&mut og, Mat { buf: &ag, offset: 0, ld: k, trans: false },
            Mat { buf: &wg, offset: 0, ld: k, trans: true }, m, n, k, with_bias.then_some(&bg), with_mask.then_some(&maskg), &rg);
        worst = worst.max(p.same(&format!("matmul_bias_dropout_residual bias={with_bias} mask={with_mask}"), &oc, &og, m * n));
    }
    // GELU: the CPU keeps gelu'(pre) where CUDA keeps pre, so the pair is checked through its backward
    let (mut savedc, mut savedg) = p.up(&vec![0.0; m * n]);
    let (mut actc, mut actg) = p.up(&vec![0.0; m * n]);
    p.cpu.matmul_bias_gelu(&mut savedc, &mut actc, Mat { buf: &ac, offset: 0, ld: k, trans: false },
                           Mat { buf: &wc, offset: 0, ld: k, trans: true }, m, n, k, &bc);
    p.gpu.matmul_bias_gelu(&mut savedg, &mut actg, Mat { buf: &ag, offset: 0, ld: k, trans: false },
                           Mat { buf: &wg, offset: 0, ld: k, trans: true }, m, n, k, &bg);
    worst = worst.max(p.same("matmul_bias_gelu act", &actc, &actg, m * n));
    let (dyc, dyg) = p.up(&random(m * k, 94, 1.0));
    let (mut dpc, mut dpg) = p.up(&vec![0.0; m * n]);
    let (mut dac, mut dag) = p.up(&vec![0.0; m * n]);
    p.cpu.matmul_gelu_backward(&mut dpc, &mut dac, Mat { buf: &dyc, offset: 0, ld: k, trans: false },
                               Mat { buf: &wc, offset: 0, ld: k, trans: true }, m, n, k, &savedc);
    p.gpu.matmul_gelu_backward(&mut dpg, &mut dag, Mat { buf: &dyg, offset: 0, ld: k, trans: false },
                               Mat { buf: &wg, offset: 0, ld: k, trans: true }, m, n, k, &savedg);
    worst = worst.max(p.same("matmul_gelu_backward", &dpc, &dpg, m * n));
    let (mut mic, mut mig) = p.up(&vec![0.0; m * n]);
    p.cpu.mul_into(&mut mic, &rc, &maskc, m * n);
    p.gpu.mul_into(&mut mig, &rg, &maskg, m * n);
    worst = worst.max(p.same("mul_into", &mic, &mig, m * n));

    let n = 3001;
    let (cc, cg) = p.up(&x);
    let (mut dst_c, mut dst_g) = p.up(&vec![0.0; n]);
    p.cpu.copy(&mut dst_c, &cc, n);
    p.gpu.copy(&mut dst_g, &cg, n);
    worst = worst.max(p.same("copy", &dst_c, &dst_g, n));
    eprintln!("every verb: CUDA within tolerance of the CPU; max abs diff {worst:.2e}");
}

/// What a few training steps leave behind, read back to the host.
struct Trace {
    logits: Vec<f32>,
    losses: Vec<f32>,
    ref_losses: Vec<f32>,
    norms: Vec<f32>,
    projected: Vec<usize>,
    params: Vec<(String, Vec<f32>)>,
}

fn peft_spec(dropout: f32) -> TrainSpec {
    TrainSpec {
        mode: TrainMode::Peft,
        lora: Some(LoraSpec { r: 4, alpha: 8.0, dropout, targets: vec!["query".into(), "value".into()] }),
        mslr: Some(MslrSpec { band: vec![1.0, 4.0, 8.0], rank: 2, alpha: 2.0, dropout }),
        train_head: true,
    }
}

/// A change made to the weights before the steps of a control run, to measure how far such
/// noise alone carries the run.
#[derive(Clone, Copy, PartialEq)]
enum Perturb {
    None,
    /// every weight matrix outside the embeddings scaled elementwise by 1 + 1e-6 (i mod 7 - 3): a
    /// rounding-sized change
    Jitter,
    /// every frozen weight matrix outside the embeddings rounded to bf16, as bf16 mode stores them
    Bf16Frozen,
}

/// Three training steps, after `perturb`.
fn train_trace<B: Backend>(be: B, dir: &Path, labels: usize, spec: &TrainSpec, dropout: bool, roberta: bool,
                           perturb: Perturb) -> Trace {
    let mut model = BertClassifier::load(&be, dir, labels, spec, 5).unwrap();
    model.set_dropout(dropout);
    if perturb != Perturb::None {
        let names: Vec<String> = model.params.meta.iter()
            .filter(|m| m.shape.len() == 2 && !m.name.contains("embeddings") && (perturb == Perturb::Jitter || !m.trainable))
            .map(|m| m.name.clone())
            .collect();
        for name in names {
            let v = model.get_param(&be, &name).unwrap();
            let v: Vec<f32> = match perturb {
                Perturb::Jitter => v.iter().enumerate().map(|(i, &x)| x * (1.0 + 1e-6 * ((i % 7) as f32 - 3.0))).collect(),
                _ => bf16_round(&v),
            };
            model.set_param(&be, &name, &v).unwrap();
        }
    }
    let mut clf = Classifier::new(be, model, AdamWConfig::default());
    let (ids, mask, _) = tiny_batch(roberta);
    let labels_v: Vec<i32> = (0..3).map(|i| (i % labels) as i32).collect();
    let batch = BatchRef { ids: &ids, mask: &mask, labels: Some(&labels_v), b: 3, t: 5 };
    let ref_labels: Vec<i32> = labels_v.iter().rev().cloned().collect();
    let reference = BatchRef { ids: &ids, mask: &mask, labels: Some(&ref_labels), b: 3, t: 5 };
    let mut tr = Trace { logits: vec![], losses: vec![], ref_losses: vec![], norms: vec![], projected: vec![], params: vec![] };
    for step in 0..3 {
        let ga = match step {
            0 => Some(GaRule::Gated { min_ref_loss: 0.0, min_ref_grad_norm: 0.0, rho: None }),
            1 => Some(GaRule::Paper { rho: 0.1 }),
            _ => None,
        };
        let rep = clf.train_step(&batch, ga.map(|_| &reference), &StepSettings { lr: 1e-2, max_grad_norm: 1.0, ga }).unwrap();
        tr.losses.push(rep.loss);
        tr.ref_losses.extend(rep.ref_loss);
        tr.norms.push(rep.clipped_norm as f32);
        tr.projected.push(rep.projected);
    }
    tr.logits = clf.predict(&batch).unwrap();
    for meta in clf.model.params.meta.iter().filter(|m| m.trainable) {
        tr.params.push((meta.name.clone(), clf.model.get_param(&clf.be, &meta.name).unwrap()));
    }
    tr
}

/// Relative L2 distance |got - want| / |want|.
fn rel_l2(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    let num: f64 = got.iter().zip(want).map(|(&g, &w)| (g as f64 - w as f64).powi(2)).sum();
    let den: f64 = want.iter().map(|&w| (w as f64).powi(2)).sum();
    (num / den.max(1e-30)).sqrt()
}

fn bf16_round(x: &[f32]) -> Vec<f32> {
    x.iter().map(|&v| half::bf16::from_f32(v).to_f32()).collect()
}

on_both!(bf16_gemms, bf16_gemms_equal_f32_gemms_of_rounded_operands_emulated, bf16_gemms_equal_f32_gemms_of_rounded_operands);
/// A frozen weight in bf16 mode: stored as bf16 (read back rounded to nearest even), and every
/// GEMM with it equals the CPU's f32 GEMM of the bf16-rounded operands (products of bf16 values are
/// exact in f32; only the summation order differs).
fn bf16_gemms(target: Target) {
    let gpu = target.open(Precision::Bf16);
    let cpu = Cpu::new();
    let (m, n, k) = (45, 37, 70);
    let w = random(n * k, 40, 1.0); // [n, k], as a linear weight [out, in]
    let x = random(m * k, 41, 2.0);
    let dy = random(m * n, 42, 1.0);
    let mut wg = gpu.from_host(&w);
    gpu.freeze_weight(&mut wg, n * k);
    assert_eq!(gpu.to_host(&wg, n * k), bf16_round(&w), "frozen weight read back");
    let (wr, xr, dyr) = (bf16_round(&w), bf16_round(&x), bf16_round(&dy));
    let (xg, dyg) = (gpu.from_host(&x), gpu.from_host(&dy));
    // forward y = x W^T, and the input gradient dx = dy W (accumulating into a bias of ones)
    let mut yg = gpu.zeros(m * n);
    gpu.matmul(&mut yg, 0, n, Mat { buf: &xg, offset: 0, ld: k, trans: false }, Mat { buf: &wg, offset: 0, ld: k, trans: true }, m, n, k, 1.0, false);
    let mut yc = vec![0.0; m * n];
    cpu.matmul(&mut yc, 0, n, Mat { buf: &xr, offset: 0, ld: k, trans: false }, Mat { buf: &wr, offset: 0, ld: k, trans: true }, m, n, k, 1.0, false);
    let mut dxg = gpu.from_host(&vec![1.0; m * k]);
    gpu.matmul(&mut dxg, 0, k, Mat { buf: &dyg, offset: 0, ld: n, trans: false }, Mat { buf: &wg, offset: 0, ld: k, trans: false }, m, k, n, 0.5, true);
    let mut dxc = vec![1.0; m * k];
    cpu.matmul(&mut dxc, 0, k, Mat { buf: &dyr, offset: 0, ld: n, trans: false }, Mat { buf: &wr, offset: 0, ld: k, trans: false }, m, k, n, 0.5, true);
    // three frozen weights of one input with biases (q, k, v): A converted once, used three times
    let ws: Vec<Vec<f32>> = (0..3).map(|i| random(n * k, 43 + i, 1.0)).collect();
    let bs: Vec<Vec<f32>> = (0..3).map(|i| random(n, 46 + i, 1.0)).collect();
    let mut wgs: Vec<_> = ws.iter().map(|w| gpu.from_host(w)).collect();
    for w in wgs.iter_mut() {
        gpu.freeze_weight(w, n * k);
    }
    let bgs: Vec<_> = bs.iter().map(|b| gpu.from_host(b)).collect();
    let mut outs: Vec<_> = (0..3).map(|_| gpu.from_host(&vec![f32::NAN; m * n])).collect();
    {
        let mut items: Vec<_> = outs.iter_mut().zip(&wgs).zip(&bgs)
            .map(|((o, w), bias)| (o, Mat { buf: w, offset: 0, ld: k, trans: true }, bias)).collect();
        gpu.matmuls_bias(Mat { buf: &xg, offset: 0, ld: k, trans: false }, &mut items, m, n, k);
    }
    let mut shared_worst = 0.0f64;
    for i in 0..3 {
        let mut want = vec![0.0; m * n];
        cpu.matmul_bias(&mut want, Mat { buf: &xr, offset: 0, ld: k, trans: false },
                        Mat { buf: &bf16_round(&ws[i]), offset: 0, ld: k, trans: true }, m, n, k, &bs[i]);
        shared_worst = shared_worst.max(assert_close(&format!("bf16 matmuls_bias[{i}]"), &gpu.to_host(&outs[i], m * n), &want));
    }
    // a layer norm's output feeds the GEMM through the bf16 copy the kernel wrote beside it; once
    // anything else touches the buffer (here `scale`), the GEMM must convert the new values instead
    let (lw, lb) = (gpu.from_host(&vec![1.0; k]), gpu.from_host(&vec![0.0; k]));
    let (mut ln, mut mean, mut rstd) = (gpu.zeros(m * k), gpu.zeros(m), gpu.zeros(m));
    let mut copy_worst = 0.0f64;
    for round in 0..2 {
        gpu.layer_norm_forward(&mut ln, &mut mean, &mut rstd, &xg, &lw, &lb, m, k, 1e-12);
        if round == 1 {
            gpu.scale(&mut ln, -3.0, m * k);
        }
        let mut out = gpu.zeros(m * n);
        gpu.matmul(&mut out, 0, n, Mat { buf: &ln, offset: 0, ld: k, trans: false }, Mat { buf: &wg, offset: 0, ld: k, trans: true }, m, n, k, 1.0, false);
        let mut want = vec![0.0; m * n];
        cpu.matmul(&mut want, 0, n, Mat { buf: &bf16_round(&gpu.to_host(&ln, m * k)), offset: 0, ld: k, trans: false },
                   Mat { buf: &wr, offset: 0, ld: k, trans: true }, m, n, k, 1.0, false);
        copy_worst = copy_worst.max(assert_close(&format!("bf16 GEMM of a layer norm's output, round {round}"),
                                                 &gpu.to_host(&out, m * n), &want));
    }
    let y = gpu.to_host(&yg, m * n);
    let dx = gpu.to_host(&dxg, m * k);
    gpu.check().unwrap();
    let worst = assert_close("bf16 forward GEMM", &y, &yc).max(assert_close("bf16 input-gradient GEMM", &dx, &dxc))
        .max(shared_worst).max(copy_worst);
    eprintln!("bf16 GEMMs: equal to f32 GEMMs of the rounded operands; max abs diff {worst:.2e}");
}

#[test]
fn tf32_rounds_to_nearest_even_at_ten_mantissa_bits() {
    use muscle_engine::backend::cuda::runtime::to_tf32;
    let (ulp, half) = (2f32.powi(-10), 2f32.powi(-11));
    assert_eq!(to_tf32(1.0 + half), 1.0, "a tie goes to the even neighbour (down)");
    assert_eq!(to_tf32(1.0 + 3.0 * half), 1.0 + 2.0 * ulp, "a tie goes to the even neighbour (up)");
    assert_eq!(to_tf32(1.0 + half + 2f32.powi(-20)), 1.0 + ulp, "past the tie rounds up");
    assert_eq!(to_tf32(-(1.0 + half - 2f32.powi(-20))), -1.0, "below the tie rounds down, sign kept");
    assert_eq!(to_tf32(1.0 + ulp), 1.0 + ulp, "TF32 values are kept");
    assert_eq!(to_tf32(f32::MAX), f32::INFINITY, "the largest f32 rounds past TF32's range");
    assert!(to_tf32(f32::NAN).is_nan());
}

on_both!(tf32_attention, tf32_attention_tracks_the_cpu_emulated, tf32_attention_tracks_the_cpu);
/// Buffers that only frozen layers' GEMMs read (`Backend::set_gemm_input_only`): in bf16 mode the
/// kernels producing them (GELU forward and backward, layer norm's backward through dropout) write
/// the bf16 copy alone, and the GEMMs then give exactly what they give on a buffer written in full;
/// reading such a buffer as f32 afterwards is an error, never old values; in f32 mode (no bf16
/// copies) the declaration changes nothing.
fn gemm_input_only(target: Target) {
    let gpu = target.open(Precision::Bf16);
    let (m, k, n) = (9, 40, 7);
    let mut w = gpu.from_host(&random(n * k, 130, 1.0)); // [n, k], a frozen linear weight
    gpu.freeze_weight(&mut w, n * k);
    let wt = Mat { buf: &w, offset: 0, ld: k, trans: true };
    let (x, dy) = (gpu.from_host(&random(m * k, 131, 2.0)), gpu.from_host(&random(m * k, 132, 1.0)));
    let (xin, win, bias) = (gpu.from_host(&random(m * n, 133, 1.0)), gpu.from_host(&random(k * n, 134, 0.5)),
                            gpu.from_host(&random(k, 135, 0.1)));
    let (lw, lb) = (gpu.from_host(&random(k, 136, 1.0)), gpu.from_host(&random(k, 137, 0.1)));
    let (mut mean, mut rstd, mut ln) = (gpu.zeros(m), gpu.zeros(m), gpu.zeros(m * k));
    gpu.layer_norm_forward(&mut ln, &mut mean, &mut rstd, &x, &lw, &lb, m, k, 1e-12);
    // each producer writes one buffer in full and one declared a GEMM input only; the GEMM of W
    // must give the same bits from both
    let gemm = |inp: &<Cuda as Backend>::Buf| {
        let mut out = gpu.zeros(m * n);
        gpu.matmul(&mut out, 0, n, Mat { buf: inp, offset: 0, ld: k, trans: false }, wt, m, n, k, 1.0, false);
        gpu.to_host(&out, m * n)
    };
    let produce = |which: usize, out: &mut <Cuda as Backend>::Buf| match which {
        0 => gpu.gelu_backward(out, &x, &dy, m * k),
        1 => {
            let mut saved = gpu.zeros(m * k);
            gpu.matmul_bias_gelu(&mut saved, out, Mat { buf: &xin, offset: 0, ld: n, trans: false },
                                 Mat { buf: &win, offset: 0, ld: n, trans: true }, m, k, n, &bias);
        }
        _ => {
            let (mut dinp, mut mask) = (gpu.zeros(m * k), gpu.zeros(m * k));
            gpu.dropout_mask_once(&mut mask, m * k, 0.25, 7, &[1, 2]);
            gpu.layer_norm_backward_dropout(&mut dinp, None, None, &dy, &x, &lw, &mean, &rstd, m, k, Some((out, &mask)));
        }
    };
    let mut only = gpu.zeros(m * k);
    gpu.set_gemm_input_only(&mut only, true);
    for (which, what) in ["GELU backward", "bias + GELU", "layer norm backward, dropped"].iter().enumerate() {
        let mut full = gpu.zeros(m * k);
        produce(which, &mut full);
        let want = gemm(&full);
        produce(which, &mut only);
        assert_eq!(gemm(&only), want, "{what}: the GEMM of the bf16 copy written alone");
        assert!(want.iter().all(|v| v.is_finite()), "{what}: finite");
    }
    gpu.check().unwrap();
    let _ = gpu.to_host(&only, m * k);
    let err = gpu.check().expect_err("an f32 read of a buffer whose bf16 copy alone was written must fail").to_string();
    assert!(err.contains("GEMM input only"), "{err}");

    // f32 mode: no bf16 copies, so the f32 values are written as usual
    let gpu = target.open(Precision::F32);
    let cpu = Cpu::new();
    let (xs, dys) = (random(m * k, 131, 2.0), random(m * k, 132, 1.0));
    let mut only = gpu.zeros(m * k);
    gpu.set_gemm_input_only(&mut only, true);
    gpu.gelu_backward(&mut only, &gpu.from_host(&xs), &gpu.from_host(&dys), m * k);
    let mut want = vec![0.0; m * k];
    cpu.gelu_backward(&mut want, &xs, &dys, m * k);
    assert_close("f32 mode: GELU backward into a GEMM-input-only buffer", &gpu.to_host(&only, m * k), &want);
    gpu.check().unwrap();
}
on_both!(gemm_input_only, gemm_input_only_buffers_emulated, gemm_input_only_buffers);

/// bf16 mode runs attention's batched GEMMs in TF32: forward and backward stay within TF32's
/// rounding (2^-11 relative per operand) of the f32 CPU; emulated, the probabilities equal the
/// CPU's from Q and K rounded to TF32, so the rounding is the one the GPU applies, and only there.
fn tf32_attention(target: Target) {
    use muscle_engine::backend::cuda::runtime::to_tf32;
    let gpu = target.open(Precision::Bf16);
    let cpu = Cpu::new();
    let (b, t, heads, d) = (3, 37, 2, 64);
    let (hd, pn) = (heads * d, b * heads * t * t);
    let (q, k, v, g) = (random(b * t * hd, 60, 1.5), random(b * t * hd, 61, 1.5), random(b * t * hd, 62, 1.0),
                        random(b * t * hd, 63, 1.0));
    let mut mask = vec![1i32; b * t];
    mask[2 * t - 3..2 * t].fill(0);
    let up = |x: &[f32]| gpu.from_host(x);
    let (qg, kg, vg, gg) = (up(&q), up(&k), up(&v), up(&g));
    let (mut og, mut pg) = (gpu.zeros(b * t * hd), gpu.zeros(pn));
    gpu.attention_forward(&mut og, &mut pg, &qg, &kg, &vg, &mask, None, b, t, heads, d);
    let (mut dqg, mut dkg, mut dvg) = (gpu.zeros(b * t * hd), gpu.zeros(b * t * hd), gpu.zeros(b * t * hd));
    gpu.attention_backward(&mut dqg, &mut dkg, &mut dvg, &gg, &pg, &qg, &kg, &vg, None, b, t, heads, d);
    let (mut oc, mut pc) = (vec![0.0; b * t * hd], vec![0.0; pn]);
    cpu.attention_forward(&mut oc, &mut pc, &q, &k, &v, &mask, None, b, t, heads, d);
    let (mut dqc, mut dkc, mut dvc) = (vec![0.0; b * t * hd], vec![0.0; b * t * hd], vec![0.0; b * t * hd]);
    cpu.attention_backward(&mut dqc, &mut dkc, &mut dvc, &g, &pc, &q, &k, &v, None, b, t, heads, d);
    let probs = gpu.to_host(&pg, pn);
    let mut worst = 0.0f64;
    for (what, got, want, n) in [("out", &og, &oc, b * t * hd), ("dq", &dqg, &dqc, b * t * hd), ("dk", &dkg, &dkc, b * t * hd),
                                 ("dv", &dvg, &dvc, b * t * hd)] {
        worst = worst.max(assert_close_within(&format!("TF32 attention {what}"), &gpu.to_host(got, n), want, 2e-3, 1e-2));
    }
    worst = worst.max(assert_close_within("TF32 attention probs", &probs, &pc, 2e-3, 1e-2));
    if matches!(target, Target::Emulated) {
        let round = |x: &[f32]| x.iter().map(|&v| to_tf32(v)).collect::<Vec<f32>>();
        let (mut o2, mut p2) = (vec![0.0; b * t * hd], vec![0.0; pn]);
        cpu.attention_forward(&mut o2, &mut p2, &round(&q), &round(&k), &v, &mask, None, b, t, heads, d);
        assert_close("TF32 attention probs against the CPU's of TF32 Q and K", &probs, &p2);
        assert!(probs.iter().zip(&pc).any(|(a, c)| a != c), "TF32 changed no probability: the f32 path ran");
    }
    gpu.check().unwrap();
    eprintln!("TF32 attention: within {worst:.2e} of the f32 CPU");
}

on_both!(bf16_training, bf16_training_tracks_the_cpu_emulated, bf16_training_tracks_the_cpu);
/// Training in bf16 mode stays near the f32 CPU run. The bound on losses and logits (relative L2,
/// three steps) is measured, not guessed: a control run on the CPU with only the frozen weights
/// rounded to bf16 moves them by 2.5% (tiny BERT) and 1.9% (tiny RoBERTa); bf16 mode also rounds
/// the activations entering those GEMMs and multiplies attention in TF32, so it may move them up
/// to twice its control. Every trained tensor stays within 20%: LoRA's B starts at zero and Adam's
/// first steps normalise its tiny gradients, so rounding the frozen weights alone moves a B matrix
/// by up to 7.7%, and bf16 mode (emulated, TF32 attention included) by up to 15.6%. The bf16
/// arithmetic itself is held exactly by `bf16_gemms` and the TF32 one by `tf32_attention`; this is the end-to-end bound.
fn bf16_training(target: Target) {
    for (name, roberta) in [("tiny-bert", false), ("tiny-roberta", true)] {
        let dir = fixtures().join(name);
        let spec = peft_spec(0.0);
        let c = train_trace(Cpu::new(), &dir, 2, &spec, false, roberta, Perturb::None);
        let g = train_trace(target.open(Precision::Bf16), &dir, 2, &spec, false, roberta, Perturb::None);
        let control = train_trace(Cpu::new(), &dir, 2, &spec, false, roberta, Perturb::Bf16Frozen);
        let outputs_of = |t: &Trace| rel_l2(&t.losses, &c.losses).max(rel_l2(&t.logits, &c.logits));
        let (outputs, bound) = (outputs_of(&g), 2.0 * outputs_of(&control));
        assert!(outputs < bound, "{name} bf16: losses/logits {outputs:.2e} from the CPU, over twice its control's");
        let mut worst = 0.0f64;
        for ((n, gv), (_, cv)) in g.params.iter().zip(&c.params) {
            let d = rel_l2(gv, cv);
            assert!(d < 0.2, "{name} bf16: {n} {d:.2e} from the CPU");
            worst = worst.max(d);
        }
        eprintln!("{name} LoRA+MSLR bf16, 3 steps, relative L2 from the f32 CPU: losses and logits {outputs:.2e} \
                   (bound {bound:.2e}: twice the CPU's with bf16 frozen weights), trained tensors up to {worst:.2e}");
    }
}

fn same_training(what: &str, dir: &Path, labels: usize, spec: &TrainSpec, dropout: bool, roberta: bool, gpu: Cuda) {
    let c = train_trace(Cpu::new(), dir, labels, spec, dropout, roberta, Perturb::None);
    let g = train_trace(gpu, dir, labels, spec, dropout, roberta, Perturb::None);
    let mut worst = assert_close(&format!("{what}: losses"), &g.losses, &c.losses);
    worst = worst.max(assert_close(&format!("{what}: reference losses"), &g.ref_losses, &c.ref_losses));
    worst = worst.max(assert_close(&format!("{what}: gradient norms"), &g.norms, &c.norms));
    assert_eq!(g.projected, c.projected, "{what}: projected tensor counts");
    // Three steps amplify rounding, most where a gradient is rounding noise (attention keys' weights
    // in full fine-tuning; AdamW turns any such noise into steps of about lr). Another summation order
    // (cuBLAS's, or the emulator's f64 sums) is such noise, so the state after the steps is held to
    // what rounding-sized noise alone does on the CPU: per tensor, ten times the largest change a
    // 1e-6 relative jitter of the weights causes, and never less than ten times the per-step tolerance.
    let control = train_trace(Cpu::new(), dir, labels, spec, dropout, roberta, Perturb::Jitter);
    let max_abs = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y).abs() as f64).fold(0.0, f64::max);
    let after = |what: &str, got: &[f32], want: &[f32], noise: &[f32]| {
        assert_close_within(what, got, want, (10.0 * max_abs(noise, want)).max(1e-4), 1e-3)
    };
    worst = worst.max(after(&format!("{what}: logits after 3 steps"), &g.logits, &c.logits, &control.logits));
    for (((name, gv), (_, cv)), (_, nv)) in g.params.iter().zip(&c.params).zip(&control.params) {
        worst = worst.max(after(&format!("{what}: {name} after 3 steps"), gv, cv, nv));
    }
    eprintln!("{what}: 3 steps (GA gated, paper, none) on CUDA match the CPU; max abs diff {worst:.2e}");
}

/// Five identical LoRA+MSLR steps with dropout (new dropout keys, AdamW steps and GA scalars every
/// step) on `target`, graph mode on or off (and, emulated, its replays' patches left out): the
/// losses, the trained tensors, graph mode's books after all five and after four, and why graph
/// mode turned itself off, if it did.
fn five_steps(target: Target, graphs: bool, stale_patches: bool) -> (Vec<f32>, Vec<Vec<f32>>, GraphStats, GraphStats, Option<String>) {
    let dir = fixtures().join("tiny-bert");
    let be = target.open(Precision::F32);
    be.set_graphs(graphs).unwrap();
    be.emulate_stale_graph_patches(stale_patches);
    let mut model = BertClassifier::load(&be, &dir, 2, &peft_spec(0.1), 5).unwrap();
    model.set_dropout(true);
    let mut clf = Classifier::new(be, model, AdamWConfig::default());
    let (ids, mask, _) = tiny_batch(false);
    let labels: Vec<i32> = vec![0, 1, 0];
    let ref_labels: Vec<i32> = vec![1, 0, 1];
    let batch = BatchRef { ids: &ids, mask: &mask, labels: Some(&labels), b: 3, t: 5 };
    let reference = BatchRef { ids: &ids, mask: &mask, labels: Some(&ref_labels), b: 3, t: 5 };
    let ga = Some(GaRule::Gated { min_ref_loss: 0.0, min_ref_grad_norm: 0.0, rho: None });
    let mut losses = Vec::new();
    let mut after_four = Default::default();
    for step in 0..5 {
        losses.push(clf.train_step(&batch, Some(&reference), &StepSettings { lr: 1e-2, max_grad_norm: 1.0, ga }).unwrap().loss);
        if step == 3 {
            after_four = clf.be.graph_stats();
        }
    }
    let params: Vec<Vec<f32>> = clf.model.params.meta.iter().filter(|m| m.trainable)
        .map(|m| clf.model.get_param(&clf.be, &m.name).unwrap()).collect();
    (losses, params, clf.be.graph_stats(), after_four, clf.be.graph_failure())
}

on_both!(graph_mode, graph_mode_replays_steps_exactly_emulated, graph_mode_replays_steps_exactly);
/// Graph mode (a run of calls between two waits issued as one CUDA graph, its changed kernel
/// arguments patched in) computes what issuing each call computes: the five steps give the same
/// losses and parameters in both modes, bit for bit emulated (same kernels, same order), and the
/// graphs were built once, checked, and replayed with patched arguments, the fifth step building
/// none. Emulated, a replay runs the cached run with only the detected changes applied, so a
/// change the detection missed would show here (and in the graphs' own check).
fn graph_mode(target: Target) {
    let (eager_losses, eager_params, none, _, _) = five_steps(target, false, false);
    let (losses, params, stats, after_four, failure) = five_steps(target, true, false);
    assert_eq!(failure, None, "graph mode fell back to issuing calls one by one");
    let exact = matches!(target, Target::Emulated);
    let (abs, rel) = if exact { (0.0, 0.0) } else { (1e-5, 1e-4) };
    let mut worst = assert_close_within("graph mode: losses", &losses, &eager_losses, abs, rel);
    for (i, (g, e)) in params.iter().zip(&eager_params).enumerate() {
        worst = worst.max(assert_close_within(&format!("graph mode: trained tensor {i}"), g, e, abs, rel));
    }
    assert_eq!(none.launched, 0, "graph mode off launched graphs");
    assert!(stats.built >= 1 && stats.launched > stats.built && stats.patched > 0,
            "graph mode built no graph, replayed none or patched nothing: {stats:?}");
    // each graph is checked when built and when a replay first patches a node (here: the first
    // replay patches them all), not after
    assert!(stats.checked > stats.built && stats.checked <= 2 * stats.built,
            "graph checks: {stats:?}");
    // every step makes the same calls on the same buffers (the model's and GA's swapped buffers go
    // back in place), so by the fifth step every run replays a graph
    assert!(stats.built == after_four.built && stats.launched > after_four.launched,
            "the fifth step built graphs (a run's shape changed between steps): {after_four:?} then {stats:?}");
    eprintln!("graph mode: 5 steps as issued call by call (max abs diff {worst:.2e}); {stats:?}");
}

/// A graph whose replay runs with stale arguments (emulated: its patches left out, as a driver
/// that ignored them would) is caught by the graphs' check at its first replay, which turns graph
/// mode off, says why, and keeps the results of the calls issued one by one: training is bit for
/// bit what it is with graph mode off.
#[test]
fn graph_check_catches_stale_arguments_emulated() {
    let (eager_losses, eager_params, _, _, _) = five_steps(Target::Emulated, false, false);
    let (losses, params, stats, _, failure) = five_steps(Target::Emulated, true, true);
    let failure = failure.expect("the check let a replay with stale arguments through");
    assert!(failure.starts_with("a CUDA graph gave other results than its ") && failure.contains(" live buffers differ, the first of "),
            "{failure}");
    assert!(stats.checked >= 2 && stats.launched >= 2, "{stats:?}");
    assert_eq!(losses, eager_losses, "losses after the check turned graph mode off");
    assert_eq!(params, eager_params, "trained tensors after the check turned graph mode off");
    eprintln!("caught: {failure}");
}

/// The activation arena: buffers handed over together get one allocation, made again only when
/// one of them is short, and each keeps the largest length it has had.
#[test]
fn activations_come_from_one_arena() {
    let be = Target::Emulated.open(Precision::F32);
    let (mut a, mut b, mut c) = (be.zeros(0), be.zeros(0), be.zeros(0));
    let allocs = |be: &Cuda| be.calls().allocs;
    let start = allocs(&be);
    be.ensure_arena(&mut [(&mut a, 5), (&mut b, 0), (&mut c, 3)]);
    assert_eq!(allocs(&be) - start, 1, "three buffers, one allocation");
    be.fill(&mut a, 5, 1.0);
    be.fill(&mut c, 3, 2.0);
    assert_eq!((be.to_host(&a, 5), be.to_host(&c, 3)), (vec![1.0; 5], vec![2.0; 3]), "parts overlap");
    be.ensure_arena(&mut [(&mut a, 4), (&mut b, 0), (&mut c, 3)]);
    assert_eq!(allocs(&be) - start, 1, "an arena that fits is kept");
    be.ensure_arena(&mut [(&mut a, 2), (&mut b, 7), (&mut c, 1)]);
    assert_eq!(allocs(&be) - start, 2, "a short buffer lays them all out again");
    assert_eq!((be.len(&a), be.len(&b), be.len(&c)), (5, 7, 3), "lengths kept at their largest");
    be.fill(&mut b, 7, 3.0);
    assert_eq!(be.to_host(&b, 7), vec![3.0; 7]);
}

/// Parts start 256 bytes apart at least (cudaMalloc's alignment).
#[test]
fn arena_layout_aligns_parts() {
    use muscle_engine::backend::cuda::runtime::arena_layout;
    assert_eq!(arena_layout(&[3, 0, 100, 64], 4), (vec![0, 256, 256, 768], 1024));
    assert_eq!(arena_layout(&[0], 4), (vec![0], 4));
}

on_both!(changing_batch_shapes, changing_batch_shapes_match_the_cpu_emulated, changing_batch_shapes_match_the_cpu);
/// Training on batches of changing shapes (larger, smaller, then the first again) lays the
/// activation arena out again as batches grow and gives the CPU's losses and logits, dropout
/// (drawn again in the backward) included; with standard attention, then with flash attention.
fn changing_batch_shapes(target: Target) {
    let dir = fixtures().join("tiny-bert");
    let batch_of = |b: usize, t: usize| -> (Vec<i32>, Vec<i32>, Vec<i32>) {
        let ids: Vec<i32> = (0..b * t).map(|i| if i % t >= t - 1 && i % 2 == 0 { 0 } else { 2 + (i * 7 % 19) as i32 }).collect();
        let mask = ids.iter().map(|&x| (x != 0) as i32).collect();
        (ids, mask, (0..b as i32).map(|i| i % 2).collect())
    };
    let shapes = [(3, 5), (4, 8), (2, 3), (3, 5)];
    fn run<B: Backend>(be: B, dir: &Path, batches: &[((Vec<i32>, Vec<i32>, Vec<i32>), (usize, usize))],
                       attention: AttentionImpl) -> (Vec<f32>, Vec<f32>) {
        let mut model = BertClassifier::load(&be, dir, 2, &peft_spec(0.1), 5).unwrap();
        model.set_dropout(true);
        model.set_attention(attention);
        let mut clf = Classifier::new(be, model, AdamWConfig::default());
        let settings = StepSettings { lr: 1e-2, max_grad_norm: 1.0, ga: None };
        let mut losses = Vec::new();
        for ((ids, mask, labels), (b, t)) in batches {
            let batch = BatchRef { ids, mask, labels: Some(labels), b: *b, t: *t };
            losses.push(clf.train_step(&batch, None, &settings).unwrap().loss);
        }
        let ((ids, mask, _), (b, t)) = &batches[1];
        (losses, clf.predict(&BatchRef { ids, mask, labels: None, b: *b, t: *t }).unwrap())
    }
    let batches: Vec<_> = shapes.iter().map(|&(b, t)| (batch_of(b, t), (b, t))).collect();
    for attention in [AttentionImpl::Standard, AttentionImpl::Flash] {
        let (cpu_losses, cpu_logits) = run(Cpu::new(), &dir, &batches, attention);
        let (losses, logits) = run(target.open(Precision::F32), &dir, &batches, attention);
        let worst = assert_close(&format!("changing shapes, {attention:?}: losses"), &losses, &cpu_losses)
            .max(assert_close(&format!("changing shapes, {attention:?}: logits"), &logits, &cpu_logits));
        eprintln!("batches of 3x5, 4x8, 2x3, 3x5 on CUDA, {attention:?} attention, match the CPU: max abs diff {worst:.2e}");
    }
}

on_both!(training_steps, training_steps_match_the_cpu_emulated, training_steps_match_the_cpu);
fn training_steps(target: Target) {
    let open = || target.open(Precision::F32);
    for (name, roberta) in [("tiny-bert", false), ("tiny-roberta", true)] {
        let dir = fixtures().join(name);
        same_training(&format!("{name} full"), &dir, 2, &TrainSpec::full(), false, roberta, open());
        same_training(&format!("{name} LoRA+MSLR"), &dir, 2, &peft_spec(0.0), false, roberta, open());
        same_training(&format!("{name} LoRA+MSLR with dropout"), &dir, 2, &peft_spec(0.1), true, roberta, open());
    }
    let dir = tiny_checkpoint("cuda-parity", false, false);
    same_training("generated BERT, head initialised", &dir, TINY_LABELS, &peft_spec(0.1), true, false, open());
}

/// One MuScleLoRA step (bf16, dropout, gradient alignment) on `be`, after a first step that
/// allocates; returns the driver calls of the second. `clip` 0 turns clipping off.
fn calls_of_a_step(be: Cuda, model: impl FnOnce(&Cuda) -> BertClassifier<Cuda>, b: usize, t: usize, clip: f32)
                   -> muscle_engine::backend::cuda::runtime::Calls {
    let mut model = model(&be);
    model.set_dropout(true);
    let mut clf = Classifier::new(be, model, AdamWConfig::default());
    let ids: Vec<i32> = (0..b * t).map(|i| 2 + (i * 7 % 19) as i32).collect();
    let mask = vec![1i32; b * t];
    let labels: Vec<i32> = (0..b as i32).map(|i| i % 2).collect();
    let ref_labels: Vec<i32> = labels.iter().map(|l| 1 - l).collect();
    let batch = BatchRef { ids: &ids, mask: &mask, labels: Some(&labels), b, t };
    let reference = BatchRef { ids: &ids, mask: &mask, labels: Some(&ref_labels), b, t };
    let ga = Some(GaRule::Gated { min_ref_loss: 0.0, min_ref_grad_norm: 0.0, rho: None });
    let settings = StepSettings { lr: 1e-3, max_grad_norm: clip, ga };
    clf.train_step(&batch, Some(&reference), &settings).unwrap();
    let before = clf.be.calls();
    clf.train_step(&batch, Some(&reference), &settings).unwrap();
    clf.be.calls() - before
}

/// The dry run (no device, nothing computed) makes exactly the calls the emulated backend makes
/// for the same step, so its counts and memory for models too large to emulate can be trusted.
#[test]
fn a_dry_run_makes_the_same_driver_calls() {
    let dir = tiny_checkpoint_with_layers("calls-dry", false, true, 3);
    let load = |be: &Cuda| BertClassifier::load(be, &dir, TINY_LABELS, &peft_spec(0.1), 5).unwrap();
    // clipping off: whether it scales depends on the gradients' values, which a dry run does not have
    let emulated = calls_of_a_step(Target::Emulated.open(Precision::Bf16), load, 3, 5, 0.0);
    let dry = calls_of_a_step(Cuda::dry_run(Precision::Bf16), load, 3, 5, 0.0);
    assert_eq!(dry, emulated, "dry run vs emulated driver calls");
    assert!(emulated.kernels > 0 && emulated.gemms > 0 && emulated.waits > 0, "{emulated:?}");
}

/// The driver calls (kernel launches, GEMMs, copies) of one BERT-base MuScleLoRA step in bf16 at
/// 32 x 64, as `muscle-bench` runs it (LoRA r 8 on q, v without dropout; MSLR on the pooler), counted
/// by a dry run. On a GPU a step this size is bound by the host issuing these, so the bound keeps the
/// count from creeping back up.
#[test]
fn driver_calls_per_bert_base_musclelora_step() {
    use muscle_engine::io::safetensors::Weights;
    use muscle_engine::models::bert::random_tensors;
    use muscle_engine::models::config::{EncoderConfig, Family};
    let cfg: EncoderConfig = serde_json::from_value(serde_json::json!({
        "model_type": "bert", "vocab_size": 30522, "hidden_size": 768, "num_hidden_layers": 12,
        "num_attention_heads": 12, "intermediate_size": 3072, "max_position_embeddings": 512, "type_vocab_size": 2,
        "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
    })).unwrap();
    let weights = Weights::from_tensors(&random_tensors(&cfg, Family::Bert, 2, 0.02, 1, true)).unwrap();
    let spec = TrainSpec {
        mode: TrainMode::Peft,
        lora: Some(LoraSpec { r: 8, alpha: 32.0, dropout: 0.0, targets: vec!["query".into(), "value".into()] }),
        mslr: Some(MslrSpec { band: vec![1.0, 4.0, 8.0, 12.0, 16.0, 20.0, 24.0, 28.0], rank: 1, alpha: 6.0, dropout: 0.0 }),
        train_head: false,
    };
    let model = |be: &Cuda| BertClassifier::from_weights(be, cfg.clone(), Family::Bert, &weights, 2, &spec, 1).unwrap();
    let calls = calls_of_a_step(Cuda::dry_run(Precision::Bf16), model, 32, 64, 1.0);
    eprintln!("BERT-base MuScleLoRA step, bf16, 32 x 64: {} driver calls ({} kernels, {} GEMMs, {} copies), {} waits",
              calls.total(), calls.kernels, calls.gemms, calls.copies, calls.waits);
    // measured when written: 964 (21 of them copies) and 1 wait. Earlier counts: 970 and 5 waits
    // before the losses stayed on the device until the step's one read-back (the dot products) and
    // the aligned gradient's norm came from the alignment's dots; 1,090 before the q, k and v
    // GEMMs and the LoRA branches' GEMMs (but their weight gradients', long reductions into small
    // outputs) ran batched, as they still do with MUSCLE_CUDA_BATCHED=0; 1,118 before an upload of
    // the values an index slot already holds (attention's key mask, every layer) was skipped; 1,169
    // before recurring
    // tables (attention's pointer arrays, the dot products' and clipping's tensor tables) were kept
    // on the device instead of uploaded each time; 1,217 before layer norm's backward applied the
    // dropout of the sublayer below it; 1,265 before the residual sum went into the layer norm's
    // kernel; 1,313 before the q, k and v biases went in one launch; 1,403 before the dropout
    // multiply and attention's backward wrote the bf16 copies frozen layers' GEMMs read; 1,497 before
    // layer norm and GELU wrote theirs; 1,573 before dropout masks were drawn by the kernels applying
    // them. (Before the many-tensor kernels, the fused stores, the in-place attention GEMMs and the
    // shared conversion of q, k and v's input, a count extrapolated from tiny emulated models, with
    // LoRA dropout on, gave 2,558; after them, 1,705.)
    assert!(calls.total() <= 964, "a BERT-base MuScleLoRA step now makes {} driver calls (was 964)", calls.total());
    assert!(calls.waits <= 1, "a step now waits on the device {} times (was 1)", calls.waits);
}
