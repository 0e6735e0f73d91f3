"""Starting a model from weights a user provides (ctloop.modelfile.read_weights, `ctloop bootstrap
--weights`): a ctloop model file or a state_dict of the role's family."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ctloop.modelfile import ModelCard, ModelFileError, load_model, read_weights, save_model
from ctloop.models import build_model
from ctloop.simulator import digits_split
from ctloop.training import accuracy, train_model
from ctloop_app.cli import main


def test_a_ctloop_model_file_gives_every_tensor(tmp_path: Path) -> None:
    source = build_model("champion", 10, (8, 8))
    save_model(source, ModelCard("champion", tuple("0123456789"), (8, 8), "x"), tmp_path / "champion.pt")
    state, skipped = read_weights(tmp_path / "champion.pt", build_model("champion", 10, (8, 8)))
    assert skipped == []
    for name, tensor in source.state_dict().items():
        torch.testing.assert_close(state[name], tensor)


def test_a_head_for_other_classes_is_left_fresh_and_named(tmp_path: Path) -> None:
    source = build_model("champion", 10, (8, 8))
    torch.save(source.state_dict(), tmp_path / "weights.pt")
    target = build_model("champion", 5, (8, 8))
    state, skipped = read_weights(tmp_path / "weights.pt", target)
    assert skipped and all(source.state_dict()[name].shape != target.state_dict()[name].shape for name in skipped)
    target.load_state_dict(state)  # complete: the skipped tensors keep their fresh values
    kept = [name for name in state if name not in skipped]
    torch.testing.assert_close(state[kept[0]], source.state_dict()[kept[0]])


@pytest.mark.parametrize(
    ("write", "message"),
    [
        (lambda path: torch.save(build_model("b2", 10, (8, 8)).state_dict(), path), "does not have"),
        (lambda path: path.write_bytes(b"not weights"), "neither a ctloop model nor a state_dict"),
        (lambda path: torch.save({"step": 3}, path), "holds no state_dict"),
        (lambda path: None, "no such file"),
    ],
    ids=["another family", "garbage", "not tensors", "missing"],
)
def test_weights_that_do_not_fit_are_refused_naming_the_file(tmp_path: Path, write, message: str) -> None:
    path = tmp_path / "weights.pt"
    write(path)
    with pytest.raises(ModelFileError, match=rf"{path}: .*{message}"):
        read_weights(path, build_model("champion", 10, (8, 8)))


def test_bootstrap_starts_the_champion_from_the_given_weights(tmp_path: Path, capsys) -> None:
    """One epoch from a trained champion's weights keeps its accuracy; one epoch from scratch
    does not reach it (on the bundled digits)."""
    split = digits_split(0)
    model, _ = train_model("champion", split.train, progress=False)
    trained = tmp_path / "champion.pt"
    save_model(model, ModelCard("champion", split.train.class_names, (8, 8), "x"), trained)
    assert main(["bootstrap", "--out", str(tmp_path / "warm"), "--epochs", "1",
                 "--weights", f"champion={trained}"]) == 0
    assert main(["bootstrap", "--out", str(tmp_path / "cold"), "--epochs", "1"]) == 0
    capsys.readouterr()
    warm, cold = (accuracy(load_model(tmp_path / name / "models" / "champion.pt")[0], split.golden)
                  for name in ("warm", "cold"))
    assert warm > 0.9 and warm > cold + 0.2


def test_bootstrap_names_weights_that_do_not_fit(tmp_path: Path, capsys) -> None:
    (tmp_path / "weights.pt").write_bytes(b"junk")
    assert main(["bootstrap", "--out", str(tmp_path / "out"), "--epochs", "1",
                 "--weights", f"b1={tmp_path / 'weights.pt'}"]) == 2
    assert f"ctloop bootstrap: --weights {tmp_path / 'weights.pt'}: neither" in capsys.readouterr().err


def test_a_malformed_weights_argument_is_a_usage_error(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["bootstrap", "--weights", "teacher=x.pt"])
    assert exit_info.value.code == 2
    assert "expected ROLE=FILE with ROLE one of champion, b1, b2" in capsys.readouterr().err
