"""The README's configuration table names every setting settings.py reads, and only those."""
import os
import re

from conftest import REPO


def test_every_setting_is_in_the_readme_table():
    with open(os.path.join(REPO, "settings.py")) as f:
        in_code = set(re.findall(r'_(?:str|int|float|bool)\("([A-Z_0-9]+)"', f.read()))
    with open(os.path.join(REPO, "README.md")) as f:
        readme = f.read()
    table = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    in_table = set(re.findall(r"^\| `([A-Z_0-9]+)`", table, re.M)) | set(re.findall(r"^\| `[A-Z_0-9]+`, `([A-Z_0-9]+)` \|", table, re.M))
    assert in_code and in_code == in_table, (in_code - in_table, in_table - in_code)
