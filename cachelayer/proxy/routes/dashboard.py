"""GET /dashboard: one self-contained page showing what the caches do, refreshing itself.

The page (dashboard.html next to this module) has no external assets: its styles and
script are inline, it draws its chart as SVG, and it reads `GET /cache/stats` from the
same proxy every two seconds. Its Content-Security-Policy lets it load nothing else.
"""

from __future__ import annotations

from importlib import resources

from aiohttp import web

# Inline styles and script only; data only from this origin; nothing framed or posted.
CSP = ("default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
       "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; "
       "frame-ancestors 'none'")
PAGE = web.AppKey("dashboard_page", bytes)


def load_page() -> bytes:
    """The page's bytes, from the package."""
    return resources.files(__package__).joinpath("dashboard.html").read_bytes()


async def dashboard(request: web.Request) -> web.Response:
    """Serve the dashboard page."""
    return web.Response(body=request.app[PAGE], content_type="text/html", charset="utf-8",
                        headers={"Content-Security-Policy": CSP,
                                 "Cache-Control": "no-cache",
                                 "X-Content-Type-Options": "nosniff"})


def setup_dashboard(app: web.Application) -> None:
    """Read the page once and route GET /dashboard to it."""
    app[PAGE] = load_page()
    app.router.add_get("/dashboard", dashboard)
