"""
The live dashboard on the admin listener: C{GET /} serves a page
(C{index.html}, C{app.js}, C{style.css}, shipped in this package) that
reads one Server-Sent Events feed, C{GET /dashboard/events}, and acts
through the server API (C{POST /api/publish}, C{/api/disconnect}).

L{Dashboard} (C{state.py}) gathers the figures and sends the snapshots;
L{mount} (C{feed.py}) puts the page and the feed on the admin site.  What
the page shows and the feed's format: C{docs/dashboard.md}.
"""

from __future__ import annotations

from .feed import FEEDS_MAX, feed_limit, mount
from .state import HISTORY, INTERVAL, Dashboard, config_summary

__all__ = ["FEEDS_MAX", "HISTORY", "INTERVAL", "Dashboard", "config_summary", "feed_limit",
           "mount"]
