"""The benchmark scripts run from the command line at tiny sizes and write consistent figures.

They are measurement tools, so these tests check what they report is well formed and coherent
(every mode measured, the ratios are the ratios of the times, the TTO step counts are the ones
asked for), not how fast anything is.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import forkrun  # noqa: E402  the project's commands, forked from a warm server

REPO = Path(__file__).resolve().parents[1]


def _run(script: str, *args, timeout: int = 600) -> str:
    env = {**os.environ,   # the repository first, then what was on the path (e.g. --target wheels)
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = forkrun.run([REPO / "bench" / script, *args], cwd=REPO, env=env, timeout=timeout)
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_train_step_reports_every_mode_against_plain(synthetic_root, tmp_path):
    out = tmp_path / "train_step.json"
    text = _run("train_step.py", "--backbone", "resnet18", "--bbox_type", "square",
                "--batch_size", 2, "--device", "cpu", "--iters", 1, "--warmup", 0,
                "--crop_scale", 0.25, "--in_process", "--smpl_root", synthetic_root,
                "--json", out)
    res = json.loads(out.read_text())
    modes = res["modes"]
    assert set(modes) == {"plain", "meta_fo_batch", "meta_fo_sample", "meta_so"}
    plain = modes["plain"]["s_per_iter"]
    for name, m in modes.items():
        assert m["s_per_iter"] > 0 and m["peak_mb"] >= 0
        assert m["ratio_to_plain"] == pytest.approx(m["s_per_iter"] / plain)
        assert name in text
    assert modes["plain"]["ratio_to_plain"] == pytest.approx(1.0)
    assert res["machine"]["device"] == "cpu"
    assert res["config"]["crop_hw"] == [56, 56] and "crop 56x56" in text   # 224 x 0.25


def test_tto_reports_both_modes_at_the_asked_steps(synthetic_root, tmp_path):
    """(Each mode in its own child process, the default.)"""
    out = tmp_path / "tto.json"
    _run("tto.py", "--backbone", "resnet18", "--bbox_type", "square", "--batch_size", 2,
         "--device", "cpu", "--test_val_step", 2, "--iters", 1, "--warmup", 0,
         "--crop_scale", 0.25, "--tto_workers", 2, "--smpl_root", synthetic_root, "--json", out)
    res = json.loads(out.read_text())
    b, s = res["modes"]["batch"], res["modes"]["sample"]
    for m in (b, s):
        assert m["mean_steps"] == 3.0 and m["nonfinite"] == 0     # step 0 + 2 Adam steps
        assert m["images_per_s"] == pytest.approx(2 / m["s_per_batch"])
    assert res["ratios"]["sample_over_batch_time"] == pytest.approx(
        s["s_per_batch"] / b["s_per_batch"])
    assert res["config"]["tto_workers"] == 2 and res["config"]["isolated_processes"]
    assert res["config"]["crop_hw"] == [56, 56] and res["config"]["crop_scale"] == 0.25


def test_data_speed_measures_the_training_pipeline(synthetic_root, tmp_path):
    out = tmp_path / "data.json"
    _run("data_speed.py", "--data_root", synthetic_root, "--n", 8, "--workers", 1,
         "--batch_size", 4, "--json", out)
    res = json.loads(out.read_text())
    assert res["crop"] == [3, 256, 192] and res["syn_occ"]
    assert len(res["modes"]) == 3
    for m in res["modes"].values():
        assert m["samples_per_s"] > 0
        assert m["ms_per_sample"] == pytest.approx(1e3 / m["samples_per_s"])


def test_synthetic_study_end_to_end_at_toy_size(tmp_path):
    out, docs = tmp_path / "study", tmp_path / "docs"
    _run("synthetic_study.py", "--out", out, "--world", tmp_path / "world", "--n_train", 8,
         "--n_test", 2, "--img_size", 128, "--aux_steps", 2, "--steps", 2, "--batch_size", 2,
         "--max_eval", 2, "--eval_batch_size", 2, "--tto_steps", 1, "--num_workers", 0,
         "--docs_dir", docs)
    res = json.loads((out / "synthetic_study.json").read_text())
    rows = res["rows"]
    # plain and meta, sample and batch mode, 0..2 updates, on both test sets
    keys = {(r["dataset"], r["model"], r["mode"], r["updates"]) for r in rows}
    assert {(d, m, mode, u) for d in ("3dpw", "h36m-p2") for m in ("plain", "meta")
            for mode in ("sample", "batch") for u in (0, 1, 2)} <= keys
    for r in rows:
        assert r["n"] == 2 and 0 < r["PA-MPJPE"] <= r["MPJPE"] + 1e-6
    # no TTO (0 updates) is the same network whatever the TTO mode
    zero = {(r["dataset"], r["model"], r["mode"]): r["MPJPE"] for r in rows if r["updates"] == 0}
    for d in ("3dpw", "h36m-p2"):
        for m in ("plain", "meta"):
            assert zero[(d, m, "sample")] == pytest.approx(zero[(d, m, "batch")])
    for name in ("synthetic_study.png", "synthetic_study.md"):
        assert (docs / name).stat().st_size > 1000
    # the markdown tables show the JSON's curves (0, 1, 2 updates) of every test set
    md = (docs / "synthetic_study.md").read_text().replace("**", "")
    for d in ("3dpw", "h36m-p2"):
        section = md.split(f"## Synthetic {d} ")[1].split("## ")[0]
        for metric in ("MPJPE", "PA-MPJPE"):
            for m in ("plain", "meta"):
                for mode in ("sample", "batch"):
                    curve = sorted((r["updates"], r[metric]) for r in rows
                                   if (r["dataset"], r["model"], r["mode"]) == (d, m, mode))
                    cells = " | ".join(f"{v:.1f}" for _, v in curve)
                    assert f"| {metric} | {m} | {mode} | {cells} |" in section
