"""The docs stay true to the code: the configuration table names exactly the settings the code reads, every
relative link and #anchor in README.md and docs/*.md resolves, the README stays short, and the benchmarks page is
what docs/benchmarks.py makes from bench/results/ now; the write-up PDF's code listings match the source.
"""
import glob
import os
import re
import subprocess
import sys

import pytest

from conftest import REPO

PAGES = [os.path.join(REPO, "README.md")] + sorted(glob.glob(os.path.join(REPO, "docs", "*.md")))
README_LIMIT = 12 * 1024  # bytes: the README says what the service is and sends each reader to a page

FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.S | re.M)
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def settings_source():
    """imgq/settings.py once the code lives in the package, settings.py before."""
    moved = os.path.join(REPO, "imgq", "settings.py")
    return read(moved if os.path.exists(moved) else os.path.join(REPO, "settings.py"))


def test_the_configuration_table_names_every_setting_the_code_reads_and_only_those():
    in_code = set(re.findall(r'_(?:str|int|float|bool)\("([A-Z_0-9]+)"', settings_source()))
    page = read(os.path.join(REPO, "docs", "configuration.md"))
    in_table = set(re.findall(r"^\| `([A-Z_0-9]+)`", page, re.M)) | \
        set(re.findall(r"^\| `[A-Z_0-9]+`, `([A-Z_0-9]+)` \|", page, re.M))
    assert in_code and in_code == in_table, (f"read by the code, not in the table: {sorted(in_code - in_table)}; "
                                             f"in the table, not read: {sorted(in_table - in_code)}")


def slug(heading):
    """GitHub's anchor for a heading: markup dropped, lower case, punctuation other than - and _ dropped,
    spaces to -."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text stays, its target goes
    text = re.sub(r"<[^>]+>", "", text)
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(path):
    """Every heading's anchor in a Markdown file; repeated headings get -1, -2 ... as on GitHub."""
    seen, found = {}, set()
    for line in FENCE.sub("", read(path)).splitlines():
        heading = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading:
            base = slug(heading.group(1))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(path):
    """(line number, target) of every Markdown link and image outside code blocks."""
    text = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), read(path))
    for number, line in enumerate(text.splitlines(), 1):
        line = re.sub(r"`[^`]*`", "", line)  # code spans are not links
        for match in LINK.finditer(line):
            yield number, match.group(1)


def test_the_pages_exist():
    names = {os.path.relpath(p, REPO) for p in PAGES}
    for page in ("api", "configuration", "architecture", "operations", "models", "benchmarks", "development"):
        assert f"docs/{page}.md" in names


@pytest.mark.parametrize("page", PAGES, ids=lambda p: os.path.relpath(p, REPO))
def test_every_relative_link_and_anchor_resolves(page):
    broken = []
    for number, target in links(page):
        if re.match(r"[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto: ... are not checked here
            continue
        path, _, anchor = target.partition("#")
        resolved = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
        where = f"{os.path.relpath(page, REPO)}:{number}: {target}"
        if not os.path.exists(resolved):
            broken.append(f"{where} (no file {os.path.relpath(resolved, REPO)})")
        elif anchor and resolved.endswith(".md") and anchor not in anchors(resolved):
            broken.append(f"{where} (no heading with that anchor)")
    assert not broken, "\n".join(broken)


def test_the_slugs_follow_githubs_rule():
    assert slug("`make run`'s processes") == "make-runs-processes"
    assert slug("Runtimes (`MODEL_RUNTIME`)") == "runtimes-model_runtime"
    assert slug("Uploads: formats and limits") == "uploads-formats-and-limits"
    assert slug("What the service guarantees, and what it does not") == \
        "what-the-service-guarantees-and-what-it-does-not"


def test_the_readme_stays_within_12_kb():
    size = os.path.getsize(os.path.join(REPO, "README.md"))
    assert size <= README_LIMIT, f"README.md is {size} bytes; move detail to a page in docs/"


def test_the_benchmarks_page_is_what_the_script_makes_from_the_results_now():
    done = subprocess.run([sys.executable, "-m", "docs.benchmarks", "--check"], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]


def test_the_writeup_pdf_shows_the_code_as_it_is_now():
    """docs/writeup.pdf's listings were cut from the source when it was built (docs/writeup.listings.json keeps
    their lines' hashes): a listed function that changed since makes the PDF stale. `make docs` rebuilds it."""
    from docs.build import listing_problems
    assert listing_problems() == []


def test_the_benchmarks_script_answers_help():
    done = subprocess.run([sys.executable, "-m", "docs.benchmarks", "--help"], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0 and "--check" in done.stdout, done.stderr
