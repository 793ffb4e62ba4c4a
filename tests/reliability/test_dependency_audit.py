"""Dependency audit: pip-audit over the installed environment fails the run on any known-vulnerable version.

pip-audit's default source is PyPI's JSON API (``/pypi/<name>/<version>/json`` lists the advisories of each
release). Where that endpoint cannot be reached (offline CI, a registry mirror that serves only the package
index: the case on the machine this was written on), the test skips and says so; SECURITY.md explains."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import subprocess
import sys

import httpx
import pytest

PROBE_PACKAGE = "pip-audit"


def vulnerability_source_unreachable() -> str | None:
    """None if PyPI's per-release JSON (what pip-audit reads) answers here, else why not."""
    version = importlib.metadata.version(PROBE_PACKAGE)
    url = f"https://pypi.org/pypi/{PROBE_PACKAGE}/{version}/json"
    try:
        response = httpx.get(url, timeout=10, follow_redirects=True)
    except httpx.HTTPError as exc:
        return f"{url} is unreachable ({type(exc).__name__})"
    if response.status_code != 200 or "vulnerabilities" not in response.text:
        return f"{url} answered {response.status_code} without advisory data (a mirror of the index only?)"
    return None


def test_no_installed_dependency_has_a_known_vulnerability():
    if importlib.util.find_spec("pip_audit") is None:
        pytest.skip("pip-audit is not installed (it is in the dev extra)")
    reason = vulnerability_source_unreachable()
    if reason:
        pytest.skip(f"pip-audit cannot reach its vulnerability database: {reason}; see SECURITY.md")
    result = subprocess.run([sys.executable, "-m", "pip_audit", "--skip-editable", "--format", "json",
                             "--progress-spinner", "off"], capture_output=True, text=True, timeout=600, check=False)
    report = json.loads(result.stdout or "{}")
    dependencies = report.get("dependencies", [])
    audited = [d for d in dependencies if "skip_reason" not in d]
    assert audited, f"pip-audit audited nothing:\n{result.stderr[-2000:]}"
    vulnerable = [f"{d['name']} {d['version']}: " + ", ".join(
        f"{v['id']} (fixed in {', '.join(v.get('fix_versions') or ['-'])})" for v in d["vulns"])
        for d in audited if d.get("vulns")]
    assert not vulnerable, "known-vulnerable dependencies installed:\n" + "\n".join(vulnerable)
    skipped = [d["name"] for d in dependencies if "skip_reason" in d]
    print(f"pip-audit: {len(audited)} packages audited, none vulnerable; {len(skipped)} not on PyPI: {skipped}")
