"""Local stand-ins for Open-Meteo and Wikipedia, answering in the real services' response shapes.

For tests, the agent bench and offline demos: one HTTP server on 127.0.0.1 (a free port) serves the
Open-Meteo geocoding and forecast endpoints and the MediaWiki Action API search and REST page summaries.
``failures`` makes an endpoint fail (``500``) or hang (``"hang"``) to test timeouts and retries.

    with FakeServices() as fake:          # sets OPEN_METEO_*_URL and WIKIPEDIA_*_URL while open
        get_current_weather("Oslo")
        fake.failures["forecast"] = 500
"""

from __future__ import annotations

import json
import os
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse

PLACES = {
    "oslo": [{"id": 3143244, "name": "Oslo", "latitude": 59.91273, "longitude": 10.74609, "elevation": 26.0,
              "feature_code": "PPLC", "country_code": "NO", "timezone": "Europe/Oslo", "population": 580000,
              "country": "Norway", "admin1": "Oslo"}],
    "paris": [
        {"id": 2988507, "name": "Paris", "latitude": 48.85341, "longitude": 2.3488, "elevation": 42.0,
         "feature_code": "PPLC", "country_code": "FR", "timezone": "Europe/Paris", "population": 2138551,
         "country": "France", "admin1": "Île-de-France"},
        {"id": 4717560, "name": "Paris", "latitude": 33.66094, "longitude": -95.55551, "elevation": 180.0,
         "feature_code": "PPLA2", "country_code": "US", "timezone": "America/Chicago", "population": 24782,
         "country": "United States", "admin1": "Texas"},
    ],
    "tokyo": [{"id": 1850147, "name": "Tokyo", "latitude": 35.6895, "longitude": 139.69171, "elevation": 44.0,
               "feature_code": "PPLC", "country_code": "JP", "timezone": "Asia/Tokyo", "population": 8336599,
               "country": "Japan", "admin1": "Tokyo"}],
}

ARTICLES = {
    "Ada Lovelace": "Augusta Ada King, Countess of Lovelace (1815–1852), was an English mathematician and writer, "
                    "chiefly known for her work on Charles Babbage's proposed mechanical general-purpose computer, "
                    "the Analytical Engine.",
    "Titan (moon)": "Titan is the largest moon of Saturn and the second-largest in the Solar System.",
    "Mercury": "Mercury may refer to:",  # a disambiguation page
}
DISAMBIGUATION = {"Mercury"}


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"

    def log_message(self, *args):  # quiet
        pass

    def _send(self, status: int, body) -> None:
        data = json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def do_GET(self):  # noqa: N802
        url = urlparse(self.path)
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        path = url.path
        endpoint = ("geocoding" if path.endswith("/v1/search") else "forecast" if path.endswith("/v1/forecast")
                    else "search" if path.endswith("/w/api.php") else "summary" if "/page/summary/" in path
                    else None)
        fake = self.server.fake
        with fake.lock:
            fake.requests.append((endpoint, path, q))
            failure = fake.failures.get(endpoint)
        if failure == "hang":
            time.sleep(fake.hang_seconds)
            return self._send(200, {})
        if isinstance(failure, int):
            return self._send(failure, {"error": True, "reason": f"simulated HTTP {failure}"})
        if endpoint == "geocoding":
            results = PLACES.get(q.get("name", "").strip().lower())
            body = {"generationtime_ms": 0.5}
            if results:
                body["results"] = results[: int(q.get("count", 10))]
            return self._send(200, body)  # no match: Open-Meteo omits "results"
        if endpoint == "forecast":
            return self._send(200, _forecast(q))
        if endpoint == "search":
            return self._send(200, _search(q))
        if endpoint == "summary":
            return self._summary(unquote(path.split("/page/summary/", 1)[1]).replace("_", " "))
        return self._send(404, {"error": "unknown endpoint"})

    def _summary(self, title: str):
        if title not in ARTICLES:
            return self._send(404, {"type": "https://mediawiki.org/wiki/HyperSwitch/errors/not_found",
                                    "title": "Not found.", "method": "get", "detail": "Page or revision not found.",
                                    "uri": f"/en.wikipedia.org/v1/page/summary/{title}"})
        slug = title.replace(" ", "_")
        return self._send(200, {
            "type": "disambiguation" if title in DISAMBIGUATION else "standard",
            "title": slug, "displaytitle": title, "pageid": zlib.crc32(title.encode()) % 10**7, "lang": "en", "dir": "ltr",
            "extract": ARTICLES[title], "extract_html": f"<p>{ARTICLES[title]}</p>",
            "content_urls": {"desktop": {"page": f"https://en.wikipedia.org/wiki/{slug}"},
                             "mobile": {"page": f"https://en.m.wikipedia.org/wiki/{slug}"}},
        })


def _forecast(q: dict) -> dict:
    f = q.get("temperature_unit") == "fahrenheit"
    temp = lambda c: round(c * 9 / 5 + 32, 1) if f else c  # noqa: E731
    unit = "°F" if f else "°C"
    body = {"latitude": float(q.get("latitude", 0)), "longitude": float(q.get("longitude", 0)),
            "generationtime_ms": 0.1, "utc_offset_seconds": 3600, "timezone": "Europe/Oslo",
            "timezone_abbreviation": "GMT+1", "elevation": 26.0}
    if "current" in q:
        body["current_units"] = {"time": "iso8601", "interval": "seconds", "temperature_2m": unit,
                                 "apparent_temperature": unit, "relative_humidity_2m": "%",
                                 "wind_speed_10m": "km/h", "weather_code": "wmo code"}
        body["current"] = {"time": "2026-11-28T12:00", "interval": 900, "temperature_2m": temp(4.2),
                           "apparent_temperature": temp(1.0), "relative_humidity_2m": 81, "wind_speed_10m": 11.5,
                           "weather_code": 3}
    if "daily" in q:
        n = int(q.get("forecast_days", 7))
        body["daily_units"] = {"time": "iso8601", "temperature_2m_max": unit, "temperature_2m_min": unit,
                               "precipitation_sum": "mm", "weather_code": "wmo code"}
        body["daily"] = {"time": [f"2026-11-{28 + i:02d}" if 28 + i <= 30 else f"2026-12-{28 + i - 30:02d}"
                                  for i in range(n)],
                         "temperature_2m_max": [temp(5.0 + i) for i in range(n)],
                         "temperature_2m_min": [temp(-1.0 + i) for i in range(n)],
                         "precipitation_sum": [round(0.4 * i, 1) for i in range(n)],
                         "weather_code": [[3, 61, 71, 0, 2][i % 5] for i in range(n)]}
    return body


def _search(q: dict) -> dict:
    term = q.get("srsearch", "").lower()
    words = [w for w in term.split() if len(w) > 2]
    hits = [t for t, text in ARTICLES.items() if words and any(w in (t + " " + text).lower() for w in words)]
    hits = hits[: int(q.get("srlimit", 10))]
    return {"batchcomplete": True, "continue": {"sroffset": len(hits), "continue": "-||"},
            "query": {"searchinfo": {"totalhits": len(hits)},
                      "search": [{"ns": 0, "title": t, "pageid": zlib.crc32(t.encode()) % 10**7, "size": 1000 + i,
                                  "wordcount": 200, "timestamp": "2026-11-01T00:00:00Z",
                                  "snippet": f'<span class="searchmatch">{t}</span> {ARTICLES[t][:80]}'}
                                 for i, t in enumerate(hits)]}}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    fake: "FakeServices"


class FakeServices:
    """The fake HTTP server; ``with`` starts it and points the tools' base-URL variables at it."""

    ENV = ("OPEN_METEO_GEOCODING_URL", "OPEN_METEO_FORECAST_URL", "WIKIPEDIA_API_URL", "WIKIPEDIA_REST_URL")

    def __init__(self, hang_seconds: float = 5.0):
        self.failures: dict[str, int | str] = {}
        self.requests: list[tuple] = []
        self.hang_seconds = hang_seconds
        self.lock = threading.Lock()
        self._server: _Server | None = None
        self._saved: dict[str, str | None] = {}

    @property
    def base(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def env(self) -> dict[str, str]:
        b = self.base
        return {"OPEN_METEO_GEOCODING_URL": f"{b}/v1/search", "OPEN_METEO_FORECAST_URL": f"{b}/v1/forecast",
                "WIKIPEDIA_API_URL": f"{b}/w/api.php", "WIKIPEDIA_REST_URL": f"{b}/api/rest_v1"}

    def count(self, endpoint: str) -> int:
        with self.lock:
            return sum(1 for r in self.requests if r[0] == endpoint)

    def start(self, set_env: bool = True) -> "FakeServices":
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.fake = self
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        if set_env:
            for k, v in self.env.items():
                self._saved[k] = os.environ.get(k)
                os.environ[k] = v
        return self

    def stop(self) -> None:
        for k, v in self._saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        self._saved = {}
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "FakeServices":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
