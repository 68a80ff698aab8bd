"""The documentation site: complete, built with ``mkdocs --strict``, readable
offline (its maths renderer ships with the pages), served by ``--serve``, and its
home-page example runs."""

import html.parser
import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

import mipo.primitives
from mipo.tools.site import (
    API_PAGES,
    MATHJAX_DIR,
    REPO,
    build_site,
    plan_site,
    site_server,
)
from mipo.training.recipes import discover

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One strict build shared by the tests of this module."""
    return build_site(tmp_path_factory.mktemp("site") / "build")


def test_every_recipe_and_proof_has_a_page() -> None:
    """A recipe or proof missing from the site fails here."""
    pages = plan_site().pages
    for recipe in discover():
        assert f"](recipes/{recipe.name}.md)" in pages["methods.md"]
        page = pages[f"recipes/{recipe.name}.md"]
        assert recipe.doc.splitlines()[0] in page
        assert "## Slots" in page and "## Source" in page
    for proof in (REPO / "proofs").glob("*.md"):
        stem = "index" if proof.name == "README.md" else proof.stem
        assert f"proofs/{stem}.md" in pages
        if stem != "index":
            assert "## The test that checks it" in pages[f"proofs/{stem}.md"]


def test_every_docs_page_is_on_the_site() -> None:
    """Any docs/*.md or docs/guides/*.md (pages other work adds) is a site page
    and in the navigation."""
    plan = plan_site()
    navigation = repr(plan.nav)
    for path in [*REPO.glob("docs/*.md"), *REPO.glob("docs/guides/*.md")]:
        relative = path.relative_to(REPO / "docs").as_posix()
        assert relative in plan.pages, relative
        assert relative in navigation, relative


def test_every_primitive_is_in_the_api_reference() -> None:
    """Each class exported by mipo.primitives lives in a module the API pages render."""
    text = "\n".join(
        p for name, p in plan_site().pages.items() if name.startswith("api/")
    )
    rendered = set(re.findall(r"^::: (\S+)$", text, flags=re.M))
    for name, value in vars(mipo.primitives).items():
        if isinstance(value, type) and not name.startswith("_"):
            assert value.__module__ in rendered, (
                f"{name} ({value.__module__}) has no API page"
            )
    assert {m for modules in API_PAGES.values() for m in modules} <= rendered
    for path in (REPO / "mipo" / "primitives").glob("[a-z]*.py"):
        assert f"mipo.primitives.{path.stem}" in rendered, path


def test_recipe_notes_appear_on_their_recipe_pages() -> None:
    """docs/recipe_notes/<recipe>.md (e.g. TI-DPO's paper-vs-code list) is part of
    that recipe's page, not a page of its own."""
    pages = plan_site().pages
    notes = sorted((REPO / "docs" / "recipe_notes").glob("*.md"))
    assert notes
    for note in notes:
        assert note.read_text() in pages[f"recipes/{note.stem}.md"]
        assert not any(name.startswith("recipe_notes/") for name in pages)


def test_guides_cover_the_issue_list() -> None:
    guides = {name for name in plan_site().pages if name.startswith("guides/")}
    for guide in ("data", "training", "pictures", "tis_dpo_weights", "new_primitive"):
        assert f"guides/{guide}.md" in guides


def test_site_builds_strict(site: Path) -> None:
    assert (site / "index.html").is_file()
    for recipe in discover():
        assert (site / "recipes" / f"{recipe.name}.html").is_file()
    api = (site / "api" / "priors.html").read_text()
    assert "TokenInterpolationPrior" in api


class _Assets(html.parser.HTMLParser):
    """The files a page loads: script, stylesheet/icon/preload links, images."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        url = values.get("src") if tag in ("script", "img") else None
        if tag == "link" and values.get("rel") != "canonical":
            url = values.get("href")
        if url:
            self.urls.append(url)


def test_pages_load_only_local_files(site: Path) -> None:
    """No page loads anything from a network (no CDN script, no web font): every
    script, stylesheet, icon and image is a relative path to a file of the site."""
    pages = sorted(site.rglob("*.html"))
    assert len(pages) > 20
    for page in pages:
        parser = _Assets()
        parser.feed(page.read_text())
        assert parser.urls, page
        for url in parser.urls:
            assert not re.match(r"^([a-z]+:)?//", url), f"{page}: loads {url}"
            path = url.split("#")[0].split("?")[0]
            # 404.html names its files from the site root (a server shows it
            # for any missing path).
            target = site / path[1:] if path.startswith("/") else page.parent / path
            assert target.is_file(), f"{page}: {url} is not in the site"


def test_the_maths_renderer_ships_with_the_site(site: Path) -> None:
    """The home page's maths is marked for MathJax, and MathJax with its fonts, its
    TeX extensions and its licence is in the built folder."""
    home = (site / "index.html").read_text()
    assert home.count('class="arithmatex"') >= 2
    assert f'<script src="{MATHJAX_DIR}/tex-mml-chtml.js">' in home
    assert '<script src="javascripts/mathjax-config.js">' in home
    mathjax = site / MATHJAX_DIR
    fonts = list((mathjax / "output" / "chtml" / "fonts" / "woff-v2").glob("*.woff"))
    assert len(fonts) >= 20
    assert (mathjax / "input" / "tex" / "extensions" / "boldsymbol.js").is_file()
    assert "Apache License" in (mathjax / "LICENSE").read_text()
    assert (mathjax / "tex-mml-chtml.js").stat().st_size > 500_000


def test_methods_table_links_to_the_api_reference(site: Path) -> None:
    """Every class name in the methods table links to its entry on an API page."""
    methods = (site / "methods.html").read_text()
    links = re.findall(r'href="(api/[a-z-]+\.html)#(mipo\.[\w.]+)"', methods)
    names = {anchor.rsplit(".", 1)[1] for _, anchor in links}
    for recipe in discover():
        assert type(recipe.objective.prior).__name__ in names
        assert type(recipe.objective.link).__name__ in names
    for page, anchor in set(links):
        assert f'id="{anchor}"' in (site / page).read_text(), (page, anchor)


def test_docstring_roles_become_links(site: Path) -> None:
    """:class:`Name` in a docstring reads as a link to Name's entry, not as
    ":class:" followed by code."""
    roles = re.compile(r":(class|func|meth|attr|mod|data):<code>")
    for page in site.rglob("*.html"):
        assert not roles.search(page.read_text()), page
    priors = (site / "api" / "priors.html").read_text()
    assert re.search(
        r'href="#mipo\.primitives\.prior\.PriorTerms"[^>]*><code>PriorTerms<', priors
    )


def _get(url: str) -> tuple[int, str, bytes]:
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310
        return response.status, response.headers["Content-Type"], response.read()


def test_serve_answers_on_localhost(site: Path) -> None:
    """The server behind ``--serve`` gives the pages and the MathJax files."""
    import threading

    with site_server(site, port=0) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            base = f"http://127.0.0.1:{server.server_address[1]}"
            status, kind, body = _get(f"{base}/methods.html")
            assert status == 200 and kind.startswith("text/html")
            assert b"SequentialKLPenalty" in body
            status, _, body = _get(f"{base}/{MATHJAX_DIR}/tex-mml-chtml.js")
            assert status == 200 and len(body) > 500_000
        finally:
            server.shutdown()
        thread.join(timeout=10)
        assert not thread.is_alive()


def _stopped(process: subprocess.Popen, seconds: float = 60.0) -> int:
    """The exit status of ``process`` once it stops (0.6 s after Ctrl-C on an
    idle machine); if it has not stopped in ``seconds``, fail with every
    thread's stack, which faulthandler prints on SIGABRT."""
    try:
        return process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGABRT)
        output, _ = process.communicate(timeout=30)
        pytest.fail(f"not stopped {seconds:.0f} s after SIGINT; its threads:\n{output}")


def _ctrl_c_as_in_a_terminal() -> None:
    """In the child before it starts: SIGINT back to its default. A test run
    started in the background (``&``, a CI runner) ignores SIGINT, children
    inherit that, and Python then installs no KeyboardInterrupt handler, so the
    server would never see the Ctrl-C this test sends."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_serve_command_line(tmp_path: Path) -> None:
    """``python -m mipo.site --serve --port 0`` builds, serves, and stops on Ctrl-C."""
    command = [sys.executable, "-u", "-m", "mipo.site", "--out", str(tmp_path / "b")]
    with subprocess.Popen(
        [*command, "--serve", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"},
        preexec_fn=_ctrl_c_as_in_a_terminal,
    ) as process:
        try:
            assert process.stdout is not None
            lines = []
            for line in process.stdout:
                lines.append(line)
                if line.startswith("serving "):
                    break
            match = re.match(r"serving (http://127\.0\.0\.1:\d+/)", lines[-1])
            assert match, "".join(lines)
            status, _, body = _get(match.group(1))
            assert status == 200 and b"mutual-information" in body
            process.send_signal(signal.SIGINT)
            assert _stopped(process) == 0
            assert "stopped" in process.stdout.read()
        finally:
            if process.poll() is None:
                process.kill()


def test_serve_on_a_busy_port_is_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A taken port stops ``--serve`` before the build, naming the option."""
    import socket

    from mipo.tools.site import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SystemExit) as exit_info:
            main(["--out", str(tmp_path / "b"), "--serve", "--port", str(port)])
    assert exit_info.value.code == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert f"--port {port}: cannot serve on 127.0.0.1:{port}" in line
    assert not (tmp_path / "b").exists()


def _browser() -> str | None:
    found = os.environ.get("MIPO_CHROMIUM") or next(
        (path for name in BROWSERS if (path := shutil.which(name))), None
    )
    return found


def _offline_dom(browser: str, page: Path) -> str:
    """The page's DOM after its scripts ran, in headless Chromium from file://
    with every host name unresolvable and a dead proxy (no network)."""
    result = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--host-resolver-rules=MAP * ~NOTFOUND",
            "--proxy-server=127.0.0.1:9",
            "--virtual-time-budget=15000",
            "--dump-dom",
            page.resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return result.stdout


class _Maths(html.parser.HTMLParser):
    """Per arithmatex element: its text and whether MathJax typeset it."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks: list[dict[str, object]] = []
        self.depth = 0  # open elements inside the current arithmatex element
        self.errors = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "mjx-merror":
            self.errors += 1
        if self.depth:
            self.depth += 1
            if tag == "mjx-container":
                self.blocks[-1]["typeset"] = True
        elif "arithmatex" in (dict(attrs).get("class") or "").split():
            self.blocks.append({"text": "", "typeset": False})
            self.depth = 1

    def handle_endtag(self, _tag: str) -> None:
        if self.depth:
            self.depth -= 1

    def handle_data(self, data: str) -> None:
        if self.depth:
            self.blocks[-1]["text"] = str(self.blocks[-1]["text"]) + data


def _typeset(dom: str) -> _Maths:
    parser = _Maths()
    parser.feed(dom)
    return parser


@pytest.mark.skipif(
    _browser() is None,
    reason="no Chromium binary (install the Debian package `chromium`, or set "
    "MIPO_CHROMIUM): the offline rendering is checked by the non-browser tests only",
)
@pytest.mark.timeout(300)
def test_maths_renders_offline_in_a_browser(site: Path, tmp_path: Path) -> None:
    """From file:// with the network off, MathJax typesets every formula of the
    home page and of the priors' API page; no TeX source is left. The control
    page, which loads MathJax from a CDN, stays raw under the same settings, so
    the network really is off."""
    browser = _browser()
    assert browser is not None
    for page in (site / "index.html", site / "api" / "priors.html"):
        dom = _offline_dom(browser, page)
        maths = _typeset(dom)
        assert len(maths.blocks) >= 2, page
        assert all(block["typeset"] for block in maths.blocks), page
        assert not any("\\" in str(block["text"]) for block in maths.blocks), page
        assert maths.errors == 0, page
        body = re.sub(r"<(script|pre|code)\b.*?</\1>", "", dom, flags=re.S)
        assert "$$" not in body and "\\(" not in body and "\\[" not in body, page
    control = tmp_path / "control.html"
    control.write_text(
        '<html><body><span class="arithmatex">\\(\\pi_\\theta\\)</span>'
        '<script src="https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js">'
        "</script></body></html>"
    )
    maths = _typeset(_offline_dom(browser, control))
    assert maths.blocks == [{"text": "\\(\\pi_\\theta\\)", "typeset": False}]


@pytest.mark.slow
def test_home_page_example_runs(tmp_path: Path) -> None:
    """The 20-line example of docs/index.md, on the tiny model for one step."""
    from tiny import build_tiny_model_dir

    text = (REPO / "docs" / "index.md").read_text()
    (code,) = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    model = build_tiny_model_dir(tmp_path / "model")
    assert 'model="smollm2"' in code and "max_steps=12" in code
    code = code.replace('model="smollm2"', f"model={str(model)!r}")
    code = code.replace("max_steps=12", f"max_steps=1, output_dir={str(tmp_path)!r}")
    namespace: dict[str, object] = {}
    exec(compile(code, "docs/index.md", "exec"), namespace)  # noqa: S102
    result = namespace["result"]
    assert (result.run_dir / "metrics.jsonl").is_file()


def test_the_architecture_page_is_in_the_navigation() -> None:
    plan = plan_site()
    assert {"Architecture": "architecture.md"} in plan.nav
    page = plan.pages["architecture.md"]
    assert "BatchBuilder" in page and "AbstractServiceSpec" in page
    guide = plan.pages["guides/new_primitive.md"]
    assert "tests/test_openness.py" in guide and "class FrozenScorerService" in guide
