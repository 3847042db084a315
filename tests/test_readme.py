"""The README opens with the two set-up commands, and CI runs the second one verbatim."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = text.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip()]


def test_readme_opens_with_two_commands():
    first, test_cmd = readme_commands()
    assert "pip install -e ." in first and first.endswith("netlens cam")
    assert test_cmd.endswith("pytest")


def test_ci_runs_the_readme_test_command_verbatim():
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert readme_commands()[1] in ci_lines


def test_cpu_only_form_installs_cpu_wheels_then_the_same_first_command():
    """The CPU-only form takes torch from PyTorch's CPU index, then runs the first command."""
    text = (ROOT / "README.md").read_text()
    blocks = [b.split("```", 1)[0] for b in text.split("```bash\n")[1:]]
    cpu = next(line for b in blocks for line in b.splitlines() if "whl/cpu" in line)
    first = readme_commands()[0]
    assert "--index-url https://download.pytorch.org/whl/cpu" in cpu
    assert cpu.index("whl/cpu") < cpu.index("pip install -e .")  # torch first, then netlens
    assert cpu.endswith(first.split("&& ", 2)[-1])  # then exactly what the first command does


def test_readme_links_point_to_files_that_exist():
    import re

    text = (ROOT / "README.md").read_text()
    for target in re.findall(r"\]\(((?:docs|examples)/[^)#]+)\)", text):
        assert (ROOT / target).exists(), target
