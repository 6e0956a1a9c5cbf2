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
        open({out!r} + "/val.txt", "w").write(repr([(r["val_accuracy"], r["val_loss"]) for r in history.epochs]))
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
    # Validation is sharded (8 + 7 of the 15 rows) and gathered in order: the same numbers as one process.
    val_single = eval((outs["single"] / "val.txt").read_text())
    val_ddp = eval((outs["ddp"] / "val.txt").read_text())
    assert [a for a, _ in val_single] == [a for a, _ in val_ddp]
    assert [v for _, v in val_single] == pytest.approx([v for _, v in val_ddp], rel=1e-5)
    assert (outs["ddp"] / "last.pt").is_file() and not list(outs["ddp"].glob("*.tmp"))


BATCHNORM_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    import torch
    from dcase_effdl.training import distributed, sampling
    from dcase_effdl.training.loop import validate
    from dcase_effdl.training.schedules import reestimate_batchnorm
    from train_helpers import tiny_bundle, tiny_model

    torch.set_num_threads(1)
    ctx = distributed.setup("cpu")
    bundle = tiny_bundle()
    batches = sampling.shuffled_batches(len(bundle.x_train), 5, 0, 0)  # 10 batches, the last of 3 rows
    shared = tiny_model()
    reestimate_batchnorm(shared, (bundle.x_train[i] for i in batches[ctx.rank :: ctx.world_size]))
    distributed.merge_batchnorm(shared, ctx)
    alone = tiny_model()
    reestimate_batchnorm(alone, (bundle.x_train[i] for i in batches))  # every batch in one process
    for (name, a), b in zip(alone.state_dict().items(), shared.state_dict().values()):
        assert torch.allclose(a.double(), b.double(), rtol=1e-5, atol=1e-6), name
    if ctx.rank == 1:  # statistics of its own: validation must use rank 0's on every rank
        for m in shared.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.add_(1.0)
    accuracy, loss = validate(shared, bundle)
    reference = validate(alone, bundle)  # a collective too: every rank calls it
    if ctx.rank == 1:
        open({out!r}, "w").write(repr((accuracy, loss)))
    ctx.barrier()
    if ctx.is_main:
        assert (accuracy, loss) == eval(open({out!r}).read()), "ranks disagree on validation"
        assert accuracy == reference[0] and abs(loss - reference[1]) < 1e-5, (accuracy, loss, reference)
        print("ok")
    distributed.teardown()
    """
)


@pytest.mark.slow
def test_two_ranks_share_the_batchnorm_pass_and_the_validation_split(tmp_path):
    # SWA's batch-norm pass and validation read each row on one rank only: merged, they give one process's numbers.
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    script = tmp_path / "bn.py"
    script.write_text(BATCHNORM_SCRIPT.format(tests=str(REPO / "tests"), out=str(tmp_path / "rank1.txt")))
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", str(script)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "ok" in proc.stdout
