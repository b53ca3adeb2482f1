"""The bench chart: latency and throughput bars per result, drawn with Pillow alone."""

from __future__ import annotations

from pathlib import Path

from mgd_rt.bench.report import SCHEMA, BenchReport


def write_chart(report: BenchReport, path: str | Path) -> Path:
    """A PNG with latency (p50, p90 whisker) and throughput bars per model and batch size (Pillow only)."""
    from PIL import Image, ImageDraw, ImageFont

    rows = [r for r in report.results if r.status == "ok"]
    path = Path(path)
    font = ImageFont.load_default()
    label_w, bar_w, pad, row_h = 330, 360, 16, 22
    width = label_w + 2 * bar_w + 4 * pad
    height = 90 + max(1, len(rows)) * row_h + 40
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    env = report.environment
    where = (env.get("gpu") or {}).get("name") or env.get("cpu", {}).get("model", "")
    d.text((pad, 8), f"mgd-rt bench: {where}", fill="black", font=font)
    d.text((pad, 24), "left: latency per batch call, p50 bar, p90 whisker (ms); right: images/s", fill="gray",
           font=font)
    panels = [("latency p50 ms", lambda r: r.latency_ms["p50"], (70, 110, 190)),
              ("images/s", lambda r: r.images_per_s, (220, 120, 40))]
    top = 60
    for p, (title, value, colour) in enumerate(panels):
        x0 = label_w + pad + p * (bar_w + 2 * pad)
        d.text((x0, top - 16), title, fill="black", font=font)
        vmax = max([value(r) for r in rows] + ([r.latency_ms["p90"] for r in rows] if p == 0 else []) + [1e-12])
        d.line([(x0, top), (x0, top + len(rows) * row_h)], fill="black")
        for i, r in enumerate(rows):
            y = top + i * row_h + 3
            v = value(r)
            w = int(bar_w * 0.85 * v / vmax)
            d.rectangle([x0, y, x0 + max(w, 1), y + row_h - 8], fill=colour)
            end = x0 + max(w, 1)
            if p == 0:  # p90 whisker: the spread a user sees
                xw = x0 + int(bar_w * 0.85 * r.latency_ms["p90"] / vmax)
                d.line([(x0 + w, y + (row_h - 8) // 2), (xw, y + (row_h - 8) // 2)], fill="black")
                d.line([(xw, y), (xw, y + row_h - 8)], fill="black")
                end = max(end, xw)
            d.text((end + 4, y + 2), f"{v:.4g}", fill="black", font=font)
    for i, r in enumerate(rows):
        d.text((pad, top + i * row_h + 5), f"{r.label[:30]} {r.runs_on} {r.precision} B={r.batch}", fill="black",
               font=font)
    if not rows:
        d.text((pad, top + 4), "no result ran", fill="red", font=font)
    d.text((pad, height - 22), f"{SCHEMA}; raw timings in the JSON", fill="gray", font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="PNG")
    return path


__all__ = ["write_chart"]
