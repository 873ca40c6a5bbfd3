"""The operator's pages (walstream.web.pages.views), rendered on the server from Jinja2
templates in ``templates/``: no build step, no script but the redrive form's."""
