"""Prints the ratios of scripts/gpu_check.sh: muscle-engine's CUDA steps against PyTorch + PEFT on the
same GPU, same shapes and precision (from the JSON files that muscle-bench and bench_torch.py wrote),
then each variant run (variant-<name>-<family>-<seq>-<precision>.json: an earlier build, a setting
turned off) against the build under test.

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


def fmt(x):
    return "-" if x is None else f"{x:.1f}"


def main():
    out = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else ".gpu/out")
    ours, torch = {}, {}
    for p in sorted(out.glob("ours-*.json")):
        d = load(p)
        if not d:
            continue
        sh = d["shape"]
        for s in d["steps"]:
            ours[(sh["family"], s["mode"], sh["batch"], sh["seq"], d.get("precision", "f32"))] = s
    variants = {}
    for p in sorted(out.glob("variant-*.json")):
        d = load(p)
        if not d:
            continue
        sh, name = d["shape"], p.stem.split("-")[1]
        for s in d["steps"]:
            variants[(name, sh["family"], s["mode"], sh["batch"], sh["seq"], d.get("precision", "f32"))] = s
    for p in sorted(out.glob("torch-*.json")):
        d = load(p)
        if not d:
            continue
        for s in d["steps"]:
            torch[(s["model"], s["mode"], s["batch"], s["seq"], s["dtype"])] = s
    print("| model | step | batch x seq | precision | ours ms | PyTorch ms | speed-up | ours tokens/s | ours memory GiB | PyTorch peak GiB | ours driver calls | host ms issuing | ms waiting |")
    print("| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for key in sorted(ours):
        fam, mode, b, t, prec = key
        o, r = ours[key], torch.get(key)
        mem = o.get("device_memory_bytes")
        print(f"| {fam} | {mode} | {b} x {t} | {prec} | {o['ms']:.1f} | " + (f"{r['ms']:.1f}" if r else "-") + " | "
              + (f"{r['ms'] / o['ms']:.2f}x" if r else "-") + f" | {b * t / (o['ms'] / 1e3):.0f} | "
              + (f"{mem / 2**30:.2f}" if mem else "-") + " | " + (f"{r['peak_memory_gib']:.2f}" if r else "-") + " | "
              + str(o.get("driver_calls") or "-") + " | " + fmt(o.get("host_ms_issuing")) + " | "
              + fmt(o.get("ms_waiting")) + " |")
    print("\nspeed-up = PyTorch ms / ours ms at the same precision (> 1: ours faster). Issue 6's target: the "
          "MuScleLoRA step at >= 4x PyTorch's bf16 step. Our memory is what the context holds after the steps "
          "(cuMemGetInfo), PyTorch's its allocator's peak. Driver calls: kernel launches, GEMMs and copies "
          "of one step (a step that takes less than their count x a few microseconds is launch-bound). Host ms "
          "issuing: the step's time inside the driver and cuBLAS queueing them; ms waiting: blocked on the GPU.")
    if variants:
        print("\n| variant | model | step | batch x seq | precision | variant ms | ours ms | ours / variant | PyTorch ms | variant speed-up | graph launches a step |")
        print("| --- | --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for key in sorted(variants):
            name, fam, mode, b, t, prec = key
            v, o, r = variants[key], ours.get(key[1:]), torch.get(key[1:])
            print(f"| {name} | {fam} | {mode} | {b} x {t} | {prec} | {v['ms']:.1f} | " + (f"{o['ms']:.1f}" if o else "-")
                  + " | " + (f"{o['ms'] / v['ms']:.2f}" if o else "-") + " | " + (f"{r['ms']:.1f}" if r else "-") + " | "
                  + (f"{r['ms'] / v['ms']:.2f}x" if r else "-") + f" | {v.get('graph_launches') or 0} |")
        failures = sorted({(k[0], v["graph_failure"]) for k, v in variants.items() if v.get("graph_failure")}
                          | {("ours", o["graph_failure"]) for o in ours.values() if o.get("graph_failure")})
        for name, why in failures:
            print(f"\n{name}: graph mode turned itself off: {why}")


if __name__ == "__main__":
    main()
