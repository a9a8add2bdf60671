"""Configuration dataclasses: model, tokenizer, data, training stages, evaluation, recipes.

Every hyperparameter lives here. Each dataclass round-trips through plain dicts (the schema
module), so the same objects are written to config.json (model directories) and read from
YAML recipes. Unknown keys are errors that name the file and the closest valid key.
"""

from tinyvlm.config.checks import check_model
from tinyvlm.config.data import DataConfig, ShapesWorldConfig, TokenizerConfig
from tinyvlm.config.model import (
    MODEL_MODULES,
    ChatFormat,
    ChatTemplate,
    ConnectorConfig,
    FastVConfig,
    ImagePreprocess,
    LanguageConfig,
    ModelConfig,
    MoEConfig,
    PruneConfig,
    RopeScaling,
    VisionConfig,
    VLoRAConfig,
)
from tinyvlm.config.recipe import (
    Recipe,
    RenamedKeyWarning,
    check_recipe,
    find_recipe,
    load_recipe,
    stage_refs,
)
from tinyvlm.config.stages import (
    BuildPairsConfig,
    DistillConfig,
    EvalConfig,
    MimicConfig,
    PairsConfig,
    PreferenceConfig,
    StageConfig,
)
from tinyvlm.schema import dump_yaml, from_dict, load_yaml, to_dict

__all__ = [
    "MODEL_MODULES",
    "BuildPairsConfig",
    "ChatFormat",
    "ChatTemplate",
    "ConnectorConfig",
    "DataConfig",
    "DistillConfig",
    "EvalConfig",
    "FastVConfig",
    "ImagePreprocess",
    "LanguageConfig",
    "MimicConfig",
    "MoEConfig",
    "ModelConfig",
    "PairsConfig",
    "PreferenceConfig",
    "PruneConfig",
    "Recipe",
    "RenamedKeyWarning",
    "RopeScaling",
    "ShapesWorldConfig",
    "StageConfig",
    "TokenizerConfig",
    "VLoRAConfig",
    "VisionConfig",
    "check_model",
    "check_recipe",
    "dump_yaml",
    "find_recipe",
    "from_dict",
    "load_recipe",
    "load_yaml",
    "stage_refs",
    "to_dict",
]
