"""`tinyvlm import-hf` and `tinyvlm export-hf`: Hugging Face checkpoints in and out."""

from __future__ import annotations

from pathlib import Path

import click

from tinyvlm.errors import InputError


@click.command("import-hf")
@click.option("--model", "model_dir", default=None,
              help="A LlavaForConditionalGeneration directory.")
@click.option("--vision", "vision_dir", default=None,
              help="A CLIP or SigLIP (vision) directory, with --language.")
@click.option("--language", "language_dir", default=None,
              help="A Llama, Qwen2, Mixtral or Qwen2-MoE directory, with --vision.")
@click.option("--chat-template", "template_file", default=None,
              help="A Jinja chat template file for a language model that has none.")
@click.option("--feature-layer", type=int, default=None,
              help="With --vision: the hidden state the connector reads, numbered as LLaVA's "
                   "vision_feature_layer [default: -2 for CLIP, -1 for SigLIP].")
@click.option("--seed", type=click.IntRange(0, 2**63 - 1), default=0, show_default=True,
              help="Seed of the fresh projector (with --vision and --language).")
@click.option("--out", "out_dir", required=True, help="The tinyvlm model directory to write.")
def import_hf(model_dir: str | None, vision_dir: str | None, language_dir: str | None,
              template_file: str | None, feature_layer: int | None, seed: int,
              out_dir: str) -> None:
    """Import a Hugging Face checkpoint into tinyvlm's own modules.

    Either a whole LLaVA model (--model), or a vision tower and a language model assembled
    into a new VLM with a fresh projector (--vision and --language). Everything is read from
    local directories; transformers is not needed.

    \b
    Example:
      tinyvlm import-hf --model ~/models/llava-1.5-7b-hf --out models/teacher
      tinyvlm import-hf --vision ~/models/siglip-base --language ~/models/qwen2-0.5b \\
          --out models/student-init
    """
    from tinyvlm.models.hf import assemble, import_model

    if model_dir is not None and (vision_dir or language_dir):
        raise InputError("give either --model or --vision with --language, not both")
    if model_dir is None and not (vision_dir and language_dir):
        raise InputError("give --model DIR, or --vision DIR and --language DIR")
    for path in (model_dir, vision_dir, language_dir):
        if path is not None and Path(out_dir).resolve() == Path(path).resolve():
            raise InputError("--out is a directory it reads; choose another", out_dir)
    template = None
    if template_file is not None:
        if not Path(template_file).is_file():
            raise InputError("chat template file not found", template_file)
        template = Path(template_file).read_text()
    if model_dir is not None:
        model = import_model(model_dir)
    else:
        assert vision_dir is not None and language_dir is not None
        model = assemble(vision_dir, language_dir, template, feature_layer, seed)
    model.save_pretrained(out_dir)
    c = model.config
    click.echo(f"{model.num_parameters():,} parameters: {c.vision.depth}-layer "
               f"{c.vision.dim}-wide vision tower ({model.image_tokens} tokens per image), "
               f"{c.language.depth}-layer {c.language.dim}-wide language model"
               f"{' with MoE layers' if c.language.moe else ''}; written to {out_dir}")


@click.command("export-hf")
@click.argument("model_dir")
@click.option("--out", "out_dir", required=True, help="The directory to write.")
def export_hf(model_dir: str, out_dir: str) -> None:
    """Write MODEL_DIR as a LLaVA directory that transformers loads with no custom code:
    LlavaForConditionalGeneration.from_pretrained and AutoProcessor.from_pretrained.

    Dense language models become Llama (or Qwen2, with q/k/v biases) text models; MoE ones
    Mixtral (every layer sparse) or Qwen2-MoE. A model that LLaVA cannot express exactly is
    refused with every reason.

    \b
    Example:
      tinyvlm export-hf runs/llava-mod/model --out exported/student
    """
    from tinyvlm.cli.common import load_model
    from tinyvlm.models.hf import export_model

    if Path(out_dir).resolve() == Path(model_dir).resolve():
        raise InputError("--out is the model it reads; choose another directory", out_dir)
    model = load_model(model_dir)
    export_model(model, out_dir)
    click.echo(f"written to {out_dir}: load it with transformers' "
               "LlavaForConditionalGeneration.from_pretrained and AutoProcessor.from_pretrained")
