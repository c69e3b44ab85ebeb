"""The package's layering (setup.cfg [importlinter]), checked with import-linter: lower layers never import
higher ones, no component imports a command-line module, and no command-line module imports another. CI runs only pytest, so this test is the check."""

import configparser
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINT = os.path.join(os.path.dirname(sys.executable), "lint-imports")


def lint(config: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": REPO}  # this checkout's nanosft, not another installed copy
    return subprocess.run([LINT, "--config", config, "--no-cache"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)


def contracts() -> configparser.ConfigParser:
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(REPO, "setup.cfg"))
    return cfg


def names(value: str) -> set[str]:
    return {n.strip() for line in value.split("\n") for n in line.split("|") if n.strip()}


def test_the_contracts_are_kept():
    proc = lint("setup.cfg")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3 kept, 0 broken" in proc.stdout


def test_a_broken_contract_fails(tmp_path):
    """The checker sees real imports: data imports format, so format above data must be reported broken."""
    cfg = contracts()
    cfg["importlinter:contract:layers"]["layers"] = "\nnanosft.format\nnanosft.data"
    path = tmp_path / "broken.cfg"
    with open(path, "w") as f:
        cfg.write(f)
    proc = lint(str(path))
    assert proc.returncode != 0
    assert "BROKEN" in proc.stdout and "nanosft.data" in proc.stdout and "nanosft.format" in proc.stdout


def test_every_subpackage_and_cli_is_in_a_contract():
    """A new subpackage must get a layer; a new command-line module (``__main__`` guard) must be forbidden to
    components and independent of the other command-line modules (shared steps: ``nanosft.recipe``)."""
    cfg = contracts()
    layered = names(cfg["importlinter:contract:layers"]["layers"])
    forbidden = names(cfg["importlinter:contract:clis"]["forbidden_modules"])
    clis = names(cfg["importlinter:contract:cli-independence"]["modules"])
    assert forbidden == clis | {"nanosft.recipe"}
    root = os.path.join(REPO, "nanosft")
    for entry in sorted(os.listdir(root)):
        path = os.path.join(root, entry)
        if os.path.isfile(os.path.join(path, "__init__.py")) and entry != "resources":
            assert f"nanosft.{entry}" in layered, entry
    for folder, _, files in os.walk(root):
        for name in files:
            if not name.endswith(".py"):
                continue
            with open(os.path.join(folder, name), encoding="utf-8") as f:
                is_cli = 'if __name__ == "__main__":' in f.read()
            module = os.path.relpath(os.path.join(folder, name[:-3]), REPO).replace(os.sep, ".")
            assert is_cli == (module in clis), module
