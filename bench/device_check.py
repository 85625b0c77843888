"""The whole CUDA path in one command (issue #17): tests, benchmarks, training, evaluation, NCCL.

    bash bench/device_check.sh [--out DIR] [--quick] [--compile] [--only STEP,...]

The steps of :func:`plan` run as child processes with their own time limits (the whole < 8 min
on one GPU). Without CUDA the steps that need it are reported as skipped; ``--quick`` runs them
all at toy sizes on any device (a dry run on a CPU). Prints one table and writes
``DIR/device_check.json``.
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
sys.path.insert(0, str(REPO))        # utils: jsonio; renderer, for eval_viz's GL platform
from utils.jsonio import write_json  # noqa: E402
PY = sys.executable
TEST_FILES = ["tests/test_models.py", "tests/test_inner.py", "tests/test_tto.py",
              "tests/test_train.py", "tests/test_evaluation.py", "tests/test_demo.py",
              "tests/test_renderer.py", "tests/test_host_sync.py"]
README_TRAIN = ("--batch_size 30 --test_epochs 5 --bbox_type rect --inner_lr 1e-5 --outer_lr 1e-4 "
                "--after_innerlr 1e-5 --inner_step 1 --test_val_step 14 --first_order --backbone "
                "resnet --adapt_val_step --model cliff --syn_occ --num_epochs 30 --summary_steps "
                "1000").split()
FIGURES = {"train_step": {"s_per_iter": 4, "images_per_s": 1, "ratio_to_plain": 2, "peak_mb": None},
           "tto": {"images_per_s": 2, "peak_mb": None}}   # figures in the table (digits)


def _set(argv: list[str], **values: str) -> list[str]:
    """``argv`` with the values of the options ``values`` replaced."""
    return [values.get(argv[i - 1][2:], x) if i else x for i, x in enumerate(argv)]


def plan(a, cuda: bool) -> list[dict]:
    """The steps: name, command, time limit, whether it needs CUDA, the JSON it writes."""
    q, out, dev, steps = a.quick, a.out, "cuda" if cuda else "cpu", []

    def toy(small, full):
        return small if q else full

    def step(name, limit, cmd, js=None, js_flag="--json", needs_cuda=not q, env=None):
        steps.append({"name": name, "cuda": needs_cuda, "limit": limit * toy(3, 1), "env": env,
                      "cmd": [PY, *cmd, *([js_flag, str(out / js)] if js else [])],
                      "json": js and out / js})    # toy sizes, but on a (loaded) CPU

    net = ["--backbone", toy("resnet18", "resnet")]
    step("cuda_tests", 240, ["-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *TEST_FILES],
         needs_cuda=True, env={"METAHMR_TEST_DEVICE": "cuda"})
    bench = ["bench/train_step.py", "--device", dev, "--batch_size", toy("2", "30"),
             "--modes", "plain,meta_fo_sample", "--iters", toy("1", "5"), "--no_interleave"]
    for backbone in toy(["resnet18"], ["resnet", "hrnet"]):
        for amp in ("off", "bf16"):
            step(f"train_step_{backbone}_{amp}", 150, [*bench, "--backbone", backbone, "--amp",
                                                       amp, "--warmup", toy("0", "2")],
                 f"train_step_{backbone}_{amp}.json")
    if a.compile:       # opt-in: the torch.compile'd backbone, against the plain runs above
        step("train_step_compile", 300, [*bench, *net, "--amp", toy("off", "bf16"), "--warmup",
                                         toy("1", "3"), "--compile"], "train_step_compile.json")
    step("tto_batch_vs_sample", 150, [
        "bench/tto.py", *net, "--device", dev, "--batch_size", toy("2", "20"), "--iters",
        toy("1", "2"), "--warmup", toy("0", "1"), *toy(["--test_val_step", "1"], [])], "tto.json")
    step("world", 180, ["-m", "datasets.synthetic", "--root", str(out / "world"),
                        *toy(["--tiny"], ["--n_train", "64", "--n_test", "8"]),
                        "--weights", toy("resnet18", "resnet")])
    train = [*README_TRAIN, "--data_root", str(out / "world"), "--log_dir", str(out / "logs"),
             "--device", dev, "--max_steps", toy("2", "20"), "--num_workers", "2",
             "--eval_datasets", ""]
    if q:
        train = _set(train, batch_size="2", backbone="resnet18") + ["--crop_scale", "0.25"]
    step("train_readme", 180, ["train.py", "--name", "readme", *train])
    step("eval_viz", 150, [
        "eval_cliff.py", "--data_root", str(out / "world"), "--checkpoint",
        str(out / "logs" / "readme" / "checkpoints" / "current.pt"), "--dataset", "3dpw",
        "--bbox_type", "rect", *net, "--inner_lr", "1e-5", "--after_innerlr", "1e-5",
        "--adapt_val_step", "--batch_size", toy("2", "8"), "--max_batches", "1",
        "--num_workers", "0", "--device", dev, "--viz", "--viz_dir", str(out / "viz"),
        *toy(["--crop_scale", "0.25", "--test_val_step", "1"], [])], "eval_viz.json", "--json_out")
    step("torchrun_nccl" if cuda else "torchrun_gloo", 150, [
        "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", "train.py",
        "--name", "torchrun", *_set(train, max_steps=toy("2", "5"))])
    return [s for s in steps if not a.only or any(s["name"].startswith(o) for o in a.only)]


def run_step(step: dict, cuda: bool, log_dir: Path) -> dict:
    """Run one step; its status, seconds, figures and the tail of its output."""
    if step["cuda"] and not cuda:
        return {"status": "skipped", "why": "needs CUDA (no CUDA device here)", "seconds": 0.0}
    log, t0 = log_dir / f"{step['name']}.log", time.time()
    try:
        with open(log, "w") as fh:
            rc = subprocess.run(step["cmd"], cwd=REPO, env={**os.environ, **(step["env"] or {})},
                                stdout=fh, stderr=subprocess.STDOUT,
                                timeout=step["limit"]).returncode
    except subprocess.TimeoutExpired:
        rc = "timeout"
    res = {"status": "ok" if rc == 0 else "failed", "returncode": rc,
           "seconds": round(time.time() - t0, 1), "command": " ".join(map(str, step["cmd"])),
           "log": str(log)}
    text = log.read_text()
    if rc != 0:
        res["tail"] = text[-2000:]
    if step["name"] == "cuda_tests":
        res["summary"] = (text.strip().splitlines() or [""])[-1]
    if rc == 0 and step["json"] and step["json"].is_file():
        data = json.loads(step["json"].read_text())
        kind = next((k for k in FIGURES if step["name"].startswith(k)), None)
        if kind:                    # per mode
            res["figures"] = {mode: {k: round(v[k], n) for k, n in FIGURES[kind].items()}
                              for mode, v in data["modes"].items()}
        else:
            m = data.get("metrics", data)
            res["figures"] = {k: round(m[k], 2) for k in ("MPJPE", "PA-MPJPE", "PVE",
                              "mean_tto_steps", "tto_s_per_image") if isinstance(m.get(k), float)}
            from utils.renderer import select_gl_platform   # EGL expected on a GPU machine
            res["figures"]["gl"] = select_gl_platform() or "none (software rasteriser)"
    return res


def short(res: dict) -> str:
    """One line of figures for the table."""
    f = res.get("figures")
    if res["status"] == "skipped" or res.get("summary"):
        return res.get("why") or res["summary"]
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
    cuda, a.out, t0, results = torch.cuda.is_available(), a.out.resolve(), time.time(), {}
    (a.out / "logs_steps").mkdir(parents=True, exist_ok=True)
    device = torch.cuda.get_device_name(0) if cuda else "cpu (no CUDA device)"
    steps = plan(a, cuda)
    for step in steps:   # the JSON after every step: a run cut short keeps the figures so far
        print(f"[{time.time() - t0:6.0f} s] {step['name']} ...", flush=True)
        results[step["name"]] = run_step(step, cuda, a.out / "logs_steps")
        summary = {"device": device, "quick": a.quick, "total_s": round(time.time() - t0, 1),
                   "torch": torch.__version__, "complete": len(results) == len(steps),
                   "steps": results}
        write_json(a.out / "device_check.json", summary)
    print(f"\ndevice check on {device}{' (--quick)' if a.quick else ''}: {time.time() - t0:.0f} s")
    print(f"{'step':<26}{'status':<9}{'s':>7}  figures")
    for name, r in results.items():
        print(f"{name:<26}{r['status']:<9}{r['seconds']:>7.1f}  {short(r)}")
    print(f"wrote {a.out / 'device_check.json'}")
    return 0 if all(r["status"] != "failed" for r in results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
