"""Markdown table of our peer's and PyTorch's timings (the JSONs of benches/peer.rs and peer.py).

table.py OURS.json PYTORCH.json --machine TEXT
"""

import argparse
import datetime
import json


def gflops(flops, seconds, peak):
    if not flops:
        return "—"
    rate = flops / seconds
    return f"{rate / 1e9:.1f} G ({100 * rate / peak:.1f}%)" if peak else f"{rate / 1e9:.1f} G"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("ours")
    ap.add_argument("torch")
    ap.add_argument("--machine", required=True)
    a = ap.parse_args()
    with open(a.ours) as f:
        ours = json.load(f)
    with open(a.torch) as f:
        peer = json.load(f)

    peaks = {k: j.get("matmul_peak_flops") for k, j in (("ours", ours), ("PyTorch", peer))}
    peak = max((p for p in peaks.values() if p), default=None)
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"Machine: {a.machine}; {date}")
    print(
        f"Ours: {ours.get('implementation', 'srum')}, device {ours.get('device')}, "
        f"threads {ours.get('threads')}. PyTorch: {peer.get('implementation')}, "
        f"device {peer.get('device')}, threads {peer.get('threads')}."
    )
    measured = ", ".join(f"{k} {p / 1e9:.1f} GFLOP/s" for k, p in peaks.items() if p)
    if peak:
        print(f"Peak f32 matmul (measured: {measured}); percentages are of the larger.")
    eq = peer.get("equivalence")
    if eq:
        print(
            f"Same inputs, PyTorch vs ours: velocity max abs diff {eq['velocity_max_abs']:.1e}, "
            f"logits {eq['logits_max_abs']:.1e} (bound {eq.get('tolerance', 1e-4):g}): "
            + ("passed" if eq["passed"] else "FAILED")
        )
    print()
    print(
        "| operation | ours (s) | PyTorch (s) | ratio ours/PyTorch "
        "| ours FLOP/s (% of peak) | PyTorch FLOP/s (% of peak) |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for op in dict.fromkeys([*ours["ops"], *peer["ops"]]):
        o, p = ours["ops"].get(op), peer["ops"].get(op)
        # FLOPs depend only on the model config and the operation, so either side's count serves.
        flops = (o or {}).get("flops") or (p or {}).get("flops")
        cells = [
            f"{o['seconds']:.4g}" if o else "—",
            f"{p['seconds']:.4g}" if p else "—",
            f"{o['seconds'] / p['seconds']:.2f}" if o and p else "—",
            gflops(flops, o["seconds"], peak) if o else "—",
            gflops(flops, p["seconds"], peak) if p else "—",
        ]
        print(f"| {op} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
