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
