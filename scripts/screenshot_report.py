"""Screenshot an HTML report in headless Chromium, to commit beside it (results/robustness.html.png).

    python scripts/screenshot_report.py results/robustness.html [--out FILE] [--height 2200] [--full-page]

Needs Playwright for Python (pip install -e '.[browser]') and a Chromium executable (Debian: apt-get install
chromium; or CBBENCH_CHROMIUM=/path). It fails if the page logs a console error or an image does not load.
"""
from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

# Without the background-networking flags Chromium keeps trying to reach Google's hosts from a closed network.
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("html", type=Path, help="the report page, e.g. results/robustness.html")
    parser.add_argument("--out", type=Path, help="PNG to write (default: the page's path + .png)")
    parser.add_argument("--width", type=int, default=1400, help="viewport width in pixels (default 1400)")
    parser.add_argument("--height", type=int, default=2200, help="viewport height in pixels (default 2200)")
    parser.add_argument("--full-page", action="store_true", help="the whole page, not just the first screen")
    args = parser.parse_args()
    executable = next((shutil.which(c) for c in (os.environ.get("CBBENCH_CHROMIUM"), "chromium",
                                                  "chromium-browser") if c and shutil.which(c)), None)
    if executable is None:
        raise SystemExit("no Chromium executable: apt-get install chromium, or set CBBENCH_CHROMIUM")
    from playwright.sync_api import sync_playwright

    out = args.out or args.html.with_name(args.html.name + ".png")
    errors = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=ARGS)
        page = browser.new_page(viewport={"width": args.width, "height": args.height})
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        page.goto(args.html.resolve().as_uri(), wait_until="load")
        broken = page.eval_on_selector_all("img", "imgs => imgs.filter(i => !i.naturalWidth).length")
        page.screenshot(path=str(out), full_page=args.full_page)
        browser.close()
    if errors or broken:
        raise SystemExit(f"the page is broken: {broken} image(s) did not load; console errors: {errors}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
