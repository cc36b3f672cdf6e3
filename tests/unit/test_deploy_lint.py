"""checkov over everything `embedserve deploy` writes and over both Dockerfiles: no failed check, and every skip is
one of the documented choices, with its reason.

checkov lives in its own virtual environment (its ~90 pinned dependencies stay out of the project's): `./dev test`
installs it into .venv-checkov; EMBEDSERVE_CHECKOV names another executable. Without it this test fails rather than
skips, so CI cannot pass without the check having run.

Frameworks: kubernetes (the manifests), dockerfile (Dockerfile.cpu / Dockerfile.cuda), terraform (Cloud Run) and
secrets (all of it). checkov has no Compose framework; the Compose files get the secrets scan only. checkov 3.3 has
no Terraform check for the resource types the Cloud Run output uses (google_cloud_run_v2_service and its IAM
member, Secret Manager, service accounts): the Terraform is parsed and found clean, and
tests/unit/test_deploy_cloudrun.py checks what matters in it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from embedserve.deploy import main
from embedserve.deploy.kubernetes import CHECKOV_SKIPS
from tests.unit.test_deploy import FLEET

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
FRAMEWORKS = ("kubernetes", "dockerfile", "terraform", "secrets")


def checkov() -> str:
    """The checkov executable: EMBEDSERVE_CHECKOV, else ./dev's .venv-checkov, else one on PATH."""
    candidates = [os.environ.get("EMBEDSERVE_CHECKOV"), str(ROOT / ".venv-checkov" / "bin" / "checkov")]
    for candidate in [*candidates, shutil.which("checkov")]:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.fail("checkov not found: `./dev test` installs it into .venv-checkov (or set EMBEDSERVE_CHECKOV)")


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """checkov's JSON report per framework, over one folder holding every target's output and the Dockerfiles."""
    root = tmp_path_factory.mktemp("lint")
    (root / "fleet.yaml").write_text(FLEET)
    scanned = root / "scanned"
    for target in ("compose", "kubernetes", "cloudrun"):
        assert main([target, "--fleet", str(root / "fleet.yaml"), "--out", str(scanned / target)]) == 0
    (scanned / "docker").mkdir()
    for name in ("Dockerfile.cpu", "Dockerfile.cuda"):
        shutil.copy(ROOT / name, scanned / "docker" / name)
    result = subprocess.run(
        [checkov(), "--skip-download", "--directory", str(scanned), "--framework", *FRAMEWORKS, "--output", "json"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode in (0, 1), result.stderr[-3000:]  # 1: some check failed (reported below)
    found = json.loads(result.stdout)
    # One report per framework that had any result; a bare summary when none had one.
    listed = found if isinstance(found, list) else [found]
    return {report["check_type"]: report for report in listed if "check_type" in report}


def test_no_check_fails_on_the_generated_files_or_the_dockerfiles(reports):
    failed = [
        f"{check['check_id']} {check['check_name']}: {check['resource']} in {check['file_path']}"
        for report in reports.values()
        for check in report["results"]["failed_checks"]
    ]
    assert failed == []
    assert all(report["summary"]["parsing_errors"] == 0 for report in reports.values())


def test_checkov_really_ran_over_the_manifests_and_both_dockerfiles(reports):
    assert reports["kubernetes"]["summary"]["passed"] > 100
    dockerfiles = {Path(check["file_path"]).name for check in reports["dockerfile"]["results"]["passed_checks"]}
    assert dockerfiles == {"Dockerfile.cpu", "Dockerfile.cuda"}
    assert set(reports) <= set(FRAMEWORKS)


def test_every_skip_is_a_documented_choice_with_its_reason(reports):
    skipped = [check for report in reports.values() for check in report["results"]["skipped_checks"]]
    assert skipped  # the Kubernetes choices below are really applied and read
    for check in skipped:
        assert check["check_id"] in CHECKOV_SKIPS, check["check_id"]
        kinds, reason = CHECKOV_SKIPS[check["check_id"]]
        assert check["check_result"]["suppress_comment"] == reason
        assert check["resource"].split(".")[0] in kinds
