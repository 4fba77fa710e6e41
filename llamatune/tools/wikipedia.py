"""Wikipedia tools on the MediaWiki Action API (search) and the REST API (page summaries).

Base URLs come from the environment so tests point them at local servers: ``WIKIPEDIA_API_URL`` (default
https://en.wikipedia.org/w/api.php) and ``WIKIPEDIA_REST_URL`` (default https://en.wikipedia.org/api/rest_v1).
"""

from __future__ import annotations

import os
import re
from urllib.parse import quote

from llamatune.tools.http import ToolError, get_json
from llamatune.tools.schema import tool


def _api() -> str:
    return os.environ.get("WIKIPEDIA_API_URL", "https://en.wikipedia.org/w/api.php")


def _rest() -> str:
    return os.environ.get("WIKIPEDIA_REST_URL", "https://en.wikipedia.org/api/rest_v1").rstrip("/")


@tool
def search_wikipedia(query: str, limit: int = 5) -> dict:
    """Search Wikipedia and return the titles and snippets of the best matching articles.

    Args:
        query: What to search for, e.g. "Ada Lovelace" or "largest moon of Saturn".
        limit: How many results to return, from 1 to 10.
    """
    if not query.strip():
        raise ToolError("Please say what to search for.")
    params = {"action": "query", "list": "search", "srsearch": query, "srlimit": max(1, min(int(limit), 10)),
              "format": "json", "formatversion": 2}
    data = get_json(_api(), params, service="Wikipedia search")
    hits = ((data or {}).get("query") or {}).get("search") or []
    if not hits:
        raise ToolError(f"Wikipedia has no article matching {query!r}.")
    return {
        "query": query,
        "results": [{"title": h["title"], "snippet": re.sub(r"<[^>]+>", "", h.get("snippet", ""))} for h in hits],
    }


@tool
def get_wikipedia_summary(title: str) -> dict:
    """Get the introduction of a Wikipedia article by its title.

    Args:
        title: The exact article title, e.g. "Marie Curie".
    """
    if not title.strip():
        raise ToolError("Please give an article title.")
    data = get_json(f"{_rest()}/page/summary/{quote(title.strip().replace(' ', '_'), safe='')}", {},
                    service="Wikipedia summary service", accept=(404,))
    if not data or data.get("type", "").endswith("not_found") or "extract" not in data:
        raise ToolError(f"Wikipedia has no article titled {title!r}.")
    if data.get("type") == "disambiguation":
        raise ToolError(f"{data.get('title', title)!r} is ambiguous on Wikipedia; ask about a more specific title "
                        f"({data.get('extract', '').strip()[:200]})")
    return {"title": data.get("title", title), "summary": data["extract"],
            "url": ((data.get("content_urls") or {}).get("desktop") or {}).get("page")}
