"""Train the three model roles on clean data: the starting point of every ctloop line."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from ctloop.config import PipelineConfig
from ctloop.imagefolder import read_image_folder
from ctloop.images import ImageDataError, ImageSet, stratified_split
from ctloop.modelfile import ModelCard, fit_atc_threshold, load_model, read_weights, save_model
from ctloop.models import ROLES, Role, build_model
from ctloop.parts import parts_split
from ctloop.simulator import DigitsSplit, digits_split
from ctloop.training import RECIPES, accuracy, champion_recipe, train_model


@dataclass(frozen=True)
class BootstrapResult:
    """Where the models and data sets were written, and each model's golden-set accuracy."""

    model_files: dict[Role, Path]
    train_set: Path
    golden_set: Path
    production_pool: Path | None
    golden_accuracy: dict[Role, float]


def bootstrap_models(
    train: ImageSet,
    golden: ImageSet,
    models_dir: Path,
    epochs: int | None = None,
    progress: bool = True,
    config: PipelineConfig | None = None,
    weights: Mapping[Role, Path] | None = None,
    roles: Sequence[Role] = ROLES,
) -> tuple[dict[Role, Path], dict[Role, float]]:
    """Train champion, B1 and B2 (or only `roles`) on `train`, each of the family `config` names (default: the
    shipped config); write `<role>.pt` into `models_dir`. `epochs` overrides each recipe's ceiling.
    A role in `weights` starts from that file's weights (ctloop.modelfile.read_weights) instead of
    a random initialisation; tensors whose shape differs, such as a head for other classes, are
    left at their initial values and named on stdout."""
    config = config or PipelineConfig()
    families = {"champion": config.champion_family, "b1": config.b1_family, "b2": config.b2_family}
    files: dict[Role, Path] = {}
    scores: dict[Role, float] = {}
    for role in roles:
        base = champion_recipe(config.champion_augment) if role == "champion" else RECIPES[role]
        recipe = replace(base, family=families[role], epochs=epochs or base.epochs)
        initial = None
        if weights and role in weights:
            reference = build_model(role, len(train.class_names), train.image_size, recipe.family)
            initial, skipped = read_weights(weights[role], reference)
            if skipped:
                print(f"{role}: {weights[role]}: shapes differ, initialised afresh: {', '.join(skipped)}")
        model, _ = train_model(role, train, recipe, progress=progress, initial_state=initial)
        card = ModelCard(role, train.class_names, train.image_size, type(model).__name__,
                         fit_atc_threshold(model, golden.images, golden.labels))
        files[role] = models_dir / f"{role}.pt"
        save_model(model, card, files[role])
        scores[role] = accuracy(model, golden)
    return files, scores


def bootstrap_digits(
    out_dir: str | Path, seed: int = 0, epochs: int | None = None, progress: bool = True,
    config: PipelineConfig | None = None, weights: Mapping[Role, Path] | None = None,
) -> BootstrapResult:
    """Split the bundled digits, write the data sets and train the three models on clean data."""
    return bootstrap_split(digits_split(seed), out_dir, epochs, progress, config, weights)


def bootstrap_parts(
    out_dir: str | Path, seed: int = 0, image_size: int = 32, epochs: int | None = None, progress: bool = True,
    config: PipelineConfig | None = None, weights: Mapping[Role, Path] | None = None,
) -> BootstrapResult:
    """The same on the simulated parts line (ctloop.parts) at `image_size` pixels a side."""
    return bootstrap_split(parts_split(seed, image_size), out_dir, epochs, progress, config, weights)


def bootstrap_split(
    split: DigitsSplit, out_dir: str | Path, epochs: int | None = None, progress: bool = True,
    config: PipelineConfig | None = None, weights: Mapping[Role, Path] | None = None,
) -> BootstrapResult:
    """Write a simulated line's data sets under `out_dir/data` and train the three models."""
    out_dir = Path(out_dir)
    paths = {name: out_dir / "data" / f"{name}.npz" for name in ("train", "golden", "production")}
    split.train.save(paths["train"])
    split.golden.save(paths["golden"])
    split.production.save(paths["production"])
    files, scores = bootstrap_models(split.train, split.golden, out_dir / "models", epochs, progress, config, weights)
    return BootstrapResult(files, paths["train"], paths["golden"], paths["production"], scores)


def bootstrap_folder(
    folder: str | Path,
    image_size: tuple[int, int],
    out_dir: str | Path,
    seed: int = 0,
    epochs: int | None = None,
    golden_share: float = 0.2,
    progress: bool = True,
    config: PipelineConfig | None = None,
    weights: Mapping[Role, Path] | None = None,
) -> BootstrapResult:
    """Bootstrap from a user's labelled ImageFolder: a stratified golden share is held out."""
    out_dir = Path(out_dir)
    images = read_image_folder(folder, image_size)
    train_index, golden_index = stratified_split(images.labels, golden_share, seed)
    train, golden = images.subset(train_index), images.subset(golden_index)
    paths = {name: out_dir / "data" / f"{name}.npz" for name in ("train", "golden")}
    train.save(paths["train"])
    golden.save(paths["golden"])
    files, scores = bootstrap_models(train, golden, out_dir / "models", epochs, progress, config, weights)
    return BootstrapResult(files, paths["train"], paths["golden"], None, scores)


class BootstrapFolderError(ImageDataError):
    """A folder given as a bootstrap's output is not one, or cannot be used as one (the CLI
    reports it like any other bad input: the message and exit status 2)."""


def load_bootstrap(folder: str | Path) -> BootstrapResult:
    """What `ctloop bootstrap --out folder` wrote, read back (golden-set accuracy recomputed), so a
    second demo or line can start from the same models without training them again."""
    folder = Path(folder)
    files = {role: folder / "models" / f"{role}.pt" for role in ROLES}
    data = {name: folder / "data" / f"{name}.npz" for name in ("train", "golden", "production")}
    missing = [str(path) for path in (*files.values(), data["train"], data["golden"]) if not path.is_file()]
    if missing:
        raise BootstrapFolderError(f"{folder}: not a `ctloop bootstrap` folder; missing {', '.join(missing)}")
    golden = ImageSet.load(data["golden"])
    scores = {role: accuracy(load_model(path)[0], golden) for role, path in files.items()}
    production = data["production"] if data["production"].is_file() else None
    return BootstrapResult(files, data["train"], data["golden"], production, scores)
