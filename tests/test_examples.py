"""The integration examples run, learn, and keep the optimizer's state through their frameworks' checkpoints."""

import copy
import pathlib
import shutil

import pytest
import torch

import gradwise as gw
from script_loader import load_script

EXAMPLES = pathlib.Path(__file__).parents[1] / "examples"


def load(name):
    return load_script(EXAMPLES / f"{name}.py", f"example_{name}")


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def parameters(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


# -- torch.compile and bf16 autocast ------------------------------------------------------------------------
def test_amp_compile_learns_in_bf16_with_float32_parameters_and_state():
    result = load("amp_compile").main(steps=40, backend="aot_eager")
    assert result["last_loss"] < 0.5 * result["first_loss"]
    assert result["prediction_dtype"] == "torch.bfloat16"  # autocast reached the compiled graph
    assert result["param_dtype"] == "torch.float32"
    assert result["skipped_steps"] == 0.0
    assert result["optimizer_steps"] == 40.0


@pytest.mark.slow
def test_amp_compile_with_inductor():
    result = load("amp_compile").main(steps=20, backend="inductor")
    assert result["last_loss"] < result["first_loss"]
    assert result["optimizer_steps"] == 20.0


# -- Hugging Face Trainer -------------------------------------------------------------------------------------
def test_hf_trainer_learns():
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    result = load("hf_trainer").main(steps=30)
    assert result["last_loss"] < 0.5 * result["first_loss"]
    assert result["accuracy"] >= 0.9


def test_hf_trainer_checkpoint_resumes_the_optimizer_state(tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    hf = load("hf_trainer")
    straight = hf.make_trainer(str(tmp_path / "a"), steps=8, save_steps=4)
    straight.train()
    checkpoint = tmp_path / "a" / "checkpoint-4"
    assert (checkpoint / "optimizer.pt").is_file()

    resumed = hf.make_trainer(str(tmp_path / "b"), steps=8, save_steps=100)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    inner = resumed.optimizer.optimizer if hasattr(resumed.optimizer, "optimizer") else resumed.optimizer
    assert isinstance(inner, gw.AdaBelief)
    assert {float(s["step"]) for s in inner.state.values()} == {8.0}  # 4 saved steps + 4 new ones
    want, got = parameters(straight.model), parameters(resumed.model)
    assert all(torch.allclose(want[k], got[k], rtol=0, atol=1e-6) for k in want)

    # control: the same resume without the saved optimizer state ends elsewhere
    blank = tmp_path / "no-optimizer"
    shutil.copytree(checkpoint, blank)
    (blank / "optimizer.pt").unlink()
    fresh = hf.make_trainer(str(tmp_path / "c"), steps=8, save_steps=100)
    fresh.train(resume_from_checkpoint=str(blank))
    other = parameters(fresh.model)
    assert max((want[k] - other[k]).abs().max().item() for k in want) > 1e-4


# -- PyTorch Lightning ---------------------------------------------------------------------------------------
def test_lightning_learns():
    pytest.importorskip("lightning")
    result = load("lightning_module").main(steps=40)
    assert result["last_loss"] < 0.2 * result["first_loss"]
    assert result["accuracy"] >= 0.9


def test_lightning_checkpoint_restores_the_optimizer_and_scheduler(tmp_path):
    pl = pytest.importorskip("lightning.pytorch")
    ex = load("lightning_module")
    steps = 16  # two epochs of 8 batches, a checkpoint after each

    pl.seed_everything(0, verbose=False)
    ex.trainer(steps, checkpoint_dir=str(tmp_path)).fit(ex.Classifier(steps=steps), ex.loader())
    first_epoch = tmp_path / "epoch=0-step=8.ckpt"
    assert first_epoch.is_file(), sorted(p.name for p in tmp_path.iterdir())
    saved = torch.load(first_epoch, weights_only=False)["optimizer_states"][0]

    class Capture(pl.Callback):
        def on_train_start(self, trainer, module):
            self.state = copy.deepcopy(trainer.optimizers[0].state_dict())
            self.lr = trainer.optimizers[0].param_groups[0]["lr"]

    capture = Capture()
    pl.seed_everything(1, verbose=False)  # a different initialisation: everything must come from the checkpoint
    second = ex.trainer(steps)
    second.callbacks.append(capture)
    second.fit(ex.Classifier(steps=steps), ex.loader(), ckpt_path=first_epoch)

    assert capture.state["gradwise"] == saved["gradwise"]
    assert capture.lr == saved["param_groups"][0]["lr"]
    assert capture.state["state"].keys() == saved["state"].keys()
    for index, state in saved["state"].items():
        assert float(state["step"]) == 8.0
        for key, value in state.items():
            assert torch.equal(capture.state["state"][index][key], value), (index, key)
    opt = second.optimizers[0]
    assert isinstance(opt, gw.Adan)
    assert {float(s["step"]) for s in opt.state.values()} == {float(steps)}
    assert second.lr_scheduler_configs[0].scheduler.last_epoch == steps
