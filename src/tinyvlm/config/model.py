"""Model hyperparameters: vision encoder, connector, language model, MoE, chat format."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from tinyvlm.errors import InputError

# The three modules of every TinyVLM, in forward order: what `trainable`, `lr_scale`, `init`
# and the cost tables name.
MODEL_MODULES = ("vision", "connector", "language")


@dataclass
class MoEConfig:
    """Sparse mixture-of-experts FFNs, for the language model or the vision encoder.

    Experts are SwiGLU FFNs; a linear router scores them in fp32 and each token goes to its
    top_k. LLaVA-MoD's student: 4 experts, top-2, every other layer, balance_coef 0.01.
    """

    experts: int = 4
    top_k: int = 2
    # Which blocks are MoE: "all", "every-other" (1, 3, 5, ...: the first block stays dense),
    # or an explicit list of block indices (negative counts from the end).
    layers: str | list[int] = "every-other"
    hidden_dim: int | None = None  # each expert's hidden width; None: the dense FFN's
    # Experts per MoE block when they differ (a pruned single-task model), aligned with
    # moe_layers(); empty: `experts` everywhere.
    layer_experts: list[int] = field(default_factory=list)
    shared_expert_dim: int = 0  # > 0: an always-on SwiGLU expert of this width beside them
    normalize_gates: bool = True  # renormalise the top_k probabilities to sum to 1
    # "dropless" runs every choice; "capacity" gives each expert ceil(capacity_factor *
    # tokens * top_k / experts) slots and drops the overflow (top-1 choices first, then
    # token order), as GShard and Switch do.
    routing: str = "dropless"
    capacity_factor: float = 1.5
    eval_capacity_factor: float | None = None  # None: the training capacity factor
    balance_coef: float = 0.01  # load-balancing loss E * sum_e f_e * P_e
    z_coef: float = 0.0  # router z-loss mean(logsumexp(logits)^2)
    jitter: float = 0.0  # training only: router input scaled by U(1 - jitter, 1 + jitter)
    # Task-conditioned routing (M3ViT): "none", "embedding" (the router sees the token
    # concatenated with a learned task embedding) or "multi_gate" (one router per task).
    task_routing: str = "none"
    num_tasks: int = 0
    task_dim: int = 16
    # Task-expert mutual information (Mod-Squad): its negative, weighted by this, joins the
    # auxiliary loss, so each task concentrates on a few experts while the balance loss keeps
    # all experts in use: the sparse per-task pathways that single-task pruning keeps.
    task_mi_coef: float = 0.0
    # Qwen2-MoE: the shared expert's output is scaled by sigmoid(w . x), a learned per-token
    # gate (a Linear(dim, 1)); False: the shared expert is always fully on.
    shared_expert_gate: bool = False

    def check(self, depth: int, source: str | Path | None = None, key: str = "moe") -> None:
        """Every value in range, or one InputError naming the key."""
        problems = [
            (self.experts >= 1, "experts", "must be >= 1"),
            (1 <= self.top_k <= self.experts, "top_k", f"must lie in 1..experts ({self.experts})"),
            (self.routing in ("dropless", "capacity"), "routing", "must be dropless or capacity"),
            (self.capacity_factor > 0, "capacity_factor", "must be > 0"),
            (self.task_dim >= 1, "task_dim", "must be >= 1"),
            (self.eval_capacity_factor is None or self.eval_capacity_factor > 0,
             "eval_capacity_factor", "must be > 0"),
            (0 <= self.jitter < 1, "jitter", "must lie in [0, 1)"),
            (self.task_routing in ("none", "embedding", "multi_gate"), "task_routing",
             "must be none, embedding or multi_gate"),
            (self.task_routing == "none" or self.num_tasks >= 1, "num_tasks",
             "must be >= 1 with task routing"),
            (all(n >= 1 for n in self.layer_experts), "layer_experts", "entries must be >= 1"),
            (self.hidden_dim is None or self.hidden_dim >= 1, "hidden_dim", "must be >= 1"),
            (math.isfinite(self.capacity_factor), "capacity_factor", "must be finite"),
            (math.isfinite(self.balance_coef) and self.balance_coef >= 0, "balance_coef",
             "must be a finite number >= 0"),
            (math.isfinite(self.z_coef) and self.z_coef >= 0, "z_coef",
             "must be a finite number >= 0"),
            (math.isfinite(self.task_mi_coef) and self.task_mi_coef >= 0, "task_mi_coef",
             "must be a finite number >= 0"),
            (self.shared_expert_dim >= 0, "shared_expert_dim", "must be >= 0"),
            (isinstance(self.layers, str) or len(set(self.layers)) == len(self.layers),
             "layers", "must not list a block twice"),
        ]
        for ok, name, message in problems:
            if not ok:
                raise InputError(f"'{key}.{name}' {message}", source)
        try:
            self.experts_at(depth)
        except ValueError as e:
            raise InputError(f"'{key}': {e}", source) from None

    def moe_layers(self, depth: int) -> list[int]:
        """The block indices that are MoE, for a stack of `depth` blocks."""
        if self.layers == "all":
            return list(range(depth))
        if self.layers == "every-other":
            return list(range(1, depth, 2))
        if isinstance(self.layers, str):
            raise ValueError(f"moe.layers must be 'all', 'every-other' or a list of block "
                             f"indices, got {self.layers!r}")
        bad = [i for i in self.layers if not -depth <= i < depth]
        if bad:
            raise ValueError(f"moe.layers {bad} outside the {depth} blocks")
        return sorted({i % depth for i in self.layers})

    def experts_at(self, depth: int) -> dict[int, int]:
        """Block index -> number of experts, for every MoE block."""
        layers = self.moe_layers(depth)
        if self.layer_experts and len(self.layer_experts) != len(layers):
            raise ValueError(f"moe.layer_experts has {len(self.layer_experts)} entries for "
                             f"{len(layers)} MoE blocks")
        return dict(zip(layers, self.layer_experts or [self.experts] * len(layers), strict=True))


@dataclass
class ImagePreprocess:
    """How an image becomes pixel values: resized (and cropped) as uint8, then
    (x * rescale - mean) / std per channel. The defaults map [0, 255] to [-1, 1]; imported
    models take their processor's preprocessor_config.json values."""

    # "square": straight to image_size x image_size; "shortest_edge": the short side to
    # image_size keeping the aspect ratio, then a centre crop (CLIP's processor).
    resize: str = "square"
    shortest_edge: int = 0  # "shortest_edge": the short side's length (0: image_size)
    resample: str = "bicubic"  # "bicubic", "bilinear" or "nearest" (PIL's filters)
    rescale: float = 1 / 255
    mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    std: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])


@dataclass
class VisionConfig:
    image_size: int = 64
    patch_size: int = 16
    channels: int = 3
    dim: int = 128
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    mlp_dim: int | None = None  # the MLP's hidden width; None: int(dim * mlp_ratio)
    position: str = "learned"  # "learned" or "sincos" (2-D sine-cosine, fixed)
    norm_eps: float = 1e-6
    dropout: float = 0.0
    # Layers (0-based; negative counts from the end) whose [CLS] attention is returned, so
    # token pruning can rank patches without a second pass.
    cls_attention_layers: list[int] = field(default_factory=lambda: [-1])
    moe: MoEConfig | None = None  # sparse FFNs (task-routed for M3ViT); None: dense
    # The shapes of public towers. act: "gelu" (exact), "quick_gelu" (CLIP) or "gelu_tanh"
    # (SigLIP); cls_token: False for SigLIP; pre_norm: a LayerNorm over the embeddings
    # before the first block (CLIP's pre_layrnorm).
    act: str = "gelu"
    cls_token: bool = True
    pre_norm: bool = False
    # What the connector reads: the output of block `feature_layer` (LLaVA-1.5: -2), after
    # the final LayerNorm when feature_norm (LLaVA never normalises: false makes a model
    # exportable), with the [CLS] token in front when feature_cls (LLaVA's "full").
    feature_layer: int = -1
    feature_norm: bool = True
    feature_cls: bool = False
    preprocess: ImagePreprocess = field(default_factory=ImagePreprocess)

    @property
    def hidden_mlp_dim(self) -> int:
        return self.mlp_dim or int(self.dim * self.mlp_ratio)

    @property
    def feature_tokens(self) -> int:
        """Feature vectors per image handed to the connector."""
        return self.num_patches + int(self.feature_cls and self.cls_token)

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid**2


@dataclass
class VLoRAConfig:
    """Perceptual weights (VLoRA): the image becomes low-rank deltas of the language model's
    projections instead of visual tokens. Per weight type a generator of learned queries (one
    per modified layer) attends to the image features and emits A (d_in x rank) per image;
    B (rank x d_out) is learned per (type, layer) and starts at zero, so the model starts as
    the text-only LM. The delta is scaled by alpha / rank."""

    rank: int = 8
    alpha: float | None = None  # None: rank (scale 1)
    # q, k, v, o: those attention projections; m: a map from the FFN's input to its output.
    types: str = "qkvom"
    every: int = 1  # modify layers l with (l + 1) % every == 0
    dim: int = 128  # generator width
    depth: int = 2  # generator blocks (self-attention, cross-attention to the image, FFN)
    heads: int = 4
    mlp_ratio: float = 4.0


@dataclass
class PruneConfig:
    """Visual-token pruning before the language model: keep the patches with the highest
    [CLS] attention (FasterVLM: one layer; VTC-CLS: summed over several), in their original
    order, optionally with the dropped ones averaged into one more token."""

    keep: float = 0.25  # a share of the patches in (0, 1], or a count >= 1 when > 1
    # ViT layers whose [CLS] attention ranks the patches (summed); empty: the feature layer
    layers: list[int] = field(default_factory=list)
    merge: bool = False
    # > 0: a count per image: the fewest top patches whose [CLS] attention reaches this share
    # of the total, at most `keep` of them (the slots each <image> expands to); the unused
    # slots are masked out of the LM's attention, as if absent.
    mass: float = 0.0

    def count(self, patches: int) -> int:
        """Patches kept of `patches`."""
        n = round(self.keep * patches) if self.keep <= 1 else int(self.keep)
        return max(1, min(patches, n))


@dataclass
class ConnectorConfig:
    kind: str = "mlp"  # a key of models.connectors.CONNECTORS
    hidden_dim: int | None = None  # None: the language model's width
    # "learned": add a learned vector per patch to the projected tokens (2-D place in what the
    # language model reads; kind "mlp"); "none": the projector's output as it is.
    position: str = "none"
    vlora: VLoRAConfig | None = None  # settings of kind "vlora"
    prune: PruneConfig | None = None  # settings of kind "prune"


@dataclass
class FastVConfig:
    """FastV: after layer `layer` (0-based: the blocks after it see fewer tokens), keep the
    image tokens the last prompt token attends to most (heads averaged), `keep` of them."""

    layer: int = 2
    keep: float = 0.5  # share of each row's image tokens kept, in (0, 1]


@dataclass
class RopeScaling:
    """Rotary frequency scaling. "llama3": frequencies with wavelengths beyond
    original_max_len / low_freq_factor are divided by `factor`, those below
    original_max_len / high_freq_factor kept, and the band between interpolated (Llama 3.1);
    "linear": every frequency divided by `factor` (positions interpolated)."""

    kind: str = "llama3"
    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_len: int = 8192


@dataclass
class LanguageConfig:
    vocab_size: int = 0  # 0: taken from the tokenizer when the model is built
    dim: int = 192
    depth: int = 4
    heads: int = 6
    kv_heads: int = 2
    ffn_dim: int | None = None  # None: about 8/3 * dim, rounded up to a multiple of 32
    max_seq_len: int = 512
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    dropout: float = 0.0
    tie_embeddings: bool = True
    moe: MoEConfig | None = None  # sparse FFNs (LLaVA-MoD's student); None: dense
    # Public checkpoints: biases of q/k/v (Qwen2) and of o (Llama's attention_bias), a head
    # width other than dim / heads, and Llama-3's rotary frequency scaling.
    qkv_bias: bool = False
    o_bias: bool = False
    head_size: int | None = None  # None: dim // heads
    rope_scaling: RopeScaling | None = None
    fastv: FastVConfig | None = None  # image-token pruning inside the LM (inference only)

    @property
    def head_dim(self) -> int:
        return self.head_size or self.dim // self.heads

    @property
    def hidden_ffn_dim(self) -> int:
        if self.ffn_dim is not None:
            return self.ffn_dim
        return -(-int(8 * self.dim / 3) // 32) * 32


@dataclass
class ChatFormat:
    """Role markers and special tokens shared by training, evaluation and chat.

    A conversation renders as
    `<bos><|user|><image>...\\nquestion<|end|><|assistant|>answer<|end|><|user|>...`;
    each `<image>` expands to one token per visual feature.
    """

    bos: str = "<bos>"
    pad: str = "<pad>"
    unk: str = "<unk>"
    image: str = "<image>"
    user: str = "<|user|>"
    assistant: str = "<|assistant|>"
    end: str = "<|end|>"
    # A Hugging Face chat template (Jinja): conversations render through it as transformers
    # renders them, `end` is the token that ends an answer (and generation), `eos` the
    # template's eos_token ("" : end); user, assistant, unk and bos may then be "".
    template: str = ""
    eos: str = ""
    # More tokens that end an answer when generated (the other eos ids of a checkpoint's
    # generation_config.json, e.g. Llama 3's <|end_of_text|> beside <|eot_id|>).
    stop: list[str] = field(default_factory=list)

    @property
    def special_tokens(self) -> list[str]:
        tokens = [self.pad, self.unk, self.bos, self.image, self.user, self.assistant, self.end]
        return [t for t in tokens if t] if self.template else tokens


ChatTemplate = ChatFormat  # the earlier name


@dataclass
class ModelConfig:
    vision: VisionConfig = field(default_factory=VisionConfig)
    connector: ConnectorConfig = field(default_factory=ConnectorConfig)
    language: LanguageConfig = field(default_factory=LanguageConfig)
    chat: ChatFormat = field(default_factory=ChatFormat)
    # Token ids of the chat format's special tokens, filled from the tokenizer.
    pad_token_id: int = 0
    bos_token_id: int = 2
    image_token_id: int = 3
    eos_token_id: int = 6
    stop_token_ids: list[int] = field(default_factory=list)  # more ids that end generation
