"""`tinyvlm data`: make datasets."""

from __future__ import annotations

import json

import click


@click.group()
def data() -> None:
    """Make datasets."""


@data.command("shapes")
@click.option("--out", "out", default="data/shapes", show_default=True, help="Output directory.")
@click.option("--num-train", default=3000, show_default=True, help="Training images.")
@click.option("--num-val", default=200, show_default=True, help="Validation images.")
@click.option("--num-test", default=500, show_default=True, help="Test images.")
@click.option("--pope-images", default=200, show_default=True, help="Test images with probes.")
@click.option("--image-size", default=64, show_default=True, help="Image side in pixels.")
@click.option("--seed", default=0, show_default=True, help="Everything follows from it.")
def data_shapes(out: str, num_train: int, num_val: int, num_test: int, pope_images: int,
                image_size: int, seed: int) -> None:
    """Generate ShapesWorld: images, LLaVA conversation JSON, POPE probes.

    \b
    Example:
      tinyvlm data shapes --out data/shapes --num-train 3000 --seed 0
    """
    from tinyvlm.config import ShapesWorldConfig
    from tinyvlm.data import shapes

    config = ShapesWorldConfig(num_train=num_train, num_val=num_val, num_test=num_test,
                               pope_images=pope_images, image_size=image_size, seed=seed)
    manifest = shapes.write_dataset(out, config)
    click.echo(json.dumps(manifest.get("counts", {}), indent=2))
