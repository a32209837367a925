"""The README's Python code blocks run as written (in order, sharing one namespace)."""

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_code_blocks_run(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 3
    monkeypatch.chdir(tmp_path)  # the tour saves a model file
    namespace = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    # the figures the README states for this exact setting
    value, se = namespace["score_error_integral"](namespace["model"], namespace["ring"], namespace["OU"](),
                                                  1e-2, 5.0, 4000, namespace["np"].random.default_rng(5))
    assert value < 0.5


def test_ci_installs_and_tests_as_the_readme_says():
    """.ci/run's install and test lines are the README's, word for word (CI checks what users run)."""
    ci = (README.parent / ".ci" / "run").read_text().splitlines()
    commands = [line.split("#")[0].strip() for line in ci if re.match(r"\s*(pip install|python -m pytest|SGM_REF)", line)]
    commands = [re.sub(r"^(\w+=\S+ )+", "", c) for c in commands]  # environment settings are CI's own
    bash_blocks = "\n".join(re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S))
    readme_lines = {line.strip() for line in bash_blocks.splitlines()}
    assert commands and all(c in readme_lines for c in commands), (commands, readme_lines)
