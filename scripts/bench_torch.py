"""PyTorch + PEFT reference for `muscle-bench --device cuda`: the same steps, shapes and FLOPs on one GPU.

Model: BERT-base or RoBERTa-base shape, random init (12 layers, hidden 768, dropout 0.1), PEFT LoRA
r 8 / alpha 32 on query and value, head frozen. Modes, as muscle-bench defines them:
  lora        forward, cross-entropy, backward, clip, AdamW
  musclelora  LoRA + the MSLR layer on the pooler / classifier dense (band 1,4,...,28, k 1, alpha_m 6)
              + gradient alignment: a second forward/backward on a reference batch and the per-tensor
              projection a = |g.r| / |r|^2 r of the reference code (gated rule), then clip and AdamW
  eval        forward under no_grad
Precision: --dtype bf16 = autocast bf16 compute with f32 weights (the usual mixed precision);
--dtype f32 = f32 with TF32 off (what muscle-engine's f32 CUDA backend computes).
Prints ms per step (median after warm-up), tokens/s and peak memory, and writes --json.

    python scripts/bench_torch.py --model bert --dtype bf16 --shapes 32x64,32x128 --json out.json
"""
import argparse
import json
import math
import os
import statistics
import time

import torch
from torch import nn

BAND = [1.0, 4.0, 8.0, 12.0, 16.0, 20.0, 24.0, 28.0]


class MSLRLinear(nn.Module):
    """y = W0 x + b0 + (alpha_m / k) R (s * (L x)): ALGORITHM.md section 2, W0 and b0 frozen."""

    def __init__(self, base: nn.Linear, band, k: int, alpha_m: float):
        super().__init__()
        self.base_layer = base
        nk = len(band) * k
        self.mslr_L = nn.Linear(base.in_features, nk, bias=False, device=base.weight.device)
        self.mslr_R = nn.Linear(nk, base.out_features, bias=False, device=base.weight.device)
        for lin in (self.mslr_L, self.mslr_R):
            nn.init.kaiming_uniform_(lin.weight, a=math.sqrt(5))
        self.register_buffer("s", torch.tensor([v for v in band for _ in range(k)], device=base.weight.device))
        self.scaling = alpha_m / k

    def forward(self, x):
        return self.base_layer(x) + self.scaling * self.mslr_R(self.s * self.mslr_L(x))


def build(model_kind: str, mslr: bool, device):
    from peft import LoraConfig, get_peft_model
    from transformers import (BertConfig, BertForSequenceClassification, RobertaConfig,
                              RobertaForSequenceClassification)

    common = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                  hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, num_labels=2)
    if model_kind == "bert":
        model = BertForSequenceClassification(BertConfig(**common))
    else:
        model = RobertaForSequenceClassification(RobertaConfig(vocab_size=50265, max_position_embeddings=514,
                                                               type_vocab_size=1, pad_token_id=1, **common))
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=32, lora_dropout=0.0, target_modules=["query", "value"]))
    inner = model.base_model.model
    if mslr:
        parent = inner.bert.pooler if model_kind == "bert" else inner.classifier
        parent.dense = MSLRLinear(parent.dense, BAND, 1, 6.0)
    model.to(device)
    for n, p in model.named_parameters():
        p.requires_grad = "lora_" in n or "mslr_" in n  # the head stays frozen, as the reference code does
    return model


def ga_project(params, g_saved, min_ref_loss, ref_loss, min_ref_grad_norm=5e-7):
    """The reference code's gated rule with the gate open: each tensor's gradient becomes the
    projection of the training gradient g onto the reference gradient r, a = |g.r| / |r|^2 r."""
    norms = [p.grad.norm() for p in params]
    n_ref = torch.stack(norms).mean()
    if not (n_ref > min_ref_grad_norm and ref_loss > min_ref_loss):
        for p, g in zip(params, g_saved):
            p.grad.copy_(g)
        return
    for p, g in zip(params, g_saved):
        r = p.grad
        coef = (g * r).sum().abs() / (r * r).sum().clamp_min(1e-30)
        p.grad = coef * r


def gemm_peak(dtype, n=8192):
    a = torch.randn(n, n, device="cuda", dtype=dtype)
    b = torch.randn(n, n, device="cuda", dtype=dtype)
    for _ in range(2):
        a @ b
    torch.cuda.synchronize()
    best = 1e9
    for _ in range(5):
        t = time.perf_counter()
        a @ b
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=["bert", "roberta"], default="bert")
    ap.add_argument("--dtype", choices=["bf16", "f32"], default="bf16")
    ap.add_argument("--shapes", default="32x64,32x128")
    ap.add_argument("--modes", default="lora,musclelora,eval")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--json")
    args = ap.parse_args()
    device = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    amp = args.dtype == "bf16"
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}, {args.model}, {args.dtype}")
    peaks = {"f32_gflops": gemm_peak(torch.float32), "bf16_gflops": gemm_peak(torch.bfloat16)}
    print(f"GEMM 8192^3: f32 {peaks['f32_gflops']:.0f} GFLOP/s, bf16 {peaks['bf16_gflops']:.0f} GFLOP/s")
    rows = []
    for shape in args.shapes.split(","):
        b, t = (int(x) for x in shape.split("x"))
        vocab = 30522 if args.model == "bert" else 50265
        ids = torch.randint(1000, vocab - 1000, (b, t), device=device)
        ids[:, 0] = 101 if args.model == "bert" else 0
        ref_ids = (ids + 3).clamp_max(vocab - 1)
        mask = torch.ones_like(ids)
        labels = torch.arange(b, device=device) % 2
        for mode in args.modes.split(","):
            model = build(args.model, mode == "musclelora", device)
            params = [p for p in model.parameters() if p.requires_grad]
            opt = torch.optim.AdamW(params, lr=2e-5)

            def loss_of(x):
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                    return model(input_ids=x, attention_mask=mask, labels=labels).loss

            def step():
                model.train()
                opt.zero_grad(set_to_none=True)
                loss_of(ids).backward()
                if mode == "musclelora":
                    g_saved = [p.grad.detach().clone() for p in params]
                    for p in params:
                        p.grad = None
                    ref_loss = loss_of(ref_ids)
                    ref_loss.backward()
                    ga_project(params, g_saved, 0.4, ref_loss.item())
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()

            def evaluate():
                model.eval()
                with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                    model(input_ids=ids, attention_mask=mask)

            fn = evaluate if mode == "eval" else step
            for _ in range(3):
                fn()
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            times = []
            for _ in range(args.iters):
                t0 = time.perf_counter()
                fn()
                torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
            ms = statistics.median(times) * 1e3
            mem = torch.cuda.max_memory_allocated() / 2**30
            row = {"model": args.model, "dtype": args.dtype, "mode": mode, "batch": b, "seq": t, "ms": ms,
                   "tokens_per_s": b * t / (ms / 1e3), "peak_memory_gib": mem}
            rows.append(row)
            print(f"{args.model} {mode} {b}x{t} {args.dtype}: {ms:.1f} ms, {row['tokens_per_s']:.0f} tokens/s, "
                  f"peak {mem:.2f} GiB")
            del model, opt
            torch.cuda.empty_cache()
    if args.json:
        out = {"torch": torch.__version__, "device": torch.cuda.get_device_name(), **peaks, "steps": rows}
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(out, f, indent=2)
        os.replace(tmp, args.json)


if __name__ == "__main__":
    main()
