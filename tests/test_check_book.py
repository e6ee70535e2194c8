"""`make check-book` on a planted page: it fails on an overflowing table, a narrow table cut off in its
scroll box, a broken image, a console error and plumbing text, and passes once a wide table scrolls in
its own box."""
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


def test_a_narrow_table_that_needs_its_scroll_box_is_cut_off(tmp_path):
    """Four long columns in a 600 px column: the scroll box hides the last one, which reads as a table cut
    off at the page's edge; once its cells may wrap it fits and passes."""
    cells = "".join(f"<td>{'x' * 40}_{i}</td>" for i in range(4))
    html = _book(tmp_path, f'<div style="overflow-x:auto"><table style="white-space:nowrap"><tr>{cells}'
                           '</tr></table></div>')
    found = check_book.check(html, tmp_path / "shots")["index.html"]
    assert any("TABLE of 4 columns is cut off" in p for p in found), found
    cells = "".join(f"<td>{'word ' * 8}{i}</td>" for i in range(4))
    html = _book(tmp_path, f'<div style="overflow-x:auto"><table><tr>{cells}</tr></table></div>')
    assert check_book.check(html, tmp_path / "shots") == {}


def test_a_cell_cut_short_by_pandas_fails(tmp_path):
    """pandas shortens a cell past ``display.max_colwidth`` to its start and "..." — half a label."""
    html = _book(tmp_path, "<table><tr><td>two-point intensity reference (parenchyma and ...</td></tr></table>")
    found = check_book.check(html, tmp_path / "shots")["index.html"]
    assert found == ["table cell cut short: 'two-point intensity reference (parenchyma and ...'"], found
    html = _book(tmp_path, "<table><tr><td>two-point intensity reference (parenchyma and tumour)</td></tr></table>")
    assert check_book.check(html, tmp_path / "shots") == {}


def test_broken_image_console_error_and_plumbing(tmp_path):
    html = _book(tmp_path, "", text="written to .tmp-cohort/patients.csv",
                 extra='<img src="nope.png"><script>console.error("boom")</script><a href="missing.html">x</a>')
    found = "\n".join(check_book.check(html, tmp_path / "shots")["index.html"])
    assert "broken image: nope.png" in found and "console error: boom" in found
    assert "broken link: missing.html" in found and "'.tmp-'" in found


def test_a_refused_screenshot_is_retried_then_taken_of_the_visible_part(tmp_path, capsys):
    from playwright.sync_api import Error

    class Page:
        def __init__(self, fails_full):
            self.fails_full, self.calls = fails_full, []

        def screenshot(self, path, full_page=False):
            self.calls.append(full_page)
            if full_page and self.fails_full > 0:
                self.fails_full -= 1
                raise Error("Page.screenshot: Unable to capture screenshot")
            (tmp_path / "shot.png").write_bytes(b"png")

        def wait_for_timeout(self, ms):
            pass

    flaky = Page(fails_full=2)  # refused twice under load, then taken in full
    check_book._screenshot(flaky, tmp_path / "shot.png", "a.html")
    assert flaky.calls == [True, True, True] and "note" not in capsys.readouterr().err
    stuck = Page(fails_full=99)  # never in full: the visible part, and a note that says so
    check_book._screenshot(stuck, tmp_path / "shot.png", "b.html")
    assert stuck.calls == [True, True, True, False]
    assert "b.html: full-page screenshot failed (Page.screenshot: Unable" in capsys.readouterr().err
