"""The fast tier starts no process: an unmarked test that starts one fails, naming itself."""

from tests.conftest import ROOT

pytest_plugins = ["pytester"]

PROBES = """
import multiprocessing
import subprocess
import sys


def test_starts_python():
    subprocess.run([sys.executable, "-c", "pass"])


def test_spawns():
    multiprocessing.get_context("spawn").Process(target=print).start()


def test_reads_the_commit():
    subprocess.run(["git", "--version"], capture_output=True)
"""


def test_an_unmarked_test_that_starts_a_process_fails_naming_itself(pytester):
    pytester.makeconftest((ROOT / "tests" / "conftest.py").read_text())
    pytester.makepyfile(test_probes=PROBES)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-o", "addopts=")
    result.assert_outcomes(passed=1, failed=2)
    for name, started in (("test_starts_python", "'-c', 'pass'"), ("test_spawns", "SpawnProcess")):
        result.stdout.fnmatch_lines([f"*test_probes.py::{name} starts a process (*{started}*"])
    assert "mark it @pytest.mark.slow" in result.stdout.str()
