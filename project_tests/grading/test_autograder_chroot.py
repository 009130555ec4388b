"""The Gradescope autograder proven in a debootstrapped base system (`make test-autograder`).

Exactly as Gradescope runs it: the zip unpacked into /autograder/source, `setup.sh` as root, each upload in
/autograder/submission, `run_autograder`, /autograder/results/results.json. The reference must score full
marks, a submission with one broken adapter loses exactly that problem's points, and a broken environment
still gives a results.json that says so. Opt in with CS336_TEST_AUTOGRADER=1 (it takes ~10 minutes and
needs root, debootstrap and the Ubuntu archive); CS336_TEST_AUTOGRADER_IMAGES picks the images (default
ubuntu-24.04; debian-12 stands in for it, with the same setup.sh, on a machine whose only torch+cpu wheel is
for Python 3.11 and that cannot reach PyTorch's index); CS336_CHROOT_CACHE keeps the debootstrapped roots
between runs (default /var/tmp/cs336-roots). Ubuntu 22.04 is refused at build time (test_autograder_setup.py).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from cs336_grading.staff.autograder import build_autograder
from project_tests.grading.gradescope_chroot import Chroot, base_system, can_build
from project_tests.grading.test_autograder import check_gradescope_results, reference_submission

IMAGES = os.environ.get("CS336_TEST_AUTOGRADER_IMAGES", "ubuntu-24.04").split(",")
CACHE = Path(os.environ.get("CS336_CHROOT_CACHE", "/var/tmp/cs336-roots"))


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("image", IMAGES)
def test_setup_and_run_autograder_in_a_fresh_base_system(tmp_path: Path, image: str) -> None:
    if os.environ.get("CS336_TEST_AUTOGRADER") != "1":
        pytest.skip("set CS336_TEST_AUTOGRADER=1 to debootstrap a base system and run the autograder in it")
    if why := can_build(image):
        pytest.skip(why)
    built_for = image if image.startswith("ubuntu") else "ubuntu-24.04"
    archive = build_autograder(tmp_path / "autograder.zip", settings={"jobs": 2}, base_image=built_for)
    reference = reference_submission(tmp_path / "alice")
    broken = reference_submission(tmp_path / "bob")
    adapters = broken / "tests" / "adapters.py"
    adapters.write_text(adapters.read_text() + "\n\ndef run_softmax(in_features, dim):\n    return in_features\n")

    with Chroot(base_system(image, CACHE)) as box:
        setup_seconds = box.install(archive)
        full, seconds = box.grade(reference)
        check_gradescope_results(full)
        assert full["score"] == sum(t["max_score"] for t in full["tests"]) > 0, full["output"]
        print(f"{image}: setup.sh {setup_seconds:.0f} s, reference {full['score']} points in {seconds:.0f} s")

        results, seconds = box.grade(broken)
        check_gradescope_results(results)
        lost = {t["name"]: t["max_score"] - t["score"] for t in results["tests"] if t["score"] < t["max_score"]}
        softmax = next(t["max_score"] for t in full["tests"] if t["name"] == "softmax")
        assert lost == {"softmax": softmax} and results["score"] == full["score"] - softmax, lost
        print(f"{image}: broken softmax {results['score']} points in {seconds:.0f} s")

        shutil.rmtree(box.root / "autograder" / "venv" / "lib")  # a broken environment: results.json says so
        results, _ = box.grade(reference)
        assert results["score"] == 0.0 and "environment is broken" in results["output"], results
