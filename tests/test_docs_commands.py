"""Every ``python -m src.…`` command that the README and the docs print, fenced or inline,
composes as its command line would, through Hydra's compose API and a sweep's expansion; a
fenced sweep composes as many jobs as its ``# jobs: N`` says."""

import importlib.util
import re
import shlex
from pathlib import Path

import pytest
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ValueType
from omegaconf import OmegaConf

from src.experiments import results
from tests.conftest import CONF_DIR, ROOT, compose

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# docs/extending.md's recipes add these configs, as a fork would: tests/test_extending.py runs
# them with the recipes' own files
FORK_CONFIGS = ("model=tiny_vgg", "+data/augment=cutout", "+data/augment=noise",
                "data=named_files", "experiment=lr")  # fmt: skip
# what a reader fills in: paths, a run's time, a folder, a data set's root
PLACEHOLDER = re.compile(r"<[^>]*>|\$[A-Z_]+|\b(PATH|FILE|FOLDER|NEW_PLACE|DIR)\b")
MISSING = -1  # a fenced command without "# jobs: N"
HYDRA_FLAGS = {"-m", "--multirun", "--cfg", "job", "--help", "--info", "-c"}


def printed(page: Path) -> list[tuple[str, int | None]]:
    """The page's commands, continuation lines joined, each with its ``# jobs: N`` (fenced;
    None inline, where the page's prose says what it runs)."""
    text = page.read_text()
    found = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.S):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            command, _, comment = line.strip().partition(" #")
            if command.startswith("python -m src."):
                jobs = re.search(r"jobs: (\d+)", comment)
                found.append((command.strip(), int(jobs.group(1)) if jobs else MISSING))
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    found += [(c.strip(), None) for c in re.findall(r"`(python -m src\.[^`]*)`", prose)]
    return found


def commands() -> list[tuple[str, str, int | None]]:
    """(page, command, jobs) of every page; a command printed on several pages is checked once
    (the first page), unless the pages give it different job counts."""
    found: dict[tuple[str, int | None], str] = {}
    for page in PAGES:
        for command, jobs in printed(page):
            found.setdefault((command, jobs), page.relative_to(ROOT).as_posix())
    return sorted(((p, c, j) for (c, j), p in found.items()), key=lambda found: found[:2])


COMMANDS = commands()


def configs(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def job_overrides(overrides: list[str], sweeper: dict) -> list[list[str]]:
    """The jobs a basic sweep runs: the config's ``hydra.sweeper.params``, then the command
    line's sweeps, expanded as Hydra's BasicSweeper expands them."""
    params = [f"{key}={value}" for key, value in sweeper.items()]
    parsed = OverridesParser.create().parse_overrides(params + overrides)
    (batch,) = BasicSweeper.split_arguments(parsed, max_batch_size=None)
    return batch


def composed_jobs(command: str) -> int:
    """How many jobs COMMAND runs (1 outside a multirun), composed as Hydra would (a sweep's
    own config and its last job); raises where Hydra refuses it."""
    words = shlex.split(PLACEHOLDER.sub("x", re.sub(r"(?<= )\[[^\]]*\]", "", command)))
    module = words[2]
    assert importlib.util.find_spec(module), f"no module {module}"
    if module == "src.experiments.report":
        return 1  # not a Hydra command line: a sweep folder
    if module == "src.experiments.results":
        results.parse(words[3:])  # argparse's: exits where it refuses them
        return 1
    name = {"src.train": "train", "src.eval": "eval", "src.predict": "predict",
            "src.export": "export"}[module]  # fmt: skip
    # a placeholder standing for several overrides (<the run's overrides>) is left out
    args = [w for w in words[3:] if w not in HYDRA_FLAGS and ("=" in w or w.startswith("~"))]
    parsed = OverridesParser.create().parse_overrides(args)
    # glob(...) lists a group's configs, which Hydra does only inside a launched sweep
    args = [
        f"{o.key_or_group}={','.join(o.value().filter(configs(o.key_or_group)))}"
        if o.value_type == ValueType.GLOB_CHOICE_SWEEP
        else o.input_line
        for o in parsed
    ]
    parsed = OverridesParser.create().parse_overrides(args)
    single = [o.input_line for o in parsed if not o.is_sweep_override()]
    sweeps = [o for o in parsed if o.is_sweep_override()]
    # the sweep's own config, as Hydra composes it in a multirun: without the swept values
    cfg = compose(name, single)
    mode = cfg.hydra.mode
    if not ({"-m", "--multirun"} & set(words[3:]) or getattr(mode, "name", mode) == "MULTIRUN"):
        assert not sweeps, "it sweeps without -m"
        return 1
    sweeper = cfg.hydra.sweeper
    if "optuna" in sweeper._target_.lower():
        return sweeper.n_trials
    params = OmegaConf.to_container(sweeper, resolve=False).get("params") or {}
    expanded = job_overrides(args, params)
    compose(name, [*single, *expanded[-1]])  # a job, every swept key set
    return len(expanded)


@pytest.mark.parametrize(("page", "command", "jobs"), COMMANDS, ids=[c for _, c, _ in COMMANDS])
def test_the_printed_command_composes(page, command, jobs):
    if "…" in command or "=NAME" in command or any(c in command for c in FORK_CONFIGS):
        pytest.skip("an abbreviation, or a fork's own config (tests/test_extending.py)")
    count = composed_jobs(command)
    if jobs is not None and (count > 1 or jobs != MISSING):
        assert jobs == count, f"{page}: {command} composes {count} jobs; say '# jobs: {count}'"
