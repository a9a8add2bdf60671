"""The connector contract: a connector returns a VisualConditioning (visual tokens and/or
per-image low-rank weight deltas) and reports its own cost. A zero-token, delta-only connector
registered here plugs in without any change to TinyVLM.forward, the collators or generation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from tinyvlm.analysis.cost import efficiency
from tinyvlm.config import ConnectorConfig, LanguageConfig, ModelConfig, VisionConfig
from tinyvlm.data.collate import PromptCollator, SFTCollator
from tinyvlm.data.conversation import Conversation
from tinyvlm.data.images import ImageStore
from tinyvlm.data.tokenizer import Tokenizer
from tinyvlm.models import connectors
from tinyvlm.models.connectors import Connector, ConnectorCost
from tinyvlm.models.context import LowRankDelta, VisualConditioning
from tinyvlm.models.vision import VisionOutput
from tinyvlm.models.vlm import TinyVLM
from tinyvlm.train.objectives import SFT

from .conftest import tiny_model_config

RANK = 2


class DeltaConnector(Connector):
    """No visual tokens: from the [CLS] feature, a rank-2 A per image for every layer's
    q_proj and FFN; B is learned per layer and starts at zero (the text-only model)."""

    def __init__(self, config: ConnectorConfig, vision: VisionConfig, language: LanguageConfig):
        super().__init__()
        self.num_tokens = 0
        self.depth, self.dim = language.depth, language.dim
        self.a = nn.Linear(vision.dim, 2 * language.depth * language.dim * RANK)
        self.b = nn.Parameter(torch.zeros(2 * language.depth, RANK, language.dim))

    def forward(self, vision: VisionOutput) -> VisualConditioning:
        a = self.a(vision.cls).view(-1, 2 * self.depth, self.dim, RANK)
        deltas = {}
        for layer in range(self.depth):
            for k, proj in enumerate(("q_proj", "ffn")):
                i = 2 * layer + k
                deltas[f"language.{layer}.{proj}"] = LowRankDelta(a[:, i], self.b[i], 0.5)
        return VisualConditioning(deltas=deltas)

    @classmethod
    def cost(cls, config: ModelConfig) -> ConnectorCost:
        d, depth = config.language.dim, config.language.depth
        out = 2 * depth * d * RANK
        return ConnectorCost(config.vision.dim * out + out + 2 * depth * RANK * d,
                             2 * config.vision.dim * out, 0)


@pytest.fixture
def delta_model(tokenizer: Tokenizer, monkeypatch: pytest.MonkeyPatch) -> TinyVLM:
    monkeypatch.setitem(connectors.CONNECTORS, "delta", DeltaConnector)
    config = tiny_model_config()
    config.connector = ConnectorConfig(kind="delta")
    torch.manual_seed(0)
    return TinyVLM.from_tokenizer(config, tokenizer).eval()


def convs(image: Path, n: int = 3) -> list[Conversation]:
    return [Conversation("a", [image], [("<image>\nhow many shapes are there?", "3")]),
            Conversation("b", [], [("what word is written in the image?", "cat")]),
            Conversation("c", [image], [("<image>\nwhat colour is the circle?", "red")])][:n]


@pytest.fixture
def image(tmp_path: Path) -> Path:
    from PIL import Image

    path = tmp_path / "img.png"
    Image.fromarray((torch.rand(32, 32, 3) * 255).byte().numpy()).save(path)
    return path


def sft_batch(model: TinyVLM, conversations: list[Conversation]):  # type: ignore[no-untyped-def]
    assert model.tokenizer is not None
    return SFTCollator(model.tokenizer, ImageStore(32), model.image_tokens, 128)(conversations)


def logits(model: TinyVLM, batch, images: bool = True) -> torch.Tensor:  # type: ignore[no-untyped-def]
    with torch.no_grad():
        return model(batch.input_ids, batch.attention_mask,
                     batch.pixel_values if images else None,
                     image_rows=batch.image_rows if images else None).logits


def test_zero_tokens_and_zero_b_is_the_text_only_model(delta_model: TinyVLM, image: Path) -> None:
    batch = sft_batch(delta_model, convs(image))
    assert delta_model.image_tokens == 0
    assert not (batch.input_ids == delta_model.config.image_token_id).any()  # no visual tokens
    assert batch.image_rows.tolist() == [0, 2]
    torch.testing.assert_close(logits(delta_model, batch), logits(delta_model, batch, False),
                               rtol=0, atol=0)


def test_deltas_reach_only_the_rows_with_images(delta_model: TinyVLM, image: Path) -> None:
    with torch.no_grad():
        delta_model.connector.b.normal_(std=0.5)
    batch = sft_batch(delta_model, convs(image))
    with_images, text_only = logits(delta_model, batch), logits(delta_model, batch, False)
    mask = batch.attention_mask.bool()
    assert not torch.allclose(with_images[0][mask[0]], text_only[0][mask[0]])
    torch.testing.assert_close(with_images[1], text_only[1])  # row 1 has no image
    # Per-sample deltas in a batch equal one-by-one runs.
    for row, conv in enumerate(convs(image)):
        alone = logits(delta_model, sft_batch(delta_model, [conv]))[0]
        n = int(mask[row].sum())
        torch.testing.assert_close(with_images[row, :n], alone[:n], atol=1e-5, rtol=1e-5)


def test_generation_keeps_the_deltas_at_every_step(delta_model: TinyVLM, image: Path) -> None:
    with torch.no_grad():
        delta_model.connector.b.normal_(std=2.0)
    tok = delta_model.tokenizer
    assert tok is not None
    batch = PromptCollator(tok, ImageStore(32), 0)(convs(image))
    kw = dict(max_new_tokens=6, image_rows=batch.image_rows)
    cached = delta_model.generate(batch.input_ids, batch.attention_mask, batch.pixel_values, **kw)
    recomputed = delta_model.generate(batch.input_ids, batch.attention_mask, batch.pixel_values,
                                      use_cache=False, **kw)
    assert torch.equal(cached, recomputed)
    # The reference: greedy decoding by full forward passes, the deltas applied every time.
    ids, mask = batch.input_ids, batch.attention_mask
    for step in range(cached.shape[1]):
        out = delta_model(ids, mask, batch.pixel_values, image_rows=batch.image_rows)
        nxt = out.logits[:, -1].argmax(-1)
        done = (cached[:, :step] == delta_model.config.eos_token_id).any(1)
        assert torch.equal(torch.where(done, cached[:, step], nxt), cached[:, step])
        ids = torch.cat([ids, cached[:, step : step + 1]], 1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)


def test_gradients_reach_the_connector_through_a_training_objective(delta_model: TinyVLM,
                                                                    image: Path) -> None:
    delta_model.train()
    out = SFT(delta_model)(delta_model, sft_batch(delta_model, convs(image)))
    out.loss.backward()
    assert delta_model.connector.b.grad is not None and delta_model.connector.b.grad.abs().sum() > 0


def test_connector_reports_its_own_cost(delta_model: TinyVLM) -> None:
    acct = efficiency(delta_model.config)
    assert acct["visual_tokens_per_image"] == 0
    assert acct["params"]["connector"]["total"] == sum(
        p.numel() for p in delta_model.connector.parameters())
    assert acct["connector_flops_per_image"] == DeltaConnector.cost(delta_model.config)\
        .flops_per_image


def test_a_delta_connector_without_image_rows_is_a_clear_error(delta_model: TinyVLM,
                                                               image: Path) -> None:
    batch = sft_batch(delta_model, convs(image))
    with pytest.raises(ValueError, match="image_rows"):
        delta_model(batch.input_ids, batch.attention_mask, batch.pixel_values)
