"""The whole CUDA path in one command (issue #17): tests, benchmarks, training, evaluation, NCCL.

    bash bench/device_check.sh [--out DIR] [--quick] [--only STEP,...]

Steps (each a child process with its own time limit; the whole is sized for < 8 min on one GPU):

==============  ==================================================================================
cuda_tests      ``METAHMR_TEST_DEVICE=cuda pytest -q`` on the device-relevant test files
train_step      ``bench/train_step.py`` at batch 30 (README), ``--amp off`` and ``bf16``, ResNet-50
                and HRNet-W48: s/iter, img/s, meta/plain ratio, peak memory (``--compile``:
                also ResNet-50 bf16 with the torch.compile'd backbone, opt-in)
tto             ``bench/tto.py`` at batch 20, batch vs sample mode
world           the synthetic world the next steps use (``python -m datasets.synthetic``)
train           the seed README training command on that world, a few steps
eval_viz        ``eval_cliff.py --viz`` on the trained checkpoint (pyrender; EGL on a GPU machine)
torchrun_nccl   ``torchrun --nproc_per_node=1 train.py`` (NCCL on CUDA)
==============  ==================================================================================

Without CUDA every step that needs it is reported as skipped. ``--quick`` runs every step it can
at toy sizes (ResNet-18, tiny batches and world) on whatever device there is: a dry run of this
script itself on a CPU machine. Prints one table and writes ``DIR/device_check.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
TEST_FILES = ["tests/test_models.py", "tests/test_inner.py", "tests/test_tto.py",
              "tests/test_train.py", "tests/test_evaluation.py", "tests/test_demo.py",
              "tests/test_renderer.py"]
README_TRAIN = ["--batch_size", "30", "--test_epochs", "5", "--bbox_type", "rect",
                "--inner_lr", "1e-5", "--outer_lr", "1e-4", "--after_innerlr", "1e-5",
                "--inner_step", "1", "--test_val_step", "14", "--first_order",
                "--backbone", "resnet", "--adapt_val_step", "--model", "cliff", "--syn_occ",
                "--num_epochs", "30", "--summary_steps", "1000"]


def _set(argv: list[str], option: str, value: str) -> list[str]:
    """``argv`` with ``option``'s value replaced."""
    out = list(argv)
    out[out.index(option) + 1] = value
    return out


def plan(a, cuda: bool) -> list[dict]:
    """The steps: name, command, time limit, whether it needs CUDA, the JSON it writes."""
    q, out, dev = a.quick, a.out, "cuda" if cuda else "cpu"
    world, logs = out / "world", out / "logs"
    net = ["--backbone", "resnet18"] if q else []
    steps = [{"name": "cuda_tests", "cuda": True, "limit": 240,
              "cmd": [PY, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *TEST_FILES],
              "env": {"METAHMR_TEST_DEVICE": "cuda"}}]
    for backbone in (["resnet18"] if q else ["resnet", "hrnet"]):
        for amp in ("off", "bf16"):
            js = out / f"train_step_{backbone}_{amp}.json"
            steps.append({"name": f"train_step_{backbone}_{amp}", "cuda": not q, "limit": 150,
                          "json": js, "cmd": [
                              PY, "bench/train_step.py", "--backbone", backbone, "--device", dev,
                              "--batch_size", "2" if q else "30", "--amp", amp,
                              "--modes", "plain,meta_fo_sample",
                              "--iters", "1" if q else "5", "--warmup", "0" if q else "2",
                              "--no_interleave", "--json", str(js)]})
    if a.compile:       # opt-in: the torch.compile'd backbone, against the plain runs above
        js = out / "train_step_compile.json"
        steps.append({"name": "train_step_compile", "cuda": not q, "limit": 300, "json": js,
                      "cmd": [PY, "bench/train_step.py", *(net or ["--backbone", "resnet"]),
                              "--device", dev, "--batch_size", "2" if q else "30",
                              "--amp", "off" if q else "bf16", "--modes", "plain,meta_fo_sample",
                              "--iters", "1" if q else "5", "--warmup", "1" if q else "3",
                              "--no_interleave", "--compile", "--json", str(js)]})
    js = out / "tto.json"
    steps.append({"name": "tto_batch_vs_sample", "cuda": not q, "limit": 150, "json": js,
                  "cmd": [PY, "bench/tto.py", *(net or ["--backbone", "resnet"]), "--device", dev,
                          "--batch_size", "2" if q else "20", "--iters", "1" if q else "2",
                          "--warmup", "0" if q else "1", *(["--test_val_step", "1"] if q else []),
                          "--json", str(js)]})
    steps.append({"name": "world", "cuda": not q, "limit": 180, "cmd": [
        PY, "-m", "datasets.synthetic", "--root", str(world),
        *(["--tiny"] if q else ["--n_train", "64", "--n_test", "8"]),
        "--weights", "resnet18" if q else "resnet"]})
    train = README_TRAIN + ["--data_root", str(world), "--log_dir", str(logs), "--device", dev,
                            "--max_steps", "2" if q else "20", "--num_workers", "2",
                            "--eval_datasets", ""]
    if q:
        train = _set(_set(train, "--batch_size", "2"), "--backbone", "resnet18") + [
            "--crop_scale", "0.25"]
    steps.append({"name": "train_readme", "cuda": not q, "limit": 180,
                  "cmd": [PY, "train.py", "--name", "readme", *train]})
    ckpt = logs / "readme" / "checkpoints" / "current.pt"
    js = out / "eval_viz.json"
    steps.append({"name": "eval_viz", "cuda": not q, "limit": 150, "json": js, "cmd": [
        PY, "eval_cliff.py", "--data_root", str(world), "--checkpoint", str(ckpt),
        "--dataset", "3dpw", "--bbox_type", "rect", *(net or ["--backbone", "resnet"]),
        "--inner_lr", "1e-5", "--after_innerlr", "1e-5", "--adapt_val_step",
        "--batch_size", "2" if q else "8", "--max_batches", "1", "--num_workers", "0",
        "--device", dev, "--viz", "--viz_dir", str(out / "viz"), "--json_out", str(js),
        *(["--crop_scale", "0.25", "--test_val_step", "1"] if q else [])]})
    steps.append({"name": "torchrun_nccl" if cuda else "torchrun_gloo", "cuda": not q,
                  "limit": 150, "cmd": [
                      PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
                      "train.py", "--name", "torchrun",
                      *_set(train, "--max_steps", "2" if q else "5")]})
    for s in steps:     # toy sizes, but on a CPU (possibly a loaded one)
        s["limit"] *= 3 if q else 1
    return [s for s in steps if not a.only or any(s["name"].startswith(o) for o in a.only)]


def run_step(step: dict, cuda: bool, log_dir: Path) -> dict:
    """Run one step; its status, seconds, figures and the tail of its output."""
    if step["cuda"] and not cuda:
        return {"status": "skipped", "why": "needs CUDA (no CUDA device here)", "seconds": 0.0}
    log = log_dir / f"{step['name']}.log"
    env = dict(os.environ, **step.get("env", {}))
    t0 = time.time()
    try:
        with open(log, "w") as fh:
            rc = subprocess.run(step["cmd"], cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                timeout=step["limit"]).returncode
    except subprocess.TimeoutExpired:
        rc = "timeout"
    res = {"status": "ok" if rc == 0 else "failed", "returncode": rc,
           "seconds": round(time.time() - t0, 1), "command": " ".join(map(str, step["cmd"])),
           "log": str(log)}
    if rc != 0:
        res["tail"] = log.read_text()[-2000:]
    if step["name"] == "cuda_tests":
        res["summary"] = (log.read_text().strip().splitlines() or [""])[-1]
    if rc == 0 and step.get("json") and Path(step["json"]).is_file():
        res["figures"] = figures(step["name"], json.loads(Path(step["json"]).read_text()))
    return res


def figures(name: str, data: dict) -> dict:
    """The few figures of a benchmark's JSON that go into the table."""
    if name.startswith("train_step"):
        m = data["modes"]
        return {k: {"s_per_iter": round(v["s_per_iter"], 4),
                    "images_per_s": round(v["images_per_s"], 1),
                    "ratio_to_plain": round(v["ratio_to_plain"], 2),
                    "peak_mb": round(v["peak_mb"])} for k, v in m.items()}
    if name.startswith("tto"):
        return {k: {"images_per_s": round(v["images_per_s"], 2), "peak_mb": round(v["peak_mb"])}
                for k, v in data["modes"].items()}
    m = data.get("metrics", data)
    out = {k: round(m[k], 2) for k in ("MPJPE", "PA-MPJPE", "PVE", "mean_tto_steps",
                                       "tto_s_per_image") if isinstance(m.get(k), float)}
    if name == "eval_viz":   # the GL platform pyrender gets here (EGL expected on a GPU machine)
        from utils.renderer import select_gl_platform
        out["gl"] = select_gl_platform() or "none (software rasteriser)"
    return out


def short(res: dict) -> str:
    """One line of figures for the table."""
    f = res.get("figures")
    if res["status"] == "skipped":
        return res["why"]
    if res.get("summary"):
        return res["summary"]
    if not f:
        return "" if res["status"] == "ok" else str(res.get("tail", "")).strip()[-100:]
    if all(isinstance(v, dict) for v in f.values()):
        return "; ".join(f"{k}: " + ", ".join(f"{kk}={vv}" for kk, vv in v.items())
                         for k, v in f.items())
    return ", ".join(f"{k}={v}" for k, v in list(f.items())[:6])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=REPO / "device_check",
                   help="folder for the JSON, the logs, the world and the runs")
    p.add_argument("--quick", action="store_true",
                   help="toy sizes on any device (a dry run of this script on the CPU)")
    p.add_argument("--compile", action="store_true",
                   help="also time train_step with the torch.compile'd backbone (ResNet-50, "
                        "bf16; a few minutes more)")
    p.add_argument("--only", type=lambda s: [x for x in s.split(",") if x], default=[],
                   help="comma-separated step names (or prefixes: train_step, tto, ...)")
    a = p.parse_args(argv)
    import torch
    cuda = torch.cuda.is_available()
    a.out = a.out.resolve()
    (a.out / "logs_steps").mkdir(parents=True, exist_ok=True)
    t0, results = time.time(), {}
    for step in plan(a, cuda):
        print(f"[{time.time() - t0:6.0f} s] {step['name']} ...", flush=True)
        results[step["name"]] = run_step(step, cuda, a.out / "logs_steps")
    device = torch.cuda.get_device_name(0) if cuda else "cpu (no CUDA device)"
    total = time.time() - t0
    print(f"\ndevice check on {device}{' (--quick)' if a.quick else ''}: {total:.0f} s")
    print(f"{'step':<26}{'status':<9}{'s':>7}  figures")
    for name, r in results.items():
        print(f"{name:<26}{r['status']:<9}{r['seconds']:>7.1f}  {short(r)}")
    report = {"device": device, "quick": a.quick, "total_s": round(total, 1),
              "torch": torch.__version__, "steps": results}
    path = a.out / "device_check.json"
    path.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    print(f"wrote {path}")
    return 0 if all(r["status"] != "failed" for r in results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
