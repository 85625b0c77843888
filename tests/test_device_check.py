"""bench/device_check.sh without a GPU: every CUDA step is reported as skipped, the table is
printed and the JSON is strict. (The toy-size ``--quick`` run takes minutes: not run here.)"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
STEPS = ["cuda_tests", "train_step_resnet_off", "train_step_resnet_bf16", "train_step_hrnet_off",
         "train_step_hrnet_bf16", "train_step_compile", "tto_batch_vs_sample", "world",
         "train_readme", "eval_viz", "torchrun_gloo"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU machine runs the real steps")
def test_cuda_steps_are_skipped_without_a_gpu(tmp_path):
    r = subprocess.run(["bash", "bench/device_check.sh", "--out", str(tmp_path), "--compile"],
                       cwd=REPO, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHON": sys.executable})   # this interpreter
    assert r.returncode == 0, r.stderr[-2000:]
    data = json.loads((tmp_path / "device_check.json").read_text(),
                      parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    assert list(data["steps"]) == STEPS and data["complete"] is True
    assert all(s["status"] == "skipped" and "needs CUDA" in s["why"]
               for s in data["steps"].values())
    for name in STEPS:                      # one table row per step
        assert any(line.startswith(name) and "skipped" in line for line in r.stdout.splitlines())


def test_eval_figures_in_a_plain_interpreter(tmp_path):
    """``python bench/device_check.py`` has bench/, not the repository, on ``sys.path``; the
    eval_viz figures (metrics and the GL platform of ``utils.renderer``) must still be read."""
    js, dc = tmp_path / "eval_viz.json", REPO / "bench" / "device_check.py"
    write = f"import json; json.dump({{'metrics': {{'MPJPE': 1.234}}}}, open({str(js)!r}, 'w'))"
    code = (f"import json, runpy, sys\nfrom pathlib import Path\n"
            f"step = {{'name': 'eval_viz', 'cuda': False, 'env': {{}}, 'limit': 60, "
            f"'json': Path({str(js)!r}), 'cmd': [sys.executable, '-c', {write!r}]}}\n"
            f"res = runpy.run_path({str(dc)!r})['run_step'](step, False, Path({str(tmp_path)!r}))\n"
            f"print(json.dumps(res))")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                       timeout=120, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["status"] == "ok" and res["figures"]["MPJPE"] == 1.23
    # "gl": the platform utils.renderer picks in a fresh process, or the no-GL label
    probe = subprocess.run([sys.executable, "-c", "from utils.renderer import select_gl_platform;"
                            " print(select_gl_platform())"], cwd=REPO, capture_output=True,
                           text=True, timeout=120, env=env)
    gl = probe.stdout.strip().splitlines()[-1]
    assert res["figures"]["gl"] == (gl if gl != "None" else "none (software rasteriser)")


def test_a_run_cut_short_keeps_the_figures_of_the_steps_done(tmp_path, monkeypatch):
    """The lent GPU machine's call has a time limit (bench/device_run.sh ends the check with
    ``timeout``): device_check.json is rewritten after every step, marked incomplete until the
    last one, so the steps done before the cut are kept."""
    from bench import device_check
    done = []

    def fake_step(step, cuda, log_dir):
        if len(done) == 2:
            raise KeyboardInterrupt      # the run is stopped during the third step
        done.append(step["name"])
        return {"status": "ok", "seconds": 1.0, "figures": {"MPJPE": 12.5}}

    monkeypatch.setattr(device_check, "run_step", fake_step)
    with pytest.raises(KeyboardInterrupt):
        device_check.main(["--out", str(tmp_path)])
    data = json.loads((tmp_path / "device_check.json").read_text())
    assert list(data["steps"]) == STEPS[:2] == done and data["complete"] is False
    assert data["steps"][STEPS[1]]["figures"] == {"MPJPE": 12.5}
