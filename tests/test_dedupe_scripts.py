"""The book's build extension (book/_ext/dedupe_scripts.py) drops a page's repeated script lines: an inline
script written twice by the theme, and MathJax's file loaded a second time (which fails in the browser)."""
import importlib.util
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent


def _module():
    spec = importlib.util.spec_from_file_location("dedupe_scripts", ROOT / "book" / "_ext" / "dedupe_scripts.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_repeated_inline_and_src_scripts_are_dropped(tmp_path):
    page = tmp_path / "page.html"
    page.write_text(
        "<head>\n"
        "    <script>const THEBE_JS_URL = 'x'</script>\n"
        "    <script>window.MathJax = {}</script>\n"
        '    <script defer="defer" src="../_static/mathjax/tex-chtml.js?v=1"></script>\n'
        "    <script>const THEBE_JS_URL = 'x'</script>\n"
        '    <script src="../_static/mathjax/tex-chtml.js?v=1"></script>\n'
        '    <script src="../_static/other.js"></script>\n'
        "</head>\n", encoding="utf-8")
    app = SimpleNamespace(builder=SimpleNamespace(format="html"), outdir=str(tmp_path))
    _module()._dedupe(app, None)
    text = page.read_text(encoding="utf-8")
    assert text.count("THEBE_JS_URL") == 1 and text.count("tex-chtml.js") == 1
    assert 'defer="defer" src="../_static/mathjax' in text and "other.js" in text  # the first one stays
    before = page.read_text(encoding="utf-8")
    _module()._dedupe(SimpleNamespace(builder=SimpleNamespace(format="latex"), outdir=str(tmp_path)), None)
    assert page.read_text(encoding="utf-8") == before
