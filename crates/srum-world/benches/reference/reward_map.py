"""The reference SRUM reward-map rule in NumPy, and its check against PyTorch-computed fixtures.

`python reward_map.py [FIXTURES_DIR]` reproduces every map of `reward_maps_golden.json` from
`reward_records.jsonl` (default folder: `crates/srum/tests/data`) and exits non-zero
when any value is off by more than 1e-6.
"""

import json
import math
import sys
from numbers import Real
from pathlib import Path

import numpy as np


def pixel_bounds(bbox, width, height):
    """`(x0, y0, x1, y1)` with exclusive ends, or None for an invalid box: coordinates truncated
    toward zero (Python `int()`), empty or reversed boxes dropped, then clamped to the image."""
    if len(bbox) != 4 or not all(
        isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(v) for v in bbox
    ):
        return None
    x0, y0, x1, y1 = (int(v) for v in bbox)
    if x0 >= x1 or y0 >= y1:
        return None
    x0, x1 = (min(max(v, 0), width) for v in (x0, x1))
    y0, y1 = (min(max(v, 0), height) for v in (y0, y1))
    if x0 >= x1 or y0 >= y1:
        return None
    return x0, y0, x1, y1


def compose(global_score, regions, width, height):
    """The `height x width` f32 map: 0.5 everywhere, `max(current, (s + 1) / 2)` inside each valid
    region box, all times `(g + 1) / 2` (`g` = 0 when absent). `regions`: `(bbox, score)` pairs."""
    m = np.full((height, width), 0.5, dtype=np.float32)
    for bbox, score in regions:
        b = pixel_bounds(bbox, width, height)
        if b is None:
            continue
        x0, y0, x1, y1 = b
        box = m[y0:y1, x0:x1]
        np.maximum(box, np.float32((score + 1) / 2), out=box)
    m *= np.float32(((global_score or 0.0) + 1) / 2)
    return m


def _axis(n_in, n_out):
    """Source indices and weights along one axis, as ATen's `upsample_bilinear2d` computes them in
    f32 with `align_corners=False` (scale = in / out, negative sources clamped to 0)."""
    scale = np.float32(n_in) / np.float32(n_out)
    src = np.maximum(
        scale * (np.arange(n_out, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5), 0
    )
    i0 = np.minimum(src.astype(np.int64), n_in - 1)
    i1 = np.where(i0 < n_in - 1, i0 + 1, i0)
    l1 = (src - i0.astype(np.float32)).astype(np.float32)
    return i0, i1, np.float32(1) - l1, l1


def resize(m, height, width):
    """`F.interpolate(m[None, None], (height, width), mode="bilinear", align_corners=False)`."""
    y0, y1, hy0, hy1 = _axis(m.shape[0], height)
    x0, x1, wx0, wx1 = _axis(m.shape[1], width)

    def rows(y):
        return wx0 * m[y][:, x0] + wx1 * m[y][:, x1]

    return hy0[:, None] * rows(y0) + hy1[:, None] * rows(y1)


def judgement(record):
    """Global score and `(bbox, score)` regions of a training-format record."""
    g, regions = 0.0, []
    for r in record["vlm_rewards"]:
        if r.get("object") == "global_layout_reward":
            g = r["score"]
        else:
            regions.append((r["bbox"], r["score"]))
    return g, regions


def check(fixtures):
    """Worst absolute difference from the golden maps; raises when above 1e-6."""
    fixtures = Path(fixtures)
    records = [
        json.loads(line) for line in (fixtures / "reward_records.jsonl").read_text().splitlines()
    ]
    golden = json.loads((fixtures / "reward_maps_golden.json").read_text())["maps"]
    worst = 0.0
    for case in golden:
        record = records[case["record"]]
        (w, h), (gh, gw) = case["image_size"], case["latent_grid"]
        got = resize(compose(*judgement(record), w, h), gh, gw).ravel()
        err = float(np.max(np.abs(got.astype(np.float64) - np.asarray(case["map"]))))
        if err > 1e-6:
            raise AssertionError(f"record {case['record']} grid {gh}x{gw}: max abs error {err:e}")
        worst = max(worst, err)
    return worst, len(golden)


if __name__ == "__main__":
    default = Path(__file__).resolve().parents[3] / "srum" / "tests" / "data"
    worst, n = check(sys.argv[1] if len(sys.argv) > 1 else default)
    print(f"reward maps: {n} golden maps reproduced, worst abs error {worst:.1e} (bound 1e-6)")
