"""The documentation a newcomer navigates: every relative link and anchor resolves, every setting is documented."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from app.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]
FRONT_DOOR_LIMIT = 8 * 1024  # README.md is the front door; detail lives in docs/
SKIP_DIRS = {".git", ".venv", "node_modules", "__pycache__", "runs", "build", "dist"}

FENCE = re.compile(r"^\s{0,3}(`{3,}|~{3,})")
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")
# [text](target "title") and ![alt](target); the text may hold one level of brackets (badges, code).
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*(<[^>]*>|[^\s()]*(?:\([^\s()]*\)[^\s()]*)*)"
                         r"(?:\s+(?:\"[^\"]*\"|'[^']*'|\([^)]*\)))?\s*\)")
REFERENCE_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)")
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)(?:\s+#+)?\s*$")
HTML_ANCHOR = re.compile(r"<a\s[^>]*(?:name|id)=[\"']([^\"']+)[\"']", re.IGNORECASE)
EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:|^//")


def markdown_files() -> list[Path]:
    """Markdown files of the project: git's view where there is one (tracked + untracked, not ignored)."""
    try:
        listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "*.md"], cwd=REPO_ROOT,
                                capture_output=True, text=True, check=True, timeout=60).stdout.split("\n")
        files = [REPO_ROOT / name for name in listed if name]
    except (OSError, subprocess.SubprocessError):  # no git (e.g. an exported tarball): walk the tree
        files = [p for p in REPO_ROOT.rglob("*.md")
                 if not SKIP_DIRS & set(p.relative_to(REPO_ROOT).parts)
                 and not any(part.endswith(".egg-info") for part in p.relative_to(REPO_ROOT).parts)]
    return sorted(p for p in files if p.is_file())


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks, with inline code spans blanked out."""
    out, fence = [], None
    for number, line in enumerate(text.split("\n"), 1):
        opened = FENCE.match(line)
        if fence is None and opened:
            fence = opened.group(1)[0]
            continue
        if fence is not None:
            if opened and opened.group(1)[0] == fence:
                fence = None
            continue
        out.append((number, CODE_SPAN.sub("", line)))
    return out


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: rendered text, lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links and images keep their text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML tags
    text = text.replace("`", "").lower()
    text = re.sub(r"[^\w\- ]", "", text)  # \w is Unicode-aware, like GitHub's letters and digits
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor a file offers: heading slugs (repeats get -1, -2 ... as on GitHub) and HTML name/id."""
    text = path.read_text(encoding="utf-8")
    found: set[str] = set()
    seen: dict[str, int] = {}
    fence = None
    for line in text.split("\n"):
        opened = FENCE.match(line)
        if fence is None and opened:
            fence = opened.group(1)[0]
            continue
        if fence is not None:
            if opened and opened.group(1)[0] == fence:
                fence = None
            continue
        found.update(HTML_ANCHOR.findall(line))
        heading = HEADING.match(line)
        if heading:
            slug = github_slug(heading.group(2))
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def links(path: Path) -> list[tuple[int, str]]:
    text = path.read_text(encoding="utf-8")
    out = []
    for number, line in prose_lines(text):
        targets = [m.group(1) for m in INLINE_LINK.finditer(line)]
        ref = REFERENCE_DEF.match(line)
        if ref:
            targets.append(ref.group(1))
        out.extend((number, t.strip("<>")) for t in targets)
    return out


def broken_links(path: Path) -> list[str]:
    problems = []
    for number, target in links(path):
        if not target or EXTERNAL.match(target):
            continue
        where = f"{path.relative_to(REPO_ROOT)}:{number}: {target}"
        file_part, _, anchor = target.partition("#")
        file_part = file_part.split("?")[0]
        resolved = (path.parent / file_part).resolve() if file_part else path
        if file_part.startswith("/"):
            resolved = (REPO_ROOT / file_part.lstrip("/")).resolve()
        if not resolved.exists():
            problems.append(f"{where} (no such file)")
            continue
        if REPO_ROOT not in resolved.parents and resolved != REPO_ROOT:
            problems.append(f"{where} (outside the repository)")
            continue
        if anchor and resolved.suffix.lower() == ".md" and anchor.lower() not in anchors(resolved):
            problems.append(f"{where} (no heading with that anchor in {resolved.relative_to(REPO_ROOT)})")
    return problems


# --- the checker's own rules, on known cases -------------------------------------------------------------

@pytest.mark.parametrize(("heading", "slug"), [
    ("Partner integration: Open Inference Protocol, model versions, API keys",
     "partner-integration-open-inference-protocol-model-versions-api-keys"),
    ("Open Inference Protocol (KServe v2) under `/v2`", "open-inference-protocol-kserve-v2-under-v2"),
    ("The shipped model: `model_store/pneumonia/1`", "the-shipped-model-model_storepneumonia1"),
    ("One host: docker compose", "one-host-docker-compose"),
    ("[Linked](other.md) heading", "linked-heading"),
])
def test_slugs_follow_github(heading, slug):
    assert github_slug(heading) == slug


def test_the_checker_finds_broken_links_and_anchors(tmp_path, monkeypatch):
    monkeypatch.setattr(f"{__name__}.REPO_ROOT", tmp_path)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# Title\n\n## Same\n\n## Same\n\n```\n[in code](nowhere.md)\n```\n")
    page = tmp_path / "page.md"
    page.write_text("# Page\n\n"
                    "[ok](docs/a.md) [ok](docs/a.md#same-1) [ok](#page) `[code](gone.md)` [web](https://x.org/y)\n"
                    "[missing](docs/b.md) [bad anchor](docs/a.md#same-2) [bad local](#nope)\n"
                    "[ref]: docs/c.md\n")
    problems = broken_links(page)
    assert [p.split(": ", 1)[1].split(" (")[0] for p in problems] == [
        "docs/b.md", "docs/a.md#same-2", "#nope", "docs/c.md"]
    assert broken_links(tmp_path / "docs" / "a.md") == []


# --- the repository's documentation -----------------------------------------------------------------------

def test_every_relative_link_and_anchor_resolves():
    files = markdown_files()
    assert REPO_ROOT / "README.md" in files and REPO_ROOT / "docs" / "configuration.md" in files
    problems = [problem for path in files for problem in broken_links(path)]
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_readme_is_a_front_door_that_links_every_docs_page():
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.encode()) < FRONT_DOOR_LIMIT, "README.md is the front door: move detail into docs/"
    linked = {target.split("#")[0] for _, target in links(REPO_ROOT / "README.md")}
    pages = {f"docs/{p.name}" for p in (REPO_ROOT / "docs").glob("*.md")}
    assert pages and not pages - linked, f"README.md does not link {sorted(pages - linked)}"
    for needed in ("make serve", "make test", "Intended use", "not a diagnosis", "frontal chest radiograph"):
        assert needed in readme


def test_every_setting_is_documented_in_the_configuration_page():
    page = (REPO_ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    names = [f"CXR_{name.upper()}" for name in Settings.model_fields]
    assert len(names) >= 20
    missing = [name for name in names if f"`{name}`" not in page]
    assert not missing, f"docs/configuration.md does not document {missing}"
