"""Markdown with directives → HTML: the write-up's source resolved against the real code and the results.

Used by docs/build.py (step 6). Directives (each on its own line) are listed in build.py's docstring; our code
is cut out of the source files with Python's ast, by name, so a renamed function stops the build instead of
leaving a stale listing. Inline numbers `[[source: dotted.path]]` are read from the result files (tables.py).
"""
import ast
import html
import os
import re

DOCS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(DOCS)


# --- code extraction -------------------------------------------------------------------------------

def find_node(tree, dotted):
    body, node = tree.body, None
    for part in dotted.split("."):
        node = None
        for candidate in body:
            if isinstance(candidate, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and candidate.name == part:
                node = candidate
            elif isinstance(candidate, ast.Assign) and any(isinstance(t, ast.Name) and t.id == part
                                                           for t in candidate.targets):
                node = candidate
            elif isinstance(candidate, ast.AnnAssign) and isinstance(candidate.target, ast.Name) \
                    and candidate.target.id == part:
                node = candidate
            if node is not None:
                break
        if node is None:
            raise SystemExit(f"docs: {dotted!r} not found (writeup.md names code that is no longer there)")
        body = getattr(node, "body", [])
    return node


def extract(relpath, dotted, start_text=None, end_text=None):
    """(first line number, lines) of NAME in FILE, with the comment lines right above it."""
    path = os.path.join(REPO, relpath)
    with open(path, encoding="utf-8") as f:
        source = f.read()
    lines = source.splitlines()
    node = find_node(ast.parse(source), dotted)
    first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
    # Comments right above belong to it; a "# --- section ---" ruler does not.
    while first > 1 and lines[first - 2].strip().startswith("#") and not lines[first - 2].strip().startswith("# ---"):
        first -= 1
    last = node.end_lineno
    if start_text:
        for i in range(first, last + 1):
            if start_text in lines[i - 1]:
                first = i
                break
        else:
            raise SystemExit(f"docs: {start_text!r} not found in {relpath}::{dotted}")
    if end_text:
        for i in range(first, last + 1):
            if end_text in lines[i - 1]:
                last = i
                break
        else:
            raise SystemExit(f"docs: {end_text!r} not found in {relpath}::{dotted} after {start_text!r}")
    return first, lines[first - 1:last]


# Every listing of the last resolve(): docs/build.py writes them to docs/writeup.listings.json, and --check
# compares that file with the source.
listings: list = []


def listing_lines(relpath, dotted, start_text=None, end_text=None):
    """(first line number, sha1 of the lines) of a listing as the source has it now."""
    import hashlib
    first, lines = extract(relpath, dotted, start_text, end_text)
    return first, hashlib.sha1("\n".join(lines).encode()).hexdigest()


def dedent(lines):
    widths = [len(line) - len(line.lstrip()) for line in lines if line.strip()]
    cut = min(widths) if widths else 0
    return [line[cut:] for line in lines]


def highlight(code, first_line=None):
    from pygments import highlight as pyg
    from pygments.formatters import HtmlFormatter
    from pygments.lexers import PythonLexer
    formatter = HtmlFormatter(nowrap=True)
    body = pyg(code, PythonLexer(), formatter).rstrip("\n").split("\n")
    if first_line is None:
        return "".join(f'<span class="line"><span class="ln"></span>{line}</span>' for line in body)
    width = len(str(first_line + len(body)))
    return "".join(f'<span class="line"><span class="ln">{first_line + i:>{width}}</span>{line}</span>'
                   for i, line in enumerate(body))


def highlight_lua_constant(lines, first):
    """A Python constant holding a Lua script: Python around it, Lua inside the triple quotes."""
    from pygments import highlight as pyg
    from pygments.formatters import HtmlFormatter
    from pygments.lexers import LuaLexer, PythonLexer
    opening = next(i for i, line in enumerate(lines) if '"""' in line)
    closing = max(i for i, line in enumerate(lines) if '"""' in line)
    parts = [(PythonLexer(), lines[:opening + 1]), (LuaLexer(), lines[opening + 1:closing]),
             (PythonLexer(), lines[closing:])]
    out = []
    for lexer, chunk in parts:
        if chunk:
            out += pyg("\n".join(chunk), lexer, HtmlFormatter(nowrap=True)).rstrip("\n").split("\n")
    width = len(str(first + len(out)))
    return "".join(f'<span class="line"><span class="ln">{first + i:>{width}}</span>{line}</span>'
                   for i, line in enumerate(out))


def code_block(relpath, dotted, start_text=None, end_text=None):
    first, lines = extract(relpath, dotted, start_text, end_text)
    _, digest = listing_lines(relpath, dotted, start_text, end_text)
    listings.append({"file": relpath, "name": dotted, "from": start_text, "to": end_text, "first": first,
                     "last": first + len(lines) - 1, "sha1": digest})
    lines = dedent(lines)
    last = first + len(lines) - 1
    if sum('"""' in line for line in lines) >= 2 and any("redis.call" in line for line in lines) \
            and not any(line.lstrip().startswith("def ") for line in lines):
        body = highlight_lua_constant(lines, first)
        caption = (f'<span class="file">{html.escape(relpath)}</span>, lines {first}–{last}: '
                   f'<code>{html.escape(dotted)}</code> (a Lua script run by Redis)')
        return f'<figure class="code ours"><figcaption>{caption}</figcaption><pre class="highlight">{body}</pre></figure>'

    what = dotted + (" (excerpt)" if start_text or end_text else "")
    where = f"line {first}" if first == last else f"lines {first}–{last}"
    caption = f'<span class="file">{html.escape(relpath)}</span>, {where}: <code>{html.escape(what)}</code>'
    return (f'<figure class="code ours"><figcaption>{caption}</figcaption>'
            f'<pre class="highlight">{highlight(chr(10).join(lines), first)}</pre></figure>')


def doc_block(relpath):
    with open(os.path.join(REPO, relpath), encoding="utf-8") as f:
        doc = ast.get_docstring(ast.parse(f.read()), clean=True) or ""
    return (f'<figure class="code ours doc"><figcaption><span class="file">{html.escape(relpath)}</span>, '
            f'module docstring</figcaption><pre class="plain">{html.escape(doc)}</pre></figure>')


def course_block(caption, code):
    return (f'<figure class="code course"><figcaption><span class="tag">course code, quoted</span> '
            f'{html.escape(caption)}</figcaption><pre class="highlight">{highlight(code)}</pre></figure>')


def figure_block(name, caption, figures):
    return (f'<figure class="diagram"><img src="{figures[name]}" alt="{html.escape(name)}"/>'
            f'<figcaption>{html.escape(caption)}</figcaption></figure>')



# --- Markdown → HTML → PDF -------------------------------------------------------------------------

DIRECTIVE = re.compile(r"^\{\{\s*(\w+)\s*:\s*(.*?)\s*\}\}\s*$")
INLINE = re.compile(r"\[\[\s*(\w+)\s*:\s*([\w.\-]+)\s*\]\]")


def resolve(text, results, figures):
    """Replace directives and course blocks with placeholders; return (markdown, {placeholder: html})."""
    blocks, out, lines, i = {}, [], text.splitlines(), 0

    def stash(fragment):
        key = f"DOCSBLOCK{len(blocks):04d}X"
        blocks[key] = fragment
        out.extend(["", key, ""])

    while i < len(lines):
        line = lines[i]
        if line.startswith("<<<course:"):
            caption = line[len("<<<course:"):].strip()
            j = i + 1
            while lines[j].strip() != ">>>":
                j += 1
            stash(course_block(caption, "\n".join(lines[i + 1:j])))
            i = j + 1
            continue
        if line.startswith("Table: "):  # the caption of the Markdown table that follows
            stash(f'<p class="tcap">{html.escape(line[len("Table: "):])}</p>')
            i += 1
            continue
        m = DIRECTIVE.match(line)
        if m:
            kind, arg = m.groups()
            if kind == "code":
                target, _, opts = arg.partition("|")
                relpath, _, dotted = target.strip().partition("::")
                start = re.search(r'from\s+"([^"]+)"', opts)
                end = re.search(r'to\s+"([^"]+)"', opts)
                stash(code_block(relpath, dotted, start and start.group(1), end and end.group(1)))
            elif kind == "doc":
                stash(doc_block(arg))
            elif kind == "figure":
                name, _, caption = arg.partition("|")
                stash(figure_block(name.strip(), caption.strip(), figures))
            elif kind == "plot":
                name, _, caption = arg.partition("|")
                stash(results.plot(name.strip(), html.escape(caption.strip()),
                                   f"The figure <code>{html.escape(name.strip())}</code> has no result to draw from.",
                                   "<code>make bench-notify</code> (question 5) or <code>make docs</code>."))
            elif kind == "gen":
                stash(getattr(results, f"gen_{arg}")())
            else:
                raise SystemExit(f"docs: unknown directive {kind!r}")
        else:
            out.append(INLINE.sub(lambda m: results.value(m.group(1), m.group(2)), line))
        i += 1
    return "\n".join(out), blocks


def to_html(markdown_text, blocks, title):
    import markdown
    md = markdown.Markdown(extensions=["tables", "fenced_code", "codehilite", "toc", "attr_list", "sane_lists",
                                       "md_in_html"],
                           extension_configs={"codehilite": {"guess_lang": False, "css_class": "highlight"},
                                              "toc": {"toc_depth": "2-2", "title": ""}})
    body = md.convert(markdown_text)
    for key, fragment in blocks.items():
        body = body.replace(f"<p>{key}</p>", fragment).replace(key, fragment)
    from pygments.formatters import HtmlFormatter
    pygments_css = HtmlFormatter(style="friendly").get_style_defs(".highlight")
    with open(os.path.join(DOCS, "style.css"), encoding="utf-8") as f:
        css = f.read()
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f'<style>{pygments_css}\n{css}</style></head><body>{body}</body></html>')

