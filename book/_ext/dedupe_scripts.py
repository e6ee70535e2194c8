"""Drop repeated inline <script> lines from every built page.

Under Jupyter Book 1.x the theme writes the inline configuration scripts of sphinx-thebe and
sphinx-togglebutton twice into each page's head; the second ``const THEBE_JS_URL`` then raises
"Identifier 'THEBE_JS_URL' has already been declared" in the browser. After the build, every inline
script line that repeats an earlier identical one on the same page is removed.

A local ``mathjax_path`` (the repository's MathJax, so that formulas render offline) is written twice, once
with ``defer`` and once without; MathJax loaded twice fails ("Cannot set property Package"). So a
``<script src=...>`` line whose file an earlier line of the page already loads is removed too.
"""
import re
from pathlib import Path

_SRC = re.compile(r'<script\b[^>]*\bsrc="([^"]+)"')


def _dedupe(app, exception):
    if exception is not None or app.builder.format != "html":
        return
    for page in Path(app.outdir).rglob("*.html"):
        lines = page.read_text(encoding="utf-8").splitlines(keepends=True)
        seen, out, changed = set(), [], False
        for ln in lines:
            s = ln.strip()
            src = _SRC.match(s)
            key = ("src", src.group(1)) if src else s
            if (src or s.startswith("<script>")) and s.endswith("</script>"):
                if key in seen:
                    changed = True
                    continue
                seen.add(key)
            out.append(ln)
        if changed:
            page.write_text("".join(out), encoding="utf-8")


def setup(app):
    app.connect("build-finished", _dedupe)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
