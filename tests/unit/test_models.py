"""Model behaviour: architectures, the safe model file, and training that actually learns."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ctloop.drift import DRIFT_KINDS
from ctloop.images import ImageSet
from ctloop.modelfile import ModelCard, ModelFileError, embed, load_model, predict_proba, save_model
from ctloop.models import FAMILIES, ROLES, build_model
from ctloop.simulator import digits_split
from ctloop.training import RECIPES, TrainConfig, accuracy, champion_recipe, train_model, with_epochs


@pytest.fixture(scope="module")
def split():
    return digits_split(seed=0)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("size", [(8, 8), (28, 20), (32, 32), (128, 128), (30, 70)])
def test_every_family_maps_its_input_size_to_class_logits(family: str, size: tuple[int, int], tmp_path: Path) -> None:
    """Through the model file, as TorchServe loads it (TorchScript)."""
    model = build_model("champion", 4, size, family)
    save_model(model, ModelCard("champion", tuple("abcd"), size, type(model).__name__), tmp_path / "model.pt")
    probabilities = predict_proba(load_model(tmp_path / "model.pt")[0], np.random.default_rng(0).random((3, *size), np.float32))
    assert probabilities.shape == (3, 4)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_exports_the_penultimate_layer_its_classifier_reads(family: str, tmp_path: Path) -> None:
    """The drift test's features survive the model file and are exactly what the head classifies."""
    model = build_model("champion", 4, (8, 8), family).eval()
    save_model(model, ModelCard("champion", tuple("abcd"), (8, 8), type(model).__name__), tmp_path / "model.pt")
    loaded = load_model(tmp_path / "model.pt")[0]
    images = np.random.default_rng(0).random((5, 8, 8), np.float32)
    features = embed(loaded, images)
    assert features.shape == (5, 128)
    with torch.inference_mode():
        logits = loaded.classifier(torch.from_numpy(features)).numpy()
    np.testing.assert_allclose(torch.softmax(torch.from_numpy(logits), 1).numpy(), predict_proba(loaded, images), atol=1e-5)


def test_embed_names_a_model_without_the_method() -> None:
    with pytest.raises(ModelFileError, match="Linear has no embed method"):
        embed(torch.nn.Linear(64, 10), np.zeros((2, 8, 8), np.float32))


def test_build_model_rejects_unknown_role_family_and_single_class() -> None:
    with pytest.raises(ValueError, match="unknown model role 'b3'"):
        build_model("b3", 10, (8, 8))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown model family 'vgg' for b1; expected one of resnet, dilated, mixer, gradient"):
        build_model("b1", 10, (8, 8), "vgg")
    with pytest.raises(ValueError, match="at least 2 classes, got 1"):
        build_model("champion", 1, (8, 8))


@pytest.mark.parametrize("role", ROLES)
def test_model_file_round_trip_gives_identical_predictions(role: str, tmp_path: Path) -> None:
    model = build_model(role, 10, (8, 8)).eval()
    card = ModelCard(role, tuple("abcdefghij"), (8, 8), type(model).__name__)
    path = tmp_path / f"{role}.pt"
    save_model(model, card, path)
    loaded, loaded_card = load_model(path)
    images = np.random.default_rng(0).random((16, 8, 8), dtype=np.float32)
    assert loaded_card == card
    np.testing.assert_allclose(predict_proba(loaded, images), predict_proba(model, images), atol=1e-6)


def test_load_model_names_the_file_when_it_is_not_a_model(tmp_path: Path) -> None:
    bogus = tmp_path / "champion.pt"
    bogus.write_bytes(b"not a model")
    with pytest.raises(ModelFileError, match=f"{bogus}: not a loadable TorchScript model"):
        load_model(bogus)


def test_load_model_rejects_torchscript_without_a_card(tmp_path: Path) -> None:
    from ctloop.modelfile import _torchscript_allowed

    path = tmp_path / "plain.pt"
    with _torchscript_allowed():
        torch.jit.save(torch.jit.script(build_model("champion", 10, (8, 8))), str(path))
    with pytest.raises(ModelFileError, match="has no ctloop.json card"):
        load_model(path)


def test_champion_learns_digits(split) -> None:
    model, history = train_model("champion", split.train, with_epochs(RECIPES["champion"], 15),
                                 val=split.golden, progress=False)
    assert len(history) <= 15
    assert history[-1].loss < history[0].loss
    assert accuracy(model, split.golden) > 0.9


def test_training_stops_when_the_held_back_loss_stops_improving_and_keeps_the_best_epoch(split) -> None:
    """Labels shuffled at random: nothing generalises, so the held-back loss is best early and
    training ends `patience` epochs later, far below the ceiling, with the best epoch's weights."""
    noise = ImageSet(split.train.images, np.random.default_rng(0).permutation(split.train.labels),
                     split.train.class_names)
    model, history = train_model("champion", noise, TrainConfig(epochs=200, patience=4), progress=False)
    losses = [epoch.stopping_loss for epoch in history]
    best = int(np.argmin(losses))
    assert len(history) == best + 1 + 4 < 200
    assert history[-1].learning_rate < RECIPES["champion"].learning_rate  # the plateau lowered it first


def test_the_time_cap_ends_training(split) -> None:
    _, history = train_model("b2", split.train, TrainConfig(epochs=500, patience=500, max_seconds=0.5),
                             progress=False)
    assert 1 <= len(history) < 500


def test_repeated_rows_are_held_back_together_never_on_both_sides(split) -> None:
    """The train set repeats each pseudo-labelled row; a copy on each side would let the
    stopping loss see training images."""
    from ctloop.training import _stopping_split

    repeated = split.train.subset(np.repeat(np.arange(300), 3))
    fit, stopping = _stopping_split(repeated, 0.15, seed=0)
    fit_rows = {row.tobytes() for row in fit.images}
    assert stopping is not None and 90 <= len(stopping) <= 180
    assert not any(row.tobytes() in fit_rows for row in stopping.images)


def test_a_rare_class_is_drawn_as_often_as_a_common_one() -> None:
    from ctloop.training import _balanced_order

    labels = np.array([0] * 950 + [1] * 50)
    drawn = labels[_balanced_order(labels, np.random.default_rng(0))]
    assert 0.44 < drawn.mean() < 0.56


def test_warm_start_begins_from_the_given_weights(split) -> None:
    champion, _ = train_model("champion", split.train, with_epochs(RECIPES["champion"], 10), progress=False)
    still = TrainConfig(epochs=1, learning_rate=1e-9, stopping_share=0.0)
    warm, _ = train_model("champion", split.train, still, progress=False, initial_state=champion.state_dict())
    cold, _ = train_model("champion", split.train, still, progress=False)
    assert accuracy(warm, split.golden) >= accuracy(champion, split.golden) - 0.01
    assert accuracy(cold, split.golden) < 0.5


def test_training_is_reproducible_for_a_seed(split) -> None:
    small = split.train.subset(np.arange(200))
    recipe = with_epochs(RECIPES["b1"], 2)
    first, _ = train_model("b1", small, recipe, progress=False)
    second, _ = train_model("b1", small, recipe, progress=False)
    images = split.golden.images[:32]
    np.testing.assert_allclose(predict_proba(first, images), predict_proba(second, images), atol=1e-5)


def test_the_champion_recipe_is_plain_unless_augmentation_is_asked_for() -> None:
    assert champion_recipe() == RECIPES["champion"] and RECIPES["champion"].augment == ()
    mild = champion_recipe(0.5)
    assert mild.augment == DRIFT_KINDS and mild.augment_max_severity == 0.5 and mild.augment_share == 0.5
    with pytest.raises(ValueError, match="augment_severity must be in"):
        champion_recipe(1.5)


def test_train_model_refuses_an_empty_set() -> None:
    empty = ImageSet(np.zeros((0, 8, 8), np.float32), np.zeros(0, np.int64), ("0", "1"))
    with pytest.raises(ValueError, match="empty image set"):
        train_model("champion", empty, progress=False)


def test_the_config_names_every_family_and_checks_it() -> None:
    from ctloop.config import MODEL_FAMILIES, ConfigError, PipelineConfig

    assert MODEL_FAMILIES == tuple(FAMILIES)
    with pytest.raises(ConfigError, match="b2_family must be one of resnet, dilated, mixer, gradient, got 'vgg'"):
        PipelineConfig(b2_family="vgg")


def test_a_card_written_before_atc_thresholds_still_loads() -> None:
    card = ModelCard.from_json('{"role": "champion", "class_names": ["a", "b"], "image_size": [8, 8], '
                               '"architecture": "ChampionNet"}')
    assert card.atc_threshold is None
    assert ModelCard.from_json(ModelCard("b1", ("a", "b"), (8, 8), "DilatedCNN", 0.42).to_json()).atc_threshold == 0.42
