from pathlib import Path

import torch

from tinyvlm.config import StageConfig
from tinyvlm.data import shapes
from tinyvlm.data.collate import IGNORE
from tinyvlm.data.tokenizer import Tokenizer
from tinyvlm.models.vlm import TinyVLM
from tinyvlm.train.objectives import PatchLabels, PatchWords

from .conftest import tiny_model_config, tiny_recipe


def test_patch_words_targets_name_each_patch(shapes_tokenizer: Tokenizer, shapes_dir: Path
                                             ) -> None:
    model = TinyVLM.from_tokenizer(tiny_model_config(), shapes_tokenizer)
    obj = PatchWords(model)
    tok = shapes_tokenizer
    # Label 0 is "nothing here"; shape label len(SHAPES)+1 marks the word's patches.
    assert obj.vocab_shape.tolist() == [IGNORE, *(tok.encode(s)[0] for s in shapes.SHAPES),
                                           IGNORE]
    assert obj.vocab_colour[1] == tok.encode(shapes.COLOURS[0])[0]
    source = obj.data(model, tiny_recipe(shapes_dir).data, StageConfig())
    batch = source.collate(source.items[:2])
    assert batch.pixel_values.shape == (2, 3, 32, 32)
    assert batch.labels["shape"].shape == (2, model.config.vision.num_patches)
    out = obj(model, batch)
    n_targets = sum(int((getattr(obj, f"vocab_{k}")[batch.labels[k].flatten()] != IGNORE).sum())
                    for k in obj.keys)
    assert out.units == n_targets > 0 and torch.isfinite(out.loss)


def test_patch_words_trains_only_through_the_connector(shapes_tokenizer: Tokenizer,
                                                       shapes_dir: Path) -> None:
    model = TinyVLM.from_tokenizer(tiny_model_config(), shapes_tokenizer)
    obj = PatchWords(model)
    source = obj.data(model, tiny_recipe(shapes_dir).data, StageConfig())
    model.requires_grad_(False)
    model.connector.requires_grad_(True)
    opt = torch.optim.AdamW(model.connector.parameters(), lr=3e-2)
    batch = source.collate(source.items[:8])
    losses = []
    for _ in range(30):
        out = obj(model, batch)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert losses[-1] < 0.8 * losses[0]


def test_patch_labels_has_a_head_per_label(shapes_tokenizer: Tokenizer) -> None:
    model = TinyVLM.from_tokenizer(tiny_model_config(), shapes_tokenizer)
    obj = PatchLabels(model)
    assert set(obj.heads) == {"shape", "colour", "size", "word", "row", "col"}
    assert obj.heads["colour"].out_features == len(shapes.COLOURS) + 1
