import json
import math
from pathlib import Path

import pytest
import torch

from tinyvlm.config import StageConfig
from tinyvlm.data.tokenizer import Tokenizer
from tinyvlm.errors import InputError
from tinyvlm.models.vlm import TinyVLM
from tinyvlm.rundir import RunDir
from tinyvlm.train.checkpoints import Checkpoints
from tinyvlm.train.loop import BatchSampler, lr_lambda, train_stage
from tinyvlm.train.objectives import SFT, build_objective, token_cross_entropy
from tinyvlm.train.pipeline import run_recipe

from .conftest import tiny_model_config, tiny_recipe


def fresh(tok: Tokenizer) -> TinyVLM:
    torch.manual_seed(0)
    return TinyVLM.from_tokenizer(tiny_model_config(), tok)


def stage(**kw: object) -> StageConfig:
    base = {"steps": 10, "batch_size": 4, "warmup_steps": 3, "log_every": 1, "lr": 3e-3}
    return StageConfig(**{**base, **kw})  # type: ignore[arg-type]


def run(tok: Tokenizer, shapes_dir: Path, out: Path, st: StageConfig, resume: bool = False,
        model: TinyVLM | None = None) -> TinyVLM:
    model = model or fresh(tok)
    recipe = tiny_recipe(shapes_dir)
    obj = build_objective(st.objective, model)
    train_stage(model, st, obj, obj.data(model, recipe.data, st), out, resume=resume,
                progress=False)
    return model


def test_lr_schedule_warmup_then_cosine() -> None:
    f = lr_lambda(StageConfig(steps=11, warmup_steps=2, min_lr_ratio=0.1))
    assert [f(0), f(1)] == [0.5, 1.0]
    assert f(2) == pytest.approx(1.0)
    assert f(11) == pytest.approx(0.1)
    assert f(2 + 9 // 2) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 4 / 9)))


def test_sampler_is_a_function_of_the_batch_number() -> None:
    s1, s2 = BatchSampler(10, 3, seed=1), BatchSampler(10, 3, seed=1)
    first = [s1(i) for i in range(6)]
    assert [s2(i) for i in reversed(range(6))] == first[::-1]
    epoch = [i for batch in first[:3] for i in batch]
    assert len(set(epoch)) == len(epoch)  # no repeats within an epoch
    with pytest.raises(InputError, match="fewer than batch_size"):
        BatchSampler(2, 3, 0)


def test_two_half_runs_equal_one_run(shapes_tokenizer: Tokenizer, shapes_dir: Path,
                                     tmp_path: Path) -> None:
    """5 steps, stop (a new process would start from disk), 5 more == 10 steps."""
    straight = run(shapes_tokenizer, shapes_dir, tmp_path / "a", stage())
    # A 10-step stage interrupted after its step-5 checkpoint: simulate by running only 5.
    first = stage(checkpoint_every=5)
    model = fresh(shapes_tokenizer)
    recipe = tiny_recipe(shapes_dir)
    obj = build_objective("sft", model)
    src = obj.data(model, recipe.data, first)

    class Interrupt(Exception):
        pass

    original = Checkpoints.save

    def save_then_stop(self: Checkpoints, step: int, *args: object) -> Path:
        path = original(self, step, *args)  # type: ignore[arg-type]
        if step == 5:
            raise Interrupt
        return path

    Checkpoints.save = save_then_stop  # type: ignore[method-assign]
    try:
        with pytest.raises(Interrupt):
            train_stage(model, first, obj, src, tmp_path / "b", progress=False)
    finally:
        Checkpoints.save = original  # type: ignore[method-assign]
    torch.manual_seed(123)  # the resumed run must not depend on the process's RNG state
    resumed = run(shapes_tokenizer, shapes_dir, tmp_path / "b", first, resume=True)
    for (name, p), q in zip(straight.state_dict().items(), resumed.state_dict().values(),
                            strict=True):
        assert torch.equal(p, q), name


def test_gradient_accumulation_matches_a_big_batch(shapes_tokenizer: Tokenizer,
                                                   shapes_dir: Path) -> None:
    """Token-weighted micro-batches give the gradient of the whole batch."""
    model = fresh(shapes_tokenizer)
    obj = SFT(model)
    src = obj.data(model, tiny_recipe(shapes_dir).data, StageConfig())
    items = list(src.items[:8])
    whole = obj(model, src.collate(items))
    whole.loss.backward()
    g_whole = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad()
    halves = [obj(model, src.collate(items[:4])), obj(model, src.collate(items[4:]))]
    for h in halves:
        h.loss.mul(h.units).backward()
    total = sum(h.units for h in halves)
    g_acc = [p.grad / total for p in model.parameters() if p.grad is not None]
    for a, b in zip(g_whole, g_acc, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)


def test_frozen_modules_do_not_change(shapes_tokenizer: Tokenizer, shapes_dir: Path,
                                      tmp_path: Path) -> None:
    model = fresh(shapes_tokenizer)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    run(shapes_tokenizer, shapes_dir, tmp_path, stage(steps=2, trainable=["connector"]),
        model=model)
    after = model.state_dict()
    changed = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"connector"}


def test_unknown_module_is_an_input_error(shapes_tokenizer: Tokenizer, shapes_dir: Path,
                                          tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"unknown module 'visoin'.*'vision'"):
        run(shapes_tokenizer, shapes_dir, tmp_path, stage(trainable=["visoin"]))


def test_cross_entropy_ignores_untargeted_positions() -> None:
    logits = torch.tensor([[[2.0, 0.0], [0.0, 2.0], [5.0, -5.0]]])
    targets = torch.tensor([[0, -100, 1]])
    loss, n = token_cross_entropy(logits, targets)
    expected = (math.log(1 + math.exp(-2)) + math.log(1 + math.exp(10))) / 2
    assert n == 2 and loss.item() == pytest.approx(expected, rel=1e-6)


def test_patch_label_pretraining_learns(shapes_tokenizer: Tokenizer, shapes_dir: Path,
                                        tmp_path: Path) -> None:
    model = fresh(shapes_tokenizer)
    st = stage(name="vision", objective="patch_labels", trainable=["vision"], steps=25,
               lr=3e-3, batch_size=8)
    recipe = tiny_recipe(shapes_dir)
    obj = build_objective(st.objective, model)
    logs = train_stage(model, st, obj, obj.data(model, recipe.data, st), tmp_path,
                      progress=False)
    assert logs[-1]["loss"] < 0.7 * logs[0]["loss"]


def test_run_recipe_writes_model_metrics_and_checkpoints(shapes_dir: Path, tmp_path: Path
                                                         ) -> None:
    recipe = tiny_recipe(shapes_dir, steps=3)
    model = run_recipe(recipe, tmp_path, progress=False)
    assert (tmp_path / "model" / "config.json").is_file()
    assert (tmp_path / "recipe.yaml").is_file() and (tmp_path / "tokenizer.json").is_file()
    assert Checkpoints(RunDir(tmp_path), "sft", 2).steps() == [3]
    rows = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 3 and {"loss", "lr", "grad_norm", "tokens_per_s"} <= set(
        json.loads(rows[0]))
    # Resuming a finished run trains nothing and reproduces the same weights.
    again = run_recipe(recipe, tmp_path, resume=True, progress=False)
    for p, q in zip(model.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(p, q)


def test_prepare_data_reuses_only_a_complete_matching_dataset(tmp_path: Path) -> None:
    from tinyvlm.config import DataConfig, ShapesWorldConfig
    from tinyvlm.train.pipeline import prepare_data

    settings = {"image_size": 32, "num_train": 4, "num_val": 1, "num_test": 2, "pope_images": 1}
    config = DataConfig(path=str(tmp_path / "d"), shapes=ShapesWorldConfig(**settings))
    root = prepare_data(config, progress=False)
    stamp = (root / "train.json").stat().st_mtime_ns
    prepare_data(config, progress=False)
    assert (root / "train.json").stat().st_mtime_ns == stamp  # reused
    config.shapes = ShapesWorldConfig(**settings, seed=5)
    prepare_data(config, progress=False)
    assert (root / "train.json").stat().st_mtime_ns != stamp  # other settings: regenerated
    with pytest.raises(InputError, match="no training file"):
        prepare_data(DataConfig(path=str(tmp_path / "none"), shapes=None), progress=False)


def test_training_curves_png(tmp_path: Path) -> None:
    from PIL import Image

    from tinyvlm.train.curves import plot_training

    metrics = tmp_path / "metrics.jsonl"
    assert plot_training(metrics, tmp_path / "none.png") is None
    metrics.write_text("".join(json.dumps({"stage": s, "step": i, "loss": 1.0 / i}) + "\n"
                               for s in ("a", "b") for i in (1, 2, 3)))
    out = plot_training(metrics, tmp_path / "t.png")
    assert out is not None
    with Image.open(out) as img:
        assert img.format == "PNG" and img.size[0] > img.size[1]


def test_a_fresh_start_forgets_an_earlier_runs_checkpoints(shapes_tokenizer: Tokenizer,
                                                           shapes_dir: Path,
                                                           tmp_path: Path) -> None:
    run(shapes_tokenizer, shapes_dir, tmp_path, stage(steps=6))
    run(shapes_tokenizer, shapes_dir, tmp_path, stage(steps=3))
    assert Checkpoints(RunDir(tmp_path), "sft", 2).steps() == [3]


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_is_bf16_only_where_the_cpu_has_it(native: bool,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """`precision: auto` autocasts to bf16 on a CPU with AVX512-BF16 or AMX and stays fp32 on
    one that would emulate it; fp32 and bf16 mean what they say everywhere."""
    from tinyvlm.train.runtime import Runtime, resolve_precision

    cpu = torch.device("cpu")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert resolve_precision("auto", cpu) == ("bf16" if native else "fp32")
    assert resolve_precision("fp32", cpu) == "fp32" and resolve_precision("bf16", cpu) == "bf16"
    layer = torch.nn.Linear(4, 4)
    runtime = Runtime(cpu)
    for precision, dtype in (("auto", torch.bfloat16 if native else torch.float32),
                             ("bf16", torch.bfloat16), ("fp32", torch.float32)):
        with runtime.autocast(precision):
            assert layer(torch.ones(2, 4)).dtype == dtype
