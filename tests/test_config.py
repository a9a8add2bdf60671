from pathlib import Path

import pytest

from tinyvlm.config import (
    ModelConfig,
    Recipe,
    StageConfig,
    dump_yaml,
    from_dict,
    load_recipe,
    load_yaml,
    to_dict,
)
from tinyvlm.errors import InputError

RECIPES = Path(__file__).parents[1] / "src" / "tinyvlm" / "recipes"


def test_model_config_round_trips_through_dict_and_yaml(tmp_path: Path) -> None:
    config = ModelConfig()
    config.vision.position = "sincos"
    config.language.kv_heads = 3
    assert from_dict(ModelConfig, to_dict(config)) == config
    path = tmp_path / "m.yaml"
    path.write_text(dump_yaml(config))
    assert from_dict(ModelConfig, load_yaml(path)) == config


@pytest.mark.parametrize("recipe", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.stem)
def test_builtin_recipes_load_and_round_trip(recipe: Path) -> None:
    r = load_recipe(recipe)
    assert r.stages
    assert from_dict(Recipe, to_dict(r)) == r


def test_unknown_key_names_file_and_closest_key(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("name: x\nstages:\n  - name: a\n    stepz: 3\n")
    with pytest.raises(InputError) as err:
        load_recipe(path)
    msg = str(err.value)
    assert str(path) in msg and "recipe.stages[0].stepz" in msg and "'steps'" in msg


def test_wrong_type_is_an_input_error() -> None:
    with pytest.raises(InputError, match=r"StageConfig.steps' must be int"):
        from_dict(StageConfig, {"steps": "many"})
    with pytest.raises(InputError, match="must be a list"):
        from_dict(StageConfig, {"trainable": "vision"})


def test_yaml_numbers_without_dot_become_floats() -> None:
    assert from_dict(StageConfig, {"lr": "1e-3"}).lr == pytest.approx(1e-3)
    assert from_dict(StageConfig, {"lr": 1}).lr == 1.0


def test_malformed_yaml_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nstages: [\n  - a: 1\n")
    with pytest.raises(InputError, match=rf"{path}:\d+: malformed YAML"):
        load_recipe(path)


def test_recipe_without_stages_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("name: x\n")
    with pytest.raises(InputError, match="no stages"):
        load_recipe(path)


def test_shapesworld_keys_are_checked_at_load(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("name: x\ndata: {shapes: {num_trian: 5}}\nstages: [{name: a}]\n")
    with pytest.raises(InputError, match=r"r\.yaml: unknown key 'recipe\.data\.shapes\.num_trian'.*"
                                         r"'num_train'"):
        load_recipe(path)


def test_earlier_spellings_of_stage_keys_still_load_with_a_note(tmp_path: Path) -> None:
    from tinyvlm.config import RenamedKeyWarning

    recipe = tmp_path / "old.yaml"
    recipe.write_text(
        "name: old\nmodels: {teacher: {}}\nstages:\n"
        "  - {name: t, model: teacher}\n"
        "  - {name: s}\n"
        "  - {name: m, objective: mimic, distill: {teacher: 'stage:t'}}\n"
        "  - {name: u, action: upcycle, moe: {experts: 2, top_k: 1}}\n"
        "  - {name: p, action: preference_build, pairs: {samples: 2}}\n"
        "  - {name: pref, objective: preference, preference: {pairs: 'stage:p', "
        "teacher: 'stage:t'}}\n")
    with pytest.warns(RenamedKeyWarning) as notes:
        r = load_recipe(recipe)
    assert len(notes) == 4
    assert r.stages[2].mimic is not None and r.stages[2].mimic.teacher == "stage:t"
    assert r.stages[3].upcycle is not None and r.stages[3].upcycle.experts == 2
    assert r.stages[4].action == "build_pairs" and r.stages[4].build_pairs.samples == 2
    recipe.write_text("name: both\nstages:\n  - {name: m, objective: mimic, "
                      "distill: {teacher: x}, mimic: {teacher: x}}\n")
    with pytest.raises(InputError, match="both 'distill' and its new name 'mimic'"):
        load_recipe(recipe)


def test_imports_point_one_way() -> None:
    """The package's import graph has no cycle between files or subpackages."""
    import subprocess
    import sys

    tool = Path(__file__).resolve().parents[2] / "shared" / "tools" / "import_graph.py"
    if not tool.is_file():
        pytest.skip("the import-graph tool is not beside this checkout")
    src = Path(__file__).resolve().parents[1] / "src" / "tinyvlm"
    done = subprocess.run([sys.executable, str(tool), str(src)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout
    assert "0 file cycles; 0 package cycles" in done.stdout
