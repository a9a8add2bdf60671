"""Nothing lost: corrupt checkpoints are detected and resume falls back to a good one,
bit-exact; non-finite training stops (or skips) instead of saving NaN; one run at a time; a
changed recipe is not resumed silently; Ctrl-C saves; metrics never hold a step twice."""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path

import pytest
import torch

from tinyvlm.config import StageConfig
from tinyvlm.data.tokenizer import Tokenizer
from tinyvlm.errors import InputError, TrainingInterrupted
from tinyvlm.models.vlm import TinyVLM
from tinyvlm.rundir import RunDir
from tinyvlm.train.checkpoints import Checkpoints, CorruptCheckpointWarning
from tinyvlm.train.loop import TrainingDiverged, train_stage
from tinyvlm.train.objectives import build_objective
from tinyvlm.train.pipeline import run_recipe

from .conftest import tiny_model_config, tiny_recipe


def fresh(tok: Tokenizer) -> TinyVLM:
    torch.manual_seed(0)
    return TinyVLM.from_tokenizer(tiny_model_config(), tok)


def stage(**kw: object) -> StageConfig:
    base = {"steps": 6, "batch_size": 4, "warmup_steps": 2, "log_every": 1, "lr": 3e-3,
            "checkpoint_every": 2, "keep_checkpoints": 0}
    return StageConfig(**{**base, **kw})  # type: ignore[arg-type]


def train(tok: Tokenizer, shapes_dir: Path, out: Path, st: StageConfig, resume: bool = False,
          stop_after: int | None = None, runtime: object = None) -> TinyVLM:
    """One stage; stop_after: fail right after that step's checkpoint (a killed process)."""
    model = fresh(tok)
    obj = build_objective(st.objective, model)
    data = obj.data(model, tiny_recipe(shapes_dir).data, st)
    original = Checkpoints.save

    def save_then_die(self: Checkpoints, step: int, *args: object) -> Path:
        path = original(self, step, *args)  # type: ignore[arg-type]
        if step == stop_after:
            raise RuntimeError("killed")
        return path

    Checkpoints.save = save_then_die  # type: ignore[method-assign]
    try:
        train_stage(model, st, obj, data, out, resume=resume, progress=False,
                    runtime=runtime)  # type: ignore[arg-type]
    finally:
        Checkpoints.save = original  # type: ignore[method-assign]
    return model


def same_weights(a: TinyVLM, b: TinyVLM) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(),
                                                 b.state_dict().values(), strict=True))


def corrupt(step_dir: Path, how: str) -> None:
    weights, trainer = step_dir / "model" / "model.safetensors", step_dir / "trainer.pt"
    if how == "truncated weights":
        weights.write_bytes(weights.read_bytes()[:100])
    elif how == "flipped byte":
        data = bytearray(weights.read_bytes())
        data[-5] ^= 0x10
        weights.write_bytes(bytes(data))
    elif how == "empty trainer.pt":
        trainer.write_bytes(b"")
    elif how == "missing trainer.pt":
        trainer.unlink()
    elif how == "empty step directory":
        import shutil

        shutil.rmtree(step_dir)
        step_dir.mkdir()


@pytest.fixture(scope="module")
def straight(shapes_tokenizer: Tokenizer, shapes_dir: Path,
             tmp_path_factory: pytest.TempPathFactory) -> TinyVLM:
    return train(shapes_tokenizer, shapes_dir, tmp_path_factory.mktemp("straight"), stage())


@pytest.mark.parametrize("how", ["truncated weights", "flipped byte", "empty trainer.pt",
                                 "missing trainer.pt", "empty step directory"])
def test_resume_falls_back_to_the_newest_good_checkpoint(
        how: str, straight: TinyVLM, shapes_tokenizer: Tokenizer, shapes_dir: Path,
        tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="killed"):
        train(shapes_tokenizer, shapes_dir, tmp_path, stage(), stop_after=4)
    run = RunDir(tmp_path)
    (run.stage_dir("sft") / ".step-000006.x1y2z3").mkdir()  # an interrupted write's leftover
    corrupt(run.step_dir("sft", 4), how)
    with pytest.warns(CorruptCheckpointWarning, match="step-000004 is unusable"):
        resumed = train(shapes_tokenizer, shapes_dir, tmp_path, stage(), resume=True)
    assert same_weights(resumed, straight)  # from step 2, bit-exact
    assert run.steps("sft") == [2, 4, 6]
    assert not [p for p in run.stage_dir("sft").iterdir() if p.name.startswith(".")]
    steps = [json.loads(line)["step"] for line in run.metrics.read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]  # never a step twice


@pytest.mark.parametrize("how", ["flipped byte in a shard", "missing rank state",
                                 "missing metadata"])
def test_sharded_checkpoints_fall_back_and_resume_on_one_process(
        how: str, straight: TinyVLM, shapes_tokenizer: Tokenizer, shapes_dir: Path,
        tmp_path: Path) -> None:
    """Checkpoints of a distributed run (torch.distributed.checkpoint shards, here from a
    one-process group) carry checksums: a damaged one is skipped, and a plain process
    resumes from the one before, ending bit for bit where an uninterrupted run ends."""
    from tinyvlm.train.distributed import DistributedRuntime

    from .conftest import one_process_group

    with one_process_group(), pytest.raises(RuntimeError, match="killed"):
        train(shapes_tokenizer, shapes_dir, tmp_path, stage(), stop_after=4,
              runtime=DistributedRuntime(rank=0, world_size=1))
    run = RunDir(tmp_path)
    step4 = run.step_dir("sft", 4)
    assert (step4 / "dcp" / ".metadata").is_file() and not (step4 / "model").exists()
    shard = next((step4 / "dcp").glob("*.distcp"))
    if how == "flipped byte in a shard":
        data = bytearray(shard.read_bytes())
        data[len(data) // 2] ^= 0x10
        shard.write_bytes(bytes(data))
    elif how == "missing rank state":
        (step4 / "rng" / "rank-00000.pt").unlink()
    else:
        (step4 / "dcp" / ".metadata").unlink()
    with pytest.warns(CorruptCheckpointWarning, match="step-000004 is unusable"):
        resumed = train(shapes_tokenizer, shapes_dir, tmp_path, stage(), resume=True)
    assert same_weights(resumed, straight)
    assert run.steps("sft") == [2, 4, 6]
    assert not (run.step_dir("sft", 6) / "dcp").exists()  # one process writes whole files


def test_metrics_never_hold_a_step_twice_without_a_checkpoint(
        shapes_tokenizer: Tokenizer, shapes_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="killed"):  # dies at its only checkpoint
        train(shapes_tokenizer, shapes_dir, tmp_path, stage(checkpoint_every=0), stop_after=6)
    run = RunDir(tmp_path)
    import shutil

    shutil.rmtree(run.stage_dir("sft"))  # as if killed before any checkpoint
    train(shapes_tokenizer, shapes_dir, tmp_path, stage(checkpoint_every=0), resume=True)
    steps = [json.loads(line)["step"] for line in run.metrics.read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("lr", [1e10])
def test_a_non_finite_loss_stops_the_stage_and_keeps_the_last_checkpoint(
        lr: float, shapes_tokenizer: Tokenizer, shapes_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(TrainingDiverged, match=r"stage 'sft' stopped at step \d+: loss"):
        train(shapes_tokenizer, shapes_dir, tmp_path, stage(lr=lr, steps=8, warmup_steps=0))
    run = RunDir(tmp_path)
    for step in run.steps("sft"):  # every checkpoint written holds finite weights
        model = TinyVLM.from_pretrained(run.step_dir("sft", step) / "model")
        assert all(p.isfinite().all() for p in model.parameters())


def test_non_finite_steps_can_be_skipped_and_counted(shapes_tokenizer: Tokenizer,
                                                     shapes_dir: Path, tmp_path: Path) -> None:
    st = stage(lr=1e10, steps=8, warmup_steps=0, on_nonfinite="skip")
    model = train(shapes_tokenizer, shapes_dir, tmp_path, st)
    rows = [json.loads(line) for line in RunDir(tmp_path).metrics.read_text().splitlines()]
    assert rows[-1]["skipped_steps"] > 0
    assert all(p.isfinite().all() for p in model.parameters())


def test_a_second_run_into_the_same_directory_is_refused(shapes_dir: Path,
                                                         tmp_path: Path) -> None:
    with RunDir(tmp_path).lock(), pytest.raises(InputError, match="another run is using"):
        run_recipe(tiny_recipe(shapes_dir, steps=2), tmp_path, progress=False)
    run_recipe(tiny_recipe(shapes_dir, steps=2), tmp_path, progress=False)  # free again


def test_resume_refuses_a_recipe_changed_in_what_checkpoints_depend_on(
        shapes_dir: Path, tmp_path: Path) -> None:
    recipe = tiny_recipe(shapes_dir, steps=3)
    run_recipe(recipe, tmp_path, progress=False)
    changed = tiny_recipe(shapes_dir, steps=3, lr=0.5)
    with pytest.raises(InputError, match=r"recipe\.stages\[0\]\.lr \(0\.001 -> 0\.5\)"):
        run_recipe(changed, tmp_path, resume=True, progress=False)
    longer = tiny_recipe(shapes_dir, steps=5)
    with pytest.raises(InputError, match=r"stages\[0\]\.steps \(3 -> 5\)"):
        run_recipe(longer, tmp_path, resume=True, progress=False)
    logging = tiny_recipe(shapes_dir, steps=3, log_every=2)  # free to change
    run_recipe(logging, tmp_path, resume=True, progress=False)
    more = tiny_recipe(shapes_dir, steps=3)
    more.stages.append(StageConfig(name="more", steps=2, batch_size=4, warmup_steps=1))
    run_recipe(more, tmp_path, resume=True, progress=False)  # stages added at the end


def test_a_signal_saves_a_checkpoint_at_the_step_boundary(shapes_tokenizer: Tokenizer,
                                                          shapes_dir: Path,
                                                          tmp_path: Path) -> None:
    model = fresh(shapes_tokenizer)
    st = stage(steps=50, checkpoint_every=0)
    obj = build_objective("sft", model)
    data = obj.data(model, tiny_recipe(shapes_dir).data, st)
    collate = data.collate
    calls = []

    def collate_and_signal(items):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == 3:  # during step 3: SIGTERM, as a scheduler sends it
            os.kill(os.getpid(), signal.SIGTERM)
        return collate(items)

    data.collate = collate_and_signal
    assert threading.current_thread() is threading.main_thread()
    with pytest.raises(TrainingInterrupted, match="after step 3; its checkpoint at step 3"):
        train_stage(model, st, obj, data, tmp_path, progress=False)
    assert RunDir(tmp_path).steps("sft") == [3]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored


def test_a_full_disk_while_checkpointing_is_one_line_and_keeps_the_last_one(
        shapes_tokenizer: Tokenizer, shapes_dir: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    with pytest.raises(RuntimeError, match="killed"):
        train(shapes_tokenizer, shapes_dir, tmp_path, stage(), stop_after=2)
    real_save = torch.save

    def full(obj: object, f: object, *a: object, **k: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(f))

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(InputError, match="no space left on device while writing step 4 of "
                                         "stage 'sft'; the previous checkpoint is intact"):
        train(shapes_tokenizer, shapes_dir, tmp_path, stage(), resume=True)
    monkeypatch.setattr(torch, "save", real_save)
    run = RunDir(tmp_path)
    assert run.steps("sft") == [2] and Checkpoints(run, "sft", 0).problem(2) is None
    assert not [p for p in run.stage_dir("sft").iterdir() if p.name.startswith(".")]


def test_checkpoints_have_the_usual_modes_and_an_old_empty_trainer_state_is_one_line(
        shapes_tokenizer: Tokenizer, shapes_dir: Path, tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        train(shapes_tokenizer, shapes_dir, tmp_path, stage(steps=2))
    finally:
        os.umask(old)
    step = RunDir(tmp_path).step_dir("sft", 2)
    assert step.stat().st_mode & 0o777 == 0o755
    assert (step / "trainer.pt").stat().st_mode & 0o777 == 0o644
    (step / "checksums.json").unlink()  # a checkpoint from before checksums
    (step / "trainer.pt").write_bytes(b"")
    with pytest.raises(InputError, match="cannot read the checkpoint"):
        Checkpoints(RunDir(tmp_path), "sft", 0).restore(2, fresh(shapes_tokenizer))


def test_an_interrupted_run_says_how_to_resume(monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture) -> None:
    import sys

    from tinyvlm import cli

    def interrupted() -> None:
        raise TrainingInterrupted("sft", 7, True)

    monkeypatch.setattr(sys, "argv", ["tinyvlm", "train", "demo", "--out", "runs/my run"])
    monkeypatch.setattr(cli.cli, "main", lambda **kw: interrupted())
    with pytest.raises(SystemExit) as stop:
        cli.main()
    err = capsys.readouterr().err
    assert stop.value.code == 130
    assert "interrupted in stage 'sft' after step 7" in err
    assert "resume with: tinyvlm train demo --out 'runs/my run' --resume" in err


def test_progress_off_a_terminal_is_a_plain_line(capsys: pytest.CaptureFixture,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from tinyvlm import progress

    monkeypatch.setattr(progress, "INTERVAL", 0.0)
    bar = progress.Progress(4, "sft", "step")
    for _ in range(4):
        bar.update(1)
    bar.close()
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("sft: 1/4 step (25%)") and "step/s" in lines[0]
    assert "\r" not in "".join(lines) and lines[-1].startswith("sft: 4/4 step (100%)")


def test_a_failed_fresh_start_loses_nothing_of_the_earlier_run(shapes_dir: Path,
                                                               tmp_path: Path) -> None:
    recipe = tiny_recipe(shapes_dir, steps=3)
    first = run_recipe(recipe, tmp_path, progress=False)
    bad = tiny_recipe(shapes_dir, steps=3)
    bad.model.language.max_seq_len = 8  # every conversation is too long: fails at step 1
    with pytest.raises(InputError, match="exceed max_seq_len 8"):
        run_recipe(bad, tmp_path, progress=False)
    assert RunDir(tmp_path).steps("sft") == [3]  # the earlier run's checkpoint is still there
    again = run_recipe(recipe, tmp_path, resume=True, progress=False)
    assert same_weights(first, again)


def test_resume_compares_each_checkpoint_with_the_recipe_not_recipe_yaml(
        shapes_dir: Path, tmp_path: Path) -> None:
    run_recipe(tiny_recipe(shapes_dir, steps=3), tmp_path, progress=False)
    (tmp_path / "recipe.yaml").unlink()
    wider = tiny_recipe(shapes_dir, steps=3)
    wider.model.language.dim = 64
    with pytest.raises(InputError, match=r"recipe\.model\.language\.dim \(32 -> 64\)"):
        run_recipe(wider, tmp_path, resume=True, progress=False)


def test_a_checkpoint_whose_checksums_were_deleted_is_not_trusted(
        straight: TinyVLM, shapes_tokenizer: Tokenizer, shapes_dir: Path,
        tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="killed"):
        train(shapes_tokenizer, shapes_dir, tmp_path, stage(), stop_after=4)
    step = RunDir(tmp_path).step_dir("sft", 4)
    (step / "depends.json").write_text("{}")  # a checkpoint of this version of the format
    for manifest in (step / "checksums.json", step / "model" / "checksums.json"):
        manifest.unlink()
    corrupt(step, "flipped byte")
    with pytest.warns(CorruptCheckpointWarning, match="checksums.json is missing"):
        resumed = train(shapes_tokenizer, shapes_dir, tmp_path, stage(), resume=True)
    assert same_weights(resumed, straight)
