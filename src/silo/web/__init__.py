"""``silo serve``: a web page that restores photos through the same runner as ``silo restore``.

:mod:`silo.web.service` turns a page request into the runner's terms (no Gradio needed);
:mod:`silo.web.app` is the Gradio page (the optional extra ``web``: ``pip install 'silo-restore[web]'``).
"""

from silo.web.service import PageRequest, PageResult, Service

__all__ = ["PageRequest", "PageResult", "Service"]
