"""`make check-book` on a planted page: it fails on an overflowing table, a broken image, a console error
and plumbing text, and passes once the table scrolls in its own box."""
import shutil

import pytest

from tools import check_book

pytestmark = pytest.mark.skipif(not (shutil.which("chromium") or shutil.which("chromium-browser")),
                                reason="needs chromium (Debian: apt-get install chromium)")

PAGE = """<!doctype html><html><body><main><article class="bd-article" style="width:600px">
<p>{text}</p>{table}{extra}</article></main></body></html>"""
WIDE = "<table><tr>" + "".join(f"<td>column_{i:02d}_value</td>" for i in range(40)) + "</tr></table>"


def _book(tmp_path, table, text="fine", extra=""):
    html = tmp_path / "html"
    html.mkdir(exist_ok=True)
    (html / "index.html").write_text(PAGE.format(text=text, table=table, extra=extra))
    return html


def test_planted_overflowing_table_fails_and_scroll_box_passes(tmp_path):
    html = _book(tmp_path, WIDE)
    problems = check_book.check(html, tmp_path / "shots")
    assert any(p.startswith("overflow: TABLE") for p in problems["index.html"])
    assert (tmp_path / "shots" / "index.png").stat().st_size > 0
    html = _book(tmp_path, f'<div style="overflow-x:auto">{WIDE}</div>')
    assert check_book.check(html, tmp_path / "shots") == {}


def test_broken_image_console_error_and_plumbing(tmp_path):
    html = _book(tmp_path, "", text="written to .tmp-cohort/patients.csv",
                 extra='<img src="nope.png"><script>console.error("boom")</script><a href="missing.html">x</a>')
    found = "\n".join(check_book.check(html, tmp_path / "shots")["index.html"])
    assert "broken image: nope.png" in found and "console error: boom" in found
    assert "broken link: missing.html" in found and "'.tmp-'" in found
