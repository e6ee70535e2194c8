"""Check the rendered book in a real browser: ``make check-book`` (``python tools/check_book.py [HTML]``).

Every page of ``_build/html`` is opened in headless Chromium (the system's ``chromium``, driven by
Playwright) at 1366 × 900 px, a common laptop screen. A page fails on

* a table, figure, image or code block wider than the content column that is not inside its own
  horizontal scroll box (the page would clip it), or a table of fewer than ``WIDE_COLUMNS`` columns that
  needs its scroll box (part of it is hidden at the column's edge: it should fit);
* a broken image (not loaded) or a link to a local file that does not exist;
* a JavaScript console error or an uncaught page error (a remote resource that cannot load because the
  machine is offline, e.g. MathJax from its CDN, is listed but not counted);
* runner plumbing in the text: a temporary stage folder (``.tmp-``) or a parameters cell (``out_dir =``);
* a table cell cut short by pandas (its text ends in ``...``: ``display.max_colwidth``), so the reader
  sees half a label or note.

A full-page screenshot of each page is saved under ``_build/screenshots/``. Exit status 1 lists every
problem, page by page.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

ROOT = Path(__file__).resolve().parent.parent
SKIP = ("genindex.html", "search.html", "py-modindex.html")
FORBIDDEN_TEXT = (".tmp-", "out_dir =")

#: a table of at least this many columns (the paper's Table 1 layout) may scroll in its own box; a
#: narrower one must fit the column, since a box that hides its last column looks like a cut-off table
#: (the same count as the stylesheet's ``:has(tr > :nth-child(9))`` rules, _static/hcc25d.css)
WIDE_COLUMNS = 9

# Elements wider than the content column must sit in an ancestor that scrolls horizontally.
_OVERFLOW_JS = """
() => {
  const WIDE_COLUMNS = %d;
  const col = document.querySelector('.bd-article') || document.querySelector('main') || document.body;
  const limit = col.getBoundingClientRect().right + 2;
  const bad = [];
  for (const el of col.querySelectorAll('table, img, pre, figure, svg, .output_area, .cell_output > *')) {
    const r = el.getBoundingClientRect();
    if (r.width === 0) continue;
    if (el.tagName === 'TABLE') {  // a narrow table that scrolls in its box looks cut off at the edge
      const ncol = Math.max(0, ...Array.from(el.rows, row => row.cells.length));
      const box = el.parentElement;
      const hidden = box ? box.scrollWidth - box.clientWidth : 0;
      if (ncol < WIDE_COLUMNS && hidden > 2) {
        bad.push(`TABLE of ${ncol} columns is cut off: ${hidden} px of it are hidden in its scroll box`);
        continue;
      }
    }
    if (r.right <= limit) continue;
    let ok = false;
    for (let a = el.parentElement; a && a !== col.parentElement; a = a.parentElement) {
      const s = getComputedStyle(a);
      if (['auto', 'scroll'].includes(s.overflowX) && a.getBoundingClientRect().right <= limit) { ok = true; break; }
    }
    if (!ok) {
      const label = (el.tagName + ' ' + (el.id || el.className || '')).trim().slice(0, 60);
      bad.push(`${label} is ${Math.round(r.width)} px wide and runs ${Math.round(r.right - limit)} px past the column`);
    }
  }
  return bad;
}
""" % WIDE_COLUMNS

_IMAGES_JS = """
() => Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.getAttribute('src'))
"""

# pandas shortens a cell longer than display.max_colwidth to its first characters and "..."
_TRUNCATED_JS = """
() => Array.from(document.querySelectorAll('td, th')).map(c => c.innerText.trim())
  .filter(t => t.length > 3 && t.endsWith('...')).map(t => t.slice(-60))
"""

_LINKS_JS = """
() => Array.from(document.querySelectorAll('a[href]')).map(a => a.getAttribute('href'))
"""


def pages(html: Path) -> list[Path]:
    return [p for p in sorted(html.rglob("*.html"))
            if p.name not in SKIP and "_static" not in p.parts and "_sources" not in p.parts]


def _local_link_broken(page: Path, href: str) -> bool:
    u = urlparse(href)
    if u.scheme not in ("", "file") or not u.path or href.startswith("#"):
        return False
    target = Path(unquote(u.path)) if u.scheme == "file" else (page.parent / unquote(u.path))
    return not target.exists()


def _is_remote(url: str) -> bool:
    return urlparse(url).scheme in ("http", "https")


def check(html: Path, shots: Path, executable: str | None = None) -> dict:
    """``{page: [problems]}`` for every page of the built book under ``html``."""
    from playwright.sync_api import sync_playwright

    exe = executable or shutil.which("chromium") or shutil.which("chromium-browser")
    shots.mkdir(parents=True, exist_ok=True)
    problems: dict = {}
    offline: set = set()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-gpu"])
        for page_file in pages(html):
            rel = str(page_file.relative_to(html))
            found: list[str] = []
            page = browser.new_page(viewport={"width": 1366, "height": 900})
            remote: list[str] = []
            page.on("console", lambda m, f=found: f.append(f"console error: {m.text[:200]}")
                    if m.type == "error" and not m.text.startswith("Failed to load resource") else None)
            page.on("pageerror", lambda e, f=found: f.append(f"page error: {str(e)[:200]}"))
            page.on("requestfailed", lambda r, f=found, o=remote: (o if _is_remote(r.url) else f).append(
                r.url if _is_remote(r.url) else f"broken resource: {r.url}"))
            page.goto(page_file.as_uri(), wait_until="load")
            page.wait_for_timeout(300)
            here = Path(unquote(urlparse(page.url).path))  # after a redirect (index.html)
            found += [f"overflow: {b}" for b in page.evaluate(_OVERFLOW_JS)]
            found += [f"broken image: {s}" for s in page.evaluate(_IMAGES_JS)]
            found += [f"table cell cut short: {t!r}" for t in page.evaluate(_TRUNCATED_JS)]
            found += [f"broken link: {h}" for h in page.evaluate(_LINKS_JS) if _local_link_broken(here, h)]
            offline.update(remote)
            text = page.inner_text("body")
            found += [f"plumbing in the text: {t!r}" for t in FORBIDDEN_TEXT if t in text]
            _screenshot(page, shots / (rel.replace("/", "__").removesuffix(".html") + ".png"), rel)
            page.close()
            if found:
                problems[rel] = found
        browser.close()
    if offline:
        print(f"note: {len(offline)} remote resource(s) could not load here (offline?), not counted: "
              + ", ".join(sorted(offline)[:3]), file=sys.stderr)
    return problems


def _screenshot(page, path: Path, rel: str, tries: int = 3) -> None:
    """A full-page screenshot for the reader of the check. The browser now and then refuses one under load
    ("Unable to capture screenshot"): try again, then fall back to the visible part. A screenshot is a
    record, not a test of the page (the checks above are), so its failure is said, not counted."""
    from playwright.sync_api import Error

    for k in range(tries):
        try:
            page.screenshot(path=str(path), full_page=True)
            return
        except Error as e:
            last = str(e).splitlines()[0]
            page.wait_for_timeout(1000 * (k + 1))
    try:
        page.screenshot(path=str(path))
        print(f"note: {rel}: full-page screenshot failed ({last}); saved the visible part", file=sys.stderr)
    except Error as e:
        print(f"note: {rel}: no screenshot ({str(e).splitlines()[0]})", file=sys.stderr)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("html", nargs="?", default=str(ROOT / "_build" / "html"))
    ap.add_argument("--screenshots", default=str(ROOT / "_build" / "screenshots"))
    ap.add_argument("--chromium", default=None, help="the browser executable (default: chromium on the PATH)")
    a = ap.parse_args(argv)
    html = Path(a.html)
    if not (html / "index.html").exists():
        print(f"no built book at {html}: run `make book` first", file=sys.stderr)
        return 2
    if not (a.chromium or shutil.which("chromium") or shutil.which("chromium-browser")):
        print("no chromium on the PATH (Debian: apt-get install chromium)", file=sys.stderr)
        return 2
    problems = check(html, Path(a.screenshots), a.chromium)
    n = len(pages(html))
    if problems:
        for page, items in problems.items():
            print(f"{page}:")
            for it in items:
                print(f"  - {it}")
        print(f"check-book: {sum(map(len, problems.values()))} problem(s) on {len(problems)} of {n} pages")
        return 1
    print(f"check-book: {n} pages checked, no problem; screenshots in {a.screenshots}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
