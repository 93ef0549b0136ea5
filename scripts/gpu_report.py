"""Prints the ratios of scripts/gpu_check.sh: muscle-engine's CUDA steps against PyTorch + PEFT on the
same GPU, same shapes (from the JSON files that muscle-bench and bench_torch.py wrote).

    python scripts/gpu_report.py .gpu/out
"""
import json
import pathlib
import sys


def load(path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def main():
    out = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else ".gpu/out")
    ours, torch = {}, {}
    for p in sorted(out.glob("ours-*.json")):
        d = load(p)
        if not d:
            continue
        fam = d["shape"]["family"]
        for s in d["steps"]:
            ours[(fam, s["mode"], d["shape"]["batch"], d["shape"]["seq"])] = (s["ms"], s.get("device_memory_bytes"))
    for p in sorted(out.glob("torch-*.json")):
        d = load(p)
        if not d:
            continue
        for s in d["steps"]:
            torch[(s["model"], s["mode"], s["batch"], s["seq"], s["dtype"])] = s
    print("| model | step | batch x seq | ours f32 ms | PyTorch bf16 ms | PyTorch f32 ms | speed-up vs bf16 | vs f32 | ours tokens/s | ours memory GiB | PyTorch bf16 peak GiB |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for (fam, mode, b, t), (ms, mem) in sorted(ours.items()):
        tb = torch.get((fam, mode, b, t, "bf16"))
        tf = torch.get((fam, mode, b, t, "f32"))
        cell = lambda r: f"{r['ms']:.1f}" if r else "-"
        ratio = lambda r: f"{r['ms'] / ms:.2f}x" if r else "-"
        gib = f"{mem / 2**30:.2f}" if mem else "-"
        print(f"| {fam} | {mode} | {b} x {t} | {ms:.1f} | {cell(tb)} | {cell(tf)} | {ratio(tb)} | {ratio(tf)} | "
              f"{b * t / (ms / 1e3):.0f} | {gib} | {tb['peak_memory_gib']:.2f} |" if tb else
              f"| {fam} | {mode} | {b} x {t} | {ms:.1f} | - | {cell(tf)} | - | {ratio(tf)} | {b * t / (ms / 1e3):.0f} | {gib} | - |")
    print("\nspeed-up = PyTorch ms / ours ms (> 1: ours faster). Issue 6's target: the MuScleLoRA step at >= 4x vs bf16.")


if __name__ == "__main__":
    main()
