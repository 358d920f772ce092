"""Draw quality-versus-time curves (``<run-dir>/curve.json`` from ``models.train --curve-every-s``)
as one PNG, with Pillow alone:

    python -m models.curves runs/gan-baseline/curve.json --label "shipped recipe" --out docs/gan-curves.png

x: minutes of training (the probes' time excluded); y: the curve's value (FID, lower is better)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (23, 190, 207)]
W, H, LEFT, RIGHT, TOP, BOTTOM = 720, 420, 70, 20, 20, 60


def draw(curves: list[tuple[str, list[dict]]], title: str) -> Image.Image:
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    xs = [p["train_s"] / 60 for _, pts in curves for p in pts] or [0.0, 1.0]
    ys = [p["value"] for _, pts in curves for p in pts] or [0.0, 1.0]
    x_max, y_min, y_max = max(xs) or 1.0, min(ys), max(ys)
    y_min, y_max = (y_min - 1, y_max + 1) if y_max == y_min else (y_min, y_max)

    def at(x: float, y: float) -> tuple[float, float]:
        return (LEFT + (W - LEFT - RIGHT) * x / x_max, TOP + (H - TOP - BOTTOM) * (1 - (y - y_min) / (y_max - y_min)))

    d.rectangle([LEFT, TOP, W - RIGHT, H - BOTTOM], outline="black")
    for i in range(5):  # ticks
        x, y = x_max * i / 4, y_min + (y_max - y_min) * i / 4
        px, _ = at(x, y_min)
        _, py = at(0, y)
        d.line([px, H - BOTTOM, px, H - BOTTOM + 5], fill="black")
        d.text((px - 10, H - BOTTOM + 8), f"{x:.0f}", fill="black")
        d.line([LEFT - 5, py, LEFT, py], fill="black")
        d.text((5, py - 6), f"{y:.1f}", fill="black")
    d.text((W / 2 - 60, H - 25), "minutes of training", fill="black")
    d.text((LEFT + 5, TOP + 5), title, fill="black")
    for k, (label, pts) in enumerate(curves):
        colour = COLOURS[k % len(COLOURS)]
        line = [at(p["train_s"] / 60, p["value"]) for p in pts]
        if len(line) > 1:
            d.line(line, fill=colour, width=2)
        for x, y in line:
            d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
        d.text((W - RIGHT - 230, TOP + 8 + 14 * (k + 1)), f"- {label}", fill=colour)
    return img


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m models.curves", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("curves", nargs="+", type=Path, help="curve.json files")
    p.add_argument("--label", action="append", default=[], help="one per curve, in order (default: the folder name)")
    p.add_argument("--title", default="FID of 2,000 samples (shipped classifier's features)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    labels = args.label + [c.parent.name for c in args.curves[len(args.label):]]
    curves = [(label, json.loads(c.read_text())) for label, c in zip(labels, args.curves)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    draw(curves, args.title).save(args.out)
    for label, pts in curves:
        print(f"{label}: " + ", ".join(f"{pt['train_s'] / 60:.1f} min {pt['value']}" for pt in pts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
