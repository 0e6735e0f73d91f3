"""build_archive: torch-model-archiver run so that concurrent builds cannot collide."""

from __future__ import annotations

import hashlib
import zipfile

import yaml

from serving.archive import build_archive


def test_the_archiver_stages_in_its_own_folder_not_the_shared_temp(tmp_path, model_files, monkeypatch) -> None:
    """The archiver stages in `$TMPDIR/<model name>` and deletes it afterwards; with the shared
    temporary folder, a second build of the same role (another run, another test worker) would
    delete the first one's files mid-copy."""
    shared = tmp_path / "shared-tmp"
    (shared / "champion").mkdir(parents=True)
    (shared / "champion" / "another-build.py").write_text("# being archived by someone else\n")
    monkeypatch.setenv("TMPDIR", str(shared))
    archive = build_archive(model_files["champion"], "champion", "1", tmp_path / "store")
    assert (shared / "champion" / "another-build.py").is_file()
    assert "another-build.py" not in zipfile.ZipFile(archive).namelist()
    assert [path.name for path in (tmp_path / "store").iterdir()] == [archive.name]


def test_the_archive_records_its_model_files_sha256(tmp_path, model_files) -> None:
    """The handler checks the model file against it before loading (test_handlers)."""
    archive = build_archive(model_files["b1"], "b1", "2", tmp_path)
    with zipfile.ZipFile(archive) as mar:
        config = yaml.safe_load(mar.read("model-config.yaml"))
        assert config["model_sha256"] == hashlib.sha256(mar.read("model.pt")).hexdigest()
    assert config["model_sha256"] == hashlib.sha256(model_files["b1"].read_bytes()).hexdigest()
