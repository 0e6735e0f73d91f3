"""The `ctloop` commands' answers to a user's mistakes: a clear message and exit status 2, and
nothing started or made up."""

from __future__ import annotations

from pathlib import Path

from ctloop.config import PipelineConfig, load_config
from ctloop_app.cli import main


def test_bad_config_is_reported_without_a_traceback(tmp_path: Path, capsys) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("val_ratio: lots\n")
    assert main(["compile", "--config", str(config), "--out", str(tmp_path / "p.yaml")]) == 2
    assert f"ctloop: {config}: val_ratio must be of type float" in capsys.readouterr().err


def test_serve_without_models_says_so_and_shows_the_bootstrap_command(tmp_path: Path, capsys) -> None:
    models = tmp_path / "nothing-here"
    assert main(["serve", "--models", str(models), "--work-dir", str(tmp_path / "serve")]) == 2
    error = capsys.readouterr().err
    assert f"{models} is not a `ctloop bootstrap --out` folder: missing {models / 'models' / 'champion.pt'}" in error
    assert f"ctloop bootstrap --image-folder DIR --out {models}" in error
    assert f"ctloop bootstrap --out {models}" in error
    assert not models.exists() and not (tmp_path / "serve").exists()  # nothing trained, nothing started
    assert main(["serve", "--work-dir", str(tmp_path / "serve")]) == 2
    assert "is empty: the first start needs --models" in capsys.readouterr().err
    assert not (tmp_path / "serve").exists()


def test_config_prints_the_shipped_defaults_as_a_file_to_edit(tmp_path: Path, capsys) -> None:
    assert main(["config"]) == 0
    written = tmp_path / "mine.yaml"
    written.write_text(capsys.readouterr().out)
    assert load_config(written) == load_config() == PipelineConfig()


def test_demo_from_a_folder_that_is_no_bootstrap_names_what_is_missing(tmp_path: Path, capsys) -> None:
    assert main(["demo", "--models", str(tmp_path / "empty"), "--work-dir", str(tmp_path / "demo")]) == 2
    assert f"{tmp_path / 'empty'}: not a `ctloop bootstrap` folder; missing " in capsys.readouterr().err
    assert not (tmp_path / "demo").exists()  # nothing started


def test_demo_refuses_models_inside_the_work_directory_it_empties(tmp_path: Path, capsys) -> None:
    models = tmp_path / "demo" / "bootstrap"
    (models / "models").mkdir(parents=True)
    assert main(["demo", "--models", str(models), "--work-dir", str(tmp_path / "demo")]) == 2
    assert "the demo empties its work directory" in capsys.readouterr().err
    assert (models / "models").is_dir()  # not deleted
