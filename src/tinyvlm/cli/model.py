"""`tinyvlm generate`, `tinyvlm info`, `tinyvlm upcycle`: use, inspect and reshape a model."""

from __future__ import annotations

import json
from pathlib import Path

import click

from tinyvlm.cli.common import load_model
from tinyvlm.errors import InputError


@click.command()
@click.argument("model")
@click.option("--image", "images", multiple=True, help="Image file (repeat for several).")
@click.option("--prompt", required=True, help="The question; '<image>' marks where images go.")
@click.option("--max-new-tokens", default=32, show_default=True)
@click.option("--temperature", default=0.0, show_default=True, help="0 decodes greedily.")
@click.option("--top-p", default=1.0, show_default=True)
@click.option("--seed", type=click.IntRange(0, 2**63 - 1), default=0, show_default=True)
def generate(model: str, images: tuple[str, ...], prompt: str, max_new_tokens: int,
             temperature: float, top_p: float, seed: int) -> None:
    """Answer one prompt about one or more images.

    \b
    Example:
      tinyvlm generate runs/demo/model --image data/shapes/images/test/000001.png \\
          --prompt "how many shapes are there?"
    """
    from tinyvlm.infer import Sampling, answer

    if not prompt.strip() and not images:
        raise InputError("the prompt is empty")
    m = load_model(model)
    click.echo(answer(m, prompt, [Path(p) for p in images],
                      Sampling(max_new_tokens, temperature, top_p), seed))


@click.command()
@click.argument("model")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--prompt-len", type=click.IntRange(min=1), default=None,
              help="Prompt tokens for the FLOP figures [default: one image + 32].")
def info(model: str, as_json: bool, prompt_len: int | None) -> None:
    """Parameters (total and activated per token), FLOPs per token and per image, and the
    configuration of MODEL (a model directory).

    \b
    Example:
      tinyvlm info runs/demo/model
    """
    from tinyvlm.analysis.cost import model_report

    # Activated counts and FLOPs come from the config (analysis/cost.py documents the rules).
    m = load_model(model)
    limit = m.config.language.max_seq_len
    if prompt_len is not None and prompt_len > limit:
        raise InputError(f"--prompt-len {prompt_len} exceeds the model's max_seq_len {limit}")
    report = model_report(m, prompt_len)
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    acct = report["efficiency"]
    click.echo(f"{model}: {report['total_params']:,} parameters "
               f"({report['activated_params']:,} activated per token)")
    for name, n in report["params"].items():
        click.echo(f"  {name:<10} {n:>12,}  ({acct['params'][name]['activated']:,} activated)")
    click.echo(f"  image tokens per image: {report['image_tokens']}")
    click.echo(f"  FLOPs per token: prefill {acct['prefill_flops_per_token']:,.0f} "
               f"(prompt of {acct['prompt_tokens']} tokens), decode "
               f"{acct['decode_flops_per_token']:,} (context {acct['decode_context']})")
    click.echo(f"  FLOPs per image: vision {acct['vision_flops_per_image']:,}, connector "
               f"{acct['connector_flops_per_image']:,}")
    click.echo(f"  KV cache: {acct['kv_cache_bytes']:,} bytes for {acct['kv_cache_tokens']} "
               f"tokens ({acct['kv_cache_dtype']})")
    click.echo(json.dumps(report["config"], indent=2))


def parse_layers(value: str) -> str | list[int]:
    """'all', 'every-other' or a comma-separated list of block indices."""
    if value in ("all", "every-other"):
        return value
    try:
        return [int(v) for v in value.split(",")]
    except ValueError:
        raise InputError(f"--layers must be 'all', 'every-other' or block indices like 1,3; "
                         f"got {value!r}") from None


@click.command()
@click.argument("model_dir")
@click.argument("out_dir")
@click.option("--experts", default=4, show_default=True, help="Experts per MoE layer.")
@click.option("--top-k", default=2, show_default=True, help="Experts each token runs.")
@click.option("--layers", default="every-other", show_default=True,
              help="all, every-other, or block indices like 1,3.")
@click.option("--capacity-factor", type=float, default=None,
              help="Drop choices beyond this capacity [default: dropless].")
@click.option("--balance-coef", default=0.01, show_default=True,
              help="Weight of the load-balancing loss.")
@click.option("--z-coef", default=0.0, show_default=True, help="Weight of the router z-loss.")
def upcycle(model_dir: str, out_dir: str, experts: int, top_k: int, layers: str,
            capacity_factor: float | None, balance_coef: float, z_coef: float) -> None:
    """Turn a dense model into a sparse one whose experts start as copies of the dense FFN.

    At initialisation the sparse model computes exactly what the dense one did (with
    dropless routing; a capacity factor may drop choices); training (e.g. mimic
    distillation) then moves the experts apart.

    \b
    Example:
      tinyvlm upcycle runs/demo/model runs/moe/model --experts 4 --top-k 2 --layers every-other
    """
    from tinyvlm.config import MoEConfig
    from tinyvlm.models.surgery import upcycle as upcycle_model

    moe = MoEConfig(experts=experts, top_k=top_k, layers=parse_layers(layers),
                    routing="dropless" if capacity_factor is None else "capacity",
                    capacity_factor=1.5 if capacity_factor is None else capacity_factor,
                    balance_coef=balance_coef, z_coef=z_coef)
    if Path(out_dir).resolve() == Path(model_dir).resolve():
        raise InputError("OUT_DIR is the model it reads; choose another directory", out_dir)
    model = load_model(model_dir)
    moe.check(model.config.language.depth, None, "upcycle")  # e.g. --top-k > --experts
    try:
        upcycle_model(model, moe)
    except ValueError as e:
        raise InputError(str(e), model_dir) from None
    model.save_pretrained(out_dir)
    lang = model.config.language
    click.echo(f"{len(moe.moe_layers(lang.depth))} of {lang.depth} language blocks now have "
               f"{experts} experts (top-{top_k}); written to {out_dir}")
