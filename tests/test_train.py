"""The training script end to end on a tiny generated folder: fit, resume, export, code with it."""

from __future__ import annotations

import pytest
import torch

from codec.api import Codec
from codec.models.hyperprior import GainHyperprior, ModelConfig
from codec.train import main
from codec.weights import save_weights, weights_info
from conftest import make_image


@pytest.mark.slow
def test_fit_resume_export_and_use(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for i in range(3):
        make_image(80, 72, seed=i).save(data / f"{i}.png")
    run = tmp_path / "run"
    common = ["--data", str(data), "--val", str(data), "--out", str(run), "--patch-size", "64",
              "--batch-size", "2", "--val-every", "2", "--N", "16", "--M", "24", "--device", "cpu"]
    main(["fit", *common, "--steps", "2"])
    assert torch.load(run / "last.pt", weights_only=False)["step"] == 2
    main(["fit", *common, "--steps", "3", "--resume", str(run / "last.pt")])
    assert torch.load(run / "last.pt", weights_only=False)["step"] == 3
    weights = tmp_path / "w.safetensors"
    main(["export", str(run / "best.pt"), str(weights)])
    main(["fit", *common, "--steps", "1", "--init", str(weights), "--out", str(tmp_path / "run2")])
    codec = Codec(weights, device="cpu")
    image = make_image(40, 30)
    assert codec.decompress(codec.compress(image, 50)).size == (40, 30)


@pytest.mark.slow
def test_weight_average_is_carried_over_a_resume_and_exported(tmp_path):
    """--ema keeps a running average of the weights beside them; a resume continues it and
    export --ema ships it instead of the last weights."""
    data = tmp_path / "data"
    data.mkdir()
    make_image(80, 72).save(data / "0.png")
    run = tmp_path / "run"
    common = ["--data", str(data), "--val", str(data), "--out", str(run), "--patch-size", "64",
              "--batch-size", "1", "--val-every", "2", "--N", "16", "--M", "24", "--device", "cpu",
              "--lr", "1e-2", "--ema", "0.5"]
    main(["fit", *common, "--steps", "2"])
    main(["fit", *common, "--steps", "4", "--resume", str(run / "last.pt")])
    ckpt = torch.load(run / "last.pt", weights_only=False)
    assert ckpt["ema_n"] == 4  # counted on from the first run, not restarted
    name = "g_s.0.weight"
    assert not torch.equal(ckpt["ema"][name], ckpt["model"][name])
    weights = tmp_path / "ema.safetensors"
    main(["export", str(run / "last.pt"), str(weights), "--ema"])
    assert "best_val_loss" not in weights_info(weights)  # that was the weights', not the average's
    shipped = Codec(weights, device="cpu").model.state_dict()[name].float()
    assert torch.allclose(shipped, ckpt["ema"][name], atol=1e-3)  # stored in fp16
    assert not torch.allclose(shipped, ckpt["model"][name], atol=1e-3)
    main(["fit", *common[:-2], "--steps", "1", "--out", str(tmp_path / "plain")])
    with pytest.raises(SystemExit, match="holds no weight average"):
        main(["export", str(tmp_path / "plain" / "last.pt"), str(tmp_path / "x.safetensors"), "--ema"])


@pytest.mark.slow
def test_retarget_lambdas_keeps_shared_anchors_and_extrapolates(tmp_path):
    """--lambdas on --init widens the quality range of trained weights: anchors the old model had
    keep their gains, a new one below is extrapolated in log(lambda), and training goes on."""
    old = GainHyperprior(ModelConfig(N=16, M=24, lambdas=(0.01, 0.02, 0.04)))
    with torch.no_grad():
        old.log_gain.copy_(torch.tensor([-1.0, 0.0, 0.5])[:, None].repeat(1, 24))
    new = old.with_lambdas((0.005, 0.01, 0.02, 0.04))
    assert new.config.lambdas == (0.005, 0.01, 0.02, 0.04)
    assert torch.allclose(new.log_gain[1:], old.log_gain)
    assert torch.allclose(new.log_gain[0], torch.full((24,), -2.0))  # one anchor step below, same slope
    assert torch.equal(new.g_s[0].weight, old.g_s[0].weight)

    data = tmp_path / "data"
    data.mkdir()
    make_image(80, 72).save(data / "0.png")
    weights = tmp_path / "w.safetensors"
    old.update(force=True)
    save_weights(old, weights)
    main(["fit", "--data", str(data), "--val", str(data), "--out", str(tmp_path / "run"), "--patch-size", "64",
          "--batch-size", "2", "--steps", "1", "--device", "cpu", "--init", str(weights),
          "--lambdas", "0.005,0.01,0.02,0.04"])
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=False)
    assert tuple(ckpt["config"]["lambdas"]) == (0.005, 0.01, 0.02, 0.04)
    assert ckpt["model"]["log_gain"].shape == (4, 24)
    # Retargeting a checkpoint restarts Adam and the best-so-far: the new validation is not comparable.
    (tmp_path / "run" / "best.pt").unlink()
    ckpt["best"] = 0.0  # unbeatable at the old anchors
    torch.save(ckpt, tmp_path / "run" / "last.pt")
    main(["fit", "--data", str(data), "--val", str(data), "--out", str(tmp_path / "run"), "--patch-size", "64",
          "--batch-size", "2", "--steps", "2", "--device", "cpu", "--resume", str(tmp_path / "run" / "last.pt"),
          "--lambdas", "0.0025,0.005,0.01,0.02,0.04"])
    assert torch.load(tmp_path / "run" / "best.pt", weights_only=False)["step"] == 2
    with pytest.raises(SystemExit):  # argparse: a clear usage error, not a traceback
        main(["fit", "--data", str(data), "--val", str(data), "--out", str(tmp_path / "run"),
              "--lambdas", "0.02,0.01"])


@pytest.mark.slow
def test_torchrun_two_processes_train_identical_weights_and_resume_with_one(tmp_path):
    """torchrun --nproc_per_node=2 on CPU (gloo): each rank its own crops, averaged gradients,
    rank 0 writes the checkpoint; the ranks end with the same weights; one process resumes."""
    import subprocess
    import sys
    from pathlib import Path

    data = tmp_path / "data"
    data.mkdir()
    for i in range(4):
        make_image(80, 72, seed=i).save(data / f"{i}.png")
    run = tmp_path / "run"
    common = ["--data", str(data), "--val", str(data), "--out", str(run), "--patch-size", "64", "--batch-size", "2",
              "--val-every", "3", "--N", "16", "--M", "24", "--device", "cpu", "--precision", "fp32", "--threads", "1"]
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        "-m", "codec.train", "fit", *common, "--steps", "3"],
                       capture_output=True, text=True, timeout=600, cwd=Path(__file__).resolve().parent.parent)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "2 ranks hold identical weights" in r.stdout and "2 ranks" in r.stdout
    assert "FutureWarning" not in r.stderr, r.stderr[-3000:]  # e.g. DDP's deprecated broadcast_buffers
    assert torch.load(run / "last.pt", weights_only=False)["step"] == 3
    main(["fit", *common, "--steps", "4", "--resume", str(run / "last.pt")])
    assert torch.load(run / "last.pt", weights_only=False)["step"] == 4


def test_missing_data_folder_is_one_line_and_makes_no_output_folder(tmp_path):
    with pytest.raises(SystemExit, match="^python -m codec.train: error: .*nope: no such folder"):
        main(["fit", "--data", str(tmp_path / "nope"), "--val", str(tmp_path), "--out", str(tmp_path / "r")])
    assert not (tmp_path / "r").exists()
    with pytest.raises(SystemExit):  # argparse: nothing to train
        main(["fit", "--data", str(tmp_path), "--val", str(tmp_path), "--out", str(tmp_path / "r"), "--steps", "0"])


@pytest.mark.parametrize("content", [None, b"not a checkpoint", "dict"], ids=["missing", "bytes", "foreign-dict"])
def test_export_refuses_what_is_not_a_checkpoint_in_one_line(tmp_path, content):
    path = tmp_path / "c.pt"
    if content == "dict":
        torch.save({"a": 1}, path)
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(SystemExit, match=r"^python -m codec.train: error: .*c\.pt: (no such file|not a)") as e:
        main(["export", str(path), str(tmp_path / "w.safetensors")])
    assert "\n" not in str(e.value.code) and not (tmp_path / "w.safetensors").exists()


def test_single_group_optimizer_state_resumes_with_slice_networks_in_their_own_group():
    """Checkpoints from before --slice-lr hold one Adam group; it splits without losing state."""
    from codec.models.cc import CCConfig, ChannelConditional
    from codec.train.fit import _regroup

    model = ChannelConditional(CCConfig(N=8, M=16, slices=2, width=8))
    params = [p for n, p in model.named_parameters() if not n.endswith(".quantiles")]
    one = torch.optim.Adam(params, lr=1e-3)
    sum(p.sum() * (i + 1) for i, p in enumerate(params)).backward()
    one.step()
    nets = [p for n, p in model.named_parameters() if n.startswith("latent_codec.slice_nets.")]
    rest = [p for p in params if all(p is not q for q in nets)]
    two = torch.optim.Adam([{"params": rest, "lr": 1e-3}, {"params": nets, "lr": 1e-2}])
    two.load_state_dict(_regroup(one.state_dict(), two))
    assert [g["lr"] for g in two.param_groups] == [1e-3, 1e-2]
    for p in params:
        assert torch.equal(two.state[p]["exp_avg"], one.state[p]["exp_avg"])
    swapped = torch.optim.Adam([{"params": nets}, {"params": rest}])  # not the saved order
    with pytest.raises(ValueError, match="does not match"):
        _regroup(one.state_dict(), swapped)


@pytest.mark.slow
def test_init_from_a_cc_file_trains_the_model_asked_for(tmp_path):
    """--init of a channel-conditional file continues that model; --model hp trains the hyperprior
    inside it (one file ships both)."""
    from codec.models.cc import CCConfig, ChannelConditional

    cc = ChannelConditional(CCConfig(N=16, M=24, slices=2, width=8))
    cc.update(force=True)
    weights = tmp_path / "cc.safetensors"
    save_weights(cc, weights)
    data = tmp_path / "data"
    data.mkdir()
    make_image(80, 72).save(data / "0.png")
    for model, kind in ((None, "cc"), ("hp", "hp")):
        run = tmp_path / f"run-{kind}"
        main(["fit", "--data", str(data), "--val", str(data), "--out", str(run), "--patch-size", "64",
              "--batch-size", "2", "--steps", "1", "--device", "cpu", "--init", str(weights),
              *(["--model", model] if model else [])])
        ckpt = torch.load(run / "last.pt", weights_only=False)
        assert ckpt["kind"] == kind
        assert any(k.startswith("latent_codec.slice_nets.") for k in ckpt["model"]) == (kind == "cc")


@pytest.mark.slow
def test_kill_saves_the_run_as_ctrl_c_does(tmp_path):
    """A background run (nohup ... &) ignores Ctrl-C's SIGINT; `kill PID` must still leave a
    last.pt to resume from."""
    import signal
    import subprocess
    import sys
    import time

    data = tmp_path / "data"
    data.mkdir()
    make_image(80, 72).save(data / "0.png")
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "codec.train", "fit", "--data", str(data), "--val", str(data),
                             "--out", str(run), "--patch-size", "64", "--batch-size", "1", "--N", "8", "--M", "8",
                             "--device", "cpu", "--steps", "1000000", "--val-every", "1000000", "--threads", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in iter(proc.stdout.readline, ""):  # the last line before the steps begin
        if line.startswith("precision"):
            break
    time.sleep(3)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "interrupted at step" in err, err[-500:]
    assert torch.load(run / "last.pt", weights_only=False)["step"] > 0


def test_rate_balance_weighs_each_image_by_its_lambda_against_the_anchors_middle():
    """--rate-balance B: a low quality's image counts (lambda / geometric mean)^-B times its loss,
    so the low anchors' small losses are not drowned by the high ones'; B 0 is the plain loss."""
    from codec.train.rd import rd_loss

    torch.manual_seed(0)
    model = GainHyperprior(ModelConfig(N=8, M=8, lambdas=(0.001, 0.01, 0.1))).eval()
    x = torch.rand(1, 3, 64, 64)
    for pos, lmbda in ((0.0, 0.001), (1.0, 0.01), (2.0, 0.1)):
        with torch.no_grad():
            plain = rd_loss(model, x, torch.tensor([pos]))["loss"]
            balanced = rd_loss(model, x, torch.tensor([pos]), balance=0.5)["loss"]
        assert balanced == pytest.approx(float(plain) * (lmbda / 0.01) ** -0.5, rel=1e-4)


def test_rate_balance_out_of_range_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["fit", "--data", str(tmp_path), "--val", str(tmp_path), "--out", str(tmp_path / "o"),
              "--rate-balance", "-1"])
    assert e.value.code == 2 and "--rate-balance must be between 0 and 2" in capsys.readouterr().err
