"""PyTorch reference for muscle-bench's LoRA and eval steps, on the CPU, same shapes.

BERT-base-shaped random model (12 layers, hidden 768, dropout 0.1), PEFT LoRA r 8 / alpha 32 on
query and value, head frozen, batch 32 x 64: one step = forward, cross-entropy, backward, clip,
AdamW; eval = forward under no_grad. Prints medians of N after a warm-up, in ms.

Environment: the fixture venv (see scripts/make_fixtures.py: Debian python3-torch 1.13 with
libopenblas0-openmp, transformers 4.38, peft 0.10):
    .cache/venv-fixtures/bin/python scripts/bench_torch_cpu.py [--iters 3]
"""
import argparse
import os
import statistics
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import BertConfig, BertForSequenceClassification


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=64)
    args = ap.parse_args()
    # Debian's torch starts with one intra-op thread here; use every core, as muscle-bench does.
    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    cfg = BertConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                     hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, num_labels=2)
    model = BertForSequenceClassification(cfg)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=32, lora_dropout=0.0, target_modules=["query", "value"]))
    for n, p in model.named_parameters():
        p.requires_grad = "lora_" in n  # the head stays frozen, as the reference code does
    ids = torch.randint(1000, 21000, (args.batch, args.seq))
    ids[:, 0] = 101
    mask = torch.ones_like(ids)
    labels = torch.arange(args.batch) % 2
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-5)

    def step():
        model.train()
        out = model(input_ids=ids, attention_mask=mask, labels=labels)
        opt.zero_grad()
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        opt.step()

    def evaluate():
        model.eval()
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for name, fn in [("lora", step), ("eval", evaluate)]:
        fn()
        times = []
        for _ in range(args.iters):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        print(f"{name} step: {statistics.median(times) * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
