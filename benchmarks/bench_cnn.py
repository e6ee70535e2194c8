"""Benchmark: slice-level CNN training throughput through the real data pipeline (instances from the
cropping stage, augmentation, normalisation, loss, optimiser) next to the pure forward + backward speed
of the same model on random tensors already in memory. The data pipeline may cost at most 20 %.

Usage: .venv/bin/python benchmarks/bench_cnn.py [--params params/synthetic.yaml] [--backbone resnet18]
       [--steps 20] [--device auto|cpu|cuda]
Prints images per second for both, the overhead, and on CUDA the peak GPU memory and epoch time.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from hcc25d import cnn, config, crop25d
from hcc25d.io import PROJECT_ROOT


def throughput(model, x, y, steps: int, amp: bool, device: str, lr: float = 1e-3):
    """Training steps per second on one batch already on the device (3 warm-up steps first): returns
    ``(images per second, peak GPU memory in GiB or NaN on a CPU)``."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)

    def step():
        with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=amp):
            loss = F.binary_cross_entropy_with_logits(model(x).float().squeeze(1), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    model.train()
    for _ in range(3):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    rate = steps * len(x) / (time.perf_counter() - t0)
    return rate, (torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan"))


def stem_timing(device: str, cube: int, batch: int = 8, reps: int = 5) -> None:
    """The 3D baseline's 7³ stem with the arterial-excess channel: one 4-channel convolution against
    :class:`hcc25d.cnn3d.SplitConv3d` (three phases + one channel, summed) and a 3-channel one."""
    from hcc25d import cnn3d

    for label, conv, ch in (("Conv3d, 3 channels (the paper's input)", torch.nn.Conv3d(3, 16, 7, 2, 3, bias=False), 3),
                            ("Conv3d, 4 channels", torch.nn.Conv3d(4, 16, 7, 2, 3, bias=False), 4),
                            ("SplitConv3d, 3 + 1 channels", cnn3d.SplitConv3d(4, 16, 7, 2, 3), 4)):
        conv = conv.to(device)
        x = torch.rand(batch, ch, cube, cube, cube, device=device)
        conv(x).sum().backward()  # warm-up
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(reps):
            conv(x).sum().backward()
        if device == "cuda":
            torch.cuda.synchronize()
        print(f"3D stem, {label}: {1000 * (time.perf_counter() - t0) / reps:7.1f} ms forward+backward "
              f"(batch {batch}, {cube}³)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--params", default="params/synthetic.yaml")
    ap.add_argument("--backbone", default=None)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--synthetic-data", action="store_true", help="random instances instead of a run's crops")
    a = ap.parse_args()
    cfg = config.load(PROJECT_ROOT / a.params)
    name = a.backbone or cfg.cnn.backbones[0]
    device = cnn.torch_device("cpu" if a.device == "cpu" else "auto")
    bs, size = cfg.cnn.batch_size, cfg.crop.image_size
    if a.synthetic_data:
        x = np.random.default_rng(0).random((bs * a.steps, 3, size, size)).astype(np.float16)
        y = (np.arange(len(x)) % 2).astype(np.float32)
    else:
        bags = crop25d.load_bags(PROJECT_ROOT / "results" / cfg.run / "crop25d")
        x, y = bags.x, bags.index["label"].to_numpy().astype(np.float32)
    n = min(len(x), bs * a.steps)
    x, y = x[:n], y[:n]
    amp = device == "cuda" and cfg.cnn.amp
    model = cnn.build_model(name, "none")[0].to(device)
    xr = torch.randn(bs, 3, size, size, device=device)
    yr = torch.rand(bs, device=device)
    pure, _ = throughput(model, xr, yr, a.steps, amp, device)
    # the real pipeline: train_model on the crops (one epoch over n images, no validation split)
    prm = cfg.cnn.model_copy(update=dict(epochs=1, val_fraction=0.0, patience=99, batch_size=bs))
    t0 = time.perf_counter()
    _, log = cnn.train_model(lambda: cnn.build_model(name, "none")[0], x, y, np.arange(len(x)).astype(str), prm,
                             seed=0, device=device, progress=False)
    real = float(log["images_per_s"].iloc[-1])
    print(f"backbone {name}, {size} px, batch {bs}, device {device}"
          + (f" ({torch.cuda.get_device_name(0)}, AMP {amp})" if device == "cuda" else f" ({torch.get_num_threads()} threads)"))
    print(f"pure forward+backward on random tensors in memory: {pure:8.1f} images/s")
    print(f"training through the data pipeline (1 epoch, {n} images): {real:8.1f} images/s  "
          f"(epoch of the run's {len(bags.index) if not a.synthetic_data else n} instances: "
          f"{(len(bags.index) if not a.synthetic_data else n) / real:.1f} s)")
    print(f"data-pipeline overhead: {100 * (1 - real / pure):.1f} % (target: at most 20 %)")
    if device == "cuda":
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
    print(f"wall time of the pipeline epoch: {time.perf_counter() - t0:.1f} s")
    stem_timing(device, cfg.crop.cube_size)


if __name__ == "__main__":
    main()
