"""DistributedDataParallel on CPU (gloo, 2 processes under torchrun) gives the single-process result."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    import torch
    from safetensors.torch import save_file
    from dcase_effdl.training import distributed
    from dcase_effdl.training.loop import fit
    from train_helpers import all_techniques, tiny_bundle, tiny_model

    torch.set_num_threads(1)
    ctx = distributed.setup("cpu")
    model = tiny_model(batch_norm=False)  # CPU batch norm would use per-rank statistics
    cfg = all_techniques(epochs=3, swa=None, batch_size=9)  # 9 = uneven shards of 5 and 4
    history = fit(model, tiny_bundle(), cfg, seed=3, out_dir={out!r})
    if ctx.is_main:
        save_file({{k: v.contiguous() for k, v in model.state_dict().items()}}, {out!r} + "/model.safetensors")
        open({out!r} + "/loss.txt", "w").write(repr([r["train_loss"] for r in history.epochs]))
    distributed.teardown()
    """
)


@pytest.mark.slow
def test_two_gloo_processes_match_one(tmp_path):
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    outs = {}
    for name, prefix in (("single", [sys.executable]), ("ddp", [torchrun, "--standalone", "--nproc_per_node", "2"])):
        out = tmp_path / name
        out.mkdir()
        script = tmp_path / f"{name}.py"
        script.write_text(SCRIPT.format(tests=str(REPO / "tests"), out=str(out)))
        proc = subprocess.run(prefix + [str(script)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        outs[name] = out
    single = load_file(str(outs["single"] / "model.safetensors"))
    ddp = load_file(str(outs["ddp"] / "model.safetensors"))
    for k in single:
        assert torch.allclose(single[k], ddp[k], atol=1e-5, rtol=1e-4), k
    loss_single = eval((outs["single"] / "loss.txt").read_text())
    loss_ddp = eval((outs["ddp"] / "loss.txt").read_text())
    assert loss_single == pytest.approx(loss_ddp, rel=1e-5)
    assert (outs["ddp"] / "last.pt").is_file() and not list(outs["ddp"].glob("*.tmp"))
