"""The layering, as import-linter contracts (pyproject.toml), and the wire contract's reach:
the one module the TorchServe handlers import, shipped inside every archive."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

from cicd_support import ROOT
from ctloop import wire
from serving.archive import build_archive

LINT_IMPORTS = str(Path(sys.executable).with_name("lint-imports"))


def lint_imports(cwd: Path, *args: str, pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin"} | ({"PYTHONPATH": str(pythonpath)} if pythonpath else {})
    return subprocess.run([LINT_IMPORTS, "--no-cache", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          check=False)


def test_every_contract_is_kept() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    assert len(contracts) >= 5
    for contract in contracts:
        assert f"{contract['name']} KEPT" in result.stdout


def test_the_contracts_catch_an_upward_import_and_a_stage_importing_a_stage(tmp_path: Path) -> None:
    """The same contracts over a small tree with both faults must fail, naming each."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers = [contract for contract in config["contracts"] if contract["type"] in ("layers", "independence")]
    stages = next(contract["modules"] for contract in layers if contract["type"] == "independence")
    for package in (*config["root_packages"], *stages):
        (tmp_path / package.replace(".", "/")).mkdir(parents=True, exist_ok=True)
        (tmp_path / package.replace(".", "/") / "__init__.py").write_text("")
    (tmp_path / "serving" / "client.py").write_text("import ctloop_app\n")
    (tmp_path / "components" / "collect" / "logic.py").write_text("from components.monitor import logic\n")
    (tmp_path / "components" / "monitor" / "logic.py").write_text("")
    (tmp_path / "contracts.ini").write_text(_ini(config, layers))
    result = lint_imports(tmp_path, "contracts.ini", pythonpath=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "serving.client -> ctloop_app" in result.stdout
    assert "components.collect.logic -> components.monitor" in result.stdout


def _ini(config: dict, contracts: list[dict]) -> str:
    """The contracts in import-linter's INI form (a config of its own, outside pyproject.toml)."""
    lines = ["[importlinter]", "root_packages =", *(f"    {name}" for name in config["root_packages"])]
    for index, contract in enumerate(contracts):
        lines.append(f"[importlinter:contract:{index}]")
        for key, value in contract.items():
            lines += [f"{key} =", *(f"    {item}" for item in value)] if isinstance(value, list) else [f"{key} = {value}"]
    return "\n".join(lines) + "\n"


def test_the_wire_contract_imports_only_the_standard_library_and_numpy() -> None:
    script = ("import sys; before = set(sys.modules); import ctloop.wire; "
              "print(' '.join(sorted({m.split('.')[0] for m in set(sys.modules) - before})))")
    loaded = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split()
    outside = {name for name in loaded if name not in sys.stdlib_module_names and not name.startswith("_")}
    assert outside <= {"ctloop", "numpy"}, outside


def test_compiling_the_pipeline_imports_no_stage_logic() -> None:
    """The components' bodies import their logic when a stage runs; compiling only reads their
    signatures. So `ctloop compile` (CI's compile job, CD's submit) loads neither torch nor MLflow:
    about 0.6 s of imports, where the stage packages' re-exports of their logic made it 3."""
    script = "import sys, kubeflow_pipeline.compile; print(' '.join(sorted(sys.modules)))"
    loaded = set(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split())
    assert not {"torch", "mlflow", "numpy"} & loaded
    assert not {name for name in loaded if name.startswith("components.") and name.endswith(".logic")}


def test_every_archive_ships_the_wire_contract_beside_its_handler(model_files: dict[str, Path], tmp_path: Path) -> None:
    archive = build_archive(model_files["b1"], "b1", "4", tmp_path)
    with zipfile.ZipFile(archive) as mar:
        names = set(mar.namelist())
        assert {"ctloop/wire.py", "ctloop/__init__.py", "ctloop_handler_base.py", "prediction_log.py",
                "branch_handler.py"} <= names
        assert mar.read("ctloop/wire.py") == Path(wire.__file__).read_bytes()
        assert b"import" not in mar.read("ctloop/__init__.py")  # only the wire contract, not the library
