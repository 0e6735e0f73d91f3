"""build_archive: torch-model-archiver run so that concurrent builds cannot collide."""

from __future__ import annotations

import zipfile

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
